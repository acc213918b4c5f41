"""The vision tower: image patches in, soft tokens in the text model's width out.

Gemma 4's E2B/E4B/26B/31B encode images with a small ViT (transformers 5.24,
`Gemma4VisionModel` and `Gemma4MultimodalEmbedder`). Per image, with N patches of 16 x 16 x 3
pixels in [0, 1] at grid positions (x, y)::

    h = input_proj(2 * (pixels - 0.5)) + T[0][x] + T[1][y]   # learned 2-D position table
    for each encoder layer:                                  # the text layer's norm sandwich
        h = h + post_attn_norm(attn(input_norm(h)))          # bidirectional, 2-D axial RoPE
        h = h + post_ff_norm(mlp(pre_ff_norm(h)))            # GeGLU
    s = mean of each 3 x 3 block of patches * sqrt(hidden)   # the pooler: N / 9 soft tokens
    s = (s - std_bias) * std_scale                           # `standardize` (26B/31B only)
    soft = embedding_projection(rms_norm(s))                 # into the text width, no weight

Attention inside the tower is the text layers' attention with a different position code: q/k
norms with weights, a weight-free v norm, scale 1, but every patch sees every other patch, and
the rotation is *axial*: the first half of each head's dimensions turns with the patch's column
x, the second half with its row y (`apply_multidimensional_rope`), each half in the
rotate-half layout with `inv_freq[j] = 1 / 100^(2j / (D/2))`.

On E2B/E4B every linear is a *clippable* linear (`Gemma4ClippableLinear`): its input and output
are clamped to bounds stored in the checkpoint (`input_min`, `input_max`, `output_min`,
`output_max`), which keeps activations inside the range the model was quantisation-trained for.

Padding patches (the processor pads every image to a fixed count) never touch a real patch, so
this tower runs on the real patches alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit, prange

from .checkpoint import TensorSource
from .config import RopeSpec
from .errors import ConfigError, InputError
from .linear import ClippedLinear, widen
from .mlp import GatedMLP
from .norm import rms_norm
from .rope import apply_rope, cos_sin, inv_freq

_SUPPORTED_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_tanh")


@dataclass(frozen=True)
class VisionConfig:
    """`vision_config` of `config.json`; defaults are transformers' `Gemma4VisionConfig`."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 16
    num_attention_heads: int = 12
    num_key_value_heads: int = 12
    head_dim: int = 64
    rms_norm_eps: float = 1e-6
    patch_size: int = 16
    pooling_kernel_size: int = 3
    position_embedding_size: int = 10 * 1024
    rope_theta: float = 100.0
    use_clipped_linears: bool = False
    standardize: bool = False


def vision_config_from_dict(raw: dict[str, Any], source: str) -> VisionConfig | None:
    """The vision tower's config, or None when `config.json` has no `vision_config`."""
    v = raw.get("vision_config")
    if v is None:
        return None
    where = f"{source} (vision_config)"
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: must be an object.")
    defaults = VisionConfig()
    values: dict[str, Any] = {}
    for name in (
        "hidden_size intermediate_size num_hidden_layers num_attention_heads num_key_value_heads "
        "head_dim patch_size pooling_kernel_size position_embedding_size"
    ).split():
        value = v.get(name, getattr(defaults, name))
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{where}: field '{name}' must be a positive integer, got {value!r}.")
        values[name] = value
    values["rms_norm_eps"] = float(v.get("rms_norm_eps", defaults.rms_norm_eps))
    for name in ("use_clipped_linears", "standardize"):
        value = v.get(name, getattr(defaults, name))
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: field '{name}' must be true or false, got {value!r}.")
        values[name] = value
    rope = v.get("rope_parameters") or {}
    # transformers renames the Hub's "default" to "axial": the only vision RoPE it runs.
    if rope.get("rope_type", "axial") not in ("axial", "default"):
        raise ConfigError(
            f"{where}: rope_parameters.rope_type {rope['rope_type']!r} is not supported; the "
            "Gemma 4 vision tower uses axial 2-D RoPE ('default' or 'axial')."
        )
    values["rope_theta"] = float(rope.get("rope_theta", defaults.rope_theta))
    activation = v.get("hidden_activation", "gelu_pytorch_tanh")
    if activation not in _SUPPORTED_ACTIVATIONS:
        raise ConfigError(
            f"{where}: hidden_activation {activation!r} is not supported; Gemma 4 uses "
            "'gelu_pytorch_tanh'."
        )
    if v.get("attention_bias"):
        raise ConfigError(f"{where}: attention_bias=true is not supported (no release has it).")
    cfg = VisionConfig(**values)
    if cfg.head_dim % 4:
        raise ConfigError(
            f"{where}: head_dim={cfg.head_dim} must be a multiple of 4: axial RoPE splits each "
            "head in two halves, each rotated in pairs."
        )
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ConfigError(
            f"{where}: num_key_value_heads={cfg.num_key_value_heads} does not divide "
            f"num_attention_heads={cfg.num_attention_heads}."
        )
    return cfg


@njit(parallel=True, cache=True)
def _full_attention_kernel(q, kt, v, out):
    # q [N, nH, D], kt [nKV, D, N] (keys transposed), v [N, nKV, D] -> out [N, nH, D].
    # One (patch, head) pair per task. Both inner loops run along contiguous memory with no
    # reduction in them (scores over keys, output over head dims), so LLVM can vectorise them
    # without reordering any sum.
    n, n_heads, d = q.shape
    n_kv, t_len = kt.shape[0], kt.shape[2]
    group = n_heads // n_kv
    for task in prange(n * n_heads):
        s = task // n_heads
        h = task % n_heads
        kvh = h // group
        scores = np.zeros(t_len, np.float32)
        for i in range(d):
            qi = q[s, h, i]
            key_row = kt[kvh, i]
            for t in range(t_len):
                scores[t] += qi * key_row[t]
        best = scores.max()
        total = np.float32(0.0)
        for t in range(t_len):
            scores[t] = np.exp(scores[t] - best)
            total += scores[t]
        acc = np.zeros(d, np.float32)
        for t in range(t_len):
            w = scores[t] / total
            for i in range(d):
                acc[i] += w * v[t, kvh, i]
        out[s, h] = acc


def full_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Every patch attends to every patch, scale 1 (Numba); agrees with
    `attention.attention_ref` given `q_last` = the last patch for every query.

    # q [N, nH, D], k/v [N, nKV, D] -> [N, nH, D]
    """
    out = np.empty(q.shape, np.float32)
    kt = np.ascontiguousarray(np.asarray(k, np.float32).transpose(1, 2, 0))
    _full_attention_kernel(
        np.ascontiguousarray(q, np.float32), kt, np.ascontiguousarray(v, np.float32), out
    )
    return out


def axial_rope(
    x: np.ndarray, rope_x: tuple[np.ndarray, np.ndarray], rope_y: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Rotate the first half of each head by the column, the second half by the row.

    # x [N, heads, D], rope_x/rope_y ([N, D/2], [N, D/2]) -> [N, heads, D]
    """
    half = x.shape[-1] // 2
    return np.concatenate(
        [apply_rope(x[..., :half], *rope_x), apply_rope(x[..., half:], *rope_y)], axis=-1
    )


class EncoderLayer:
    """One vision encoder layer (transformers `Gemma4VisionEncoderLayer`)."""

    def __init__(self, cfg: VisionConfig, w: TensorSource, i: int):
        H, hd, nH, nKV = (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
        )
        p = f"vision_tower.encoder.layers.{i}."
        self.eps = cfg.rms_norm_eps
        self.n_heads, self.n_kv, self.head_dim = nH, nKV, hd
        self.input_norm = w.vector(p + "input_layernorm.weight", H)
        self.post_attn_norm = w.vector(p + "post_attention_layernorm.weight", H)
        self.pre_ff_norm = w.vector(p + "pre_feedforward_layernorm.weight", H)
        self.post_ff_norm = w.vector(p + "post_feedforward_layernorm.weight", H)

        def lin(name: str, out_f: int, in_f: int) -> ClippedLinear:
            bounds = None
            if cfg.use_clipped_linears:
                bounds = tuple(
                    np.float32(widen(*w.raw(f"{p}{name}.{b}", ()))[()])
                    for b in ("input_min", "input_max", "output_min", "output_max")
                )
            return ClippedLinear(w.linear(f"{p}{name}.linear", out_f, in_f), bounds)

        self.q_proj = lin("self_attn.q_proj", nH * hd, H)
        self.k_proj = lin("self_attn.k_proj", nKV * hd, H)
        self.v_proj = lin("self_attn.v_proj", nKV * hd, H)
        self.o_proj = lin("self_attn.o_proj", H, nH * hd)
        self.q_norm = w.vector(p + "self_attn.q_norm.weight", hd)
        self.k_norm = w.vector(p + "self_attn.k_norm.weight", hd)
        inter = cfg.intermediate_size
        self.mlp = GatedMLP(
            lin("mlp.gate_proj", inter, H),
            lin("mlp.up_proj", inter, H),
            lin("mlp.down_proj", H, inter),
        )

    def attend(
        self,
        h: np.ndarray,
        rope_x: tuple[np.ndarray, np.ndarray],
        rope_y: tuple[np.ndarray, np.ndarray],
    ) -> np.ndarray:
        """Bidirectional self-attention over one image's patches.  # [N, H] (normed) -> [N, H]"""
        N, hd = h.shape[0], self.head_dim
        q = rms_norm(self.q_proj(h).reshape(N, self.n_heads, hd), self.q_norm, self.eps)
        k = rms_norm(self.k_proj(h).reshape(N, self.n_kv, hd), self.k_norm, self.eps)
        v = rms_norm(self.v_proj(h).reshape(N, self.n_kv, hd), None, self.eps)
        q, k = axial_rope(q, rope_x, rope_y), axial_rope(k, rope_x, rope_y)
        o = full_attention(q, k, v)
        return self.o_proj(o.reshape(N, self.n_heads * hd))

    def __call__(
        self,
        h: np.ndarray,
        rope_x: tuple[np.ndarray, np.ndarray],
        rope_y: tuple[np.ndarray, np.ndarray],
    ) -> np.ndarray:
        """# [N, H], rope_x/rope_y ([N, D/2], [N, D/2]) -> [N, H]"""
        a = self.attend(rms_norm(h, self.input_norm, self.eps), rope_x, rope_y)
        h = h + rms_norm(a, self.post_attn_norm, self.eps)
        f = self.mlp(rms_norm(h, self.pre_ff_norm, self.eps))
        return h + rms_norm(f, self.post_ff_norm, self.eps)


def pool(h: np.ndarray, positions: np.ndarray, k: int) -> np.ndarray:
    """Average each k x k block of patches into one soft token, row-major over the blocks.

    Like transformers' `Gemma4VisionPooler`, a block's sum is divided by k^2 whatever its
    member count, and blocks with no patch are dropped.
    # h [N, H], positions [N, 2] (x, y) -> [G, H]
    """
    bx, by = positions[:, 0] // k, positions[:, 1] // k
    blocks_per_row = (int(positions[:, 0].max()) + 1) // k
    group = bx + blocks_per_row * by
    n_groups = int(group.max()) + 1
    sums = np.zeros((n_groups, h.shape[1]), np.float32)
    np.add.at(sums, group, h.astype(np.float32))
    present = np.bincount(group, minlength=n_groups) > 0
    return sums[present] / np.float32(k * k)


class VisionTower:
    """`Gemma4VisionModel` plus `embed_vision`, loaded from a multimodal checkpoint."""

    def __init__(self, cfg: VisionConfig, text_hidden: int, w: TensorSource):
        H, p = cfg.hidden_size, cfg.patch_size
        self.config = cfg
        self.input_proj = w.linear("vision_tower.patch_embedder.input_proj", H, 3 * p * p)
        table, tag = w.raw(
            "vision_tower.patch_embedder.position_embedding_table",
            (2, cfg.position_embedding_size, H),
        )
        self.position_table, self.position_dtype = table, tag
        self.layers = [EncoderLayer(cfg, w, i) for i in range(cfg.num_hidden_layers)]
        self.std_bias = self.std_scale = None
        if cfg.standardize:
            self.std_bias = w.vector("vision_tower.std_bias", H)
            self.std_scale = w.vector("vision_tower.std_scale", H)
        self.projection = w.linear("embed_vision.embedding_projection", text_hidden, H)
        self.freq = inv_freq(RopeSpec("default", cfg.rope_theta), cfg.head_dim // 2)
        self.root_hidden = np.float32(math.sqrt(H))

    def _check(self, patches: np.ndarray, positions: np.ndarray, name: str) -> None:
        """Shapes and position range, named in the error.  # [N, 3p^2], [N, 2]"""
        p = self.config.patch_size
        if patches.ndim != 2 or patches.shape[1] != 3 * p * p:
            raise InputError(
                f"{name}: patches have shape {list(patches.shape)}; this tower takes "
                f"[N, {3 * p * p}] (16 x 16 x 3 pixels per patch). Use gemma4_ref.image."
                "process_image to make them."
            )
        if positions.shape != (patches.shape[0], 2):
            raise InputError(
                f"{name}: positions have shape {list(positions.shape)}; expected "
                f"[{patches.shape[0]}, 2] (x, y per patch)."
            )
        if patches.shape[0] == 0:
            raise InputError(f"{name}: the image has no patches.")
        limit = self.config.position_embedding_size
        if positions.min() < 0 or positions.max() >= limit:
            raise InputError(
                f"{name}: patch positions must lie in 0..{limit - 1} "
                f"(vision_config.position_embedding_size), got {positions.min()}.."
                f"{positions.max()}; use a smaller max_soft_tokens or a less elongated image."
            )

    def embed_patches(self, patches: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Patch embedding plus the learned 2-D positions.  # [N, 3p^2], [N, 2] -> [N, H]"""
        h = self.input_proj(np.float32(2.0) * (patches.astype(np.float32) - np.float32(0.5)))
        tx = widen(self.position_table[0][positions[:, 0]], self.position_dtype)
        ty = widen(self.position_table[1][positions[:, 1]], self.position_dtype)
        return h + tx + ty

    def encode(self, patches: np.ndarray, positions: np.ndarray, name: str = "image") -> np.ndarray:
        """One image's pooled (and standardized) features, in the tower's width.

        Rows whose position is (-1, -1) are the processor's padding and are dropped first.
        # patches [N, 3p^2] in [0, 1], positions [N, 2] int (x, y) -> [N / k^2, H_vision]
        """
        positions = np.asarray(positions, dtype=np.int64)
        patches = np.asarray(patches, dtype=np.float32)
        if positions.ndim == 2 and positions.shape[-1] == 2 and len(positions) == len(patches):
            real = ~(positions == -1).all(axis=-1)
            patches, positions = patches[real], positions[real]
        self._check(patches, positions, name)
        h = self.embed_patches(patches, positions)
        rope_x = cos_sin(positions[:, 0], self.freq)
        rope_y = cos_sin(positions[:, 1], self.freq)
        for layer in self.layers:
            h = layer(h, rope_x, rope_y)
        s = pool(h, positions, self.config.pooling_kernel_size) * self.root_hidden
        if self.std_bias is not None:
            s = (s - self.std_bias) * self.std_scale
        return s

    def __call__(
        self, patches: np.ndarray, positions: np.ndarray, name: str = "image"
    ) -> np.ndarray:
        """One image's soft tokens in the text model's width (not scaled by sqrt(H_text)).

        # patches [N, 3p^2], positions [N, 2] -> [N / k^2, H_text]
        """
        s = self.encode(patches, positions, name)
        return self.projection(rms_norm(s, None, self.config.rms_norm_eps))
