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
"""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path

_SHARED_KV = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.(?:k_proj|v_proj|k_norm)\.")
_GGUF_SHARED_KV = re.compile(r"^blk\.(\d+)\.attn_(?:k|v|k_norm)\.")


def safetensors_tensors(folder: Path) -> dict[str, tuple[str, list[int], int]]:
    """name -> (dtype, shape, bytes) for every tensor of a checkpoint folder (headers only)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for name in files:
        with open(folder / name, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for key, info in header.items():
            if key == "__metadata__":
                continue
            lo, hi = info["data_offsets"]
            out[key] = (info["dtype"], info["shape"], hi - lo)
    return out


def _text_config(folder: Path) -> dict:
    cfg = json.loads((folder / "config.json").read_text())
    return cfg.get("text_config", cfg)


def hf_bytes_per_token(folder: Path) -> dict[str, float]:
    """Bytes a decode step reads from a transformers-layout checkpoint (bf16 or packed)."""
    cfg = _text_config(folder)
    first_shared = cfg["num_hidden_layers"] - (cfg.get("num_kv_shared_layers") or 0)
    moe = (cfg.get("top_k_experts") or 0) / (cfg.get("num_experts") or 1)
    parts = {"head_and_embedding": 0.0, "ple_row": 0.0, "layers": 0.0, "experts": 0.0}
    for name, (_dtype, shape, nbytes) in safetensors_tensors(folder).items():
        rel = re.sub(r"^model\.(?:language_model\.)?", "", name)
        if rel.startswith(("vision", "audio", "embed_vision", "embed_audio")):
            continue
        m = _SHARED_KV.search(rel)
        if m and int(m.group(1)) >= first_shared:
            continue
        if rel == "embed_tokens_per_layer.weight":
            parts["ple_row"] += nbytes / shape[0]
        elif rel in ("embed_tokens.weight", "lm_head.weight"):
            parts["head_and_embedding"] += nbytes
        elif ".experts." in rel:
            parts["experts"] += nbytes * moe
        else:
            parts["layers"] += nbytes
    parts["total"] = sum(parts.values())
    return parts


def gguf_bytes_per_token(path: Path, src: Path) -> dict[str, float]:
    """Bytes a decode step reads from a GGUF file (src: the checkpoint it came from)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "_llama" / "llama.cpp" / "gguf-py"))
    from gguf import GGUFReader

    cfg = _text_config(src)
    first_shared = cfg["num_hidden_layers"] - (cfg.get("num_kv_shared_layers") or 0)
    moe = (cfg.get("top_k_experts") or 0) / (cfg.get("num_experts") or 1)
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
