"""Each Numba kernel agrees with its plain NumPy reference, and the references agree with torch.

Tolerances: kernels sum in a different order than NumPy/BLAS, so float32 results agree to a
relative 1e-5; exact operations (bf16 widening and rounding) must agree bit for bit.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gemma4_ref import linear
from gemma4_ref.attention import (
    BLOCKED_FROM,
    KVCache,
    LayerCache,
    attention,
    attention_blocked,
    attention_ref,
)
from gemma4_ref.config import RopeSpec
from gemma4_ref.linear import (
    MATVEC_SERIAL_BELOW,
    Linear,
    bf16_to_f32,
    f32_to_bf16,
    linear_ref,
    matvec_bf16,
)
from gemma4_ref.mlp import gelu_tanh, gelu_tanh_times
from gemma4_ref.norm import rms_norm, rms_norm_ref
from gemma4_ref.rope import apply_rope, apply_rope_ref, cos_sin, inv_freq

rng = np.random.default_rng(0)


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_bf16_round_trip_matches_torch():
    x = (rng.standard_normal(10_000) * 10.0 ** rng.integers(-8, 8, 10_000)).astype(np.float32)
    x[:3] = [np.inf, -np.inf, 0.0]
    ours = f32_to_bf16(x)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, ref)
    back = torch.from_numpy(ref.view(np.int16)).view(torch.bfloat16).float().numpy()
    assert np.array_equal(bf16_to_f32(ours), back)


@pytest.mark.parametrize("rows", [1, 3, 70, linear.WX_TOKENS + 1])
@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("shape", [(5, 3), (300, 77), (1024, 512)])
def test_linear_kernel_matches_reference(rows, dtype, shape):
    """Decode (one row) and prefill: up to `WX_TOKENS` rows as W x^T with blocked
    transposes of odd sizes, past it as x W^T."""
    w32 = rng.standard_normal(shape).astype(np.float32)
    w = {"bf16": f32_to_bf16(w32), "f16": w32.astype(np.float16), "f32": w32}[dtype]
    x = rng.standard_normal((rows, shape[1])).astype(np.float32)
    y = Linear(w, dtype)(x)
    assert y.shape == (rows, shape[0]) and y.dtype == np.float32
    assert rel(y, linear_ref(x, w, dtype)) < 1e-5


@pytest.mark.parametrize("n_in", [512, 500])
@pytest.mark.parametrize("n_out", [3, 7, MATVEC_SERIAL_BELOW // 512 + 3, 1001])
def test_matvec_bf16_serial_parallel_and_capped(n_out, n_in):
    """Both decode paths (one core below MATVEC_SERIAL_BELOW weights, blocks of rows over all cores
    above), with row counts that leave 0-3 rows past the four streams of a block, and the
    fused soft-cap of the head. 512 inputs take the LLVM IR loop (32 weights a step); 500 are
    not a multiple of 32 and take the plain loop. The weights are read-only, as when they are
    memory-mapped from a checkpoint."""
    w = f32_to_bf16(rng.standard_normal((n_out, n_in)).astype(np.float32))
    w.setflags(write=False)
    x = (4 * rng.standard_normal(n_in)).astype(np.float32)  # |W x| ~ 90: past the cap of 30
    want = linear_ref(x[None], w, "bf16")[0]
    assert rel(matvec_bf16(w, x), want) < 1e-5
    cap = np.float32(30.0)
    capped = matvec_bf16(w, x, 30.0)
    assert rel(capped, cap * np.tanh(want / cap)) < 1e-5
    assert np.abs(capped).max() <= 30.0 < np.abs(want).max()  # the cap really bends them


def test_linear_reference_matches_torch_on_bf16_weights():
    w = f32_to_bf16(rng.standard_normal((64, 48)).astype(np.float32))
    x = rng.standard_normal((4, 48)).astype(np.float32)
    wt = torch.from_numpy(w.view(np.int16)).view(torch.bfloat16).float()
    ref = F.linear(torch.from_numpy(x), wt).numpy()
    assert rel(linear_ref(x, w, "bf16"), ref) < 1e-6


@pytest.mark.parametrize("with_weight", [True, False])
def test_rms_norm_kernel_and_reference_match_torch(with_weight):
    x = rng.standard_normal((3, 7, 40)).astype(np.float32) * 3
    w = (rng.random(40) + 0.5).astype(np.float32) if with_weight else None
    # transformers 5.24 Gemma4RMSNorm: fp32, pow(mean + eps, -0.5), times w (not 1 + w).
    xt = torch.from_numpy(x)
    ref = xt * torch.pow(xt.pow(2).mean(-1, keepdim=True) + 1e-6, -0.5)
    if w is not None:
        ref = ref * torch.from_numpy(w)
    assert rel(rms_norm_ref(x, w, 1e-6), ref.numpy()) < 1e-6
    assert rel(rms_norm(x, w, 1e-6), ref.numpy()) < 1e-6


def test_gelu_tanh_matches_torch():
    x = (rng.standard_normal(1000) * 4).astype(np.float32)
    ref = F.gelu(torch.from_numpy(x), approximate="tanh").numpy()
    assert np.abs(gelu_tanh(x) - ref).max() < 1e-5


def test_gated_gelu_matches_torch():
    """The MLP's in-place `gelu_tanh(g) * up` against torch's gelu(tanh) times up, and its
    inputs are left as they were."""
    g = (rng.standard_normal((7, 300)) * 4).astype(np.float32)
    up = rng.standard_normal((7, 300)).astype(np.float32)
    g0, up0 = g.copy(), up.copy()
    want = (F.gelu(torch.from_numpy(g), approximate="tanh") * torch.from_numpy(up)).numpy()
    assert rel(gelu_tanh_times(g, up), want) < 1e-5
    assert np.array_equal(g, g0) and np.array_equal(up, up0)


@pytest.mark.parametrize(
    "spec,head_dim",
    [
        (RopeSpec("default", 10_000.0), 256),
        (RopeSpec("proportional", 1_000_000.0, 0.25), 512),
        (RopeSpec("proportional", 1_000_000.0, 0.25), 32),
    ],
)
def test_inv_freq_matches_transformers(spec, head_dim):
    from transformers import Gemma4TextConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextRotaryEmbedding

    cfg = Gemma4TextConfig(
        num_hidden_layers=2,
        layer_types=["sliding_attention", "full_attention"],
        head_dim=head_dim,
        global_head_dim=head_dim,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": spec.theta},
            "full_attention": {
                "rope_type": "proportional",
                "rope_theta": spec.theta,
                "partial_rotary_factor": spec.partial_rotary_factor,
            },
        },
    )
    emb = Gemma4TextRotaryEmbedding(cfg)
    kind = "full_attention" if spec.rope_type == "proportional" else "sliding_attention"
    ref = getattr(emb, f"{kind}_inv_freq").numpy()
    ours = inv_freq(spec, head_dim)
    np.testing.assert_allclose(ours, ref, rtol=2e-7)
    if spec.rope_type == "proportional":
        n_rot = int(0.25 * head_dim // 2)
        assert np.all(ours[n_rot:] == 0) and np.all(ours[:n_rot] > 0)


def test_rope_kernel_matches_reference_and_transformers():
    from transformers.models.gemma4.modeling_gemma4 import apply_rotary_pos_emb

    x = rng.standard_normal((9, 3, 64)).astype(np.float32)
    pos = np.arange(100, 109)
    cos, sin = cos_sin(pos, inv_freq(RopeSpec("proportional", 1e6, 0.25), 64))
    ref = apply_rotary_pos_emb(
        torch.from_numpy(x), torch.from_numpy(cos), torch.from_numpy(sin), unsqueeze_dim=1
    ).numpy()
    assert rel(apply_rope_ref(x, cos, sin), ref) < 1e-6
    assert rel(apply_rope(x, cos, sin), ref) < 1e-6
    # p-RoPE: the unrotated dims (8..31 and 40..63 of 64) pass through unchanged.
    out = apply_rope(x, cos, sin)
    assert np.array_equal(out[..., 8:32], x[..., 8:32])


@pytest.mark.parametrize("window", [0, 5])
def test_attention_kernel_matches_reference(window):
    q = rng.standard_normal((7, 4, 16)).astype(np.float32)
    k = rng.standard_normal((12, 2, 16)).astype(np.float32)
    v = rng.standard_normal((12, 2, 16)).astype(np.float32)
    k_pos = np.arange(12)
    k_pos[0] = -1  # an empty ring slot
    q_pos = np.arange(5, 12)
    ref = attention_ref(q, k, v, q_pos, k_pos, window)
    assert rel(attention(q, k, v, q_pos, k_pos, window), ref) < 1e-5
    assert rel(attention_blocked(q, k, v, q_pos, k_pos, window, block=3), ref) < 1e-5


@pytest.mark.parametrize("window", [0, 8])
def test_prompt_attention_takes_the_blas_path_and_matches_the_reference(window):
    """A prompt (S >= BLOCKED_FROM) through `attention`, query blocks smaller than S, and the
    image-block bounds (q_last past the query, q_first before the window) of attention.py."""
    S = BLOCKED_FROM + 5
    q = rng.standard_normal((S, 4, 16)).astype(np.float32)
    k = rng.standard_normal((S, 2, 16)).astype(np.float32)
    v = rng.standard_normal((S, 2, 16)).astype(np.float32)
    pos = np.arange(S)
    ref = attention_ref(q, k, v, pos, pos, window)
    assert rel(attention(q, k, v, pos, pos, window), ref) < 1e-5
    last, first = pos.copy(), pos - max(window, 1) + 1
    last[3:9], first[3:9] = 8, 0  # one image block of positions 3..8, seen both ways
    ref = attention_ref(q, k, v, pos, pos, window, last, first)
    for got in (
        attention(q, k, v, pos, pos, window, last, first),
        attention_blocked(q, k, v, pos, pos, window, last, first, block=4),
        attention(q[:5], k, v, pos[:5], pos, window, last[:5], first[:5]),  # the kernel
    ):
        want = ref[: got.shape[0]]
        assert rel(got, want) < 1e-5


def test_attention_reference_matches_torch_sdpa():
    q = rng.standard_normal((6, 4, 8)).astype(np.float32)
    k = rng.standard_normal((6, 2, 8)).astype(np.float32)
    v = rng.standard_normal((6, 2, 8)).astype(np.float32)
    pos = np.arange(6)
    qt = torch.from_numpy(q).transpose(0, 1)[None]
    kt = torch.from_numpy(np.repeat(k, 2, axis=1)).transpose(0, 1)[None]
    vt = torch.from_numpy(np.repeat(v, 2, axis=1)).transpose(0, 1)[None]
    ref = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=1.0)
    ours = attention_ref(q, k, v, pos, pos, 0)
    assert rel(ours, ref[0].transpose(0, 1).numpy()) < 1e-5


def test_ring_buffer_keeps_exactly_the_window():
    window = 4
    cache = LayerCache(n_kv=1, head_dim=2, window=window)
    k = rng.standard_normal((10, 1, 2)).astype(np.float32)
    keys, _, kpos = cache.extend(k[:6], k[:6], np.arange(6))
    assert list(kpos) == list(range(6))  # a prefill sees all of its own keys
    assert sorted(cache.pos) == [2, 3, 4, 5]  # but stores only the last W
    for p in range(6, 10):
        keys, _, kpos = cache.extend(k[p : p + 1], k[p : p + 1], np.array([p]))
    assert sorted(cache.pos) == [6, 7, 8, 9]
    assert cache.k.shape[0] == window  # bounded memory
    np.testing.assert_array_equal(keys[np.argsort(kpos)][-window:], k[6:10])
    # decode attends over the ring in place: no copy; an empty slot keeps position -1 (masked)
    short = LayerCache(n_kv=1, head_dim=2, window=window)
    short.extend(k[:2], k[:2], np.arange(2))
    keys, _, kpos = short.extend(k[2:3], k[2:3], np.array([2]))
    assert keys is short.k and sorted(kpos) == [-1, 0, 1, 2]


def test_kv_cache_skips_consumer_layers():
    from gemma4_ref.config import text_config_from_dict

    cfg = text_config_from_dict(
        {
            "num_hidden_layers": 6,
            "layer_types": ["sliding_attention"] * 2
            + ["full_attention"]
            + ["sliding_attention"] * 2
            + ["full_attention"],
            "num_kv_shared_layers": 3,
            "head_dim": 8,
            "global_head_dim": 16,
        }
    )
    cache = KVCache(cfg.layers, cfg.sliding_window)
    assert sorted(cache.layers) == [0, 1, 2]
    assert [s.kv_source for s in cfg.layers] == [0, 1, 2, 1, 1, 2]
