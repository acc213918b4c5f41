"""Chapter 5's pictures: the MoE block, expert load, token-to-expert maps and what experts prefer.

Every routing decision drawn here was made by the package itself: :meth:`Model.trace` records,
per layer, the router's probabilities, the chosen experts and their final weights
(``Trace.router``), and :func:`collect_routing` gathers them over many windows of text. This
module counts and draws; it never routes a token a second way. Parameter counts reuse
:func:`gemma4_ref.plots.ple.parameter_counts`, so a released config and the demo checkpoint are
counted by the same code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..config import TextConfig
from .ple import _human, parameter_counts
from .tour import MOE_COLOR, PLAIN_COLOR, _arrow, _box
from .widgets import Explorer, token_dropdown

if TYPE_CHECKING:
    from ..model import Model, Trace

CHOSEN_COLOR = "#7b3fa0"  # an expert in the top-k
OTHER_COLOR = "#c8c8c8"  # an expert left out

# --- routing decisions, gathered --------------------------------------------------------------


@dataclass
class Routing:
    """The expert choices of a run of tokens, in every layer.

    Made by :func:`routing_of` (one trace) or :func:`collect_routing` (many windows).
    """

    ids: np.ndarray  # [S] token ids
    probs: np.ndarray  # [L, S, E] router softmax over all experts
    index: np.ndarray  # [L, S, k] chosen experts, most probable first
    weights: np.ndarray  # [L, S, k] final mixing weights (renormalised, times per-expert scale)

    @property
    def num_experts(self) -> int:
        return self.probs.shape[-1]

    @property
    def chosen(self) -> np.ndarray:
        """Which experts each token runs through.  # -> [L, S, E] bool"""
        out = np.zeros(self.probs.shape, bool)
        np.put_along_axis(out, self.index, True, axis=-1)
        return out

    def load(self) -> np.ndarray:
        """The share of tokens that pick each expert; a row sums to k.  # -> [L, E]"""
        return self.chosen.mean(axis=1)


def routing_of(trace: Trace) -> Routing:
    """The router records of one :meth:`Model.trace`, stacked by layer.

    ``Trace.router`` holds, per layer, ``(probs [S, E], index [S, k], weights [S, k])``.
    """
    if any(r is None for r in trace.router):
        raise ValueError("this model has no MoE block (config.enable_moe_block is false)")
    probs, index, weights = (np.stack(parts) for parts in zip(*trace.router, strict=True))
    return Routing(np.asarray(trace.ids), probs, index, weights)


def collect_routing(model: Model, windows: np.ndarray) -> Routing:
    """Trace each window (``<bos>`` + text, as :func:`gemma4_ref.perplexity.windows` cuts them)
    and join the expert choices along the token axis.  # windows [W, T] -> Routing of W*T tokens
    """
    parts = [routing_of(model.trace(w)) for w in windows]
    return Routing(
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.probs for p in parts], axis=1),
        np.concatenate([p.index for p in parts], axis=1),
        np.concatenate([p.weights for p in parts], axis=1),
    )


# --- what kind of text a token sits in --------------------------------------------------------

#: The kinds of token :func:`token_categories` tells apart, in display order.
CATEGORIES = (
    "speaker name",
    "stage direction",
    "verse",
    "prose",
    "one-line speech",
    "punctuation",
    "line break",
)

_NAME_LINE = re.compile(r"[A-Z][A-Z0-9 ,'&-]*\.")  # KING.  FIRST LORD.  LADY MACBETH.
_PUNCTUATION = set(".,;:!?-'\"()[]_")
_SPEECH = ("verse", "prose", "one-line speech")


def _line_kinds(lines: list[str]) -> list[str]:
    """Each line of a play as 'speaker name', 'stage direction', 'blank', or the kind of the
    speech it belongs to: 'verse', 'prose' or 'one-line speech'."""
    kinds = []
    for line in lines:
        s = line.strip()
        if not s:
            kinds.append("blank")
        elif _NAME_LINE.fullmatch(s):
            kinds.append("speaker name")
        elif s.startswith("["):
            kinds.append("stage direction")
        else:
            kinds.append("speech")
    i = 0
    while i < len(lines):
        if kinds[i] != "speech":
            i += 1
            continue
        start = i
        while i < len(lines) and kinds[i] == "speech":
            i += 1
        # Verse starts every line with a capital; prose is wrapped wherever the line ran out.
        firsts = [next((c for c in ln if c.isalpha()), "A") for ln in lines[start + 1 : i]]
        if not firsts:
            kind = "one-line speech"
        else:
            kind = "verse" if all(c.isupper() for c in firsts) else "prose"
        kinds[start:i] = [kind] * (i - start)
    return kinds


def token_categories(tokenizer: Any, ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """The kind of text each token of a play sits in: one of :data:`CATEGORIES`, or '<bos>'.

    The text is the tokens decoded one by one and joined (``<bos>`` left out), cut into lines:

    * a line that is only an upper-case name and a full stop is a **speaker name**;
    * a line that starts with ``[`` is a **stage direction**;
    * a run of other non-blank lines is a speech: **verse** if every line after its first starts
      with a capital letter, **prose** if one does not, a **one-line speech** if it has one line.

    A token that holds a line break and nothing else is a **line break**; one made only of
    punctuation inside a speech is **punctuation**; every other token takes its line's kind.
    # ids [S] -> [S] str
    """
    pieces = [tokenizer.decode([int(t)], skip_special_tokens=False) for t in ids]
    is_bos = [int(t) == tokenizer.bos_id for t in ids]
    text = "".join(p for p, b in zip(pieces, is_bos, strict=True) if not b)
    lines = text.split("\n")
    kinds = _line_kinds(lines)
    line_of = np.repeat(np.arange(len(lines)), [len(ln) + 1 for ln in lines])  # char -> line
    out, pos = [], 0
    for piece, bos in zip(pieces, is_bos, strict=True):
        if bos:
            out.append("<bos>")
            continue
        stripped = piece.strip()
        first = min(pos + len(piece) - len(piece.lstrip()), len(line_of) - 1)
        kind = kinds[line_of[first]]  # the line of the token's first visible character
        if not stripped and "\n" in piece or kind == "blank":
            kind = "line break"
        elif stripped and set(stripped) <= _PUNCTUATION and kind in _SPEECH:
            kind = "punctuation"
        out.append(kind)
        pos += len(piece)
    return np.array(out)


def category_rates(
    chosen: np.ndarray, categories: np.ndarray, names: Sequence[str] = CATEGORIES
) -> np.ndarray:
    """How often the tokens of each category pick each expert.

    # chosen [L, S, E] bool, categories [S] -> [C, L, E] (NaN for an empty category)
    """
    out = np.full((len(names), chosen.shape[0], chosen.shape[2]), np.nan)
    for c, name in enumerate(names):
        mask = categories == name
        if mask.any():
            out[c] = chosen[:, mask].mean(axis=1)
    return out


def top_tokens(
    ids: np.ndarray, chosen: np.ndarray, labels: Sequence[str], n: int = 8, min_count: int = 4
) -> list[list[tuple[str, float, int]]]:
    """For each expert of one layer, the tokens that pick it most reliably.

    Among token ids seen at least ``min_count`` times, rank by the share of their occurrences
    routed to the expert, then by how often they occur. ``labels`` is one label per position.
    # ids [S], chosen [S, E] bool -> E lists of (label, share, count)
    """
    ids = np.asarray(ids)
    uniq, first, inverse, counts = np.unique(
        ids, return_index=True, return_inverse=True, return_counts=True
    )
    share = np.zeros((len(uniq), chosen.shape[1]))
    np.add.at(share, inverse, chosen)
    share /= counts[:, None]  # [U, E]
    frequent = np.flatnonzero(counts >= min_count)
    out = []
    for e in range(chosen.shape[1]):
        order = frequent[np.lexsort((-counts[frequent], -share[frequent, e]))]
        out.append([(labels[first[u]], float(share[u, e]), int(counts[u])) for u in order[:n]])
    return out


# --- pictures ---------------------------------------------------------------------------------


def moe_block_diagram(cfg: TextConfig) -> Figure:
    """The feed-forward half of a Gemma 4 MoE layer: the dense MLP beside the routed experts.

    Numbers (hidden size, widths, E, k) come from ``cfg``. Boxes carry gids ``"moe:<name>"``.
    """
    H, E, k = cfg.hidden_size, cfg.num_experts, cfg.top_k_experts
    widths = sorted({spec.intermediate_size for spec in cfg.layers})  # double-wide layers differ
    inter, moe_inter = " or ".join(str(w) for w in widths), cfg.moe_intermediate_size
    fig = Figure(figsize=(10, 6.2))
    fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.01)
    ax = fig.add_subplot()
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 11)
    ax.axis("off")
    fig.suptitle(
        f"The feed-forward half of an MoE layer: dense MLP beside {E} experts, top {k} per token"
    )
    boxes = {
        "residual": (6.0, 10.2, 4.2, 0.7, f"residual r  [S, {H}]", PLAIN_COLOR),
        "pre_norm": (2.0, 8.6, 3.4, 0.7, "pre_feedforward_layernorm", PLAIN_COLOR),
        "mlp": (2.0, 6.9, 3.4, 1.2, f"dense GeGLU MLP\n{H} → {inter} → {H}", PLAIN_COLOR),
        "post_norm_1": (2.0, 5.1, 3.4, 0.7, "post_feedforward_layernorm_1", PLAIN_COLOR),
        "router": (
            5.6,
            7.3,
            3.0,
            2.2,
            f"router\nrmsnorm(r) · scale · H^-0.5\n→ {E} logits → softmax (fp32)\n"
            f"→ top {k} → renormalise\n→ × per_expert_scale",
            MOE_COLOR,
        ),
        "pre_norm_2": (10.0, 8.6, 3.4, 0.7, "pre_feedforward_layernorm_2", PLAIN_COLOR),
        "experts": (
            10.0,
            6.9,
            3.4,
            1.2,
            f"{k} of {E} GeGLU experts\n{H} → {moe_inter} → {H}\nweighted sum",
            MOE_COLOR,
        ),
        "post_norm_2": (10.0, 5.1, 3.4, 0.7, "post_feedforward_layernorm_2", PLAIN_COLOR),
        "sum": (6.0, 3.6, 1.0, 0.7, "+", PLAIN_COLOR),
        "post_norm": (6.0, 2.3, 3.4, 0.7, "post_feedforward_layernorm", PLAIN_COLOR),
        "out": (6.0, 0.8, 4.2, 0.7, f"x = r + block output  [S, {H}]", PLAIN_COLOR),
    }
    for name, (x, y, w, h, text, color) in boxes.items():
        _box(ax, x, y, w, h, text, color, gid=f"moe:{name}", size=9)

    def edge(a: str, b: str, text: str | None = None, side: str = "right") -> None:
        xa, ya, _, ha, _, _ = boxes[a]
        xb, yb, _, hb, _, _ = boxes[b]
        _arrow(ax, (xa, ya - ha / 2), (xb, yb + hb / 2), text=text, side=side)

    edge("residual", "pre_norm")
    edge("residual", "router")
    edge("residual", "pre_norm_2")
    edge("pre_norm", "mlp")
    edge("mlp", "post_norm_1")
    edge("pre_norm_2", "experts")
    edge("experts", "post_norm_2")
    edge("post_norm_1", "sum")
    edge("post_norm_2", "sum")
    edge("sum", "post_norm")
    edge("post_norm", "out")
    _arrow(ax, (7.1, 6.9), (8.3, 6.9), color=CHOSEN_COLOR)
    ax.text(
        7.7,
        6.7,
        f"index [S, {k}]\nweights [S, {k}]",
        ha="center",
        va="top",
        fontsize=8,
        color=CHOSEN_COLOR,
    )
    return fig


def plot_expert_load(load: np.ndarray, k: int) -> Figure:
    """One bar chart per layer: the share of tokens that pick each expert.

    A dashed line marks an even split (k/E); experts picked by at least 90% of the tokens are
    dark, experts almost never picked (under 1%) grey. # load [L, E] -> Figure
    """
    L, E = load.shape
    cols = min(L, 5)
    rows = -(-L // cols)
    fig = Figure(figsize=(2.5 * cols, 2.1 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True)).ravel()
    for i, ax in enumerate(axes):
        if i >= L:
            ax.axis("off")
            continue
        colors = [
            CHOSEN_COLOR if v >= 0.9 else "#b58fd0" if v >= 0.01 else OTHER_COLOR for v in load[i]
        ]
        ax.bar(range(E), load[i], color=colors)
        ax.axhline(k / E, color="#555555", linestyle="--", linewidth=1)
        ax.set_title(f"layer {i}", fontsize=9)
        ax.set_xticks(range(E))
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, 1.05)
    for ax in axes[::cols]:
        ax.set_ylabel("share of tokens")
    for ax in axes[-cols:]:
        ax.set_xlabel("expert", fontsize=8)
    fig.suptitle(f"Expert load: the share of tokens that pick each expert (dashed: even, {k}/{E})")
    return fig


def plot_token_experts(
    routing: Routing, labels: Sequence[str], layers: Sequence[int], max_labels: int = 120
) -> Figure:
    """Token x expert maps of router probabilities, the chosen experts dotted, one per layer.

    The colour is the probability times E: 1 is an even split, above 1 the router leans towards
    the expert. Each layer has its own colour scale, because the trained routers differ a lot
    in how sharp they are. # routing of S tokens, labels [S] -> one [E, S] image per layer
    """
    from matplotlib.colors import TwoSlopeNorm

    S, E = routing.probs.shape[1:]
    k = routing.index.shape[-1]
    fig = Figure(figsize=(min(0.16 * S + 2.5, 22), 1.2 + 1.35 * len(layers)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(layers), 1, sharex=True))
    for ax, layer in zip(axes, layers, strict=True):
        rel = routing.probs[layer].T * E  # [E, S]
        norm = TwoSlopeNorm(1.0, min(rel.min(), 0.99), max(rel.max(), 1.01))
        im = ax.imshow(rel, aspect="auto", cmap="PuOr_r", norm=norm, interpolation="nearest")
        dots = routing.index[layer].ravel()  # [S*k]
        ax.scatter(np.repeat(np.arange(S), k), dots, s=10, c="black", marker="o", linewidths=0)
        ax.set_yticks(range(E))
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylabel(f"layer {layer}\nexpert", fontsize=8)
        cb = fig.colorbar(im, ax=ax, pad=0.005, fraction=0.02)
        cb.ax.tick_params(labelsize=6)
    step = max(1, -(-S // max_labels))
    axes[-1].set_xticks(
        range(0, S, step), list(labels)[::step], rotation=90, fontsize=7, fontfamily="monospace"
    )
    fig.suptitle(
        "Router probability × E per token (colour; 1 = an even split) and the top-k experts that "
        "run (dots)"
    )
    return fig


def plot_category_rates(
    rates: np.ndarray,
    names: Sequence[str] = CATEGORIES,
    layers: Sequence[int] | None = None,
    counts: Sequence[int] | None = None,
) -> Figure:
    """Per layer, a category x expert map: the share of a category's tokens that pick an expert.

    # rates [C, L, E] (from :func:`category_rates`) -> Figure
    """
    C, L, E = rates.shape
    layers = list(range(L)) if layers is None else list(layers)
    cols = min(len(layers), 5)
    rows = -(-len(layers) // cols)
    fig = Figure(figsize=(2.3 * cols + 1.8, 2.5 * rows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True)).ravel()
    row_labels = list(names)
    if counts is not None:
        row_labels = [f"{n} ({c})" for n, c in zip(names, counts, strict=True)]
    for ax, layer in zip(axes, layers, strict=False):
        ax.imshow(rates[:, layer], cmap="Purples", vmin=0, vmax=1, aspect="auto")
        for c in range(C):
            for e in range(E):
                v = rates[c, layer, e]
                if np.isfinite(v) and v >= 0.005:
                    ax.text(
                        e,
                        c,
                        f"{100 * v:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if v > 0.6 else "black",
                    )
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xticks(range(E))
        ax.tick_params(labelsize=7)
        ax.set_yticks(range(C), row_labels, fontsize=8)
    for ax in axes[len(layers) :]:
        ax.axis("off")
    fig.suptitle("% of a category's tokens that pick each expert (columns: experts)")
    return fig


def plot_top_tokens(
    top: list[list[tuple[str, float, int]]], load: np.ndarray, layer: int, min_load: float = 0.01
) -> Figure:
    """A table: for each expert of one layer, the tokens that pick it most reliably.

    Cells read ``token  share% ×count``. # top from :func:`top_tokens`, load [E] -> Figure
    """
    E = len(top)
    n = max(len(t) for t in top)
    cells = []
    for r in range(n):
        row = []
        for e in range(E):
            if load[e] < min_load:
                row.append("(unused)" if r == 0 else "")
            elif r < len(top[e]):
                label, share, count = top[e][r]
                row.append(f"{label} {100 * share:.0f}% ×{count}")
            else:
                row.append("")
        cells.append(row)
    fig = Figure(figsize=(1.55 * E, 0.32 * n + 0.9), layout="constrained")
    ax = fig.add_subplot()
    ax.axis("off")
    table = ax.table(
        cellText=cells,
        colLabels=[f"expert {e}\nload {100 * load[e]:.0f}%" for e in range(E)],
        loc="center",
        cellLoc="left",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(7.5)
    table.scale(1, 1.25)
    for (r, _c), cell in table.get_celld().items():
        if r == 0:
            cell.set_facecolor(MOE_COLOR)
            cell.set_height(cell.get_height() * 1.7)
        cell.get_text().set_fontfamily("monospace")
    ax.set_title(
        f"Layer {layer}: the tokens each expert gets most reliably (share of their occurrences)",
        fontsize=10,
    )
    return fig


def plot_scale_vs_load(load: np.ndarray, scales: np.ndarray) -> Figure:
    """Each expert of each layer as a point: its load against its learned per_expert_scale.

    # load [L, E], scales [L, E] -> Figure
    """
    fig = Figure(figsize=(6.2, 4.2), layout="constrained")
    ax = fig.add_subplot()
    top = load.argmax(axis=1)
    L = load.shape[0]
    for i in range(L):
        ax.scatter(load[i], scales[i], s=18, color=f"C{i % 10}", alpha=0.75, label=f"layer {i}")
        ax.scatter(
            load[i, top[i]],
            scales[i, top[i]],
            s=70,
            facecolors="none",
            edgecolors=f"C{i % 10}",
            linewidths=1.5,
        )
    ax.set_xlabel("load (share of tokens that pick the expert)")
    ax.set_ylabel("per_expert_scale")
    ax.set_title(
        "Busier experts learned larger scales (circled: each layer's busiest)", fontsize=10
    )
    ax.legend(fontsize=7, ncols=2, loc="lower right")
    return fig


# --- compute and parameters -------------------------------------------------------------------


def active_parameters(cfg: TextConfig) -> dict[str, int]:
    """Parameters stored, and parameters a single token runs through, from a config alone.

    Each MoE layer stores ``E`` experts of ``3·H·I`` weights (the fused gate/up ``[2I, H]`` and
    the down ``[H, I]``), but a token runs through ``k`` of them. Keys: ``total`` (as
    :func:`~gemma4_ref.plots.ple.parameter_counts`), ``experts`` (all expert weights),
    ``experts_active`` (the ``k`` a token uses), ``active`` (``total`` less the idle experts),
    ``ple_table`` (looked up, not multiplied; already in both ``total`` and ``active``).
    """
    counts = parameter_counts(cfg)
    experts = experts_active = 0
    if cfg.enable_moe_block:
        per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
        experts = cfg.num_hidden_layers * cfg.num_experts * per_expert
        experts_active = cfg.num_hidden_layers * cfg.top_k_experts * per_expert
    return {
        "total": counts["total"],
        "experts": experts,
        "experts_active": experts_active,
        "active": counts["total"] - experts + experts_active,
        "ple_table": counts["ple_table"],
    }


def plot_active_parameters(counts: dict[str, dict[str, int]]) -> Figure:
    """Stored against used per token: two bars per model, experts and everything else.

    Bars are fractions of each model's total so that models of any size sit side by side.
    # {name: active_parameters(...)} -> Figure
    """
    fig = Figure(figsize=(9, 0.9 + 1.1 * len(counts)), layout="constrained")
    ax = fig.add_subplot()
    y, labels = 0.0, []
    ticks = []
    for name, c in counts.items():
        rest = (c["total"] - c["experts"]) / c["total"]
        for kind, experts in (("stored", c["experts"]), ("per token", c["experts_active"])):
            e = experts / c["total"]
            ax.barh(y, rest, color=PLAIN_COLOR, edgecolor="#555555")
            ax.barh(y, e, left=rest, color=MOE_COLOR, edgecolor="#555555")
            n = c["total"] if kind == "stored" else c["active"]
            ax.text(rest + e + 0.01, y, _human(n), va="center", fontsize=9)
            ticks.append(y)
            labels.append(f"{name}: {kind}")
            y += 0.9
        y += 0.5
    ax.set_yticks(ticks, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("fraction of the model's stored parameters")
    handles = [
        Patch(facecolor=PLAIN_COLOR, edgecolor="#555555", label="everything but the experts"),
        Patch(facecolor=MOE_COLOR, edgecolor="#555555", label="expert weights"),
    ]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_title("Parameters stored vs parameters one token runs through")
    return fig


# --- the widget -------------------------------------------------------------------------------


def plot_router_choice(
    probs: np.ndarray, index: np.ndarray, per_expert_scale: np.ndarray, title: str = ""
) -> Figure:
    """One token in one layer, from router probabilities to final weights.

    Left: the softmax over all E experts, the top-k in colour. Right: for each chosen expert,
    its probability, the probability renormalised over the top-k, and that times the expert's
    ``per_expert_scale``: the weight its output gets in the mix.
    # probs [E], index [k], per_expert_scale [E] -> Figure
    """
    E, k = len(probs), len(index)
    top = probs[index]
    renorm = top / top.sum()
    final = renorm * per_expert_scale[index]
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    ax, bx = fig.subplots(1, 2, width_ratios=[1.3, 1])
    colors = np.full(E, OTHER_COLOR, dtype=object)
    colors[index] = CHOSEN_COLOR
    ax.bar(range(E), probs, color=list(colors))
    for rank, e in enumerate(index):
        ax.text(e, probs[e] + 0.02, f"#{rank + 1}\n{probs[e]:.2f}", ha="center", fontsize=8)
    ax.axhline(1 / E, color="#555555", linestyle="--", linewidth=1, label=f"even split, 1/{E}")
    ax.legend(fontsize=7.5, loc="upper right")
    ax.set_xticks(range(E))
    ax.set_xlabel("expert")
    ax.set_ylabel("router probability")
    ax.set_ylim(0, max(0.3, 1.35 * float(probs.max())))
    ax.set_title(title or "router softmax over all experts", fontsize=10)
    x = np.arange(k)
    width = 0.27
    steps = (
        ("softmax", top, "#d0b8e2"),
        ("renormalised", renorm, "#a77bc8"),
        ("× scale = weight", final, CHOSEN_COLOR),
    )
    for j, (label, values, color) in enumerate(steps):
        bx.bar(x + (j - 1) * width, values, width, color=color, label=label)
    for j, e in enumerate(index):
        bx.text(
            j + width,
            final[j] + 0.02,
            f"{final[j]:.3f}\n(×{per_expert_scale[e]:.3f})",
            ha="center",
            fontsize=7.5,
        )
    bx.set_xticks(x, [f"expert {e}" for e in index])
    bx.set_ylim(0, 1.35)
    bx.set_title(f"the {k} chosen: to mixing weights", fontsize=10)
    bx.legend(fontsize=7.5, loc="upper right", ncols=1)
    return fig


class RouterExplorer(Explorer):
    """A token selector and a layer slider over :func:`plot_router_choice` (ipywidgets).

    Display it in a notebook; ``draw`` is the callback, usable without widgets.
    """

    def __init__(self, model: Model, routing: Routing, labels: Sequence[str]):
        super().__init__()
        self.routing = routing
        self.labels = list(labels)
        self.scales = np.stack([layer.moe.per_expert_scale for layer in model.layers])  # [L, E]

    def draw(self, token: int, layer: int) -> Figure:
        """The figure for one token position in one layer."""
        r = self.routing
        title = f"layer {layer}, token {token} {self.labels[token]!r}: router softmax"
        self.figure = plot_router_choice(
            r.probs[layer, token], r.index[layer, token], self.scales[layer], title
        )
        return self.figure

    def make_controls(self, widgets: Any) -> dict[str, Any]:
        """A token dropdown and a layer slider."""
        layer = widgets.IntSlider(0, 0, self.routing.probs.shape[0] - 1, description="layer")
        return {"token": token_dropdown(widgets, self.labels), "layer": layer}
