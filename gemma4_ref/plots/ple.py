"""Chapter 2's pictures: parameter budgets and what Per-Layer Embeddings add, layer by layer.

Everything here reads arrays the package computed (a :class:`~gemma4_ref.model.Trace`, the
model's own :class:`~gemma4_ref.ple.PerLayerEmbeddings`) and draws them; nothing is recomputed
by a second implementation. Figures are plain :class:`matplotlib.figure.Figure` objects, not
pyplot ones, so a notebook shows each exactly once and a test can inspect it with no display.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..config import TextConfig
from ..linear import widen
from .widgets import Explorer, token_dropdown

if TYPE_CHECKING:
    from ..model import Model, Trace

# --- counting parameters -----------------------------------------------------------------------


def parameter_counts(cfg: TextConfig) -> dict[str, int]:
    """How many parameters each part of a Gemma 4 text decoder holds, from its config alone.

    Counts what the decoder uses (KV-consumer layers have no key/value weights; a checkpoint may
    still carry some, which transformers ignores). The vision and audio encoders of the
    multimodal releases are not counted. Keys: ``embedding``, ``ple_table``, ``ple_projection``
    (the model-level projection and its norm), ``ple_gates`` (each layer's gate, projection and
    norm), ``attention``, ``mlp``, ``moe``, ``norms`` (layer norms, ``layer_scalar``, the final
    norm), ``head`` (zero when tied), then ``total`` and ``effective`` (``total`` less the PLE
    table, which is only ever looked up).
    """
    H, V = cfg.hidden_size, cfg.vocab_size
    L, P = cfg.num_hidden_layers, cfg.hidden_size_per_layer_input
    n = dict.fromkeys(
        "embedding ple_table ple_projection ple_gates attention mlp moe norms head".split(), 0
    )
    n["embedding"] = V * H
    n["head"] = 0 if cfg.tie_word_embeddings else V * H
    if cfg.has_ple:
        n["ple_table"] = cfg.vocab_size_per_layer_input * L * P
        n["ple_projection"] = L * P * H + P
        n["ple_gates"] = L * (P * H + H * P + H)
    for spec in cfg.layers:
        q = cfg.num_attention_heads * spec.head_dim
        n["attention"] += 2 * q * H + spec.head_dim  # q_proj, o_proj, q_norm
        if not spec.shares_kv:
            kv = spec.num_kv_heads * spec.head_dim
            n["attention"] += kv * H + spec.head_dim  # k_proj, k_norm
            if not spec.k_eq_v:
                n["attention"] += kv * H  # v_proj (v_norm has no weight)
        n["mlp"] += 3 * H * spec.intermediate_size  # gate, up, down
        n["norms"] += 4 * H + 1  # input, post-attention, pre- and post-feed-forward; layer_scalar
        if cfg.enable_moe_block:
            E, inter = cfg.num_experts, cfg.moe_intermediate_size
            router = E * H + H + E  # proj, scale, per_expert_scale
            n["moe"] += router + E * 2 * inter * H + E * H * inter + 3 * H  # experts, 3 norms
    n["norms"] += H  # the final norm
    n["total"] = sum(n.values())
    n["effective"] = n["total"] - n["ple_table"]
    return n


def checkpoint_parameters(model: Model) -> int:
    """Parameters the model's checkpoint actually stores (every tensor's element count)."""
    ck = model.checkpoint
    return int(sum(np.prod(ck.info(name).shape) for name in ck.tensors))


_GROUPS = {  # display name: keys of parameter_counts
    "PLE table (looked up)": ("ple_table",),
    "embedding (tied head)": ("embedding", "head"),
    "attention": ("attention",),
    "MLP": ("mlp",),
    "MoE experts": ("moe",),
    "PLE projection + gates": ("ple_projection", "ple_gates"),
    "norms": ("norms",),
}


def plot_parameter_budget(counts: dict[str, dict[str, int]]) -> Figure:
    """One horizontal bar per model, split into the groups of :func:`parameter_counts`.

    Bars are fractions of each model's total, so a 22M and a 4.6B model sit side by side; the
    absolute totals are printed beside them. # {name: counts} -> Figure
    """
    fig = Figure(figsize=(9, 0.7 + 0.55 * len(counts)), layout="constrained")
    ax = fig.add_subplot()
    names = list(counts)
    colors = ["#8c564b", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728", "#7f7f7f"]
    left = np.zeros(len(names))
    for (group, keys), color in zip(_GROUPS.items(), colors, strict=True):
        frac = np.array([sum(counts[m][k] for k in keys) / counts[m]["total"] for m in names])
        ax.barh(names, frac, left=left, color=color, label=group)
        for y, (x0, f) in enumerate(zip(left, frac, strict=True)):
            if f > 0.06:
                ax.text(x0 + f / 2, y, f"{f:.0%}", ha="center", va="center", color="white")
        left += frac
    for y, m in enumerate(names):
        c = counts[m]
        ax.text(
            1.01, y, f"{_human(c['total'])} total\n{_human(c['effective'])} effective", va="center"
        )
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of the text decoder's parameters")
    ax.legend(ncols=4, loc="lower left", bbox_to_anchor=(0, 1.02), fontsize="small", frameon=False)
    return fig


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


# --- what PLE adds, token by token -------------------------------------------------------------


def token_labels(tokenizer: Any, ids: np.ndarray | list[int]) -> list[str]:
    """Short printable labels for tokens: newlines as '⏎', leading spaces as '·'."""
    out = []
    for t in ids:
        s = tokenizer.decode([int(t)], skip_special_tokens=False) if tokenizer else str(t)
        out.append(s.replace("\n", "⏎").replace(" ", "·") or f"<{int(t)}>")
    return out


def ple_parts(model: Model, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two halves of the per-layer inputs, before they are summed and scaled by 2^-0.5.

    Calls the model's own :class:`~gemma4_ref.ple.PerLayerEmbeddings`.
    # ids [S] -> (token-identity [S, L, P], context [S, L, P])
    """
    ids = np.asarray(ids)
    x0 = widen(model.embed_table[ids], model.embed_dtype) * model.embed_scale  # [S, H]
    return model.ple.token_part(ids), model.ple.context_part(x0)


def ple_update_sizes(model: Model, trace: Trace) -> dict[str, np.ndarray]:
    """Two measures of each layer's PLE residual update, per token.

    ``norm`` is ``|update|``; ``relative`` divides it by the norm of the residual stream it is
    added to (the stream after the MLP, before PLE; recovered from the trace as
    ``residual / layer_scalar - update``). # -> {"norm": [L, S], "relative": [L, S]}
    """
    norms, rel = [], []
    for layer, update, after in zip(model.layers, trace.ple, trace.residual, strict=True):
        before = after / layer.layer_scalar - update  # [S, H]
        norms.append(np.linalg.norm(update, axis=-1))
        rel.append(norms[-1] / np.linalg.norm(before, axis=-1))
    return {"norm": np.array(norms), "relative": np.array(rel)}


def plot_ple_tokens(
    values: np.ndarray,
    labels: list[str],
    token: int,
    token_part: np.ndarray,
    context_part: np.ndarray,
    quantity: str = "relative",
) -> Figure:
    """A layer x token heatmap of the PLE update, and the selected token's two PLE halves.

    Left: ``values`` [L, S] (one of :func:`ple_update_sizes`), the ``token`` column outlined.
    Right: per layer, the norm of that token's token-identity part and of its context part
    (``token_part``, ``context_part`` [S, L, P], from :func:`ple_parts`).
    """
    L, S = values.shape
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax, bx = fig.subplots(1, 2, width_ratios=[3.2, 1])
    im = ax.imshow(values, aspect="auto", cmap="magma", interpolation="nearest")
    ax.add_patch(
        Rectangle((token - 0.5, -0.5), 1, L, fill=False, edgecolor="#00c0ff", linewidth=2.5)
    )
    ax.set_xticks(range(S), labels, rotation=90, fontsize=7, fontfamily="monospace")
    ax.get_xticklabels()[token].set_color("#0080c0")
    ax.set_yticks(range(L))
    ax.set_ylabel("layer")
    title = {
        "relative": "|PLE update| / |residual it is added to|",
        "norm": "|PLE update|",
    }.get(quantity, quantity)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, pad=0.01)
    y = np.arange(L)
    tok = np.linalg.norm(token_part[token], axis=-1)  # [L]
    ctx = np.linalg.norm(context_part[token], axis=-1)  # [L]
    bx.barh(y - 0.2, tok, height=0.4, label="token identity (table row)", color="#8c564b")
    bx.barh(y + 0.2, ctx, height=0.4, label="context (projection)", color="#1f77b4")
    bx.set_yticks(range(L))
    bx.invert_yaxis()
    bx.set_title(f"per-layer input of {labels[token]!r}")
    bx.set_xlabel("norm")
    bx.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    return fig


class PLEExplorer(Explorer):
    """A token selector over :func:`plot_ple_tokens` (ipywidgets).

    Display it in a notebook; ``draw`` is the callback, usable without widgets. # labels [S]
    """

    def __init__(self, model: Model, trace: Trace, labels: list[str]):
        super().__init__()
        self.labels = labels
        self.sizes = ple_update_sizes(model, trace)  # {name: [L, S]}
        self.token_part, self.context_part = ple_parts(model, trace.ids)  # [S, L, P] each

    def draw(self, token: int, quantity: str = "relative") -> Figure:
        """The figure for one token and one measure."""
        self.figure = plot_ple_tokens(
            self.sizes[quantity],
            self.labels,
            token,
            self.token_part,
            self.context_part,
            quantity,
        )
        return self.figure

    def make_controls(self, widgets: Any) -> dict[str, Any]:
        """A token dropdown and a measure toggle."""
        return {
            "token": token_dropdown(widgets, self.labels),
            "measure": widgets.ToggleButtons(options=["relative", "norm"], description="measure"),
        }
