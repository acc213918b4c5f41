"""The quantizer (`gemma4_ref.quantize`) writes checkpoints that transformers and gemma4_ref load.

transformers is the specification. Each quantized checkpoint is loaded by
``AutoModelForCausalLM.from_pretrained`` (its compressed-tensors integration; fp32, eager
attention) and by ``gemma4_ref.load_model``; the checks:

* **parity** (every variant: int4 group 32, group 128, per channel, int8, asymmetric): logits of
  a prompt longer than the sliding window agree within a relative 1e-4, and 64 greedy tokens are
  equal. transformers runs with ``CompressedTensorsConfig(dequantize=True)``, which decompresses
  each weight as stored -- ``(q - z) * s`` in the scale's dtype, bf16 -- and so do gemma4_ref and
  a bf16 run of transformers. The default ``dequantize=False`` path with ``dtype=float32`` gives
  the scale parameters the model's dtype and multiplies in fp32, without the bf16 rounding;
  for it the test checks that exactly those fp32 products are the weights it runs, that it
  quantized exactly the modules the report lists, and that nothing is missing or unexpected;
* **the packed bits** decompress, with compressed-tensors' own ``PackedQuantizationCompressor``
  and ``unpack_from_int32``, to exactly what ``quantize_ref`` intended;
* **the scales** equal ``bf16(max|w_group| / 7.5)`` (int4; ``/ 127.5`` for int8; min-max for
  asymmetric), computed here with torch from the source weights;
* **the report**'s errors are what the decompressed weights say;
* **the shipped int4 demo model** (``data/gemma4-tiny-w4a16``) is exactly what the quantizer
  makes of ``data/gemma4-tiny``, and its held-out perplexity matches the figure transformers
  computed (``heldout_eval.json``) and stays near the bf16 model's.

The tiny random checkpoint has PLE (its 32-input ``per_layer_projection`` is not a multiple of
group 128, so it stays dense there and is ignored), KV sharing with double-wide MLPs, K=V on
full layers and a 4-expert MoE next to the dense MLP (the router stays dense).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import GENERATION_CONFIG, randomise_, test_prompt

import gemma4_ref
from gemma4_ref.checkpoint import Checkpoint, read_header, write_safetensors
from gemma4_ref.cli import main
from gemma4_ref.errors import InputError
from gemma4_ref.int4 import quantize_ref
from gemma4_ref.linear import bf16_to_f32
from gemma4_ref.perplexity import encode_corpus, perplexity, windows
from gemma4_ref.quantize import quantize_checkpoint

REL_TOL = 1e-4
DEMO = gemma4_ref.DEFAULT_MODEL
DEMO_W4 = DEMO.parent / "gemma4-tiny-w4a16"
CORPUS = DEMO.parent / "corpus" / "heldout.txt"
S, F = "sliding_attention", "full_attention"

# transformers warns that the `dequantize` argument overrides the checkpoint's config: meant
pytestmark = pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")

#: (group_size, bits, symmetric); group 0 means one scale per output row
VARIANTS = {
    "w4g32": (32, 4, True),
    "w4g128": (128, 4, True),
    "w4ch": (0, 4, True),
    "w8g32": (32, 8, True),
    "w4g32a": (32, 4, False),
}


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A tiny random bf16 Gemma 4 (text-only), made and randomised by transformers."""
    import transformers

    config = transformers.Gemma4TextConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        global_head_dim=64,
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        layer_types=[S, S, F, S, S, F],
        num_kv_shared_layers=2,
        use_double_wide_mlp=True,
        hidden_size_per_layer_input=32,
        vocab_size_per_layer_input=512,
        enable_moe_block=True,
        num_experts=4,
        top_k_experts=2,
        moe_intermediate_size=64,
        sliding_window=16,
        max_position_embeddings=1024,
        final_logit_softcapping=30.0,
        rms_norm_eps=1e-6,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=[1, 106],
        tie_word_embeddings=True,
        use_bidirectional_attention=None,
    )
    model = transformers.Gemma4ForCausalLM(config)
    randomise_(model, seed=7)
    path = tmp_path_factory.mktemp("quant_src")
    model.to(torch.bfloat16).save_pretrained(path)
    (path / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG))
    return path


@pytest.fixture(scope="module")
def quantized(source, tmp_path_factory) -> dict:
    """Each variant quantized once: {name: (folder, report)}."""
    root = tmp_path_factory.mktemp("quant_out")
    out = {}
    for name, (group, bits, symmetric) in VARIANTS.items():
        report = quantize_checkpoint(
            source, root / name, group_size=group, bits=bits, symmetric=symmetric, progress=None
        )
        out[name] = (root / name, report)
    return out


def _load_transformers(path: Path, dequantize: bool, info: bool = False):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    return AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch.float32,
        attn_implementation="eager",
        quantization_config=CompressedTensorsConfig(dequantize=dequantize),
        output_loading_info=info,
    )


def _parity(path: Path, prompt: list[int], new_tokens: int = 64) -> None:
    """transformers (dequantize=True, fp32, eager) against gemma4_ref: the prompt's logits and
    `new_tokens` greedy tokens."""
    ref = _load_transformers(path, dequantize=True).eval()
    ours = gemma4_ref.load_model(path)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        expected = ref(ids).logits[0].numpy()
        tokens = ref.generate(
            ids, max_new_tokens=new_tokens, do_sample=False, top_k=None, top_p=None
        )
    logits = ours.forward(prompt)
    rel = np.abs(logits - expected).max() / np.abs(expected).max()
    assert rel < REL_TOL, f"{path.name}: max relative logit difference {rel:.2e}"
    expected_tokens = tokens[0, len(prompt) :].tolist()
    got = ours.generate(prompt, max_new_tokens=new_tokens, temperature=0.0)
    assert got == expected_tokens


def _source_weights(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


# --------------------------------------------------------------------------------------------
# parity with transformers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_transformers_and_gemma4_ref_agree(quantized, variant):
    path, _ = quantized[variant]
    # 64 greedy tokens for the published layout; 16 suffice to show the other variants run
    _parity(path, test_prompt(), 64 if variant == "w4g32" else 16)


def test_transformers_default_path_runs_the_exact_products(quantized, source):
    """dequantize=False: the modules the report lists (and only those) are quantized, nothing is
    missing, and each weight transformers runs is (q - z) * s in fp32, unrounded."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    path, report = quantized["w4g32"]
    model, info = _load_transformers(path, dequantize=False, info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    schemed = {n for n, m in model.named_modules() if getattr(m, "quantization_scheme", None)}
    assert schemed == {t.name for t in report.tensors}
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears - schemed == set(report.dense_linears) | {"lm_head"}
    with torch.no_grad():
        model(torch.tensor([test_prompt()[:4]]))  # decompression happens on the first forward
    stored = _source_weights(path)
    for t in report.tensors:
        q = unpack_from_int32(stored[t.name + ".weight_packed"], 4, torch.Size(t.shape))
        scale = stored[t.name + ".weight_scale"].float().repeat_interleave(32, dim=1)
        weight = model.get_submodule(t.name).weight
        assert torch.equal(weight, q.float() * scale), t.name


def test_gemma4_ref_runs_what_transformers_runs_in_bf16(quantized):
    """With the model in bf16, transformers' default path dequantizes to bf16(q * s): the very
    weights gemma4_ref multiplies (in fp32)."""
    from transformers import AutoModelForCausalLM

    path, report = quantized["w4g32"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    with torch.no_grad():
        model(torch.tensor([test_prompt()[:4]]))
    ours = gemma4_ref.load_model(path)
    q_proj = ours.layers[0].q_proj.dequantize()
    theirs = model.model.layers[0].self_attn.q_proj.weight.float().numpy()
    assert np.array_equal(q_proj, theirs)


# --------------------------------------------------------------------------------------------
# the bits on disk
# --------------------------------------------------------------------------------------------


def _independent_scale(w: torch.Tensor, group: int, bits: int, symmetric: bool) -> torch.Tensor:
    """The min-max scale of each group, computed here with torch.  # [out, in] -> [out, G] bf16"""
    g = w.float().reshape(w.shape[0], -1, group)
    if symmetric:
        s = g.abs().amax(-1) / ((2**bits - 1) / 2)  # int4: max|w| / 7.5
    else:
        s = (g.amax(-1).clamp(min=0) - g.amin(-1).clamp(max=0)) / (2**bits - 1)
    return s.to(torch.bfloat16)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_packed_tensors_decompress_to_what_quantize_ref_intended(quantized, source, variant):
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationConfig

    path, report = quantized[variant]
    group_size, bits, symmetric = VARIANTS[variant]
    config = json.loads((path / "config.json").read_text())["quantization_config"]
    scheme = QuantizationConfig.model_validate(config).config_groups["group_0"]
    src, out = _source_weights(source), _source_weights(path)
    assert report.tensors
    for t in report.tensors:
        w = src[t.name + ".weight"]  # bf16 [out, in]
        group = group_size or w.shape[1]
        q, s_bits, z = quantize_ref(w.float().numpy(), bits, group, symmetric)
        state = {k: out[f"{t.name}.{k}"] for k in scheme_names(symmetric)}
        assert state["weight_packed"].dtype == torch.int32
        assert state["weight_scale"].dtype == torch.bfloat16
        assert state["weight_shape"].tolist() == list(w.shape)
        # (c) the scale, independently
        scale = _independent_scale(w, group, bits, symmetric)
        assert torch.equal(state["weight_scale"], scale), t.name
        assert np.array_equal(
            state["weight_scale"].view(torch.int16).numpy().view(np.uint16), s_bits
        )
        # (b) the packed integers and the decompressed weight, by compressed-tensors
        unpacked = unpack_from_int32(state["weight_packed"], bits, w.shape)
        assert np.array_equal(unpacked.numpy(), q), t.name
        zero = 0
        if not symmetric:
            zp = unpack_from_int32(state["weight_zero_point"], bits, scale.shape, packed_dim=0)
            assert np.array_equal(zp.numpy(), z), t.name
            zero = torch.from_numpy(z).to(torch.bfloat16).repeat_interleave(group, dim=1)
        dense = PackedQuantizationCompressor.decompress(state, scheme)["weight"]
        intended = (torch.from_numpy(q).to(torch.bfloat16) - zero) * scale.repeat_interleave(
            group, dim=1
        )  # bf16 arithmetic: bf16((q - z) * s), as compressed-tensors computes it
        assert dense.dtype == torch.bfloat16 and torch.equal(dense, intended), t.name
        # (d) the report's error is what the decompressed weight says
        err = dense.float() - w.float()
        rel = float(err.norm() / w.float().norm())
        assert math.isclose(t.rel_error, rel, rel_tol=1e-5), (t.name, t.rel_error, rel)
        assert math.isclose(t.max_abs_error, float(err.abs().max()), rel_tol=1e-6)


def scheme_names(symmetric: bool) -> list[str]:
    names = ["weight_packed", "weight_scale", "weight_shape"]
    return names if symmetric else names + ["weight_zero_point"]


def test_everything_else_is_copied_bit_for_bit(quantized, source):
    path, report = quantized["w4g32"]
    assert report.files == ["model.safetensors"]  # a single-file source stays one file
    src, out = _source_weights(source), _source_weights(path)
    quantized_names = {t.name + ".weight" for t in report.tensors}
    copied = [k for k in src if k not in quantized_names]
    assert len(copied) == report.copied
    assert any("experts" in k for k in copied) and any("router.proj" in k for k in copied)
    for k in copied:
        assert out[k].dtype == src[k].dtype and torch.equal(out[k], src[k]), k
    assert set(out) == set(copied) | {
        f"{t.name}.{s}" for t in report.tensors for s in scheme_names(True)
    }


def test_error_report_is_sane(quantized):
    for name, (_path, report) in quantized.items():
        group, bits, symmetric = VARIANTS[name]
        rels = [t.rel_error for t in report.tensors]
        # uniform rounding noise of a step s = range / (2^b - 1) on Gaussian-like weights
        lo, hi = (0.03, 0.2) if bits == 4 else (0.002, 0.012)
        assert all(lo < r < hi for r in rels), (name, min(rels), max(rels))
        assert min(rels) <= report.rel_error <= max(rels)
        assert report.max_abs_error == max(t.max_abs_error for t in report.tensors)
        assert all("router.proj" in m or "per_layer_projection" in m for m in report.dense_linears)
        text = report.table()
        assert f"{report.rel_error:.4f}" in text and all(t.name in text for t in report.tensors)
    # a finer grid is closer: group 32 beats group 128 and one scale per row; int8 << int4
    # (group 128 and per-row scales coincide on this model's 128-input layers)
    err = {name: r.rel_error for name, (_p, r) in quantized.items()}
    assert err["w4g32"] < min(err["w4g128"], err["w4ch"])
    assert err["w8g32"] < err["w4g32"] / 10
    assert err["w4g32a"] < err["w4g32"] * 1.2
    # group 128 does not divide per_layer_projection's 32 inputs: those stay dense, and ignored
    dense = quantized["w4g128"][1].dense_linears
    assert {m for m in dense if "per_layer_projection" in m} == {
        f"model.layers.{i}.per_layer_projection" for i in range(6)
    }
    config = json.loads((quantized["w4g128"][0] / "config.json").read_text())
    assert set(dense) <= set(config["quantization_config"]["ignore"])


# --------------------------------------------------------------------------------------------
# sharding, multimodal prefix, the writer, bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ckpt_id", ["e2b-bf16-sharded-mm", "e4b-fp16-single-mm", "26b-fp32-sharded-causal"]
)
def test_other_layouts_and_dtypes(tiny, tmp_path, ckpt_id):
    """Sharded or single-file, model.language_model.* keys next to vision/audio towers or
    text-only, bf16/fp16/fp32 sources: shards are no bigger than the source's, the towers are
    copied and stay dense (one `re:` ignore entry), and both loaders agree."""
    src = tiny.path(ckpt_id)
    dst = tmp_path / "w4"
    report = quantize_checkpoint(src, dst, progress=None)
    sharded = (src / "model.safetensors.index.json").is_file()
    assert (dst / "model.safetensors.index.json").is_file() == sharded
    assert (dst / "model.safetensors").is_file() != sharded
    biggest = max(f.stat().st_size for f in src.glob("*.safetensors"))
    assert all(f.stat().st_size <= biggest for f in dst.glob("*.safetensors"))
    if sharded:
        index = json.loads((dst / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"].values()) == {f.name for f in dst.glob("*.safetensors")}
    prefix = "model.language_model." if ckpt_id.endswith("-mm") else "model."
    assert report.tensors and all(t.name.startswith(prefix) for t in report.tensors)
    src_w, out_w = _source_weights(src), _source_weights(dst)
    quantized = {t.name + ".weight" for t in report.tensors}
    assert all(torch.equal(out_w[k], v) for k, v in src_w.items() if k not in quantized)
    if prefix == "model.language_model.":
        towers = [k for k in src_w if not k.startswith(prefix)]
        assert any("vision_tower" in k for k in towers) and any("audio_tower" in k for k in towers)
    _parity(dst, test_prompt(), 16)


def test_write_safetensors_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5)).astype(np.float32)
    tensors = {
        "bf16": ("BF16", (x.view(np.uint32) >> 16).astype(np.uint16)),
        "f32": ("F32", x),
        "i32": ("I32", np.arange(6, dtype=np.int32).reshape(2, 3)),
        "i64": ("I64", np.array([7, 9], np.int64)),
        "scalar": ("F32", np.array(2.5, np.float32)),
    }
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors, {"format": "pt"})
    back = load_file(path)
    assert torch.equal(back["bf16"], torch.from_numpy(bf16_to_f32(tensors["bf16"][1])).bfloat16())
    assert torch.equal(back["f32"], torch.from_numpy(x))
    assert back["i64"].tolist() == [7, 9] and back["scalar"].item() == 2.5
    infos, size = read_header(path)  # our own reader agrees, bit for bit
    assert size == path.stat().st_size
    assert min(i.offset for i in infos.values()) % 8 == 0  # the header is padded to 8 bytes
    for name, (tag, arr) in tensors.items():
        assert infos[name].dtype == tag and infos[name].shape == arr.shape
    (tmp_path / "model.safetensors").write_bytes(path.read_bytes())
    ck = Checkpoint(tmp_path)
    for name, (_tag, arr) in tensors.items():
        assert np.array_equal(ck.array(name), arr)


def test_bad_arguments(source, quantized, tmp_path):
    with pytest.raises(InputError, match="bits"):
        quantize_checkpoint(source, tmp_path / "x", bits=3, progress=None)
    with pytest.raises(InputError, match="group size"):
        quantize_checkpoint(source, tmp_path / "x", group_size=7, progress=None)
    with pytest.raises(InputError, match="source folder"):
        quantize_checkpoint(source, source, progress=None)
    with pytest.raises(InputError, match="already quantized"):
        quantize_checkpoint(quantized["w4g32"][0], tmp_path / "x", progress=None)


# --------------------------------------------------------------------------------------------
# the demo model and the command line
# --------------------------------------------------------------------------------------------


def test_shipped_int4_demo_model_is_what_the_quantizer_makes(tmp_path):
    report = quantize_checkpoint(DEMO, tmp_path / "w4", progress=None)
    for f in (tmp_path / "w4").iterdir():
        assert f.read_bytes() == (DEMO_W4 / f.name).read_bytes(), f.name
    assert 0.05 < report.rel_error < 0.15


def test_shipped_int4_demo_model_parity_with_transformers():
    model = gemma4_ref.load_model(DEMO_W4)
    ids = encode_corpus(model.tokenizer, CORPUS.read_text())
    window = model.config.sliding_window
    prompt = [2] + ids[1000 : 1000 + 2 * window + 20].tolist()
    _parity(DEMO_W4, prompt)


def test_shipped_int4_demo_model_heldout_perplexity():
    """gemma4_ref reproduces the figure transformers computed (its fp32 default path, unrounded
    products: the two differ by ~1e-4), and int4 costs little against bf16."""
    record = json.loads((DEMO_W4 / "heldout_eval.json").read_text())
    bf16 = json.loads((DEMO / "heldout_eval.json").read_text())
    assert (record["windows"], record["seq"]) == (bf16["windows"], bf16["seq"])
    model = gemma4_ref.load_model(DEMO_W4)
    batch = windows(
        encode_corpus(model.tokenizer, CORPUS.read_text()), record["seq"], record["windows"]
    )
    ppl = perplexity(model.forward, batch)
    assert abs(ppl - record["perplexity"]) / record["perplexity"] < 1e-3, (ppl, record)
    assert abs(ppl - bf16["perplexity"]) / bf16["perplexity"] < 0.1, (ppl, bf16["perplexity"])


def test_cli_quantize_reports_error_and_perplexity(tmp_path, capsys):
    out = tmp_path / "w4"
    rc = main(
        ["quantize", "--model", str(DEMO), "--out", str(out), "--eval-windows", "2"]
        + ["--eval-seq", "64"]
    )
    text = capsys.readouterr()
    assert rc == 0
    assert "overall relative error" in text.out and "held-out perplexity" in text.out
    assert "top-1 agreement" in text.out and "tensor" in text.err  # the progress bar
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
