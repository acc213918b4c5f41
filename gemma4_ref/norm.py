"""RMSNorm as Gemma 4 computes it.

Gemma 4 (transformers 5.24 `Gemma4RMSNorm`) normalises in float32 with
`y = x * (mean(x^2) + eps)^-0.5` and then multiplies by the stored weight **as is**: `x * w`,
not the `x * (1 + w)` of Gemma 2 and 3. Checkpoint norm weights therefore hold the full
multiplier (they are initialised to ones). Some norms have no weight at all: the value norm in
every attention layer, and the MoE router's input norm.

The encoders also use plain LayerNorm (mean removed, then variance), in NumPy: the audio tower's
subsampler and the unified 12B's patch embedder.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def rms_norm_ref(x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    """Normalise the last axis.  # [..., d], [d] | None -> [..., d]"""
    x = x.astype(np.float32, copy=False)
    ms = np.mean(x * x, axis=-1, keepdims=True)
    y = x * np.power(ms + np.float32(eps), np.float32(-0.5))
    return y if weight is None else y * weight


# Serial on purpose: this touches a few thousand floats, less time than waking threads.
@njit(cache=True)
def _rms_norm_rows(x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray) -> None:
    # [rows, d], [d] -> [rows, d]; an empty `weight` means "no scale".
    rows, d = x.shape
    has_w = weight.shape[0] == d
    for r in range(rows):
        ss = np.float32(0.0)
        for i in range(d):
            ss += x[r, i] * x[r, i]
        inv = np.float32((ss / np.float32(d) + np.float32(eps)) ** np.float32(-0.5))
        if has_w:
            for i in range(d):
                out[r, i] = x[r, i] * inv * weight[i]
        else:
            for i in range(d):
                out[r, i] = x[r, i] * inv


_NO_WEIGHT = np.zeros(0, np.float32)


def rms_norm(x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    """Numba RMSNorm over the last axis; agrees with `rms_norm_ref`.  # [..., d] -> [..., d]"""
    shape = x.shape
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, shape[-1])
    out = np.empty_like(flat)
    _rms_norm_rows(flat, _NO_WEIGHT if weight is None else weight, eps, out)
    return out.reshape(shape)


def layer_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis with a weight and no bias (`nn.LayerNorm(bias=False)`, the
    audio tower's subsampler); the unified 12B's LayerNorms add a bias afterwards.

    # [..., C], [C] -> [..., C]
    """
    centred = x - x.mean(axis=-1, keepdims=True)
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(eps)) * weight
