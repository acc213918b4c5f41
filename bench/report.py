"""Tables and the plot of bench/results/<machine>.json (used by run.py)."""

from __future__ import annotations

from pathlib import Path

from gemma4_ref.plots.performance import model_bandwidth

GB = 1e9
LLAMA = ("BF16", "Q8_0", "Q4_0")


# --- one-line progress reports -----------------------------------------------------------------


def describe_ours(test: str, r: dict) -> str:
    mem = f"peak RSS {r['peak_rss'] / GB:.2f} GB, load {r['load_s']:.2f} s"
    if test == "compile":
        return (
            f"empty Numba cache: prefill-128 first call {r['prefill_first_s']:.1f} s "
            f"(warm {r['prefill_warm_s']:.1f} s), first decode call {r['decode_first_s']:.1f} s "
            f"(warm {r['decode_warm_s']:.2f} s)"
        )
    if test == "decode":
        return f"decode {r['tok_s']:.2f} tok/s (first call {r['first_s']:.1f} s); {mem}"
    return f"{test}: {r['tok_s']:.1f} tok/s warm (first call {r['first_s']:.1f} s); {mem}"


def describe_transformers(r: dict) -> str:
    pre = ", ".join(f"prefill {n} {v['tok_s']:.1f} tok/s" for n, v in r["prefill"].items())
    return (
        f"{pre}, decode {r['decode']['tok_s']:.2f} tok/s; peak RSS {r['peak_rss'] / GB:.2f} GB, "
        f"load {r['load_s']:.1f} s"
    )


def describe_llama(r: dict) -> str:
    pre = ", ".join(f"prefill {n} {v:.1f} tok/s" for n, v in r["prefill"].items())
    return f"{pre}, decode {r['decode']:.2f} tok/s"


# --- reading the results -----------------------------------------------------------------------


def _ok(d):
    return d if isinstance(d, dict) and "error" not in d else None


def ours(entry: dict, fmt: str, test: str) -> dict | None:
    return _ok(entry.get("ours", {}).get(fmt, {}).get(test))


def speeds(entry: dict, bandwidth: float | None) -> dict[str, dict[str, float | None]]:
    """engine/format -> {"decode", "prefill128", "prefill512", "roofline"} in tok/s."""
    out: dict[str, dict[str, float | None]] = {}
    bpt = entry.get("bytes_per_token", {})
    for fmt in ("bf16", "w4a16"):
        d = ours(entry, fmt, "decode")
        row = {"decode": d["tok_s"] if d else None}
        for n in (128, 512):
            p = ours(entry, fmt, f"prefill{n}")
            row[f"prefill{n}"] = p["tok_s"] if p else None
        row["roofline"] = bandwidth / bpt[fmt]["total"] if bandwidth and fmt in bpt else None
        out[f"ours {fmt}"] = row
    hf = _ok(entry.get("transformers"))
    row = {"decode": None, "prefill128": None, "prefill512": None, "roofline": None}
    if hf:
        row["decode"] = hf["decode"]["tok_s"]
        for n in (128, 512):
            p = hf["prefill"].get(str(n))
            row[f"prefill{n}"] = p["tok_s"] if p else None
        if bandwidth and "bf16" in bpt:
            row["roofline"] = bandwidth / bpt["bf16"]["total"]
    out["transformers bf16"] = row
    for q in LLAMA:
        r = _ok(entry.get("llama.cpp", {}).get(q))
        row = {"decode": None, "prefill128": None, "prefill512": None, "roofline": None}
        if r:
            row["decode"] = r["decode"]
            for n in (128, 512):
                row[f"prefill{n}"] = r["prefill"].get(str(n))
            if bandwidth:
                row["roofline"] = bandwidth / r["bytes_per_token"]["total"]
        out[f"llama.cpp {q}"] = row
    return out


# --- tables ------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths))
    body = [
        "| "
        + " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        + " |"
        for r in rows
    ]
    return "\n".join([line, sep + "|", *body])


def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _x(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def _pct(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{100 * a / b:.0f}%"


ENGINES = [
    "ours bf16",
    "ours w4a16",
    "transformers bf16",
    "llama.cpp BF16",
    "llama.cpp Q8_0",
    "llama.cpp Q4_0",
]


def tables(data: dict, names: list[str]) -> str:
    names = [n for n in names if n in data.get("models", {})]
    out = []
    mach = data.get("machine", {})
    runs = ", ".join(
        f"{data['models'][n]['label']} {_f((model_bandwidth(data, n) or 0) / GB)}"
        + ("" if "bandwidth" in data["models"][n] else "*")
        for n in names
    )
    out.append(
        f"Machine: {mach.get('cpu', '?')}, {mach.get('cores', '?')} cores; read bandwidth in "
        f"GB/s, each model's from its own bench invocation: {runs} (the best of a Numba prange "
        "sum, a NumPy sgemv and this package's bf16 matvec over 2 GB, at the invocation's "
        "start and end; *: measured before invocations were recorded per model, so the "
        "newest invocation's)."
    )

    # speeds, one table per phase
    for phase, title, digits in (
        ("decode", "Decode tok/s (64 tokens after a 1-token prompt; % of the roofline)", 2),
        ("prefill128", "Prefill tok/s, 128-token prompt", 1),
        ("prefill512", "Prefill tok/s, 512-token prompt", 1),
    ):
        rows = []
        for n in names:
            e = data["models"][n]
            s = speeds(e, model_bandwidth(data, n))
            row = [f"{e['label']}"]
            for eng in ENGINES:
                v = s[eng][phase]
                cell = _f(v, digits)
                if phase == "decode" and v is not None and s[eng]["roofline"]:
                    cell += f" ({_pct(v, s[eng]['roofline'])})"
                row.append(cell)
            if phase == "decode":
                row += [
                    _f(s["ours bf16"]["roofline"], 2),
                    _f(s["ours w4a16"]["roofline"], 2),
                    _f(s["llama.cpp Q8_0"]["roofline"], 2),
                    _f(s["llama.cpp Q4_0"]["roofline"], 2),
                ]
            rows.append(row)
        header = ["model", *ENGINES]
        if phase == "decode":
            header += ["roof bf16", "roof w4a16", "roof Q8_0", "roof Q4_0"]
        out += ["", f"{title}:", "", _table(header, rows)]

    # ratios
    rows = []
    for n in names:
        e = data["models"][n]
        s = speeds(e, model_bandwidth(data, n))
        hf, lb, l8, l4 = (
            s["transformers bf16"],
            s["llama.cpp BF16"],
            s["llama.cpp Q8_0"],
            s["llama.cpp Q4_0"],
        )
        for fmt in ("bf16", "w4a16"):
            o = s[f"ours {fmt}"]
            rows.append(
                [
                    f"{e['label']} {fmt}",
                    _x(o["decode"], hf["decode"]),
                    _x(o["decode"], lb["decode"]),
                    _x(o["decode"], l8["decode"]),
                    _x(o["decode"], l4["decode"]),
                    _pct(o["decode"], o["roofline"]),
                    _x(o["prefill128"], hf["prefill128"]),
                    _x(o["prefill128"], lb["prefill128"]),
                    _x(o["prefill128"], l4["prefill128"]),
                    _x(o["prefill512"], hf["prefill512"]),
                    _x(o["prefill512"], lb["prefill512"]),
                    _x(o["prefill512"], l4["prefill512"]),
                ]
            )
    header = [
        "ours",
        "dec/HF",
        "dec/llama BF16",
        "dec/Q8_0",
        "dec/Q4_0",
        "dec/roofline",
        "pp128/HF",
        "pp128/llama BF16",
        "pp128/Q4_0",
        "pp512/HF",
        "pp512/llama BF16",
        "pp512/Q4_0",
    ]
    title = "This project's speed as a ratio (above 1: we are faster):"
    out += ["", title, "", _table(header, rows)]

    # memory, load, compile
    rows = []
    for n in names:
        e = data["models"][n]
        bpt = e.get("bytes_per_token", {})
        fb = e.get("file_bytes", {})
        for fmt in ("bf16", "w4a16"):
            tests = ("decode", "prefill128", "prefill512", "compile")
            d, p1, p5, c = (ours(e, fmt, t) for t in tests)
            compile_s = None
            if c and p1:
                compile_s = (c["prefill_first_s"] - p1["first_s"]) + (
                    c["decode_first_s"] - c["decode_warm_s"]
                )
            rows.append(
                [
                    f"{e['label']} {fmt}",
                    e.get("depth", ""),
                    _f(fb.get(fmt, 0) / GB or None, 2),
                    _f(bpt[fmt]["total"] / GB, 2) if fmt in bpt else "-",
                    _f(d and d["peak_rss"] / GB, 2),
                    _f(p5 and p5["peak_rss"] / GB, 2),
                    _f(d and d["load_s"], 2),
                    _f(compile_s, 1),
                    _f(p1 and p1["first_s"], 1),
                    _f(p1 and min(p1["warm_s"]), 2),
                ]
            )
        hf = _ok(e.get("transformers"))
        if hf:
            rows.append(
                [
                    f"{e['label']} transformers",
                    e.get("depth", ""),
                    _f(fb.get("bf16", 0) / GB or None, 2),
                    _f(bpt["bf16"]["total"] / GB, 2) if "bf16" in bpt else "-",
                    _f(hf["peak_rss"] / GB, 2),
                    "-",
                    _f(hf["load_s"], 2),
                    "-",
                    _f(hf["prefill"]["128"]["first_s"], 1),
                    _f(min(hf["prefill"]["128"]["warm_s"]), 2),
                ]
            )
    header = [
        "checkpoint",
        "depth",
        "file GB",
        "GB read/token",
        "peak RSS decode GB",
        "peak RSS pp512 GB",
        "load s",
        "Numba compile s",
        "first pp128 s",
        "warm pp128 s",
    ]
    out += ["", "Memory, load time and Numba compile time:", "", _table(header, rows)]
    return "\n".join(out)


def update_readme(readme: Path, tables_text: str, results: Path, data: dict) -> None:
    """Replace the text between the README's results markers with these tables."""
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} markers")
    stamp = data.get("updated", "?")
    body = (
        f"{start}\n\nFrom `{results.relative_to(readme.parent)}` ({stamp}); "
        f"plot: `{results.with_suffix('.png').relative_to(readme.parent)}`.\n\n"
        f"![speed]({results.with_suffix('.png').relative_to(readme.parent)})\n\n"
        f"{tables_text}\n\n{end}"
    )
    head, rest = text.split(start, 1)
    readme.write_text(head + body + rest.split(end, 1)[1])


# --- the plot ----------------------------------------------------------------------------------


COLORS = {
    "ours bf16": "#1f77b4",
    "ours w4a16": "#6baed6",
    "transformers bf16": "#ff7f0e",
    "llama.cpp BF16": "#2ca02c",
    "llama.cpp Q8_0": "#74c476",
    "llama.cpp Q4_0": "#c7e9c0",
}


def plot(data: dict, names: list[str], path: Path) -> None:
    """Decode and prefill tok/s per model and engine; roofline bounds as black ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    names = [n for n in names if n in data.get("models", {})]
    if not names:
        return
    bws = [model_bandwidth(data, n) or 0 for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2), sharey=False)
    width = 0.8 / len(ENGINES)
    for ax, (phase, title) in zip(
        axes,
        (
            ("decode", "decode (64 tokens)"),
            ("prefill128", "prefill, 128-token prompt"),
            ("prefill512", "prefill, 512-token prompt"),
        ),
        strict=True,
    ):
        for j, eng in enumerate(ENGINES):
            xs, ys, roofs = [], [], []
            for i, n in enumerate(names):
                s = speeds(data["models"][n], model_bandwidth(data, n))[eng]
                x = i + (j - (len(ENGINES) - 1) / 2) * width
                if s[phase] is not None:
                    xs.append(x)
                    ys.append(s[phase])
                if phase == "decode" and s["roofline"]:
                    roofs.append((x, s["roofline"]))
            if ys:
                ax.bar(xs, ys, width, label=eng, color=COLORS[eng], edgecolor="black", lw=0.4)
                for x, y in zip(xs, ys, strict=True):
                    label = f"{y:.1f}" if y >= 10 else f"{y:.2f}"
                    ax.text(x, y * 1.03, label, ha="center", va="bottom", fontsize=6, rotation=90)
            for x, r in roofs:
                ax.hlines(r, x - width / 2, x + width / 2, color="black", linewidth=1.6)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 1.4)  # room for the value labels
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([data["models"][n]["label"] for n in names], fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("tokens / s (log scale)")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].plot([], [], color="black", linewidth=1.6, label="decode roofline (bandwidth / bytes)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    mach = data.get("machine", {})
    fig.suptitle(
        f"Gemma 4 on {mach.get('cpu', '?')}, {mach.get('cores', '?')} cores "
        f"(read bandwidth {_f(min(bws) / GB)}-{_f(max(bws) / GB)} GB/s, each model's own run); "
        "random weights, real shapes",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
