"""Write the embedded default checkpoint, `data/gemma4-tiny/`, with random weights.

This is the stand-in until a trained demo model replaces it. Every parameter is random,
norm weights and layer scalars included, so that the default model exercises every code path.
It is written by transformers itself (`save_pretrained`, bf16), exactly as a published
checkpoint folder looks, with the project's tokenizer and chat template beside it.

    python tools/make_default_model.py [--out data/gemma4-tiny] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    import torch
    from demo_model import GENERATION_CONFIG, build

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "gemma4-tiny")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    model = build(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if "inv_freq" in name or "embed_scale" in name:
                continue
            if p.dim() <= 1:  # norm weights, scales, layer scalars: random around one
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    model.to(torch.bfloat16).save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    for f in (ROOT / "data" / "tokenizer").iterdir():
        shutil.copy(f, out / f.name)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({n / 1e6:.1f}M parameters, random weights)")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
