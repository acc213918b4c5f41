"""Rotary position embeddings: plain RoPE on sliding layers, proportional p-RoPE on global ones.

RoPE (Su et al. 2021, "RoFormer") rotates pairs of query/key dimensions by an angle proportional
to the token's position, so that q.k depends only on the distance between tokens. Gemma 4 pairs
dimension i with i + D/2 (the "rotate half" layout) and uses two flavours
(transformers 5.24, `modeling_rope_utils._compute_proportional_rope_parameters`):

* sliding layers: `inv_freq[j] = 1 / theta^(2j / D)` for all D/2 pairs, theta = 10 000;
* global layers, **proportional RoPE**: only the first `p * D / 2` pairs rotate, with
  `inv_freq[j] = 1 / theta^(2j / D)` -- the exponent still divides by the *full* head dim --
  and the remaining frequencies are zero, so those dimensions pass through unrotated.
  With D = 512, p = 0.25, theta = 10^6, 64 of 256 pairs rotate. The unrotated dimensions carry
  position-free content, which is what lets the global layers generalise to long contexts.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .config import RopeSpec


def inv_freq(spec: RopeSpec, head_dim: int) -> np.ndarray:
    """Inverse frequencies in float32, by transformers' formula.  # -> [head_dim/2]

    A few values differ from torch's by 1-2 ulp: NumPy's and torch's float32 `pow` round
    differently. That is far inside the parity tolerance.
    """
    half = head_dim // 2
    if spec.rope_type == "proportional":
        n_rot = int(spec.partial_rotary_factor * head_dim // 2)
    else:
        n_rot = half
    exponent = np.arange(0, 2 * n_rot, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    freq = np.zeros(half, np.float32)
    freq[:n_rot] = np.float32(1.0) / np.power(np.float32(spec.theta), exponent)
    return freq / np.float32(spec.factor)


def cos_sin(positions: np.ndarray, freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rotation table for some positions.  # [S] int, [D/2] -> ([S, D], [S, D])"""
    angles = positions.astype(np.float32)[:, None] * freq[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


def apply_rope_ref(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate each head of x.  # [S, heads, D], [S, D], [S, D] -> [S, heads, D]"""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


# Serial on purpose: this touches a few thousand floats, less time than waking threads.
@njit(cache=True)
def _rope_kernel(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, out: np.ndarray) -> None:
    # [S, H, D] -> [S, H, D]
    s_len, heads, d = x.shape
    half = d // 2
    for s in range(s_len):
        for h in range(heads):
            for i in range(half):
                a = x[s, h, i]
                b = x[s, h, i + half]
                out[s, h, i] = a * cos[s, i] - b * sin[s, i]
                out[s, h, i + half] = b * cos[s, i + half] + a * sin[s, i + half]


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Numba RoPE; agrees with :func:`apply_rope_ref`.  # [S, H, D] -> [S, H, D]"""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    _rope_kernel(x, np.ascontiguousarray(cos), np.ascontiguousarray(sin), out)
    return out
