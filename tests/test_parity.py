"""Live parity of gemma4_ref with transformers on tiny random checkpoints of every variant.

transformers is the specification: each checkpoint of ``tiny_models.CHECKPOINTS`` is loaded in
transformers in fp32 with eager attention (a bf16/fp16 file is upcast exactly, so both sides see
the same weights) and in gemma4_ref, and fed the same 40-token prompt (BOS + random ids, longer
than the 16-token sliding window).  The checks:

* prefill logits agree to ``max|ours - ref| <= 1e-4 * max|ref|``;
* 64 greedy tokens (positions 40..103, far past the window, through the KV cache on both sides)
  are identical; so are the greedy tokens after a 5-token prompt, where the cache fills up past
  the window during decoding (and some checkpoints stop at an EOS id, which both must do alike);
* transformers' per-step logits of that greedy run (computed through its KV cache) agree with a
  fresh gemma4_ref prefill of the whole sequence, and with gemma4_ref's own cached steps (for
  both prompts).

``test_checkpoint_sanity`` checks the fixtures themselves (every tensor randomised, transformers
reads the files back exactly, generation runs the full length), so that a parity pass means
something.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import (
    CHECKPOINTS,
    CHECKPOINTS_BY_ID,
    GENERATION_EOS,
    MAX_NEW_TOKENS,
    PROMPT_LEN,
    SHORT_MAX_NEW_TOKENS,
    VARIANTS,
    build_multimodal_model,
    build_text_model,
    load_reference,
)

REL_TOL = 1e-4
IDS = [c.id for c in CHECKPOINTS]


def _compare(ours: np.ndarray, ref: np.ndarray, first_pos: int = 0) -> tuple[float, float, str]:
    """Relative and absolute max difference of two [S, V] logit arrays, and a short report."""
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    scale = float(np.abs(ref).max())
    worst = np.unravel_index(int(diff.argmax()), diff.shape)
    bad_rows = np.nonzero(diff.max(-1) > REL_TOL * scale)[0]
    rel = float(diff.max()) / scale
    report = (
        f"max|ours-ref| = {diff.max():.3e} (relative {rel:.2e}, tolerance {REL_TOL:.0e}) "
        f"at position {first_pos + int(worst[0])}, token {int(worst[1])}; max|ref| = {scale:.3f}"
    )
    if bad_rows.size:
        report += (
            f"; {bad_rows.size} of {diff.shape[0]} positions exceed the tolerance, the first is "
            f"position {first_pos + int(bad_rows[0])} (max diff {diff[bad_rows[0]].max():.3e})"
        )
    return rel, float(diff.max()), report


# --------------------------------------------------------------------------------------------
# the fixtures themselves
# --------------------------------------------------------------------------------------------


def _file_tensors(path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


@pytest.mark.parametrize("ckpt_id", IDS)
def test_checkpoint_sanity(tiny, ckpt_id):
    """The tiny checkpoint is what it claims to be and is fully randomised."""
    ckpt = CHECKPOINTS_BY_ID[ckpt_id]
    variant = VARIANTS[ckpt.variant]
    path = tiny.path(ckpt_id)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[ckpt.dtype]

    # layout
    assert (path / "model.safetensors.index.json").exists() == ckpt.sharded
    if ckpt.sharded:
        index = json.loads((path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
    files = _file_tensors(path)
    prefix = "model.language_model." if ckpt.multimodal else "model."
    assert all(k.startswith("model.") for k in files)
    assert ckpt.multimodal == any(k.startswith("model.vision_tower.") for k in files) or (
        variant.unified and any(k.startswith("model.embed_vision.") for k in files)
    )
    assert not any(k.startswith("lm_head") for k in files), "lm_head is tied, never stored"

    # every tensor is random: nothing left at its init value
    for name, t in files.items():
        assert t.dtype == dtype, f"{name}: {t.dtype}"
        values = t.float()
        if values.numel() > 1:
            assert values.min() < values.max(), f"{name} is constant ({values.flatten()[0]})"
        else:
            assert float(values) not in (0.0, 1.0), f"{name} = {float(values)}"

    # config.json: the Hub form (global_head_dim) or transformers' own (per_layer_config)
    config = json.loads((path / "config.json").read_text())
    text = config["text_config"] if ckpt.multimodal else config
    if ckpt.config_form == "hub":
        assert "per_layer_config" not in text and text["global_head_dim"] == 32
    else:
        assert "per_layer_config" in text and "global_head_dim" not in text
    assert text["eos_token_id"] == [1, 106]
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == GENERATION_EOS

    # transformers reads back exactly the master weights rounded to the file dtype
    ref = load_reference(path)
    ref_state = ref.state_dict()
    master = (build_multimodal_model if ckpt.multimodal else build_text_model)(ckpt.variant)
    for name, t in master.state_dict().items():
        if name.startswith("lm_head"):
            continue
        expected = t.to(dtype).float()
        assert torch.equal(ref_state[name], expected), f"{name} was not read back exactly"
        if name.startswith(prefix):  # (tower keys may be stored under their pre-rename names)
            assert torch.equal(files[name].float(), expected), f"{name} differs in the file"
    text_keys = {k for k in files if k.startswith(prefix)}
    extra = text_keys - set(master.state_dict())
    n_shared = variant.text.get("num_kv_shared_layers", 0)
    assert len(extra) == 3 * n_shared, sorted(extra)  # unused k/v tensors of consumer layers
    assert all(k.startswith(prefix + "layers.") for k in extra)
    text_cfg = ref.config.get_text_config()
    for i, layer_type in enumerate(text_cfg.layer_types):
        layer = text_cfg.per_layer_config[i]
        if layer_type == "full_attention":
            assert layer.head_dim == 32
            global_kv = variant.text.get("num_global_key_value_heads")
            if global_kv is not None:
                assert layer.num_key_value_heads == global_kv
        else:
            assert layer.head_dim == 16

    # the reference run is informative: spread logits, varied tokens, full length, no EOS
    r = tiny.reference(ckpt_id)
    assert r.prefill_logits.shape == (PROMPT_LEN, 512)
    assert r.prefill_logits.std() > 2.0 and np.abs(r.prefill_logits).max() > 15.0
    assert len(r.tokens) == MAX_NEW_TOKENS, f"generation stopped early: {r.tokens}"
    assert not set(r.tokens) & set(GENERATION_EOS)
    assert len(set(r.tokens)) >= 24, f"degenerate greedy run: {r.tokens}"
    short = tiny.reference(ckpt_id, "short")
    assert 8 <= len(short.tokens) <= SHORT_MAX_NEW_TOKENS
    for run in (r, short):
        assert run.min_gap > 1e-3, f"near-tie in the greedy run (gap {run.min_gap:.2e})"
        assert run.min_router_gap > 3e-5, f"near-tie in MoE routing ({run.min_router_gap:.2e})"


# --------------------------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ckpt_id", IDS)
def test_prefill_logits(tiny, ckpt_id):
    """Logits of a fresh 40-token prefill (2.5 sliding windows)."""
    r = tiny.reference(ckpt_id)
    model = tiny.ours(ckpt_id)
    assert model.config.vocab_size == 512
    ours = np.asarray(model.forward(np.array(r.prompt)))
    assert ours.dtype == np.float32
    rel, _, report = _compare(ours, r.prefill_logits)
    print(f"{ckpt_id}: prefill {report}")
    assert rel <= REL_TOL, f"{ckpt_id}: prefill logits: {report}"


@pytest.mark.parametrize("kind", ["long", "short"])
@pytest.mark.parametrize("ckpt_id", IDS)
def test_greedy_generation(tiny, ckpt_id, kind):
    """Greedy tokens through the KV cache equal transformers' generate(do_sample=False).

    long: 40-token prompt, 64 new tokens; short: 5-token prompt (the cache fills past the window
    while decoding), up to 40 new tokens or an EOS id, which must end both runs alike.
    """
    r = tiny.reference(ckpt_id, kind)
    n_new = MAX_NEW_TOKENS if kind == "long" else SHORT_MAX_NEW_TOKENS
    ours = tiny.ours(ckpt_id).generate(r.prompt, max_new_tokens=n_new, temperature=0.0)
    ours = [int(t) for t in ours]
    if ours != r.tokens:
        k = next((i for i, (a, b) in enumerate(zip(ours, r.tokens, strict=False)) if a != b), None)
        if k is None:
            k = min(len(ours), len(r.tokens))
        top2 = np.sort(r.step_logits[k])[-2:] if k < len(r.step_logits) else None
        gap = f"{top2[1] - top2[0]:.3e}" if top2 is not None else "n/a"
        pytest.fail(
            f"{ckpt_id}: greedy tokens diverge at new token {k} (position {len(r.prompt) + k}): "
            f"ours {ours[k : k + 8]} vs ref {r.tokens[k : k + 8]}; lengths {len(ours)} vs "
            f"{len(r.tokens)}; reference top-2 gap at that step {gap}"
        )


@pytest.mark.parametrize("ckpt_id", IDS)
def test_step_logits_vs_fresh_prefill(tiny, ckpt_id):
    """transformers' cached per-step logits equal ours from one prefill of the whole sequence."""
    r = tiny.reference(ckpt_id)
    seq = r.prompt + r.tokens[:-1]  # 103 tokens: each step's input
    ours = np.asarray(tiny.ours(ckpt_id).forward(np.array(seq)))[PROMPT_LEN - 1 :]
    rel, _, report = _compare(ours, r.step_logits, first_pos=PROMPT_LEN - 1)
    print(f"{ckpt_id}: steps (fresh prefill) {report}")
    assert rel <= REL_TOL, f"{ckpt_id}: per-step logits: {report}"


@pytest.mark.parametrize("kind", ["long", "short"])
@pytest.mark.parametrize("ckpt_id", IDS)
def test_step_logits_through_cache(tiny, ckpt_id, kind):
    """Our own KV-cache steps (prefill, then one token at a time) give transformers' logits."""
    model = tiny.ours(ckpt_id)
    r = tiny.reference(ckpt_id, kind)
    cache = model.new_cache()
    rows = [model.step(r.prompt, cache)[-1]]
    for token in r.tokens[:-1]:
        rows.append(model.step([token], cache)[-1])
    rel, _, report = _compare(np.stack(rows), r.step_logits, first_pos=len(r.prompt) - 1)
    print(f"{ckpt_id}: steps (KV cache, {kind} prompt) {report}")
    assert rel <= REL_TOL, f"{ckpt_id}: cached per-step logits: {report}"
