"""Chapter 7 (generation and verification): the sampling knobs on a real next-token
distribution, logit drift against a reference, and small bugs to plant on purpose.

The knobs are the package's own (:func:`gemma4_ref.sampling.warp`); this module only draws what
they do. The bugs in :data:`BUGS` are patched into ``gemma4_ref.model`` for the duration of a
``with inject(name):`` block and removed after it, so a drift plot can show what a wrong
implementation looks like next to the right one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from ..sampling import Sampling, warp
from . import figure_png, new_figure

RAW_COLOR = "#bbbbbb"
KEPT_COLOR = "#2f6db5"
CUT_COLOR = "#d9534f"


# --- the next-token distribution ----------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    """Probabilities from logits; -inf gets probability 0.  # [V] -> [V] float64"""
    z = np.asarray(z, dtype=np.float64)
    p = np.exp(z - z.max())
    return p / p.sum()


def distributions(
    logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The model's distribution and the one the sampler draws from after the knobs.

    `temperature` 0 means greedy: all the mass on the argmax. # [V] -> ([V], [V])
    """
    raw = softmax(logits)
    if temperature == 0:
        greedy = np.zeros_like(raw)
        greedy[int(np.argmax(logits))] = 1.0
        return raw, greedy
    s = Sampling(do_sample=True, temperature=float(temperature), top_k=int(top_k), top_p=top_p)
    return raw, softmax(warp(np.asarray(logits, np.float32), s))


def entropy_bits(p: np.ndarray) -> float:
    """Shannon entropy in bits (0 log 0 = 0)."""
    q = p[p > 0]
    return max(0.0, float(-(q * np.log2(q)).sum()))


def _label(tokenizer, token_id: int) -> str:
    text = tokenizer.id_to_token(int(token_id)) if tokenizer is not None else str(token_id)
    return text.replace("\n", "⏎")


def next_token_figure(
    logits: np.ndarray,
    tokenizer=None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    n: int = 20,
    title: str | None = None,
):
    """What temperature, top-k and top-p do to one next-token distribution.

    Left: the `n` most likely tokens, the model's probability (grey) against the sampler's
    (blue; a red x marks a token the knobs removed). Right: cumulative probability against rank
    (log scale) for both, with the top-p and top-k cut-offs. Returns a matplotlib Figure.
    """
    logits = np.asarray(logits, np.float32)
    raw, warped = distributions(logits, temperature, top_k, top_p)
    order = np.argsort(-raw, kind="stable")
    top = order[:n]
    kept = int((warped > 0).sum())
    fig = new_figure(13, 4.6)
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.7, 1.0]})
    x = np.arange(len(top))
    ax.bar(x - 0.2, raw[top], width=0.4, color=RAW_COLOR, label="model (T = 1, no cut)")
    ax.bar(x + 0.2, warped[top], width=0.4, color=KEPT_COLOR, label="sampler draws from")
    cut = [i for i, t in enumerate(top) if warped[t] == 0]
    ax.plot(cut, np.zeros(len(cut)), "x", color=CUT_COLOR, ms=8, mew=2, label="removed")
    ax.set_xticks(x, [_label(tokenizer, t) for t in top], rotation=60, ha="right", fontsize=9)
    ax.set_ylabel("probability")
    ax.set_ylim(0, max(float(raw[top].max()), float(warped.max())) * 1.1)
    ax.legend(loc="upper right", fontsize=9)
    knobs = "greedy (T = 0)" if temperature == 0 else f"T = {temperature:g}"
    knobs += f", top-k = {top_k or 'off'}, top-p = {top_p:g}"
    ax.set_title(
        title
        or f"{knobs}: {kept} of {len(raw)} tokens can be drawn; entropy "
        f"{entropy_bits(warped):.2f} bits (model: {entropy_bits(raw):.2f})",
        fontsize=10,
    )

    rank = np.arange(1, len(raw) + 1)
    ax2.plot(rank, np.cumsum(raw[order]), color=RAW_COLOR, lw=2, label="model")
    ax2.plot(rank, np.cumsum(np.sort(warped)[::-1]), color=KEPT_COLOR, lw=2, label="sampler")
    if top_p < 1:
        ax2.axhline(top_p, color=CUT_COLOR, ls="--", lw=1, label=f"top-p = {top_p:g}")
    if top_k:
        ax2.axvline(top_k, color="#f0ad4e", ls="--", lw=1, label=f"top-k = {top_k}")
    ax2.set_xscale("log")
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("rank of the token (most likely first)")
    ax2.set_ylabel("cumulative probability")
    ax2.legend(loc="lower right", fontsize=9)
    ax2.grid(alpha=0.3)
    return fig


def sampling_widget(logits: np.ndarray, tokenizer=None, n: int = 20):
    """Sliders for temperature, top-k and top-p over one next-token distribution.

    Returns an ipywidgets VBox: an HBox of the three sliders, then an Image that
    :func:`next_token_figure` redraws whenever a slider moves.
    """
    import ipywidgets as w

    temperature = w.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="temperature")
    top_k = w.IntSlider(value=0, min=0, max=100, description="top-k (0 off)")
    top_p = w.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top-p")
    image = w.Image(format="png")

    def redraw(_change=None) -> None:
        fig = next_token_figure(logits, tokenizer, temperature.value, top_k.value, top_p.value, n)
        image.value = figure_png(fig, dpi=80)

    for slider in (temperature, top_k, top_p):
        slider.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([temperature, top_k, top_p]), image])


# --- drift against a reference ------------------------------------------------------------------


def drift(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The largest absolute logit difference at each position.  # [S, V], [S, V] -> [S]"""
    a, b = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"logit shapes differ: {a.shape} against {b.shape}")
    return np.abs(a - b).max(axis=-1)


def drift_figure(
    curves: Mapping[str, np.ndarray],
    window: int | None = None,
    tolerance: float | None = None,
    title: str = "largest |logit difference| against transformers, per position",
):
    """One line per implementation: max |logit diff| against position, on a log scale.

    Exact zeros are drawn at a floor of 1e-9 (a log scale has no zero). `window` draws the
    sliding-window edge, `tolerance` the pass line. Returns a matplotlib Figure.
    """
    fig = new_figure(11, 4.4)
    ax = fig.subplots()
    floor = 1e-9
    for name, curve in curves.items():
        curve = np.asarray(curve, np.float64)
        ax.plot(np.arange(len(curve)), np.maximum(curve, floor), lw=1.6, label=name)
    if window:
        ax.axvline(window, color="#777777", ls=":", lw=1.2)
        ax.text(window + 0.5, 2e-9, f" position {window}:\n window edge", fontsize=8, va="bottom")
    if tolerance:
        ax.axhline(tolerance, color=CUT_COLOR, ls="--", lw=1, label=f"pass line ({tolerance:.1e})")
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, None)
    ax.set_xlabel("position in the prompt")
    ax.set_ylabel("max |logit difference|")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(curves) + 1)
    return fig


# --- bugs to plant ------------------------------------------------------------------------------


def norm_one_plus_w(rms_norm: Callable) -> Callable:
    """Gemma 2/3's RMSNorm, x * (1 + w), where Gemma 4 multiplies by w as stored."""

    def buggy(x, weight, eps):
        return rms_norm(x, None if weight is None else weight + 1, eps)

    return buggy


def window_off_by_one(attention: Callable) -> Callable:
    """Sliding layers see W + 1 keys (the current one and W past ones) instead of W."""

    def buggy(q, k, v, q_pos, k_pos, window, *mask):
        return attention(q, k, v, q_pos, k_pos, window + 1 if window else 0, *mask)

    return buggy


def attention_scaled(attention: Callable) -> Callable:
    """The usual 1/sqrt(head_dim) score scale, which Gemma 4 does not use (its scale is 1)."""

    def buggy(q, k, v, q_pos, k_pos, window, *mask):
        return attention(q / math.sqrt(q.shape[-1]), k, v, q_pos, k_pos, window, *mask)

    return buggy


#: name -> (the function in gemma4_ref.model it replaces, the bug that wraps it)
BUGS: dict[str, tuple[str, Callable[[Callable], Callable]]] = {
    "norm x*(1+w)": ("rms_norm", norm_one_plus_w),
    "window off by one": ("attention", window_off_by_one),
    "attention scale 1/sqrt(d)": ("attention", attention_scaled),
}


@contextlib.contextmanager
def inject(name: str) -> Iterator[None]:
    """Run the block with the bug `name` (a key of :data:`BUGS`) planted in gemma4_ref.model.

    The decoder layers look `rms_norm` and `attention` up in their module at call time, so
    replacing the module attribute changes every layer of every loaded model; the original is
    put back when the block ends, even on an error.
    """
    from .. import model as model_module

    attr, make_bug = BUGS[name]
    original = getattr(model_module, attr)
    setattr(model_module, attr, make_bug(original))
    try:
        yield
    finally:
        setattr(model_module, attr, original)
