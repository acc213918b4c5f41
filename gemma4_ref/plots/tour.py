"""Chapter 0 (the tour) and chapter 1 (tokens): the forward pass as a diagram, token pictures,
and two widgets (generate text; see how text is cut into tokens).

Every number in :func:`forward_diagram` comes from the model's own config (`TextConfig` and its
per-layer `LayerSpec`s), through :func:`forward_shapes` and :func:`layer_rows`; nothing is typed
in by hand, so the picture of another checkpoint is that checkpoint's architecture.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from ..config import TextConfig
from . import figure_png, new_figure

# Colours: one per kind of thing, used by every picture in this module.
SLIDING_COLOR = "#cfe3f7"  # sliding-window attention layers
GLOBAL_COLOR = "#f9d9b0"  # global (full) attention layers
PLE_COLOR = "#dcefd2"  # Per-Layer Embeddings
MOE_COLOR = "#eadcf3"  # the mixture of experts
PLAIN_COLOR = "#f2f2f2"  # everything else
SPECIAL_COLOR = "#f6b26b"  # control tokens (<bos>, <|turn>, ...)
BYTE_COLOR = "#c9a5e8"  # byte-fallback tokens <0xNN>
TEXT_COLORS = ("#d9e8fb", "#e2f4dc")  # ordinary tokens, alternating


# --- the architecture, from the config --------------------------------------------------------


def forward_shapes(config: TextConfig, seq_len: int | str = "S") -> dict[str, tuple]:
    """The shape of each stage of the forward pass for a prompt of `seq_len` tokens.

    Keys: ids, embedding, per_layer_inputs (PLE models only), residual, logits, and per layer
    type ("sliding_attention" / "full_attention") the query and key/value shapes q.<type>,
    kv.<type>. `seq_len` may be a name ("S") for the picture or a number to compare with a
    :class:`~gemma4_ref.model.Trace`.
    """
    S, H, V = seq_len, config.hidden_size, config.vocab_size
    shapes: dict[str, tuple] = {"ids": (S,), "embedding": (S, H)}
    if config.has_ple:
        shapes["per_layer_inputs"] = (
            S,
            config.num_hidden_layers,
            config.hidden_size_per_layer_input,
        )
    shapes["residual"] = (S, H)
    for spec in config.layers:
        shapes.setdefault(f"q.{spec.layer_type}", (S, config.num_attention_heads, spec.head_dim))
        shapes.setdefault(f"kv.{spec.layer_type}", (S, spec.num_kv_heads, spec.head_dim))
    shapes["logits"] = (S, V)
    return shapes


def layer_rows(config: TextConfig) -> list[dict[str, Any]]:
    """One row per decoder layer: what makes it differ from the others.

    Keys: index, kind ("sliding" or "global"), window (keys seen, 0 = all), head_dim, q_heads,
    kv_heads, k_eq_v, kv_source (the layer whose cache it reads), mlp (dense MLP width),
    experts ("top-k of E" or ""), ple (bool), rope (a short description).
    """
    rows = []
    for spec in config.layers:
        rope = config.rope.get(spec.layer_type)
        if rope is None:
            rope_text = "?"
        elif rope.partial_rotary_factor < 1:
            rope_text = f"p-RoPE {rope.partial_rotary_factor:g}, θ={_num(rope.theta)}"
        else:
            rope_text = f"RoPE θ={_num(rope.theta)}"
        rows.append(
            {
                "index": spec.index,
                "kind": "sliding" if spec.is_sliding else "global",
                "window": config.sliding_window if spec.is_sliding else 0,
                "head_dim": spec.head_dim,
                "q_heads": config.num_attention_heads,
                "kv_heads": spec.num_kv_heads,
                "k_eq_v": spec.k_eq_v,
                "kv_source": spec.kv_source,
                "mlp": spec.intermediate_size,
                "experts": (
                    f"top-{config.top_k_experts} of {config.num_experts}"
                    if config.enable_moe_block
                    else ""
                ),
                "ple": config.has_ple,
                "rope": rope_text,
            }
        )
    return rows


def _num(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _shape(shape: tuple) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _box(ax, x, y, w, h, text, color, gid=None, size=9, weight="normal", **kw):
    """A rounded box centred on (x, y) with centred text; returns the patch."""
    from matplotlib.patches import FancyBboxPatch

    patch = FancyBboxPatch(
        (x - w / 2, y - h / 2),
        w,
        h,
        boxstyle="round,pad=0.02,rounding_size=0.12",
        facecolor=color,
        edgecolor=kw.pop("edgecolor", "#555555"),
        linewidth=kw.pop("linewidth", 1.0),
        **kw,
    )
    if gid is not None:
        patch.set_gid(gid)
    ax.add_patch(patch)
    ax.text(x, y, text, ha="center", va="center", fontsize=size, fontweight=weight, zorder=5)
    return patch


def _arrow(ax, start, end, color="#444444", text=None, side="right"):
    ax.annotate(
        "",
        xy=end,
        xytext=start,
        arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.1, "shrinkA": 0, "shrinkB": 0},
        zorder=1,
    )
    if text:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        dx = 0.12 if side == "right" else -0.12
        ax.text(
            mx + dx,
            my,
            text,
            ha="left" if side == "right" else "right",
            va="center",
            fontsize=8.5,
            family="monospace",
            color="#1f4e79",
        )


def forward_diagram(config: TextConfig, seq_len: int | str = "S"):
    """The whole forward pass of `config`'s model, with the shape of every tensor.

    Two panels: the pipeline from token ids to logits, and the inside of one decoder layer
    (:func:`layer_stack` draws how the layers differ). Boxes carry gids "stage:<name>" so tests
    can find them. Returns a matplotlib Figure.
    """
    shapes = forward_shapes(config, seq_len)
    rows = layer_rows(config)
    L, H, V = config.num_hidden_layers, config.hidden_size, config.vocab_size
    n_sliding = sum(r["kind"] == "sliding" for r in rows)
    fig = new_figure(11.5, 9.5, layout=None)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.02, wspace=0.04)
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 1.2]})
    for ax in axes:
        ax.set_xlim(0, 10)
        ax.set_ylim(0, 20)
        ax.axis("off")
    where = f" (S = {seq_len} tokens)" if isinstance(seq_len, int) else ""
    fig.suptitle(
        f"Gemma 4 forward pass of this checkpoint: {L} layers, hidden {H}, vocabulary {V}{where}",
        fontsize=13,
    )

    # 1. the pipeline
    ax = axes[0]
    ax.set_title("token ids to logits", fontsize=11)
    x = 4.2
    stages = [
        ("ids", 19.0, "token ids", PLAIN_COLOR),
        (
            "embedding",
            16.6,
            f"embed_tokens[ids] × √{H}\n(table {V}×{H}, tied to the head)",
            PLAIN_COLOR,
        ),
        (
            "layers",
            10.0,
            f"{L} decoder layers\n{n_sliding} sliding (window {config.sliding_window})"
            f" + {L - n_sliding} global\n(one of them on the right)",
            SLIDING_COLOR,
        ),
        ("norm", 5.3, "final RMSNorm (x·w)", PLAIN_COLOR),
        ("head", 3.2, "tied head: x · embed_tokensᵀ", PLAIN_COLOR),
        (
            "softcap",
            1.1,
            f"soft-cap: {config.final_logit_softcapping:g}·tanh(z / "
            f"{config.final_logit_softcapping:g})"
            if config.final_logit_softcapping
            else "no soft-cap",
            PLAIN_COLOR,
        ),
    ]
    heights = {"layers": 4.6}
    out_shape = {
        "ids": shapes["ids"],
        "embedding": shapes["embedding"],
        "layers": shapes["residual"],
        "norm": shapes["residual"],
        "head": shapes["logits"],
        "softcap": shapes["logits"],
    }
    prev = None
    for name, y, text, color in stages:
        h = heights.get(name, 1.3)
        _box(ax, x, y, 7.4, h, text, color, gid=f"stage:{name}", size=10)
        if prev is not None:
            py, ph, pname = prev
            _arrow(
                ax, (x, py - ph / 2 - 0.08), (x, y + h / 2 + 0.08), text=_shape(out_shape[pname])
            )
        prev = (y, h, name)
    ax.text(
        x + 0.2,
        0.1,
        f"logits {_shape(shapes['logits'])}",
        ha="center",
        fontsize=9,
        family="monospace",
        color="#1f4e79",
    )
    if config.has_ple:
        P = config.hidden_size_per_layer_input
        _box(
            ax, 9.0, 13.6, 1.9, 2.6, f"PLE\n{L}×{P}\nper\ntoken", PLE_COLOR, gid="stage:ple", size=8
        )
        _arrow(ax, (8.2, 16.6), (9.0, 14.95))
        _arrow(ax, (9.0, 12.25), (7.95, 11.0))
        ax.text(
            9.9,
            11.4,
            _shape(shapes["per_layer_inputs"]),
            ha="right",
            va="top",
            fontsize=8,
            family="monospace",
            color="#1f4e79",
            rotation=90,
        )

    # 2. one decoder layer
    ax = axes[1]
    ax.set_title("inside decoder layer i", fontsize=11)
    sl = next((r for r in rows if r["kind"] == "sliding"), None)
    gl = next((r for r in rows if r["kind"] == "global"), None)
    attn_lines = []
    for r, kind in ((sl, "sliding_attention"), (gl, "full_attention")):
        if r is None:
            continue
        kv = "k=v" if r["k_eq_v"] else "k,v"
        seen = f"window {r['window']}" if r["window"] else "all keys"
        attn_lines.append(
            f"{r['kind']}: q {_shape(shapes['q.' + kind])}  {kv} {_shape(shapes['kv.' + kind])}"
            f"\n{r['rope']}, {seen}"
        )
    widths = sorted({r["mlp"] for r in rows})
    mlp_text = f"pre_ff_norm → GeGLU MLP {H}→{widths[0]}→{H}"
    for wide in widths[1:]:
        where = [r["index"] for r in rows if r["mlp"] == wide]
        mlp_text += f"\n({wide} wide on layers {where[0]}-{where[-1]}, the KV-sharing ones)"
    items = [
        ("input", 1.0, f"x {_shape(shapes['residual'])}", PLAIN_COLOR),
        (
            "attn",
            2.9,
            "input_norm → self-attention (GQA, scale 1)\n"
            + "\n".join(attn_lines)
            + "\n→ o_proj → post_attention_norm, add to x",
            GLOBAL_COLOR,
        ),
        ("mlp", 1.5, mlp_text, PLAIN_COLOR),
    ]
    if config.enable_moe_block:
        items.append(
            (
                "moe",
                1.9,
                f"+ experts beside the MLP: router reads x,\n"
                f"top-{config.top_k_experts} of {config.num_experts} GeGLU experts "
                f"{H}→{config.moe_intermediate_size}→{H}\nMLP and experts normed apart, summed",
                MOE_COLOR,
            )
        )
    items.append(("post_ff", 1.0, "post_ff_norm, add to x", PLAIN_COLOR))
    if config.has_ple:
        P = config.hidden_size_per_layer_input
        gate = f"PLE gate: gelu(x·W {H}→{P}) ⊙ ple[:, i]\n→ {P}→{H} → norm, add to x"
        items.append(("ple_gate", 1.5, gate, PLE_COLOR))
    items.append(("scalar", 1.0, "x × layer_scalar[i]", PLAIN_COLOR))
    items.append(("output", 1.0, f"x {_shape(shapes['residual'])}", PLAIN_COLOR))
    xs, gap = 4.75, (19.7 - 0.6 - sum(h for _, h, _, _ in items)) / (len(items) - 1)
    y_top = y_prev = 19.7
    for k, (name, h, text, color) in enumerate(items):
        y = y_top - h / 2
        _box(ax, xs, y, 9.2, h, text, color, gid=f"stage:layer.{name}", size=9.5)
        if k:
            _arrow(ax, (xs, y_prev - 0.05), (xs, y_top + 0.05))
        y_prev = y_top - h
        y_top = y_prev - gap

    return fig


def layer_stack(config: TextConfig):
    """The decoder layers of `config`, one row each: attention type, head size, query and
    key/value heads, where the keys and values come from, MLP width.

    Sliding layers are blue, global ones orange; KV-sharing layers are hatched. Row boxes carry
    gids "layer:<i>". Returns a matplotlib Figure.
    """
    rows = layer_rows(config)
    L = config.num_hidden_layers
    fig = new_figure(9.0, 0.42 * L + 1.3, layout=None)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.92, bottom=0.01)
    ax = fig.subplots()
    ax.axis("off")
    ax.set_xlim(0, 10)
    ax.set_ylim(-1.6, L)
    ax.set_title(f"the {L} layers of this checkpoint, first to last", fontsize=11)
    for r in rows:
        y = L - 1 - r["index"] + 0.5
        color = SLIDING_COLOR if r["kind"] == "sliding" else GLOBAL_COLOR
        shared = r["kv_source"] != r["index"]
        kv = f"reads L{r['kv_source']}'s KV" if shared else ("k=v" if r["k_eq_v"] else "own k,v")
        seen = f"window {r['window']}" if r["window"] else "all keys"
        text = (
            f"L{r['index']:<2d} {r['kind']:<7s} {seen:<9s}  head {r['head_dim']:<3d} "
            f"{r['q_heads']}q/{r['kv_heads']}kv  {kv:<14s} MLP {r['mlp']}"
        )
        _box(
            ax,
            5.0,
            y,
            9.8,
            0.78,
            text,
            color,
            gid=f"layer:{r['index']}",
            size=9,
            hatch="///" if shared else None,
            edgecolor="#555555",
        )
        ax.texts[-1].set_family("monospace")
        ax.texts[-1].set_bbox({"facecolor": color, "edgecolor": "none", "pad": 1.0})
    extras = []
    if config.enable_moe_block:
        extras.append(f"MoE top-{config.top_k_experts} of {config.num_experts}")
    if config.has_ple:
        extras.append("a PLE gate")
    every = f"every layer also has {' and '.join(extras)}\n" if extras else ""
    ax.text(
        5.0,
        -0.9,
        every + "hatched: KV-sharing layers (no k/v projections of their own)",
        ha="center",
        va="center",
        fontsize=9,
        color="#555555",
    )
    return fig


# --- tokens -------------------------------------------------------------------------------------


def token_kind(tokenizer, token_id: int) -> str:
    """ "special" (control token), "byte" (a <0xNN> fallback byte) or "text"."""
    if token_id in tokenizer.special_ids:
        return "special"
    if tokenizer.byte_value(token_id) is not None:
        return "byte"
    return "text"


def token_boxes(
    tokenizer, ids: Sequence[int], width: float = 13.0, chars_per_line: int = 96, show_ids=True
):
    """Draw a token sequence as boxes, one per id, wrapped like the text they spell.

    Control tokens are orange, byte-fallback tokens purple, ordinary tokens alternate blue and
    green so their boundaries show. A token that is a newline breaks the line after itself. The
    box patches carry gid "token:<position>:<kind>". Returns a matplotlib Figure.
    """
    placed = []  # (line, column, width, text, kind, id)
    line, col = 0, 0.0
    for token_id in ids:
        kind = token_kind(tokenizer, int(token_id))
        text = tokenizer.id_to_token(int(token_id))
        newline = text.endswith("\n")
        shown = text.replace("\n", "⏎")
        w = max(len(shown), 1) + 0.6
        if show_ids:
            w = max(w, len(str(int(token_id))) * 0.62 + 0.6)
        if col + w > chars_per_line and col > 0:
            line, col = line + 1, 0.0
        placed.append((line, col, w, shown, kind, int(token_id)))
        col += w + 0.25
        if newline:
            line, col = line + 1, 0.0
    n_lines = max(p[0] for p in placed) + 1 if placed else 1
    row_h = 2.1 if show_ids else 1.4
    fig = new_figure(width, 0.25 + 0.42 * n_lines * row_h / 1.4, layout=None)
    ax = fig.add_axes((0.005, 0.01, 0.99, 0.98))
    ax.set_xlim(0, chars_per_line)
    ax.set_ylim(n_lines * row_h, 0)
    ax.axis("off")
    # A monospace character is about 0.6 em wide: fit chars_per_line characters in the width.
    size = width * 72 / (chars_per_line * 0.6) * 0.98
    from matplotlib.patches import Rectangle

    n_text = 0
    for pos, (ln, c, w, shown, kind, token_id) in enumerate(placed):
        if kind == "special":
            color = SPECIAL_COLOR
        elif kind == "byte":
            color = BYTE_COLOR
        else:
            color = TEXT_COLORS[n_text % 2]
            n_text += 1
        y0 = ln * row_h + 0.1
        rect = Rectangle((c, y0), w, 1.2, facecolor=color, edgecolor="#777777", linewidth=0.6)
        rect.set_gid(f"token:{pos}:{kind}")
        ax.add_patch(rect)
        ax.text(
            c + w / 2,
            y0 + 0.62,
            shown,
            ha="center",
            va="center",
            fontsize=size,
            family="DejaVu Sans Mono",
        )
        if show_ids:
            ax.text(
                c + w / 2,
                y0 + 1.55,
                str(token_id),
                ha="center",
                va="center",
                fontsize=size * 0.62,
                color="#555555",
                family="DejaVu Sans Mono",
            )
    return fig


def token_table(tokenizer, ids: Sequence[int]) -> str:
    """An HTML table of position, id, vocabulary entry and kind, for a notebook to display."""
    rows = "".join(
        f"<tr><td>{p}</td><td>{i}</td><td><code>{html.escape(repr(tokenizer.id_to_token(i)))}"
        f"</code></td><td>{token_kind(tokenizer, i)}</td></tr>"
        for p, i in enumerate(int(t) for t in ids)
    )
    return (
        "<table><thead><tr><th>position</th><th>id</th><th>token</th><th>kind</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def predictions_figure(tokenizer, ids: Sequence[int], logits, width: float = 13.0):
    """How well the model predicted each next token of a prompt.

    For every position p < S - 1 a bar shows the probability the model gave to the token that
    really came next (ids[p + 1]); the label under it is that token. Blue bars are positions
    where it was the model's first choice. Returns a matplotlib Figure; the axes' title gives
    the mean log-probability (its negative exponent is the perplexity).
    """
    import numpy as np

    logits = np.asarray(logits, np.float64)[:-1]  # [S - 1, V]: the last position has no target
    targets = np.asarray(ids[1:], np.int64)
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    p_next = np.exp(logp[np.arange(len(targets)), targets])
    top1 = logits.argmax(axis=-1) == targets
    fig = new_figure(width, 3.6)
    ax = fig.subplots()
    x = np.arange(len(targets))
    colors = np.where(top1, "#2f6db5", "#bbbbbb")
    ax.bar(x, p_next, color=colors)
    labels = [tokenizer.id_to_token(int(t)).replace("\n", "⏎") for t in targets]
    ax.set_xticks(x, labels, rotation=90, fontsize=8, family="DejaVu Sans Mono")
    ax.set_xlim(-0.6, len(targets) - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("p(actual next token)")
    mean = float(logp[np.arange(len(targets)), targets].mean())
    ax.set_title(
        f"{int(top1.sum())} of {len(targets)} next tokens were the model's first choice (blue); "
        f"mean log-probability {mean:.2f}, perplexity {math.exp(-mean):.1f}",
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.3)
    return fig


# --- widgets --------------------------------------------------------------------------------------


def run_prompt(
    model, mode: str, text: str, max_new_tokens: int, temperature: float, seed: int
) -> str:
    """What the generate widget shows for one click.

    mode "text" continues `text` after <bos>; "chat" and "think" send it as a user message (with
    the thinking channel on for "think") and show the thinking and the answer apart.
    """
    sampling = {"temperature": float(temperature), "seed": int(seed)}
    if mode == "text":
        ids = [model.tokenizer.bos_id] + model.tokenizer.encode(text)
        new = model.generate(ids, max_new_tokens=int(max_new_tokens), **sampling)
        return text + model.tokenizer.decode(new, skip_special_tokens=True)
    reply = model.chat(
        [{"role": "user", "content": text}],
        enable_thinking=mode == "think",
        max_new_tokens=int(max_new_tokens),
        **sampling,
    )
    out = f"> {text}\n"
    if reply.thinking is not None:
        out += f"[thinking] {reply.thinking}\n"
    return out + f"[answer] {reply.answer}"


def generate_widget(model, prompt: str = "ROMEO. But soft, what light"):
    """A prompt box, the sampling knobs and a Generate button; the result shows below.

    Returns an ipywidgets VBox; its `children[-1]` is the Textarea that receives the output, and
    the button is `children[-2].children[0]` (tests press it with `.click()`).
    """
    import ipywidgets as w

    mode = w.ToggleButtons(
        options=[("continue text", "text"), ("chat", "chat"), ("chat + thinking", "think")],
        value="text",
    )
    text = w.Text(value=prompt, description="prompt", layout=w.Layout(width="95%"))
    n = w.IntSlider(value=40, min=1, max=120, description="new tokens")
    temperature = w.FloatSlider(value=0.0, min=0.0, max=1.5, step=0.05, description="temperature")
    seed = w.IntText(value=0, description="seed", layout=w.Layout(width="160px"))
    button = w.Button(description="Generate", button_style="primary")
    result = w.Textarea(value="", layout=w.Layout(width="95%", height="180px"))

    def on_click(_button) -> None:
        result.value = "generating ..."
        result.value = run_prompt(
            model, mode.value, text.value, n.value, temperature.value, seed.value
        )

    button.on_click(on_click)
    return w.VBox([mode, text, w.HBox([n, temperature, seed]), w.HBox([button]), result])


def tokenizer_widget(tokenizer, text: str = "ROMEO. But soft, what light 🌹"):
    """Type text, see its tokens as boxes. Returns an ipywidgets VBox (Textarea, label, Image)."""
    import ipywidgets as w

    box = w.Textarea(value=text, layout=w.Layout(width="95%", height="70px"))
    label = w.HTML()
    image = w.Image(format="png")

    def redraw(_change=None) -> None:
        ids = tokenizer.encode(box.value)
        label.value = f"<b>{len(box.value)}</b> characters, <b>{len(ids)}</b> tokens"
        image.value = figure_png(token_boxes(tokenizer, ids))

    box.observe(redraw, names="value")
    redraw()
    return w.VBox([box, label, image])
