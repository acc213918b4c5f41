"""A tiny random Gemma 4 12B (`gemma4_unified`) for the front-end parity tests.

tiny_models' "12b" variant shrinks the image patches to 4 px, so real processor output does not
fit it, and its patch-embedding width equals the text width, so a mix-up of the two would pass.
This one keeps the real image geometry (16-px patches merged 3 x 3 into 6912-value patches,
a 1120-row position table) and the real 640-sample audio frames, with a patch-embedding width
(48) unlike the text width (64). The text decoder is the "12b" variant's, cut to one 5:1 block;
every parameter is randomised by tiny_models.randomise_ (LayerNorm weights in [0.5, 1.5], biases
and tables random), so no norm keeps its init value.
"""

from __future__ import annotations

from pathlib import Path

from tiny_models import _COMMON_TEXT, VARIANTS, F, S, randomise_

TEXT = {
    **_COMMON_TEXT,
    **VARIANTS["12b"].text,
    "num_hidden_layers": 6,
    "layer_types": [S] * 5 + [F],
}
VISION = {
    "patch_size": 16,
    "pooling_kernel_size": 3,
    "mm_embed_dim": 48,
    "output_proj_dims": 48,
    "mm_posemb_size": 1120,
    "rms_norm_eps": 1e-6,
}
AUDIO = {"audio_embed_dim": 640, "rms_norm_eps": 1e-6}
SEED = 4242


def build_front_end_model():
    """The randomised fp32 `Gemma4UnifiedForConditionalGeneration` (eager attention)."""
    import transformers

    config = transformers.Gemma4UnifiedConfig(
        text_config=transformers.Gemma4UnifiedTextConfig(**TEXT),
        vision_config=transformers.Gemma4UnifiedVisionConfig(**VISION),
        audio_config=transformers.Gemma4UnifiedAudioConfig(**AUDIO),
    )
    config._attn_implementation = "eager"
    model = transformers.Gemma4UnifiedForConditionalGeneration(config)
    randomise_(model, SEED)
    return model.eval()


def save_front_end_model(path: Path, dtype: str = "float32") -> Path:
    """Save the model with save_pretrained in `dtype` ("float32" or "bfloat16")."""
    import torch

    model = build_front_end_model().to(getattr(torch, dtype))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return path
