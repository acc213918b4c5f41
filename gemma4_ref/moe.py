"""Mixture-of-experts routing, as in Gemma 4 26B-A4B.

Each MoE layer keeps its dense MLP and adds a bank of experts beside it (transformers 5.24,
`Gemma4TextRouter`, `Gemma4TextExperts`, `Gemma4TextDecoderLayer`):

* the router reads the **residual stream** (not the normalised MLP input): a weight-free RMSNorm,
  times a learned per-channel `scale`, times `H^-0.5`, then a linear map to one logit per expert;
* softmax over all experts in float32, keep the top k, **renormalise** them to sum to 1, then
  multiply each by its expert's learned `per_expert_scale`;
* each chosen expert is a GeGLU MLP whose gate and up projections are fused in one
  `[E, 2I, H]` tensor (gate rows first, then up rows);
* the experts read `pre_feedforward_layernorm_2(residual)`; the expert mix and the dense MLP
  output are normalised separately, summed, and normalised again by the caller.

26B-A4B has 128 experts and picks 8, so only about 4B of its 26B parameters run per token.
"""

from __future__ import annotations

import numpy as np

from .linear import Linear
from .mlp import gelu_tanh
from .norm import rms_norm


def route(
    x: np.ndarray, proj: Linear, scale: np.ndarray, per_expert_scale: np.ndarray, k: int, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick k experts per token.

    # x [S, H] residual -> (probs [S, E], weights [S, k], index [S, k])
    """
    h = rms_norm(x, None, eps) * scale * np.float32(x.shape[-1] ** -0.5)
    logits = proj(h)
    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    # A stable sort on the negated probabilities gives the top k in descending order, ties
    # broken towards the lower expert index.
    index = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    weights = np.take_along_axis(probs, index, axis=-1)
    weights = weights / weights.sum(axis=-1, keepdims=True)
    return probs, (weights * per_expert_scale[index]).astype(np.float32), index


class Experts:
    """A bank of GeGLU experts stored as two 3-D tensors."""

    def __init__(self, gate_up: list[Linear], down: list[Linear]):
        self.gate_up = gate_up  # E x [2I, H]
        self.down = down  # E x [H, I]

    def __call__(self, x: np.ndarray, weights: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Run each token through its chosen experts and mix.

        # x [S, H], weights [S, k], index [S, k] -> [S, H]
        """
        out = np.zeros_like(x, dtype=np.float32)
        for e in np.unique(index):
            rows, slot = np.nonzero(index == e)
            gu = self.gate_up[e](x[rows])
            half = gu.shape[1] // 2
            y = self.down[e](gelu_tanh(gu[:, :half]) * gu[:, half:])
            out[rows] += y * weights[rows, slot][:, None]
        return out
