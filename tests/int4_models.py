"""Tiny random Gemma 4 checkpoints quantized by the compressed-tensors library itself.

These are the fixtures of ``tests/test_int4.py``.  The quantizer here is compressed-tensors
(0.20), used the way llm-compressor uses it to make Google's ``-qat-w4a16-ct`` exports, not this
project's own code:

1. a variant of ``tiny_models.VARIANTS`` is built by transformers with every parameter
   randomised (``tiny_models.randomise_``) and cast to the checkpoint dtype (bf16 like Google's
   exports; fp16 and fp32 too), which is also the dtype of the scales;
2. ``apply_quantization_config`` attaches a weight-only scheme to every ``Linear`` that is
   targeted and not ignored (``lm_head`` is tied to the embedding; the vision/audio towers and,
   where its 16 inputs do not divide the group, E2B's ``per_layer_projection`` stay dense);
3. each scale (and zero point) is calibrated from the module's own weight with the library's
   ``calculate_qparams`` over per-group (or per-row) minima and maxima -- the rule of the
   ``memoryless_minmax`` observer that llm-compressor's RTN uses;
4. ``ModelCompressor.from_pretrained_model(model, "pack-quantized").compress_model(model)``
   packs the weights, ``save_pretrained`` writes them, and ``ModelCompressor.update_config``
   writes ``quantization_config`` into ``config.json`` exactly as the library does for a real
   export.  The config is then put in the Hub's form (``global_head_dim``) as in
   ``tiny_models``.

=====================  ==========================================================================
checkpoint id          what it covers
=====================  ==========================================================================
e2b-w4g32-bf16         PLE + KV sharing; int4 symmetric, group 32, bf16 scales (the Google layout);
                       per_layer_projection (16 inputs) ignored, so dense and packed layers mix
31b-w4g32-bf16-mm      K=V, multimodal prefix ``model.language_model.*``; towers ignored by regex
                       (seed 324: with the variant's own seed the quantized run meets an EOS)
26b-w4g32-bf16         MoE: attention/MLP/router packed; experts (3-D tensors, not Linear) stay bf16
31b-w4g128-bf16-wide   group 128 (31b with hidden 128, MLP 256, so every input count divides 128)
26b-w4ch-bf16          channel strategy (one scale per output row)
e2b-w4g32a-bf16        asymmetric: zero points, packed along dim 0
26b-w8g32-bf16         int8 (four values per int32 word)
31b-w4g32-fp16         fp16 scales (rounded to fp16 when dequantized)
e2b-w4g32-fp32         fp32 scales (no rounding)
e2b-w4g32-bf16-plg16   two config groups: "Linear" (group 32) and ``re:`` per_layer_projection
                       (group 16); compressed-tensors gives a name match precedence over a class
                       match, and writes the "Linear" group first
=====================  ==========================================================================

How transformers decompresses them (the rounding question, checked in ``test_int4.py``):
compressed-tensors computes ``(q - z) * s`` in the *scale tensor's* dtype.  Loaded with
``dtype=torch.float32`` (default ``dequantize=False``), transformers gives every quantized module
fp32 scale parameters, copies the bf16 scales into them (exactly), and decompresses on the first
forward in fp32: the weights are the exact products ``q * s``, **not** rounded to bf16.  Loaded
with ``quantization_config=CompressedTensorsConfig(dequantize=True)`` it decompresses each
module's checkpoint tensors as stored (bf16 scales, so ``bf16(q * s)``) and then casts to fp32;
so does ``dtype=torch.bfloat16``.  :func:`load_reference` takes the mode as an argument.  The
default mode cannot load asymmetric checkpoints at all (transformers 5.24 + compressed-tensors
0.20.1): it compresses the still-empty model on the meta device, where the zero point is left
unpacked ``[out, G]``, and the packed ``[out * bits / 32, G]`` tensor then fails the size check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from tiny_models import (
    GENERATION_CONFIG,
    TOKENIZER_DIR,
    VARIANTS,
    Reference,
    Variant,
    _full_config,
    _rewrite_config_hub_form,
    _text_config,
    randomise_,
    reference_class,
    reference_outputs,
    test_prompt,
)

# modules that Google's exports leave dense: the tied head and everything of the towers
TOWER_IGNORE = [
    "re:.*vision_tower.*",
    "re:.*audio_tower.*",
    "re:.*embed_vision.*",
    "re:.*embed_audio.*",
]

PLE_PROJECTION = "re:.*per_layer_projection$"  # E2B's [64, 16] Linear: 16 inputs


@dataclasses.dataclass(frozen=True)
class QuantCheckpoint:
    """One variant quantized one way by compressed-tensors."""

    variant: str
    bits: int = 4
    strategy: str = "group"  # "group" | "channel"
    group_size: int | None = 32
    symmetric: bool = True
    dtype: str = "bf16"  # the model's dtype when quantized: the scales' (and dense tensors') dtype
    multimodal: bool = False
    wide: bool = False  # hidden 128 / MLP 256, so that group 128 divides every input count
    ple_group: int | None = None  # E2B's per_layer_projection in a 2nd group of this group size
    seed: int | None = None  # overrides the variant's seed (picked for a clean greedy run)

    @property
    def id(self) -> str:
        kind = f"g{self.group_size}" if self.strategy == "group" else "ch"
        asym = "" if self.symmetric else "a"
        parts = [self.variant, f"w{self.bits}{kind}{asym}", self.dtype]
        if self.multimodal:
            parts.append("mm")
        if self.wide:
            parts.append("wide")
        if self.ple_group:
            parts.append(f"plg{self.ple_group}")
        return "-".join(parts)

    def weight_args(self) -> dict[str, Any]:
        """The ``weights`` block of the scheme (QuantizationArgs kwargs)."""
        return {
            "num_bits": self.bits,
            "type": "int",
            "strategy": self.strategy,
            "group_size": self.group_size if self.strategy == "group" else None,
            "symmetric": self.symmetric,
            "dynamic": False,
        }

    def ignore(self) -> list[str]:
        ignore = ["lm_head"]
        if self.multimodal:
            ignore += TOWER_IGNORE
        text = variant_of(self).text
        per_layer = text.get("hidden_size_per_layer_input") or 0
        if per_layer and self.group_size and per_layer % self.group_size and not self.ple_group:
            ignore.append(PLE_PROJECTION)  # 16 inputs: group 32 does not divide
        return ignore


QUANT_CHECKPOINTS: list[QuantCheckpoint] = [
    QuantCheckpoint("e2b"),
    QuantCheckpoint("31b", multimodal=True, seed=324),  # 319 quantized meets EOS at token 52
    QuantCheckpoint("26b"),
    QuantCheckpoint("31b", group_size=128, wide=True),
    QuantCheckpoint("26b", strategy="channel", group_size=None),
    QuantCheckpoint("e2b", symmetric=False),
    QuantCheckpoint("26b", bits=8),
    QuantCheckpoint("31b", dtype="fp16"),
    QuantCheckpoint("e2b", dtype="fp32"),
    QuantCheckpoint("e2b", ple_group=16),
]
QUANT_BY_ID: dict[str, QuantCheckpoint] = {c.id: c for c in QUANT_CHECKPOINTS}
#: the live-parity trio: PLE + KV sharing, K=V (with the multimodal prefix), MoE
PARITY_IDS = ["e2b-w4g32-bf16", "31b-w4g32-bf16-mm", "26b-w4g32-bf16"]

_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def variant_of(ckpt: QuantCheckpoint) -> Variant:
    """The tiny_models variant, widened for group 128 if asked."""
    variant = VARIANTS[ckpt.variant]
    if ckpt.seed is not None:
        variant = dataclasses.replace(variant, seed=ckpt.seed)
    if ckpt.wide:
        text = {**variant.text, "hidden_size": 128, "intermediate_size": 256}
        variant = dataclasses.replace(variant, text=text)
    return variant


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------


def build_model(ckpt: QuantCheckpoint):
    """The randomised fp32 transformers model (the same weights as tiny_models' builders)."""
    import transformers

    variant = variant_of(ckpt)
    if variant.unified:
        raise ValueError("the unified (12b) classes are not used for the int4 fixtures")
    text = transformers.Gemma4ForCausalLM(_text_config(variant))
    randomise_(text, variant.seed)
    if not ckpt.multimodal:
        return text.eval()
    model = transformers.Gemma4ForConditionalGeneration(_full_config(variant))
    randomise_(model, variant.seed + 1000)
    missing, unexpected = model.model.language_model.load_state_dict(
        text.model.state_dict(), strict=True
    )
    assert not missing and not unexpected
    return model.eval()


def quantization_config(ckpt: QuantCheckpoint):
    """The compressed-tensors QuantizationConfig of a checkpoint: one group targeting Linear
    (and, with ``ple_group``, a second one for E2B's per_layer_projection)."""
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
    )

    groups = {
        "group_0": QuantizationScheme(
            targets=["Linear"], weights=QuantizationArgs(**ckpt.weight_args())
        )
    }
    if ckpt.ple_group:
        args = {**ckpt.weight_args(), "group_size": ckpt.ple_group}
        groups["group_1"] = QuantizationScheme(
            targets=[PLE_PROJECTION], weights=QuantizationArgs(**args)
        )
    return QuantizationConfig(config_groups=groups, ignore=ckpt.ignore())


def calibrate_(model) -> int:
    """Set every quantized module's scale (and zero point) from its weight with
    compressed-tensors' ``calculate_qparams`` (min-max per group or per row); returns the count."""
    import torch
    from compressed_tensors.quantization.utils import calculate_qparams

    n = 0
    with torch.no_grad():
        for _, module in model.named_modules():
            scheme = getattr(module, "quantization_scheme", None)
            if scheme is None or scheme.weights is None:
                continue
            args = scheme.weights
            w = module.weight
            if args.strategy == "group":
                groups = w.unflatten(-1, (w.shape[-1] // args.group_size, args.group_size))
                lo, hi = groups.amin(-1), groups.amax(-1)  # [out, G]
            elif args.strategy == "channel":
                lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)  # [out, 1]
            else:
                raise ValueError(f"strategy {args.strategy} is not used here")
            scale, zero = calculate_qparams(lo, hi, args)
            module.weight_scale.copy_(scale.reshape(module.weight_scale.shape))
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.copy_(zero.reshape(module.weight_zero_point.shape))
            n += 1
    return n


def quantize_model(ckpt: QuantCheckpoint):
    """Build, quantize and compress in memory; returns (model, ModelCompressor)."""
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    model = build_model(ckpt).to(getattr(torch, _TORCH_DTYPES[ckpt.dtype]))
    apply_quantization_config(model, quantization_config(ckpt), show_progress=False)
    n = calibrate_(model)
    assert n > 0
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    with _quiet():
        compressor.compress_model(model)
    return model, compressor


def save_quantized(ckpt: QuantCheckpoint, path: Path) -> Path:
    """Write the quantized checkpoint folder, in the layout of Google's -qat-w4a16-ct exports."""
    model, compressor = quantize_model(ckpt)
    path.mkdir(parents=True, exist_ok=True)
    with _quiet():
        model.save_pretrained(path)
    compressor.update_config(str(path))  # quantization_config, as the library writes it
    _rewrite_config_hub_form(path, variant_of(ckpt), ckpt.multimodal)
    (path / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    if TOKENIZER_DIR.is_dir():
        for item in TOKENIZER_DIR.iterdir():
            if item.is_file():
                shutil.copy2(item, path / item.name)
    return path


@contextlib.contextmanager
def _quiet():
    """Silence Python warnings (e.g. transformers' 'quantization_config passed twice') while the
    libraries work."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def quiet_libraries() -> None:
    """Mute compressed-tensors' loguru messages (e.g. 'could not match target', which a
    ``re:`` ignore entry with nothing to match triggers)."""
    from loguru import logger

    logger.disable("compressed_tensors")


# --------------------------------------------------------------------------------------------
# the reference side
# --------------------------------------------------------------------------------------------


def load_reference(path: Path, dequantize: bool = False):
    """Load a quantized checkpoint in transformers, fp32, eager attention, decompressed.

    dequantize=False is transformers' default (fp32 scale parameters: exact ``q * s``);
    dequantize=True decompresses with the stored scales (``bf16(q * s)`` for bf16 scales).  The
    model runs one forward here, so that the default mode's decompress-on-first-forward hook has
    fired and ``state_dict()`` holds the dense weights.
    """
    import torch
    import transformers

    kwargs: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": "eager"}
    if dequantize:
        kwargs["quantization_config"] = transformers.CompressedTensorsConfig(dequantize=True)
    with _quiet():
        model = reference_class(path).from_pretrained(path, **kwargs).eval()
        with torch.no_grad():
            model(input_ids=torch.tensor([[2, 5]]))
    return model


class QuantStore:
    """Builds each quantized checkpoint, and runs transformers on it, at most once per session."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._paths: dict[str, Path] = {}
        self._refs: dict[tuple[str, bool], Any] = {}
        self._outputs: dict[tuple[str, bool], Reference] = {}
        self._prefill: dict[tuple[str, bool], np.ndarray] = {}
        self._ours: dict[str, Any] = {}
        quiet_libraries()

    def path(self, ckpt_id: str) -> Path:
        if ckpt_id not in self._paths:
            self._paths[ckpt_id] = save_quantized(QUANT_BY_ID[ckpt_id], self.root / ckpt_id)
        return self._paths[ckpt_id]

    def reference_model(self, ckpt_id: str, dequantize: bool):
        key = (ckpt_id, dequantize)
        if key not in self._refs:
            self._refs[key] = load_reference(self.path(ckpt_id), dequantize)
        return self._refs[key]

    def reference(self, ckpt_id: str, dequantize: bool) -> Reference:
        """transformers' prefill logits and 64 greedy tokens for the 40-token test prompt."""
        key = (ckpt_id, dequantize)
        if key not in self._outputs:
            self._outputs[key] = reference_outputs(
                self.reference_model(ckpt_id, dequantize), test_prompt()
            )
        return self._outputs[key]

    def prefill(self, ckpt_id: str, dequantize: bool) -> np.ndarray:
        """transformers' prefill logits for the 40-token test prompt (no generation)."""
        import torch

        key = (ckpt_id, dequantize)
        if key in self._outputs:
            return self._outputs[key].prefill_logits
        if key not in self._prefill:
            model = self.reference_model(ckpt_id, dequantize)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([test_prompt()])).logits
            self._prefill[key] = logits[0].float().numpy()
        return self._prefill[key]

    def ours(self, ckpt_id: str):
        if ckpt_id not in self._ours:
            import gemma4_ref

            self._ours[ckpt_id] = gemma4_ref.load_model(str(self.path(ckpt_id)))
        return self._ours[ckpt_id]
