"""The audio front end and the audio tower, live against transformers 5.24.

Both sides get the same waveform, made here by NumPy (a chirp plus noise). Tolerances:

* log-mel features: `|ours - theirs| <= 1e-5 * max(1, |theirs|)` elementwise (the same float32
  FFT and float64 filtering, so in practice they agree bit for bit); masks, frame counts and
  soft-token counts exactly equal.
* the tower's output and the soft tokens: `max |ours - theirs| <= 1e-4 * max |theirs|`, fp32
  and bf16 checkpoints (measured: about 2e-6).
* each Numba kernel against its NumPy reference, and each reference against torch: a relative
  1e-5 (they sum in other orders).
* placeholder expansion: the same token ids as `Gemma4Processor`.
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from audio_models import AUDIO_CHECKPOINTS, AudioStore, reference_audio, test_waveform
from tiny_models import TOKENIZER_DIR

from gemma4_ref.audio import (
    AudioConfig,
    AudioTower,
    audio_config_from_dict,
    causal_depthwise_conv,
    conv2d_stride2_ref,
    conv_block,
    conv_block_ref,
    local_attention,
    local_attention_ref,
)
from gemma4_ref.audio_features import (
    AUDIO_END,
    AUDIO_SOFT,
    AUDIO_START,
    MAX_SAMPLES,
    log_mel_features,
    mel_filter_bank,
    num_audio_soft_tokens,
    periodic_hann,
)
from gemma4_ref.errors import ConfigError, InputError
from gemma4_ref.multimodal import expand_placeholders, wrapped
from gemma4_ref.norm import layer_norm

transformers = pytest.importorskip("transformers")

FEATURE_RTOL = 1e-5
TOKEN_RTOL = 1e-4
KERNEL_RTOL = 1e-5
CLIP_SECONDS = (3.1, 0.37, 161 / 16_000)  # 78 tokens (7 attention blocks), 10 tokens, 1 token

rng = np.random.default_rng(0)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def extractor():
    return transformers.Gemma4AudioFeatureExtractor()


@pytest.fixture(scope="module")
def audio_store(tmp_path_factory) -> AudioStore:
    return AudioStore(tmp_path_factory.mktemp("audio_gemma4"))


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    """`Gemma4Processor` over the project tokenizer, with the Gemma 4 media tokens added under
    their real spellings (the tiny tokenizer gives them ids 4096 and up)."""
    folder = tmp_path_factory.mktemp("audio_processor")
    for item in TOKENIZER_DIR.iterdir():
        shutil.copy2(item, folder / item.name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["extra_special_tokens"] = {
        "boi_token": "<|image>",
        "eoi_token": "<image|>",
        "image_token": "<|image|>",
        "boa_token": AUDIO_START,
        "eoa_token": AUDIO_END,
        "audio_token": AUDIO_SOFT,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    # The video processor needs torchvision, which the test environment lacks; audio never
    # touches it, so the processor is built without one (skipping only the class check).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transformers.Gemma4Processor, "check_argument_for_proper_class", lambda *a: None)
        return transformers.Gemma4Processor(
            feature_extractor=transformers.Gemma4AudioFeatureExtractor(),
            image_processor=transformers.Gemma4ImageProcessorPil(),
            tokenizer=tokenizer,
            video_processor=None,
        )


# --- the feature extractor ----------------------------------------------------------------------


def test_window_and_filter_bank_match_transformers(extractor):
    assert np.array_equal(periodic_hann(320), extractor.window)
    np.testing.assert_allclose(mel_filter_bank(), extractor.mel_filters, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_samples", [161, 1000, 12_345, 48_037, 160_000, MAX_SAMPLES])
def test_features_match_transformers(extractor, num_samples, dtype):
    wave = test_waveform(num_samples / 16_000, seed=num_samples).astype(dtype)
    theirs = extractor([wave], return_tensors="np")
    ours = log_mel_features(wave)
    ref, ref_mask = theirs["input_features"][0], theirs["input_features_mask"][0]
    assert ours.features.dtype == np.float32 and ours.features.shape == ref.shape
    assert np.array_equal(ours.mask, ref_mask)
    assert (np.abs(ours.features - ref) <= FEATURE_RTOL * np.maximum(1.0, np.abs(ref))).all()
    assert ours.num_soft_tokens == num_audio_soft_tokens(num_samples)


def test_token_counts_match_processor(processor):
    lengths = [*range(161, 4000, 37), 16_000, 479_999, MAX_SAMPLES]
    for n in lengths:
        assert num_audio_soft_tokens(n) == processor._compute_audio_num_tokens(np.zeros(n), 16_000)
    assert num_audio_soft_tokens(MAX_SAMPLES) == 750  # 40 ms per token


@pytest.mark.parametrize(
    "wave, rate, message",
    [
        (np.zeros(16_000, np.float32), 44_100, "Resample"),
        (np.zeros(16_000, np.float32), 8_000, "16000 Hz"),
        (np.zeros(0, np.float32), 16_000, "empty"),
        (np.zeros(MAX_SAMPLES + 1, np.float32), 16_000, "at most 30 s"),
        (np.zeros((2, 16_000), np.float32), 16_000, "mono"),
        (np.zeros(16_000, np.int16), 16_000, "32768"),
        (np.full(16_000, np.nan, np.float32), 16_000, "NaN"),
        (np.zeros(100, np.float32), 16_000, "161 samples"),
    ],
)
def test_bad_audio_is_rejected(wave, rate, message):
    with pytest.raises(InputError, match=message):
        log_mel_features(wave, rate)


# --- placeholder expansion ----------------------------------------------------------------------


def test_placeholder_expansion_matches_processor(processor):
    clips = [test_waveform(1.3, seed=5).astype(np.float32), test_waveform(0.2, seed=6)]
    text = f"Compare {AUDIO_SOFT} with{AUDIO_SOFT}, please."
    theirs = processor(text=[text], audio=clips, return_tensors="np")["input_ids"][0].tolist()

    counts = [log_mel_features(c).num_soft_tokens for c in clips]
    assert counts == [33, 5]
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids([AUDIO_START, AUDIO_SOFT, AUDIO_END])
    runs = [wrapped(ids[0], ids[1], n, ids[2]) for n in counts]
    ours = expand_placeholders(tok.encode(text, add_special_tokens=False), runs, ids[1], "audio")
    assert ours.tolist() == theirs


def test_placeholder_count_must_match_clips():
    with pytest.raises(InputError, match="1 audio placeholder"):
        expand_placeholders([5, 9, 5], [[8, 9, 10], [8, 9, 9, 10]], 9, "audio")


def test_layer_norm_matches_torch():
    """norm.layer_norm (NumPy) against torch's `F.layer_norm`, with and without a bias added."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 5, 48)).astype(np.float32) * 3 + 1
    w, b = rng.uniform(0.5, 1.5, 48).astype(np.float32), rng.standard_normal(48).astype(np.float32)
    for eps in (1e-6, 1e-5):
        theirs = F.layer_norm(torch.from_numpy(x), (48,), torch.from_numpy(w), None, eps)
        assert rel(layer_norm(x, w, eps), theirs.numpy()) < 1e-6
        theirs = F.layer_norm(torch.from_numpy(x), (48,), *map(torch.from_numpy, (w, b)), eps)
        assert rel(layer_norm(x, w, eps) + b, theirs.numpy()) < 1e-6


# --- kernels --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 128, 1, 8), (7, 128, 1, 16), (40, 64, 12, 5), (9, 5, 3, 4)])
def test_conv_block_kernel_and_reference(shape):
    t, f, c_in, c_out = shape
    x = rng.standard_normal((t, f, c_in)).astype(np.float32)
    w = rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32)
    norm = rng.uniform(0.5, 1.5, c_out).astype(np.float32)
    conv = conv2d_stride2_ref(x, w)
    xt = torch.from_numpy(x).permute(2, 0, 1)[None]
    torch_conv = F.conv2d(xt, torch.from_numpy(w), None, 2, 1)[0].permute(1, 2, 0)
    assert rel(conv, torch_conv.numpy()) < KERNEL_RTOL
    torch_norm = F.layer_norm(torch_conv, (c_out,), torch.from_numpy(norm), None, 1e-6)
    assert rel(layer_norm(conv, norm, 1e-6), torch_norm.numpy()) < KERNEL_RTOL
    ref = conv_block_ref(x, w, norm, 1e-6)
    ours = conv_block(x, np.ascontiguousarray(w.transpose(2, 3, 1, 0)), norm, 1e-6)
    assert ours.shape == ref.shape and rel(ours, ref) < KERNEL_RTOL


def test_causal_depthwise_conv_matches_torch():
    x = rng.standard_normal((30, 16)).astype(np.float32)
    w = rng.standard_normal((16, 5)).astype(np.float32)
    xt = F.pad(torch.from_numpy(x.T)[None], (4, 0))
    ref = F.conv1d(xt, torch.from_numpy(w)[:, None], groups=16)[0].T.numpy()
    assert rel(causal_depthwise_conv(x, w), ref) < KERNEL_RTOL


@pytest.mark.parametrize(
    "t_len, left, right, n_rel",
    [(50, 13, 0, 13), (3, 13, 0, 13), (40, 8, 3, 7), (25, 2, 0, 2), (30, 6, 1, 9)],
)
def test_local_attention_kernel_matches_reference(t_len, left, right, n_rel):
    q, k, v = (rng.standard_normal((t_len, 3, 8)).astype(np.float32) for _ in range(3))
    table = rng.standard_normal((n_rel, 3, 8)).astype(np.float32)
    ref = local_attention_ref(q, k, v, table, left, right, 5.0)
    assert rel(local_attention(q, k, v, table, left, right, 5.0), ref) < KERNEL_RTOL


# --- the tower, live ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [test_waveform(s, seed=i) for i, s in enumerate(CLIP_SECONDS)]


@pytest.mark.parametrize("variant, dtype", AUDIO_CHECKPOINTS)
def test_soft_tokens_match_transformers(audio_store, clips, variant, dtype):
    path = audio_store.path(variant, dtype)
    # transformers pads the clips of a batch to the longest: the short ones see a lot of padding
    # there and none here, which checks that padding never reaches a valid token.
    theirs = reference_audio(audio_store.reference_model(variant, dtype), clips)
    tower = AudioTower.load(path)
    for clip, ref in zip(clips, theirs, strict=True):
        feats = log_mel_features(clip)
        t = feats.features.shape[0]
        assert np.array_equal(feats.mask, ref["mask"][:t]) and not ref["mask"][t:].any()
        assert rel(feats.features, ref["features"][:t]) < FEATURE_RTOL
        hidden = tower.encode(feats.features, feats.mask)
        tokens = tower(feats.features, feats.mask)
        assert hidden.shape == ref["hidden"].shape
        assert tokens.shape == ref["tokens"].shape == (feats.num_soft_tokens, 80)
        assert rel(hidden, ref["hidden"]) < TOKEN_RTOL
        assert rel(tokens, ref["tokens"]) < TOKEN_RTOL


def _clipped_fractions(model, clip: np.ndarray) -> dict[str, tuple[float, float]]:
    """For each kind of clipped linear in transformers' tower: the fraction of its inputs and of
    its (pre-clamp) outputs that fall outside the checkpoint's bounds."""
    from transformers.models.gemma4.modeling_gemma4 import Gemma4ClippableLinear

    counts: dict[str, list[int]] = {}
    hooks = []
    for name, module in model.model.audio_tower.named_modules():
        if not isinstance(module, Gemma4ClippableLinear):
            continue
        kind = name.rsplit(".", 1)[-1]
        c = counts.setdefault(kind, [0, 0, 0, 0])  # inputs clipped, of all; outputs, of all

        def before(mod, args, c=c):
            x = args[0]
            c[0] += int(((x < mod.input_min) | (x > mod.input_max)).sum())
            c[1] += x.numel()

        def after(lin, args, y, c=c, mod=module):
            c[2] += int(((y < mod.output_min) | (y > mod.output_max)).sum())
            c[3] += y.numel()

        hooks += [
            module.register_forward_pre_hook(before),
            module.linear.register_forward_hook(after),
        ]
    reference_audio(model, [clip])
    for h in hooks:
        h.remove()
    return {k: (c[0] / c[1], c[2] / c[3]) for k, c in counts.items()}


def test_the_toy_clips_bounds_and_caps_are_active(audio_store, clips):
    """The parity above means something only if clipping and capping happen in it."""
    model = audio_store.reference_model("e2b", "fp32")
    fractions = _clipped_fractions(model, clips[0])
    assert set(fractions) == {
        "q_proj", "k_proj", "v_proj", "post", "ffw_layer_1", "ffw_layer_2",
        "linear_start", "linear_end",
    }  # fmt: skip
    # Measured: 0.2% to 15% of each layer's inputs or outputs are clipped (not the inputs of
    # `post`: averages of clipped values rarely leave its bounds).
    for kind, (inputs, outputs) in fractions.items():
        assert max(inputs, outputs) > 0.01 and outputs > 0.0, (kind, inputs, outputs)

    base = reference_audio(model, [clips[0]])[0]["tokens"]
    uncapped = copy.deepcopy(model)
    for layer in uncapped.model.audio_tower.layers:
        layer.self_attn.softcap.fill_(1e6)
    assert rel(reference_audio(uncapped, [clips[0]])[0]["tokens"], base) > 1e-2
    unclamped = copy.deepcopy(model)
    for module in unclamped.model.audio_tower.modules():
        if hasattr(module, "gradient_clipping"):
            module.gradient_clipping = 1e10
    assert rel(reference_audio(unclamped, [clips[0]])[0]["tokens"], base) > 1e-2


def test_tower_rejects_bad_features(audio_store):
    tower = AudioTower.load(audio_store.path("odd", "fp32"))
    feats = log_mel_features(test_waveform(0.5))
    holes = feats.mask.copy()
    holes[2] = False
    with pytest.raises(InputError, match="run of valid frames"):
        tower(feats.features, holes)
    with pytest.raises(InputError, match="no frame"):
        tower(feats.features, np.zeros_like(feats.mask))
    with pytest.raises(InputError, match=r"\[T, 128\]"):
        tower(feats.features[:, :64], feats.mask)


# --- configuration --------------------------------------------------------------------------------


def test_config_reads_the_checkpoint(audio_store):
    path = audio_store.path("odd", "fp32")
    raw = json.loads((path / "config.json").read_text())
    c = audio_config_from_dict(raw)
    assert (c.attention_chunk_size, c.attention_context_left, c.attention_context_right) == (
        5,
        8,
        3,
    )
    assert (c.use_clipped_linears, c.rms_norm_eps, c.text_hidden_size) == (False, 1e-3, 80)
    assert (c.start_token_id, c.soft_token_id, c.end_token_id) == (256_000, 258_881, 258_883)
    assert AudioConfig().num_relative_positions == 13  # the released geometry


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"model_type": "gemma4", "audio_config": None}, "no audio tower"),
        ({"audio_config": {"model_type": "gemma4_unified_audio"}}, "gemma4_audio"),
        ({"audio_config": {"hidden_act": "gelu"}}, "hidden_act"),
        ({"audio_config": {"subsampling_conv_channels": [64, 32]}}, "128 mel bins"),
        ({"audio_config": {"hidden_size": 100, "num_attention_heads": 8}}, "multiple"),
        ({"audio_config": {"attention_chunk_size": "12"}}, "attention_chunk_size"),
    ],
)
def test_bad_audio_config_is_rejected(raw, message):
    with pytest.raises(ConfigError, match=message):
        audio_config_from_dict(raw)
