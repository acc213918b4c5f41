"""Measure a checkpoint's held-out perplexity with transformers, the reference, and record it.

The figure goes to `<model>/heldout_eval.json` with the transformers and torch versions that made
it; `tests/test_demo_model.py` checks that this package reproduces it and that it lies far below
the uniform baseline (the vocabulary size).

    python tools/eval_heldout.py [--model data/gemma4-tiny] [--windows 32] [--seq 256]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from gemma4_ref.perplexity import encode_corpus, perplexity, windows
    from gemma4_ref.tokenizer import Tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "data" / "gemma4-tiny")
    ap.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus" / "heldout.txt")
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()

    tok = Tokenizer.from_dir(args.model)
    batch = windows(encode_corpus(tok, args.corpus.read_text()), args.seq, args.windows)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="eager"
    ).eval()

    def forward(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(ids)[None]).logits[0].numpy()

    def progress(i: int, n: int) -> None:
        print(f"\rwindow {i}/{n}", end="", file=sys.stderr, flush=True)

    ppl = perplexity(forward, batch, progress)
    print(file=sys.stderr)
    vocab = model.config.vocab_size
    record = {
        "corpus": str(args.corpus.relative_to(ROOT)),
        "windows": int(len(batch)),
        "seq": args.seq,
        "tokens_scored": int(len(batch) * (args.seq - 1)),
        "perplexity": ppl,
        "uniform_baseline": vocab,
        "reference": "transformers, fp32 compute, eager attention",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    out = args.model / "heldout_eval.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"held-out perplexity {ppl:.3f} (nll {math.log(ppl):.4f}; uniform {vocab}) -> {out}")


if __name__ == "__main__":
    main()
