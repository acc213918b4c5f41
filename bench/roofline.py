"""The decode roofline: bytes of weights one decoded token reads, and the speed they allow.

Decoding one token is a chain of matrix-vector products, so every weight it uses streams from
memory once, and decode speed is bounded by `bandwidth / bytes read per token`. What a step
really reads, counted tensor by tensor from the file headers:

* every decoder-layer weight, except the k/v projections (and k_norm) of KV-shared layers,
  which reuse an earlier layer's cache (the checkpoint still holds them; nothing reads them);
* of an MoE layer's experts only the top-k of E (8 of 128 for 26B-A4B);
* the whole embedding table, because the head is tied to it (one row of it is the lookup);
* of the Per-Layer-Embedding table `[vocab, L*256]` only the token's row;
* norms, scalars and everything else in full (they are small).

The KV cache is left out: at the short contexts measured here (at most 65 positions) it is
below 0.1% of the weights. Quantized formats count their real stored bytes (packed nibbles plus
scales), read from the safetensors or GGUF header.

The safetensors count is the package's own (`gemma4_ref.plots.performance.hf_bytes_per_token`,
which the book's performance chapter uses too); the GGUF count, which needs llama.cpp's `gguf`
reader, lives here.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from gemma4_ref.plots.performance import decode_read_rule, hf_bytes_per_token, text_config

__all__ = ["folder_bytes", "gguf_bytes_per_token", "hf_bytes_per_token"]

_GGUF_SHARED_KV = re.compile(r"^blk\.(\d+)\.attn_(?:k|v|k_norm)\.")


def gguf_bytes_per_token(path: Path, src: Path) -> dict[str, float]:
    """Bytes a decode step reads from a GGUF file (src: the checkpoint it came from)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "_llama" / "llama.cpp" / "gguf-py"))
    from gguf import GGUFReader

    first_shared, moe = decode_read_rule(text_config(src))
    parts = {"head_and_embedding": 0.0, "ple_row": 0.0, "layers": 0.0, "experts": 0.0}
    types: dict[str, int] = {}
    for t in GGUFReader(str(path)).tensors:
        nbytes = int(t.n_bytes)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + nbytes
        m = _GGUF_SHARED_KV.search(t.name)
        if m and int(m.group(1)) >= first_shared:
            continue
        if t.name == "per_layer_token_embd.weight":
            parts["ple_row"] += nbytes / int(t.shape[-1])  # ggml shapes list the row count last
        elif t.name in ("token_embd.weight", "output.weight"):
            parts["head_and_embedding"] += nbytes
        elif "_exps" in t.name:
            parts["experts"] += nbytes * moe
        else:
            parts["layers"] += nbytes
    parts["total"] = sum(parts.values())
    parts["file_bytes_by_type"] = types  # type: ignore[assignment]
    return parts


def folder_bytes(folder: Path) -> int:
    """Bytes of the weight files in a checkpoint folder."""
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


if __name__ == "__main__":
    # python bench/roofline.py GGUF CHECKPOINT_DIR: run in a child so the parent stays small
    print(json.dumps(gguf_bytes_per_token(Path(sys.argv[1]), Path(sys.argv[2]))))
