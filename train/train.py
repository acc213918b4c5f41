"""Train the demo model: a 22M-parameter Gemma 4 on Shakespeare, with transformers and torch.

Reproducible from the repository: the architecture is `tools/demo_model.py`, the data recipe is
`train/prepare_data.py` (run it first), and every random choice below is seeded. The run is
bounded by wall-clock time (`--minutes`); it then records the number of steps it took, and
`--steps N` repeats exactly that schedule.

Each batch mixes random text windows of the corpus (each after `<bos>`) with one-turn chat
examples (padded; padding carries no loss). The held-out loss is measured every `--eval-every`
steps on the first `--eval-windows` windows of the held-out text, and the best weights are kept.

Output (`--out`): the model in bf16 (`model/`, sharded under 16 MB a file) and `train_log.json`
with the loss curve, the settings and the versions used.

    python train/train.py --out /tmp/run --minutes 7          # on a GPU
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

from demo_model import DEMO_CONFIG, GENERATION_CONFIG  # noqa: E402

from gemma4_ref.perplexity import windows  # noqa: E402

BOS, PAD = 2, 0
IGNORE = -100


def batches(data: dict, batch: int, seq: int, chat_fraction: float, rng: np.random.Generator):
    """Endless training batches: (input_ids, labels), both [batch, seq] int64."""
    text, chat, offsets = data["train_text"], data["train_chat"], data["train_chat_offsets"]
    n_chat = int(round(batch * chat_fraction))
    while True:
        ids = np.full((batch, seq), PAD, np.int64)
        labels = np.full((batch, seq), IGNORE, np.int64)
        starts = rng.integers(0, len(text) - seq, batch - n_chat)
        for row, s in enumerate(starts):
            ids[row, 0] = BOS
            ids[row, 1:] = text[s : s + seq - 1]
            labels[row] = ids[row]
        for row, k in enumerate(rng.integers(0, len(offsets) - 1, n_chat), batch - n_chat):
            ex = chat[offsets[k] : offsets[k + 1]][:seq]
            ids[row, : len(ex)] = ex
            labels[row, : len(ex)] = ex
        yield torch.from_numpy(ids), torch.from_numpy(labels)


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, device: str) -> float:
    model.eval()
    losses = []
    for chunk in windows.split(16):
        chunk = chunk.to(device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            losses.append(model(input_ids=chunk, labels=chunk).loss.float().item())
    model.train()
    return float(np.mean(losses))


def main() -> None:
    ap = argparse.ArgumentParser(description="Train the gemma4-ref demo model.")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=ROOT / "train" / "_data")
    ap.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget for training")
    ap.add_argument("--steps", type=int, default=0, help="fixed step count (overrides --minutes)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--chat-fraction", type=float, default=0.3)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-windows", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    import transformers
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = {p.stem: np.load(p) for p in args.data.glob("*.npy")}
    model = Gemma4ForCausalLM(Gemma4TextConfig(**DEMO_CONFIG)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.1f}M parameters on {device}", flush=True)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
        fused=device == "cuda",
    )
    heldout = torch.from_numpy(windows(data["heldout_text"], args.seq, args.eval_windows))
    stream = batches(data, args.batch, args.seq, args.chat_fraction, rng)

    total = args.steps or None  # fixed after a short calibration when time-bounded
    log = {"step": [], "train_loss": [], "eval_step": [], "heldout_loss": []}
    best = (math.inf, None, 0)
    t0 = time.perf_counter()
    step, running = 0, []
    while total is None or step < total:
        if total is None and step == 40:
            per_step = (time.perf_counter() - t0) / step
            total = max(step + 1, int(args.minutes * 60 / per_step))
            print(f"{per_step * 1000:.0f} ms/step -> {total} steps", flush=True)
        horizon = total or 10**9
        if step < args.warmup:
            lr = args.lr * (step + 1) / args.warmup
        else:
            progress = (step - args.warmup) / max(1, horizon - args.warmup)
            cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
            lr = args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * cosine)
        for group in opt.param_groups:
            group["lr"] = lr
        ids, labels = next(stream)
        ids, labels = ids.to(device), labels.to(device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(loss.item())
        step += 1
        if step % 25 == 0 or step == total:
            log["step"].append(step)
            log["train_loss"].append(float(np.mean(running)))
            running = []
        if step % args.eval_every == 0 or step == total:
            h = evaluate(model, heldout, device)
            log["eval_step"].append(step)
            log["heldout_loss"].append(h)
            elapsed = time.perf_counter() - t0
            print(
                f"step {step}/{total} train {log['train_loss'][-1]:.3f} heldout {h:.3f} "
                f"(ppl {math.exp(h):.1f}) lr {lr:.2e} {elapsed:.0f}s",
                flush=True,
            )
            if h < best[0]:
                state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                best = (h, state, step)

    seconds = time.perf_counter() - t0
    model.load_state_dict(best[1])
    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(args.out / "model", max_shard_size="15MB")
    (args.out / "model" / "generation_config.json").write_text(
        json.dumps(GENERATION_CONFIG, indent=2) + "\n"
    )
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    log.update(
        parameters=n_params,
        steps=total,
        best_step=best[2],
        best_heldout_loss=best[0],
        train_seconds=seconds,
        tokens_per_step=args.batch * args.seq,
        settings=settings,
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        torch=torch.__version__,
        transformers=transformers.__version__,
    )
    (args.out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"done: {total} steps in {seconds:.0f}s, best heldout loss {best[0]:.3f} at {best[2]}")


if __name__ == "__main__":
    main()
