"""Chapter 9's pictures and helpers: images, patches, the pooling grid, axial RoPE, the image mask.

Everything drawn here comes from the package: sizes and patches from
:func:`gemma4_ref.image.process_image`, rotations from :func:`gemma4_ref.vision.axial_rope`,
masks from :func:`gemma4_ref.attention.visible` and
:func:`gemma4_ref.multimodal.vision_block_bounds`.
Three helpers build what a chapter needs and the repository does not ship:

* :func:`draw_scene`, a test picture drawn with pillow (no downloads);
* :func:`tiny_vision_checkpoint`, a tiny *randomly initialised* vision checkpoint written by
  transformers itself, so the tower can run next to transformers' own (its pictures show shapes
  and masks, never learned behaviour);
* :func:`merge_patches`, a plain NumPy version of the unified 12B's 3 x 3 patch merge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..attention import visible
from ..image import PATCH_SIZE, POOLING, ProcessedImage
from ..multimodal import PlaceholderIds, vision_block_bounds
from ..rope import cos_sin
from ..vision import axial_rope
from .widgets import Explorer

BLOCK = PATCH_SIZE * POOLING  # 48 px: one soft token's square


# --- a picture to look at ----------------------------------------------------------------------


def draw_scene(width: int = 400, height: int = 260, seed: int = 0):
    """A small landscape drawn with pillow: sky gradient, sun, hills, a house, a tree, some grain.

    Distinct shapes at several scales, so the patch grids of different budgets cut through
    recognisable things. Returns an RGB ``PIL.Image`` of ``width x height`` pixels.
    """
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height)[:, None, None]  # [H, 1, 1]
    sky = (1 - y) * np.array([70, 130, 210]) + y * np.array([235, 225, 200])  # [H, 1, 3]
    rgb = np.broadcast_to(sky, (height, width, 3)) + rng.normal(0, 4, (height, width, 3))
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(image)
    w, h = width, height
    d.ellipse([0.72 * w, 0.08 * h, 0.86 * w, 0.08 * h + 0.14 * w], fill=(250, 215, 60))
    d.polygon([(0, 0.75 * h), (0.35 * w, 0.45 * h), (0.7 * w, 0.78 * h)], fill=(70, 140, 70))
    d.polygon([(0.4 * w, 0.8 * h), (0.8 * w, 0.5 * h), (w, 0.7 * h), (w, h)], fill=(50, 110, 60))
    d.rectangle([0, 0.78 * h, w, h], fill=(95, 160, 80))
    d.rectangle([0.18 * w, 0.58 * h, 0.38 * w, 0.86 * h], fill=(200, 80, 60))  # the house
    d.polygon([(0.15 * w, 0.6 * h), (0.28 * w, 0.42 * h), (0.41 * w, 0.6 * h)], fill=(120, 50, 40))
    d.rectangle([0.25 * w, 0.7 * h, 0.3 * w, 0.86 * h], fill=(70, 40, 30))  # the door
    d.rectangle([0.32 * w, 0.64 * h, 0.36 * w, 0.7 * h], fill=(180, 220, 250))  # a window
    d.rectangle([0.6 * w, 0.62 * h, 0.63 * w, 0.88 * h], fill=(90, 60, 30))  # the trunk
    d.ellipse([0.53 * w, 0.42 * h, 0.7 * w, 0.68 * h], fill=(30, 90, 40))  # the crown
    return image


# --- a tiny random tower, made by transformers ------------------------------------------------

#: The tiny tower of :func:`tiny_vision_checkpoint`: the released geometry (16-px patches,
#: 3 x 3 pooling, axial RoPE with theta 100) at toy width.
TINY_VISION = {
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
#: Its text decoder: one layer 64 wide. Only the width matters here (the embedder projects
#: into it); it exists because transformers' multimodal class needs one.
TINY_TEXT = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "global_head_dim": 32,
    "hidden_size_per_layer_input": 0,
    "layer_types": ["full_attention"],
}


def random_weights_(model: Any, seed: int, clip: tuple[float, float] = (1.5, 2.5)) -> None:
    """Overwrite every floating parameter and buffer of a torch model with seeded values.

    Matrices ~ N(0, 1/fan_in) (activations stay O(1)), norm weights uniform in [0.5, 1.5] (so
    none is 0 or 1), other vectors ~ N(0, 0.2), learned position tables ~ N(0, 1), the
    clippable linears' bounds at +-uniform(``clip``) (tight enough that unit-scale activations
    cross them, so clipping changes the result). NumPy draws them, so they do not depend on the
    torch version.
    """
    import torch

    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, t in sorted(model.state_dict(keep_vars=True).items()):
            if not t.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            shape = tuple(t.shape)
            if leaf in ("input_min", "output_min", "input_max", "output_max"):
                sign = -1.0 if leaf.endswith("min") else 1.0
                values = np.asarray(sign * rng.uniform(*clip))
            elif "position_embedding" in leaf or leaf == "pos_embedding":
                values = rng.normal(0.0, 1.0, shape)
            elif leaf == "per_dim_scale":  # the audio queries' softplus scale: 0.3 to 1.7
                values = rng.uniform(-1.0, 1.5, shape)
            elif len(shape) >= 2:
                values = rng.normal(0.0, 1.0, shape) / np.sqrt(np.prod(shape[1:]))
            elif "norm" in name or leaf == "std_scale":
                values = rng.uniform(0.5, 1.5, shape)
            else:
                values = rng.normal(0.0, 0.2, shape)
            t.copy_(torch.from_numpy(np.asarray(values, np.float32)))


def tiny_vision_checkpoint(
    folder: str | Path, seed: int = 0, clipped: bool = True, standardize: bool = False
) -> Any:
    """Write a tiny *random* Gemma 4 checkpoint with a vision tower to ``folder``.

    transformers builds a ``Gemma4ForConditionalGeneration`` (:data:`TINY_TEXT`,
    :data:`TINY_VISION`, E2B's clipped linears or the 31B's ``standardize``), every weight is
    drawn by :func:`random_weights_`, and ``save_pretrained`` writes it as the Hub's files are
    laid out. Returns the transformers model (fp32, eager, eval) for comparisons;
    ``gemma4_ref.load_model(folder).vision`` is the package's tower on the same weights.
    """
    import transformers

    config = transformers.Gemma4Config(
        text_config=transformers.Gemma4TextConfig(**TINY_TEXT),
        vision_config=transformers.Gemma4VisionConfig(
            **TINY_VISION, use_clipped_linears=clipped, standardize=standardize
        ),
        audio_config=None,
    )
    config._attn_implementation = "eager"
    model = transformers.Gemma4ForConditionalGeneration(config)
    random_weights_(model, seed)
    _save_quietly(model, folder)
    return model.eval()


def _save_quietly(model: Any, folder: str | Path) -> None:
    """``save_pretrained`` without its progress bar (a widget in a notebook), then the bar's
    setting as it was."""
    from transformers.utils import logging

    was_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
    finally:
        if was_on:
            logging.enable_progress_bar()


def padded_batch(image: ProcessedImage, max_soft_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """One processed image padded as transformers' processor pads it: to ``9 * max_soft_tokens``
    patches, with pixels 0 and positions (-1, -1) after the real ones.

    # -> pixels [1, 9 * max_soft_tokens, 3p^2] f32, positions [1, 9 * max_soft_tokens, 2] int64
    """
    n, width = image.patches.shape
    total = max_soft_tokens * POOLING * POOLING
    pixels = np.zeros((1, total, width), np.float32)
    positions = np.full((1, total, 2), -1, np.int64)
    pixels[0, :n] = image.patches
    positions[0, :n] = image.positions
    return pixels, positions


# --- the grids ---------------------------------------------------------------------------------


def grid_shape(image: ProcessedImage, patch: int = PATCH_SIZE) -> tuple[int, int]:
    """(rows, columns) of the image's patch grid."""
    h, w = image.size
    return h // patch, w // patch


def pooling_groups(positions: np.ndarray, k: int = POOLING) -> np.ndarray:
    """The soft token each patch is pooled into: row-major over the k x k blocks.

    The numbering of ``vision.pool`` (and transformers' ``Gemma4VisionPooler``):
    ``x // k + (columns / k) * (y // k)``.  # positions [N, 2] (x, y) -> [N] int64
    """
    positions = np.asarray(positions, dtype=np.int64)
    per_row = (int(positions[:, 0].max()) + 1) // k
    return positions[:, 0] // k + per_row * (positions[:, 1] // k)


def merge_patches(patches: np.ndarray, positions: np.ndarray, k: int = POOLING) -> np.ndarray:
    """Glue each k x k block of p-px patches into one (k p)-px patch, (row, column, channel).

    The unified 12B's ``patches_merge``, in plain NumPy from the 16-px patches: the result is a
    row-major list over the block grid, as the unified processor cuts it directly.
    # patches [N, p*p*3], positions [N, 2] -> [N / k^2, (k p)^2 * 3]
    """
    n, width = patches.shape
    p = int(round(np.sqrt(width // 3)))
    cols, rows = int(positions[:, 0].max()) + 1, int(positions[:, 1].max()) + 1
    grid = np.empty((rows, cols, p, p, 3), patches.dtype)
    grid[positions[:, 1], positions[:, 0]] = patches.reshape(n, p, p, 3)
    # [rows/k, k, cols/k, k, p, p, 3] -> [block row, block col, sub-row, pixel row, sub-col, ...]
    blocks = grid.reshape(rows // k, k, cols // k, k, p, p, 3).transpose(0, 2, 1, 4, 3, 5, 6)
    return blocks.reshape((rows // k) * (cols // k), (k * p) * (k * p) * 3)


def image_pixels(image: ProcessedImage, patch: int = PATCH_SIZE) -> np.ndarray:
    """The resized image back from its patches.  # -> [H', W', 3] f32 in [0, 1]"""
    rows, cols = grid_shape(image, patch)
    grid = np.zeros((rows, cols, patch, patch, 3), np.float32)
    grid[image.positions[:, 1], image.positions[:, 0]] = image.patches.reshape(-1, patch, patch, 3)
    return grid.transpose(0, 2, 1, 3, 4).reshape(rows * patch, cols * patch, 3)


def _draw_grid(ax, image: ProcessedImage, fine: bool = True) -> None:
    """Patch lines (thin) and soft-token lines (thick) over an image already drawn on ``ax``."""
    h, w = image.size
    # lines bounded by the image (not the axes), so panels of a shared scale stay clean
    steps = ([(PATCH_SIZE, "white", 0.3, 0.7)] if fine else []) + [(BLOCK, "black", 1.0, 1.0)]
    for step, color, width, alpha in steps:
        xs, ys = np.arange(0, w + 1, step) - 0.5, np.arange(0, h + 1, step) - 0.5
        ax.vlines(xs, -0.5, h - 0.5, color=color, linewidth=width, alpha=alpha)
        ax.hlines(ys, -0.5, w - 0.5, color=color, linewidth=width, alpha=alpha)


def plot_budgets(images: dict[int, ProcessedImage], original_size: tuple[int, int]) -> Figure:
    """The image as the processor resizes it for each budget, patch and token grids drawn over.

    ``images`` maps a budget (max soft tokens) to ``process_image`` at that budget. Each panel is
    drawn at its real pixel scale (a shared axis), so the sizes compare by eye.
    """
    budgets = sorted(images)
    tallest = max(im.size[0] for im in images.values())
    widest = max(im.size[1] for im in images.values())
    fig = Figure(figsize=(3.3 * len(budgets), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(budgets), sharex=True, sharey=True))
    for ax, b in zip(axes, budgets, strict=True):
        im = images[b]
        ax.imshow(image_pixels(im), interpolation="nearest")
        _draw_grid(ax, im, fine=len(im.patches) <= 2600)
        rows, cols = grid_shape(im)
        ax.set_title(
            f"budget {b}: {im.size[1]} x {im.size[0]} px\n{rows} x {cols} = {rows * cols} "
            f"patches, {im.num_soft_tokens} tokens",
            fontsize=8,
        )
        ax.set_xlim(-0.5, widest)
        ax.set_ylim(tallest, -0.5)
        ax.tick_params(labelsize=6)
    fig.suptitle(
        f"original {original_size[1]} x {original_size[0]} px; thin lines: 16-px patches, "
        "thick: 48-px soft tokens",
        fontsize=9,
    )
    return fig


def plot_pooling(image: ProcessedImage, token: int = 0) -> Figure:
    """Which patches make which soft token.

    Left: the resized image, each 3 x 3 block of patches labelled with its soft-token number
    (the pooler's row-major order), ``token`` outlined in red. Right: that token's 9 patches,
    each labelled with its index in the patch list; the pooler averages exactly these rows.
    """
    from matplotlib.patches import Rectangle

    groups = pooling_groups(image.positions)
    rows, cols = grid_shape(image)
    pixels = image_pixels(image)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[2.2, 1])
    left.imshow(pixels, interpolation="nearest")
    _draw_grid(left, image, fine=True)
    per_row = cols // POOLING
    for g in range(image.num_soft_tokens):
        gy, gx = divmod(g, per_row)
        left.text(
            gx * BLOCK + BLOCK / 2, gy * BLOCK + BLOCK / 2, str(g), ha="center", va="center",
            fontsize=6 if image.num_soft_tokens > 80 else 8, color="white",
            bbox={"facecolor": "black", "alpha": 0.45, "pad": 0.6, "linewidth": 0},
        )  # fmt: skip
    gy, gx = divmod(token, per_row)
    left.add_patch(
        Rectangle(
            (gx * BLOCK - 0.5, gy * BLOCK - 0.5), BLOCK, BLOCK, fill=False, color="red", linewidth=2
        )
    )
    left.set_title(f"{image.num_soft_tokens} soft tokens, numbered in pooling order", fontsize=9)
    members = np.flatnonzero(groups == token)
    y0, x0 = gy * BLOCK, gx * BLOCK
    right.imshow(pixels[y0 : y0 + BLOCK, x0 : x0 + BLOCK], interpolation="nearest")
    for i in members:
        x, y = image.positions[i]
        right.text(
            (x - gx * POOLING) * PATCH_SIZE + PATCH_SIZE / 2 - 0.5,
            (y - gy * POOLING) * PATCH_SIZE + PATCH_SIZE / 2 - 0.5,
            f"#{i}\n({x},{y})", ha="center", va="center", fontsize=8, color="white",
            bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.8, "linewidth": 0},
        )  # fmt: skip
    for v in range(0, BLOCK + 1, PATCH_SIZE):
        right.axvline(v - 0.5, color="white", linewidth=1)
        right.axhline(v - 0.5, color="white", linewidth=1)
    right.set_title(f"soft token {token} = mean of patches #i at (x, y)", fontsize=9)
    right.set_xticks([])
    right.set_yticks([])
    return fig


# --- positions: the learned table and axial RoPE ----------------------------------------------


def position_embedding_grid(table: np.ndarray, rows: int, cols: int, dim: int) -> np.ndarray:
    """What the learned table adds to each patch, one channel: ``T[0][x] + T[1][y]``.

    # table [2, P, H] -> [rows, cols]
    """
    return table[0, :cols, dim][None, :] + table[1, :rows, dim][:, None]


def axial_score_map(
    x: np.ndarray, rows: int, cols: int, anchor: tuple[int, int], freq: np.ndarray
) -> np.ndarray:
    """q.k / |x|^2 when the query and every key hold the same vector ``x``, the query at patch
    ``anchor`` = (x, y) and the key at each patch of the grid, both rotated by axial RoPE.

    Without rotation this is 1 everywhere; with it, it depends on (dx, dy) alone.
    # x [D], freq [D/4] -> [rows, cols]
    """
    ys, xs = np.divmod(np.arange(rows * cols), cols)
    n = rows * cols
    keys = np.broadcast_to(x.astype(np.float32), (n, 1, x.size))  # [N, 1, D]
    k = axial_rope(keys, cos_sin(xs, freq), cos_sin(ys, freq))[:, 0]  # [N, D]
    ax_, ay_ = np.array([anchor[0]]), np.array([anchor[1]])
    q = axial_rope(keys[:1], cos_sin(ax_, freq), cos_sin(ay_, freq))[0, 0]  # [D]
    return (k @ q).reshape(rows, cols) / float(x @ x)


def plot_axial_rope(
    freq: np.ndarray, rows: int, cols: int, anchor: tuple[int, int], seed: int = 0
) -> Figure:
    """Axial 2-D RoPE on a patch grid.

    Left: the rotation angle of three frequency pairs of each half, as cos over the grid: the
    first half of a head turns with the column only (vertical stripes), the second with the
    row only (horizontal stripes). Right: the score of one random vector against itself,
    placed at ``anchor`` and at every other patch.  # freq [D/4]
    """
    ys, xs = np.mgrid[0:rows, 0:cols]
    picks = [0, len(freq) // 2, len(freq) - 1]
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    sub = fig.subfigures(1, 2, width_ratios=[1.8, 1])
    axes = sub[0].subplots(2, 3)
    for j, pair in enumerate(picks):
        for half, (coord, label) in enumerate(((xs, "x (column)"), (ys, "y (row)"))):
            ax = axes[half, j]
            ax.imshow(np.cos(coord * freq[pair]), cmap="RdBu_r", vmin=-1, vmax=1)
            ax.set_title(
                f"{'first' if half == 0 else 'second'} half, pair {pair}: "
                f"cos({label[0]} * {freq[pair]:.3g})",
                fontsize=8,
            )
            ax.set_xticks([])
            ax.set_yticks([])
    sub[0].suptitle("the rotation angle over the grid (cos)", fontsize=9)
    x = np.random.default_rng(seed).standard_normal(4 * len(freq)).astype(np.float32)
    score = axial_score_map(x, rows, cols, anchor, freq)
    ax = sub[1].subplots()
    im = ax.imshow(score, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.plot(*anchor, marker="x", color="black", markersize=10)
    ax.set_title(f"same vector, query at {anchor}: score per key patch", fontsize=9)
    sub[1].colorbar(im, ax=ax, shrink=0.8)
    return fig


def plot_position_table(table: np.ndarray, rows: int, cols: int, dims: list[int]) -> Figure:
    """The learned position table: its two halves, and what they add to each patch.

    Top: ``T[0]`` (column) and ``T[1]`` (row), the first rows that a grid uses. Bottom: for a
    few channels, ``T[0][x] + T[1][y]`` over the grid: a sum of a column pattern and a row
    pattern, whatever the values.  # table [2, P, H]
    """
    fig = Figure(figsize=(11, 5.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.1])
    axes = top.subplots(1, 2)
    for ax, (i, n, label) in zip(
        axes, ((0, cols, "x (column)"), (1, rows, "y (row)")), strict=True
    ):
        im = ax.imshow(table[i, :n].T, aspect="auto", cmap="RdBu_r", interpolation="nearest")
        ax.set_title(f"T[{i}][{label[0]}]: rows 0..{n - 1} of {table.shape[1]}", fontsize=9)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("channel", fontsize=8)
        top.colorbar(im, ax=ax, shrink=0.8)
    axes = np.atleast_1d(bottom.subplots(1, len(dims)))
    for ax, d in zip(axes, dims, strict=True):
        ax.imshow(position_embedding_grid(table, rows, cols, d), cmap="RdBu_r")
        ax.set_title(f"channel {d}: T[0][x] + T[1][y]", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


# --- the prompt and its mask -------------------------------------------------------------------


def image_prompt(
    before: int, tokens_in_image: int, after: int, ids: PlaceholderIds, text_id: int = 9
) -> np.ndarray:
    """A toy expanded prompt: ``before`` text ids, one image's block, ``after`` text ids.

    # -> [before + tokens_in_image + 2 + after] int64
    """
    return np.array(
        [text_id] * before
        + [ids.boi]
        + [ids.image] * tokens_in_image
        + [ids.eoi]
        + [text_id] * after,
        dtype=np.int64,
    )


def image_masks(ids: np.ndarray, tokens: PlaceholderIds, window: int) -> dict[str, np.ndarray]:
    """The two masks of a prompt holding images (``use_bidirectional_attention: "vision"``).

    Sliding layers: causal within the window, *or* inside the same image block; full layers:
    causal. # ids [S] -> {"sliding": [S, S] bool, "full": [S, S] bool}
    """
    pos = np.arange(len(ids))
    _, last = vision_block_bounds(pos, ids, tokens)  # each query's last visible position
    return {
        "sliding": visible(pos, pos, window, last),
        "full": visible(pos, pos, 0),
    }


def plot_image_masks(ids: np.ndarray, tokens: PlaceholderIds, window: int) -> Figure:
    """The sliding-layer and full-layer masks side by side, the image block outlined."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    masks = image_masks(ids, tokens, window)
    inside = np.flatnonzero(ids == tokens.image)
    lo, hi = int(inside.min()), int(inside.max())
    labels = [
        {tokens.boi: "<|image>", tokens.image: "img", tokens.eoi: "<image|>"}.get(int(t), "text")
        for t in ids
    ]
    cmap = ListedColormap(["#f4f4f4", "#3b6ea8"])
    fig = Figure(figsize=(11, 5.4), layout="constrained")
    for ax, (name, m) in zip(fig.subplots(1, 2), masks.items(), strict=True):
        extra = m & ~visible(np.arange(len(ids)), np.arange(len(ids)), 0)  # seen ahead
        shown = m.astype(float)
        ax.imshow(shown, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        qs, ks = np.nonzero(extra)
        ax.scatter(ks, qs, marker="s", s=18, color="#e07b39", label="image token ahead")
        ax.add_patch(
            Rectangle((lo - 0.5, lo - 0.5), hi - lo + 1, hi - lo + 1, fill=False, color="red")
        )
        ax.set_xticks(range(len(ids)))
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(ids)))
        ax.set_yticklabels(labels, fontsize=6)
        title = f"sliding layer (window {window})" if name == "sliding" else "full layer (causal)"
        ax.set_title(f"{title}: {int(extra.sum())} keys seen ahead", fontsize=9)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=8)
    return fig


# --- the explorer --------------------------------------------------------------------------


class BudgetExplorer(Explorer):
    """Pick a token budget and a soft token: the image at that budget with its grids, and the 9
    patches pooled into that token (:func:`plot_pooling`).

    ``draw(budget, token)`` works without widgets; a token past the image's count is clamped to
    its last.
    """

    def __init__(self, image: Any, budgets: tuple[int, ...] = (70, 140, 280, 560, 1120)):
        super().__init__()
        from ..image import process_image

        self.budgets = budgets
        self.images = {b: process_image(image, b) for b in budgets}

    def make_controls(self, widgets: Any) -> dict[str, Any]:
        most = max(im.num_soft_tokens for im in self.images.values())
        return {
            "budget": widgets.Dropdown(options=list(self.budgets), value=70, description="budget"),
            "token": widgets.IntSlider(0, 0, most - 1, description="soft token"),
        }

    def draw(self, budget: int, token: int) -> Figure:
        image = self.images[budget]
        token = min(int(token), image.num_soft_tokens - 1)
        self.token = token
        self.figure = plot_pooling(image, token)
        return self.figure
