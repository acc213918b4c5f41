"""The pictures and counting helpers of chapters 2-4 (`gemma4_ref/plots/{ple,attention,rope}.py`).

Figures are drawn off-screen (Agg) and checked for what they show: the heatmap holds the traced
numbers, the mask picture is `attention.visible`, the frequency plot is `rope.inv_freq`. The
parameter and KV-cache counts are checked against the checkpoint and against hand arithmetic.
"""

import subprocess
import sys

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import gemma4_ref  # noqa: E402
from gemma4_ref.attention import visible  # noqa: E402
from gemma4_ref.config import FULL, SLIDING, RopeSpec  # noqa: E402
from gemma4_ref.plots import attention as pa  # noqa: E402
from gemma4_ref.plots import ple as pp  # noqa: E402
from gemma4_ref.plots import rope as pr  # noqa: E402
from gemma4_ref.rope import inv_freq  # noqa: E402

TEXT = "ROMEO.\nBut soft, what light through yonder window breaks? It is the east, and "


@pytest.fixture(scope="module")
def traced():
    model = gemma4_ref.load_model()
    ids = np.array([2] + model.tokenizer.encode(TEXT * 2))
    return model, ids, model.trace(ids)


def _image(fig, axis=0):
    """The array shown by the first image of one axes of a figure."""
    return np.asarray(fig.axes[axis].images[0].get_array())


def test_importing_the_package_does_not_import_matplotlib():
    code = "import sys, gemma4_ref; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- chapter 2 ---------------------------------------------------------------------------------


def test_parameter_count_equals_the_checkpoint(traced):
    model, _, _ = traced
    counts = pp.parameter_counts(model.config)
    assert counts["total"] == pp.checkpoint_parameters(model) == 22_261_850
    assert counts["effective"] == counts["total"] - counts["ple_table"]


def test_parameter_count_of_e2b_by_hand():
    c = pp.parameter_counts(pa.released_config("E2B"))
    V, H, L, P = 262_144, 1536, 35, 256
    assert c["ple_table"] == V * L * P == 2_348_810_240
    assert c["embedding"] == V * H
    # 15 own-KV layers (3 global) with 6144-wide MLPs, 20 consumers (4 global) with 12288
    sliding = 2 * 8 * 256 * H + 256 + 256 * H + 256 + 256 * H  # q, o, q_norm, k, k_norm, v
    full = 2 * 8 * 512 * H + 512 + 512 * H + 512 + 512 * H
    consumer_sliding, consumer_full = 2 * 8 * 256 * H + 256, 2 * 8 * 512 * H + 512
    assert c["attention"] == 12 * sliding + 3 * full + 16 * consumer_sliding + 4 * consumer_full
    assert c["mlp"] == 3 * H * (15 * 6144 + 20 * 12288)
    assert round(c["effective"] / 1e9, 1) == 2.3 and round(c["total"] / 1e9, 1) == 4.6


def test_ple_update_sizes_and_heatmap(traced):
    model, ids, trace = traced
    sizes = pp.ple_update_sizes(model, trace)
    L, S = model.config.num_hidden_layers, len(ids)
    assert sizes["norm"].shape == sizes["relative"].shape == (L, S)
    np.testing.assert_allclose(sizes["norm"][3], np.linalg.norm(trace.ple[3], axis=-1), rtol=1e-6)
    labels = pp.token_labels(model.tokenizer, ids)
    assert labels[0] == "<bos>" and "⏎" in labels and len(labels) == S
    explorer = pp.PLEExplorer(model, trace, labels)
    fig = explorer.draw(token=5, quantity="relative")
    np.testing.assert_allclose(_image(fig), sizes["relative"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == labels
    # the right panel: each layer's two PLE parts for token 5, as bar lengths
    tok, ctx = pp.ple_parts(model, ids)
    widths = np.array([p.get_width() for p in fig.axes[1].patches])
    np.testing.assert_allclose(widths[:L], np.linalg.norm(tok[5], axis=-1), rtol=1e-6)
    np.testing.assert_allclose(widths[L:], np.linalg.norm(ctx[5], axis=-1), rtol=1e-6)
    np.testing.assert_allclose((tok + ctx) * 2**-0.5, trace.per_layer_inputs, rtol=1e-5, atol=1e-6)


def test_ple_widget_redraws_on_a_new_token(traced):
    pytest.importorskip("ipywidgets")
    model, ids, trace = traced
    explorer = pp.PLEExplorer(model, trace, pp.token_labels(model.tokenizer, ids))
    _ = explorer.widget  # builds the controls and draws once
    first = explorer.figure
    explorer.controls["token"].value = 7
    explorer.controls["measure"].value = "norm"
    assert explorer.figure is not first
    np.testing.assert_allclose(_image(explorer.figure), pp.ple_update_sizes(model, trace)["norm"])


def test_parameter_budget_bars_add_up(traced):
    model, _, _ = traced
    fig = pp.plot_parameter_budget({"demo": pp.parameter_counts(model.config)})
    assert sum(p.get_width() for p in fig.axes[0].patches) == pytest.approx(1.0)


# --- chapter 3 ---------------------------------------------------------------------------------


def test_kv_cache_bytes_by_hand():
    e2b = pa.released_config("E2B")
    # 12 sliding layers keep 512 tokens, 3 global layers keep all; 1 KV head; K and V; bf16
    by_hand = 12 * 512 * 1 * 256 * 2 * 2 + 3 * 4096 * 1 * 512 * 2 * 2
    assert pa.kv_cache_bytes(e2b, 4096) == by_hand == 31_457_280
    per_layer = pa.kv_cache_layer_bytes(e2b, 4096)
    assert per_layer[15:].sum() == 0  # KV consumers keep nothing
    # 31B: 50 sliding layers (16 heads) bounded by W = 1024; 10 global (4 heads, K=V: one tensor)
    b31 = pa.released_config("31B")
    sliding = 50 * 1024 * 16 * 256 * 2 * 2
    assert pa.kv_cache_bytes(b31, 20_480) == sliding + 10 * 20_480 * 4 * 512 * 1 * 2
    both = pa.kv_cache_bytes(b31, 20_480, k_eq_v_one_tensor=False)
    assert both == sliding + 10 * 20_480 * 4 * 512 * 2 * 2
    parts = pa.kv_cache_breakdown(b31, 20_480)
    assert parts["sliding"] == parts["global"] == sliding
    assert parts["saved_by_k_eq_v"] == parts["global"] and parts["saved_by_sharing"] == 0


def test_kv_cache_bytes_match_a_real_cache(traced):
    model, ids, _ = traced
    cache = model.new_cache()
    model.step(ids, cache)
    counted = pa.kv_cache_layer_bytes(
        model.config, len(ids), bytes_per_value=4, k_eq_v_one_tensor=False
    )
    for i, c in cache.layers.items():
        filled = c.pos >= 0
        assert c.k[filled].nbytes + c.v[filled].nbytes == counted[i]


def test_released_configs_resolve():
    for name in pa.RELEASED:
        cfg = pa.released_config(name)
        assert cfg.layer_types[-1] == FULL
        assert all(s.head_dim == 512 for s in cfg.layers if s.layer_type == FULL)
    assert pa.released_config("E2B").layers[34].kv_source == 14
    assert pa.released_config("E4B").layers[30].kv_source == 22


def test_mask_picture_is_visible():
    fig = pa.plot_masks(seq_len=10, window=3)
    pos = np.arange(10)
    assert np.array_equal(_image(fig, 0), visible(pos, pos, 0))
    assert np.array_equal(_image(fig, 1), visible(pos, pos, 3))


def test_ring_buffer_history():
    history, labels, written = pa.ring_buffer_history(window=4, n_tokens=10, prefill=6)
    assert history.shape == (5, 4)
    assert history[0].tolist() == [4, 5, 2, 3]  # the last 4 of a 6-token prompt
    assert history[-1].tolist() == [8, 9, 6, 7]  # slot = position mod 4
    assert labels[0] == "prefill 0..5" and written[1].tolist() == [2]
    fig = pa.plot_ring_buffer(history, labels, written)
    assert np.array_equal(np.ma.filled(_image(fig), -1), history)
    history, _, _ = pa.ring_buffer_history(window=4, n_tokens=3)
    assert history[-1].tolist() == [0, 1, 2, -1]  # not yet full


def test_kv_memory_plot_has_a_line_per_variant():
    configs = {n: pa.released_config(n) for n in ("E2B", "31B")}
    contexts = np.array([1024, 4096, 65536])
    fig = pa.plot_kv_memory(configs, contexts)
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["E2B", "31B"]
    gib = [pa.kv_cache_bytes(configs["31B"], int(c)) / 2**30 for c in contexts]
    np.testing.assert_allclose(lines[1].get_ydata(), gib)


def test_attention_explorer_draws_the_traced_map(traced):
    model, ids, trace = traced
    labels = pp.token_labels(model.tokenizer, ids)
    explorer = pa.AttentionExplorer(trace, model.config, labels)
    fig = explorer.draw(layer=4, head=2)
    np.testing.assert_array_equal(_image(fig), trace.attention[4][2])
    assert "global" in fig.axes[0].get_title() and "K=V" in fig.axes[0].get_title()
    pytest.importorskip("ipywidgets")
    _ = explorer.widget
    explorer.controls["layer"].value = 7
    explorer.controls["head"].value = 1
    np.testing.assert_array_equal(_image(explorer.figure), trace.attention[7][1])
    assert "reads layer 5" in explorer.figure.axes[0].get_title()
    grid = pa.plot_attention_layers(trace, model.config, head=0)
    assert len([ax for ax in grid.axes if ax.images]) == model.config.num_hidden_layers


# --- chapter 4 ---------------------------------------------------------------------------------


def test_rotate_and_match_score():
    freq = inv_freq(RopeSpec("proportional", 1e6, 0.25), 64)
    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    placed = pr.rotate(x, np.array([0, 5, 500]), freq)
    assert np.array_equal(placed[0], x)  # position 0 is the identity
    np.testing.assert_allclose(np.linalg.norm(placed, axis=1), np.linalg.norm(x), rtol=1e-6)
    d = np.array([0, 1, 10, 10_000])
    score = pr.match_score(x, freq, d)
    # pair j holds energy x_j^2 + x_{j+32}^2 and contributes it times cos(d f_j); the 24
    # unrotated pairs (f = 0) contribute theirs in full at every distance
    energy = x[:32] ** 2 + x[32:] ** 2
    expected = (energy * np.cos(d[:, None] * freq.astype(np.float64))).sum(1) / (x @ x)
    np.testing.assert_allclose(score, expected, atol=2e-5)
    assert score[0] == pytest.approx(1.0, abs=1e-6)


def test_frequency_plot_shows_inv_freq():
    cfg = pa.released_config("E2B")
    sliding, full = inv_freq(cfg.rope[SLIDING], 256), inv_freq(cfg.rope[FULL], 512)
    fig = pr.plot_frequencies({"sliding": sliding, "global": full}, {"window": 512})
    lines = fig.axes[0].get_lines()
    np.testing.assert_array_equal(lines[0].get_ydata(), sliding)
    np.testing.assert_array_equal(lines[1].get_ydata(), full[:64])  # the rotating pairs
    assert len(lines[2].get_xdata()) == 192  # the crosses of the zero frequencies
    wavelengths = fig.axes[1].get_lines()[1].get_ydata()
    assert wavelengths.max() == pytest.approx(188.25, abs=0.01)
    strip = pr.plot_rotated_dims({"sliding": sliding, "global": full})
    rows = _image(strip)
    assert np.nansum(rows[0]) == 256 and np.nansum(rows[1]) == 128
    assert (rows[1, :64] == 1).all() and (rows[1, 256:320] == 1).all()
    assert (rows[1, 64:256] == 0).all() and np.isnan(rows[0, 256:]).all()  # sliding: D = 256


def test_rotation_and_score_plots():
    freq = inv_freq(RopeSpec("default", 1e4), 32)
    x = np.random.default_rng(1).standard_normal(32).astype(np.float32)
    fig = pr.plot_pair_rotation(x, freq, np.arange(20), pairs=[0, 15])
    offsets = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], pr.rotate(x, np.arange(20), freq)[:, 0], rtol=1e-6)
    scores = np.outer(np.arange(4), np.arange(4)).astype(float)
    assert np.array_equal(_image(pr.plot_relative_scores(scores)), scores)
    d = np.array([1, 10, 100])
    fig = pr.plot_match_scores(d, {"a": np.ones(3), "b": np.zeros(3)})
    assert [ln.get_label() for ln in fig.axes[0].get_lines()[:2]] == ["a", "b"]
