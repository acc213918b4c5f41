"""The 12B encoder-free front end: parity of processors, projections and mask with transformers.

The checkpoints are made and fully randomised by transformers: ``unified_models`` (real image
geometry, 640-sample audio frames, patch width 48 unlike text width 64) saved in fp32 and bf16,
and tiny_models' "12b" (4-px patches, Hub's pre-rename tensor names). Both sides get the same
pixels (drawn with NumPy and pillow) and the same NumPy waveforms. The checks:

* image sizes and soft-token counts equal transformers' over shapes and every budget; the merged
  patches and positions equal `patches_merge`'s; with torchvision installed, the whole
  `Gemma4UnifiedImageProcessor` output too (bit for bit where no resize happens);
* audio frames, masks and counts equal `Gemma4UnifiedAudioFeatureExtractor`'s;
* image and audio soft tokens agree within 1e-4 relative (the Linear path and the plain NumPy
  reference alike);
* the image block ids and the resulting masks equal transformers' on both layer types;
* bad input fails with an InputError / ConfigError naming the field.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from unified_models import save_front_end_model
from vision_models import test_image

from gemma4_ref import ConfigError, InputError
from gemma4_ref.attention import visible
from gemma4_ref.image import SUPPORTED_SOFT_TOKENS, patchify, process_image, target_size
from gemma4_ref.linear import widen
from gemma4_ref.multimodal import (
    PlaceholderIds,
    expand_placeholders,
    vision_block_bounds,
    vision_blocks,
    wrapped,
)
from gemma4_ref.unified import (
    UnifiedFrontEnd,
    audio_soft_tokens_ref,
    load_unified_config,
    num_audio_tokens,
    process_unified_image,
    unified_config_from_dict,
    unified_visible,
    vision_soft_tokens_ref,
    waveform_frames,
)

REL_TOL = 1e-4
MAX_SOFT = 280
# (width, height): already at the 280-token size (no resize), shrunk, enlarged, elongated
IMAGE_SIZES = [(960, 672), (500, 300), (70, 50), (40, 1000)]


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    return float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def front(request, tmp_path_factory):
    """(our front end, transformers' model in fp32) on one saved checkpoint."""
    import transformers

    path = save_front_end_model(tmp_path_factory.mktemp(f"unified_{request.param}"), request.param)
    ref = transformers.Gemma4UnifiedForConditionalGeneration.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return UnifiedFrontEnd.load(path), ref


def _hf_image_tokens(ref, patches: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """transformers' soft tokens of one image, fed padded to MAX_SOFT rows as its processor
    pads.  # [N, D], [N, 2] -> [N, H]"""
    pad = MAX_SOFT - len(patches)
    pv = np.concatenate([patches, np.zeros((pad, patches.shape[1]), np.float32)])
    pos = np.concatenate([positions, np.full((pad, 2), -1, np.int64)])
    with torch.no_grad():
        out = ref.model.get_image_features(
            torch.from_numpy(pv)[None], torch.from_numpy(pos)[None], return_dict=True
        )
    return out.pooler_output[0].numpy()


# --- image processor ------------------------------------------------------------------------------


@pytest.mark.parametrize("max_soft", SUPPORTED_SOFT_TOKENS)
def test_target_sizes_and_counts_match_transformers(max_soft: int) -> None:
    from transformers.models.gemma4_unified.processing_gemma4_unified import (
        get_aspect_ratio_preserving_size,
    )

    rng = np.random.default_rng(max_soft)
    for h, w in [(672, 960), (1, 1), (3000, 20), (20, 3000), *rng.integers(1, 4000, (40, 2))]:
        h, w = int(h), int(w)
        ours = target_size(h, w, max_soft)
        assert ours == get_aspect_ratio_preserving_size(h, w, 16, max_soft * 9, 3), (h, w)
        assert (ours[0] // 48) * (ours[1] // 48) <= max_soft


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_48_px_patches_equal_patches_merge(size: tuple[int, int]) -> None:
    """Cutting 48-px patches is transformers' 16-px patches merged 3 x 3 by `patches_merge`."""
    pytest.importorskip("torchvision")  # the module that holds patches_merge imports it
    from transformers.models.gemma4_unified.image_processing_gemma4_unified import patches_merge

    small = process_image(test_image(*size, seed=1), MAX_SOFT)
    h, w = small.size
    pixels = small.patches.reshape(h // 16, w // 16, 16, 16, 3).transpose(0, 2, 1, 3, 4)
    ours, ours_pos = patchify(pixels.reshape(h, w, 3), 48)
    ref, ref_pos = patches_merge(
        torch.from_numpy(small.patches)[None], torch.from_numpy(small.positions)[None], len(ours)
    )
    np.testing.assert_array_equal(ours, ref[0].numpy())
    np.testing.assert_array_equal(ours_pos, ref_pos[0].numpy())


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_processor_matches_transformers(size: tuple[int, int]) -> None:
    pytest.importorskip("torchvision")  # transformers' unified image processor needs it
    from transformers.models.gemma4_unified.image_processing_gemma4_unified import (
        Gemma4UnifiedImageProcessor,
    )

    image = test_image(*size, seed=2)
    ref = Gemma4UnifiedImageProcessor()(images=image, return_tensors="np")
    ours = process_unified_image(image, MAX_SOFT)
    n = ours.num_soft_tokens
    assert [n] == list(ref["num_soft_tokens_per_image"])
    assert ref["pixel_values"].shape == (1, MAX_SOFT, 6912)
    np.testing.assert_array_equal(ref["image_position_ids"][0, :n], ours.positions)
    assert (ref["image_position_ids"][0, n:] == -1).all()
    assert not ref["pixel_values"][0, n:].any()
    diff = np.abs(ref["pixel_values"][0, :n] - ours.patches).max()
    if ours.size == (size[1], size[0]):  # no resize: bit for bit
        assert diff == 0.0
    else:  # pillow's bicubic against torchvision's uint8 bicubic: a level or two out of 255
        print(f"{size}: max pixel difference {diff * 255:.1f} / 255")
        assert diff <= 2.5 / 255


# --- audio processor ------------------------------------------------------------------------------


@pytest.mark.parametrize("num_samples", [1, 639, 640, 641, 16_000 + 123])
def test_audio_frames_match_feature_extractor(num_samples: int) -> None:
    from transformers.models.gemma4_unified.feature_extraction_gemma4_unified import (
        Gemma4UnifiedAudioFeatureExtractor,
    )
    from transformers.models.gemma4_unified.processing_gemma4_unified import Gemma4UnifiedProcessor

    wave = np.random.default_rng(num_samples).normal(0, 0.3, num_samples)  # float64, as read
    ref = Gemma4UnifiedAudioFeatureExtractor()(wave, return_tensors="np")
    frames = waveform_frames(wave)
    np.testing.assert_array_equal(frames, ref["input_features"][0])
    assert ref["input_features_mask"][0].all() and len(frames) == num_audio_tokens(num_samples)
    processor = SimpleNamespace(feature_extractor=Gemma4UnifiedAudioFeatureExtractor())
    count = Gemma4UnifiedProcessor._compute_audio_num_tokens(processor, wave, 16_000)
    assert count == num_audio_tokens(num_samples) == math.ceil(num_samples / 640)


# --- soft tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_image_soft_tokens_match_transformers(front, size: tuple[int, int]) -> None:
    ours_model, ref = front
    img = process_unified_image(test_image(*size, seed=3), MAX_SOFT)
    expected = _hf_image_tokens(ref, img.patches, img.positions)
    got = ours_model.vision(img.patches, img.positions)
    rel = _rel(got, expected)
    print(f"{size}: {img.num_soft_tokens} image soft tokens, max rel diff {rel:.2e}")
    assert rel < REL_TOL


def test_image_reference_and_padding(front) -> None:
    """The plain NumPy reference agrees too, and padding rows in the input change nothing."""
    ours_model, ref = front
    img = process_unified_image(test_image(500, 300, seed=4), MAX_SOFT)
    v = ours_model.vision
    params = {
        "patch_ln1.weight": v.ln1[0],
        "patch_ln1.bias": v.ln1[1],
        "patch_dense.weight": widen(v.dense.weight, v.dense.dtype),
        "patch_dense.bias": v.dense_bias,
        "patch_ln2.weight": v.ln2[0],
        "patch_ln2.bias": v.ln2[1],
        "pos_embedding": widen(v.pos_table, v.pos_dtype),
        "pos_norm.weight": v.pos_norm[0],
        "pos_norm.bias": v.pos_norm[1],
        "embedding_projection.weight": widen(v.projection.weight, v.projection.dtype),
    }
    expected = _hf_image_tokens(ref, img.patches, img.positions)
    plain = vision_soft_tokens_ref(img.patches, img.positions, params, v.config.vision_eps)
    assert _rel(plain, expected) < REL_TOL
    pad = np.zeros((5, img.patches.shape[1]), np.float32)
    padded = v(
        np.concatenate([img.patches, pad]), np.concatenate([img.positions, -np.ones((5, 2), int)])
    )
    np.testing.assert_array_equal(padded, v(img.patches, img.positions))


def test_audio_soft_tokens_match_transformers(front) -> None:
    from transformers.models.gemma4_unified.feature_extraction_gemma4_unified import (
        Gemma4UnifiedAudioFeatureExtractor,
    )

    ours_model, ref = front
    t = np.arange(16_000 + 321) / 16_000
    wave = 0.5 * np.sin(2 * np.pi * 440 * t) + np.random.default_rng(5).normal(0, 0.05, t.size)
    feats = Gemma4UnifiedAudioFeatureExtractor()(wave, return_tensors="pt")
    with torch.no_grad():
        out = ref.model.get_audio_features(
            feats["input_features"], feats["input_features_mask"], return_dict=True
        )
    expected = out.pooler_output[0].numpy()
    got = ours_model.audio_soft_tokens(wave)
    rel = _rel(got, expected)
    print(f"{len(got)} audio soft tokens, max rel diff {rel:.2e}")
    assert rel < REL_TOL
    proj = widen(ours_model.audio.projection.weight, ours_model.audio.projection.dtype)
    assert _rel(audio_soft_tokens_ref(waveform_frames(wave), proj, 1e-6), expected) < REL_TOL


def test_tiny_12b_checkpoint(tiny) -> None:
    """tiny_models' "12b": 4-px patches (12-px merged), Hub tensor names, text width 64."""
    import transformers

    path = tiny.path("12b-bf16-sharded-mm")
    ours = UnifiedFrontEnd.load(path)
    ref = transformers.Gemma4UnifiedForConditionalGeneration.from_pretrained(
        path, dtype=torch.float32
    ).eval()
    pixels = np.asarray(test_image(48, 36, seed=6), dtype=np.float32) / np.float32(255)
    patches, positions = patchify(pixels, 12)
    with torch.no_grad():
        expected = (
            ref.model.get_image_features(
                torch.from_numpy(patches)[None], torch.from_numpy(positions)[None], return_dict=True
            )
            .pooler_output[0]
            .numpy()
        )
    assert _rel(ours.vision(patches, positions), expected) < REL_TOL
    wave = np.random.default_rng(7).normal(0, 0.3, 100)
    frames = torch.from_numpy(waveform_frames(wave, frame=16))[None]
    with torch.no_grad():
        expected = ref.model.get_audio_features(
            frames, torch.ones(frames.shape[:2], dtype=torch.bool)
        )
    assert _rel(ours.audio.from_waveform(wave), expected.pooler_output[0].numpy()) < REL_TOL


# --- prompt and mask ------------------------------------------------------------------------------


def test_vision_blocks_and_mask_match_transformers(tiny) -> None:
    """Block ids as `get_block_sequence_ids_for_mask`; masks as `Gemma4UnifiedModel.forward`
    builds them (`create_masks_for_generate` with block_sequence_ids), on both layer types,
    with an image block (20 tokens) longer than the sliding window (16)."""
    import transformers
    from transformers.masking_utils import create_masks_for_generate
    from transformers.models.gemma4_unified.modeling_gemma4_unified import (
        get_block_sequence_ids_for_mask,
    )

    t = PlaceholderIds()
    ids = np.array([2, 5, t.image, 6, t.image, 7, t.audio, 8])
    ids = expand_placeholders(ids, [wrapped(t.boi, t.image, n, t.eoi) for n in (20, 3)], t.image)
    ids = np.insert(ids, 29, [t.video] * 4)  # touching the second image's run: one block
    types = np.select([ids == t.image, ids == t.video, ids == t.audio], [1, 2, 3], 0)
    blocks = vision_blocks(ids, t)
    ref_blocks = get_block_sequence_ids_for_mask(torch.from_numpy(types)[None], "cpu")[0]
    np.testing.assert_array_equal(blocks, ref_blocks.numpy())

    config = json.loads((tiny.path("12b-bf16-sharded-mm") / "config.json").read_text())
    text = transformers.Gemma4UnifiedTextConfig(**config["text_config"])
    text._attn_implementation = "eager"
    S = len(ids)
    masks = create_masks_for_generate(
        config=text,
        inputs_embeds=torch.zeros(1, S, 8),
        attention_mask=None,
        cache=None,
        position_ids=torch.arange(S)[None],
        block_sequence_ids=torch.from_numpy(blocks)[None],
    )
    pos = np.arange(S)
    for layer, window in (("full_attention", 0), ("sliding_attention", text.sliding_window)):
        ref = (masks[layer][0, 0] == 0).numpy()
        np.testing.assert_array_equal(unified_visible(pos, blocks, window), ref, err_msg=layer)
        # the decoder's interval form of the same rule (model.DecoderLayer.attend)
        first, last = vision_block_bounds(pos, ids, t)
        q_first = np.minimum(pos - window + 1, first) if window else None
        np.testing.assert_array_equal(visible(pos, pos, window, last, q_first), ref, err_msg=layer)


# --- config and bad input -------------------------------------------------------------------------


def test_config_is_read(front) -> None:
    cfg = front[0].config
    assert (cfg.patch_dim, cfg.mm_embed_dim, cfg.text_hidden_size) == (6912, 48, 64)
    assert (cfg.mm_posemb_size, cfg.audio_embed_dim) == (1120, 640)


def test_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="gemma4_unified"):
        unified_config_from_dict({"model_type": "gemma4", "vision_config": {}})
    with pytest.raises(ConfigError, match="vision_config"):
        unified_config_from_dict({"model_type": "gemma4_unified"})
    bad = {"model_type": "gemma4_unified", "vision_config": {"mm_posemb_size": 0}}
    with pytest.raises(ConfigError, match="mm_posemb_size"):
        unified_config_from_dict(bad)
    bad = {"model_type": "gemma4_unified", "vision_config": {"output_proj_dims": 7}}
    with pytest.raises(ConfigError, match="output_proj_dims"):
        unified_config_from_dict(bad)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gemma4_unified", "vision_config": {}, "audio_config": None})
    )
    assert load_unified_config(tmp_path).audio_embed_dim is None


def test_input_errors(front) -> None:
    vision, audio = front[0].vision, front[0].audio
    img = process_unified_image(Image.new("RGB", (96, 96), "white"), 70)
    with pytest.raises(InputError, match=r"\[N, 6912\]"):
        vision(img.patches[:, :100], img.positions)
    with pytest.raises(InputError, match="positions"):
        vision(img.patches, img.positions[:, :1])
    with pytest.raises(InputError, match="mm_posemb_size"):
        vision(img.patches, img.positions + 1120)
    with pytest.raises(InputError, match="padding"):
        vision(img.patches, -np.ones_like(img.positions))
    with pytest.raises(InputError, match="16000 Hz"):
        waveform_frames(np.zeros(100), sampling_rate=44_100)
    with pytest.raises(InputError, match="mono"):
        waveform_frames(np.zeros((2, 100)))
    with pytest.raises(InputError, match="int16"):
        waveform_frames(np.zeros(100, np.int16))
    with pytest.raises(InputError, match="empty"):
        waveform_frames(np.zeros(0))
    with pytest.raises(InputError, match="NaN"):
        waveform_frames(np.array([0.0, np.nan]))
    with pytest.raises(InputError, match=r"\[n >= 1, 640\]"):
        audio(np.zeros((3, 16), np.float32))
    with pytest.raises(InputError, match="max_soft_tokens"):
        process_unified_image(Image.new("RGB", (96, 96)), 100)
