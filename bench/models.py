"""The benchmark checkpoints: Gemma 4's real shapes with random weights, made by transformers.

Each model keeps its released text config (hidden size, vocabulary, heads, head dims, MLP
widths, Per-Layer Embeddings, KV sharing, experts; gemma4-architecture.md section 2) and
changes only the depth where the full model would not fit this machine's memory or disk.
The cost of a decode step is a sum over layers, so per-layer figures carry over; the output
always states the depth.

For each model there are two checkpoints under `bench/_checkpoints/`:

    <name>-bf16/    transformers' `save_pretrained` of a random bf16 model, plus a synthetic
                    tokenizer (see :func:`write_tokenizer`)
    <name>-w4a16/   this project's quantizer applied to it (`gemma4_ref.quantize`)

Folders are written under a `.partial` name and renamed when complete, so an interrupted
build is redone, never half-used. Run as a script, one step at a time (run.py does this in a
fresh process, so the parent that later measures memory never held a model):

    python bench/models.py build e2b
    python bench/models.py quantize e2b
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CKPT_ROOT = HERE / "_checkpoints"
TOKENIZER_SRC = REPO / "data" / "tokenizer"

S, F = "sliding_attention", "full_attention"
SPEC_FILE = "bench-spec.txt"  # the config hash a checkpoint folder was made from

_COMMON: dict[str, Any] = {
    "vocab_size": 262_144,
    "head_dim": 256,
    "global_head_dim": 512,
    "final_logit_softcapping": 30.0,
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class BenchModel:
    """One benchmark model: a released Gemma 4 text config, maybe at reduced depth."""

    name: str  # folder stem and results key
    label: str  # what tables and plots call it
    real_layers: int  # the released model's depth
    config: dict[str, Any] = field(default_factory=dict)  # Gemma4TextConfig kwargs

    @property
    def layers(self) -> int:
        return self.config["num_hidden_layers"]

    @property
    def depth_note(self) -> str:
        if self.layers == self.real_layers:
            return f"{self.layers} layers (full depth)"
        return f"{self.layers} of {self.real_layers} layers"

    @property
    def spec(self) -> str:
        """A hash of the config: a checkpoint or a number made from another config is stale."""
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:12]

    def folder(self, fmt: str) -> Path:
        return CKPT_ROOT / f"{self.name}-{fmt}"

    @property
    def bf16_bytes(self) -> int:
        """About how large the bf16 checkpoint is (to check the disk before building)."""
        c = self.config
        H, V, L, nH = (
            c["hidden_size"],
            c["vocab_size"],
            c["num_hidden_layers"],
            c["num_attention_heads"],
        )
        P = c.get("hidden_size_per_layer_input") or 0
        n = V * H + (V * L * P + 2 * L * P * H if P else 0)
        first_shared = L - (c.get("num_kv_shared_layers") or 0)
        for i, kind in enumerate(c["layer_types"]):
            hd = c["global_head_dim"] if kind == F else c["head_dim"]
            kv = c.get("num_global_key_value_heads") or c["num_key_value_heads"]
            kv = kv if kind == F else c["num_key_value_heads"]
            inter = c["intermediate_size"] * (
                2 if c.get("use_double_wide_mlp") and i >= first_shared else 1
            )
            n += 2 * H * nH * hd + 2 * H * kv * hd + 3 * H * inter
            if c.get("enable_moe_block"):
                n += c["num_experts"] * (3 * H * c["moe_intermediate_size"] + H)
        return 2 * n

    def done(self, fmt: str) -> bool:
        """Is the checkpoint there, complete, and made from this config?"""
        stamp = self.folder(fmt) / SPEC_FILE
        return stamp.is_file() and stamp.read_text().strip() == self.spec


def _e2b(layers: int, shared: int) -> dict[str, Any]:
    return {
        **_COMMON,
        "hidden_size": 1536,
        "intermediate_size": 6144,
        "num_hidden_layers": layers,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "layer_types": [S, S, S, S, F] * (layers // 5),
        "sliding_window": 512,
        "hidden_size_per_layer_input": 256,
        "vocab_size_per_layer_input": 262_144,
        "num_kv_shared_layers": shared,
        "use_double_wide_mlp": True,
        "attention_k_eq_v": False,
    }


MODELS: dict[str, BenchModel] = {
    # Full depth: 35 layers, 20 of them reuse the KV of layers 13 (sliding) and 14 (full).
    "e2b": BenchModel("e2b", "E2B", 35, _e2b(35, 20)),
    # The smoke test: two 4:1 blocks, the last 5 layers KV-shared. llama.cpp assumes what the
    # releases do: the last layer before the shared ones is global, the one before it sliding.
    "e2b-10L": BenchModel("e2b-10L", "E2B (10 L)", 35, _e2b(10, 5)),
    # Two 5:1 blocks of E4B; the second block KV-shared (18 of 42 layers in the release).
    "e4b-12L": BenchModel(
        "e4b-12L",
        "E4B (12 L)",
        42,
        {
            **_COMMON,
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "layer_types": [S, S, S, S, S, F] * 2,
            "sliding_window": 512,
            "hidden_size_per_layer_input": 256,
            "vocab_size_per_layer_input": 262_144,
            "num_kv_shared_layers": 6,
            "use_double_wide_mlp": False,
            "attention_k_eq_v": False,
        },
    ),
    # One 5:1 block of the MoE model: 128 experts of width 704, top 8, beside a dense MLP.
    "26b-a4b-6L": BenchModel(
        "26b-a4b-6L",
        "26B-A4B (6 L)",
        30,
        {
            **_COMMON,
            "hidden_size": 2816,
            "intermediate_size": 2112,
            "num_hidden_layers": 6,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "num_global_key_value_heads": 2,
            "attention_k_eq_v": True,
            "layer_types": [S, S, S, S, S, F],
            "sliding_window": 1024,
            "hidden_size_per_layer_input": 0,
            "enable_moe_block": True,
            "num_experts": 128,
            "top_k_experts": 8,
            "moe_intermediate_size": 704,
            "max_position_embeddings": 262_144,
        },
    ),
    # One 5:1 block of the dense 31B.
    "31b-6L": BenchModel(
        "31b-6L",
        "31B (6 L)",
        60,
        {
            **_COMMON,
            "hidden_size": 5376,
            "intermediate_size": 21504,
            "num_hidden_layers": 6,
            "num_attention_heads": 32,
            "num_key_value_heads": 16,
            "num_global_key_value_heads": 4,
            "attention_k_eq_v": True,
            "layer_types": [S, S, S, S, S, F],
            "sliding_window": 1024,
            "hidden_size_per_layer_input": 0,
            "max_position_embeddings": 262_144,
        },
    ),
}

FULL_RUN = ["e2b", "e4b-12L", "31b-6L", "26b-a4b-6L"]
QUICK_RUN = ["e2b-10L"]


# --- the synthetic tokenizer ------------------------------------------------------------------


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """The project tokenizer (data/tokenizer, 4096 ids) padded with dummy tokens to vocab_size.

    llama.cpp's converter needs a BPE tokenizer.json with byte fallback whose size equals the
    model's vocab_size and which has merges; the random checkpoints have none of their own.
    The dummy tokens are plain vocabulary entries no merge produces, so text still encodes with
    the project's 4096 ids.
    """
    tok = json.loads((TOKENIZER_SRC / "tokenizer.json").read_text())
    vocab: dict[str, int] = tok["model"]["vocab"]
    have = len(vocab)
    if have > vocab_size:
        raise ValueError(f"the project tokenizer has {have} ids, more than {vocab_size}")
    for i in range(have, vocab_size):
        vocab[f"<bench_dummy_{i}>"] = i
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    for extra in ("tokenizer_config.json", "chat_template.jinja"):
        if (TOKENIZER_SRC / extra).is_file():
            shutil.copy(TOKENIZER_SRC / extra, folder / extra)


# --- building ---------------------------------------------------------------------------------


def build(m: BenchModel) -> Path:
    """Make the random bf16 checkpoint with transformers (skipped if it exists)."""
    out = m.folder("bf16")
    if m.done("bf16"):
        return out
    import torch
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    print(f"  transformers: {m.label}, {m.depth_note}, random bf16 weights ...", flush=True)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    model = Gemma4ForCausalLM(Gemma4TextConfig(**m.config))
    n = sum(p.numel() for p in model.parameters())
    print(f"  {n / 1e9:.2f}B parameters; saving to {out} ...", flush=True)
    model.save_pretrained(tmp)
    del model
    write_tokenizer(tmp, m.config["vocab_size"])
    (tmp / SPEC_FILE).write_text(m.spec + "\n")
    shutil.rmtree(out, ignore_errors=True)  # made from an older config
    tmp.rename(out)
    print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def quantize(m: BenchModel) -> Path:
    """Make the w4a16 checkpoint with this project's quantizer (skipped if it exists)."""
    out = m.folder("w4a16")
    if m.done("w4a16"):
        return out
    from gemma4_ref.quantize import quantize_checkpoint

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    print(f"  gemma4_ref.quantize: {m.folder('bf16').name} -> {out.name} (int4, group 32)")
    shown = [-1]

    def progress(i: int, n: int, written: int) -> None:  # a line per tenth, not a bar
        if i * 10 // n > shown[0]:
            shown[0] = i * 10 // n
            print(f"  tensor {i}/{n}, {written / 1e9:.2f} GB written", flush=True)

    report = quantize_checkpoint(m.folder("bf16"), tmp, group_size=32, bits=4, progress=progress)
    (tmp / SPEC_FILE).write_text(m.spec + "\n")
    shutil.rmtree(out, ignore_errors=True)
    print(
        f"  {report.bytes_in / 1e9:.2f} GB -> {report.bytes_out / 1e9:.2f} GB, "
        f"rel. error {report.rel_error:.4f}",
        flush=True,
    )
    tmp.rename(out)
    print(f"  quantized in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    step, name = sys.argv[1], sys.argv[2]
    {"build": build, "quantize": quantize}[step](MODELS[name])
