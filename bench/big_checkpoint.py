"""Load time and peak memory on a checkpoint of more than 1 GB, made by transformers.

The checkpoint has E2B's real shapes (hidden 1536, vocabulary 262 144, Per-Layer Embeddings,
8 heads, 1 KV head, 256/512 head dims, 4:1 sliding:global, KV sharing, double-wide MLP) at 10
of its 35 layers, with random bf16 weights. It is written once to `bench/_checkpoints/`.

Each measurement runs in a fresh subprocess so that peak resident memory (ru_maxrss) belongs to
that run alone, once per way of loading (`load_model(weights=...)`: the decoder read into
memory, or memory-mapped):

    python bench/big_checkpoint.py            # build if needed, then measure
    python bench/big_checkpoint.py DIR        # measure another checkpoint (e.g. its w4a16 copy)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CKPT = HERE / "_checkpoints" / "e2b-10-layers-bf16"

E2B_10 = {
    "vocab_size": 262_144,
    "hidden_size": 1536,
    "intermediate_size": 6144,
    "num_hidden_layers": 10,
    "num_attention_heads": 8,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "global_head_dim": 512,
    "layer_types": (["sliding_attention"] * 4 + ["full_attention"]) * 2,
    "sliding_window": 512,
    "hidden_size_per_layer_input": 256,
    "vocab_size_per_layer_input": 262_144,
    "num_kv_shared_layers": 4,
    "use_double_wide_mlp": True,
    "final_logit_softcapping": 30.0,
    "max_position_embeddings": 131_072,
}


def build() -> None:
    import torch
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    print(f"building {CKPT} with transformers (random bf16 weights) ...", flush=True)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    model = Gemma4ForCausalLM(Gemma4TextConfig(**E2B_10))
    model.save_pretrained(CKPT)


MEASURE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import gemma4_ref
t1 = time.perf_counter()
m = gemma4_ref.load_model(sys.argv[1], weights=sys.argv[2])
t2 = time.perf_counter()
rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
ids = [2] + list(range(1000, 1063))
t3 = time.perf_counter()
m.generate(ids, max_new_tokens=1, temperature=0.0)   # first call: Numba compiles or loads cache
t4 = time.perf_counter()
new = m.generate(ids, max_new_tokens=16, temperature=0.0)
t5 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_call_s": t4 - t3,
                  "warm_64_prompt_16_new_s": t5 - t4, "peak_rss_after_load": rss_loaded,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "file_bytes": m.weight_bytes}))
"""


def main() -> None:
    ckpt = Path(sys.argv[1]) if len(sys.argv) > 1 else CKPT
    if ckpt == CKPT and not (CKPT / "config.json").is_file():
        build()
    gb = 1e9
    for weights in ("memory", "mmap"):
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", MEASURE, str(ckpt), weights],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"checkpoint: {ckpt.name}, {r['file_bytes'] / gb:.2f} GB on disk; weights={weights}")
        print(f"  import {r['import_s']:.2f}s, load_model {r['load_s']:.2f}s")
        print(f"  first generate (includes Numba compile/cache load) {r['first_call_s']:.2f}s")
        print(f"  warm: 64-token prompt + 16 new tokens {r['warm_64_prompt_16_new_s']:.2f}s")
        print(
            f"  peak RSS after load {r['peak_rss_after_load'] / gb:.2f} GB, "
            f"after generating {r['peak_rss'] / gb:.2f} GB "
            f"({r['peak_rss'] / r['file_bytes']:.2f}x the file size)"
        )
        print(f"  (wall {time.perf_counter() - t:.1f}s)")


if __name__ == "__main__":
    main()
