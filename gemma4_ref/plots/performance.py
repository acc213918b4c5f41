"""Chapter 8's measurements and pictures: the decode roofline, kernel speeds, the bench results.

Three kinds of things live here:

* **counting**: :func:`hf_bytes_per_token` reads a checkpoint's headers and adds up the bytes of
  weights one decoded token reads, the rule behind the roofline. ``bench/roofline.py`` imports
  it, so the book and the benchmarks count the same bytes;
* **measuring**, small enough to run inside a notebook: :func:`read_bandwidth` (a Numba
  ``prange`` sum over a few hundred MB), :func:`time_per_call` (a kernel over rotating copies of
  a matrix, so the weights come from memory and not from the cache), :func:`matmul_flops`;
* **reading the bench**: :func:`speed_targets` checks the speed issue's targets against
  ``bench/results/<machine>.json``.

The figures are plain :class:`matplotlib.figure.Figure` objects, as in the other chapters'
modules; :class:`LayerSpeedExplorer` is the chapter's widget. Speeds are measurements of one
machine at one moment: nothing here, and no test, asserts how fast anything is.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from numba import njit, prange

from ..checkpoint import Checkpoint
from ..int4 import QuantizedLinear
from ..linear import Linear
from .int4 import linear_layers
from .widgets import Explorer

if TYPE_CHECKING:
    from ..model import Model

GB = 1e9

# --- bytes read per decoded token, from the file headers -----------------------------------------

_SHARED_KV = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.(?:k_proj|v_proj|k_norm)\.")
_NOT_TEXT = ("vision", "audio", "embed_vision", "embed_audio")


def text_config(folder: Path) -> dict:
    """The text decoder's part of a checkpoint's ``config.json`` (as a plain dict)."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    return cfg.get("text_config", cfg)


def decode_read_rule(cfg: dict) -> tuple[int, float]:
    """(first KV-shared layer, share of the experts a token reads) for a text config dict.

    Layers from the first KV-shared one on reuse an earlier layer's keys and values, so their
    k/v projections are never read; an MoE token reads top_k of num_experts experts.
    """
    first_shared = cfg["num_hidden_layers"] - (cfg.get("num_kv_shared_layers") or 0)
    share = (cfg.get("top_k_experts") or 0) / (cfg.get("num_experts") or 1)
    return first_shared, share


def hf_bytes_per_token(folder: Path) -> dict[str, float]:
    """Bytes of weights one decode step reads from a transformers-layout checkpoint.

    Counted tensor by tensor from the safetensors headers (the memory maps are never touched):

    * every decoder-layer weight, except the k/v projections (and k_norm) of KV-shared layers,
      which the checkpoint may still hold but nothing reads;
    * of an MoE layer's experts only the top-k of E;
    * the whole embedding table, because the head is tied to it (the lookup is one of its rows);
    * of the Per-Layer-Embedding table ``[vocab, L*P]`` only the token's row;
    * norms, scalars and everything else in full; packed int4 at its stored size (nibbles plus
      scales). The KV cache is left out: it depends on the context, not on the checkpoint.

    Returns ``head_and_embedding``, ``ple_row``, ``layers``, ``experts`` and their ``total``.
    """
    first_shared, share = decode_read_rule(text_config(folder))
    ckpt = Checkpoint(folder)
    prefix = ckpt.text_prefix()
    parts = {"head_and_embedding": 0.0, "ple_row": 0.0, "layers": 0.0, "experts": 0.0}
    for name, info in ckpt.tensors.items():
        if not name.startswith(prefix) and name != "lm_head.weight":
            continue  # the vision or audio tower of a multimodal checkpoint
        rel = name[len(prefix) :] if name.startswith(prefix) else name
        if rel.startswith(_NOT_TEXT):
            continue
        m = _SHARED_KV.search(rel)
        if m and int(m.group(1)) >= first_shared:
            continue
        if rel == "embed_tokens_per_layer.weight":
            parts["ple_row"] += info.nbytes / info.shape[0]
        elif rel in ("embed_tokens.weight", "lm_head.weight"):
            parts["head_and_embedding"] += info.nbytes
        elif ".experts." in rel:
            parts["experts"] += info.nbytes * share
        else:
            parts["layers"] += info.nbytes
    parts["total"] = sum(parts.values())
    return parts


# --- measuring -----------------------------------------------------------------------------------


# `reassoc` lets LLVM keep several partial sums in SIMD registers; without it each add waits
# for the previous one and a core sums far slower than memory delivers.
@njit(parallel=True, cache=True, fastmath={"reassoc"})
def _chunk_sums(a: np.ndarray, chunks: int) -> np.ndarray:
    """Sum each of `chunks` contiguous pieces of `a`, the pieces spread over the threads.

    # a [n] f32 -> [chunks] f32 (n a multiple of chunks)
    """
    size = a.size // chunks
    out = np.empty(chunks, np.float32)
    for c in prange(chunks):
        piece = a[c * size : (c + 1) * size]  # a slice first: Numba vectorises a plain range
        s = np.float32(0.0)
        for i in range(piece.size):
            s += piece[i]
        out[c] = s
    return out


def read_bandwidth(megabytes: int = 320, reps: int = 5, chunks: int = 256) -> float:
    """This machine's read bandwidth in bytes/s: a Numba `prange` sum over `megabytes` of float32
    (larger than the caches), all threads, the best of `reps` passes.

    A pass reads every byte once and does one add per 4 bytes, far less than a core can do, so
    its speed is the memory's. (``a.sum()`` would be slower: NumPy's pairwise sum is
    single-threaded.)
    """
    n = megabytes * 1_000_000 // 4 // chunks * chunks
    a = np.ones(n, np.float32)  # written now, so every page exists before the timing
    _chunk_sums(a[: chunks * 16], chunks)  # compile (or load from the cache) outside the timing
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        _chunk_sums(a, chunks)
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best


def matmul_flops(n: int = 1024, reps: int = 5) -> float:
    """Float32 multiply-adds per second of this machine's BLAS on an n x n product, in FLOP/s
    (2 per multiply-add), the best of `reps`: the compute roof for prefill."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, n, n), dtype=np.float32)
    a @ b  # warm up the BLAS threads
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def copies(lin: Linear | QuantizedLinear, n: int) -> list[Linear | QuantizedLinear]:
    """`n` independent copies of a layer (same values, separate memory).

    Calling a kernel on one matrix over and over measures the cache once it fits in it (a
    6144 x 1536 bf16 matrix is 19 MB; many CPUs have 32 MB of L3). Cycling through copies whose
    total is larger than the cache makes every call read its weights from memory, as decode
    does with a real model's gigabytes. (A deep copy keeps whatever layout the layer uses.)
    """
    return [copy.deepcopy(lin) for _ in range(n)]


def copies_for(lin: Linear | QuantizedLinear, megabytes: int = 128) -> int:
    """How many copies of `lin` add up to at least `megabytes` (at least 2)."""
    return max(2, math.ceil(megabytes * 1_000_000 / lin.nbytes))


def time_per_call(
    fn: Callable[[Any, np.ndarray], Any], layers: Sequence[Any], x: np.ndarray, reps: int = 5
) -> float:
    """Seconds per call of ``fn(layer, x)``, cycling once through `layers` per repetition; the
    best of `reps` (a shared machine only ever slows a run down). One warm-up pass first, so
    Numba's compilation or cache load is not timed."""
    for layer in layers[:1]:
        fn(layer, x)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        for layer in layers:
            fn(layer, x)
        best = min(best, (time.perf_counter() - t0) / len(layers))
    return best


def source_with_kernels(fn: Callable, depth: int = 2) -> str:
    """The source of `fn` followed by that of the functions of its own module it calls, down to
    `depth` calls deep (Numba kernels shown as their Python source): a kernel and its helpers in
    one listing, whatever the kernels are called."""
    shown: list[Callable] = []

    def visit(f: Callable, level: int) -> None:
        py = getattr(f, "py_func", f)  # a Numba dispatcher keeps its Python function here
        if py in shown or not inspect.isfunction(py):
            return
        shown.append(py)
        if level == depth:
            return
        for name in py.__code__.co_names:
            g = py.__globals__.get(name)
            g_py = getattr(g, "py_func", g)
            if inspect.isfunction(g_py) and g_py.__module__ == py.__module__:
                visit(g, level + 1)

    visit(fn, 0)
    return "\n\n".join(inspect.getsource(f).rstrip() for f in shown) + "\n"


# --- figures: kernels and the roofline ---------------------------------------------------------


def plot_kernel_speeds(
    speeds: dict[str, float], bandwidth: float, title: str = "one decode matvec"
) -> Figure:
    """Horizontal bars of each kernel's speed in GB/s of stored weights, with the measured read
    bandwidth as a line: a kernel at the line is as fast as decode can be."""
    fig = Figure(figsize=(9, 0.8 + 0.5 * len(speeds)), layout="constrained")
    ax = fig.add_subplot()
    names = list(speeds)
    gbs = np.array([speeds[n] / GB for n in names])
    colors = ["#9e9e9e" if "NumPy" in n else "#1f77b4" for n in names]
    ax.barh(names, gbs, color=colors)
    for y, v in enumerate(gbs):
        ax.text(v, y, f" {v:.1f} GB/s ({100 * v * GB / bandwidth:.0f}%)", va="center", fontsize=9)
    ax.axvline(
        bandwidth / GB, color="black", lw=1.5, label=f"read bandwidth {bandwidth / GB:.1f} GB/s"
    )
    ax.legend(loc="lower right", fontsize=9)
    ax.set_xlim(0, max(gbs.max(), bandwidth / GB) * 1.35)
    ax.invert_yaxis()
    ax.set_xlabel("GB/s of weights read (stored bytes / time per call)")
    ax.set_title(title)
    return fig


def plot_roofline(
    bandwidth: float, peak_flops: float, points: dict[str, tuple[float, float]]
) -> Figure:
    """The classic roofline, log-log: attainable FLOP/s = min(peak, bandwidth x intensity), and
    measured points ``{label: (FLOPs per byte of weights, FLOP/s)}`` on it."""
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.add_subplot()
    xs = [p[0] for p in points.values()]
    lo, hi = min(xs + [1.0]) / 2, max(xs + [peak_flops / bandwidth]) * 4
    grid = np.geomspace(lo, hi, 200)
    ax.plot(grid, np.minimum(peak_flops, bandwidth * grid) / 1e9, color="black", lw=2)
    ridge = peak_flops / bandwidth
    ax.axvline(ridge, color="grey", ls=":", lw=1)
    ax.text(ridge, peak_flops / 1e9 * 1.15, f" ridge: {ridge:.0f} FLOP/B", fontsize=9)
    ax.text(lo * 1.1, bandwidth * lo * 1.6 / 1e9, "memory-bound", rotation=0, fontsize=9)
    ax.text(ridge * 1.3, peak_flops / 1e9 * 0.7, "compute-bound", fontsize=9)
    for i, (label, (x, y)) in enumerate(points.items()):
        ax.plot(x, y / 1e9, "o", color=f"C{i}", ms=7, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ys = [p[1] for p in points.values()]
    ax.set_ylim(min(ys + [bandwidth * lo]) / 1e9 / 2, max(ys + [peak_flops]) / 1e9 * 2)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))  # decades only: less clutter
    ax.set_xlabel("arithmetic intensity: FLOPs per byte of weights read")
    ax.set_ylabel("GFLOP/s")
    ax.set_title("roofline of this machine: min(peak FLOP/s, bandwidth × intensity)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(which="both", alpha=0.25)
    return fig


# --- the widget: one layer of the embedded model -------------------------------------------------


@dataclass(frozen=True)
class LayerSpeed:
    """One decode call of one layer: its stored bytes, the best time per call, and the rate."""

    name: str
    shape: tuple[int, int]  # (out, in)
    nbytes: int
    seconds: float

    @property
    def gbs(self) -> float:
        """GB/s of stored weights."""
        return self.nbytes / self.seconds / GB


def decode_layers(model: Model) -> dict[str, Linear | QuantizedLinear]:
    """Every matrix a decode step multiplies by, by name: the linear layers (in the order they
    run) and the tied head, the largest of all."""
    return {**linear_layers(model), "head (tied embedding)": model.head}


def measure_layer(lin: Linear | QuantizedLinear, reps: int = 20) -> float:
    """Best seconds of one decode call ``lin(x)`` with x [1, in], as the model makes it (the
    Python around the kernel included: that is what a token pays)."""
    x = np.random.default_rng(0).standard_normal((1, lin.in_features), dtype=np.float32)
    return time_per_call(lambda layer, v: layer(v), [lin], x, reps)


class LayerSpeedExplorer(Explorer):
    """Pick a format and a layer of the embedded model: its bytes, decode time and GB/s.

    ``models`` maps a label (``"bf16"``, ``"w4a16"``) to a loaded model; ``bandwidth`` (bytes/s)
    is drawn for scale. :meth:`measure` is the callback (it times a layer once and remembers);
    :meth:`draw` shows every layer's bytes with the chosen one marked, and its speed.
    """

    def __init__(self, models: dict[str, Model], bandwidth: float, reps: int = 20):
        super().__init__()
        self.layers = {k: decode_layers(m) for k, m in models.items()}
        self.bandwidth = bandwidth
        self.reps = reps
        self.timings: dict[tuple[str, str], LayerSpeed] = {}

    def measure(self, fmt: str, name: str) -> LayerSpeed:
        """Time layer `name` of model `fmt` (once; later calls reuse the figure)."""
        key = (fmt, name)
        if key not in self.timings:
            lin = self.layers[fmt][name]
            shape = (lin.out_features, lin.in_features)
            seconds = measure_layer(lin, self.reps)
            self.timings[key] = LayerSpeed(name, shape, lin.nbytes, seconds)
        return self.timings[key]

    def draw(self, fmt: str, name: str) -> Figure:
        """Left: every layer's stored bytes, the chosen one in colour. Right: its GB/s against
        the read bandwidth, with its shape, bytes and time per call."""
        t = self.measure(fmt, name)
        layers = self.layers[fmt]
        names = list(layers)
        fig = Figure(figsize=(11, 3.6), layout="constrained")
        ax, bx = fig.subplots(1, 2, width_ratios=(2.2, 1))
        kb = np.array([layers[n].nbytes / 1e3 for n in names])
        colors = ["#d62728" if n == name else "#c6dbef" for n in names]
        ax.bar(np.arange(len(names)), kb, color=colors, width=1.0)
        ax.set_yscale("log")
        ax.set_xlabel("layer, in the order a decode step runs them (the head last)")
        ax.set_ylabel("stored KB")
        ax.set_title(f"{fmt}: {sum(kb) / 1e3:.1f} MB of matrices; {name}", fontsize=10)
        bx.barh([0], [t.gbs], color="#d62728", height=0.5)
        bx.axvline(self.bandwidth / GB, color="black", lw=1.5)
        bx.set_xlim(0, max(t.gbs, self.bandwidth / GB) * 1.25)
        bx.set_ylim(-1, 1)
        bx.set_yticks([])
        bx.set_xlabel("GB/s (black: read bandwidth)")
        bx.set_title(
            f"{t.shape[0]} × {t.shape[1]}: {t.nbytes / 1e3:.1f} KB "
            f"in {1e6 * t.seconds:.1f} µs\n= {t.gbs:.2f} GB/s, "
            f"{100 * t.gbs * GB / self.bandwidth:.0f}% of the bandwidth",
            fontsize=10,
        )
        self.figure = fig
        return fig

    def make_controls(self, widgets: Any) -> dict[str, Any]:
        """A format toggle and a layer dropdown."""
        formats = list(self.layers)
        fmt = widgets.ToggleButtons(options=formats, description="format")
        layer = widgets.Dropdown(
            options=list(self.layers[formats[0]]),
            description="layer",
            layout=widgets.Layout(width="420px"),
        )
        return {"format": fmt, "layer": layer}


def plot_layer_speeds(timings: dict[str, list[LayerSpeed]], bandwidth: float) -> Figure:
    """GB/s against stored bytes for every decode matrix of each model (one colour per model):
    how the rate of a call grows with its size."""
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i, (label, ts) in enumerate(timings.items()):
        ax.scatter(
            [t.nbytes / 1e3 for t in ts], [t.gbs for t in ts], s=18, color=f"C{i}", label=label
        )
    ax.axhline(bandwidth / GB, color="black", lw=1.5, label="read bandwidth (memory)")
    ax.set_xscale("log")
    ax.set_xlabel("stored KB of the matrix")
    ax.set_ylabel("GB/s of one decode call")
    ax.set_title("each matrix of the embedded model, one decode call (Python around it included)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.25)
    return fig


# --- the bench results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One target of the speed issue: what is compared, the measured ratio, the goal, met or not."""

    what: str
    ratio: float
    goal: float

    @property
    def met(self) -> bool:
        return self.ratio >= self.goal


def load_results(path: Path) -> dict:
    """A ``bench/results/<machine>.json`` file."""
    return json.loads(Path(path).read_text())


def complete(data: dict, model: str = "e2b") -> bool:
    """Did this run measure `model` with every engine the targets compare?"""
    try:
        speed_targets(data, model)
    except (KeyError, TypeError):
        return False
    return True


def latest_results(folder: Path, model: str = "e2b") -> Path:
    """The newest ``<machine>.json`` in `folder` whose run measured `model` completely.

    Each machine the bench ran on has its own file (sessions here land on different CPUs);
    the chapter reads the latest complete one.
    """
    runs = [(load_results(p), p) for p in sorted(Path(folder).glob("*.json"))]
    runs = [(d.get("updated", ""), p) for d, p in runs if complete(d, model)]
    if not runs:
        raise FileNotFoundError(f"no complete bench run of {model!r} in {folder}")
    return max(runs)[1]


def model_bandwidth(data: dict, model: str) -> float | None:
    """The read bandwidth (bytes/s) of the bench invocation that measured `model`, else the
    results file's newest: a roofline ratio divides by the bandwidth of its own run, not of a
    later run of another model."""
    own = data["models"].get(model, {}).get("bandwidth") or data.get("bandwidth") or {}
    return own.get("gbs", 0) * GB or None


def speed_targets(data: dict, model: str = "e2b") -> list[Target]:
    """The speed issue's targets for one bench model, as measured ratios (ours / theirs).

    Decode: bf16 at >= 85% of its roofline (bandwidth / bytes per token), >= 1.2x llama.cpp
    BF16 and >= 2x transformers; w4a16 >= 1.2x llama.cpp Q4_0 and >= 3x transformers.
    Prefill (128 and 512 tokens, bf16): >= 1.0x transformers and >= 3x llama.cpp BF16.
    Memory: peak resident memory while decoding within the checkpoint file + 10% (the ratio
    is file * 1.1 / peak, so >= 1 means met; the KV cache of 65 tokens is negligible).
    """
    e = data["models"][model]
    ours = e["ours"]
    hf = e["transformers"]
    llama = e["llama.cpp"]
    roof = model_bandwidth(data, model) / e["bytes_per_token"]["bf16"]["total"]
    dec_bf16 = ours["bf16"]["decode"]["tok_s"]
    dec_w4 = ours["w4a16"]["decode"]["tok_s"]
    hf_dec = hf["decode"]["tok_s"]
    out = [
        Target("decode bf16 / roofline", dec_bf16 / roof, 0.85),
        Target("decode bf16 / llama.cpp BF16", dec_bf16 / llama["BF16"]["decode"], 1.2),
        Target("decode bf16 / transformers", dec_bf16 / hf_dec, 2.0),
        Target("decode w4a16 / llama.cpp Q4_0", dec_w4 / llama["Q4_0"]["decode"], 1.2),
        Target("decode w4a16 / transformers bf16", dec_w4 / hf_dec, 3.0),
    ]
    for n in (128, 512):
        ours_pp = ours["bf16"][f"prefill{n}"]["tok_s"]
        out.append(
            Target(
                f"prefill {n} bf16 / transformers", ours_pp / hf["prefill"][str(n)]["tok_s"], 1.0
            )
        )
        out.append(
            Target(
                f"prefill {n} bf16 / llama.cpp BF16",
                ours_pp / llama["BF16"]["prefill"][str(n)],
                3.0,
            )
        )
    for fmt in ("bf16", "w4a16"):
        peak = ours[fmt]["decode"]["peak_rss"]
        out.append(
            Target(f"memory {fmt}: (file + 10%) / peak RSS", 1.1 * e["file_bytes"][fmt] / peak, 1.0)
        )
    return out


def plot_targets(targets: Sequence[Target]) -> Figure:
    """Each target's measured ratio as a fraction of its goal (log scale): right of the line
    means met."""
    fig = Figure(figsize=(9, 0.7 + 0.38 * len(targets)), layout="constrained")
    ax = fig.add_subplot()
    frac = np.array([t.ratio / t.goal for t in targets])
    colors = ["#2ca02c" if t.met else "#d62728" for t in targets]
    ax.barh([t.what for t in targets], frac, color=colors)
    for y, t in enumerate(targets):
        ax.text(frac[y], y, f" {t.ratio:.2f} (goal {t.goal:g})", va="center", fontsize=8)
    ax.axvline(1.0, color="black", lw=1.5)
    ax.set_xscale("log")
    ax.set_xlim(frac.min() / 1.5, max(frac.max(), 1.0) * 3)
    ax.invert_yaxis()
    ax.set_xlabel("measured ratio / goal (green: met)")
    ax.set_title("the speed issue's targets, E2B at full depth")
    return fig
