"""Whole-model parity with images and audio in the prompt (tests/multimodal_models.py).

* E2B-like with an audio tower: a prompt holding an image and an audio clip made by NumPy;
  prefill logits within 1e-4 relative of `Gemma4ForConditionalGeneration` fed by its own
  audio feature extractor (measured: 3.7e-6), and 40 greedy tokens equal to its `generate`;
* chat content items, WAV files and the CLI's `--audio` take the same path;
* the unified 12B-like model: a prompt holding an image (one block longer than the sliding
  window, seen both ways on every layer) and an audio clip; prefill logits within 1e-4 and 40
  greedy tokens equal to `Gemma4UnifiedForConditionalGeneration` given `mm_token_type_ids`;
* bad input: empty or over-long clips, non-WAV files, audio for a model without an encoder.
"""

from __future__ import annotations

import wave

import numpy as np
import pytest
import torch
from audio_models import test_waveform
from multimodal_models import (
    AUDIO_ID,
    IMAGE,
    MAX_NEW_TOKENS,
    MAX_SOFT_TOKENS,
    VIDEO,
    MultimodalStore,
)
from vision_models import padded, test_image

import gemma4_ref
from gemma4_ref import InputError
from gemma4_ref.audio_features import MAX_SAMPLES, log_mel_features
from gemma4_ref.cli import main
from gemma4_ref.image import process_image
from gemma4_ref.unified import process_unified_image, waveform_frames
from gemma4_ref.video import process_video, sample_frame_indices

REL_TOL = 1e-4
MIN_GREEDY = 32


@pytest.fixture(scope="module")
def mm(tmp_path_factory: pytest.TempPathFactory) -> MultimodalStore:
    return MultimodalStore(tmp_path_factory.mktemp("multimodal"))


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    return float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())


def _text(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(110, 4096, n).tolist()


def _greedy(ref, ids: list[int], **inputs) -> tuple[list[int], float]:
    """transformers' greedy tokens and the smallest top-1 minus top-2 logit gap."""
    with torch.no_grad():
        out = ref.generate(
            torch.tensor([ids]),
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            **inputs,
        )
    steps = torch.cat(out.logits, 0).float().numpy()
    top2 = np.sort(steps, axis=-1)[:, -2:]
    return out.sequences[0, len(ids) :].tolist(), float((top2[:, 1] - top2[:, 0]).min())


# --------------------------------------------------------------------------------------------
# audio in the E2B-like model
# --------------------------------------------------------------------------------------------

CLIP_SECONDS = 1.0  # 25 audio soft tokens


def _audio_prompt() -> list[int]:
    """BOS, text, an image, text, an audio clip, text: one placeholder per item."""
    return [2, *_text(5, 1), IMAGE, *_text(4, 2), AUDIO_ID, *_text(3, 3)]


def _audio_inputs(model, image, clip):
    """Our expanded ids, processed image and features; transformers' inputs, the audio
    through its own feature extractor (the image through ours: see vision_models)."""
    import transformers

    processed = process_image(image, MAX_SOFT_TOKENS)
    feats = log_mel_features(clip)
    ids, *_ = model.expand_prompt(_audio_prompt(), [processed], [feats])
    pixels, positions = padded([processed], MAX_SOFT_TOKENS * 9)
    audio = transformers.Gemma4AudioFeatureExtractor()([clip], return_tensors="pt")
    hf = {
        "pixel_values": torch.from_numpy(pixels),
        "image_position_ids": torch.from_numpy(positions),
        "input_features": audio["input_features"],
        "input_features_mask": audio["input_features_mask"],
    }
    return ids, processed, feats, hf


def test_audio_prompt_matches_transformers(mm):
    """Prefill logits within 1e-4 relative; 40 greedy tokens from the waveform equal."""
    model, ref = mm.ours("e2b-audio"), mm.reference("e2b-audio")
    image, clip = test_image(200, 130, seed=1), test_waveform(CLIP_SECONDS, seed=3)
    ids, processed, feats, hf = _audio_inputs(model, image, clip)
    assert (ids == AUDIO_ID).sum() == feats.num_soft_tokens == 25
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor([ids.tolist()]), **hf).logits[0].numpy()
    ours = model.forward(ids, images=[processed], audio=[feats])
    assert _rel(ours, theirs) < REL_TOL

    tokens, gap = _greedy(ref, ids.tolist(), **hf)
    assert gap > 1e-3 and len(tokens) >= MIN_GREEDY
    new = model.generate(
        _audio_prompt(),
        max_new_tokens=MAX_NEW_TOKENS,
        temperature=0.0,
        images=[image],
        audio=[clip],
        max_soft_tokens=MAX_SOFT_TOKENS,
    )
    assert new == tokens


def test_audio_changes_the_answer(mm):
    """The clip's soft tokens reach the decoder: another clip gives other logits."""
    model = mm.ours("e2b-audio")
    prompt = [2, *_text(4, 5), AUDIO_ID]
    last = []
    for seed in (1, 2):
        ids, _, clips, _ = model.expand_prompt(prompt, audio=[test_waveform(0.5, seed=seed)])
        last.append(model.forward(ids, audio=clips)[-1])
    assert np.abs(last[0] - last[1]).max() > 1e-2


def _write_wav(path, samples: np.ndarray, rate: int = 16_000, channels: int = 1) -> None:
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(np.repeat(pcm, channels).tobytes())


def test_chat_wav_and_cli_take_audio(mm, tmp_path, capsys):
    """chat() takes arrays and WAV paths in audio items and answers as generate() does; a
    stereo WAV is averaged to mono; the CLI's --audio takes the same path."""
    model = mm.ours("e2b-audio")
    clip = test_waveform(0.6, seed=4)
    _write_wav(tmp_path / "clip.wav", clip, channels=2)
    pcm = np.round(np.clip(clip, -1, 1) * 32767) / 32768
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": clip, "sampling_rate": 16_000},
                {"type": "text", "text": "And this one?"},
                {"type": "audio", "path": str(tmp_path / "clip.wav")},
            ],
        }
    ]
    ids = model.tokenizer.encode(model.render_chat(messages))
    assert ids.count(AUDIO_ID) == 2
    expected = model.generate(ids, max_new_tokens=8, temperature=0.0, audio=[clip, pcm])
    reply = model.chat(messages, max_new_tokens=8, temperature=0.0)
    assert reply.answer == model.tokenizer.decode(expected).split("<turn|>")[0].strip()

    args = ["--model", str(mm.path("e2b-audio")), "--audio", str(tmp_path / "clip.wav")]
    args += ["--max-new-tokens", "4", "--temperature", "0"]
    assert main(["generate", "--prompt", "Hear:", *args]) == 0
    assert capsys.readouterr().out.startswith("Hear:")
    assert main(["chat", "--message", "What is it?", *args]) == 0
    assert capsys.readouterr().out.startswith("> What is it?\n")


def test_bad_audio_input(mm, tmp_path):
    model = mm.ours("e2b-audio")
    prompt = [2, 300, AUDIO_ID]
    with pytest.raises(InputError, match="empty"):
        model.generate(prompt, max_new_tokens=1, audio=[np.zeros(0)])
    with pytest.raises(InputError, match="at most 30 s"):
        model.generate(prompt, max_new_tokens=1, audio=[np.zeros(MAX_SAMPLES + 1)])
    with pytest.raises(InputError, match="8000 Hz"):
        model.generate(prompt, max_new_tokens=1, audio=[(np.zeros(8000), 8000)])
    with pytest.raises(InputError, match="1 audio placeholder.*2 audio"):
        model.generate(prompt, max_new_tokens=1, audio=[np.zeros(800), np.zeros(800)])
    (tmp_path / "clip.mp3").write_bytes(b"ID3\x04\x00" + bytes(64))
    with pytest.raises(InputError, match=r"clip\.mp3 is not a PCM WAV file"):
        model.generate(prompt, max_new_tokens=1, audio=[str(tmp_path / "clip.mp3")])
    with pytest.raises(InputError, match="does not exist"):
        model.generate(prompt, max_new_tokens=1, audio=[str(tmp_path / "none.wav")])


def test_model_without_audio_encoder_refuses_audio():
    model = gemma4_ref.load_model()
    with pytest.raises(InputError, match=r"config\.json describes no encoder for audio"):
        model.generate([2, 100], audio=[np.zeros(1600)])


# --------------------------------------------------------------------------------------------
# the unified 12B-like model
# --------------------------------------------------------------------------------------------


def _unified_inputs(model, image, clip):
    processed = process_unified_image(image, MAX_SOFT_TOKENS)
    frames = waveform_frames(clip)
    prompt = [2, *_text(5, 11), IMAGE, *_text(4, 12), AUDIO_ID, *_text(3, 13)]
    ids, *_ = model.expand_prompt(prompt, [processed], [frames])
    pixels, positions = padded([processed], MAX_SOFT_TOKENS)
    types = np.select([ids == IMAGE, ids == VIDEO, ids == AUDIO_ID], [1, 2, 3], 0)
    hf = {
        "pixel_values": torch.from_numpy(pixels),
        "image_position_ids": torch.from_numpy(positions),
        "input_features": torch.from_numpy(frames[None]),
        "input_features_mask": torch.ones(1, len(frames), dtype=torch.bool),
    }
    return prompt, ids, processed, frames, hf, torch.from_numpy(types)[None]


def test_unified_prompt_matches_transformers(mm):
    """Prefill logits within 1e-4 relative (and far from the causal-only mask); 40 greedy
    tokens from the PIL image and the waveform equal to transformers' generate."""
    model, ref = mm.ours("unified"), mm.reference("unified")
    assert model.unified is not None and model.vision is None and model.audio is None
    image, clip = test_image(200, 130, seed=1), test_waveform(0.5, seed=3)
    prompt, ids, processed, frames, hf, types = _unified_inputs(model, image, clip)
    window = model.config.sliding_window
    assert (ids == IMAGE).sum() == processed.num_soft_tokens > window
    assert (ids == AUDIO_ID).sum() == len(frames) == 13
    input_ids = torch.tensor([ids.tolist()])
    with torch.no_grad():
        theirs = ref(input_ids=input_ids, mm_token_type_ids=types, **hf).logits[0].numpy()
        causal = ref(input_ids=input_ids, **hf).logits[0].numpy()
    ours = model.forward(ids, images=[processed], audio=[frames])
    assert _rel(ours, theirs) < REL_TOL
    assert _rel(causal, theirs) > 1e-2  # the block rule is exercised

    tokens, gap = _greedy(ref, ids.tolist(), mm_token_type_ids=types, **hf)
    assert gap > 1e-3 and len(tokens) >= MIN_GREEDY
    new = model.generate(
        prompt,
        max_new_tokens=MAX_NEW_TOKENS,
        temperature=0.0,
        images=[image],
        audio=[clip],
        max_soft_tokens=MAX_SOFT_TOKENS,
    )
    assert new == tokens


# --------------------------------------------------------------------------------------------
# video (frames through the vision tower)
# --------------------------------------------------------------------------------------------


def _frames(n: int) -> np.ndarray:
    """n frames of 120 x 90 pixels, uint8 [n, 90, 120, 3]."""
    return np.stack([np.asarray(test_image(120, 90, seed=20 + i)) for i in range(n)])


def test_frame_sampling_follows_transformers():
    """1 frame per second, at most 60, spread as `default_sample_indices_fn` spreads them."""
    from transformers.video_utils import VideoMetadata, default_sample_indices_fn

    for total, fps in [(50, 24.0), (3, 1.0), (5, 30.0), (7200, 30.0), (90, 2.5)]:
        meta = VideoMetadata(total_num_frames=total, fps=fps)
        ours = sample_frame_indices(total, fps)
        k = min(max(1, int(total / fps)), 60)
        theirs = default_sample_indices_fn(meta, num_frames=k)
        np.testing.assert_array_equal(ours, theirs)
    assert len(sample_frame_indices(7200, 30.0)) == 60


def test_video_expansion_matches_processor_rule(mm):
    """The id-level expansion equals transformers' `replace_video_token` text, tokenized.
    (Its video processor needs torchvision, which is not installed: the frames and metadata
    are given to `replace_video_token` directly.)"""
    from types import SimpleNamespace

    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor
    from transformers.video_utils import VideoMetadata

    model = mm.ours("e2b-audio")
    tok = model.tokenizer
    video = process_video(_frames(3), fps=1.0)
    names = SimpleNamespace(boi_token="<|image>", eoi_token="<image|>", video_token="<|video|>")
    meta = VideoMetadata(total_num_frames=3, fps=1.0, frames_indices=[0, 1, 2])
    inputs = {"num_soft_tokens_per_video": [video.num_soft_tokens], "video_metadata": [meta]}
    text = Gemma4Processor.replace_video_token(names, inputs, 0)
    assert text.startswith("00:00 <|image><|video|>") and " 00:02 <|image>" in text
    expected = tok.encode(f"<bos>Watch:\n{text}\nWhat happens?")
    short = tok.encode("<bos>Watch:\n<|video|>\nWhat happens?")
    ids, *_ = model.expand_prompt(short, videos=[video])
    assert ids.tolist() == expected


def test_video_prompt_matches_transformers(mm):
    """3 frames through `get_video_features`: prefill logits within 1e-4, greedy tokens equal."""
    model, ref = mm.ours("e2b-audio"), mm.reference("e2b-audio")
    frames = _frames(3)
    video = process_video(frames, fps=1.0)
    short = [2, *_text(4, 21), VIDEO, *_text(3, 22)]
    ids, *_ = model.expand_prompt(short, videos=[video])
    assert (ids == VIDEO).sum() == 3 * video.num_soft_tokens
    pixels, positions = padded(video.frames, MAX_SOFT_TOKENS * 9)
    hf = {
        "pixel_values_videos": torch.from_numpy(pixels),
        "video_position_ids": torch.from_numpy(positions),
        "num_frames_per_video": torch.tensor([3]),
    }
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor([ids.tolist()]), **hf).logits[0].numpy()
    assert _rel(model.forward(ids, videos=[video]), theirs) < REL_TOL
    tokens, gap = _greedy(ref, ids.tolist(), **hf)
    assert gap > 1e-3 and len(tokens) >= MIN_GREEDY
    new = model.generate(
        short, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, videos=[(frames, 1.0)]
    )
    assert new == tokens
