"""The image processor: a picture in, 16 x 16 patches and their grid positions out.

Gemma 4 sees an image at a *token budget* chosen per call (transformers 5.24,
`Gemma4ImageProcessorPil` and `get_aspect_ratio_preserving_size`):

1. **Resize**, keeping the aspect ratio, to the largest size whose sides are multiples of
   48 (= 3 x 3 pooling x 16-pixel patches) and whose 16-pixel patch count stays within
   `9 * max_soft_tokens`; pillow's bicubic filter (which antialiases when shrinking).
   Small images are scaled *up* to the budget.
2. **Rescale** to [0, 1] (x / 255; no mean/std normalisation: the tower maps to [-1, 1] itself).
3. **Patchify** row-major into `[N, 16 * 16 * 3]`, each patch in (row, column, channel) order,
   with grid positions `(x, y) = (column, row)`.

The vision tower pools each 3 x 3 block of patches into one soft token, so an image of
H' x W' pixels becomes `(H' / 48) * (W' / 48)` soft tokens, at most `max_soft_tokens`
(70, 140, 280 -- the default --, 560 or 1120). In the prompt it is written as `<|image>`,
that many `<|image|>` placeholders, and `<image|>`.

transformers pads every image to `9 * max_soft_tokens` patches (pixels 0, position (-1, -1));
this processor does not, as padding never changes a real patch's result.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import load_json
from .errors import InputError

SUPPORTED_SOFT_TOKENS = (70, 140, 280, 560, 1120)
DEFAULT_SOFT_TOKENS = 280
PATCH_SIZE = 16
POOLING = 3

# Modes pillow converts to 8-bit RGB as transformers' `convert_to_rgb` does, with no loss it
# would hide: grey, palette (without transparency), CMYK, YCbCr, LAB, HSV.
_CONVERTIBLE = ("RGB", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "1")


@dataclass(frozen=True)
class ProcessedImage:
    """One image ready for the vision tower."""

    patches: np.ndarray  # [N, 3 * p * p] float32 in [0, 1]
    positions: np.ndarray  # [N, 2] int64 (x = column, y = row)
    size: tuple[int, int]  # (height, width) after the resize
    num_soft_tokens: int  # N / 9: the <|image|> placeholders it fills
    name: str = "image"  # where it came from, for error messages


def target_size(
    height: int, width: int, max_soft_tokens: int, patch: int = PATCH_SIZE, pool: int = POOLING
) -> tuple[int, int]:
    """The resized (height, width) of an image: transformers' `get_aspect_ratio_preserving_size`.

    Scale the area to the patch budget, then round each side down to a multiple of
    `pool * patch`. A side that rounds to 0 (a very elongated image) becomes one block, and the
    other side `floor(ratio)` blocks, capped at the whole budget in one row.
    """
    max_patches = max_soft_tokens * pool * pool
    budget_px = max_patches * patch * patch
    scale = math.sqrt(budget_px / (height * width))
    block = pool * patch
    h = int(math.floor(scale * height / block)) * block
    w = int(math.floor(scale * width / block)) * block
    longest = (max_patches // (pool * pool)) * block
    if h == 0 and w == 0:
        raise InputError(f"an image of {height} x {width} pixels cannot be resized to any block.")
    if h == 0:
        h, w = block, min(int(math.floor(width / height)) * block, longest)
    elif w == 0:
        w, h = block, min(int(math.floor(height / width)) * block, longest)
    return h, w


def load_pixels(image: Any, name: str | None = None) -> tuple[np.ndarray, str]:
    """Any accepted image as 8-bit RGB pixels, and a name for it in messages.

    Accepts a PIL image, a path to an image file, or a uint8 array `[H, W, 3]` (or `[H, W]`
    grey). Transparent and 16-bit images are refused rather than silently flattened.
    # -> [H, W, 3] uint8
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        name = name or str(path)
        if not path.is_file():
            raise InputError(f"image file {path} does not exist; check the path.")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise InputError(
                f"image file {path} is corrupt or not an image pillow can read ({e}). "
                "Re-export it as PNG or JPEG."
            ) from e
    if isinstance(image, Image.Image):
        name = name or "image"
        return _pil_to_rgb(image, name), name
    if isinstance(image, np.ndarray):
        name = name or "image array"
        return _array_to_rgb(image, name), name
    raise InputError(
        f"{name or 'image'}: expected a PIL image, a file path or a uint8 [H, W, 3] array, "
        f"got {type(image).__name__}."
    )


def _pil_to_rgb(image: Any, name: str) -> np.ndarray:
    """8-bit RGB via pillow's `convert`, as transformers' `convert_to_rgb`.  # -> [H, W, 3]"""
    mode = image.mode
    transparent = "A" in image.getbands() or "transparency" in image.info
    if transparent:
        raise InputError(
            f"{name} has an alpha channel (mode {mode}); the model sees RGB only. Flatten it "
            "first, e.g. onto white as transformers does: Image.alpha_composite(Image.new("
            "'RGBA', im.size, 'white'), im.convert('RGBA')).convert('RGB')."
        )
    if mode not in _CONVERTIBLE:
        raise InputError(
            f"{name} has {mode!r} pixels (16-bit or floating point); the model takes 8-bit RGB. "
            "Convert it to 8 bits per channel first (e.g. scale to 0..255 and "
            "Image.fromarray(arr.astype('uint8')))."
        )
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _array_to_rgb(arr: np.ndarray, name: str) -> np.ndarray:
    """Grey is repeated to 3 channels, as transformers does.  # [H, W(, 1 or 3)] -> [H, W, 3]"""
    if arr.dtype != np.uint8:
        raise InputError(
            f"{name} has dtype {arr.dtype}; pass 8-bit pixels (uint8, 0..255). A 16-bit or "
            "float image must be scaled to 0..255 and cast to uint8 first."
        )
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        channels = arr.shape[2] if arr.ndim == 3 else None
        hint = " (RGBA: drop or composite the alpha channel)" if channels == 4 else ""
        raise InputError(
            f"{name} has shape {list(arr.shape)}; pass [H, W, 3] RGB or [H, W] grey{hint}."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name} is empty ({arr.shape[0]} x {arr.shape[1]} pixels).")
    return np.ascontiguousarray(np.broadcast_to(arr, (*arr.shape[:2], 3)))


def patchify(pixels: np.ndarray, patch: int = PATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Cut an image into patches, row-major, each flattened as (row, column, channel).

    # [H, W, 3] -> patches [H/p * W/p, p*p*3], positions [H/p * W/p, 2] (x, y)
    """
    H, W, C = pixels.shape
    ph, pw = H // patch, W // patch
    blocks = pixels.reshape(ph, patch, pw, patch, C).transpose(0, 2, 1, 3, 4)
    ys, xs = np.divmod(np.arange(ph * pw, dtype=np.int64), pw)
    return blocks.reshape(ph * pw, patch * patch * C), np.stack([xs, ys], axis=-1)


def process_image(
    image: Any, max_soft_tokens: int = DEFAULT_SOFT_TOKENS, name: str | None = None
) -> ProcessedImage:
    """Resize, rescale and patchify one image for the vision tower (see the module docstring).

    `image` is a PIL image, a file path, or a uint8 `[H, W, 3]` array.
    """
    if max_soft_tokens not in SUPPORTED_SOFT_TOKENS:
        raise InputError(
            f"max_soft_tokens={max_soft_tokens} is not supported; Gemma 4 was trained with "
            f"{', '.join(map(str, SUPPORTED_SOFT_TOKENS))} soft tokens per image."
        )
    from PIL import Image

    pixels, name = load_pixels(image, name)
    height, width = pixels.shape[:2]
    h, w = target_size(height, width, max_soft_tokens)
    if (h, w) != (height, width):
        resized = Image.fromarray(pixels, "RGB").resize((w, h), resample=Image.Resampling.BICUBIC)
        pixels = np.asarray(resized, dtype=np.uint8)
    # float64 then float32, as transformers' `rescale`: the same rounding bit for bit.
    scaled = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    patches, positions = patchify(scaled)
    return ProcessedImage(patches, positions, (h, w), len(patches) // POOLING**2, name)


def default_soft_tokens(folder: Path) -> int:
    """The checkpoint's image token budget: `max_soft_tokens` of its processor config (the
    `image_processor` entry of `processor_config.json`, or `preprocessor_config.json`), else 280.
    """
    processor = load_json(folder / "processor_config.json", missing_ok=True)
    for cfg in (
        processor.get("image_processor") or {},
        load_json(folder / "preprocessor_config.json", missing_ok=True),
    ):
        if cfg.get("max_soft_tokens") in SUPPORTED_SOFT_TOKENS:
            return int(cfg["max_soft_tokens"])
    return DEFAULT_SOFT_TOKENS
