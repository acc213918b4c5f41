"""One measurement, run in a fresh process; prints one JSON line. Started by run.py.

    python bench/measure.py ours DIR --what prefill --tokens 128 --reps 3
    python bench/measure.py ours DIR --what decode --tokens 64
    python bench/measure.py ours DIR --what compile
    python bench/measure.py transformers DIR --prefill 128,512 --decode 64 --reps 3
    python bench/measure.py bandwidth

A fresh process per measurement keeps its peak memory its own. The figure is `VmHWM` from
/proc/self/status (the peak resident set of this process image). `ru_maxrss` is reported too,
but on Linux it survives exec() and so also covers whatever the parent held when it forked.

Timing: the first call of a process is reported apart (it loads Numba's cache or compiles, and
pages in whatever weights stay memory-mapped). Ours loads as `load_model` does by default
(`weights="auto"`: the decoder read into memory when it fits); `resident` records the
outcome. The machine is shared, and other work only ever slows a run down, so the headline
figures resist it: prefill is the best of the warm runs, decode is
one over the median step time of the best of `reps` runs of `tokens` steps (a median shrugs
off a few slow steps; the best run, a slowdown of a few seconds -- the way llama-bench's
figures are taken, its best repetition). Every run's steps are kept. Prefill
runs the prompt through a fresh KV cache and computes the logits of the last position only (as
generation does, and as llama-bench and transformers' generate do). Decode starts from a
one-token context (BOS) and times `tokens` single-token steps with greedy argmax.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

PROMPT_SEED = 1234


def major_faults() -> int:
    """Page faults that had to read from disk so far: weights not in the page cache."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_majflt


def decode_figures(runs: list[list[float]]) -> dict:
    """Decode tok/s from runs of single-token step times: one over the median step of the
    best run; the best run's mean and every run's steps are kept."""
    medians = [statistics.median(steps) for steps in runs]
    best = runs[medians.index(min(medians))]
    return {
        "step_s": runs,
        "tok_s": 1 / min(medians),
        "tok_s_mean": len(best) / sum(best),
        "tok_s_runs": [1 / m for m in medians],
    }


def load_average() -> float:
    """The 1-minute load average: above the core count, something else shares the CPU."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def peak_memory() -> dict[str, int]:
    """Peak resident bytes of this process image (VmHWM) and ru_maxrss, in bytes."""
    hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return {
        "peak_rss": hwm,
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def prompt_ids(n: int, vocab: int) -> list[int]:
    """BOS then n-1 pseudo-random ids (fixed seed), the same for every engine."""
    import random

    rng = random.Random(PROMPT_SEED)
    hi = min(vocab, 262_144) - 1
    return [2] + [rng.randint(1000, hi) for _ in range(n - 1)]


def _clock(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --- this project ------------------------------------------------------------------------------


def ours(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    # gemma4_ref before NumPy, as in the CLI: it sets OpenBLAS's thread timeout, which OpenBLAS
    # reads only when NumPy loads it
    import gemma4_ref  # isort: skip
    import numba
    import numpy as np

    t1 = time.perf_counter()
    model = gemma4_ref.load_model(args.model)
    t2 = time.perf_counter()
    out: dict = {
        "import_s": t1 - t0,
        "load_s": t2 - t1,
        "resident": model.resident,
        "threads": numba.get_num_threads(),
    }
    vocab = model.config.vocab_size

    def prefill(ids):
        return model.step(ids, model.new_cache())

    def decode_steps(n: int) -> tuple[float, list[float]]:
        """(time of the one-token prompt, times of n single-token steps after it)"""
        cache = model.new_cache()
        t = time.perf_counter()
        logits = model.step([2], cache)
        first = time.perf_counter() - t
        times = []
        for _ in range(n):
            token = int(np.argmax(logits[-1]))
            t = time.perf_counter()
            logits = model.step([token], cache)
            times.append(time.perf_counter() - t)
        return first, times

    if args.what == "prefill":
        ids = prompt_ids(args.tokens, vocab)
        out["first_s"] = _clock(lambda: prefill(ids))
        faults = major_faults()
        warm = [_clock(lambda: prefill(ids)) for _ in range(args.reps)]
        out["warm_major_faults"] = major_faults() - faults
        out["warm_s"] = warm
        out["tok_s"] = args.tokens / min(warm)
        out["tok_s_median"] = args.tokens / statistics.median(warm)
    elif args.what == "decode":
        # the first one-token call loads Numba's cache and pages in the weights
        out["first_s"], _ = decode_steps(3)
        faults = major_faults()
        runs = [decode_steps(args.tokens)[1] for _ in range(args.reps)]
        out["warm_major_faults"] = major_faults() - faults
        out.update(decode_figures(runs))
    elif args.what == "compile":
        # run with an empty NUMBA_CACHE_DIR: the first calls compile every kernel they meet
        ids = prompt_ids(128, vocab)
        out["prefill_first_s"] = _clock(lambda: prefill(ids))
        out["prefill_warm_s"] = _clock(lambda: prefill(ids))
        out["decode_first_s"], steps = decode_steps(3)
        out["decode_warm_s"] = statistics.median(steps)
    out.update(peak_memory())
    out["load_average"] = load_average()
    return out


# --- transformers -----------------------------------------------------------------------------


def hf(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    t1 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16)
    model.eval()
    t2 = time.perf_counter()
    out: dict = {
        "import_s": t1 - t0,
        "load_s": t2 - t1,
        "threads": torch.get_num_threads(),
        "attn_implementation": model.config._attn_implementation,
        "version": transformers.__version__,
        "torch": torch.__version__,
        "prefill": {},
    }
    vocab = model.config.vocab_size

    @torch.inference_mode()
    def prefill(ids):
        x = torch.tensor([ids])
        return model(input_ids=x, use_cache=True, logits_to_keep=1)

    @torch.inference_mode()
    def decode_steps(n: int) -> list[float]:
        r = model(input_ids=torch.tensor([[2]]), use_cache=True, logits_to_keep=1)
        cache, logits = r.past_key_values, r.logits
        times = []
        for _ in range(n):
            token = int(logits[0, -1].argmax())
            t = time.perf_counter()
            r = model(
                input_ids=torch.tensor([[token]]),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            times.append(time.perf_counter() - t)
            cache, logits = r.past_key_values, r.logits
        return times

    for n in args.prefill:
        ids = prompt_ids(n, vocab)
        first = _clock(lambda ids=ids: prefill(ids))
        warm = [_clock(lambda ids=ids: prefill(ids)) for _ in range(args.reps)]
        out["prefill"][str(n)] = {
            "first_s": first,
            "warm_s": warm,
            "tok_s": n / min(warm),
            "tok_s_median": n / statistics.median(warm),
        }
    if args.decode:
        out["decode_first_step_s"] = decode_steps(4)[0]
        out["decode"] = decode_figures([decode_steps(args.decode) for _ in range(args.reps)])
    out.update(peak_memory())
    out["load_average"] = load_average()
    return out


# --- memory bandwidth -------------------------------------------------------------------------


def bandwidth(args: argparse.Namespace) -> dict:
    """Read bandwidth with all threads: the fastest of three ways to stream `gb` GB.

    A Numba prange sum and a NumPy/BLAS sgemv over a float32 array, and this package's bf16
    matvec (four row streams a block, software prefetch) over a bf16 one; each keeps the best
    of `reps` passes. The third reads about 5% faster than sgemv on the Xeon of bench/README.md,
    and a roofline from a slower reader would let a decode step pass 100% of it. `a.sum()` is
    not used: it is compute-bound below the memory speed.
    """
    import gemma4_ref.linear  # isort: skip  (before NumPy: see ours)
    import numba
    import numpy as np

    from gemma4_ref.plots.performance import read_bandwidth

    sum_bps = read_bandwidth(int(args.gb * 1000), args.reps, chunks=1024)
    n = int(args.gb * 1e9) // 4
    cols = 4096
    rows = n // cols
    a = np.ones((rows, cols), np.float32)  # touching every page now, not inside the timing
    x = np.ones(cols, np.float32)
    nbytes = a.nbytes
    t_gemv = min(_clock(lambda: a @ x) for _ in range(args.reps))
    a = None  # free it before the bf16 copy
    w = np.full((2 * rows, cols), 0x3F80, np.uint16)  # bf16 ones, the same bytes
    matvec = gemma4_ref.linear.matvec_bf16
    t_kernel = min(_clock(lambda: matvec(w, x)) for _ in range(args.reps))
    return {
        "array_bytes": nbytes,
        "threads": numba.get_num_threads(),
        "numba_prange_sum_gbs": sum_bps / 1e9,
        "numpy_sgemv_gbs": nbytes / t_gemv / 1e9,
        "bf16_matvec_gbs": w.nbytes / t_kernel / 1e9,
        "gbs": max(sum_bps, nbytes / t_gemv, w.nbytes / t_kernel) / 1e9,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="engine", required=True)
    o = sub.add_parser("ours")
    o.add_argument("model")
    o.add_argument("--what", choices=("prefill", "decode", "compile"), required=True)
    o.add_argument("--tokens", type=int, default=128)
    o.add_argument("--reps", type=int, default=3)
    o.set_defaults(func=ours)
    t = sub.add_parser("transformers")
    t.add_argument("model")
    t.add_argument("--prefill", type=lambda s: [int(v) for v in s.split(",") if v], default=[])
    t.add_argument("--decode", type=int, default=0)
    t.add_argument("--reps", type=int, default=3)
    t.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    t.set_defaults(func=hf)
    b = sub.add_parser("bandwidth")
    b.add_argument("--gb", type=float, default=2.0)
    b.add_argument("--reps", type=int, default=5)
    b.set_defaults(func=bandwidth)
    args = p.parse_args()
    print(json.dumps(args.func(args)), flush=True)


if __name__ == "__main__":
    main()
