"""Where a decode step spends its time: cProfile over warm single-token steps.

    python bench/profile_decode.py                       # E2B full depth, bf16 (run.py builds it)
    python bench/profile_decode.py --format w4a16 --steps 8 --top 25
    python bench/profile_decode.py --model path/to/checkpoint --prefill 128

Numba kernels show up as one entry each (the time inside the compiled code is charged to the
dispatcher call), so the table names both the Python glue and the kernels. The weights are
paged in and the kernels loaded by a few warm-up steps first; the profile covers `--steps`
steps after them, and per-step times are printed beside it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    import models

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="checkpoint folder (default: the E2B benchmark checkpoint)")
    p.add_argument("--format", default="bf16", choices=("bf16", "w4a16"))
    p.add_argument("--steps", type=int, default=4, help="decode steps profiled")
    p.add_argument("--prefill", type=int, default=0, help="profile a prefill of N tokens instead")
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args()
    folder = Path(args.model) if args.model else models.MODELS["e2b"].folder(args.format)

    import gemma4_ref  # isort: skip  (before NumPy: see measure.ours)
    import numpy as np
    from measure import prompt_ids

    model = gemma4_ref.load_model(folder)
    print(f"{folder}: {model.config.num_hidden_layers} layers")

    if args.prefill:
        ids = prompt_ids(args.prefill, model.config.vocab_size)
        model.step(ids, model.new_cache())  # warm-up
        work = [lambda: model.step(ids, model.new_cache())]
    else:
        cache = model.new_cache()
        logits = model.step([2], cache)
        state = {"logits": logits}
        for _ in range(3):  # warm-up: page in the weights, load the kernels
            state["logits"] = model.step([int(np.argmax(state["logits"][-1]))], cache)

        def one_step():
            state["logits"] = model.step([int(np.argmax(state["logits"][-1]))], cache)

        work = [one_step] * args.steps

    prof = cProfile.Profile()
    times = []
    for fn in work:
        t = time.perf_counter()
        prof.enable()
        fn()
        prof.disable()
        times.append(time.perf_counter() - t)
    what = f"prefill of {args.prefill} tokens" if args.prefill else f"{len(work)} decode steps"
    print(f"{what}: " + ", ".join(f"{t:.3f} s" for t in times))
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(key).print_stats(args.top)
        text = out.getvalue()
        print(f"\n--- top {args.top} by {key} ---")
        print(text[text.index("ncalls") :] if "ncalls" in text else text)


if __name__ == "__main__":
    main()
