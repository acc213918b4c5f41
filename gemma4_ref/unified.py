"""The 12B "unified" model's encoder-free front end: raw pixels and raw samples in, soft tokens out.

Gemma 4 12B (`gemma4_unified` in transformers 5.24) has no vision tower and no audio tower.
Images and sound are cut into fixed-size pieces and each piece is *projected* straight into the
decoder's width: one piece, one soft token.

**Images** (`Gemma4UnifiedImageProcessor`, `Gemma4UnifiedVisionEmbedder`). The processor is
Gemma 4's (`image.py`: aspect-preserving resize to multiples of 48 px within the budget, rescale
to [0, 1], 16-px patches) plus `patches_merge`, which glues each 3 x 3 block of 16-px patches
into one 48-px patch of 48 * 48 * 3 = 6912 values in (row, column, channel) order, at grid
position (x, y) = (column, row) of the 48-px grid. Then, per patch p::

    h = ln2(dense(ln1(p)))                 # LayerNorm 6912, Linear 6912->3840 + bias, LayerNorm
    h = pos_norm(h + P[x, 0] + P[y, 1])    # a learned table per axis, P [1120, 2, 3840]
    soft = projection(rms_norm(h))         # RMSNorm with no weight, then 3840 -> H, no bias

The three LayerNorms are torch's defaults (eps 1e-5, weight *and* bias), unlike every other norm
of Gemma 4. Pixels stay in [0, 1]: there is no `2x - 1` here.

**Audio** (`Gemma4UnifiedAudioFeatureExtractor`, `embed_audio`). The 16 kHz waveform is
zero-padded to a multiple of 640 samples and reshaped into 640-sample frames (40 ms each);
every frame is a token: `soft = projection(rms_norm(frame))`, RMSNorm with no weight, 640 -> H.
There is no mel spectrogram and no downsampling.

Neither kind of soft token is scaled by sqrt(H). In the prompt an image is `<|image>`,
n x `<|image|>`, `<image|>` and a clip `<|audio>`, n x `<|audio|>`, `<audio|>`, with n the
number of patches or frames (`multimodal.expand_placeholders`).

**The image mask.** `Gemma4UnifiedModel.forward` hands transformers' `create_masks_for_generate`
a `block_sequence_ids` built from `mm_token_type_ids` (`multimodal.vision_blocks`): every
maximal run of image or video placeholders is one block, and a query sees every key of its own
block in *both* directions, on sliding **and** full layers, whatever the sliding window says
(the block overlay is OR-ed in after the window). Text, `<|image>`, `<image|>` and audio stay
causal.
Without `mm_token_type_ids` the whole mask is causal. (The static-cache `generate` path uses the
model's own `create_masks_for_generate` instead: bidirectional on sliding layers only, inside
the window; this module follows the forward path.)

Both projections are single matrix products, which BLAS runs far faster than a hand-written
loop, so this module has no Numba kernel: `linear.Linear` widens bf16 weights tile by tile and
calls BLAS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .attention import visible
from .audio_features import SAMPLING_RATE
from .checkpoint import Checkpoint, TensorSource
from .config import _get, load_json
from .errors import CheckpointError, ConfigError, InputError
from .image import (
    DEFAULT_SOFT_TOKENS,
    PATCH_SIZE,
    POOLING,
    SUPPORTED_SOFT_TOKENS,
    ProcessedImage,
    load_pixels,
    patchify,
    target_size,
)
from .linear import Linear, widen
from .multimodal import PlaceholderIds
from .norm import layer_norm, rms_norm, rms_norm_ref

#: `nn.LayerNorm`'s default eps, which the vision embedder's three LayerNorms keep.
LAYER_NORM_EPS = 1e-5
SAMPLES_PER_TOKEN = 640  # 40 ms at 16 kHz
MODEL_PATCH = PATCH_SIZE * POOLING  # 48 px: the processor's merged patch

# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnifiedConfig:
    """The front end's fields of a `gemma4_unified` `config.json`; defaults are the 12B's."""

    text_hidden_size: int = 3840
    patch_size: int = 16
    pooling_kernel_size: int = 3
    mm_embed_dim: int = 3840
    mm_posemb_size: int = 1120
    vision_eps: float = 1e-6
    audio_embed_dim: int | None = SAMPLES_PER_TOKEN  # None: the checkpoint takes no audio
    audio_eps: float = 1e-6

    @property
    def model_patch_size(self) -> int:
        """The side of a merged patch in pixels (48)."""
        return self.patch_size * self.pooling_kernel_size

    @property
    def patch_dim(self) -> int:
        """Values per merged patch: 48 * 48 * 3 = 6912."""
        return self.model_patch_size**2 * 3


def unified_config_from_dict(raw: dict[str, Any], source: str = "config.json") -> UnifiedConfig:
    """The :class:`UnifiedConfig` of a parsed `config.json` with `model_type: gemma4_unified`."""
    if raw.get("model_type") != "gemma4_unified":
        raise ConfigError(
            f"{source}: model_type is {raw.get('model_type')!r}, not 'gemma4_unified'; the "
            "encoder-free front end belongs to Gemma 4 12B. Other Gemma 4 models use "
            "gemma4_ref.vision and gemma4_ref.audio."
        )
    vision = raw.get("vision_config")
    if not isinstance(vision, dict):
        raise ConfigError(
            f"{source}: 'vision_config' is {vision!r}; the unified front end needs one. Copy "
            "the checkpoint's config.json."
        )
    d = UnifiedConfig()
    where = f"{source} (vision_config)"
    values: dict[str, Any] = {
        "text_hidden_size": _get(
            raw.get("text_config") or {}, "hidden_size", d.text_hidden_size, source, int
        ),
        "vision_eps": _get(vision, "rms_norm_eps", d.vision_eps, where, float),
    }
    for name in ("patch_size", "pooling_kernel_size", "mm_embed_dim", "mm_posemb_size"):
        value = _get(vision, name, getattr(d, name), where, int)
        if value is None or value <= 0:
            raise ConfigError(f"{where}: field '{name}' must be a positive integer, got {value!r}.")
        values[name] = value
    # The final RMSNorm -> Linear reads the LayerNorm'd width: the two must agree.
    out_dims = _get(vision, "output_proj_dims", values["mm_embed_dim"], where, int)
    if out_dims != values["mm_embed_dim"]:
        raise ConfigError(
            f"{where}: output_proj_dims={out_dims} must equal mm_embed_dim="
            f"{values['mm_embed_dim']}: the projection reads the patch embedding directly."
        )
    audio = raw.get("audio_config")
    if audio is None:
        values["audio_embed_dim"] = None
    elif isinstance(audio, dict):
        where = f"{source} (audio_config)"
        values["audio_embed_dim"] = _get(audio, "audio_embed_dim", d.audio_embed_dim, where, int)
        values["audio_eps"] = _get(audio, "rms_norm_eps", d.audio_eps, where, float)
    else:
        raise ConfigError(f"{source}: 'audio_config' must be an object or null, got {audio!r}.")
    return UnifiedConfig(**values)


def load_unified_config(folder: str | Path) -> UnifiedConfig:
    """Read the front end's configuration from `folder/config.json`."""
    path = Path(folder) / "config.json"
    return unified_config_from_dict(load_json(path), str(path))


# --- the image processor ------------------------------------------------------------------------


def process_unified_image(
    image: Any, max_soft_tokens: int = DEFAULT_SOFT_TOKENS, name: str | None = None
) -> ProcessedImage:
    """One image as the unified model takes it: 48-px patches, one per soft token.

    `Gemma4UnifiedImageProcessor`: `image` is a PIL image, a file path or a uint8 `[H, W, 3]`
    array. The patches are its `pixel_values` without the padding rows, the positions its
    `image_position_ids`, `num_soft_tokens` its `num_soft_tokens_per_image`. Cutting 48-px
    patches directly gives what its `patches_merge` of 16-px patches gives (the tests check).

    The resize is pillow's bicubic; transformers resizes with torchvision's antialiased bicubic
    on uint8, which can differ by a level or two out of 255 on some pixels. Images already at
    their target size (sides multiples of 48 filling the budget) come out bit for bit.
    # -> patches [N, 6912] f32 in [0, 1], positions [N, 2] int64 (x, y)
    """
    if max_soft_tokens not in SUPPORTED_SOFT_TOKENS:
        raise InputError(
            f"max_soft_tokens={max_soft_tokens} is not supported; Gemma 4 12B was trained with "
            f"{', '.join(map(str, SUPPORTED_SOFT_TOKENS))} soft tokens per image."
        )
    from PIL import Image

    pixels, name = load_pixels(image, name)
    h, w = target_size(*pixels.shape[:2], max_soft_tokens)
    if (h, w) != pixels.shape[:2]:
        resized = Image.fromarray(pixels, "RGB").resize((w, h), resample=Image.Resampling.BICUBIC)
        pixels = np.asarray(resized, dtype=np.uint8)
    # float32 times float32(1/255), as torch multiplies a uint8 tensor by a Python float: one
    # ulp away, on some values, from the float64 rescale of Gemma 4's PIL processor.
    scaled = pixels.astype(np.float32) * np.float32(1 / 255)
    patches, positions = patchify(scaled, MODEL_PATCH)
    return ProcessedImage(patches, positions, (h, w), len(patches), name)


# --- the audio processor ------------------------------------------------------------------------


def waveform_frames(
    waveform: np.ndarray, sampling_rate: int = SAMPLING_RATE, frame: int = SAMPLES_PER_TOKEN
) -> np.ndarray:
    """Cut a mono 16 kHz clip into frames, zero-padding the last one.

    `Gemma4UnifiedAudioFeatureExtractor._extract_waveform_features`; every frame is valid.
    # [N] float -> [ceil(N / frame), frame] f32
    """
    if sampling_rate != SAMPLING_RATE:
        raise InputError(
            f"sampling_rate={sampling_rate}: Gemma 4 takes {SAMPLING_RATE} Hz audio. Resample "
            f"it first (e.g. scipy.signal.resample_poly(x, {SAMPLING_RATE}, {sampling_rate}))."
        )
    x = np.asarray(waveform)
    if x.ndim != 1:
        raise InputError(
            f"waveform has shape {list(x.shape)}; pass one mono channel as a 1-D array "
            "(mix stereo down with x.mean(axis=0))."
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(
            f"waveform samples are {x.dtype}; pass floats in [-1, 1] (16-bit PCM: divide by 32768)."
        )
    if x.size == 0:
        raise InputError("waveform is empty (0 samples); pass at least one sample.")
    if not np.isfinite(x).all():
        raise InputError("waveform holds NaN or infinite samples; clean or clip them first.")
    # Like the extractor: pad in the input's dtype, then one cast to float32.
    padded = np.pad(x, (0, -x.size % frame))
    return padded.reshape(-1, frame).astype(np.float32)


def num_audio_tokens(num_samples: int, frame: int = SAMPLES_PER_TOKEN) -> int:
    """Audio soft tokens of a clip: one per started 40 ms frame (`_compute_audio_num_tokens`)."""
    return -(-num_samples // frame)


# --- the projections: plain NumPy reference -----------------------------------------------------


def layer_norm_affine(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float
) -> np.ndarray:
    """`nn.LayerNorm` with weight and bias.  # [..., C], [C], [C] -> [..., C]"""
    return layer_norm(x, weight, eps) + bias


def vision_soft_tokens_ref(
    patches: np.ndarray, positions: np.ndarray, params: dict[str, np.ndarray], eps: float
) -> np.ndarray:
    """`Gemma4UnifiedVisionEmbedder.forward` on real patches, all in float32 NumPy.

    `params` holds float32 arrays named as in the module (`patch_ln1.weight`, ...,
    `pos_embedding`, `embedding_projection.weight`); `eps` is the final RMSNorm's.
    # [N, D] in [0, 1], [N, 2] (x, y) -> [N, H]
    """
    e = LAYER_NORM_EPS
    h = layer_norm_affine(patches, params["patch_ln1.weight"], params["patch_ln1.bias"], e)
    h = h @ params["patch_dense.weight"].T + params["patch_dense.bias"]
    h = layer_norm_affine(h, params["patch_ln2.weight"], params["patch_ln2.bias"], e)
    table = params["pos_embedding"]
    h = h + table[positions[:, 0], 0] + table[positions[:, 1], 1]
    h = layer_norm_affine(h, params["pos_norm.weight"], params["pos_norm.bias"], e)
    return rms_norm_ref(h, None, eps) @ params["embedding_projection.weight"].T


def audio_soft_tokens_ref(frames: np.ndarray, projection: np.ndarray, eps: float) -> np.ndarray:
    """`Gemma4UnifiedMultimodalEmbedder` on waveform frames.  # [n, 640], [H, 640] -> [n, H]"""
    return rms_norm_ref(frames, None, eps) @ projection.T


# --- the projections: loaded from a checkpoint --------------------------------------------------

# Hub files keep the names from before transformers' rename (conversion_mapping.py,
# "gemma4_unified"); a checkpoint re-saved by transformers 5.24 has them back too. Both are read.
_VISION_PREFIXES = ("vision_embedder.", "embed_vision.")
_PROJECTION_NAMES = (
    "embed_vision.embedding_projection",
    "embed_vision.multimodal_embedder.embedding_projection",
)


def _first_present(w: TensorSource, names: tuple[str, ...], what: str) -> str:
    for name in names:
        if w.has(name):
            return name
    raise CheckpointError(
        f"{w.ckpt.folder}: no {what} found (looked for "
        f"{', '.join(repr(w.prefix + n) for n in names)}). Is this a Gemma 4 12B (unified) "
        "checkpoint?"
    )


class VisionEmbedder:
    """`Gemma4UnifiedVisionEmbedder`: 48-px patches to soft tokens, weights in stored dtype."""

    def __init__(self, cfg: UnifiedConfig, w: TensorSource):
        D, E = cfg.patch_dim, cfg.mm_embed_dim
        self.config = cfg
        dense = tuple(s + "patch_dense.weight" for s in _VISION_PREFIXES)
        p = _first_present(w, dense, "vision embedder")
        p = p.removesuffix("patch_dense.weight")
        self.ln1 = (w.vector(p + "patch_ln1.weight", D), w.vector(p + "patch_ln1.bias", D))
        self.dense = w.linear(p + "patch_dense", E, D)
        self.dense_bias = w.vector(p + "patch_dense.bias", E)
        self.ln2 = (w.vector(p + "patch_ln2.weight", E), w.vector(p + "patch_ln2.bias", E))
        self.pos_table, self.pos_dtype = w.raw(p + "pos_embedding", (cfg.mm_posemb_size, 2, E))
        self.pos_norm = (w.vector(p + "pos_norm.weight", E), w.vector(p + "pos_norm.bias", E))
        proj = _first_present(w, tuple(n + ".weight" for n in _PROJECTION_NAMES), "projection")
        self.projection = w.linear(proj.removesuffix(".weight"), cfg.text_hidden_size, E)

    def _checked(
        self, patches: np.ndarray, positions: np.ndarray, name: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """The real rows, checked; padding rows (position (-1, -1)) are dropped.

        # [N, D], [N, 2] -> [n, D] f32, [n, 2] int64
        """
        D, limit = self.config.patch_dim, self.config.mm_posemb_size
        patches = np.asarray(patches)
        positions = np.asarray(positions)
        if patches.ndim != 2 or patches.shape[1] != D:
            side = self.config.model_patch_size
            raise InputError(
                f"{name}: patches have shape {list(patches.shape)}; this model takes [N, {D}] "
                f"({side} x {side} x 3 pixels per patch). Make them with "
                "gemma4_ref.unified.process_unified_image."
            )
        if positions.shape != (len(patches), 2) or not np.issubdtype(positions.dtype, np.integer):
            raise InputError(
                f"{name}: positions are {positions.dtype} {list(positions.shape)}; expected "
                f"integers [{len(patches)}, 2], one (x, y) per patch."
            )
        real = ~(positions == -1).all(axis=-1)
        patches, positions = patches[real], positions[real].astype(np.int64)
        if len(patches) == 0:
            raise InputError(f"{name}: the image has no patches (all rows are padding).")
        if positions.min() < 0 or positions.max() >= limit:
            raise InputError(
                f"{name}: patch positions must lie in 0..{limit - 1} "
                f"(vision_config.mm_posemb_size), got {positions.min()}..{positions.max()}; "
                "use a smaller max_soft_tokens or a less elongated image."
            )
        return patches.astype(np.float32), positions

    def __call__(
        self, patches: np.ndarray, positions: np.ndarray, name: str = "image"
    ) -> np.ndarray:
        """One image's soft tokens in the text width (not scaled by sqrt(H)).

        # patches [N, D] in [0, 1], positions [N, 2] (x, y; (-1, -1) = padding) -> [n_real, H]
        """
        patches, positions = self._checked(patches, positions, name)
        e = LAYER_NORM_EPS
        h = self.dense(layer_norm_affine(patches, *self.ln1, e)) + self.dense_bias
        h = layer_norm_affine(h, *self.ln2, e)
        tx = widen(self.pos_table[positions[:, 0], 0], self.pos_dtype)
        ty = widen(self.pos_table[positions[:, 1], 1], self.pos_dtype)
        h = layer_norm_affine(h + tx + ty, *self.pos_norm, e)
        return self.projection(rms_norm(h, None, self.config.vision_eps))


class AudioEmbedder:
    """`embed_audio`: waveform frames to soft tokens (RMSNorm with no weight, then Linear)."""

    def __init__(self, frame: int, eps: float, text_hidden_size: int, w: TensorSource):
        self.frame = frame  # samples per token: audio_config.audio_embed_dim
        self.eps = eps
        self.projection: Linear = w.linear(
            "embed_audio.embedding_projection", text_hidden_size, frame
        )

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """# frames [n, 640] f32 (from waveform_frames) -> [n, H]"""
        frames = np.asarray(frames)
        if frames.ndim != 2 or frames.shape[1] != self.frame or len(frames) == 0:
            raise InputError(
                f"audio frames have shape {list(frames.shape)}; expected [n >= 1, {self.frame}]. "
                "Make them with gemma4_ref.unified.waveform_frames."
            )
        return self.projection(rms_norm(frames.astype(np.float32), None, self.eps))

    def from_waveform(self, waveform: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
        """One clip's soft tokens.  # [N] samples at 16 kHz -> [ceil(N / 640), H]"""
        return self(waveform_frames(waveform, sampling_rate, self.frame))


@dataclass
class UnifiedFrontEnd:
    """Everything the 12B decoder needs besides text: the two embedders and placeholder ids."""

    config: UnifiedConfig
    vision: VisionEmbedder
    audio: AudioEmbedder | None
    tokens: PlaceholderIds

    @classmethod
    def load(cls, checkpoint: Checkpoint | str | Path) -> UnifiedFrontEnd:
        """From a `gemma4_unified` checkpoint (a :class:`Checkpoint` or its folder). The weights
        stay memory-mapped in their stored dtype."""
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)
        raw = load_json(ckpt.folder / "config.json")
        cfg = unified_config_from_dict(raw, str(ckpt.folder / "config.json"))
        w = TensorSource(ckpt, "model.", None)
        audio = None
        if cfg.audio_embed_dim is not None:
            audio = AudioEmbedder(cfg.audio_embed_dim, cfg.audio_eps, cfg.text_hidden_size, w)
        return cls(cfg, VisionEmbedder(cfg, w), audio, PlaceholderIds.from_config(raw))

    def audio_soft_tokens(
        self, waveform: np.ndarray, sampling_rate: int = SAMPLING_RATE
    ) -> np.ndarray:
        """One clip's soft tokens.  # [N] samples -> [ceil(N / 640), H]"""
        if self.audio is None:
            raise InputError(
                "this checkpoint's config.json has no audio_config, so it takes no audio; "
                "pass images and text only."
            )
        return self.audio.from_waveform(waveform, sampling_rate)


# --- the attention rule for image tokens --------------------------------------------------------


def unified_visible(pos: np.ndarray, blocks: np.ndarray, window: int) -> np.ndarray:
    """Which keys each query sees in a prefill of the unified model (forward path), the plain
    NumPy way; the decoder runs the same rule as intervals (`attention.py`).

    Query i may see key j iff j <= i (and, on sliding layers, i - j < window), **or**
    blocks[i] == blocks[j] >= 0 -- on every layer.

    `window` is the sliding window on sliding layers and 0 on full layers. The block overlay is
    OR-ed in after the window, so a block longer than the window (a 1120-token image against
    the 12B's window of 1024) still sees all of itself.
    # pos [S], blocks [S] (from vision_blocks) -> [S, S] bool
    """
    same_block = (blocks[:, None] == blocks[None, :]) & (blocks[:, None] >= 0)
    return visible(pos, pos, window) | same_block
