"""Chapter 4's pictures: rotating pairs, frequencies, and what p-RoPE leaves unrotated.

Every rotation here is made by :func:`gemma4_ref.rope.cos_sin` and
:func:`gemma4_ref.rope.apply_rope_ref`, on frequencies from :func:`gemma4_ref.rope.inv_freq`.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..rope import apply_rope_ref, cos_sin


def rotate(x: np.ndarray, positions: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """One vector placed at several positions.  # x [D], positions [S], freq [D/2] -> [S, D]"""
    cos, sin = cos_sin(np.asarray(positions), freq)  # [S, D] each
    xs = np.broadcast_to(x.astype(np.float32), (len(positions), 1, x.size))  # [S, 1, D]
    return apply_rope_ref(xs, cos, sin)[:, 0]


def match_score(x: np.ndarray, freq: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """q.k / |x|^2 for a query and a key that hold the same vector ``x``, ``d`` tokens apart.

    Without RoPE this is 1 at every distance; RoPE makes it a sum of cosines of ``d * freq``.
    # x [D], freq [D/2], distances [N] -> [N]
    """
    distances = np.asarray(distances)
    q = rotate(x, distances, freq)  # the query sits d tokens after the key
    k = rotate(x, np.zeros_like(distances), freq)  # the key at position 0
    return (q * k).sum(-1) / float(x @ x)


def plot_pair_rotation(
    x: np.ndarray, freq: np.ndarray, positions: np.ndarray, pairs: list[int]
) -> Figure:
    """Where RoPE moves dimensions (j, j + D/2) of ``x`` as the position grows.

    One panel per pair: the point at each position, coloured by position; the first is circled.
    Fast pairs turn a full circle in a few tokens, slow ones barely move. # x [D], freq [D/2]
    """
    half = x.size // 2
    rotated = rotate(x, positions, freq)  # [S, D]
    fig = Figure(figsize=(3.0 * len(pairs), 3.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(pairs)))
    for ax, j in zip(axes, pairs, strict=True):
        a, b = rotated[:, j], rotated[:, j + half]
        r = float(np.hypot(x[j], x[j + half])) * 1.15 or 1.0
        sc = ax.scatter(a, b, c=positions, cmap="viridis", s=14, zorder=2)
        ax.plot([0, a[0]], [0, b[0]], color="red", linewidth=1.5, zorder=3)
        ax.scatter(a[:1], b[:1], s=80, facecolors="none", edgecolors="red", zorder=3)
        ax.add_artist(_circle(r / 1.15))
        ax.set_xlim(-r, r)
        ax.set_ylim(-r, r)
        ax.set_aspect("equal")
        turn = freq[j] * (positions[-1] - positions[0]) / (2 * np.pi)
        ax.set_title(f"pair {j}: dims ({j}, {j + half})\nf = {freq[j]:.3g} rad/token", fontsize=9)
        ax.set_xlabel(f"{turn:.2f} turns over {positions[-1] - positions[0]} tokens", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.colorbar(sc, ax=axes[-1], label="position", shrink=0.8)
    return fig


def _circle(radius: float):
    from matplotlib.patches import Circle

    return Circle((0, 0), radius, fill=False, color="#bbbbbb", linestyle="--", zorder=1)


def plot_relative_scores(scores: np.ndarray, title: str = "") -> Figure:
    """A heatmap of q(m).k(n) over query position m and key position n.  # scores [M, N]

    With RoPE every diagonal (fixed m - n) has one colour.
    """
    fig = Figure(figsize=(4.6, 4.0), layout="constrained")
    ax = fig.add_subplot()
    top = float(np.abs(scores).max())
    im = ax.imshow(scores, cmap="RdBu_r", vmin=-top, vmax=top, interpolation="nearest")
    ax.set_xlabel("key position n")
    ax.set_ylabel("query position m")
    ax.set_title(title or "rotated q(m) . rotated k(n)", fontsize=10)
    fig.colorbar(im, ax=ax)
    return fig


def plot_frequencies(freqs: dict[str, np.ndarray], marks: dict[str, float] | None = None) -> Figure:
    """Each pair's frequency and wavelength, for several inverse-frequency vectors.

    Left: ``inv_freq`` against pair index (log scale; zero frequencies, which do not rotate,
    are drawn as crosses on the bottom edge). Right: the wavelength ``2 pi / f`` in tokens,
    with horizontal lines at ``marks`` (e.g. the sliding window and the context length).
    # {label: [D/2]} -> Figure
    """
    fig = Figure(figsize=(12, 4.0), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    smallest = min(float(f[f > 0].min()) for f in freqs.values())
    floor = smallest / 10
    for i, (label, f) in enumerate(freqs.items()):
        j = np.arange(f.size)
        on = f > 0
        color = f"C{i}"
        ax.plot(j[on], f[on], ".", color=color, markersize=4, label=label)
        if (~on).any():
            ax.plot(j[~on], np.full((~on).sum(), floor), "x", color=color, markersize=3)
            ax.annotate(
                f"{(~on).sum()} pairs with f = 0",
                (j[~on][0], floor),
                xytext=(5, 12),
                textcoords="offset points",
                color=color,
                fontsize=8,
            )
        bx.plot(j[on], 2 * np.pi / f[on], ".", color=color, markersize=4, label=label)
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, 2)
    ax.set_xlabel("pair index j (dims j and j + D/2)")
    ax.set_ylabel("inv_freq (radians per token)")
    ax.set_title("frequencies")
    ax.legend(fontsize="small")
    bx.set_yscale("log")
    bx.set_xlabel("pair index j")
    bx.set_ylabel("wavelength 2\u03c0/f (tokens)")
    bx.set_title("wavelengths of the pairs that rotate")
    for k, (label, value) in enumerate((marks or {}).items()):
        bx.axhline(value, color="gray", linestyle=["--", ":", "-."][k % 3], linewidth=1)
        bx.text(0, value, f" {label}", va="bottom", fontsize=8, color="gray")
    bx.legend(fontsize="small", loc="lower right")
    return fig


def plot_rotated_dims(freqs: dict[str, np.ndarray]) -> Figure:
    """A strip per head layout: which of the D dimensions rotate (dark) and which pass through.

    Dimension i and i + D/2 form a pair, so the rotating block appears twice.
    # {label: [D/2]} -> Figure
    """
    fig = Figure(figsize=(12, 0.5 + 0.55 * len(freqs)), layout="constrained")
    ax = fig.add_subplot()
    width = max(2 * f.size for f in freqs.values())
    rows = []
    for f in freqs.values():
        row = np.full(width, np.nan)
        row[: 2 * f.size] = np.concatenate([f > 0, f > 0])
        rows.append(row)
    ax.imshow(np.array(rows), aspect="auto", cmap="Blues", vmin=-0.3, vmax=1, interpolation="none")
    labels = [f"{lab}: {int((f > 0).sum())} of {f.size} pairs" for lab, f in freqs.items()]
    ax.set_yticks(range(len(freqs)), labels)
    ax.set_xlabel("head dimension (dark: rotated; light: passes through unchanged)")
    return fig


def plot_match_scores(distances: np.ndarray, curves: dict[str, np.ndarray]) -> Figure:
    """Curves of :func:`match_score` against distance (log scale).  # [N], {label: [N]}"""
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for label, y in curves.items():
        ax.plot(distances, y, label=label, linewidth=1.2)
    ax.set_xscale("log")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("distance between query and key (tokens)")
    ax.set_ylabel("q.k / |x|^2  (same vector x)")
    ax.set_title("how well a query finds an identical key, by distance")
    ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    return fig
