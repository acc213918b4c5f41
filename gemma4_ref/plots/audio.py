"""Chapter 10's pictures and helpers: a waveform, its mel spectrogram, the audio tokens over time,
the conformer's chunked local attention, and the unified 12B's raw frames.

The spectrogram is :func:`gemma4_ref.audio_features.log_mel_features`; token counts come from
:func:`gemma4_ref.audio_features.soft_tokens_from_frames`. Three helpers build what a chapter
needs and the repository does not ship:

* :func:`make_waveform`, a test clip synthesised with NumPy (no downloads);
* :func:`tiny_audio_checkpoint`, a tiny *randomly initialised* audio tower written by
  transformers itself (its outputs show shapes, never learned behaviour);
* :func:`local_visibility`, the attention rule of the conformer as a boolean matrix.

The frame arithmetic: mel frame ``i`` is the 20 ms window centred on sample ``160 i`` (the
extractor pads 160 zeros in front); two 3 x 3 convolutions of stride 2 and padding 1 keep every
other frame twice, so token ``n`` *owns* frames ``4n .. 4n + 3`` (the spans tile the frames)
and *reads* frames ``4n - 3 .. 4n + 3`` (its receptive field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..audio_features import HOP_LENGTH, SAMPLING_RATE, soft_tokens_from_frames
from .widgets import Explorer

STRIDE = 4  # mel frames per audio token: two stride-2 convolutions
REACH = 3  # frames a token's receptive field reaches past its own span on each side
CHUNK, CONTEXT_LEFT, CONTEXT_RIGHT = 12, 13, 0  # the released attention geometry


# --- a clip to listen to -----------------------------------------------------------------------


def make_waveform(seconds: float = 2.4, seed: int = 0) -> np.ndarray:
    """A synthetic 16 kHz clip with structure to see in a spectrogram. # -> [N] float64 in [-1, 1]

    In order: a rising chirp (200 Hz to 3 kHz); a pause; a "vowel" (a 140 Hz buzz with its
    harmonics shaped by three formants, rising in pitch) fading in and out; a pause; two
    steady tones (440 and 1320 Hz); a click; and faint white noise throughout.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLING_RATE))
    t = np.arange(n) / SAMPLING_RATE
    x = 0.01 * rng.standard_normal(n)

    def segment(start: float, stop: float) -> np.ndarray:
        """A smooth on/off envelope (10 ms ramps) over [start, stop) seconds."""
        ramp = 0.01
        return np.clip(np.minimum(t - start, stop - t) / ramp, 0.0, 1.0)

    s = seconds / 2.4  # the layout scales with the length
    env = segment(0.05 * s, 0.65 * s)
    tau = t - 0.05 * s
    x += 0.5 * env * np.sin(2 * np.pi * (200 * tau + 0.5 * 2800 / (0.6 * s) * tau**2))
    env = segment(0.8 * s, 1.5 * s) * np.sin(np.pi * np.clip((t - 0.8 * s) / (0.7 * s), 0, 1))
    pitch = 140 + 40 * np.clip((t - 0.8 * s) / (0.7 * s), 0, 1)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLING_RATE
    for h in range(1, 25):
        f = h * 160.0
        weight = sum(np.exp(-(((f - c) / 120.0) ** 2)) for c in (700.0, 1200.0, 2600.0))
        x += 0.35 * env * (0.15 + weight) / h**0.5 * np.sin(h * phase)
    env = segment(1.65 * s, 2.3 * s)
    x += 0.3 * env * (np.sin(2 * np.pi * 440 * t) + 0.6 * np.sin(2 * np.pi * 1320 * t))
    click = int(2.0 * s * SAMPLING_RATE)
    x[click : click + 40] += 0.8 * np.hanning(40)
    return np.clip(x, -1.0, 1.0)


# --- a tiny random tower, made by transformers ------------------------------------------------

#: The tiny conformer of :func:`tiny_audio_checkpoint`: the released attention geometry (blocks
#: of 12 queries, self + 11 frames back), clipped linears, toy width. The first conv keeps
#: 128 channels as released: transformers sizes the input projection from it.
TINY_AUDIO = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "subsampling_conv_channels": [128, 16],
    "output_proj_dims": 48,
    "attention_logit_cap": 4.0,  # the released 50 never bends the logits of a toy
    "gradient_clipping": 3.0,  # the released 1e10 never clamps anything
}


def tiny_audio_checkpoint(folder: str | Path, seed: int = 0) -> Any:
    """Write a tiny *random* Gemma 4 checkpoint with an audio tower to ``folder``.

    transformers builds a ``Gemma4ForConditionalGeneration`` with :data:`TINY_AUDIO` and the
    one-layer text decoder of ``plots.vision.TINY_TEXT`` (only its width matters), every weight
    drawn by ``plots.vision.random_weights_`` (clip bounds +-[1, 2.5]), saved with
    ``save_pretrained``. Returns the transformers model (fp32, eager, eval);
    ``AudioTower.load(folder)`` is the package's tower on the same weights.
    """
    import transformers

    from .vision import TINY_TEXT, _save_quietly, random_weights_

    config = transformers.Gemma4Config(
        text_config=transformers.Gemma4TextConfig(**TINY_TEXT),
        vision_config=None,
        audio_config=transformers.Gemma4AudioConfig(**TINY_AUDIO),
    )
    config._attn_implementation = "eager"
    model = transformers.Gemma4ForConditionalGeneration(config)
    random_weights_(model, seed, clip=(1.0, 2.5))
    _save_quietly(model, folder)
    return model.eval()


# --- frames and tokens -------------------------------------------------------------------------


def token_spans(num_valid_frames: int) -> np.ndarray:
    """The mel frames each audio token owns: ``[4n, min(4n + 4, T))``, tiling the valid frames.

    # -> [n_tokens, 2] int64 (start, end), n_tokens = soft_tokens_from_frames(T)
    """
    n = soft_tokens_from_frames(num_valid_frames)
    start = np.arange(n, dtype=np.int64) * STRIDE
    return np.stack([start, np.minimum(start + STRIDE, num_valid_frames)], axis=-1)


def receptive_field(token: int, num_valid_frames: int) -> tuple[int, int]:
    """The frames the two convolutions read for ``token``: ``[4n - 3, 4n + 3]`` inside the clip,
    as a half-open ``(start, end)``."""
    lo = max(0, STRIDE * token - REACH)
    return lo, min(num_valid_frames, STRIDE * token + REACH + 1)


def frame_times(num_frames: int) -> np.ndarray:
    """The centre of each mel frame in seconds: frame i is centred on sample 160 i.  # -> [T]"""
    return np.arange(num_frames) * HOP_LENGTH / SAMPLING_RATE


def local_visibility(
    length: int,
    context_left: int = CONTEXT_LEFT,
    context_right: int = CONTEXT_RIGHT,
) -> np.ndarray:
    """Which keys each query of the conformer sees: ``0 <= t - j < context_left - 1`` (itself
    and 11 back in the releases) or ``0 < j - t < context_right`` (none in the releases).

    # -> [T, T] bool (query, key)
    """
    d = np.arange(length)[:, None] - np.arange(length)[None, :]
    return ((d >= 0) & (d < context_left - 1)) | ((d < 0) & (-d < context_right))


def block_contexts(
    length: int,
    chunk: int = CHUNK,
    context_left: int = CONTEXT_LEFT,
    context_right: int = CONTEXT_RIGHT,
) -> list[tuple[int, int, int, int]]:
    """transformers' blocks: each chunk of queries with the span of keys it is scored against.

    Block b holds queries ``[b c, (b + 1) c)`` and its context keys
    ``[b c - (context_left - 1), (b + 1) c + context_right)``, clipped to the clip.
    # -> [(query start, query end, key start, key end), ...]
    """
    out = []
    for q0 in range(0, length, chunk):
        q1 = min(q0 + chunk, length)
        out.append((q0, q1, max(0, q0 - (context_left - 1)), min(length, q1 + context_right)))
    return out


# --- pictures ----------------------------------------------------------------------------------


def plot_waveform(wave: np.ndarray, marks: dict[str, float] | None = None) -> Figure:
    """The clip over time; ``marks`` labels moments (seconds).  # wave [N] at 16 kHz"""
    fig = Figure(figsize=(11, 2.4), layout="constrained")
    ax = fig.add_subplot()
    t = np.arange(len(wave)) / SAMPLING_RATE
    ax.plot(t, wave, linewidth=0.4, color="#3b6ea8")
    for label, at in (marks or {}).items():
        ax.annotate(label, (at, 0.9), fontsize=8, ha="center")
    ax.set_xlim(0, t[-1])
    ax.set_ylim(-1, 1.1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("sample")
    ax.set_title(f"{len(wave)} samples at 16 kHz = {len(wave) / SAMPLING_RATE:.2f} s", fontsize=9)
    return fig


def _mel_axes(ax, features: np.ndarray, mask: np.ndarray) -> None:
    """The log-mel image, frames along x, invalid frames hatched."""
    ax.imshow(features.T, origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
    n_valid = int(mask.sum())
    if n_valid < len(mask):
        ax.axvspan(n_valid - 0.5, len(mask) - 0.5, color="grey", alpha=0.6, hatch="//")
    ax.set_ylabel("mel bin")


def plot_mel_tokens(
    features: np.ndarray, mask: np.ndarray, token: int | None = None, every: int = 5
) -> Figure:
    """The log-mel spectrogram with the audio tokens over it.

    Thin lines split the frames into the 4-frame spans the tokens own; every ``every``-th
    token is numbered along the top. With ``token`` set, its own frames are outlined and its
    receptive field shaded. # features [T, 128], mask [T]
    """
    n_valid = int(mask.sum())
    spans = token_spans(n_valid)
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax = fig.add_subplot()
    _mel_axes(ax, features, mask)
    for start, _ in spans:
        ax.axvline(start - 0.5, color="white", linewidth=0.35, alpha=0.6)
    top = ax.secondary_xaxis("top", functions=(lambda f: f / STRIDE, lambda n: n * STRIDE))
    top.set_xlabel(f"audio token ({len(spans)} tokens, 40 ms each)", fontsize=8)
    top.set_xticks(np.arange(0, len(spans), every))
    if token is not None:
        lo, hi = receptive_field(token, n_valid)
        ax.axvspan(lo - 0.5, hi - 0.5, color="cyan", alpha=0.25, label="receptive field")
        s0, s1 = spans[token]
        ax.axvspan(s0 - 0.5, s1 - 0.5, fill=False, edgecolor="cyan", linewidth=2, label="own")
        ax.legend(loc="upper right", fontsize=7)
    ax.set_xlabel(f"mel frame (10 ms hop; {n_valid} valid of {len(mask)})")
    return fig


def plot_local_attention(
    length: int,
    chunk: int = CHUNK,
    context_left: int = CONTEXT_LEFT,
    context_right: int = CONTEXT_RIGHT,
    query: int | None = None,
) -> Figure:
    """The conformer's attention pattern over ``length`` tokens.

    Filled cells: the keys each query sees (:func:`local_visibility`); rectangles: the key span
    each block of ``chunk`` queries is scored against in transformers' blocked computation.
    With ``query`` set, its row is marked.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    vis = local_visibility(length, context_left, context_right)
    fig = Figure(figsize=(6.2, 5.6), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(vis, cmap=ListedColormap(["#f4f4f4", "#3b6ea8"]), interpolation="nearest")
    for q0, q1, k0, k1 in block_contexts(length, chunk, context_left, context_right):
        ax.add_patch(
            Rectangle((k0 - 0.5, q0 - 0.5), k1 - k0, q1 - q0, fill=False, color="#e07b39", lw=1.2)
        )
        ax.axhline(q0 - 0.5, color="#999999", linewidth=0.5)
    if query is not None:
        ax.axhline(query, color="red", linewidth=1.0)
    ax.set_xlabel("key (audio token)")
    ax.set_ylabel("query (audio token)")
    ax.set_title(
        f"blocks of {chunk} queries (orange: each block's key context);\n"
        f"blue: the {int(vis[-1].sum())} keys a query sees",
        fontsize=9,
    )
    return fig


def plot_unified_frames(wave: np.ndarray, frame: int = 640, seconds: float = 0.25) -> Figure:
    """The unified 12B's audio tokens against the conformer's, over the first ``seconds``.

    Top: the waveform cut into ``frame``-sample pieces (one token each, raw samples). Bottom:
    the mel frames, and the 4-frame spans the conformer's tokens own; both make one token per
    40 ms, from very different inputs.  # wave [N] at 16 kHz
    """
    from ..audio_features import log_mel_features

    n = int(seconds * SAMPLING_RATE)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    t = np.arange(n) / SAMPLING_RATE
    top.plot(t, wave[:n], linewidth=0.6, color="#3b6ea8")
    for i, start in enumerate(range(0, n, frame)):
        top.axvline(start / SAMPLING_RATE, color="#e07b39", linewidth=1)
        if start + frame / 2 < n:
            top.text(
                (start + frame / 2) / SAMPLING_RATE, 0.85, f"token {i}", ha="center", fontsize=7
            )
    top.set_xlim(0, t[-1])
    top.set_ylim(-1, 1)
    top.set_title(f"unified 12B: raw {frame}-sample frames, one token each", fontsize=9)
    feats = log_mel_features(wave)
    frames = int(np.ceil(n / HOP_LENGTH))
    times = frame_times(len(feats.mask))
    extent = (-HOP_LENGTH / 2 / SAMPLING_RATE, times[frames - 1] + HOP_LENGTH / 2 / SAMPLING_RATE)
    bottom.imshow(
        feats.features[:frames].T, origin="lower", aspect="auto", cmap="magma",
        extent=(*extent, 0, 128), interpolation="nearest",
    )  # fmt: skip
    for i, (start, _) in enumerate(token_spans(int(feats.mask.sum()))):
        if start >= frames:
            break
        at = (start - 0.5) * HOP_LENGTH / SAMPLING_RATE
        bottom.axvline(at, color="white", linewidth=1)
        bottom.text(at + 0.02, 110, f"token {i}", fontsize=7, color="white")
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("mel bin")
    bottom.set_title("E2B/E4B: 10 ms mel frames, 4 per conformer token", fontsize=9)
    return fig


# --- the explorer --------------------------------------------------------------------------


class TokenExplorer(Explorer):
    """Pick an audio token: its frames on the spectrogram (owned and read by the convolutions),
    the frames its first attention layer can reach, and its row of the attention pattern.

    ``draw(token)`` works without widgets.
    """

    def __init__(self, features: np.ndarray, mask: np.ndarray):
        super().__init__()
        self.features, self.mask = features, mask
        self.n_valid = int(mask.sum())
        self.n_tokens = soft_tokens_from_frames(self.n_valid)

    def make_controls(self, widgets: Any) -> dict[str, Any]:
        return {"token": widgets.IntSlider(0, 0, self.n_tokens - 1, description="token")}

    def reach(self, token: int) -> tuple[int, int]:
        """Frames the token can draw on after one attention layer: the receptive fields of the
        keys it sees (itself and up to 11 tokens back).  # -> (start, end) frames"""
        keys = np.flatnonzero(local_visibility(self.n_tokens)[token])
        return receptive_field(int(keys.min()), self.n_valid)[0], receptive_field(
            int(keys.max()), self.n_valid
        )[1]

    def draw(self, token: int) -> Figure:
        token = int(token)
        own = token_spans(self.n_valid)[token]
        field = receptive_field(token, self.n_valid)
        reach = self.reach(token)
        fig = Figure(figsize=(11, 4.4), layout="constrained")
        top, bottom = fig.subplots(2, 1, height_ratios=[3, 1])
        _mel_axes(top, self.features, self.mask)
        top.axvspan(reach[0] - 0.5, reach[1] - 0.5, color="yellow", alpha=0.18, label="attention")
        top.axvspan(field[0] - 0.5, field[1] - 0.5, color="cyan", alpha=0.35, label="conv field")
        top.axvspan(own[0] - 0.5, own[1] - 0.5, fill=False, edgecolor="cyan", lw=2, label="own")
        top.legend(loc="upper right", fontsize=7)
        top.set_title(
            f"token {token}: owns frames {own[0]}-{own[1] - 1}, convolutions read "
            f"{field[0]}-{field[1] - 1}, one attention layer reaches {reach[0]}-{reach[1] - 1}",
            fontsize=9,
        )
        row = local_visibility(self.n_tokens)[token]
        bottom.imshow(row[None], cmap="Blues", aspect="auto", vmin=0, vmax=1.3)
        bottom.axvline(token, color="red")
        bottom.set_yticks([])
        bottom.set_xlabel("key token (blue: visible to this query)")
        self.figure = fig
        return fig
