"""Make a packed int4 (or int8) checkpoint from a bf16/fp16/fp32 Gemma 4 checkpoint.

The output is a compressed-tensors `pack-quantized` checkpoint (compressed-tensors 0.20 layout,
see :mod:`gemma4_ref.int4`), the format of Google's `gemma-4-*-it-qat-w4a16-ct` exports, so
that both transformers (through its compressed-tensors integration) and :func:`load_model`
load it. What is quantized follows those exports: every Linear layer of the text decoder --
q/k/v/o, gate/up/down and the Per-Layer-Embedding projections `per_layer_input_gate`,
`per_layer_projection` and `per_layer_model_projection`. The embeddings, the MoE router, the
head and the vision/audio towers stay in their stored dtype, and so do the MoE experts (3-D
parameters, not Linear modules) and every norm and scalar.

The rule is round-to-nearest with compressed-tensors' min-max observer (the "memoryless_minmax"
of llm-compressor's RTN `QuantizationModifier`, which made the published w4a16 exports):
symmetric int4 has one bf16 scale `bf16(max|w| / 7.5)` per group of `group_size` inputs, and
`q = clamp(round_half_even(w / s), -8, 7)`. No calibration data is needed. On bf16 weights
the scales equal compressed-tensors' `calculate_qparams` bit for bit; `w / s`, though, is taken
here in float32, whereas compressed-tensors divides in the weight's dtype, rounding the quotient
to bf16 first, so about 1% of its q land one step away from the nearest integer that this code
picks. Both are valid checkpoints: a loader reads q and s, not how they were found.

Memory stays about one tensor: the source is memory-mapped (:class:`Checkpoint`), each output
shard's header is planned before any data are written, and the tensors are then quantized and
streamed to disk one at a time (large ones in row blocks).

    report = quantize_checkpoint(Path("gemma-4-E2B-it"), Path("gemma-4-E2B-it-w4a16"))
    print(report.table())
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import (
    _DTYPES,
    INDEX_NAME,
    SINGLE_NAME,
    Checkpoint,
    SafetensorsWriter,
    TensorInfo,
)
from .config import load_json, load_text_config
from .errors import InputError
from .int4 import dequantize_ref, pack_ref, quantize_ref
from .linear import bf16_to_f32, widen

#: the compressed-tensors release whose `pack-quantized` layout and config block this writes
COMPRESSED_TENSORS_VERSION = "0.20.1"

#: a single-file source larger than this is written as shards of at most this size
#: (decimal gigabytes, as transformers counts `max_shard_size`)
MAX_SINGLE_FILE = 2_000_000_000

#: rows are quantized in blocks of about this many weights, so a huge matrix never needs
#: several float32 copies of itself in memory at once
_BLOCK_WEIGHTS = 1 << 22

#: Linear modules of the text decoder, relative to its prefix (`model.` or
#: `model.language_model.`), as transformers 5.24 names them (`Gemma4TextAttention`,
#: `Gemma4TextMLP`, `Gemma4TextDecoderLayer`, `Gemma4TextRouter`, `Gemma4TextModel`)
_LAYER_LINEAR = re.compile(
    r"layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj"
    r"|per_layer_input_gate|per_layer_projection|router\.proj)$"
)
_MODEL_LINEAR = {"per_layer_model_projection"}

#: files of a checkpoint folder that describe the text side and are copied unchanged
_AUX_PATTERNS = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
    "generation_config.json",
    "*processor_config.json",
    "preprocessor_config.json",
    "LICENSE*",
    "NOTICE*",
    "USE_POLICY*",
)

_FLOAT_TAGS = {"BF16": "bf16", "F16": "f16", "F32": "f32"}


# --- the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorError:
    """How far one quantized weight W [out, in] moved: W_q is what a loader dequantizes."""

    name: str  # the module, e.g. model.layers.0.self_attn.q_proj
    shape: tuple[int, int]
    rel_error: float  # ||W - W_q||_F / ||W||_F
    max_abs_error: float  # max |W - W_q|
    sq_error: float  # ||W - W_q||_F^2, for the overall figure
    sq_norm: float  # ||W||_F^2


@dataclass
class QuantReport:
    """What :func:`quantize_checkpoint` did, with the per-tensor quantization error."""

    src: Path
    dst: Path
    bits: int
    group_size: int | None  # None: one scale per output row (channel strategy)
    symmetric: bool
    tensors: list[TensorError] = field(default_factory=list)
    dense_linears: dict[str, str] = field(default_factory=dict)  # module -> why it stayed dense
    copied: int = 0  # source tensors copied unchanged
    bytes_in: int = 0
    bytes_out: int = 0
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rel_error(self) -> float:
        """Overall relative error, ||W - W_q|| / ||W|| over all quantized weights together."""
        total = sum(t.sq_norm for t in self.tensors)
        return math.sqrt(sum(t.sq_error for t in self.tensors) / total) if total else 0.0

    @property
    def max_abs_error(self) -> float:
        return max((t.max_abs_error for t in self.tensors), default=0.0)

    @property
    def scheme(self) -> str:
        kind = f"group {self.group_size}" if self.group_size else "per channel"
        return f"int{self.bits} {'symmetric' if self.symmetric else 'asymmetric'}, {kind}"

    def table(self) -> str:
        """A per-tensor table, then the overall figures."""
        width = max([len(t.name) for t in self.tensors] + [6])
        lines = [f"{'tensor':<{width}}  {'shape':>13}  {'rel err':>8}  {'max abs err':>11}"]
        for t in self.tensors:
            shape = f"{t.shape[0]}x{t.shape[1]}"
            lines.append(
                f"{t.name:<{width}}  {shape:>13}  {t.rel_error:>8.4f}  {t.max_abs_error:>11.3e}"
            )
        for name, why in self.dense_linears.items():
            lines.append(f"{name:<{width}}  kept dense: {why}")
        lines.append(
            f"{len(self.tensors)} weights quantized ({self.scheme}), "
            f"{len(self.dense_linears)} Linear layers kept dense, {self.copied} tensors copied; "
            f"overall relative error {self.rel_error:.4f}, max abs error {self.max_abs_error:.3e}"
        )
        lines.append(
            f"{self.bytes_in / 1e6:.1f} MB -> {self.bytes_out / 1e6:.1f} MB "
            f"({len(self.files)} file{'s' if len(self.files) != 1 else ''}) "
            f"in {self.seconds:.1f}s"
        )
        return "\n".join(lines)


# --- progress ----------------------------------------------------------------------------------


def progress_bar(i: int, n: int, written: int) -> None:
    """The default progress display: a bar on stderr, tensor i of n and megabytes written."""
    width = 30
    done = width * i // max(n, 1)
    bar = "#" * done + "-" * (width - done)
    end = "\n" if i == n else ""
    print(
        f"\r  [{bar}] tensor {i}/{n}  {written / 1e6:8.1f} MB written",
        end=end,
        file=sys.stderr,
        flush=True,
    )


# --- planning ----------------------------------------------------------------------------------


@dataclass
class _Item:
    """One source tensor and what becomes of it: copied, or quantized into 3-4 tensors."""

    info: TensorInfo
    module: str | None = None  # set when quantized: the Linear module's name
    outputs: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(
            int(np.prod(s, dtype=np.int64)) * _DTYPES[t].itemsize for _, t, s in self.outputs
        )


def _text_linear(rel: str) -> str | None:
    """The decoder-relative module name if `rel` (a tensor name) is a text Linear's weight."""
    if not rel.endswith(".weight"):
        return None
    module = rel[: -len(".weight")]
    if module in _MODEL_LINEAR or _LAYER_LINEAR.match(module):
        return module
    return None


def _plan(
    ckpt: Checkpoint, folder: Path, bits: int, group_size: int | None, symmetric: bool
) -> tuple[list[_Item], dict[str, str]]:
    """Decide, tensor by tensor in file order, what is quantized; returns the items and the
    Linear modules that stay dense (with the reason)."""
    cfg, _raw = load_text_config(folder)
    prefix = ckpt.text_prefix()
    shared = {s.index for s in cfg.layers if s.shares_kv}
    items: list[_Item] = []
    dense: dict[str, str] = {}
    infos = sorted(ckpt.tensors.values(), key=lambda t: (str(t.file), t.offset))
    for info in infos:
        item = _Item(info)
        items.append(item)
        module = _text_linear(info.name[len(prefix) :]) if info.name.startswith(prefix) else None
        why = None
        if module is not None:
            m = _LAYER_LINEAR.match(module)
            layer = int(m.group(1)) if m else -1
            if m and layer in shared and m.group(2) in ("self_attn.k_proj", "self_attn.v_proj"):
                # KV consumers have no k/v modules in transformers; the E2B/E4B files still
                # carry unused k/v weights, which are copied as they are.
                module = None
            elif module.endswith("router.proj"):
                why = "MoE router (Google's exports keep it in bf16)"
            elif info.dtype not in _FLOAT_TAGS or len(info.shape) != 2:
                why = f"stored as {info.dtype} {list(info.shape)}, not a float matrix"
            else:
                in_f = info.shape[1]
                group = group_size or in_f
                if in_f % group:
                    why = f"{in_f} inputs are not a multiple of the group size {group}"
                elif (in_f * bits) % 32:
                    why = f"{in_f} inputs do not fill whole int32 words at {bits} bits"
        if module is None:
            item.outputs = [(info.name, info.dtype, info.shape)]
            continue
        full = prefix + module
        if why is not None:
            dense[full] = why
            item.outputs = [(info.name, info.dtype, info.shape)]
            continue
        out_f, in_f = info.shape
        n_groups = in_f // (group_size or in_f)
        item.module = full
        item.outputs = [
            (full + ".weight_packed", "I32", (out_f, in_f * bits // 32)),  # 8 int4 per word
            (full + ".weight_scale", "BF16", (out_f, n_groups)),
            (full + ".weight_shape", "I64", (2,)),
        ]
        if not symmetric:  # zero points are packed down the output dimension
            item.outputs.append(
                (full + ".weight_zero_point", "I32", (-(-out_f * bits // 32), n_groups))
            )
    return items, dense


def _shards(items: list[_Item], limit: int | None) -> list[list[_Item]]:
    """Group items into files of at most `limit` bytes (one file if None). A source tensor's
    outputs stay in one file; a tensor larger than the limit gets a file of its own."""
    if limit is None:
        return [items]
    shards: list[list[_Item]] = [[]]
    size = 8
    for item in items:
        # the header entry of each output tensor: name, dtype, shape and two offsets
        head = sum(len(n) + len(str(list(s))) + 70 for n, _, s in item.outputs)
        if shards[-1] and size + head + item.nbytes > limit:
            shards.append([])
            size = 8
        shards[-1].append(item)
        size += head + item.nbytes
    return shards


def quantization_config(
    bits: int, group_size: int | None, symmetric: bool, ignore: list[str]
) -> dict[str, Any]:
    """The `quantization_config` block of config.json (compressed-tensors 0.20
    `QuantizationConfig`, as `ModelCompressor.update_config` writes it for W4A16): one config
    group targeting every `Linear`, minus the `ignore` list."""
    weights = {
        "num_bits": bits,
        "type": "int",
        "symmetric": symmetric,
        "strategy": "group" if group_size else "channel",
        "group_size": group_size,
        "dynamic": False,
        "actorder": None,
        "block_structure": None,
        "observer": "memoryless_minmax",
    }
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "format": "pack-quantized",
                "weights": weights,
                "input_activations": None,
                "output_activations": None,
            }
        },
        "ignore": ignore,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": COMPRESSED_TENSORS_VERSION,
    }


def _ignore_list(prefix: str, dense: dict[str, str]) -> list[str]:
    """Every Linear module that stays dense: compressed-tensors quantizes each module whose class
    matches a target unless an `ignore` entry names it (exact name, or `re:` + a regex matched at
    the start), and would then expect `weight_packed` for it instead of `weight`."""
    ignore = sorted(dense, key=_natural)
    ignore.append("lm_head")  # Gemma 4's head is tied to the embedding: a Linear left dense
    if prefix == "model.language_model.":
        # the vision/audio towers and their embedders: everything under `model.` outside the
        # language model (transformers renames some tower modules at load, so names would not do)
        ignore.append(r"re:^model\.(?!language_model\.)")
    return ignore


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


# --- quantizing one tensor ---------------------------------------------------------------------


def _quantize_tensor(
    w: np.ndarray, tag: str, bits: int, group_size: int | None, symmetric: bool
) -> tuple[dict[str, np.ndarray], float, float, float]:
    """Quantize W [out, in] with :func:`int4.quantize_ref` in row blocks and pack it.

    Returns the output arrays by suffix (`weight_packed` int32 [out, in*bits/32],
    `weight_scale` bf16 bits [out, G], `weight_shape` int64 [2], `weight_zero_point` int32
    [ceil(out*bits/32), G] if asymmetric), and ||W - W_q||^2, ||W||^2 and max|W - W_q|, where
    W_q = bf16((q - z) * s) is exactly what compressed-tensors dequantizes.
    """
    out_f, in_f = w.shape
    group = group_size or in_f
    packed = np.empty((out_f, in_f * bits // 32), np.int32)
    scale = np.empty((out_f, in_f // group), np.uint16)
    zero = None if symmetric else np.empty((out_f, in_f // group), np.int8)
    sq_err = sq_norm = max_err = 0.0
    rows = max(1, _BLOCK_WEIGHTS // in_f)
    for lo in range(0, out_f, rows):
        hi = min(out_f, lo + rows)
        wb = widen(w[lo:hi], _FLOAT_TAGS[tag])  # [rows, in] f32
        q, s, z = quantize_ref(wb, bits, group, symmetric)
        packed[lo:hi] = pack_ref(q, bits)
        scale[lo:hi] = s
        if zero is not None:
            zero[lo:hi] = z
        diff = dequantize_ref(q, bf16_to_f32(s), z, group, "bf16") - wb
        sq_err += float(np.square(diff, dtype=np.float64).sum())
        sq_norm += float(np.square(wb, dtype=np.float64).sum())
        max_err = max(max_err, float(np.abs(diff).max(initial=0.0)))
    out = {
        "weight_packed": packed,
        "weight_scale": scale,
        "weight_shape": np.array([out_f, in_f], np.int64),
    }
    if zero is not None:
        out["weight_zero_point"] = pack_ref(zero, bits, axis=0)
    return out, sq_err, sq_norm, max_err


# --- the whole checkpoint ----------------------------------------------------------------------


def quantize_checkpoint(
    src: str | Path,
    dst: str | Path,
    group_size: int | None = 32,
    bits: int = 4,
    symmetric: bool = True,
    progress: Callable[[int, int, int], None] | None = progress_bar,
) -> QuantReport:
    """Write a compressed-tensors `pack-quantized` copy of the checkpoint in `src` to `dst`.

    Args:
        src: a Gemma 4 checkpoint folder (bf16/fp16/fp32; one file or shards; `model.*` or
            multimodal `model.language_model.*` keys).
        dst: the output folder (created; existing weight files in it are replaced).
        group_size: inputs per scale (`group` strategy); None or 0: one scale per output row
            (`channel` strategy). A Linear whose input size it does not divide stays dense.
        bits: 4 (W4A16) or 8 (W8A16).
        symmetric: symmetric scales and no zero point (the published exports), or min-max
            scales with a packed zero point.
        progress: called as progress(tensor i, of n, bytes written) after each tensor; None
            for silence. The default draws a bar on stderr.

    Returns:
        A :class:`QuantReport` with the relative and max absolute error of every quantized
        weight.
    """
    t0 = time.perf_counter()
    src, dst = Path(src), Path(dst)
    group_size = group_size or None
    if bits not in (4, 8):
        raise InputError(f"bits must be 4 or 8 (the widths gemma4_ref runs), got {bits}.")
    if group_size is not None and (group_size <= 0 or group_size % 2):
        raise InputError(
            f"group size must be a positive even number (32, 128...), got {group_size}."
        )
    if dst.resolve() == src.resolve():
        raise InputError(f"--out {dst} is the source folder; choose a new folder.")
    if "quantization_config" in load_json(src / "config.json"):
        raise InputError(
            f"{src / 'config.json'} has a quantization_config: the checkpoint is already "
            "quantized. Quantize the bf16 (or fp16/fp32) original instead."
        )
    ckpt = Checkpoint(src)
    items, dense = _plan(ckpt, src, bits, group_size, symmetric)
    prefix = ckpt.text_prefix()

    sharded = len(ckpt.files) > 1 or (src / INDEX_NAME).is_file()
    limit = None
    if sharded:
        limit = max(f.stat().st_size for f in ckpt.files)
    elif ckpt.total_bytes > MAX_SINGLE_FILE:
        sharded, limit = True, MAX_SINGLE_FILE
    shards = _shards(items, limit)

    dst.mkdir(parents=True, exist_ok=True)
    for old in [*dst.glob("model*.safetensors"), dst / INDEX_NAME]:
        old.unlink(missing_ok=True)  # stale shards of an earlier run would confuse loaders

    report = QuantReport(src, dst, bits, group_size, symmetric, dense_linears=dense)
    report.bytes_in = ckpt.total_bytes
    n, done, written = len(items), 0, 0
    weight_map: dict[str, str] = {}
    total_size = 0
    for k, shard in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" if sharded else SINGLE_NAME
        specs = [spec for item in shard for spec in item.outputs]
        with SafetensorsWriter(dst / name, specs, {"format": "pt"}) as writer:
            for item in shard:
                info = item.info
                arr = ckpt.array(info.name)
                if item.module is None:
                    writer.write(info.name, arr)  # copied bit for bit from the memory map
                    report.copied += 1
                else:
                    out, sq_err, sq_norm, max_err = _quantize_tensor(
                        arr, info.dtype, bits, group_size, symmetric
                    )
                    for out_name, _tag, _shape in item.outputs:
                        writer.write(out_name, out[out_name.rsplit(".", 1)[1]])
                    report.tensors.append(
                        TensorError(
                            item.module,
                            info.shape,
                            math.sqrt(sq_err / sq_norm) if sq_norm else 0.0,
                            max_err,
                            sq_err,
                            sq_norm,
                        )
                    )
                for out_name, _tag, _shape in item.outputs:
                    weight_map[out_name] = name
                total_size += item.nbytes
                done += 1
                if progress is not None:
                    progress(done, n, written + writer.nbytes)
        written += writer.nbytes
        report.files.append(name)
    if sharded:
        index = {
            "metadata": {"total_size": total_size},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (dst / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        report.files.append(INDEX_NAME)

    config = load_json(src / "config.json")
    config["quantization_config"] = quantization_config(
        bits, group_size, symmetric, _ignore_list(prefix, dense)
    )
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for pattern in _AUX_PATTERNS:
        for f in sorted(src.glob(pattern)):
            if f.is_file():
                shutil.copyfile(f, dst / f.name)
    report.tensors.sort(key=lambda t: _natural(t.name))
    report.bytes_out = sum(f.stat().st_size for f in dst.iterdir() if f.is_file())
    report.seconds = time.perf_counter() - t0
    return report


# --- what quantization did to the model --------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """The quantized model against its source on the same token windows."""

    windows: int
    tokens: int  # positions compared (all window positions)
    ppl_source: float
    ppl_quantized: float
    mean_abs_logit_diff: float
    max_abs_logit_diff: float
    top1_agreement: float  # fraction of positions whose argmax token is the same

    def summary(self) -> str:
        change = 100.0 * (self.ppl_quantized / self.ppl_source - 1.0)
        return "\n".join(
            [
                f"held-out perplexity ({self.windows} windows, {self.tokens} positions): "
                f"source {self.ppl_source:.3f}, quantized {self.ppl_quantized:.3f} "
                f"({change:+.2f}%)",
                f"logit difference: mean {self.mean_abs_logit_diff:.4f}, "
                f"max {self.max_abs_logit_diff:.4f}; "
                f"top-1 agreement {100.0 * self.top1_agreement:.2f}%",
            ]
        )


def compare_models(
    source, quantized, batch: np.ndarray, progress: Callable[[int, int], None] | None = None
) -> Comparison:
    """Run both models (gemma4_ref `Model`s) over each window of `batch` [w, seq] and compare
    their perplexities and logits."""
    from .perplexity import mean_nll

    nll_s, nll_q, diffs, agree, worst = [], [], [], [], 0.0
    for i, ids in enumerate(batch):
        a = source.forward(ids)  # [seq, V]
        b = quantized.forward(ids)
        nll_s.append(mean_nll(a, ids))
        nll_q.append(mean_nll(b, ids))
        d = np.abs(a - b)
        diffs.append(float(d.mean()))
        worst = max(worst, float(d.max()))
        agree.append(float((a.argmax(-1) == b.argmax(-1)).mean()))
        if progress is not None:
            progress(i + 1, len(batch))
    return Comparison(
        windows=len(batch),
        tokens=int(batch.size),
        ppl_source=float(np.exp(np.mean(nll_s))),
        ppl_quantized=float(np.exp(np.mean(nll_q))),
        mean_abs_logit_diff=float(np.mean(diffs)),
        max_abs_logit_diff=worst,
        top1_agreement=float(np.mean(agree)),
    )
