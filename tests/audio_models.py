"""Tiny random Gemma 4 audio towers, made with transformers itself, for live parity tests.

Each *variant* is a `Gemma4ForConditionalGeneration` with a toy text decoder (only its width
matters here: the embedder projects into it) and a toy audio conformer:

=======  ==========================================================================================
variant  what it exercises
=======  ==========================================================================================
e2b      the released attention geometry (blocks of 12, context 13 left / 0 right: 12 keys, the
         relative table lands on distance = row), clipped linears with bounds that really clip,
         a logit cap of 4 (the released 50 never bends toy logits) and gradient_clipping 3 (the
         released 1e10 never clamps): 2 layers, hidden 64, 4 heads
odd      another geometry (blocks of 5, 8 left, 3 right: future keys, and a table offset that
         leaves the nearest keys without a relative term), no clipped linears (no bounds in the
         file), rms_norm_eps 1e-3 (only some norms take it, the others keep 1e-6)
=======  ==========================================================================================

The first subsampling conv has 128 channels in both, as in the release: transformers sizes the
input projection from it (128 // 4 = 32 = the mel bins left after two stride-2 convs).

Every parameter and buffer is random: first ``tiny_models.randomise_`` (norm weights in
[0.5, 1.5], weights ~ N(0, 1/fan_in), biases ~ N(0, 0.2)), then the audio tensors whose toy
values must be tuned: clip bounds in +-[1, 2.5] (activations here are O(1), so +-[10, 40] would
never clip) and per-dimension query scales in [-1, 1.5] (softplus of them spans 0.3 to 1.7).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from tiny_models import randomise_

SAMPLE_RATE = 16_000


@dataclasses.dataclass(frozen=True)
class AudioVariant:
    name: str
    audio: dict[str, Any]  # Gemma4AudioConfig kwargs
    seed: int


_TEXT = {  # a one-layer decoder 80 wide: only its width is used by the audio path
    "vocab_size": 512,
    "hidden_size": 80,
    "intermediate_size": 96,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "global_head_dim": 32,
    "hidden_size_per_layer_input": 0,
    "layer_types": ["full_attention"],
}

AUDIO_VARIANTS: dict[str, AudioVariant] = {
    "e2b": AudioVariant(
        "e2b",
        {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "subsampling_conv_channels": [128, 16],
            "output_proj_dims": 48,
            "attention_logit_cap": 4.0,
            "gradient_clipping": 3.0,
        },
        seed=41,
    ),
    "odd": AudioVariant(
        "odd",
        {
            "hidden_size": 48,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "subsampling_conv_channels": [128, 8],
            "output_proj_dims": 40,
            "attention_chunk_size": 5,
            "attention_context_left": 8,
            "attention_context_right": 3,
            "use_clipped_linears": False,
            "rms_norm_eps": 1e-3,
            "conv_kernel_size": 3,
        },
        seed=42,
    ),
}

#: (variant, dtype) pairs saved and checked; bf16 checks the widening of stored weights.
AUDIO_CHECKPOINTS = [("e2b", "fp32"), ("e2b", "bf16"), ("odd", "fp32")]

CLIP_RANGE = (1.0, 2.5)
PER_DIM_SCALE_RANGE = (-1.0, 1.5)


def test_waveform(seconds: float, seed: int = 0) -> np.ndarray:
    """A rising chirp (100 Hz to ~5 kHz over 3 s) with a slow tremolo, plus white noise:
    energy that moves across the mel bins and over time, float64 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    chirp = np.sin(2 * np.pi * (100.0 * t + 800.0 * t**2)) * (0.6 + 0.3 * np.sin(2 * np.pi * 3 * t))
    return np.clip(chirp + 0.05 * rng.standard_normal(t.size), -1.0, 1.0)


test_waveform.__test__ = False  # not a pytest test despite the name


def build_model(variant_name: str):
    """The randomised fp32 `Gemma4ForConditionalGeneration` of an audio variant (eager)."""
    import transformers

    variant = AUDIO_VARIANTS[variant_name]
    config = transformers.Gemma4Config(
        text_config=transformers.Gemma4TextConfig(**_TEXT),
        vision_config=None,
        audio_config=transformers.Gemma4AudioConfig(**variant.audio),
    )
    model = transformers.Gemma4ForConditionalGeneration(config)
    randomise_(model, variant.seed)
    tune_audio_(model, np.random.default_rng(variant.seed + 1))
    return model.eval()


def tune_audio_(model, rng: np.random.Generator) -> None:
    """Set the audio tower's clip bounds and per-dimension query scales to toy ranges that
    matter (see the module docstring)."""
    import torch

    with torch.no_grad():
        for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
            if "audio_tower" not in name:
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("input_min", "output_min"):
                value = -rng.uniform(*CLIP_RANGE)
            elif leaf in ("input_max", "output_max"):
                value = rng.uniform(*CLIP_RANGE)
            elif leaf == "per_dim_scale":
                value = rng.uniform(*PER_DIM_SCALE_RANGE, tuple(tensor.shape))
            else:
                continue
            tensor.copy_(torch.as_tensor(np.asarray(value, np.float32)))


def save_checkpoint(variant_name: str, dtype: str, path: Path) -> Path:
    """Save a variant with transformers' own save_pretrained, in fp32 or bf16."""
    import torch

    model = build_model(variant_name)
    model = model.to({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return path


def load_reference(path: Path):
    """The saved checkpoint in transformers, fp32 (bf16 upcast exactly), eager attention."""
    import torch
    import transformers

    model = transformers.Gemma4ForConditionalGeneration.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def reference_audio(model, waveforms: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """transformers from the waveform on: its feature extractor (one batch, padded to the
    longest clip) and `get_audio_features`, padding stripped per clip.

    Each clip gives `features` [T, 128] and `mask` [T] (this clip's own rows), `hidden`
    [N, output_proj_dims] (the tower) and `tokens` [N, H_text] (after the embedder).
    """
    import torch
    import transformers

    extractor = transformers.Gemma4AudioFeatureExtractor()
    batch = extractor(waveforms, return_tensors="pt")
    with torch.no_grad():
        out = model.model.get_audio_features(
            batch["input_features"], batch["input_features_mask"], return_dict=True
        )
    results = []
    for i in range(len(waveforms)):
        valid = out.attention_mask[i]
        results.append(
            {
                "features": batch["input_features"][i].numpy(),
                "mask": batch["input_features_mask"][i].numpy(),
                "hidden": out.last_hidden_state[i][valid].numpy(),
                "tokens": out.pooler_output[i][valid].numpy(),
            }
        )
    return results


class AudioStore:
    """Builds each audio checkpoint, and its transformers model, at most once per session."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._paths: dict[str, Path] = {}
        self._models: dict[str, Any] = {}

    def path(self, variant: str, dtype: str) -> Path:
        key = f"{variant}-{dtype}"
        if key not in self._paths:
            self._paths[key] = save_checkpoint(variant, dtype, self.root / key)
        return self._paths[key]

    def reference_model(self, variant: str, dtype: str):
        key = f"{variant}-{dtype}"
        if key not in self._models:
            self._models[key] = load_reference(self.path(variant, dtype))
        return self._models[key]
