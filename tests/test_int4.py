"""Quantized (compressed-tensors ``pack-quantized``) checkpoints, checked against the library.

The checkpoints of ``int4_models.QUANT_CHECKPOINTS`` are quantized, packed and saved by
compressed-tensors itself, in the layout of Google's ``-qat-w4a16-ct`` exports, and loaded both in
transformers (which decompresses them through compressed-tensors) and in gemma4_ref (which keeps
them packed).  The checks:

* **dequantized weights**: every packed linear layer, unpacked and scaled by gemma4_ref's Numba
  kernel, equals transformers' decompressed weight bit for bit.  The reference for that is
  transformers with ``CompressedTensorsConfig(dequantize=True)``: compressed-tensors computes
  ``(q - z) * s`` in the stored scale's dtype, so with bf16 scales every weight is
  ``bf16(q * s)``.  transformers' *default* fp32 load (``dequantize=False``) instead gives each
  module fp32 scale parameters, widens the stored scales into them, and decompresses in fp32:
  the exact products, which bf16/fp16-scaled checkpoints do not round to.  That is checked too
  (``test_default_fp32_load_does_not_round``), and is why ``gemma4-ref verify`` loads its
  reference with ``dequantize=True``;
* **live parity** against the ``dequantize=True`` reference: prefill logits within
  ``max|ours - ref| <= 1e-4 * max|ref|`` for every checkpoint (the weights are bit-identical, so
  the parity suite's tolerance holds), and 64 greedy tokens equal for PLE + KV sharing, K=V (with
  the multimodal prefix) and MoE, on a 40-token prompt (2.5 sliding windows);
* **the kernels against the library**, on synthetic tensors: ``unpack_ref`` / ``pack_ref`` vs
  ``unpack_from_int32`` / ``pack_to_int32`` (zero points packed along dim 0 too),
  ``QuantizedLinear.dequantize`` vs ``PackedQuantizationCompressor.decompress`` bit for bit, the
  fused matvec and the tiled prefill product vs a dense product, ``quantize_ref`` vs
  ``calculate_qparams`` / ``quantize``;
* ``gemma4-ref verify`` on a quantized checkpoint; bad quantization configs and tensors; the
  packed weights stay packed, mapped or read into memory.
"""

from __future__ import annotations

import json
import mmap
import shutil

import numpy as np
import pytest
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from compressed_tensors.quantization.lifecycle.forward import quantize
from compressed_tensors.quantization.utils import calculate_qparams
from int4_models import PARITY_IDS, QUANT_BY_ID, QUANT_CHECKPOINTS
from tiny_models import GENERATION_EOS, MAX_NEW_TOKENS, PROMPT_LEN, test_prompt

import gemma4_ref
import gemma4_ref.int4 as int4
from gemma4_ref import CheckpointError, ConfigError, int4_lut, linear
from gemma4_ref.checkpoint import Checkpoint
from gemma4_ref.int4 import QuantArgs, QuantizedLinear, pack_ref, quantize_ref, unpack_ref
from gemma4_ref.verify import verify

REL_TOL = 1e-4  # the weights are bit-identical to the reference's, so the dense suite's tolerance
PRECEDENCE_ID = "e2b-w4g32-bf16-plg16"
IDS = [c.id for c in QUANT_CHECKPOINTS if c.id != PRECEDENCE_ID]
TORCH_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FILE_DTYPE = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _quantized_linears(model) -> dict[str, QuantizedLinear]:
    """Every QuantizedLinear reachable from a gemma4_ref model, by its checkpoint name."""
    found: dict[str, QuantizedLinear] = {}
    seen: set[int] = set()

    def walk(obj) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, QuantizedLinear):
            found[obj.name] = obj
        elif isinstance(obj, list | tuple):
            for item in obj:
                walk(item)
        elif type(obj).__module__.startswith("gemma4_ref") and hasattr(obj, "__dict__"):
            for item in vars(obj).values():
                walk(item)

    walk(model)
    return found


def _compare(ours: np.ndarray, ref: np.ndarray, first_pos: int = 0) -> tuple[float, str]:
    """Relative max difference of two [S, V] logit arrays, and a report."""
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    scale = float(np.abs(ref).max())
    worst = np.unravel_index(int(diff.argmax()), diff.shape)
    rel = float(diff.max()) / scale
    report = (
        f"max|ours-ref| = {diff.max():.3e} (relative {rel:.2e}, tolerance {REL_TOL:.0e}) at "
        f"position {first_pos + int(worst[0])}, token {int(worst[1])}; max|ref| = {scale:.3f}"
    )
    return rel, report


def _exact_product(ql: QuantizedLinear) -> np.ndarray:
    """(q - z) * s as one float32 multiplication (exact for bf16/fp16 scales, whose products
    fit in float32's mantissa), from gemma4_ref's NumPy unpacker.  # -> f32 [out, in]"""
    q = unpack_ref(ql.packed.view(np.int32), ql.args.num_bits, ql.in_features)
    scale = ql.scale
    if scale.dtype == np.uint16:  # bf16 bits
        scale = (scale.astype(np.uint32) << 16).view(np.float32)
    s = np.repeat(scale.astype(np.float64), ql.group, axis=1)
    z = 0.0
    if ql.zero.size:
        z = np.repeat(ql.zero.astype(np.float64), ql.group, axis=1)
    return ((q.astype(np.float64) - z) * s).astype(np.float32)  # one rounding, as in float32


# --------------------------------------------------------------------------------------------
# the fixtures themselves
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ckpt_id", IDS + [PRECEDENCE_ID])
def test_checkpoint_layout(ct_models, ckpt_id):
    """config.json carries the library's own quantization_config, and the files hold
    weight_packed / weight_scale / weight_shape (+ weight_zero_point) for exactly the targeted,
    not ignored Linear layers."""
    import compressed_tensors

    ckpt = QUANT_BY_ID[ckpt_id]
    path = ct_models.path(ckpt_id)
    config = json.loads((path / "config.json").read_text())
    q = config["quantization_config"]
    assert q["quant_method"] == "compressed-tensors" and q["format"] == "pack-quantized"
    assert q["quantization_status"] == "compressed"
    assert q["version"] == compressed_tensors.__version__
    assert q["sparsity_config"] == {} and q["transform_config"] == {}
    assert "lm_head" in q["ignore"]
    group = q["config_groups"]["group_0"]
    assert group["targets"] == ["Linear"] and group["format"] == "pack-quantized"
    assert group["input_activations"] is None and group["output_activations"] is None
    for key, value in ckpt.weight_args().items():
        assert group["weights"].get(key) == value, (key, group["weights"])
    if ckpt.ple_group:  # the regex group is written second, after the class-name group
        assert list(q["config_groups"]) == ["group_0", "group_1"]
        assert q["config_groups"]["group_1"]["targets"] == ["re:.*per_layer_projection$"]
        assert q["config_groups"]["group_1"]["weights"]["group_size"] == ckpt.ple_group

    ck = Checkpoint(path)
    prefix = "model.language_model." if ckpt.multimodal else "model."
    packed = sorted(n[: -len(".weight_packed")] for n in ck.tensors if n.endswith("weight_packed"))
    assert packed and all(n.startswith(prefix) for n in packed)
    assert not any(n.startswith("lm_head") for n in ck.tensors)
    for base in packed:
        info = ck.info(base + ".weight_packed")
        out_f, in_f = (int(v) for v in ck.array(base + ".weight_shape"))
        group_size = ckpt.group_size if ckpt.strategy == "group" else in_f
        if ckpt.ple_group and base.endswith("per_layer_projection"):
            group_size = ckpt.ple_group
        assert info.dtype == "I32" and info.shape == (out_f, in_f * ckpt.bits // 32), base
        scale = ck.info(base + ".weight_scale")
        assert scale.dtype == FILE_DTYPE[ckpt.dtype], base
        assert scale.shape == (out_f, in_f // group_size), base
        assert base + ".weight" not in ck, f"{base} is stored both packed and dense"
        if ckpt.symmetric:
            assert base + ".weight_zero_point" not in ck
        else:
            zp = ck.info(base + ".weight_zero_point")
            assert zp.dtype == "I32" and zp.shape == (-(-out_f * ckpt.bits // 32), scale.shape[1])
    if ckpt.multimodal:  # the towers stay dense
        assert any(n.startswith("model.vision_tower.") for n in ck.tensors)
        assert not any("vision" in n and "packed" in n for n in ck.tensors)
    if ckpt.variant == "26b":  # experts are 3-D parameters, not Linear: dense
        assert ck.info(prefix + "layers.0.experts.gate_up_proj").dtype == FILE_DTYPE[ckpt.dtype]
    if ckpt.variant == "e2b" and not ckpt.ple_group:
        assert ck.info(prefix + "layers.0.per_layer_projection.weight").shape == (64, 16)

    # gemma4_ref finds every packed layer of the decoder (unless the load itself is the bug)
    if ckpt_id != PRECEDENCE_ID:
        assert sorted(_quantized_linears(ct_models.ours(ckpt_id))) == packed


# --------------------------------------------------------------------------------------------
# dequantized weights: the rounding question
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ckpt_id", IDS)
def test_dequantized_weights_bit_equal(ct_models, ckpt_id):
    """gemma4_ref's dequantized weights == transformers' (dequantize=True) bit for bit."""
    ours = _quantized_linears(ct_models.ours(ckpt_id))
    state = ct_models.reference_model(ckpt_id, dequantize=True).state_dict()
    bad = []
    for name, ql in sorted(ours.items()):
        ref = state[name + ".weight"]
        assert ref.dtype == torch.float32
        mine = ql.dequantize()
        if not np.array_equal(mine, ref.numpy()):
            n = int((mine != ref.numpy()).sum())
            bad.append(f"{name}: {n} of {mine.size} differ, max {np.abs(mine - ref.numpy()).max()}")
    assert not bad, f"{ckpt_id}: {len(bad)} of {len(ours)} layers differ: " + "; ".join(bad[:4])


@pytest.mark.parametrize("ckpt_id", ["e2b-w4g32-bf16", "31b-w4g32-fp16", "e2b-w4g32-fp32"])
def test_default_fp32_load_does_not_round(ct_models, ckpt_id):
    """transformers' default load at dtype=float32 decompresses with fp32 scale parameters: its
    weights are the exact products (q - z) * s, not rounded to the scale's dtype as
    compressed-tensors (and gemma4_ref) round them; with fp32 scales the two agree."""
    ckpt = QUANT_BY_ID[ckpt_id]
    ref = ct_models.reference_model(ckpt_id, dequantize=False)
    state = ref.state_dict()
    n_diff = n_total = 0
    worst = 0.0
    for name, ql in sorted(_quantized_linears(ct_models.ours(ckpt_id)).items()):
        assert state[name + ".weight_scale"].dtype == torch.float32  # the cause
        w_ref = state[name + ".weight"].numpy()
        exact = _exact_product(ql)
        assert np.array_equal(w_ref, exact), f"{name}: default load is not the exact product"
        mine = ql.dequantize()
        rounded = torch.from_numpy(exact).to(TORCH_DTYPE[ckpt.dtype]).float().numpy()
        assert np.array_equal(mine, rounded), f"{name}: ours is not the rounded product"
        n_diff += int((mine != w_ref).sum())
        n_total += mine.size
        worst = max(worst, float(np.abs(mine - w_ref).max()))
    print(
        f"{ckpt_id}: default fp32 load vs ours: {n_diff} of {n_total} weights differ, "
        f"max {worst:.3e}"
    )
    if ckpt.dtype == "fp32":
        assert n_diff == 0
    else:
        assert n_diff > 0


# --------------------------------------------------------------------------------------------
# live parity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ckpt_id", IDS)
def test_prefill_logits(ct_models, ckpt_id):
    """Logits of a fresh 40-token prefill against transformers (dequantize=True)."""
    ref = ct_models.prefill(ckpt_id, dequantize=True)
    ours = np.asarray(ct_models.ours(ckpt_id).forward(np.array(test_prompt())))
    assert ref.shape == (PROMPT_LEN, 512)
    rel, report = _compare(ours, ref)
    print(f"{ckpt_id}: prefill {report}")
    assert rel <= REL_TOL, f"{ckpt_id}: prefill logits: {report}"


@pytest.mark.parametrize("ckpt_id", PARITY_IDS)
def test_greedy_generation(ct_models, ckpt_id):
    """64 greedy tokens through the KV cache equal transformers' generate(do_sample=False), and
    transformers' per-step logits equal a fresh gemma4_ref prefill of the whole sequence."""
    r = ct_models.reference(ckpt_id, dequantize=True)
    assert len(r.tokens) == MAX_NEW_TOKENS and not set(r.tokens) & set(GENERATION_EOS)
    assert len(set(r.tokens)) >= 16, f"degenerate reference run: {r.tokens}"
    model = ct_models.ours(ckpt_id)
    ours = [int(t) for t in model.generate(r.prompt, max_new_tokens=MAX_NEW_TOKENS, temperature=0)]
    k = next((i for i, (a, b) in enumerate(zip(ours, r.tokens, strict=True)) if a != b), None)
    info = f"reference min top-1/top-2 gap {r.min_gap:.2e}, min router gap {r.min_router_gap:.1e}"
    assert k is None, (
        f"{ckpt_id}: greedy tokens diverge at new token {k} (position {len(r.prompt) + k}): "
        f"ours {ours[k : k + 8]} vs ref {r.tokens[k : k + 8]}; {info}"
    )
    full = np.asarray(model.forward(np.array(r.prompt + r.tokens[:-1])))[len(r.prompt) - 1 :]
    rel, report = _compare(full, r.step_logits, first_pos=len(r.prompt))
    print(f"{ckpt_id}: {MAX_NEW_TOKENS}/{MAX_NEW_TOKENS} tokens equal; steps {report}; {info}")
    assert rel <= REL_TOL, f"{ckpt_id}: greedy-step logits: {report}"


# --------------------------------------------------------------------------------------------
# the kernels against the library (synthetic tensors)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("shape", [(5, 64), (40, 96), (3, 36), (17, 8)])
def test_pack_and_unpack_match_the_library(bits, shape):
    """pack_ref / unpack_ref == pack_to_int32 / unpack_from_int32 bit for bit, along dim 1
    (weights) and dim 0 (zero points), including a partly filled last word."""
    rng = np.random.default_rng(bits * 1000 + shape[0])
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = rng.integers(lo, hi + 1, size=shape).astype(np.int8)
    for axis in (1, 0):
        lib = pack_to_int32(torch.from_numpy(q), bits, packed_dim=axis).numpy()
        mine = pack_ref(q, bits, axis=axis)
        assert mine.dtype == np.int32 and mine.shape == lib.shape, (axis, mine.shape, lib.shape)
        assert np.array_equal(mine, lib), f"pack_ref differs, axis {axis}"
        assert np.array_equal(unpack_ref(lib, bits, shape[axis], axis=axis), q), f"axis {axis}"
        if bits == 4 and axis == 0 and lib.shape[0] == 1:
            # the library's own 4-bit unpacker fails on a one-word-row zero point (<= 8 rows):
            # "self.stride(-1) must be 1 to view Int as Byte" (compressed-tensors 0.20.1)
            continue
        back = unpack_from_int32(torch.from_numpy(lib), bits, torch.Size(shape), packed_dim=axis)
        assert np.array_equal(back.numpy(), q)


def _library_layer(bits: int, symmetric: bool, group: int | None, dtype: str, out_f=40, in_f=256):
    """A random Linear weight quantized and packed by compressed-tensors, the library's own
    decompression of it, and gemma4_ref's QuantizedLinear over the same tensors."""
    torch.manual_seed(bits * 100 + (group or 1) + symmetric)
    w = (torch.randn(out_f, in_f) * 0.05).to(TORCH_DTYPE[dtype])
    args = QuantizationArgs(
        num_bits=bits,
        type="int",
        strategy="group" if group else "channel",
        group_size=group,
        symmetric=symmetric,
    )
    g = w.unflatten(-1, (-1, group)) if group else w.unsqueeze(1)
    scale, zero = calculate_qparams(g.amin(-1), g.amax(-1), args)  # [out, G]
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    state = {"weight": w, "weight_scale": scale, "weight_zero_point": zero}
    stored = PackedQuantizationCompressor.compress(state, scheme)
    dense = PackedQuantizationCompressor.decompress(stored, scheme)["weight"]
    assert dense.dtype == TORCH_DTYPE[dtype]

    s = stored["weight_scale"]
    if dtype == "bf16":
        s_np = s.view(torch.int16).numpy().view(np.uint16)
    else:
        s_np = s.float().numpy()
    zp = None
    if not symmetric:
        zp = unpack_ref(stored["weight_zero_point"].numpy(), bits, out_f, axis=0)
    layer = QuantizedLinear(
        stored["weight_packed"].numpy(),
        s_np,
        {"bf16": "bf16", "fp16": "f16", "fp32": "f32"}[dtype],
        zp,
        QuantArgs(bits, group, symmetric, args.strategy),
        (out_f, in_f),
        "synthetic",
    )
    return layer, dense.float().numpy(), stored


CASES = [
    (bits, sym, group, dtype)
    for bits in (4, 8)
    for sym in (True, False)
    for group in (32, 128, None)
    for dtype in ("bf16", "fp16", "fp32")
]


@pytest.mark.parametrize(("bits", "symmetric", "group", "dtype"), CASES)
def test_dequantize_kernel_matches_the_library(bits, symmetric, group, dtype):
    """QuantizedLinear.dequantize (Numba) and dequantize_ref == the library's decompression,
    bit for bit: rounded to the scale's dtype, zero points subtracted."""
    layer, dense, stored = _library_layer(bits, symmetric, group, dtype)
    assert np.array_equal(layer.dequantize(), dense)
    assert np.array_equal(layer.dequantize(7, 23), dense[7:23])
    q = unpack_ref(stored["weight_packed"].numpy(), bits, layer.in_features)
    scale = stored["weight_scale"].float().numpy()
    zero = None if symmetric else layer.zero
    tag = {"bf16": "bf16", "fp16": "f16", "fp32": "f32"}[dtype]
    ref = int4.dequantize_ref(q, scale, zero, layer.group, tag)
    assert np.array_equal(ref, dense)


@pytest.mark.parametrize(("bits", "symmetric", "group", "dtype"), CASES[:: len(CASES) // 8])
def test_matmul_kernels(bits, symmetric, group, dtype, monkeypatch):
    """The fused dequant-matvec (1 row) and the tiled prefill product (many rows, as W x^T
    and as x W^T) against a dense product with the library's weights: within 1e-5 relative."""
    layer, dense, _ = _library_layer(bits, symmetric, group, dtype, out_f=72, in_f=256)
    rng = np.random.default_rng(0)
    monkeypatch.setattr(linear, "_TILE_FLOATS", 256 * 20)  # 20 rows a tile: 4 tiles
    for rows, wx_tokens in ((1, 256), (9, 256), (9, 0)):
        monkeypatch.setattr(linear, "WX_TOKENS", wx_tokens)
        x = rng.normal(size=(rows, layer.in_features)).astype(np.float32)
        want = x.astype(np.float64) @ dense.T.astype(np.float64)
        got = layer(x)
        assert got.shape == (rows, layer.out_features) and got.dtype == np.float32
        rel = np.abs(got - want).max() / np.abs(want).max()
        assert rel <= 1e-5, f"{rows} rows: relative {rel:.2e}"


needs_avx512 = pytest.mark.skipif(not int4_lut.AVAILABLE, reason="int4_lut needs AVX-512F")


@pytest.mark.parametrize("group, in_f", [(32, 1056), (128, 1152)])
@pytest.mark.parametrize("out_f", [5, 1031])
def test_fast_int4_kernels_match_the_general_one(out_f, group, in_f):
    """The published layout's kernels (x split into even and odd inputs; one core for small
    matrices, blocks of rows over all cores for large ones) against the general `qmatvec` and
    a float64 product of `dequantize_ref`'s weights: the portable float-nibble kernel, and,
    with AVX-512, the table-lookup kernel and its NumPy reference. 1056 inputs make 33 blocks,
    one past the loop's pairs of blocks; group 128 puts four blocks under each scale; 1031
    rows leave three rows past the four far-apart rows of the lookup kernel."""
    rng = np.random.default_rng(out_f)
    q = rng.integers(-8, 8, (out_f, in_f)).astype(np.int8)
    scale = rng.integers(0x3A00, 0x3C80, (out_f, in_f // group), dtype=np.uint16)
    packed = pack_ref(q, 4).view(np.uint8)
    x = rng.normal(size=in_f).astype(np.float32)
    w = int4.dequantize_ref(q, int4.bf16_to_f32(scale), None, group, "bf16")
    want = w.astype(np.float64) @ x.astype(np.float64)
    general = np.empty(out_f, np.float32)
    int4.qmatvec(packed, scale, np.zeros((0, 0), np.int8), x, general, 4, group, 16)
    tables = int4_lut.group_tables(scale)
    results = {
        "general": general,
        "float nibbles": int4.qmatvec_int4_bf16(packed, scale, x, group),
        "lookup reference": int4_lut.qmatvec_lut_ref(packed, tables, x, group),
    }
    if int4_lut.AVAILABLE:
        packed.setflags(write=False)  # as memory-mapped from a checkpoint
        results["lookup AVX-512"] = int4_lut.qmatvec_lut(packed, tables, x, group)
    for name, got in results.items():
        assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5, name


def test_lookup_tables_are_the_dequantized_weights_bit_for_bit():
    """`group_tables` over every finite bf16 scale -- zero, subnormal, normal, both signs, up
    to those whose weights overflow to infinity -- gives each group's table exactly
    `dequantize_ref`'s bf16(q * s) for all 16 nibbles, one table per distinct scale."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    scale = bits[((bits >> 7) & 0xFF) != 0xFF]  # all but infinities and NaNs
    rng = np.random.default_rng(3)
    scale = np.concatenate([scale, rng.choice(scale, 1000)])  # repeated scales share a table
    q = np.tile(np.arange(-8, 8, dtype=np.int8), (len(scale), 1))  # row r: all q, scale r
    with np.errstate(over="ignore"):
        want = int4.dequantize_ref(q, int4.bf16_to_f32(scale[:, None]), None, 16, "bf16")
        tables = int4_lut.group_tables(scale[:, None])
    assert np.isinf(want).any() and (want[:, 9] != 0).any()  # the largest scales are in
    assert tables.values.shape == (len(scale) - 1000, 16) and tables.index.dtype == np.uint16
    got = tables.values[tables.index[:, 0]]
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@needs_avx512
def test_lookup_kernel_with_extreme_and_subnormal_scales():
    """The AVX-512 kernel, through `QuantizedLinear` as the model calls it, on rows with zero,
    negative, huge and subnormal scales matches the float64 product of the dequantized
    weights; tables that do not fit the matrix are refused with their shapes named."""
    rng = np.random.default_rng(7)
    out_f, in_f = 64, 256
    q = rng.integers(-8, 8, (out_f, in_f)).astype(np.int8)
    scale = rng.integers(0x3A00, 0x3C80, (out_f, in_f // 32), dtype=np.uint16)
    scale[:5, 0] = [0x0000, 0x8000, 0xBC01, 0x5F7F, 0x0042]  # +0, -0, negative, 2^63-ish, subnormal
    packed = pack_ref(q, 4).view(np.uint8)
    x = rng.normal(size=in_f).astype(np.float32)
    w = int4.dequantize_ref(q, int4.bf16_to_f32(scale), None, 32, "bf16")
    want = w.astype(np.float64) @ x.astype(np.float64)
    args = QuantArgs(num_bits=4, group_size=32, symmetric=True, strategy="group")
    layer = QuantizedLinear(packed.view(np.int32), scale, "bf16", None, args, (out_f, in_f))
    got = layer(x[None])[0]
    assert layer._tables is not None  # the lookup kernel ran
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want[5:]).max())

    with pytest.raises(ValueError, match="do not fit"):
        int4_lut.qmatvec_lut(packed, layer._tables, x[:-32], 32)
    with pytest.raises(ValueError, match=r"tables for scales \(64, 8\)"):
        int4_lut.qmatvec_lut(packed[:32], layer._tables, x, 32)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("weights", ["fp32", "bf16"])
def test_quantize_ref_matches_the_library(bits, weights):
    """quantize_ref's scale == bf16 of calculate_qparams' scale (symmetric), and its integers ==
    the library's quantize() against that stored scale."""
    rng = np.random.default_rng(bits)
    w = torch.from_numpy(rng.normal(0, 0.1, (64, 256)).astype(np.float32)).to(TORCH_DTYPE[weights])
    args = QuantizationArgs(num_bits=bits, type="int", strategy="group", group_size=32)
    g = w.unflatten(-1, (-1, 32))
    scale, _ = calculate_qparams(g.amin(-1), g.amax(-1), args)
    q, scale_bits, zero = quantize_ref(w.float().numpy(), bits, 32, symmetric=True)
    lib_bits = scale.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert zero is None
    assert np.array_equal(scale_bits, lib_bits), f"{int((scale_bits != lib_bits).sum())} differ"
    stored = torch.from_numpy((scale_bits.astype(np.uint32) << 16).view(np.float32))
    lib_q = quantize(w.float(), stored, None, args, dtype=torch.int8).numpy()
    assert np.array_equal(q, lib_q), f"{int((q != lib_q).sum())} of {q.size} integers differ"


def test_quantize_ref_asymmetric_matches_the_library():
    """Asymmetric int4 from fp32 weights: scale == bf16 of the library's, and the zero points
    (derived, as the library does, from the unrounded scale) and integers are equal."""
    rng = np.random.default_rng(4)
    w = rng.normal(0.02, 0.1, (64, 256)).astype(np.float32)
    args = QuantizationArgs(
        num_bits=4, type="int", strategy="group", group_size=32, symmetric=False
    )
    g = torch.from_numpy(w).unflatten(-1, (-1, 32))
    scale, zero = calculate_qparams(g.amin(-1), g.amax(-1), args)
    q, scale_bits, zr = quantize_ref(w, 4, 32, symmetric=False)
    lib_bits = scale.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(scale_bits, lib_bits)
    n_zero = int((zr != zero.numpy()).sum())
    assert n_zero == 0, f"{n_zero} of {zr.size} zero points differ"
    stored = torch.from_numpy((scale_bits.astype(np.uint32) << 16).view(np.float32))
    lib_q = quantize(torch.from_numpy(w), stored, torch.from_numpy(zr), args, dtype=torch.int8)
    assert np.array_equal(q, lib_q.numpy())


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------


def _verify(path, max_new_tokens: int = 16) -> tuple[int, str]:
    lines: list[str] = []
    rc = verify(str(path), out=lines.append, max_new_tokens=max_new_tokens)
    return rc, "\n".join(lines)


def test_verify_passes_on_a_quantized_checkpoint(ct_models):
    """fp32 scales: transformers' default load and compressed-tensors agree, so verify's 1e-4
    holds for a packed int4 checkpoint."""
    rc, text = _verify(ct_models.path("e2b-w4g32-fp32"))
    assert rc == 0, text
    assert text.splitlines()[-1].startswith("PASS") and "16/16 identical" in text


def test_verify_bf16_scales(ct_models):
    rc, text = _verify(ct_models.path("e2b-w4g32-bf16"), max_new_tokens=4)
    assert rc == 0, text


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------

BASE_ID = "e2b-w4g32-bf16"
Q_PROJ = "model.layers.0.self_attn.q_proj"


def _group(q):
    return q["config_groups"]["group_0"]


def _set_format(fmt):
    def edit(q):
        q["format"] = fmt
        _group(q)["format"] = fmt

    return edit


def _set_weights(**fields):
    def edit(q):
        _group(q)["weights"].update(fields)

    return edit


def _w8a8(q):
    _group(q)["input_activations"] = {
        "num_bits": 8,
        "type": "int",
        "strategy": "token",
        "symmetric": True,
        "dynamic": True,
    }


def _ignore_q_proj(q):
    q["ignore"].append(r"re:.*layers\.0\.self_attn\.q_proj$")


def _other_method(q):
    q["quant_method"] = "gptq"


CONFIG_EDITS = {
    "naive-quantized": (_set_format("naive-quantized"), "format"),
    "float-quantized": (_set_format("float-quantized"), "format"),
    "w8a8": (_w8a8, "input_activations"),
    "2-bit": (_set_weights(num_bits=2), "num_bits"),
    "3-bit": (_set_weights(num_bits=3), "num_bits"),
    "tensor": (_set_weights(strategy="tensor", group_size=None), "strategy"),
    "untargeted": (_ignore_q_proj, Q_PROJ),
    "quant_method": (_other_method, "quant_method"),
}


def _copy(ct_models, ckpt_id, tmp_path):
    dst = tmp_path / ckpt_id
    shutil.copytree(ct_models.path(ckpt_id), dst)
    return dst


@pytest.mark.parametrize("case", list(CONFIG_EDITS))
def test_bad_quantization_config(ct_models, tmp_path, case):
    """A config gemma4_ref cannot run is refused with a ConfigError naming the field/tensor."""
    edit, needle = CONFIG_EDITS[case]
    path = _copy(ct_models, BASE_ID, tmp_path)
    config = json.loads((path / "config.json").read_text())
    edit(config["quantization_config"])
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as err:
        gemma4_ref.load_model(str(path))
    assert needle in str(err.value), str(err.value)


def test_missing_quantization_config(ct_models, tmp_path):
    path = _copy(ct_models, BASE_ID, tmp_path)
    config = json.loads((path / "config.json").read_text())
    del config["quantization_config"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="quantization_config"):
        gemma4_ref.load_model(str(path))


@pytest.mark.parametrize(
    ("ckpt_id", "tensor"),
    [
        (BASE_ID, Q_PROJ + ".weight_scale"),
        ("e2b-w4g32a-bf16", Q_PROJ + ".weight_zero_point"),
        (BASE_ID, Q_PROJ + ".weight_packed"),
    ],
)
def test_missing_quantization_tensor(ct_models, tmp_path, ckpt_id, tensor):
    """A scale / zero point missing from the file is a CheckpointError naming the tensor (a
    missing weight_packed leaves neither packed nor dense weight: the dense one is named)."""
    from safetensors.torch import load_file, save_file

    path = _copy(ct_models, ckpt_id, tmp_path)
    tensors = load_file(path / "model.safetensors")
    del tensors[tensor]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        gemma4_ref.load_model(str(path))
    expected = Q_PROJ + ".weight" if tensor.endswith("packed") else tensor
    assert f"'{expected}'" in str(err.value), str(err.value)


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------


def _mmap_of(arr: np.ndarray) -> mmap.mmap | None:
    base = arr
    while base is not None:
        if isinstance(base, mmap.mmap):
            return base
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj
    return None


@pytest.mark.parametrize("weights", ["mmap", "memory"])
def test_packed_weights_stay_packed(ct_models, weights):
    """Every packed weight (and bf16 scale) stays packed, a quarter of the bf16 bytes: mapped,
    as a view of the file's memory map (no copy); read into memory, as a copy of the same
    bytes (`load_model`'s `weights`)."""
    path = ct_models.path(BASE_ID)
    model = gemma4_ref.load_model(str(path), weights=weights)
    ck = Checkpoint(path)
    layers = _quantized_linears(model)
    assert layers
    packed_bytes = 0
    for name, ql in layers.items():
        for arr in (ql.packed, ql.scale):
            if weights == "mmap":
                mm = _mmap_of(arr)
                assert mm is not None, f"{name}: {arr.dtype} array is not backed by a memory map"
                assert np.shares_memory(arr, np.frombuffer(mm, np.uint8))
            assert arr.flags.writeable == (weights == "memory")
        info = ck.info(name + ".weight_packed")
        assert ql.packed.nbytes == info.nbytes == ql.out_features * ql.in_features // 2
        assert ql.scale.nbytes == ck.info(name + ".weight_scale").nbytes
        packed_bytes += ql.nbytes
    file_bytes = (path / "model.safetensors").stat().st_size
    assert model.weight_bytes == file_bytes
    assert packed_bytes < file_bytes
    print(f"{BASE_ID}: {len(layers)} packed layers, {packed_bytes} bytes, file {file_bytes} bytes")


# --------------------------------------------------------------------------------------------
# config-group precedence
# --------------------------------------------------------------------------------------------


def _torch_tensor(ckpt: Checkpoint, name: str) -> torch.Tensor:
    """A checkpoint tensor as torch, bf16 restored from its uint16 bits."""
    arr = np.array(ckpt.array(name))
    if ckpt.info(name).dtype == "BF16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def test_config_group_precedence(ct_models):
    """Two config groups: 'Linear' (group 32) and 're:.*per_layer_projection$' (group 16).
    compressed-tensors quantizes per_layer_projection with the regex group whatever the group
    order, and so must gemma4_ref. The reference is the library's own per-module decompression
    with the scheme its matcher picks (transformers' dequantize path uses one dense scheme for
    every module and cannot load this checkpoint)."""
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.utils.match import match_targets

    path = ct_models.path(PRECEDENCE_ID)
    q = json.loads((path / "config.json").read_text())["quantization_config"]
    assert q["config_groups"]["group_0"]["targets"] == ["Linear"]  # the class group comes first
    config = QuantizationConfig.model_validate(q)
    model = gemma4_ref.load_model(str(path))
    ckpt = Checkpoint(path)
    layers = _quantized_linears(model)
    assert layers["model.layers.0.per_layer_projection"].group == 16
    for name, ql in layers.items():
        module = torch.nn.Linear(ql.in_features, ql.out_features)
        targets = [t for g in config.config_groups.values() for t in g.targets]
        best = match_targets(name, module, targets)[0]
        scheme = next(g for g in config.config_groups.values() if best in g.targets)
        state = {
            k: _torch_tensor(ckpt, f"{name}.{k}")
            for k in ("weight_packed", "weight_scale", "weight_shape")
        }
        dense = PackedQuantizationCompressor.decompress(state, scheme)["weight"]
        assert np.array_equal(ql.dequantize(), dense.float().numpy()), name
