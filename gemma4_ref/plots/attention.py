"""Chapter 3's pictures: masks, the ring-buffer KV cache, KV-cache memory and attention maps.

The masks come from :func:`gemma4_ref.attention.visible`, the ring buffer from a real
:class:`gemma4_ref.attention.LayerCache`, the attention maps from :meth:`Model.trace`; the
memory model reads a :class:`~gemma4_ref.config.TextConfig`, so the released variants' numbers
go through the same config code as a real checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from ..attention import LayerCache, visible
from ..config import FULL, SLIDING, TextConfig, text_config_from_dict
from .widgets import Explorer

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ..model import Trace

# --- the released variants --------------------------------------------------------------------


def _pattern(sliding: int, repeats: int) -> list[str]:
    return ([SLIDING] * sliding + [FULL]) * repeats


#: The text configs of the released models (the numbers of their `config.json`, text part).
RELEASED: dict[str, dict[str, Any]] = {
    "E2B": {
        "model_type": "gemma4_text",
        "vocab_size": 262_144,
        "hidden_size": 1536,
        "intermediate_size": 6144,
        "num_hidden_layers": 35,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "global_head_dim": 512,
        "num_global_key_value_heads": None,
        "attention_k_eq_v": False,
        "sliding_window": 512,
        "layer_types": _pattern(4, 7),
        "hidden_size_per_layer_input": 256,
        "vocab_size_per_layer_input": 262_144,
        "num_kv_shared_layers": 20,
        "use_double_wide_mlp": True,
        "max_position_embeddings": 131_072,
        "final_logit_softcapping": 30.0,
    },
    "E4B": {
        "model_type": "gemma4_text",
        "vocab_size": 262_144,
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 42,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 256,
        "global_head_dim": 512,
        "num_global_key_value_heads": None,
        "attention_k_eq_v": False,
        "sliding_window": 512,
        "layer_types": _pattern(5, 7),
        "hidden_size_per_layer_input": 256,
        "vocab_size_per_layer_input": 262_144,
        "num_kv_shared_layers": 18,
        "use_double_wide_mlp": False,
        "max_position_embeddings": 131_072,
        "final_logit_softcapping": 30.0,
    },
    "12B": {
        "model_type": "gemma4_unified_text",
        "vocab_size": 262_144,
        "hidden_size": 3840,
        "intermediate_size": 15360,
        "num_hidden_layers": 48,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 256,
        "global_head_dim": 512,
        "num_global_key_value_heads": 1,
        "attention_k_eq_v": True,
        "sliding_window": 1024,
        "layer_types": _pattern(5, 8),
        "num_kv_shared_layers": 0,
        "max_position_embeddings": 262_144,
        "final_logit_softcapping": 30.0,
    },
    "26B-A4B": {
        "model_type": "gemma4_text",
        "vocab_size": 262_144,
        "hidden_size": 2816,
        "intermediate_size": 2112,
        "num_hidden_layers": 30,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 256,
        "global_head_dim": 512,
        "num_global_key_value_heads": 2,
        "attention_k_eq_v": True,
        "sliding_window": 1024,
        "layer_types": _pattern(5, 5),
        "hidden_size_per_layer_input": 0,
        "num_kv_shared_layers": 0,
        "enable_moe_block": True,
        "num_experts": 128,
        "top_k_experts": 8,
        "moe_intermediate_size": 704,
        "max_position_embeddings": 262_144,
        "final_logit_softcapping": 30.0,
    },
    "31B": {
        "model_type": "gemma4_text",
        "vocab_size": 262_144,
        "hidden_size": 5376,
        "intermediate_size": 21504,
        "num_hidden_layers": 60,
        "num_attention_heads": 32,
        "num_key_value_heads": 16,
        "head_dim": 256,
        "global_head_dim": 512,
        "num_global_key_value_heads": 4,
        "attention_k_eq_v": True,
        "sliding_window": 1024,
        "layer_types": _pattern(5, 10),
        "hidden_size_per_layer_input": 0,
        "num_kv_shared_layers": 0,
        "max_position_embeddings": 262_144,
        "final_logit_softcapping": 30.0,
    },
}


def released_config(name: str) -> TextConfig:
    """A released variant's text config, resolved per layer by the package's config code."""
    return text_config_from_dict(dict(RELEASED[name]), source=f"{name} (RELEASED)")


# --- KV-cache memory ---------------------------------------------------------------------------


def kv_cache_layer_bytes(
    cfg: TextConfig, context: int, bytes_per_value: int = 2, k_eq_v_one_tensor: bool = True
) -> np.ndarray:
    """Bytes of keys and values each layer must keep after ``context`` tokens.  # -> [L] int

    * a sliding layer keeps at most W tokens, a global layer all of them;
    * a KV-consumer layer keeps nothing (it reads its store layer's cache);
    * a K=V layer can keep one tensor instead of two (``k_eq_v_one_tensor``): V is the
      normalised raw projection and K is V times the k_norm weight, rotated, so K can be
      rebuilt from V. transformers' cache and :class:`~gemma4_ref.attention.LayerCache` keep
      both; pass ``k_eq_v_one_tensor=False`` for what they hold.

    Positions (which a real cache may also store) are not counted.
    """
    out = np.zeros(cfg.num_hidden_layers, np.int64)
    for spec in cfg.layers:
        if spec.shares_kv:
            continue
        tokens = min(context, cfg.sliding_window) if spec.is_sliding else context
        tensors = 1 if (spec.k_eq_v and k_eq_v_one_tensor) else 2
        out[spec.index] = tokens * spec.num_kv_heads * spec.head_dim * tensors * bytes_per_value
    return out


def kv_cache_bytes(
    cfg: TextConfig, context: int, bytes_per_value: int = 2, k_eq_v_one_tensor: bool = True
) -> int:
    """Total KV-cache bytes after ``context`` tokens; see :func:`kv_cache_layer_bytes`."""
    return int(kv_cache_layer_bytes(cfg, context, bytes_per_value, k_eq_v_one_tensor).sum())


def kv_cache_breakdown(cfg: TextConfig, context: int, bytes_per_value: int = 2) -> dict[str, int]:
    """Where the bytes go, and what each trick saves, at one context length.

    ``sliding`` and ``global`` are what the cache holds; ``saved_by_k_eq_v`` is the second
    tensor K=V layers need not keep; ``saved_by_sharing`` is what the KV-consumer layers would
    hold if they had their own caches; ``saved_by_window`` is what the sliding layers would hold
    if they were global.
    """
    out = dict.fromkeys(
        "sliding global saved_by_k_eq_v saved_by_sharing saved_by_window".split(), 0
    )
    for spec in cfg.layers:
        tokens = min(context, cfg.sliding_window) if spec.is_sliding else context
        per_tensor = tokens * spec.num_kv_heads * spec.head_dim * bytes_per_value
        tensors = 1 if spec.k_eq_v else 2
        if spec.shares_kv:
            out["saved_by_sharing"] += per_tensor * tensors
            continue
        out["sliding" if spec.is_sliding else "global"] += per_tensor * tensors
        out["saved_by_k_eq_v"] += per_tensor * (2 - tensors)
        if spec.is_sliding:
            out["saved_by_window"] += (context - tokens) * per_tensor // tokens * 2
    return out


def plot_kv_memory(
    configs: dict[str, TextConfig],
    contexts: np.ndarray,
    breakdown_at: int = 131_072,
    bytes_per_value: int = 2,
) -> Figure:
    """KV-cache size against context length, and where it goes at one length.

    Left: GiB against tokens (log-log), one line per variant. Right: stacked bars at
    ``breakdown_at`` tokens: what the cache holds (sliding, global) and, hatched, what K=V and
    KV sharing save. # {name: config}, contexts [N] -> Figure
    """
    gib = 2.0**30
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax, bx = fig.subplots(1, 2, width_ratios=[1.3, 1])
    for name, cfg in configs.items():
        sizes = [kv_cache_bytes(cfg, int(c), bytes_per_value) / gib for c in contexts]
        ax.plot(contexts, sizes, marker="o", markersize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"KV cache (GiB, {8 * bytes_per_value}-bit values)")
    ax.set_title("KV-cache memory of one sequence")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    names = list(configs)
    parts = [kv_cache_breakdown(configs[n], breakdown_at, bytes_per_value) for n in names]
    segments = [
        ("sliding", "sliding layers (held)", "#2ca02c", None),
        ("global", "global layers (held)", "#1f77b4", None),
        ("saved_by_k_eq_v", "saved by K=V", "white", "//"),
        ("saved_by_sharing", "saved by KV sharing", "white", "xx"),
    ]
    bottom = np.zeros(len(names))
    for key, label, color, hatch in segments:
        vals = np.array([p[key] for p in parts]) / gib
        bx.bar(
            names, vals, bottom=bottom, color=color, edgecolor="#555555", hatch=hatch, label=label
        )
        bottom += vals
    bx.set_ylabel("GiB")
    bx.set_title(f"at {breakdown_at:,} tokens")
    bx.legend(fontsize="small")
    return fig


# --- masks and the ring buffer -----------------------------------------------------------------


def plot_masks(seq_len: int, window: int) -> Figure:
    """The global (causal) and sliding masks of ``seq_len`` tokens, from ``attention.visible``.

    Each row is a query, each column a key; filled cells are visible. # -> Figure
    """
    pos = np.arange(seq_len)
    masks = {
        "global layer: causal": visible(pos, pos, 0),  # [S, S]
        f"sliding layer: W = {window} keys (incl. the current)": visible(pos, pos, window),
    }
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    for ax, (title, mask) in zip(fig.subplots(1, 2), masks.items(), strict=True):
        ax.imshow(mask, cmap="Blues", vmin=0, vmax=1.4, interpolation="nearest")
        ax.set_xticks(range(seq_len))
        ax.set_yticks(range(seq_len))
        ax.set_xticks(np.arange(seq_len + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(seq_len + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=1)
        ax.tick_params(which="both", length=0, labelsize=7)
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
        ax.set_title(title)
        ax.text(seq_len - 0.1, -0.9, " seen", fontsize=7)
        for q in range(seq_len):
            ax.text(seq_len - 0.1, q, f" {mask[q].sum()}", va="center", fontsize=7)
    return fig


def ring_buffer_history(
    window: int, n_tokens: int, prefill: int = 0
) -> tuple[np.ndarray, list[str], list[np.ndarray]]:
    """Feed tokens through a real sliding-layer :class:`LayerCache` and record its slots.

    First a prefill of ``prefill`` tokens in one call (if any), then one token per step.
    # -> positions held [steps, window] (-1 = empty), a label per step, the slots written per step
    """
    cache = LayerCache(n_kv=1, head_dim=1, window=window)
    history, labels, written = [], [], []
    steps = ([np.arange(prefill)] if prefill else []) + [
        np.array([p]) for p in range(prefill, n_tokens)
    ]
    for pos in steps:
        before = cache.pos.copy()
        kv = np.zeros((len(pos), 1, 1), np.float32)
        cache.extend(kv, kv, pos)
        history.append(cache.pos.copy())
        written.append(np.flatnonzero(cache.pos != before))
        labels.append(f"prefill 0..{pos[-1]}" if len(pos) > 1 else f"token {pos[0]}")
    return np.array(history), labels, written


def plot_ring_buffer(history: np.ndarray, labels: list[str], written: list[np.ndarray]) -> Figure:
    """The ring buffer's slots (columns) after each step (rows), each cell the position held.

    The slots written in a step are outlined; empty slots are grey. # history [steps, W]
    """
    steps, window = history.shape
    fig = Figure(figsize=(1.1 + 0.55 * window, 0.9 + 0.32 * steps), layout="constrained")
    ax = fig.add_subplot()
    shown = np.ma.masked_less(history, 0)
    ax.imshow(shown, cmap="viridis", aspect="auto", interpolation="nearest", alpha=0.75)
    ax.set_facecolor("#dddddd")
    for r in range(steps):
        for s in range(window):
            held = history[r, s]
            ax.text(s, r, "" if held < 0 else str(held), ha="center", va="center", fontsize=8)
        for s in written[r]:
            ax.add_patch(_outline(s, r))
    ax.set_xticks(range(window), [f"slot {s}" for s in range(window)], fontsize=8)
    ax.set_yticks(range(steps), labels, fontsize=8)
    ax.set_title(f"ring buffer of W = {window} slots\nslot = position mod W", fontsize=10)
    return fig


def _outline(x: float, y: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)


# --- attention maps ----------------------------------------------------------------------------


def layer_description(cfg: TextConfig, index: int) -> str:
    """A one-line summary of a layer's attention: type, head shape, K=V, KV sharing."""
    spec = cfg.layers[index]
    kind = f"sliding (W={cfg.sliding_window})" if spec.is_sliding else "global"
    text = f"layer {index}: {kind}, {cfg.num_attention_heads} q / {spec.num_kv_heads} kv heads"
    text += f" of {spec.head_dim}"
    if spec.k_eq_v:
        text += ", K=V"
    if spec.shares_kv:
        text += f", reads layer {spec.kv_source}'s KV"
    return text


def plot_attention_map(
    probs: np.ndarray,
    labels: list[str],
    title: str = "",
    ax: Axes | None = None,
    max_labels: int = 40,
) -> Figure:
    """One head's attention weights, queries down and keys across.  # probs [S, T]

    The colour scale is a square root, so that small weights away from the first token show.
    Every token is labelled up to ``max_labels`` tokens, every k-th beyond.
    """
    if ax is None:
        fig = Figure(figsize=(6.4, 5.8), layout="constrained")
        ax = fig.add_subplot()
    fig = ax.get_figure()
    S, T = probs.shape
    ax.imshow(probs, cmap="viridis", norm=PowerNorm(0.5, 0, 1), interpolation="nearest")
    step = max(1, -(-max(S, T) // max_labels))
    ax.set_xticks(range(0, T, step), labels[:T:step], rotation=90, fontsize=6)
    ax.set_yticks(range(0, S, step), labels[:S:step], fontsize=6)
    ax.set_title(title, fontsize=9)
    return fig


def plot_attention_layers(trace: Trace, cfg: TextConfig, head: int = 0) -> Figure:
    """Every layer's attention map for one head, side by side.  # -> Figure"""
    L = len(trace.attention)
    cols = min(L, 5)
    rows = -(-L // cols)
    fig = Figure(figsize=(2.6 * cols, 2.7 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for i, ax in enumerate(axes):
        if i >= L:
            ax.axis("off")
            continue
        spec = cfg.layers[i]
        ax.imshow(trace.attention[i][head], cmap="viridis", norm=PowerNorm(0.5, 0, 1))
        kind = "sliding" if spec.is_sliding else "global"
        extra = f" ←{spec.kv_source}" if spec.shares_kv else ""
        ax.set_title(f"{i}: {kind}{extra}", fontsize=9, color="C0" if spec.is_sliding else "C3")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"head {head}: queries down, keys across (←n: reads layer n's keys)")
    return fig


class AttentionExplorer(Explorer):
    """Layer and head selectors over :func:`plot_attention_map` (ipywidgets).

    Display it in a notebook; ``draw`` is the callback, usable without widgets.
    """

    def __init__(self, trace: Trace, cfg: TextConfig, labels: list[str]):
        super().__init__()
        self.trace, self.cfg, self.labels = trace, cfg, labels

    def draw(self, layer: int, head: int) -> Figure:
        """The figure for one layer and head."""
        probs = self.trace.attention[layer][head]  # [S, T]
        title = f"{layer_description(self.cfg, layer)}; head {head}"
        self.figure = plot_attention_map(probs, self.labels, title)
        return self.figure

    def make_controls(self, widgets: Any) -> dict[str, Any]:
        """A layer dropdown and a head slider."""
        layer = widgets.Dropdown(
            options=[(layer_description(self.cfg, i), i) for i in range(len(self.cfg.layers))],
            description="layer",
            layout=widgets.Layout(width="520px"),
        )
        head = widgets.IntSlider(0, 0, self.cfg.num_attention_heads - 1, description="head")
        return {"layer": layer, "head": head}
