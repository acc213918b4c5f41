"""The pictures and helpers of chapters 9 and 10 (`gemma4_ref/plots/{vision,audio}.py`).

Figures are drawn off-screen (Agg) and checked for what they show: grids that cover the image,
pooling groups that are `vision.pool`'s, a merge that is the unified processor's, token spans
that tile the mel frames, and an attention pattern that is `audio.local_attention_ref`'s. The
tiny random checkpoints are checked to load into the package's towers. Speed is never asserted.
"""

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from gemma4_ref.audio import local_attention_ref  # noqa: E402
from gemma4_ref.audio_features import log_mel_features, num_audio_soft_tokens  # noqa: E402
from gemma4_ref.image import SUPPORTED_SOFT_TOKENS, process_image  # noqa: E402
from gemma4_ref.multimodal import PlaceholderIds  # noqa: E402
from gemma4_ref.plots import audio as pa  # noqa: E402
from gemma4_ref.plots import vision as pv  # noqa: E402
from gemma4_ref.unified import process_unified_image  # noqa: E402
from gemma4_ref.vision import pool  # noqa: E402

TOKENS = PlaceholderIds(boi=5, image=6, eoi=7)


@pytest.fixture(scope="module")
def scene():
    return pv.draw_scene(300, 200, seed=1)


@pytest.fixture(scope="module")
def clip():
    return pa.make_waveform(1.2, seed=3)


# --- vision ------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", SUPPORTED_SOFT_TOKENS)
def test_patch_grid_covers_the_resized_image(scene, budget):
    image = process_image(scene, budget)
    rows, cols = pv.grid_shape(image)
    assert rows * cols == len(image.patches) == 9 * image.num_soft_tokens
    assert rows % 3 == 0 and cols % 3 == 0
    back = pv.image_pixels(image)
    assert back.shape == (*image.size, 3)
    np.testing.assert_array_equal(back[:16, 16:32].reshape(-1), image.patches[1])


def test_pooling_groups_are_the_poolers(scene):
    """Each patch in exactly one group of 9, and the groups are `vision.pool`'s rows."""
    image = process_image(scene, 70)
    groups = pv.pooling_groups(image.positions)
    assert np.array_equal(np.bincount(groups), np.full(image.num_soft_tokens, 9))
    one_hot = pool(np.eye(len(groups), dtype=np.float32), image.positions, 3) * 9  # [G, N]
    np.testing.assert_allclose(one_hot.sum(0), 1.0)
    np.testing.assert_array_equal(one_hot.argmax(0), groups)


def test_merge_patches_is_the_unified_processor(scene):
    small = process_image(scene, 140)
    merged = pv.merge_patches(small.patches, small.positions)
    big = process_unified_image(scene, 140)
    assert merged.shape == big.patches.shape == (small.num_soft_tokens, 48 * 48 * 3)
    # the two rescale 1/255 in float64 and float32: one ulp apart at most
    np.testing.assert_allclose(merged, big.patches, rtol=0, atol=1e-7)


def test_padded_batch_pads_like_transformers(scene):
    image = process_image(scene, 70)
    pixels, positions = pv.padded_batch(image, 70)
    n = len(image.patches)
    assert pixels.shape == (1, 630, 768) and positions.shape == (1, 630, 2)
    assert not pixels[0, n:].any() and (positions[0, n:] == -1).all()
    np.testing.assert_array_equal(positions[0, :n], image.positions)


def test_image_masks_open_the_block_on_sliding_layers_only():
    ids = pv.image_prompt(3, 9, 2, TOKENS)
    masks = pv.image_masks(ids, TOKENS, window=4)
    block = np.flatnonzero(ids == TOKENS.image)
    inner = masks["sliding"][np.ix_(block, block)]
    # every image token sees the rest of its image ahead; behind, the window still cuts
    np.testing.assert_array_equal(inner, block[None, :] > block[:, None] - 4)
    assert not np.triu(masks["full"], 1).any()  # full layers stay causal
    ahead = np.triu(masks["sliding"], 1)
    assert ahead.sum() == 9 * 8 // 2 and ahead[np.ix_(block, block)].sum() == ahead.sum()
    fig = pv.plot_image_masks(ids, TOKENS, 4)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), masks["sliding"])


def test_axial_score_depends_on_the_offset_only():
    freq = 1.0 / 100.0 ** (np.arange(0, 8, 2, dtype=np.float32) / 8)  # head_dim 16: [4]
    x = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    a = pv.axial_score_map(x, 9, 12, (3, 2), freq)
    b = pv.axial_score_map(x, 9, 12, (5, 4), freq)
    assert a[2, 3] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(a[0:7, 0:10], b[2:9, 2:12], atol=1e-5)


def test_position_grid_is_a_column_plus_a_row_pattern():
    table = np.random.default_rng(1).standard_normal((2, 20, 4)).astype(np.float32)
    grid = pv.position_embedding_grid(table, 6, 9, dim=2)
    assert grid.shape == (6, 9)
    assert grid[4, 7] == table[0, 7, 2] + table[1, 4, 2]


def test_budget_explorer_highlights_the_pooled_patches(scene):
    explorer = pv.BudgetExplorer(scene, budgets=(70, 140))
    fig = explorer.draw(140, 10)
    assert explorer.figure is fig and explorer.token == 10
    image = explorer.images[140]
    per_row = pv.grid_shape(image)[1] // 3
    red = [p for p in fig.axes[0].patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert len(red) == 1
    assert red[0].get_xy() == (10 % per_row * 48 - 0.5, 10 // per_row * 48 - 0.5)
    zoomed = fig.axes[1].images[0].get_array()
    assert zoomed.shape == (48, 48, 3)
    explorer.draw(70, 10_000)  # past the last token: clamped
    assert explorer.token == explorer.images[70].num_soft_tokens - 1


def test_budget_figure_has_a_panel_per_budget(scene):
    images = {b: process_image(scene, b) for b in (70, 280)}
    fig = pv.plot_budgets(images, (200, 300))
    shown = [ax.images[0].get_array().shape[:2] for ax in fig.axes if ax.images]
    assert shown == [images[70].size, images[280].size]


def test_tiny_vision_checkpoint_loads_into_the_tower(tmp_path, scene):
    pytest.importorskip("transformers")
    import torch

    import gemma4_ref

    hf = pv.tiny_vision_checkpoint(tmp_path, seed=2)
    tower = gemma4_ref.load_model(tmp_path).vision
    image = process_image(scene, 70)
    pixels, positions = pv.padded_batch(image, 70)
    with torch.no_grad():
        ref = hf.model.get_image_features(
            torch.from_numpy(pixels), torch.from_numpy(positions), return_dict=True
        ).pooler_output[0]
    ours = tower(image.patches, image.positions)
    assert ours.shape == (image.num_soft_tokens, pv.TINY_TEXT["hidden_size"])
    assert np.abs(ours - ref.numpy()).max() <= 1e-4 * np.abs(ref.numpy()).max()


# --- audio -------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 2, 4, 5, 8, 117, 239])
def test_token_spans_tile_the_valid_frames(frames):
    spans = pa.token_spans(frames)
    assert spans[0, 0] == 0 and spans[-1, 1] == frames
    assert np.array_equal(spans[1:, 0], spans[:-1, 1])
    assert (spans[:, 1] > spans[:, 0]).all()


def test_token_count_matches_the_feature_extractor(clip):
    feats = log_mel_features(clip)
    spans = pa.token_spans(int(feats.mask.sum()))
    assert len(spans) == feats.num_soft_tokens == num_audio_soft_tokens(len(clip))


def test_receptive_field_is_what_the_convolutions_read():
    """Perturb one mel frame: exactly the tokens whose receptive field holds it change."""
    from gemma4_ref.audio import conv_block_ref

    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    w1 = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    norm = np.ones(4, np.float32)
    x = rng.standard_normal((37, 8, 1)).astype(np.float32)

    def tokens(x):
        return conv_block_ref(conv_block_ref(x, w0, norm, 1e-6), w1, norm, 1e-6)

    base = tokens(x)
    for frame in (0, 5, 18, 36):
        y = x.copy()
        y[frame] += 10.0
        changed = set(np.flatnonzero(np.abs(tokens(y) - base).max(axis=(1, 2)) > 0))
        expect = {
            n
            for n in range(len(base))
            if pa.receptive_field(n, 37)[0] <= frame < pa.receptive_field(n, 37)[1]
        }
        assert changed == expect, frame


@pytest.mark.parametrize("left,right", [(13, 0), (8, 3)])
def test_local_visibility_is_the_reference_attentions(left, right):
    """With zero queries each visible key gets equal weight, so identity values reveal the mask."""
    t = 30
    q = np.zeros((t, 1, t), np.float32)
    v = np.eye(t, dtype=np.float32)[:, None, :]
    rel = np.zeros(((left + right) // 2 + 7, 1, t), np.float32)
    weights = local_attention_ref(q, q, v, rel, left, right, 50.0)[:, 0, :]
    np.testing.assert_array_equal(weights > 0, pa.local_visibility(t, left, right))


def test_block_contexts_hold_every_visible_key():
    t = 50
    vis = pa.local_visibility(t)
    blocks = pa.block_contexts(t)
    assert [q0 for q0, *_ in blocks] == list(range(0, t, 12))
    for q0, q1, k0, k1 in blocks:
        keys = np.flatnonzero(vis[q0:q1].any(axis=0))
        assert k0 <= keys.min() and keys.max() < k1


def test_mel_figure_shows_the_features(clip):
    feats = log_mel_features(clip)
    fig = pa.plot_mel_tokens(feats.features, feats.mask, token=3)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), feats.features.T)


def test_token_explorer_marks_own_frames_and_reach(clip):
    feats = log_mel_features(clip)
    explorer = pa.TokenExplorer(feats.features, feats.mask)
    fig = explorer.draw(20)
    assert explorer.figure is fig
    row = fig.axes[1].images[0].get_array()[0]
    np.testing.assert_array_equal(np.flatnonzero(row), np.arange(9, 21))  # itself + 11 back
    assert explorer.reach(20) == (4 * 9 - 3, 4 * 20 + 4)
    assert explorer.reach(0) == (0, 4)
    assert "owns frames 80-83" in fig.axes[0].get_title()


def test_waveform_is_a_valid_clip(clip):
    assert clip.dtype == np.float64 and np.abs(clip).max() <= 1.0
    assert len(clip) == round(1.2 * 16_000)
    pa.plot_waveform(clip)
    pa.plot_unified_frames(clip, seconds=0.2)
    pa.plot_local_attention(30, query=5)


def test_tiny_audio_checkpoint_loads_into_the_tower(tmp_path, clip):
    transformers = pytest.importorskip("transformers")
    import torch

    from gemma4_ref.audio import AudioTower

    hf = pa.tiny_audio_checkpoint(tmp_path, seed=4)
    tower = AudioTower.load(tmp_path)
    batch = transformers.Gemma4AudioFeatureExtractor()([clip], return_tensors="np")
    feats = log_mel_features(clip)
    with torch.no_grad():
        out = hf.model.get_audio_features(
            torch.from_numpy(batch["input_features"]),
            torch.from_numpy(batch["input_features_mask"]),
            return_dict=True,
        )
    ref = out.pooler_output[0][out.attention_mask[0]].numpy()
    ours = tower(feats.features, feats.mask)
    assert ours.shape == (feats.num_soft_tokens, pv.TINY_TEXT["hidden_size"])
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()
