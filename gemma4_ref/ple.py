"""Per-Layer Embeddings (PLE): a small extra embedding for every layer, E2B and E4B only.

The Gemma 3n / Gemma 4 "E" models give each decoder layer its own 256-wide input signal, built
from two parts (transformers 5.24, `Gemma4TextModel.get_per_layer_inputs` and
`project_per_layer_inputs`):

1. a **token-identity** part: one row of a huge packed table `[vocab, L * 256]`, scaled by
   `sqrt(256) = 16`, cut into L slices of 256;
2. a **context** part: the (already `sqrt(H)`-scaled) main embedding projected to `L * 256`,
   scaled by `H^-0.5`, cut into L slices and RMS-normalised with one shared 256-wide weight.

The two are summed and scaled by `2^-0.5`. Inside layer i, after the MLP residual, a gate
`gelu_tanh(W_gate h)` (H -> 256) multiplies slice i, is projected back to H, normalised, and
added to the residual stream.

Why it is cheap: the packed table is looked up, never multiplied -- only the rows of the prompt's
tokens are read -- so it can live in flash or on disk. This is why E2B counts 2.3B "effective"
parameters against 5.1B in total: the difference is mostly this table.
"""

from __future__ import annotations

import math

import numpy as np

from .linear import Linear, widen
from .mlp import gelu_tanh
from .norm import rms_norm


class PerLayerEmbeddings:
    """Builds the per-layer inputs `[S, L, P]` from token ids and the main embeddings."""

    def __init__(
        self,
        table: np.ndarray,
        table_dtype: str,
        projection: Linear,
        norm_weight: np.ndarray,
        num_layers: int,
        width: int,
        hidden_size: int,
        eps: float,
    ):
        self.table = table  # [V_ple, L*P], stored dtype
        self.table_dtype = table_dtype
        self.projection = projection  # [L*P, H]
        self.norm_weight = norm_weight  # [P] float32
        self.num_layers = num_layers
        self.width = width
        self.eps = eps
        self.token_scale = np.float32(math.sqrt(width))
        self.projection_scale = np.float32(hidden_size**-0.5)
        self.combine_scale = np.float32(2.0**-0.5)

    def token_part(self, ids: np.ndarray) -> np.ndarray:
        """Look up the packed table.  # [S] -> [S, L, P]"""
        rows = widen(self.table[ids], self.table_dtype) * self.token_scale
        return rows.reshape(len(ids), self.num_layers, self.width)

    def context_part(self, x0: np.ndarray) -> np.ndarray:
        """Project the scaled main embedding.  # [S, H] -> [S, L, P]"""
        proj = self.projection(x0) * self.projection_scale
        proj = proj.reshape(x0.shape[0], self.num_layers, self.width)
        return rms_norm(proj, self.norm_weight, self.eps)

    def __call__(self, ids: np.ndarray, x0: np.ndarray) -> np.ndarray:
        """# ids [S], x0 [S, H] -> [S, L, P]"""
        return (self.context_part(x0) + self.token_part(ids)) * self.combine_scale


class PerLayerGate:
    """The per-layer injection inside decoder layer i."""

    def __init__(self, gate: Linear, projection: Linear, norm_weight: np.ndarray, eps: float):
        self.gate = gate  # [P, H]
        self.projection = projection  # [H, P]
        self.norm_weight = norm_weight  # [H]
        self.eps = eps

    def __call__(self, h: np.ndarray, per_layer_input: np.ndarray) -> np.ndarray:
        """The residual update.  # h [S, H], per_layer_input [S, P] -> [S, H]"""
        g = gelu_tanh(self.gate(h)) * per_layer_input
        return rms_norm(self.projection(g), self.norm_weight, self.eps)
