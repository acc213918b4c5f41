"""The speed benchmark, in one command: this project against transformers, llama.cpp and the
memory-bandwidth roofline, on Gemma 4's real shapes.

    python bench/run.py            # E2B (full depth), E4B, 26B-A4B, 31B (reduced depth)
    python bench/run.py --quick    # a smoke run: E2B at 10 of 35 layers, one repetition

For every model it builds a random bf16 checkpoint with transformers and a w4a16 copy with this
project's quantizer, then measures, each in a fresh process started from this small one:

* this project: prefill tok/s at 128 and 512 tokens, decode tok/s over 64 tokens, peak
  resident memory, load time, and Numba's compile time apart from warm runs;
* transformers (bf16, CPU): prefill 128/512 and decode;
* llama.cpp (the copy vendored in llama-cpp-python 0.3.36) on a GGUF converted from the same
  checkpoint, in BF16, Q8_0 and Q4_0: llama-bench prefill 128/512 and decode 64;
* the read bandwidth of this machine, and from it the decode roofline of every format.

Everything is cached: checkpoints in `_checkpoints/`, llama.cpp in `_llama/`, numbers in
`results/<machine>.json`, which is saved after every measurement. A re-run measures only what
is missing; this project's numbers are redone when its source (gemma4_ref/*.py) changes. See
bench/README.md for the method and the latest table.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import llamacpp  # noqa: E402
import models  # noqa: E402
import report  # noqa: E402
import roofline  # noqa: E402

RESULTS = HERE / "results"
LOGS = HERE / "_logs"
NUMBA_CACHE = HERE / "_numba_cache"
PROMPTS = (128, 512)
DECODE_TOKENS = 64
LLAMA_FORMATS = ("BF16", "Q8_0", "Q4_0")
OUR_FORMATS = ("bf16", "w4a16")
METHOD = 3  # bumped when what a number means changes: older numbers are then stale

T0 = time.perf_counter()


def say(msg: str) -> None:
    elapsed = time.perf_counter() - T0
    print(f"[{elapsed / 60:6.1f} min] {msg}", flush=True)


# --- the machine -------------------------------------------------------------------------------


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown-cpu"


def machine_label() -> str:
    """CPU model and core count as a file name, e.g. intel-xeon-processor-2-cores."""
    slug = re.sub(r"\((r|tm)\)", "", cpu_model().lower())
    slug = re.sub(r"[^a-z0-9]+", "-", slug).strip("-")
    return f"{slug}-{os.cpu_count()}-cores"


def machine_info() -> dict:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    versions = {}
    for pkg in ("numpy", "numba", "torch", "transformers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "python": sys.version.split()[0],
        "versions": versions,
        "llama_cpp": f"vendored in llama-cpp-python {llamacpp.VERSION}",
    }


def source_hash() -> str:
    """What this project's numbers depend on: its source and the Numba/NumPy versions."""
    h = hashlib.sha256()
    for p in sorted((REPO / "gemma4_ref").glob("*.py")):
        h.update(p.name.encode() + p.read_bytes())
    for pkg in ("numpy", "numba"):
        h.update(md.version(pkg).encode())
    return h.hexdigest()[:16]


def git_state() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "gemma4_ref"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


# --- children ------------------------------------------------------------------------------------


class ChildError(RuntimeError):
    pass


def cpu_busy(seconds: float = 2.0) -> float:
    """The fraction of all cores busy over a short window (this process is asleep meanwhile)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]  # idle + iowait
        return sum(v) - idle, sum(v)

    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return (b1 - b0) / max(t1 - t0, 1)


QUIET = {"limit": 0.25, "wait": 900.0}  # set from the command line


def wait_quiet() -> float:
    """Wait (up to QUIET["wait"] s) until other work leaves the CPU; returns the busy fraction.

    The machine may be shared. Two threads on two cores slow down a lot when a third process
    takes one of them (llama.cpp's spinning threads most of all), so each measurement starts
    when the cores are idle, or after the wait, noting how busy they were.
    """
    busy = cpu_busy()
    if busy <= QUIET["limit"]:
        return busy
    say(f"  (CPU {100 * busy:.0f}% busy with other work; waiting for it to be quiet ...)")
    t = time.perf_counter()
    while busy > QUIET["limit"] and time.perf_counter() - t < QUIET["wait"]:
        time.sleep(10)
        busy = cpu_busy()
    if busy > QUIET["limit"]:
        say(f"  (still {100 * busy:.0f}% busy after {QUIET['wait']:.0f} s; measuring anyway)")
    return busy


def child(cmd: list[str], log: str, env: dict | None = None, timeout: float = 7200) -> dict:
    """Run one measurement process; its last stdout line is JSON. stderr goes to a log."""
    busy = wait_quiet()
    LOGS.mkdir(exist_ok=True)
    log_path = LOGS / f"{log}.log"
    full_env = {**os.environ, **(env or {})}
    with open(log_path, "w") as err:
        try:
            proc = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=full_env, timeout=timeout
            )
        except subprocess.TimeoutExpired as e:
            raise ChildError(f"timed out after {timeout:.0f} s (log {log_path})") from e
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise ChildError(f"exit {proc.returncode} (log {log_path}): " + " | ".join(tail))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise ChildError(f"no JSON result (log {log_path})")
    return {**json.loads(lines[-1]), "cpu_busy_before": busy}


def thread_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {
        "NUMBA_NUM_THREADS": n,
        "OMP_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
    }


# --- the results file ----------------------------------------------------------------------------


class Results:
    """results/<label>.json, saved after every change."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}
        self.data.setdefault("models", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)

    def model(self, m: models.BenchModel) -> dict:
        spec = m.spec
        entry = self.data["models"].get(m.name)
        if entry is None or entry.get("spec") != spec:  # a changed config voids its numbers
            entry = {"spec": spec}
            self.data["models"][m.name] = entry
        entry.update(
            label=m.label,
            layers=m.layers,
            real_layers=m.real_layers,
            depth=m.depth_note,
            config=m.config,
        )
        return entry


def fresh(entry: dict | None, key: str, redo: bool) -> bool:
    return bool(entry) and not redo and "error" not in entry and entry.get("key") == key


# --- the steps ------------------------------------------------------------------------------------

DISK_MARGIN = 5_000_000_000  # never fill the disk: other work shares it


def check_disk(need: float, what: str) -> None:
    free = shutil.disk_usage(HERE).free
    if free < need + DISK_MARGIN:
        raise ChildError(
            f"not enough disk for {what}: about {need / 1e9:.1f} GB needed (+ "
            f"{DISK_MARGIN / 1e9:.0f} GB kept free), {free / 1e9:.1f} GB free"
        )


def ensure_checkpoint(m: models.BenchModel, fmt: str) -> None:
    if m.done(fmt):
        return
    if fmt == "w4a16":
        ensure_checkpoint(m, "bf16")
    check_disk(m.bf16_bytes, m.folder(fmt).name)
    step = "build" if fmt == "bf16" else "quantize"
    what = "random bf16 checkpoint (transformers)" if fmt == "bf16" else "w4a16 (our quantizer)"
    say(f"{m.label}: building the {what} -> {m.folder(fmt)}")
    proc = subprocess.run([sys.executable, str(HERE / "models.py"), step, m.name])
    if proc.returncode != 0 or not m.done(fmt):
        raise ChildError(f"building {m.folder(fmt).name} failed (exit {proc.returncode})")


def measure_bandwidth(res: Results, threads: int, run: list[dict]) -> dict | None:
    """Measure read bandwidth; the run's figure is the best of its measurements (start, end),
    which this returns (None while the run has none)."""
    say(f"measuring read bandwidth ({threads} threads, 2 GB float32, best of 5) ...")
    try:
        r = child(
            [sys.executable, str(HERE / "measure.py"), "bandwidth"],
            "bandwidth",
            thread_env(threads),
        )
    except ChildError as e:
        say(f"  ! {e}")
        return max(run, key=lambda b: b["gbs"]) if run else None
    r["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    run.append(r)
    best = max(run, key=lambda b: b["gbs"])
    res.data["bandwidth"] = {**best, "this_run": [b["gbs"] for b in run]}
    res.data.setdefault("bandwidth_history", []).append(r)
    res.save()
    say(
        f"  bandwidth {r['gbs']:.1f} GB/s (numba prange sum {r['numba_prange_sum_gbs']:.1f}, "
        f"numpy sgemv {r['numpy_sgemv_gbs']:.1f}, bf16 matvec {r.get('bf16_matvec_gbs', 0):.1f}); "
        f"this run's best {best['gbs']:.1f} GB/s"
    )
    return best


def run_ours(m, entry, args, src: str) -> None:
    env = {**thread_env(args.threads), "NUMBA_CACHE_DIR": str(NUMBA_CACHE)}
    store = entry.setdefault("ours", {})
    for fmt in OUR_FORMATS:
        tests = {
            "compile": ["--what", "compile"],
            **{
                f"prefill{n}": ["--what", "prefill", "--tokens", str(n), "--reps", str(args.reps)]
                for n in PROMPTS
            },
            "decode": [
                "--what",
                "decode",
                "--tokens",
                str(DECODE_TOKENS),
                "--reps",
                str(args.reps),
            ],
        }
        mine = store.setdefault(fmt, {})
        todo = [
            t
            for t in tests
            if not (fresh(mine.get(t), src, args.redo_ours) or (args.keep_ours and t in mine))
        ]
        if not todo:
            continue
        try:
            ensure_checkpoint(m, fmt)
        except ChildError as e:
            say(f"  ! {e}")
            mine["error"] = str(e)
            res.save()
            continue
        mine.pop("error", None)
        folder = str(m.folder(fmt))
        for t in todo:
            say(f"{m.label} {fmt}: this project, {t} (fresh process) ...")
            if t == "compile":  # an empty Numba cache: the first calls compile
                shutil.rmtree(NUMBA_CACHE, ignore_errors=True)
            cmd = [sys.executable, str(HERE / "measure.py"), "ours", folder, *tests[t]]
            try:
                r = child(cmd, f"ours-{m.name}-{fmt}-{t}", env, args.timeout)
            except ChildError as e:
                say(f"  ! {e}")
                mine[t] = {"error": str(e), "key": src}
                res.save()
                continue
            r.update(key=src, git=git_state(), when=time.strftime("%Y-%m-%d %H:%M:%S"))
            mine[t] = r
            res.save()
            say("  " + report.describe_ours(t, r))


def run_transformers(m, entry, args) -> None:
    key = f"transformers {md.version('transformers')} torch {md.version('torch')}"
    key += f" reps {args.reps} method {METHOD}"
    if fresh(entry.get("transformers"), key, args.redo_transformers):
        return
    ensure_checkpoint(m, "bf16")
    say(f"{m.label} bf16: transformers (CPU, bf16), prefill 128/512 and decode 64 ...")
    cmd = [
        sys.executable,
        str(HERE / "measure.py"),
        "transformers",
        str(m.folder("bf16")),
        "--prefill",
        ",".join(str(n) for n in PROMPTS),
        "--decode",
        str(DECODE_TOKENS),
        "--reps",
        str(args.reps),
        "--threads",
        str(args.threads),
    ]
    try:
        r = child(cmd, f"transformers-{m.name}", thread_env(args.threads), args.timeout)
        r.update(key=key, when=time.strftime("%Y-%m-%d %H:%M:%S"))
    except ChildError as e:
        say(f"  ! {e}")
        r = {"error": str(e), "key": key}
    entry["transformers"] = r
    res.save()
    if "error" not in r:
        say("  " + report.describe_transformers(r))


def run_llama(m, entry, args) -> None:
    key = f"llama-cpp-python {llamacpp.VERSION} reps {args.reps} threads {args.threads}"
    key += f" method {METHOD}"
    store = entry.setdefault("llama.cpp", {})
    todo = [q for q in LLAMA_FORMATS if not fresh(store.get(q), key, args.redo_llama)]
    if not todo:
        return
    gdir = llamacpp.GGUF_DIR / f"{m.name}-{m.spec}"
    base = gdir / f"{m.name}-BF16.gguf"
    try:
        if not all((llamacpp.BIN / t).is_file() for t in llamacpp.TARGETS):
            say("llama.cpp: building llama-bench and llama-quantize (once; about 6-7 minutes) ...")
        llamacpp.build()
        ensure_checkpoint(m, "bf16")
        if not base.is_file():
            check_disk(m.bf16_bytes, base.name)
        llamacpp.convert(m.folder("bf16"), base)
    except (ChildError, RuntimeError) as e:
        say(f"  ! {e}")
        for q in todo:
            store[q] = {"error": str(e), "key": key}
        res.save()
        return
    for q in todo:
        path = base if q == "BF16" else gdir / f"{m.name}-{q}.gguf"
        try:
            if q != "BF16":
                if not path.is_file():
                    check_disk(m.bf16_bytes * (0.55 if q == "Q8_0" else 0.3), path.name)
                llamacpp.quantize(base, path, q)
            bpt = child(
                [sys.executable, str(HERE / "roofline.py"), str(path), str(m.folder("bf16"))],
                f"gguf-bytes-{m.name}-{q}",
            )
            say(f"{m.label} {q}: llama-bench -t {args.threads} -p 128,512 -n 64 -r {args.reps} ...")
            busy = wait_quiet()
            r = llamacpp.bench(path, PROMPTS, DECODE_TOKENS, args.reps, args.threads)
            r.update(
                cpu_busy_before=busy,
                key=key,
                bytes_per_token=bpt,
                file_bytes=path.stat().st_size,
                when=time.strftime("%Y-%m-%d %H:%M:%S"),
            )
        except (ChildError, RuntimeError) as e:
            say(f"  ! {e}")
            r = {"error": str(e), "key": key}
        store[q] = r
        res.save()
        if "error" not in r:
            say("  " + report.describe_llama(r))
        if q != "BF16" and not args.keep_gguf:
            path.unlink(missing_ok=True)
    if not args.keep_gguf and all(fresh(store.get(q), key, False) for q in LLAMA_FORMATS):
        shutil.rmtree(gdir, ignore_errors=True)  # the numbers are kept; the files are large


def record_bytes(m: models.BenchModel, entry: dict) -> None:
    """Roofline inputs, from the safetensors headers of the checkpoints present."""
    for fmt in OUR_FORMATS:
        if m.done(fmt):
            bpt = roofline.hf_bytes_per_token(m.folder(fmt))
            entry.setdefault("bytes_per_token", {})[fmt] = bpt
            entry.setdefault("file_bytes", {})[fmt] = roofline.folder_bytes(m.folder(fmt))
    res.save()


def run_model(m: models.BenchModel, args, src: str) -> None:
    entry = res.model(m)
    say(f"=== {m.label}: {m.depth_note} ===")
    prune = m.name in args.prune or "all" in args.prune
    if not args.skip_ours:
        run_ours(m, entry, args, src)
        if prune and m.done("w4a16"):  # only this project reads it: free the disk early
            record_bytes(m, entry)
            say(f"pruning {m.folder('w4a16')} (its numbers are saved)")
            shutil.rmtree(m.folder("w4a16"), ignore_errors=True)
    if not args.skip_transformers:
        run_transformers(m, entry, args)
    if not args.skip_llama:
        run_llama(m, entry, args)
    record_bytes(m, entry)
    if prune:
        for fmt in OUR_FORMATS:
            say(f"pruning {m.folder(fmt)} (its numbers are saved)")
            shutil.rmtree(m.folder(fmt), ignore_errors=True)


def main() -> None:
    global res
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="E2B at 10 layers, one repetition")
    p.add_argument("--models", help=f"comma-separated, from {', '.join(models.MODELS)}")
    p.add_argument("--reps", type=int, help="timed repetitions (default 3; 1 with --quick)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--label", default=machine_label(), help="results file name")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--skip-llama", action="store_true")
    p.add_argument("--redo-ours", action="store_true", help="measure this project again")
    p.add_argument("--redo-transformers", action="store_true")
    p.add_argument("--redo-llama", action="store_true")
    p.add_argument(
        "--keep-ours",
        action="store_true",
        help="keep this project's cached numbers even if gemma4_ref changed",
    )
    p.add_argument("--keep-gguf", action="store_true", help="keep GGUF files after measuring")
    p.add_argument(
        "--prune",
        default="",
        help="models (or 'all') whose checkpoints are deleted once their numbers are saved",
    )
    p.add_argument("--timeout", type=float, default=7200, help="seconds per measurement")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=900,
        help="seconds to wait for other work to leave the CPU before each measurement",
    )
    p.add_argument(
        "--quiet-limit", type=float, default=0.25, help="CPU busy fraction counted as quiet"
    )
    p.add_argument("--report-only", action="store_true", help="print and plot the saved numbers")
    p.add_argument(
        "--update-readme",
        action="store_true",
        help="write the tables into bench/README.md (between its results markers)",
    )
    args = p.parse_args()
    names = args.models.split(",") if args.models else None
    names = names or (models.QUICK_RUN if args.quick else models.FULL_RUN)
    unknown = [n for n in names if n not in models.MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(models.MODELS)}")
    args.reps = args.reps or (1 if args.quick else 3)
    args.prune = [s for s in args.prune.split(",") if s]
    QUIET.update(limit=args.quiet_limit, wait=args.quiet_wait)

    res = Results(RESULTS / f"{args.label}.json")
    if not args.report_only:
        res.data["label"] = args.label
        res.data["machine"] = machine_info()
        src = f"{source_hash()} method {METHOD}"
        say(f"machine {args.label}; gemma4_ref source {src} ({git_state()}); results -> {res.path}")
        say(f"models: {', '.join(models.MODELS[n].label for n in names)}; reps {args.reps}")
        bandwidths: list[dict] = []
        measure_bandwidth(res, args.threads, bandwidths)
        for n in names:
            try:
                run_model(models.MODELS[n], args, src)
            except ChildError as e:
                say(f"  ! {models.MODELS[n].label}: {e}")
        best = measure_bandwidth(res, args.threads, bandwidths)
        for n in names:  # each model's roofline divides by the bandwidth of its own invocation
            if best and n in res.data.get("models", {}):
                res.data["models"][n]["bandwidth"] = {"gbs": best["gbs"], "when": best["when"]}
        res.data["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
        res.save()
    text = report.tables(res.data, names)
    print()
    print(text)
    if args.update_readme:
        report.update_readme(HERE / "README.md", text, res.path, res.data)
        say("bench/README.md: results section updated")
    png = res.path.with_suffix(".png")
    try:
        report.plot(res.data, names, png)
        say(f"results: {res.path}; plot: {png}")
    except ImportError:
        say(f"results: {res.path} (matplotlib is not installed: no plot)")


res: Results

if __name__ == "__main__":
    main()
