"""Video: a few frames, each an image with a timestamp in front.

Gemma 4 has no video encoder of its own. transformers 5.24 (`Gemma4VideoProcessor`,
`Gemma4Processor.replace_video_token`, `Gemma4Model.get_video_features`) samples frames,
processes each one exactly like an image (`image.py`, at the video budget of 70 soft tokens),
runs them through the vision tower (or the unified 12B's projection) and writes each
`<|video|>` of the prompt as the frames in order, separated by spaces::

    "00:00 <|image>" n x "<|video|>" "<image|> 00:01 <|image>" n x "<|video|>" "<image|> ..."

with `mm:ss` the frame's time in the clip (index / fps, rounded down to the second). The frames
are sampled as `default_sample_indices_fn` does for a target rate: `k = max(1, int(F / fps *
rate))` frames at indices `i * F // k`. This module samples at 1 frame per second and keeps at
most 60 frames; transformers' own default, when no rate is asked for, is 32 frames spread
evenly. Each frame's `<|video|>` run is its own image block for the attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError
from .image import ProcessedImage, process_image
from .unified import process_unified_image

SAMPLE_FPS = 1.0
MAX_FRAMES = 60
VIDEO_SOFT_TOKENS = 70  # Gemma4VideoProcessor.max_soft_tokens
DEFAULT_FPS = 24.0  # what transformers assumes for frames that come without a rate


@dataclass(frozen=True)
class ProcessedVideo:
    """The sampled frames of one video, processed, and their `mm:ss` timestamps."""

    frames: list[ProcessedImage]
    timestamps: list[str]

    @property
    def num_soft_tokens(self) -> int:
        """Soft tokens per frame (every frame has the size of the first)."""
        return self.frames[0].num_soft_tokens


def sample_frame_indices(
    total: int, fps: float, rate: float = SAMPLE_FPS, max_frames: int = MAX_FRAMES
) -> np.ndarray:
    """Which frames to keep: `rate` per second of a `total`-frame clip at `fps`, at most
    `max_frames`, spread as `default_sample_indices_fn` spreads them.  # -> [k] int"""
    k = min(max(1, int(total / fps * rate)), max_frames, total)
    return np.arange(k) * total // k


def timestamp(seconds: float) -> str:
    """`mm:ss` as `replace_video_token` writes it."""
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


def process_video(
    video: Sequence[Any] | np.ndarray,
    fps: float | None = None,
    max_soft_tokens: int = VIDEO_SOFT_TOKENS,
    name: str = "video",
    unified: bool = False,
) -> ProcessedVideo:
    """Sample and process one video: a list of PIL images or a uint8 [F, H, W, 3] array
    (`fps` its frame rate; transformers assumes 24 without one). `unified`: cut the frames
    into the 12B's 48-px patches (`unified.process_unified_image`)."""
    frames = list(video) if not isinstance(video, np.ndarray) else video
    if isinstance(video, np.ndarray) and (video.ndim != 4 or video.shape[-1] != 3):
        raise InputError(
            f"{name} has shape {list(video.shape)}; pass uint8 frames [F, H, W, 3] or a list "
            "of PIL images."
        )
    if len(frames) == 0:
        raise InputError(f"{name} has no frames.")
    fps = DEFAULT_FPS if fps is None else float(fps)
    if not fps > 0:
        raise InputError(f"{name}: fps must be positive, got {fps}.")
    picked = sample_frame_indices(len(frames), fps)
    process = process_unified_image if unified else process_image
    processed = [process(frames[i], max_soft_tokens, f"{name} frame {i}") for i in picked]
    if len({p.num_soft_tokens for p in processed}) != 1:
        raise InputError(f"{name}: the frames differ in size; every frame must be the same size.")
    return ProcessedVideo(processed, [timestamp(i / fps) for i in picked])
