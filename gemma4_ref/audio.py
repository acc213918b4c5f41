"""Gemma 4's audio tower (E2B/E4B): a conformer that turns log-mel frames into soft tokens.

transformers 5.24 `Gemma4AudioModel`, a Universal Speech Model conformer (arXiv:2303.01037,
after Gulati et al. 2020, arXiv:2005.08100), then `Gemma4MultimodalEmbedder`::

    features [T, 128] from audio_features.log_mel_features (valid frames only, see below)
      -> 2 x (Conv2d 3x3 stride 2 -> LayerNorm over channels -> ReLU)   [T/4, 32 freq, 32 ch]
      -> flatten (freq, channel) -> input_proj                           [N, 1024]
      -> each conformer layer, with c() a clamp at +-gradient_clipping:
           x = FF1(x)                                 half-step feed-forward (weight 0.5)
           x = x + norm(c(attn(norm(c(x)))))          local self-attention: 12 keys, self + 11 back
           x = lconv(x)                               GLU -> causal depthwise conv -> SiLU
           x = FF2(x)
           x = norm_out(c(x))
      -> output_proj (the only bias in the model)                        [N, 1536]
      -> RMSNorm without weight -> embedding_projection                  [N, H_text]

The N rows are the audio soft tokens: they replace the N `<|audio|>` placeholders of the prompt
(multimodal.expand_placeholders), and they are *not* scaled by sqrt(H) like token embeddings.

**Padding is dropped up front.** transformers runs the padded frames through the whole tower and
masks them; but no valid token can see one: the convolutions multiply them by 0 (which is what
the zero padding of a shorter input does), attention masks them as keys, and the depthwise conv
only looks back. So this tower keeps the valid frames only and needs no masks at all; the parity
test checks the claim on clips padded as in a batch.

Each Linear except `input_proj`, `relative_k_proj` and `output_proj` is "clippable": with
`use_clipped_linears` (every release) it clamps its input and its output to four scalars from
the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from .audio_features import NUM_MELS
from .checkpoint import Checkpoint, TensorSource
from .config import _get, load_json
from .errors import ConfigError, InputError
from .linear import ClippedLinear, widen
from .norm import layer_norm, rms_norm

# The eps of Gemma4RMSNorm when a module does not pass the config's: the feed-forward norms and
# the layer's own three norms use it, the light conv's norms and the embedder use rms_norm_eps.
_DEFAULT_NORM_EPS = 1e-6
_FLOAT32_MAX = float(np.finfo(np.float32).max)

# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioConfig:
    """The audio tower's `audio_config`, defaults as in `Gemma4AudioConfig` (the released
    E2B/E4B values), plus the text width and the three prompt-token ids from the top level."""

    hidden_size: int = 1024
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    subsampling_conv_channels: tuple[int, int] = (128, 32)
    conv_kernel_size: int = 5
    residual_weight: float = 0.5
    attention_chunk_size: int = 12
    attention_context_left: int = 13
    attention_context_right: int = 0
    attention_logit_cap: float = 50.0
    use_clipped_linears: bool = True
    rms_norm_eps: float = 1e-6
    gradient_clipping: float = 1e10
    output_proj_dims: int = 1536
    text_hidden_size: int = 1536
    start_token_id: int = 256_000  # <|audio>  (config.json: boa_token_id)
    soft_token_id: int = 258_881  # <|audio|> (audio_token_id)
    end_token_id: int = 258_883  # <audio|>  (eoa_token_index, sic, or eoa_token_id)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_relative_positions(self) -> int:
        """Rows of the relative-position table: half the blocked context, plus one (13)."""
        left, right = self.attention_context_left, self.attention_context_right
        return (self.attention_chunk_size + left - 1 + right) // 2 + 1

    @property
    def subsampled_freqs(self) -> int:
        """Mel bins left after two stride-2 convolutions (32)."""
        return (NUM_MELS + 3) // 4


def audio_config_from_dict(raw: dict[str, Any], source: str = "config.json") -> AudioConfig:
    """The :class:`AudioConfig` of a parsed multimodal `config.json` (`model_type: gemma4`).

    A config without an audio tower (the 26B-A4B and 31B models) or with the unified 12B's
    encoder-free audio path gets a ConfigError that says so.
    """
    audio = raw.get("audio_config")
    if not isinstance(audio, dict):
        raise ConfigError(
            f"{source}: this checkpoint has no audio tower ('audio_config' is "
            f"{'missing' if audio is None else repr(audio)}). Gemma 4 E2B and E4B take audio."
        )
    where = f"{source} (audio_config)"
    if audio.get("model_type", "gemma4_audio") != "gemma4_audio":
        raise ConfigError(
            f"{where}: model_type '{audio.get('model_type')}' is not the E2B/E4B conformer "
            "('gemma4_audio'); this module runs only that audio tower."
        )
    if audio.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: hidden_act '{audio['hidden_act']}' is not supported (silu).")
    d = AudioConfig()
    ints = (
        "hidden_size num_hidden_layers num_attention_heads conv_kernel_size attention_chunk_size "
        "attention_context_left attention_context_right output_proj_dims"
    ).split()
    floats = "residual_weight attention_logit_cap rms_norm_eps gradient_clipping".split()
    values: dict[str, Any] = {k: _get(audio, k, getattr(d, k), where, int) for k in ints}
    values |= {k: _get(audio, k, getattr(d, k), where, float) for k in floats}
    values["use_clipped_linears"] = bool(
        _get(audio, "use_clipped_linears", d.use_clipped_linears, where, bool)
    )
    channels = audio.get("subsampling_conv_channels", list(d.subsampling_conv_channels))
    if not (isinstance(channels, list | tuple) and len(channels) == 2):
        raise ConfigError(f"{where}: 'subsampling_conv_channels' must be two ints, got {channels}.")
    values["subsampling_conv_channels"] = (int(channels[0]), int(channels[1]))
    text = raw.get("text_config") or {}
    values["text_hidden_size"] = _get(text, "hidden_size", d.text_hidden_size, source, int)
    values["start_token_id"] = _get(raw, "boa_token_id", d.start_token_id, source, int)
    values["soft_token_id"] = _get(raw, "audio_token_id", d.soft_token_id, source, int)
    end_key = "eoa_token_id" if "eoa_token_id" in raw else "eoa_token_index"
    values["end_token_id"] = _get(raw, end_key, d.end_token_id, source, int)
    cfg = AudioConfig(**values)
    _check_audio_supported(cfg, where)
    return cfg


def _check_audio_supported(c: AudioConfig, where: str) -> None:
    if c.hidden_size % c.num_attention_heads:
        raise ConfigError(
            f"{where}: hidden_size {c.hidden_size} is not a multiple of num_attention_heads "
            f"{c.num_attention_heads}."
        )
    if c.attention_context_left < 2 or c.attention_context_right < 0 or c.conv_kernel_size < 1:
        raise ConfigError(
            f"{where}: attention_context_left must be at least 2 (a frame sees itself and the "
            "context_left - 2 frames before it), attention_context_right at least 0 and "
            "conv_kernel_size at least 1."
        )
    # transformers sizes input_proj from the first conv's channel count, assuming 128 of them for
    # 128 mel bins; any other count cannot run there either.
    if c.subsampling_conv_channels[0] // 4 != c.subsampled_freqs:
        raise ConfigError(
            f"{where}: subsampling_conv_channels[0] = {c.subsampling_conv_channels[0]} does not "
            f"fit {NUM_MELS} mel bins (input_proj expects channels[0] // 4 = {c.subsampled_freqs})."
        )


def load_audio_config(folder: str | Path) -> AudioConfig:
    """Read the audio tower's configuration from `folder/config.json`."""
    path = Path(folder) / "config.json"
    return audio_config_from_dict(load_json(path), str(path))


# --- the subsampling convolutions: reference and kernel ---------------------------------------


def conv2d_stride2_ref(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A 3x3 convolution with stride 2 and zero padding 1 (no bias), channels last, the plain
    NumPy way: one matrix product per kernel tap.

    # x [T, F, Cin], w [Cout, Cin, 3, 3] (torch layout) -> [ceil(T/2), ceil(F/2), Cout]
    """
    t_in, f_in, _ = x.shape
    t_out, f_out = (t_in + 1) // 2, (f_in + 1) // 2
    # One zero row/column in front (the padding) and enough behind for the last stride.
    xp = np.pad(x, ((1, 2 * t_out - t_in), (1, 2 * f_out - f_in), (0, 0)))
    out = np.zeros((t_out, f_out, w.shape[0]), np.float32)
    for i in range(3):  # time tap
        for j in range(3):  # frequency tap
            out += xp[i : i + 2 * t_out : 2, j : j + 2 * f_out : 2] @ w[:, :, i, j].T
    return out


def conv_block_ref(x: np.ndarray, w: np.ndarray, norm: np.ndarray, eps: float) -> np.ndarray:
    """One subsampling block, `relu(layer_norm(conv(x)))` over the channels, the NumPy way.

    # x [T, F, Cin], w [Cout, Cin, 3, 3], norm [Cout] -> [ceil(T/2), ceil(F/2), Cout]
    """
    return np.maximum(layer_norm(conv2d_stride2_ref(x, w), norm, eps), np.float32(0.0))


@njit(parallel=True, cache=True)
def _conv_block_kernel(x, w, norm, eps, out):
    # x [T, F, Cin], w [3, 3, Cin, Cout], norm [Cout], out [T', F', Cout]. Each output pixel's
    # channels are summed in a small buffer, then normalised and rectified while still in
    # cache. The innermost loop runs over output channels, contiguous in `w`, so it
    # vectorises without reordering any sum.
    t_in, f_in, c_in = x.shape
    t_out, f_out, c_out = out.shape
    for t in prange(t_out):
        acc = np.empty(c_out, np.float32)
        for f in range(f_out):
            acc[:] = 0.0
            for i in range(3):
                ti = 2 * t + i - 1
                if ti < 0 or ti >= t_in:
                    continue
                for j in range(3):
                    fj = 2 * f + j - 1
                    if fj < 0 or fj >= f_in:
                        continue
                    for ci in range(c_in):
                        xv = x[ti, fj, ci]
                        taps = w[i, j, ci]
                        for co in range(c_out):
                            acc[co] += xv * taps[co]
            mean = acc.sum() / np.float32(c_out)
            var = np.float32(0.0)
            for co in range(c_out):
                var += (acc[co] - mean) * (acc[co] - mean)
            inv = np.float32(1.0) / np.sqrt(var / np.float32(c_out) + np.float32(eps))
            for co in range(c_out):
                out[t, f, co] = max((acc[co] - mean) * inv * norm[co], np.float32(0.0))


def conv_block(x: np.ndarray, w_taps: np.ndarray, norm: np.ndarray, eps: float) -> np.ndarray:
    """The Numba version of :func:`conv_block_ref`, in one pass; the weight comes tap-major.

    # x [T, F, Cin], w_taps [3, 3, Cin, Cout], norm [Cout] -> [ceil(T/2), ceil(F/2), Cout]
    """
    t_in, f_in, _ = x.shape
    out = np.empty(((t_in + 1) // 2, (f_in + 1) // 2, w_taps.shape[3]), np.float32)
    _conv_block_kernel(np.ascontiguousarray(x, dtype=np.float32), w_taps, norm, eps, out)
    return out


# --- local attention with relative positions: reference and kernel ----------------------------


def relative_position_table(num_positions: int, width: int) -> np.ndarray:
    """Sinusoids for distances `num_positions - 1` down to 0, `[sin(d tau), cos(d tau)]` with
    `tau_i = 1e4^(-i / (width/2 - 1))` (`Gemma4AudioRelPositionalEncoding`), in float32 as
    transformers builds them.  # -> [num_positions, width]"""
    half = width // 2
    increment = math.log(1.0e4) / max(half - 1, 1)
    inv_timescales = np.exp(np.arange(half, dtype=np.float32) * np.float32(-increment))
    distance = np.arange(num_positions - 1, -1, -1, dtype=np.float32)
    angle = distance[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=-1)


def local_attention_ref(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    rel: np.ndarray,
    context_left: int,
    context_right: int,
    cap: float,
) -> np.ndarray:
    """Soft-capped local attention with relative-position logits, the plain NumPy way.

    # q, k, v [T, H, D] (q and k already scaled), rel [P, H, D] -> [T, H, D]

    Query t sees key j when `0 <= t - j < context_left - 1` (itself and the 11 frames before
    it in every release) or `0 < j - t < context_right`. The logit is
    `q_t . k_j + q_t . rel[context_left - 1 - (t - j)]` (0 past the table's end), then
    `cap * tanh(logit / cap)`.

    transformers (`Gemma4AudioAttention`) computes this in blocks of `attention_chunk_size`
    queries, each against a context of keys, and finds each key's table row with the
    Transformer-XL shift (Dai et al. 2019, appendix B); unrolled, the shift puts the key d frames
    back on row `context_left - 1 - d`, and the rows count distance down from P - 1 to 0. In the
    released configs P = context_left, so key d back meets the sinusoid of distance d. The blocks
    themselves change nothing: every visible key lies in the query's block context, and a masked
    logit (-1e9 there) has weight exactly 0 in float32.
    """
    t_len, _, _ = q.shape
    dist = np.arange(t_len)[:, None] - np.arange(t_len)[None, :]  # [T, T] t - j
    visible = ((dist >= 0) & (dist < context_left - 1)) | ((dist < 0) & (-dist < context_right))
    row = context_left - 1 - dist
    has_row = visible & (row < rel.shape[0])
    content = np.einsum("thd,jhd->htj", q, k)  # [H, T, T]
    position = np.einsum("thd,phd->htp", q, rel)  # [H, T, P]
    gathered = np.take_along_axis(position, np.where(has_row, row, 0)[None], axis=2)
    logits = content + np.where(has_row[None], gathered, np.float32(0.0))
    logits = np.float32(cap) * np.tanh(logits / np.float32(cap))
    logits = np.where(visible[None], logits, -np.inf)
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("htj,jhd->thd", p, v).astype(np.float32)


@njit(parallel=True, cache=True)
def _local_attention_kernel(q, k, v, rel, context_left, context_right, cap, out):
    # q/k/v [T, H, D], rel [P, H, D], out [T, H, D]: one query row per iteration, over its
    # window of keys only (12 in the releases), so no [T, T] matrix is ever built.
    t_len, n_heads, dim = q.shape
    n_rel = rel.shape[0]
    cap32 = np.float32(cap)
    for t in prange(t_len):
        lo = max(0, t - (context_left - 2))
        hi = min(t_len - 1, t + max(context_right - 1, 0))  # the query itself at least
        logits = np.empty(hi - lo + 1, np.float32)
        for h in range(n_heads):
            top = np.float32(-np.inf)
            for j in range(lo, hi + 1):
                s = np.float32(0.0)
                for e in range(dim):
                    s += q[t, h, e] * k[j, h, e]
                row = context_left - 1 - (t - j)
                if row < n_rel:
                    r = np.float32(0.0)
                    for e in range(dim):
                        r += q[t, h, e] * rel[row, h, e]
                    s += r
                s = cap32 * np.tanh(s / cap32)
                logits[j - lo] = s
                top = max(top, s)
            total = np.float32(0.0)
            for i in range(logits.size):
                logits[i] = np.exp(logits[i] - top)
                total += logits[i]
            for e in range(dim):
                acc = np.float32(0.0)
                for j in range(lo, hi + 1):
                    acc += logits[j - lo] * v[j, h, e]
                out[t, h, e] = acc / total


def local_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    rel: np.ndarray,
    context_left: int,
    context_right: int,
    cap: float,
) -> np.ndarray:
    """The Numba version of :func:`local_attention_ref`.  # [T, H, D] x 3, [P, H, D] -> [T, H, D]"""
    out = np.empty(q.shape, np.float32)
    args = [np.ascontiguousarray(a, dtype=np.float32) for a in (q, k, v, rel)]
    _local_attention_kernel(*args, context_left, context_right, cap, out)
    return out


# --- the light convolution ----------------------------------------------------------------------


def causal_depthwise_conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Each channel convolved with its own kernel, looking back only (left zero padding K-1),
    as `Gemma4AudioCausalConv1d`. A few shifted multiply-adds over whole arrays: already as
    fast as a kernel would be.  # x [T, C], w [C, K] -> [T, C]"""
    t_len = x.shape[0]
    taps = w.shape[1]
    xp = np.concatenate([np.zeros((taps - 1, x.shape[1]), np.float32), x])
    out = np.zeros_like(x, dtype=np.float32)
    for i in range(taps):
        out += xp[i : i + t_len] * w[:, i]
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    """`1 / (1 + e^-x)` in float32, as torch computes it.  # [...] -> [...]"""
    with np.errstate(over="ignore"):  # e^-x = inf for x < -88 gives the right limit, 0
        return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


def silu(x: np.ndarray) -> np.ndarray:
    """`x * sigmoid(x)`.  # [...] -> [...]"""
    return x * sigmoid(x)


def softplus(x: np.ndarray) -> np.ndarray:
    """`log(1 + e^x)`, returning x itself above 20 as torch does.  # [...] -> [...]"""
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0)))).astype(np.float32)


# --- loading ------------------------------------------------------------------------------------


def _floats(w: TensorSource, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A small tensor (conv kernel, clip bound) widened once to float32, shape-checked."""
    return np.array(widen(*w.raw(name, shape)), dtype=np.float32)


def _clipped(w: TensorSource, name: str, out_f: int, in_f: int, c: AudioConfig) -> ClippedLinear:
    """A clippable linear, with its four bounds when `use_clipped_linears` is on (otherwise the
    checkpoint holds none)."""
    bounds = None
    if c.use_clipped_linears:
        names = ("input_min", "input_max", "output_min", "output_max")
        bounds = tuple(np.float32(_floats(w, f"{name}.{b}", ())) for b in names)
    return ClippedLinear(w.linear(name + ".linear", out_f, in_f), bounds)


# --- the tower ----------------------------------------------------------------------------------


class Subsampler:
    """`Gemma4AudioSubSampleConvProjection`: two stride-2 conv blocks, then a linear layer."""

    def __init__(self, w: TensorSource, c: AudioConfig):
        c0, c1 = c.subsampling_conv_channels
        p = "audio_tower.subsample_conv_projection."
        # The kernel wants the weights tap-major with output channels last.
        conv0 = _floats(w, p + "layer0.conv.weight", (c0, 1, 3, 3))
        conv1 = _floats(w, p + "layer1.conv.weight", (c1, c0, 3, 3))
        self.conv0, self.conv1 = (
            np.ascontiguousarray(k.transpose(2, 3, 1, 0)) for k in (conv0, conv1)
        )
        self.norm0 = w.vector(p + "layer0.norm.weight", c0)
        self.norm1 = w.vector(p + "layer1.norm.weight", c1)
        self.proj = w.linear(p + "input_proj_linear", c.hidden_size, c.subsampled_freqs * c1)
        self.eps = c.rms_norm_eps

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """# [T, 128] valid frames -> [ceil(ceil(T/2)/2), hidden]"""
        x = features[:, :, None]  # one input channel, kept last
        x = conv_block(x, self.conv0, self.norm0, self.eps)
        x = conv_block(x, self.conv1, self.norm1, self.eps)
        # Channels last already gives torch's (freq, channel) flattening order.
        return self.proj(x.reshape(x.shape[0], -1))


class FeedForward:
    """`Gemma4AudioFeedForward`: the conformer's half-step FF, `x + 0.5 * norm(FF(norm(x)))`."""

    def __init__(self, w: TensorSource, p: str, c: AudioConfig):
        h = c.hidden_size
        self.pre_norm = w.vector(p + "pre_layer_norm.weight", h)
        self.up = _clipped(w, p + "ffw_layer_1", 4 * h, h, c)
        self.down = _clipped(w, p + "ffw_layer_2", h, 4 * h, c)
        self.post_norm = w.vector(p + "post_layer_norm.weight", h)
        self.scale = np.float32(c.residual_weight)
        self.clamp = min(c.gradient_clipping, _FLOAT32_MAX)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """# [N, H] -> [N, H]"""
        h = rms_norm(np.clip(x, -self.clamp, self.clamp), self.pre_norm, _DEFAULT_NORM_EPS)
        h = np.clip(self.down(silu(self.up(h))), -self.clamp, self.clamp)
        return x + rms_norm(h, self.post_norm, _DEFAULT_NORM_EPS) * self.scale


class Attention:
    """`Gemma4AudioAttention`: local self-attention with learned per-dimension query scales,
    relative-position logits and a logit soft-cap, all in float32."""

    def __init__(self, w: TensorSource, p: str, c: AudioConfig):
        h = c.hidden_size
        self.q = _clipped(w, p + "q_proj", h, h, c)
        self.k = _clipped(w, p + "k_proj", h, h, c)
        self.v = _clipped(w, p + "v_proj", h, h, c)
        self.post = _clipped(w, p + "post", h, h, c)
        self.heads, self.head_dim = c.num_attention_heads, c.head_dim
        # The scales as transformers applies them: a float32 constant, then the learned
        # per-dimension softplus for q. The 1/ln 2 factors come from the original code's base-2
        # softmax; k's ln(1 + e)/ln 2 equals softplus(1)/ln 2.
        self.q_scale = np.float32(self.head_dim**-0.5 / math.log(2))
        self.k_scale = np.float32(math.log(1 + math.e) / math.log(2))
        self.per_dim = softplus(w.vector(p + "per_dim_scale", self.head_dim))
        # The relative-position keys depend on no input: project the table once.
        rel_proj = w.linear(p + "relative_k_proj", h, h)
        table = relative_position_table(c.num_relative_positions, h)
        self.rel = rel_proj(table).reshape(-1, self.heads, self.head_dim)  # [P, H, D]
        self.context = (c.attention_context_left, c.attention_context_right)
        self.cap = c.attention_logit_cap

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """# [N, H*D] -> [N, H*D]"""
        shape = (x.shape[0], self.heads, self.head_dim)
        q = self.q(x).reshape(shape) * self.q_scale * self.per_dim
        k = self.k(x).reshape(shape) * self.k_scale
        v = self.v(x).reshape(shape)
        out = local_attention(q, k, v, self.rel, *self.context, self.cap)
        return self.post(out.reshape(x.shape[0], -1))


class LightConv:
    """`Gemma4AudioLightConv1d`: `x + W_end silu(norm(c(dwconv(glu(W_start norm(x))))))`."""

    def __init__(self, w: TensorSource, p: str, c: AudioConfig):
        h = c.hidden_size
        self.pre_norm = w.vector(p + "pre_layer_norm.weight", h)
        self.start = _clipped(w, p + "linear_start", 2 * h, h, c)
        kernel = _floats(w, p + "depthwise_conv1d.weight", (h, 1, c.conv_kernel_size))
        self.kernel = kernel[:, 0, :].copy()  # [H, K]
        self.conv_norm = w.vector(p + "conv_norm.weight", h)
        self.end = _clipped(w, p + "linear_end", h, h, c)
        self.eps = c.rms_norm_eps
        self.clamp = min(c.gradient_clipping, _FLOAT32_MAX)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """# [N, H] -> [N, H]"""
        a, b = np.split(self.start(rms_norm(x, self.pre_norm, self.eps)), 2, axis=-1)
        # GLU: the first half, gated by the second
        h = np.clip(causal_depthwise_conv(a * sigmoid(b), self.kernel), -self.clamp, self.clamp)
        return x + self.end(silu(rms_norm(h, self.conv_norm, self.eps)))


class ConformerLayer:
    """`Gemma4AudioLayer`: FF, attention, light conv, FF, norm (the module docstring's loop)."""

    def __init__(self, w: TensorSource, i: int, c: AudioConfig):
        p = f"audio_tower.layers.{i}."
        h = c.hidden_size
        self.ff1 = FeedForward(w, p + "feed_forward1.", c)
        self.norm_pre_attn = w.vector(p + "norm_pre_attn.weight", h)
        self.attn = Attention(w, p + "self_attn.", c)
        self.norm_post_attn = w.vector(p + "norm_post_attn.weight", h)
        self.lconv = LightConv(w, p + "lconv1d.", c)
        self.ff2 = FeedForward(w, p + "feed_forward2.", c)
        self.norm_out = w.vector(p + "norm_out.weight", h)
        self.clamp = min(c.gradient_clipping, _FLOAT32_MAX)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """# [N, H] -> [N, H]"""
        c, eps = self.clamp, _DEFAULT_NORM_EPS
        x = self.ff1(x)
        h = self.attn(rms_norm(np.clip(x, -c, c), self.norm_pre_attn, eps))
        x = x + rms_norm(np.clip(h, -c, c), self.norm_post_attn, eps)
        x = self.ff2(self.lconv(x))
        return rms_norm(np.clip(x, -c, c), self.norm_out, eps)


class AudioTower:
    """The audio encoder and its embedder into the text model: log-mel frames in, soft tokens
    out. Build it with :meth:`load`; call it with what `log_mel_features` returns."""

    def __init__(self, config: AudioConfig, w: TensorSource):
        c = config
        self.config = c
        self.subsample = Subsampler(w, c)
        self.layers = [ConformerLayer(w, i, c) for i in range(c.num_hidden_layers)]
        self.output_proj = w.linear("audio_tower.output_proj", c.output_proj_dims, c.hidden_size)
        self.output_bias = w.vector("audio_tower.output_proj.bias", c.output_proj_dims)
        self.embedding_projection = w.linear(
            "embed_audio.embedding_projection", c.text_hidden_size, c.output_proj_dims
        )

    @classmethod
    def load(
        cls, checkpoint: Checkpoint | str | Path, config: AudioConfig | None = None
    ) -> AudioTower:
        """The tower of a multimodal checkpoint (a :class:`Checkpoint` or its folder), its
        config read from the folder's config.json unless given. The weights stay
        memory-mapped in their stored dtype."""
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)
        return cls(config or load_audio_config(ckpt.folder), TensorSource(ckpt, "model.", None))

    def encode(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The conformer's output at the valid positions (`Gemma4AudioModel`'s last hidden
        state with the padding stripped).  # [T, 128] f32, [T] bool -> [N, output_proj_dims]"""
        x = self.subsample(_valid_frames(features, mask))
        for layer in self.layers:
            x = layer(x)
        return self.output_proj(x) + self.output_bias

    def __call__(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The audio soft tokens, in the text model's width, for the `<|audio|>` placeholders
        (`get_audio_features` then the mask strip in `Gemma4Model.forward`).

        # features [T, 128] f32, mask [T] bool -> [N, text_hidden_size] f32
        """
        h = rms_norm(self.encode(features, mask), None, self.config.rms_norm_eps)
        return self.embedding_projection(h)


def _valid_frames(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The valid leading frames, after checking the pair is what log_mel_features makes.

    # [T, 128], [T] bool -> [n_valid, 128] f32
    """
    features = np.asarray(features)
    mask = np.asarray(mask, dtype=bool)
    if features.ndim != 2 or features.shape[1] != NUM_MELS or mask.shape != features.shape[:1]:
        raise InputError(
            f"the audio features must be [T, {NUM_MELS}] with a [T] mask; got "
            f"{list(features.shape)} and {list(mask.shape)}. Use log_mel_features()."
        )
    n = int(mask.sum())
    if n == 0:
        raise InputError("the audio mask marks no frame as valid: there is no audio to encode.")
    if not mask[:n].all():
        raise InputError(
            "the audio mask must be a run of valid frames followed only by padding, as "
            "log_mel_features makes it."
        )
    return np.ascontiguousarray(features[:n], dtype=np.float32)
