"""The audio front end: a 16 kHz waveform becomes log-mel frames and a run of prompt tokens.

This is transformers 5.24 `Gemma4AudioFeatureExtractor` (the Universal Speech Model front end,
arXiv:2303.01037) with its defaults, for one clip::

    waveform, 16 kHz, at most 30 s
      -> zeros appended up to a multiple of 128 samples (the extractor's `pad_to_multiple_of`)
      -> 160 zeros in front ("semicausal": frame i is centred on sample 160 i)
      -> 320-sample frames every 160 samples (each the first 320 of a 321-sample window)
      -> x periodic Hann(320) -> |rfft(frame, 512)|         (the magnitude, not the power)
      -> x 128 triangular HTK-mel filters over 0-8000 Hz     (no area normalisation)
      -> log(mel + 0.001)
      -> a frame is valid only if its whole 321-sample window is real audio; others are zeroed

Every clip then becomes `<|audio>` + n x `<|audio|>` + `<audio|>` in the prompt, where n is the
number of valid frames left after the tower's two stride-2 convolutions, 40 ms of audio per
token (`Gemma4Processor.replace_audio_token`, `multimodal.expand_placeholders`); the tower's n
output rows replace the n placeholders.

Clips reach the model as arrays of samples, `(samples, sampling_rate)` pairs or WAV files
(:func:`load_waveform`; the standard library's `wave` module reads them).
"""

from __future__ import annotations

import os
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

SAMPLING_RATE = 16_000
MAX_SAMPLES = 30 * SAMPLING_RATE  # the extractor's max_length: 480 000 samples
FRAME_LENGTH = 320  # 20 ms
HOP_LENGTH = 160  # 10 ms
FFT_LENGTH = 512  # the next power of two above the frame
NUM_MELS = 128
MIN_FREQUENCY = 0.0
MAX_FREQUENCY = 8000.0
MEL_FLOOR = 1e-3
PAD_MULTIPLE = 128  # the extractor pads every clip to a multiple of this many samples

# The window each frame is read from is one sample longer than the frame: the extractor cuts
# 321 samples so that a pre-emphasis filter could look one sample back, and with pre-emphasis
# off (Gemma 4's setting) it simply drops the last one. Only the validity mask still sees it.
_WINDOW_SPAN = FRAME_LENGTH + 1
_LEFT_PAD = FRAME_LENGTH // 2

#: The three prompt tokens of an audio clip, as the tokenizer spells them.
AUDIO_START = "<|audio>"
AUDIO_SOFT = "<|audio|>"
AUDIO_END = "<audio|>"


# --- reading clips ---------------------------------------------------------------------------


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A PCM WAV file's samples in [-1, 1], channels averaged to mono, and its sampling rate.

    # -> [N] float64, rate
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"audio file {path} does not exist.")
    try:
        with wave.open(str(path), "rb") as f:
            width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
            raw = f.readframes(f.getnframes())
    except (wave.Error, EOFError) as e:
        raise InputError(
            f"{path} is not a PCM WAV file ({e}); this package reads WAV only. Convert it "
            "first, e.g. `ffmpeg -i in.mp3 -ar 16000 -ac 1 out.wav`, or pass the samples as "
            "an array."
        ) from None
    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        x = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width == 3:  # 24-bit: widen each little-endian triple into the top of an int32
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8) / float(1 << 23)
    elif width in (2, 4):
        x = np.frombuffer(raw, f"<i{width}").astype(np.float64) / float(1 << (8 * width - 1))
    else:
        raise InputError(f"{path}: {8 * width}-bit samples are not supported (8/16/24/32-bit PCM).")
    return x.reshape(-1, channels).mean(axis=1), rate


def load_waveform(item: Any, name: str = "audio") -> tuple[np.ndarray, int]:
    """One clip as (samples, sampling rate) from what a caller may pass: a 1-D array of float
    samples (taken to be 16 kHz), a `(samples, sampling_rate)` pair, or a WAV file path."""
    if isinstance(item, (str, os.PathLike)):
        return read_wav(item)
    if isinstance(item, tuple) and len(item) == 2:
        return np.asarray(item[0]), int(item[1])
    if isinstance(item, np.ndarray):
        return item, SAMPLING_RATE
    raise InputError(
        f"{name} is a {type(item).__name__}; pass a 1-D float array of 16 kHz samples, a "
        "(samples, sampling_rate) pair or a WAV file path."
    )


# --- the spectrogram --------------------------------------------------------------------------


def periodic_hann(length: int) -> np.ndarray:
    """The periodic Hann window, `0.5 - 0.5 cos(2 pi n / length)`.  # -> [length] f32

    Periodic (denominator `length`, not `length - 1`) as transformers' `window_function` makes
    it; the extractor keeps it in float32, so the frames are windowed in float32.
    """
    n = np.arange(length, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)).astype(np.float32)


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """The HTK mel scale, `2595 log10(1 + f / 700)`.  # [...] -> [...]"""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """The inverse of :func:`hz_to_mel`.  # [...] -> [...]"""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filter_bank(
    num_bins: int = FFT_LENGTH // 2 + 1,
    num_mels: int = NUM_MELS,
    min_hz: float = MIN_FREQUENCY,
    max_hz: float = MAX_FREQUENCY,
    sampling_rate: int = SAMPLING_RATE,
) -> np.ndarray:
    """Triangular mel filters over the rfft bins, in float64.  # -> [num_bins, num_mels]

    transformers' `mel_filter_bank(norm=None, mel_scale="htk")`: `num_mels + 2` edges evenly
    spaced in mel, and filter m rises linearly from edge m to edge m+1 and falls to edge m+2,
    with its slopes measured in Hz. The filters are not area-normalised, so the top ones (the
    widest) weigh the most.
    """
    edges = mel_to_hz(np.linspace(hz_to_mel(min_hz), hz_to_mel(max_hz), num_mels + 2))
    bins = np.linspace(0.0, sampling_rate // 2, num_bins)  # [num_bins] Hz
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]  # [num_mels] each
    rising = (bins[:, None] - lo) / (mid - lo)
    falling = (hi - bins[:, None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(rising, falling))


_WINDOW = periodic_hann(FRAME_LENGTH)
_MEL_FILTERS = mel_filter_bank()


@dataclass(frozen=True)
class AudioFeatures:
    """One clip's log-mel frames and which of them hold real audio.

    `features` is [T, 128] float32 with invalid frames zeroed; `mask` is [T] bool and always a
    run of True followed by a run of False (the padding is at the end).
    """

    features: np.ndarray
    mask: np.ndarray

    @property
    def num_soft_tokens(self) -> int:
        """How many audio tokens the tower makes of these frames."""
        return soft_tokens_from_frames(int(self.mask.sum()))


def _checked_waveform(waveform: np.ndarray, sampling_rate: int) -> np.ndarray:
    """The waveform as float32 samples, or an InputError saying what to fix.  # [N] -> [N] f32"""
    if sampling_rate != SAMPLING_RATE:
        raise InputError(
            f"the audio is sampled at {sampling_rate} Hz, but Gemma 4's audio front end needs "
            f"{SAMPLING_RATE} Hz. Resample it first (for example "
            f"scipy.signal.resample_poly(x, {SAMPLING_RATE}, {sampling_rate}) or "
            f"librosa.resample(x, orig_sr={sampling_rate}, target_sr={SAMPLING_RATE}))."
        )
    x = np.asarray(waveform)
    if x.ndim != 1:
        raise InputError(
            f"the audio must be one mono channel, a 1-D array of samples; got shape "
            f"{list(x.shape)}. Mix the channels down first (for example x.mean(axis=0))."
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(
            f"the audio samples are {x.dtype}; pass floating-point samples in [-1, 1] "
            "(16-bit PCM: divide by 32768)."
        )
    if x.size == 0:
        raise InputError("the audio clip is empty (0 samples).")
    if x.size > MAX_SAMPLES:
        raise InputError(
            f"the audio clip is {x.size / SAMPLING_RATE:.2f} s long ({x.size} samples); Gemma 4 "
            f"takes at most {MAX_SAMPLES // SAMPLING_RATE} s ({MAX_SAMPLES} samples) per clip. "
            "Split it into clips of 30 s or less."
        )
    if x.size < _WINDOW_SPAN - _LEFT_PAD:
        raise InputError(
            f"the audio clip is {x.size} samples long; the shortest clip that fills one "
            f"analysis window is {_WINDOW_SPAN - _LEFT_PAD} samples (10 ms at 16 kHz)."
        )
    if not np.isfinite(x).all():
        raise InputError("the audio holds NaN or infinite samples.")
    # The extractor turns float64 into float32 before framing; everything up to the FFT runs
    # in float32, like it.
    return x.astype(np.float32)


def log_mel_features(waveform: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> AudioFeatures:
    """The log-mel spectrogram of one clip, as `Gemma4AudioFeatureExtractor` computes it.

    # waveform [N] (16 kHz, float) -> features [T, 128] f32, mask [T] bool

    T counts the frames of the clip padded to a multiple of 128 samples, as the extractor pads
    it; frames that reach into that padding are invalid (their features are 0). Where the
    extractor would silently cut a clip at 30 s, or make no frame of one under 10 ms, this
    raises an InputError instead, as it does for another sampling rate.
    """
    x = _checked_waveform(waveform, sampling_rate)
    n = x.size
    padded = np.zeros(_LEFT_PAD + -(-n // PAD_MULTIPLE) * PAD_MULTIPLE, np.float32)
    padded[_LEFT_PAD : _LEFT_PAD + n] = x
    num_frames = (padded.size - _WINDOW_SPAN) // HOP_LENGTH + 1
    starts = np.arange(num_frames) * HOP_LENGTH
    frames = padded[starts[:, None] + np.arange(FRAME_LENGTH)]  # [T, 320]

    # Like the extractor: float32 frames and a float32 FFT (NumPy 2 keeps the precision), then
    # the magnitudes meet the float64 filters, so the filtering and the log run in float64.
    magnitude = np.abs(np.fft.rfft(frames * _WINDOW, n=FFT_LENGTH, axis=-1))  # [T, 257] f32
    log_mel = np.log(magnitude @ _MEL_FILTERS + MEL_FLOOR).astype(np.float32)  # [T, 128]

    # A frame counts only if the last sample of its 321-sample window is real audio.
    mask = starts + _WINDOW_SPAN - 1 < _LEFT_PAD + n
    return AudioFeatures(log_mel * mask[:, None], mask)


# --- how many tokens a clip makes, and how the prompt spells them ----------------------------


def soft_tokens_from_frames(num_valid_frames: int) -> int:
    """Valid mel frames -> audio soft tokens: two stride-2 convolutions each keep every other
    frame, counting from the first (`ceil(ceil(n / 2) / 2)`)."""
    n = num_valid_frames
    for _ in range(2):
        n = (n + 1) // 2
    return n


def num_audio_soft_tokens(num_samples: int) -> int:
    """How many audio soft tokens a clip of `num_samples` samples at 16 kHz becomes.

    The processor's `_compute_audio_num_tokens`: the valid frames are those whose 321-sample
    window (after the 160-sample left pad) ends inside the clip. A 30 s clip makes 750.
    """
    if num_samples < 0 or num_samples > MAX_SAMPLES:
        raise InputError(f"an audio clip has 0 to {MAX_SAMPLES} samples, not {num_samples}.")
    frames = max(0, (num_samples + _LEFT_PAD - _WINDOW_SPAN) // HOP_LENGTH + 1)
    return soft_tokens_from_frames(frames)
