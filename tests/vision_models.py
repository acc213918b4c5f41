"""Tiny random Gemma 4 checkpoints with a vision tower, made by transformers, for image parity.

Two variants, each a ``Gemma4ForConditionalGeneration`` whose text decoder is a variant of
``tiny_models`` (same feature set) and whose vision tower is tiny (hidden 32, 2 layers, 2 heads
of 16, 16-pixel patches, 3 x 3 pooling):

============  ===============================================================================
variant       features
============  ===============================================================================
e2b-vision    E2B text (PLE, KV sharing, double-wide MLP, causal over images); clipped
              linears in the tower, with bounds that really clip; saved in bf16, sharded
31b-vision    31B text (K=V, ``use_bidirectional_attention: "vision"``: image tokens see each
              other on sliding layers); ``standardize`` on; saved in fp32
============  ===============================================================================

Every parameter and buffer is random (``tiny_models.randomise_``), then three groups are set
again so that they matter: the clip bounds (``[-2.5, -1.5]`` / ``[1.5, 2.5]`` on inputs,
``[-2, -1]`` / ``[1, 2]`` on outputs: activations of a unit-scale network cross them, so
clamping changes the result), and the position table (unit normal, like the patch
embeddings it is added to, instead of the tiny fan-in scale a 3-D tensor would get).

The vocabulary is the project tokenizer's 4096 ids, so ``chat`` can run; three of its unused
control tokens are renamed ``<|image>``, ``<|image|>``, ``<image|>`` (ids 5, 6, 7) in the
checkpoint's tokenizer copy, and ``config.json`` names those ids as boi/image/eoi (the real ones,
255999/258880/258882, do not fit a tiny vocabulary).

Test images are drawn with NumPy and pillow; the reference runs transformers on exactly the
pixel values that ``gemma4_ref.image`` makes (the processor itself is compared separately).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tiny_models import (
    GENERATION_CONFIG,
    TOKENIZER_DIR,
    VARIANTS,
    Variant,
    _full_config,
    _rewrite_config_hub_form,
    load_reference,
    randomise_,
)

VOCAB = 4096
BOI_ID, IMAGE_ID, EOI_ID = 5, 6, 7
IMAGE_TOKENS = {"<unused0>": "<|image>", "<unused1>": "<|image|>", "<unused2>": "<image|>"}
MAX_SOFT_TOKENS = 70  # the smallest budget: 630 patches per image
MAX_NEW_TOKENS = 40
IN_BOUNDS = (1.5, 2.5)
OUT_BOUNDS = (1.0, 2.0)

_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "patch_size": 16,
    "pooling_kernel_size": 3,
    "position_embedding_size": 128,
}


def _with_vision(base: str, name: str, vision: dict[str, Any], seed: int) -> Variant:
    text = {**VARIANTS[base].text, "vocab_size": VOCAB}
    if text.get("hidden_size_per_layer_input"):
        text["vocab_size_per_layer_input"] = VOCAB
    return dataclasses.replace(
        VARIANTS[base], name=name, text=text, vision={**_VISION, **vision}, audio=None, seed=seed
    )


VISION_VARIANTS: dict[str, Variant] = {
    "e2b-vision": _with_vision(
        "e2b", "e2b-vision", {"use_clipped_linears": True, "standardize": False}, seed=406
    ),
    "31b-vision": _with_vision(
        "31b", "31b-vision", {"use_clipped_linears": False, "standardize": True}, seed=419
    ),
}
DTYPES = {"e2b-vision": "bf16", "31b-vision": "fp32"}


# --------------------------------------------------------------------------------------------
# images and prompts
# --------------------------------------------------------------------------------------------


def test_image(width: int, height: int, seed: int):
    """An RGB PIL image: a colour gradient, noise and a few drawn shapes."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.stack(
        [255 * x / width, 255 * y / height, 128 + 100 * np.sin((x + y) / 9.0)], axis=-1
    ) + rng.normal(0, 20, (height, width, 3))
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
        box = [
            x0,
            y0,
            x0 + int(rng.integers(5, width // 2)),
            y0 + int(rng.integers(5, height // 2)),
        ]
        draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


test_image.__test__ = False


def test_images() -> list:
    """Two images of different shapes: 60 and 64 soft tokens at a 70-token budget."""
    return [test_image(200, 130, seed=1), test_image(100, 100, seed=2)]


test_images.__test__ = False


def prompt_parts(seed: int = 77) -> list[list[int]]:
    """Text around two images: BOS + 6 ids, 5 ids, 4 ids (ids >= 110: no control tokens)."""
    rng = np.random.default_rng(seed)
    return [[2] + rng.integers(110, VOCAB, 6).tolist(), rng.integers(110, VOCAB, 5).tolist()] + [
        rng.integers(110, VOCAB, 4).tolist()
    ]


def prompt_ids(counts: list[int] | None = None) -> list[int]:
    """The test prompt; with soft-token `counts`, expanded as the processor does."""
    parts = prompt_parts()
    ids = list(parts[0])
    for i, text in enumerate(parts[1:]):
        if counts is None:
            ids.append(IMAGE_ID)
        else:
            ids += [BOI_ID] + [IMAGE_ID] * counts[i] + [EOI_ID]
        ids += text
    return ids


# --------------------------------------------------------------------------------------------
# the checkpoints
# --------------------------------------------------------------------------------------------


def build_vision_model(name: str):
    """The randomised fp32 ``Gemma4ForConditionalGeneration`` of a vision variant (eager)."""
    import transformers

    variant = VISION_VARIANTS[name]
    config = _full_config(variant)
    config.boi_token_id, config.image_token_id, config.eoi_token_id = BOI_ID, IMAGE_ID, EOI_ID
    model = transformers.Gemma4ForConditionalGeneration(config)
    randomise_(model, variant.seed)
    tune_vision_(model, np.random.default_rng(variant.seed + 7))
    return model.eval()


def tune_vision_(model, rng: np.random.Generator) -> None:
    """Set the vision tower's clip bounds and position table again, so that they matter (see
    the module docstring)."""
    import torch

    with torch.no_grad():
        for key, t in sorted(model.state_dict(keep_vars=True).items()):
            leaf = key.rsplit(".", 1)[-1]
            if "vision_tower" not in key:
                continue
            if leaf in ("input_min", "input_max", "output_min", "output_max"):
                lo, hi = IN_BOUNDS if leaf.startswith("input") else OUT_BOUNDS
                sign = -1.0 if leaf.endswith("min") else 1.0
                t.fill_(sign * float(rng.uniform(lo, hi)))
            elif leaf == "position_embedding_table":
                t.copy_(torch.from_numpy(rng.normal(0.0, 1.0, tuple(t.shape)).astype(np.float32)))


def _write_tokenizer(path: Path) -> None:
    """The project tokenizer with three unused control tokens renamed to the image tokens."""
    tok = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    for entry in tok["added_tokens"]:
        entry["content"] = IMAGE_TOKENS.get(entry["content"], entry["content"])
    tok["model"]["vocab"] = {IMAGE_TOKENS.get(k, k): v for k, v in tok["model"]["vocab"].items()}
    (path / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    cfg = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text())
    text = json.dumps(cfg, ensure_ascii=False)
    for old, new in IMAGE_TOKENS.items():
        text = text.replace(f'"{old}"', json.dumps(new))
    (path / "tokenizer_config.json").write_text(text)
    shutil.copy2(TOKENIZER_DIR / "chat_template.jinja", path / "chat_template.jinja")


def save_vision_checkpoint(name: str, path: Path) -> Path:
    """Save a vision variant as the Hub does (bf16 ones sharded), with its tokenizer."""
    import torch

    variant = VISION_VARIANTS[name]
    dtype = DTYPES[name]
    model = build_vision_model(name).to(getattr(torch, {"bf16": "bfloat16"}.get(dtype, "float32")))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, max_shard_size="256KB" if dtype == "bf16" else "10GB")
    _rewrite_config_hub_form(path, variant, multimodal=True)
    (path / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    _write_tokenizer(path)
    return path


# --------------------------------------------------------------------------------------------
# the reference side
# --------------------------------------------------------------------------------------------


def padded(processed: list, max_patches: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack processed images as transformers' processor does: pixels 0, positions -1.

    # n x ProcessedImage -> [n, max_patches, 3p^2], [n, max_patches, 2]
    """
    n, width = len(processed), processed[0].patches.shape[1]
    pixels = np.zeros((n, max_patches, width), np.float32)
    positions = np.full((n, max_patches, 2), -1, np.int64)
    for i, p in enumerate(processed):
        pixels[i, : len(p.patches)] = p.patches
        positions[i, : len(p.positions)] = p.positions
    return pixels, positions


@dataclasses.dataclass
class VisionReference:
    """transformers' outputs for the test prompt and images of one vision checkpoint."""

    ids: list[int]  # the expanded prompt
    soft_tokens: list[np.ndarray]  # per image [n_i, H_text]
    features: np.ndarray  # the tower's output before embed_vision, all images [sum n_i, H_v]
    prefill_logits: np.ndarray  # [S, V]
    causal_logits: np.ndarray  # [S, V] the same without mm_token_type_ids (no bidirectional mask)
    tokens: list[int]  # greedy new tokens
    step_logits: np.ndarray  # [n_new, V]
    min_gap: float  # smallest top-1 minus top-2 logit over the greedy steps
    clipped: dict[str, tuple[int, int]]  # per clipped linear: (inputs clamped, outputs clamped)


def reference_outputs(model, processed: list) -> VisionReference:
    """Run transformers on the test prompt with these processed images."""
    import torch

    counts = [p.num_soft_tokens for p in processed]
    ids = prompt_ids(counts)
    pixels, positions = padded(processed, MAX_SOFT_TOKENS * 9)
    pv, pos = torch.from_numpy(pixels), torch.from_numpy(positions)
    input_ids = torch.tensor([ids])
    mm_types = (input_ids == IMAGE_ID).long()
    clipped: dict[str, list[int]] = {}
    hooks = []
    for name, module in model.model.vision_tower.named_modules():
        if type(module).__name__ == "Gemma4ClippableLinear" and module.use_clipped_linears:

            def hook(mod, args, out, name=name):
                x = args[0]
                c = clipped.setdefault(name, [0, 0])
                c[0] += int(((x < mod.input_min) | (x > mod.input_max)).sum())
                raw = mod.linear(torch.clamp(x, mod.input_min, mod.input_max))
                c[1] += int(((raw < mod.output_min) | (raw > mod.output_max)).sum())

            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        image_out = model.model.get_image_features(pv, pos, return_dict=True)
        for h in hooks:
            h.remove()
        kwargs = {"pixel_values": pv, "image_position_ids": pos}
        prefill = model(input_ids=input_ids, mm_token_type_ids=mm_types, **kwargs).logits[0]
        causal = model(input_ids=input_ids, **kwargs).logits[0]
        out = model.generate(
            input_ids,
            mm_token_type_ids=mm_types,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            **kwargs,
        )
    steps = torch.cat(out.logits, 0).float().numpy()
    top2 = np.sort(steps, axis=-1)[:, -2:]
    return VisionReference(
        ids=ids,
        soft_tokens=[t.float().numpy() for t in image_out.pooler_output],
        features=image_out.last_hidden_state.float().numpy(),
        prefill_logits=prefill.float().numpy(),
        causal_logits=causal.float().numpy(),
        tokens=out.sequences[0, len(ids) :].tolist(),
        step_logits=steps,
        min_gap=float((top2[:, 1] - top2[:, 0]).min()),
        clipped={k: (v[0], v[1]) for k, v in clipped.items()},
    )


class VisionStore:
    """Builds each vision checkpoint, and runs transformers on it, at most once."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._paths: dict[str, Path] = {}
        self._refs: dict[str, VisionReference] = {}
        self._ours: dict[str, Any] = {}

    def path(self, name: str) -> Path:
        if name not in self._paths:
            self._paths[name] = save_vision_checkpoint(name, self.root / name)
        return self._paths[name]

    def processed(self) -> list:
        """The test images through gemma4_ref's processor at the 70-token budget."""
        from gemma4_ref.image import process_image

        return [process_image(im, MAX_SOFT_TOKENS) for im in test_images()]

    def reference(self, name: str) -> VisionReference:
        if name not in self._refs:
            self._refs[name] = reference_outputs(load_reference(self.path(name)), self.processed())
        return self._refs[name]

    def ours(self, name: str):
        if name not in self._ours:
            import gemma4_ref

            self._ours[name] = gemma4_ref.load_model(str(self.path(name)))
        return self._ours[name]
