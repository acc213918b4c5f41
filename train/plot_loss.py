"""Draw a training run's loss curve from its `train_log.json`.

python train/plot_loss.py train/runs/demo-v1      # writes loss.png beside the log
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(sys.argv[1])
    log = json.loads((run / "train_log.json").read_text())
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(log["step"], log["train_loss"], label="train (mean of 25 steps)")
    ax.plot(log["eval_step"], log["heldout_loss"], "o-", ms=3, label="held-out")
    best = log["best_step"], log["best_heldout_loss"]
    ax.axvline(best[0], color="grey", ls=":", lw=1)
    ax.annotate(
        f"kept: step {best[0]}, ppl {math.exp(best[1]):.1f}",
        best,
        xytext=(-160, 30),
        textcoords="offset points",
    )
    ax.axhline(math.log(4096), color="red", ls="--", lw=1, label="uniform guess (ln 4096)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_ylim(0, 9)
    ax.set_title(
        f"gemma4-ref demo model: {log['parameters'] / 1e6:.1f}M params, "
        f"{log['tokens_per_step'] * log['steps'] / 1e6:.0f}M tokens, {log['steps']} "
        f"steps, {log['train_seconds']:.0f}s on {log['device']}",
        fontsize=9,
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(run / "loss.png")
    print(f"wrote {run / 'loss.png'}")


if __name__ == "__main__":
    main()
