"""The gated feed-forward block: `down(gelu_tanh(gate(x)) * up(x))`.

Gemma 4's activation is GELU with the tanh approximation (`gelu_pytorch_tanh`,
Hendrycks & Gimpel 2016): `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
On E2B the KV-sharing layers use an MLP twice as wide (`use_double_wide_mlp`), which is only a
different weight shape here.
"""

from __future__ import annotations

import numpy as np

from .linear import Linear

_SQRT_2_OVER_PI = np.float32(np.sqrt(2.0 / np.pi))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation, in float32.  # [...] -> [...]"""
    x = x.astype(np.float32, copy=False)
    inner = _SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x)
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner))


def gelu_tanh_times(g: np.ndarray, other: np.ndarray) -> np.ndarray:
    """gelu_tanh(g) * other.  # g, other [S, N] f32 -> [S, N] f32

    The same formula as :func:`gelu_tanh`, worked in place in one new array instead of a new
    array per operation: 3x faster on a prefill's [128, 6144] gate (5.5 -> 1.8 ms), which E2B
    prefill runs 15 times.
    """
    t = g * g
    t *= np.float32(0.044715)
    t += np.float32(1.0)
    t *= g
    t *= _SQRT_2_OVER_PI  # sqrt(2/pi) (x + 0.044715 x^3)
    np.tanh(t, out=t)
    t += np.float32(1.0)
    t *= g
    t *= np.float32(0.5)
    t *= other
    return t


class GatedMLP:
    """Gemma's GeGLU feed-forward block."""

    def __init__(self, gate: Linear, up: Linear, down: Linear):
        self.gate, self.up, self.down = gate, up, down

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """# [S, H] -> [S, H]"""
        return self.down(gelu_tanh_times(self.gate(x), self.up(x)))
