"""Chapter 6's pictures: packed int4 weights, their scales and errors, and llama.cpp's Q4_0.

Everything drawn about the compressed-tensors layout is computed by the package itself:
:func:`gemma4_ref.int4.unpack_ref` splits the words, :func:`~gemma4_ref.int4.dequantize_ref`
and :meth:`~gemma4_ref.int4.QuantizedLinear.dequantize` give the values. Two things here are
new code, because the package has no use for them:

* :func:`rtn_error` quantizes with another divisor than compressed-tensors' 7.5, to show why
  that number was chosen (at 7.5 it gives exactly what :func:`~gemma4_ref.int4.quantize_ref`
  gives; the tests check it);
* a small llama.cpp **Q4_0** packer and unpacker (:func:`q4_0_quantize`, :func:`q4_0_pack`,
  :func:`q4_0_unpack`, :func:`q4_0_dequantize`), written from the format's description, so the
  two layouts can be put side by side.

Figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot), as in the other
chapters' modules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..int4 import QuantArgs, QuantizedLinear, dequantize_ref, pack_ref, quantize_ref, unpack_ref
from ..linear import Linear, bf16_to_f32, f32_to_bf16, widen

if TYPE_CHECKING:
    from ..model import Model

# --- finding the linear layers ------------------------------------------------------------------


def linear_layers(model: Model) -> dict[str, Linear | QuantizedLinear]:
    """Every Linear layer the decoder runs, by its checkpoint module name, in the order it runs.

    The same names come out of a bf16 model and of its w4a16 copy, so the two can be matched.
    The tied head is left out (it is the embedding table).
    """
    found: list[Linear | QuantizedLinear | None] = []
    if model.ple is not None:
        found.append(model.ple.projection)
    for layer in model.layers:
        found += [layer.q_proj, layer.k_proj, layer.v_proj, layer.o_proj]
        found += [layer.mlp.gate, layer.mlp.up, layer.mlp.down]
        if layer.moe is not None:
            found.append(layer.moe.proj)
        if layer.ple_gate is not None:
            found += [layer.ple_gate.gate, layer.ple_gate.projection]
    return {lin.name: lin for lin in found if lin is not None}


def quantized_layers(model: Model) -> dict[str, QuantizedLinear]:
    """The packed layers among :func:`linear_layers`."""
    return {n: lin for n, lin in linear_layers(model).items() if isinstance(lin, QuantizedLinear)}


#: layer kinds in the order the figures list them (the last part of a module's name)
KINDS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "per_layer_input_gate",
    "per_layer_projection",
    "per_layer_model_projection",
)


def kind(name: str) -> str:
    """A module's kind: `model.layers.3.mlp.up_proj` -> `up_proj`."""
    return name.rsplit(".", 1)[-1]


def short_name(name: str) -> str:
    """`model.layers.3.mlp.up_proj` -> `L3 up_proj` (for labels)."""
    m = re.search(r"layers\.(\d+)\.", name)
    return f"L{m.group(1)} {kind(name)}" if m else kind(name)


def scale_f32(layer: QuantizedLinear) -> np.ndarray:
    """A packed layer's scales as float32.  # -> [out, G]"""
    return widen(layer.scale, "bf16" if layer.scale.dtype == np.uint16 else "f32")


def words(layer: QuantizedLinear) -> np.ndarray:
    """The layer's packed weight as the int32 words of the checkpoint.  # -> [out, in / 8]"""
    return layer.packed.view(np.int32)


# --- one word -----------------------------------------------------------------------------------

NIBBLE_COLORS = [colormaps["tab10"](i) for i in range(8)]


def plot_word(word: int, first_column: int = 0) -> Figure:
    """One int32 word as its 32 bits and the 8 int4 values they hold, low nibble first.

    Top: bits 31..0 as hex reads them, coloured by nibble. Bottom: the weights in column order;
    a line joins each nibble to its weight, so the crossing shows that the lowest nibble is the
    first weight. The values are :func:`~gemma4_ref.int4.unpack_ref`'s.
    """
    bits = int(word) & 0xFFFFFFFF  # the word as unsigned
    q = unpack_ref(np.array([[bits]], np.uint32).view(np.int32), 4, 8)[0]  # [8], low first
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(-0.5, 32.5)
    ax.set_ylim(0.2, 6.4)
    ax.axis("off")
    for i in range(32):  # x position i holds bit 31 - i
        bit = 31 - i
        j = bit // 4
        ax.add_patch(Rectangle((i, 4), 1, 1, facecolor=NIBBLE_COLORS[j], alpha=0.35, ec="k"))
        ax.text(i + 0.5, 4.5, str((bits >> bit) & 1), ha="center", va="center", fontsize=9)
    for j in range(8):
        x0 = 28 - 4 * j  # nibble j covers bits 4j .. 4j + 3
        ax.add_patch(Rectangle((x0, 4), 4, 1, fill=False, ec="k", lw=2))
        ax.text(
            x0 + 2, 5.35, f"{(bits >> (4 * j)) & 15:X}", ha="center", fontsize=12, weight="bold"
        )
        ax.text(x0 + 2, 5.85, f"nibble {j}", ha="center", fontsize=8, color="0.3")
        u = int(q[j]) + 8
        ax.add_patch(
            Rectangle((4 * j + 0.3, 1), 3.4, 1.3, facecolor=NIBBLE_COLORS[j], alpha=0.35, ec="k")
        )
        ax.text(4 * j + 2, 1.65, f"{u} − 8 = {int(q[j]):+d}", ha="center", va="center")
        ax.text(4 * j + 2, 0.55, f"w[{first_column + j}]", ha="center", fontsize=9)
        ax.plot([x0 + 2, 4 * j + 2], [4, 2.3], color=NIBBLE_COLORS[j], lw=1.5)
    ax.text(0, 3.55, "bit 31", fontsize=8, color="0.3")
    ax.text(32, 3.55, "bit 0", fontsize=8, color="0.3", ha="right")
    ax.set_title(
        f"int32 word 0x{bits:08X} ({int(np.int32(np.uint32(bits)))}): "
        "8 unsigned nibbles, low first, minus 8"
    )
    return fig


# --- scales -------------------------------------------------------------------------------------


def plot_scales(layer: QuantizedLinear, rows: int | None = None) -> Figure:
    """Left: the layer's scales as a group x row heatmap (first `rows` rows). Right: the
    histogram of all its scales, with the median marked."""
    s = scale_f32(layer)  # [out, G]
    shown = s[:rows] if rows else s
    fig = Figure(figsize=(11, 3.2), layout="constrained")
    ax, bx = fig.subplots(1, 2, width_ratios=[3, 1])
    im = ax.imshow(shown.T, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("output row r")
    ax.set_ylabel("group g (32 inputs)")
    ax.set_title(f"{short_name(layer.name)}: weight_scale[r, g]   {list(s.shape)} bf16")
    fig.colorbar(im, ax=ax, pad=0.01)
    bx.hist(s.ravel(), bins=40, color="#1f77b4")
    bx.axvline(float(np.median(s)), color="k", ls="--", lw=1)
    bx.set_xlabel("scale s")
    bx.set_title("all groups")
    return fig


def levels(scale: float) -> np.ndarray:
    """The 16 values a group with stored scale s can hold: bf16(q·s), q = -8..7.  # -> [16]"""
    q = np.arange(-8, 8, dtype=np.int8)[None, :]  # [1, 16]
    s = np.array([[scale]], np.float32)
    return dequantize_ref(q, s, None, 16, "bf16")[0]


def _draw_group(
    ax: Any, deq: np.ndarray, scale: float, original: np.ndarray | None, first_column: int
) -> None:
    # deq [group], original [group] | None: levels as lines, weights as dots, what is kept as x.
    cols = first_column + np.arange(len(deq))
    for k, v in enumerate(levels(scale)):
        ax.axhline(v, color="0.85" if k != 8 else "0.6", lw=0.8, zorder=0)
        if k in (0, 8, 15):
            ax.text(cols[-1] + 1.2, v, f"q={k - 8:+d}", va="center", fontsize=7, color="0.35")
    if original is not None:
        ax.vlines(cols, original, deq, color="#d62728", lw=1)
        ax.plot(cols, original, "o", color="k", ms=4, label="bf16 weight w")
        edge = 7.5 * scale
        ax.axhline(edge, color="#2ca02c", ls="--", lw=1)
        ax.axhline(-edge, color="#2ca02c", ls="--", lw=1, label="±7.5·s")
    ax.plot(cols, deq, "x", color="#1f77b4", ms=6, mew=1.5, label="bf16(q·s), what is stored")
    ax.set_xlim(cols[0] - 0.8, cols[-1] + 3.5)
    ax.set_xlabel("input column")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot_group(
    deq: np.ndarray, scale: float, original: np.ndarray | None = None, first_column: int = 0
) -> Figure:
    """One group of weights on its grid of 16 levels: the original bf16 weights (dots), what
    int4 keeps (crosses), and the rounding error between them (red).  # deq [group]"""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax = fig.add_subplot()
    _draw_group(ax, deq, scale, original, first_column)
    title = f"one group: s = {scale:.4g}"
    if original is not None:
        title += f", max|w| = {np.abs(original).max():.4g} = {np.abs(original).max() / scale:.3f}·s"
    ax.set_title(title)
    return fig


def rtn_error(w: np.ndarray, group: int, divisor: float) -> float:
    """Relative error ||W - Ŵ|| / ||W|| of symmetric int4 round-to-nearest with the scale
    `s = bf16(max|w| / divisor)` per group; compressed-tensors' divisor is 7.5.

    The same arithmetic as :func:`gemma4_ref.int4.quantize_ref` but for the divisor, and Ŵ is
    dequantized by :func:`~gemma4_ref.int4.dequantize_ref`.  # w [out, in] f32 -> float
    """
    out_f, in_f = w.shape
    g = w.reshape(out_f, in_f // group, group).astype(np.float32)  # [out, G, group]
    s = np.abs(g).max(axis=2) / np.float32(divisor)  # [out, G]
    s = np.where(s == 0, np.finfo(np.float32).eps, s).astype(np.float32)
    s = bf16_to_f32(f32_to_bf16(s))
    q = np.clip(np.round(g / s[:, :, None]), -8, 7).astype(np.int8).reshape(out_f, in_f)
    deq = dequantize_ref(q, s, None, group, "bf16")
    return float(np.linalg.norm(w - deq) / np.linalg.norm(w))


def plot_divisor_sweep(divisors: np.ndarray, errors: dict[str, np.ndarray]) -> Figure:
    """Relative error against the divisor d of `s = max|w| / d`, one line per layer."""
    fig = Figure(figsize=(7, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for name, err in errors.items():
        ax.plot(divisors, 100 * err, marker=".", label=short_name(name))
    ax.axvline(7.5, color="k", ls="--", lw=1, label="7.5 (compressed-tensors)")
    ax.set_xlabel("d in s = max|w| / d")
    ax.set_ylabel("||W − Ŵ|| / ||W||  (%)")
    ax.set_title("where to put the largest weight on the grid")
    ax.legend(fontsize="small")
    return fig


# --- bf16(q·s) ----------------------------------------------------------------------------------


def rounding_effect(scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every integer q = -8..7 and every stored scale s: is bf16(q·s) != q·s, and by how
    much (in units of s)? Both products come from :func:`~gemma4_ref.int4.dequantize_ref`.

    # scale f32 [...] -> (q [16], share of scales that round [16], largest |rounding| / s [16])
    """
    s = np.asarray(scale, np.float32).reshape(-1, 1)  # [n, 1]
    q = np.tile(np.arange(-8, 8, dtype=np.int8), (len(s), 1))  # [n, 16]
    exact = dequantize_ref(q, s, None, 16, "f32")  # q·s is exact in float32
    rounded = dequantize_ref(q, s, None, 16, "bf16")
    diff = np.abs(rounded - exact) / s  # [n, 16]
    return np.arange(-8, 8), (rounded != exact).mean(axis=0), diff.max(axis=0)


def plot_rounding(q: np.ndarray, share: np.ndarray, worst: np.ndarray) -> Figure:
    """Two bar charts over q: how often bf16(q·s) is not q·s, and the largest change."""
    fig = Figure(figsize=(10, 3), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    colors = ["#2ca02c" if s == 0 else "#d62728" for s in share]
    ax.bar(q, 100 * share, color=colors)
    ax.set_xticks(q)
    ax.set_xlabel("q")
    ax.set_ylabel("% of groups")
    ax.set_title("bf16(q·s) ≠ q·s")
    bx.bar(q, worst, color=colors)
    bx.set_xticks(q)
    bx.set_xlabel("q")
    bx.set_ylabel("in units of s")
    bx.set_title("largest |bf16(q·s) − q·s|")
    return fig


# --- quantization error ---------------------------------------------------------------------------


@dataclass
class WeightErrors:
    """How far each packed weight is from its bf16 original."""

    names: list[str]
    rel: np.ndarray  # [n] ||W - Ŵ||_F / ||W||_F per layer
    edges: np.ndarray  # [bins + 1] histogram edges, in units of the group's step s
    counts: np.ndarray  # [bins] weights per bin, all layers together

    @property
    def kinds(self) -> list[str]:
        return [kind(n) for n in self.names]


def weight_errors(
    dense: dict[str, Linear | QuantizedLinear],
    packed: dict[str, QuantizedLinear],
    edges: np.ndarray | None = None,
) -> WeightErrors:
    """Compare every packed layer with the dense layer of the same name.

    `dense` and `packed` come from :func:`linear_layers` / :func:`quantized_layers` of the bf16
    and w4a16 models. The histogram is of `(W - Ŵ) / s`, each error in units of its own group's
    step.
    """
    if edges is None:
        edges = np.linspace(-0.6125, 0.6125, 50)  # bins of s/40, one centred on 0
    names, rel = [], []
    counts = np.zeros(len(edges) - 1, np.int64)
    for name, layer in packed.items():
        w = widen(dense[name].weight, dense[name].dtype)  # [out, in]
        deq = layer.dequantize()  # [out, in]
        s = np.repeat(scale_f32(layer), layer.group, axis=1)  # [out, in]
        names.append(name)
        rel.append(np.linalg.norm(w - deq) / np.linalg.norm(w))
        counts += np.histogram((w - deq) / s, edges)[0]
    return WeightErrors(names, np.array(rel), edges, counts)


def plot_errors(errors: WeightErrors) -> Figure:
    """Left: each layer's relative error, grouped by kind. Right: all weights' errors in units
    of their group's step s."""
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax, bx = fig.subplots(1, 2, width_ratios=[1.4, 1])
    present = [k for k in KINDS if k in errors.kinds]
    for i, k in enumerate(present):
        vals = [100 * r for r, kk in zip(errors.rel, errors.kinds, strict=True) if kk == k]
        ax.plot(np.full(len(vals), i), vals, "o", alpha=0.7, color=colormaps["tab10"](i % 10))
    ax.set_xticks(range(len(present)), present, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("||W − Ŵ|| / ||W||  (%)")
    ax.set_title("relative error per layer (one dot per layer)")
    centers = (errors.edges[:-1] + errors.edges[1:]) / 2
    bx.bar(centers, errors.counts, width=np.diff(errors.edges), color="#1f77b4")
    for x in (-0.5, 0.5):
        bx.axvline(x, color="k", ls="--", lw=1)
    bx.set_xlabel("(w − ŵ) / s")
    bx.set_ylabel("weights")
    bx.set_title(f"all {errors.counts.sum():,} weights")
    return fig


# --- bytes --------------------------------------------------------------------------------------

STORED = (
    "embedding (tied head)",
    "PLE table",
    "MoE experts",
    "linear weights",
    "int4 scales",
    "norms and other",
)


def stored_bytes(model: Model) -> dict[str, int]:
    """The checkpoint's bytes, by what they hold (keys: :data:`STORED`)."""
    out = dict.fromkeys(STORED, 0)
    ck = model.checkpoint
    for name in ck.tensors:
        info = ck.info(name)
        if "embed_tokens_per_layer" in name:
            key = "PLE table"
        elif "embed_tokens" in name:
            key = "embedding (tied head)"
        elif ".experts." in name:
            key = "MoE experts"
        elif name.endswith(".weight_packed") or (name.endswith(".weight") and len(info.shape) == 2):
            key = "linear weights"
        elif name.endswith(".weight_scale"):
            key = "int4 scales"
        else:
            key = "norms and other"
        out[key] += info.nbytes
    return out


READ = ("linear layers", "MoE experts (top-k)", "head (tied embedding)", "embedding + PLE rows")


def decode_bytes(model: Model) -> dict[str, int]:
    """Weight bytes one decoded token reads (keys: :data:`READ`); the KV cache comes on top.

    Every linear layer once (packed bytes plus scales for int4); of the MoE experts only the
    top-k chosen ones; the whole tied head (every logit needs every row); one row of the
    embedding and one of the PLE table.
    """
    out = dict.fromkeys(READ, 0)
    out["linear layers"] = sum(lin.nbytes for lin in linear_layers(model).values())
    for layer in model.layers:
        if layer.moe is not None:
            ex = layer.moe.experts
            per = ex.gate_up[0].nbytes + ex.down[0].nbytes
            out["MoE experts (top-k)"] += layer.moe.top_k * per
    out["head (tied embedding)"] = model.head.nbytes
    row = model.embed_table[0].nbytes
    if model.ple is not None:
        row += model.ple.table[0].nbytes
    out["embedding + PLE rows"] = row
    return out


def plot_bytes(tables: dict[str, dict[str, int]], title: str) -> Figure:
    """Stacked horizontal bars, one per model, in MB, split by the tables' keys."""
    fig = Figure(figsize=(10, 0.9 + 0.6 * len(tables)), layout="constrained")
    ax = fig.add_subplot()
    names = list(tables)
    keys = list(next(iter(tables.values())))
    left = np.zeros(len(names))
    for i, key in enumerate(keys):
        mb = np.array([tables[n][key] / 1e6 for n in names])
        ax.barh(names, mb, left=left, color=colormaps["tab10"](i), label=key)
        left += mb
    for y, total in enumerate(left):
        ax.text(total, y, f" {total:.1f} MB", va="center")
    ax.set_xlim(0, left.max() * 1.15)
    ax.invert_yaxis()
    ax.set_xlabel("MB")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def random_pair(
    out_f: int, in_f: int, group: int = 32, seed: int = 0
) -> tuple[Linear, QuantizedLinear]:
    """A random bf16 :class:`~gemma4_ref.linear.Linear` [out_f, in_f] and its int4 copy
    (quantized by :func:`~gemma4_ref.int4.quantize_ref`), for timing the two matvec kernels."""
    rng = np.random.default_rng(seed)
    w = f32_to_bf16(rng.standard_normal((out_f, in_f), dtype=np.float32) * 0.02)  # bf16 bits
    q, s, _ = quantize_ref(bf16_to_f32(w), 4, group)  # q int8 [out, in], s bf16 bits [out, G]
    args = QuantArgs(num_bits=4, group_size=group, symmetric=True, strategy="group")
    packed = QuantizedLinear(pack_ref(q, 4), s, "bf16", None, args, (out_f, in_f), "random")
    return Linear(w, "bf16", "random"), packed


# --- llama.cpp Q4_0 -----------------------------------------------------------------------------

#: weights per Q4_0 block
Q4_0_SIZE = 32

#: one Q4_0 block as GGUF stores it: an fp16 step d, then 16 bytes of nibbles (18 bytes)
Q4_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])


def q4_0_pack(u: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Pack codes 0..15 into Q4_0 blocks: byte k of a block holds weight k in its low nibble
    and weight k + 16 in its high nibble.

    # u uint8 [rows, cols] (cols a multiple of 32), d [rows, cols / 32] -> blocks [rows, cols / 32]
    """
    rows, cols = u.shape
    n = cols // Q4_0_SIZE
    halves = u.astype(np.uint8).reshape(rows, n, 2, 16)  # [rows, n, first/last 16, 16]
    blocks = np.empty((rows, n), Q4_0_BLOCK)
    blocks["d"] = d
    blocks["qs"] = halves[:, :, 0] | (halves[:, :, 1] << 4)
    return blocks


def q4_0_unpack(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undo :func:`q4_0_pack`.  # blocks [rows, n] -> (u uint8 [rows, 32 n], d f16 [rows, n])"""
    qs = blocks["qs"]  # [rows, n, 16]
    u = np.stack([qs & 15, qs >> 4], axis=2)  # [rows, n, 2, 16]
    return u.reshape(blocks.shape[0], -1), blocks["d"].copy()


def q4_0_dequantize(blocks: np.ndarray) -> np.ndarray:
    """x = (u - 8)·d, in float32 (llama.cpp does not round the product to fp16).

    # blocks [rows, n] -> [rows, 32 n] f32
    """
    u, d = q4_0_unpack(blocks)
    step = np.repeat(d.astype(np.float32), Q4_0_SIZE, axis=1)  # [rows, 32 n]
    return (u.astype(np.float32) - np.float32(8)) * step


def q4_0_quantize(w: np.ndarray) -> np.ndarray:
    """llama.cpp's Q4_0 rule: per block of 32, the weight m of largest magnitude (the first, if
    two tie) gets the code 0, that is q = -8: the step is d = m / -8. Codes are
    `min(15, floor(w / d + 8.5))`, rounding halves up; d is stored in fp16.

    # w f32 [rows, cols] (cols a multiple of 32) -> blocks [rows, cols / 32]
    """
    rows, cols = w.shape
    g = w.astype(np.float32).reshape(rows, cols // Q4_0_SIZE, Q4_0_SIZE)  # [rows, n, 32]
    first = np.abs(g).argmax(axis=2)[:, :, None]  # [rows, n, 1]
    d = np.take_along_axis(g, first, axis=2)[:, :, 0] / np.float32(-8)  # [rows, n]
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    u = np.minimum(np.floor(g * inv[:, :, None] + np.float32(8.5)), 15).astype(np.uint8)
    return q4_0_pack(u.reshape(rows, cols), d.astype(np.float16))


def layout_map(layout: str) -> np.ndarray:
    """Which weight of a 32-weight group each nibble of its 16 bytes holds, found by packing
    one-hot probes with the real packers (:func:`~gemma4_ref.int4.pack_ref` for
    "compressed-tensors", :func:`q4_0_pack` for "Q4_0").

    # -> int [2, 16]: row 0 the low nibbles, row 1 the high nibbles, column = byte
    """
    probes = np.zeros((32, 32), np.uint8)  # row e: weight e has code 1, the rest code 0
    probes[np.arange(32), np.arange(32)] = 1
    if layout == "compressed-tensors":
        data = pack_ref(probes.astype(np.int8) - 8, 4).view(np.uint8)  # [32, 16] (little-endian)
    elif layout == "Q4_0":
        data = q4_0_pack(probes, np.ones((32, 1), np.float16))["qs"][:, 0]  # [32, 16]
    else:
        raise ValueError(f"unknown layout {layout!r}")
    out = np.full((2, 16), -1)
    for e in range(32):
        (byte,) = np.flatnonzero(data[e])
        out[0 if data[e, byte] & 15 else 1, byte] = e
    return out


def plot_layouts() -> Figure:
    """The 16 bytes of one group of 32 int4 weights in both formats, each nibble labelled with
    the weight it holds and coloured by it (from :func:`layout_map`)."""
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(2, 1)
    cmap = colormaps["viridis"]
    captions = {
        "compressed-tensors": (
            "compressed-tensors pack-quantized: 4 int32 words = 16 bytes;"
            " the bf16 scale lives in another tensor (weight_scale)"
        ),
        "Q4_0": "llama.cpp Q4_0: one 18-byte block, the fp16 step d first, then 16 bytes",
    }
    for ax, layout in zip(axes, ("compressed-tensors", "Q4_0"), strict=True):
        m = layout_map(layout)
        x0 = 2.6  # room for the scale
        for half, y in ((1, 1), (0, 0)):  # high nibble drawn above the low one
            for b in range(16):
                e = m[half, b]
                ax.add_patch(Rectangle((x0 + b, y), 1, 1, facecolor=cmap(e / 31), ec="w", lw=1))
                color = "k" if e > 18 else "w"
                ax.text(x0 + b + 0.5, y + 0.5, str(e), ha="center", va="center", color=color)
        for b in range(16):
            ax.add_patch(Rectangle((x0 + b, 0), 1, 2, fill=False, ec="k", lw=1.2))
            ax.text(x0 + b + 0.5, -0.35, str(b), ha="center", fontsize=7, color="0.3")
        if layout == "compressed-tensors":
            for k in range(4):
                ax.add_patch(Rectangle((x0 + 4 * k, 0), 4, 2, fill=False, ec="k", lw=2.5))
                ax.text(x0 + 4 * k + 2, 2.15, f"int32 word {k}", ha="center", fontsize=8)
            ax.add_patch(Rectangle((0, 0.5), 2, 1, facecolor="0.9", ec="k", ls=":"))
            ax.text(1, 1, "s\n(elsewhere)", ha="center", va="center", fontsize=7)
        else:
            ax.add_patch(Rectangle((x0 - 2, 0), 2, 2, facecolor="#f4c430", ec="k", lw=1.2))
            ax.text(x0 - 1, 1, "d\nfp16", ha="center", va="center", fontsize=8)
            ax.text(x0 - 1, -0.35, "2 B", ha="center", fontsize=7, color="0.3")
        ax.text(x0 - 0.1, 1.5, "high ", ha="right", va="center", fontsize=7)
        ax.text(x0 - 0.1, 0.5, "low ", ha="right", va="center", fontsize=7)
        ax.set_xlim(-0.2, x0 + 16.2)
        ax.set_ylim(-0.6, 2.6)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(captions[layout], fontsize=10)
    return fig


# --- the two models' outputs --------------------------------------------------------------------


def token_nll(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each of ids[1:] under logits[:-1]; its mean is
    :func:`gemma4_ref.perplexity.mean_nll`.  # [S, V], [S] -> [S - 1]"""
    z = logits[:-1].astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -log_probs[np.arange(len(ids) - 1), ids[1:]]


def plot_model_comparison(
    nll_a: np.ndarray, nll_b: np.ndarray, logit_diff: np.ndarray, names: tuple[str, str]
) -> Figure:
    """Left: each token's loss under both models. Right: per position, the largest logit
    difference. # nll_* [n], logit_diff [positions]"""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    ax.plot(nll_a, nll_b, ".", ms=2, alpha=0.4)
    top = max(nll_a.max(), nll_b.max())
    ax.plot([0, top], [0, top], color="k", lw=0.8)
    ax.set_xlabel(f"{names[0]}: −log p(next token)")
    ax.set_ylabel(f"{names[1]}: −log p(next token)")
    ax.set_title("each token's loss under both models")
    bx.hist(logit_diff, bins=50, color="#1f77b4")
    bx.set_xlabel("max over the vocabulary of |logit difference|")
    bx.set_ylabel("positions")
    bx.set_title("how far the logits move, per position")
    return fig


# --- the explorer -------------------------------------------------------------------------------


def plot_group_bits(
    layer: QuantizedLinear, row: int, group: int, original: np.ndarray | None = None
) -> Figure:
    """Everything about one group of one packed layer: its int32 words, their nibbles and
    integers (top), the scale and the dequantized values against the original (bottom).

    `original` is the bf16 model's row `row` of the same layer, as float32 [in], if known.
    """
    g = layer.group
    per = g // 8  # int32 words per group
    w = words(layer)[row, group * per : (group + 1) * per]  # [per] int32
    q = unpack_ref(w[None, :], 4, g)[0].reshape(per, 8)  # [per, 8]: word k, nibble j
    s = float(scale_f32(layer)[row, group])
    deq = layer.dequantize(row, row + 1)[0, group * g : (group + 1) * g]  # [g]
    fig = Figure(figsize=(11, 2.2 + 0.45 * per + 3.2), layout="constrained")
    ax, bx = fig.subplots(2, 1, height_ratios=[0.45 * per + 0.9, 3.2])
    ax.imshow(q, cmap="RdBu_r", vmin=-8, vmax=8, aspect="auto")
    for k in range(per):
        for j in range(8):
            color = "w" if abs(q[k, j]) >= 5 else "k"
            ax.text(j, k, f"{q[k, j] + 8:X} → {q[k, j]:+d}", ha="center", va="center", color=color)
    ax.set_yticks(range(per), [f"0x{int(np.uint32(v.view(np.uint32))):08X}" for v in w])
    ax.set_xticks(range(8), [f"nibble {j}\nbits {4 * j}-{4 * j + 3}" for j in range(8)])
    ax.tick_params(labelsize=8)
    ax.set_title(
        f"{layer.name}  row {row}, group {group} (inputs {group * g}..{(group + 1) * g - 1}): "
        f"{per} int32 words, stored nibble → integer q"
    )
    orig = None if original is None else original[group * g : (group + 1) * g]
    _draw_group(bx, deq, s, orig, group * g)
    title = f"s = {s:.4g}; the 16 levels are bf16(q·s)"
    if orig is not None:
        title += f"; max|w| / s = {np.abs(orig).max() / s:.3f}"
    bx.set_title(title, fontsize=10)
    return fig


class Int4Explorer:
    """Pick a packed layer, a row and a group; see its words, nibbles, integers, scale and
    values (ipywidgets around :func:`plot_group_bits`).

    `dense` (the bf16 model) adds the original weights. ``draw`` works without widgets.
    """

    def __init__(self, packed: Model, dense: Model | None = None):
        self.layers = quantized_layers(packed)
        self.dense = linear_layers(dense) if dense is not None else {}
        self.figure: Figure | None = None
        self.controls: dict[str, Any] = {}
        self._widget: Any = None

    def original(self, name: str, row: int) -> np.ndarray | None:
        """The bf16 model's row of layer `name` as float32, if a dense model was given."""
        lin = self.dense.get(name)
        return None if lin is None else widen(lin.weight[row], lin.dtype)

    def draw(self, name: str, row: int = 0, group: int = 0) -> Figure:
        """The figure for one layer, row and group."""
        layer = self.layers[name]
        self.figure = plot_group_bits(layer, row, group, self.original(name, row))
        return self.figure

    @property
    def widget(self) -> Any:
        """A layer dropdown, row and group sliders, and the figure."""
        if self._widget is None:
            import ipywidgets as widgets
            from IPython.display import display

            names = list(self.layers)
            layer = widgets.Dropdown(options=names, value=names[0], description="layer")
            layer.layout.width = "420px"
            row = widgets.IntSlider(0, 0, self.layers[names[0]].out_features - 1, description="row")
            n_groups = self.layers[names[0]].in_features // self.layers[names[0]].group
            group = widgets.IntSlider(0, 0, n_groups - 1, description="group")
            out = widgets.Output()

            def redraw(_change: Any = None) -> None:
                lin = self.layers[layer.value]
                row.max = lin.out_features - 1
                group.max = lin.in_features // lin.group - 1
                fig = self.draw(layer.value, row.value, group.value)
                with out:
                    out.clear_output(wait=True)
                    display(fig)

            for control in (layer, row, group):
                control.observe(redraw, names="value")
            redraw()
            self.controls = {"layer": layer, "row": row, "group": group}
            self._widget = widgets.VBox([widgets.HBox([layer, row, group]), out])
        return self._widget

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
