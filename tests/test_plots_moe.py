"""Chapter 5's routing helpers and pictures (`gemma4_ref/plots/moe.py`).

The helpers only gather and count what the package's router decided, so they are checked
against `Model.trace` directly and against hand-made examples; the figures are drawn off-screen
(Agg) and checked for what they show: bar heights are loads and weights, images are router
probabilities, table cells are the ranked tokens.
"""

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import gemma4_ref  # noqa: E402
from gemma4_ref.model import Trace  # noqa: E402
from gemma4_ref.perplexity import windows  # noqa: E402
from gemma4_ref.plots import moe as pm  # noqa: E402
from gemma4_ref.plots.attention import released_config  # noqa: E402
from gemma4_ref.plots.ple import parameter_counts, token_labels  # noqa: E402

PLAY = (
    "[Enter CHARMIAN.]\n\n"
    "CLEOPATRA.\n"
    "Why, that's the way\n"
    "To fool their preparation and to conquer\n"
    "Their most absurd intents.\n\n"
    "CLOWN.\n"
    "Truly, I have him. But I would not be the party that should\n"
    "desire you to touch him, for his biting is immortal.\n\n"
    "GUARD.\n"
    "This is the man.\n"
)


@pytest.fixture(scope="module")
def traced():
    model = gemma4_ref.load_model()
    ids = np.array([2] + model.tokenizer.encode(PLAY))
    return model, ids, model.trace(ids)


def _figure_text(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


# --- gathering routing decisions ---------------------------------------------------------------


def test_routing_of_stacks_the_trace(traced):
    model, ids, trace = traced
    r = pm.routing_of(trace)
    L, E, k = model.config.num_hidden_layers, model.config.num_experts, model.config.top_k_experts
    assert r.probs.shape == (L, len(ids), E) and r.index.shape == r.weights.shape == (
        L,
        len(ids),
        k,
    )
    for i, (probs, index, weights) in enumerate(trace.router):
        assert np.array_equal(r.probs[i], probs) and np.array_equal(r.index[i], index)
        assert np.array_equal(r.weights[i], weights)
    chosen = r.chosen
    assert chosen.sum(-1).max() == chosen.sum(-1).min() == k
    assert chosen[3, 5, r.index[3, 5, 1]] and not chosen[3, 5].all()
    np.testing.assert_allclose(r.load().sum(1), k)
    np.testing.assert_allclose(r.load()[2], chosen[2].mean(0))


def test_collect_routing_joins_windows(traced):
    model, ids, _ = traced
    batch = windows(np.asarray(ids[1:], np.uint16), 24, 2)  # 2 windows of <bos> + 23 tokens
    joined = pm.collect_routing(model, batch)
    assert np.array_equal(joined.ids, batch.ravel())
    second = pm.routing_of(model.trace(batch[1]))
    np.testing.assert_array_equal(joined.index[:, 24:], second.index)
    np.testing.assert_array_equal(joined.probs[:, 24:], second.probs)


def test_routing_of_a_model_without_moe_is_refused():
    trace = Trace(ids=np.array([2]), router=[None])
    with pytest.raises(ValueError, match="no MoE"):
        pm.routing_of(trace)


# --- categories and counts ---------------------------------------------------------------------


def test_token_categories_of_a_play(traced):
    model, ids, _ = traced
    labels = token_labels(model.tokenizer, ids)
    cats = pm.token_categories(model.tokenizer, ids)
    assert len(cats) == len(ids) and cats[0] == "<bos>"
    kind = dict(zip(labels, cats, strict=True))  # the last occurrence of each label wins
    assert kind["CLEOPATRA"] == "speaker name" and kind["CLOWN"] == "speaker name"
    assert kind["Enter"] == "stage direction"
    assert kind["·fool"] == "verse"  # every line of Cleopatra's speech is capitalised
    assert kind["·touch"] == "prose"  # the clown's second line starts with "desire"
    assert kind["·man"] == "one-line speech"
    assert kind[","] == "punctuation" and kind["⏎⏎"] == "line break"
    # the full stop after a speaker's name belongs to the name line
    after_guard = labels.index("ARD") + 1
    assert labels[after_guard] == "." and cats[after_guard] == "speaker name"
    assert set(cats) - {"<bos>"} <= set(pm.CATEGORIES)


def test_category_rates_by_hand():
    chosen = np.zeros((1, 4, 3), bool)  # [L, S, E]
    chosen[0, [0, 1], 0] = True
    chosen[0, [2, 3], 1] = True
    chosen[0, 3, 2] = True
    cats = np.array(["a", "a", "b", "b"])
    rates = pm.category_rates(chosen, cats, names=["a", "b", "c"])
    np.testing.assert_allclose(rates[0, 0], [1, 0, 0])
    np.testing.assert_allclose(rates[1, 0], [0, 1, 0.5])
    assert np.isnan(rates[2]).all()


def test_top_tokens_rank_by_share_then_count():
    ids = np.array([5] * 4 + [6] * 6 + [7] * 2)
    chosen = np.zeros((12, 2), bool)
    chosen[:4, 0] = True  # token 5: always expert 0
    chosen[4:10:2, 0] = True  # token 6: half the time expert 0
    chosen[4:, 1] = True  # tokens 6 and 7: always expert 1
    labels = [f"t{i}" for i in ids]
    top = pm.top_tokens(ids, chosen, labels, n=3, min_count=3)  # token 7 is too rare
    assert top[0] == [("t5", 1.0, 4), ("t6", 0.5, 6)]
    assert top[1] == [("t6", 1.0, 6), ("t5", 0.0, 4)]


def test_active_parameters():
    model = gemma4_ref.load_model()
    demo = pm.active_parameters(model.config)
    stored = model.checkpoint.tensors
    experts = sum(int(np.prod(info.shape)) for n, info in stored.items() if ".experts." in n)
    assert demo["experts"] == experts == 10 * 8 * 3 * 256 * 128
    assert demo["experts_active"] == demo["experts"] // 4
    assert demo["total"] == parameter_counts(model.config)["total"]
    assert demo["active"] == demo["total"] - 6 * demo["experts"] // 8
    big = pm.active_parameters(released_config("26B-A4B"))
    per_expert = 3 * 2816 * 704
    assert big["experts"] == 30 * 128 * per_expert and big["experts_active"] == 30 * 8 * per_expert
    assert round(big["active"] / 1e9, 1) == 3.8 and round(big["total"] / 1e9, 1) == 25.2
    dense = pm.active_parameters(released_config("31B"))
    assert dense["active"] == dense["total"] and dense["experts"] == 0


# --- figures -----------------------------------------------------------------------------------


def test_block_diagram_reads_the_config(traced):
    model, _, _ = traced
    fig = pm.moe_block_diagram(model.config)
    gids = {p.get_gid() for p in fig.axes[0].patches}
    assert {"moe:router", "moe:experts", "moe:mlp", "moe:post_norm_2"} <= gids
    text = " ".join(_figure_text(fig))
    assert "2 of 8 GeGLU experts" in text and "768 or 1536" in text
    big = " ".join(_figure_text(pm.moe_block_diagram(released_config("26B-A4B"))))
    assert "8 of 128 GeGLU experts" in big and "2816 → 704 → 2816" in big


def test_expert_load_bars(traced):
    _, _, trace = traced
    load = pm.routing_of(trace).load()
    fig = pm.plot_expert_load(load, k=2)
    L, E = load.shape
    assert len(fig.axes) == L
    for i, ax in enumerate(fig.axes):
        np.testing.assert_allclose([p.get_height() for p in ax.patches], load[i])
        assert ax.get_lines()[0].get_ydata()[0] == pytest.approx(2 / E)


def test_token_expert_map(traced):
    model, ids, trace = traced
    r = pm.routing_of(trace)
    labels = token_labels(model.tokenizer, ids)
    fig = pm.plot_token_experts(r, labels, layers=[0, 8])
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 2
    np.testing.assert_allclose(images[1].images[0].get_array(), r.probs[8].T * 8, rtol=1e-6)
    dots = images[1].collections[0].get_offsets()  # (token, expert) of every chosen pair
    assert sorted(map(tuple, np.asarray(dots).astype(int).tolist())) == sorted(
        (s, int(e)) for s in range(len(ids)) for e in r.index[8, s]
    )
    assert [t.get_text() for t in images[-1].get_xticklabels()] == labels


def test_category_and_scale_plots(traced):
    model, ids, trace = traced
    r = pm.routing_of(trace)
    cats = pm.token_categories(model.tokenizer, ids)
    rates = pm.category_rates(r.chosen, cats)
    fig = pm.plot_category_rates(rates, layers=[1, 4])
    assert [ax.get_title() for ax in fig.axes[:2]] == ["layer 1", "layer 4"]
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), rates[:, 4])
    scales = np.stack([layer.moe.per_expert_scale for layer in model.layers])
    fig = pm.plot_scale_vs_load(r.load(), scales)
    points = fig.axes[0].collections[0].get_offsets()  # layer 0's experts
    np.testing.assert_allclose(points, np.c_[r.load()[0], scales[0]], rtol=1e-6)


def test_top_token_table(traced):
    model, ids, trace = traced
    r = pm.routing_of(trace)
    top = pm.top_tokens(ids, r.chosen[8], token_labels(model.tokenizer, ids), n=3, min_count=2)
    load = r.load()[8]
    fig = pm.plot_top_tokens(top, load, layer=8)
    cells = fig.axes[0].tables[0].get_celld()
    for e in range(len(top)):
        assert cells[0, e].get_text().get_text().startswith(f"expert {e}\nload ")
        if load[e] < 0.01:
            assert cells[1, e].get_text().get_text() == "(unused)"
        elif top[e]:
            label, share, count = top[e][0]
            assert cells[1, e].get_text().get_text() == f"{label} {100 * share:.0f}% ×{count}"


def test_active_parameter_bars():
    counts = {"26B-A4B": pm.active_parameters(released_config("26B-A4B"))}
    fig = pm.plot_active_parameters(counts)
    widths = [p.get_width() for p in fig.axes[0].patches]  # stored: rest, experts; per token
    c = counts["26B-A4B"]
    assert sum(widths[:2]) == pytest.approx(1.0)
    assert sum(widths[2:4]) == pytest.approx(c["active"] / c["total"])
    assert "3.82B" in _figure_text(fig) and "25.23B" in _figure_text(fig)


def test_router_explorer(traced):
    model, ids, trace = traced
    r = pm.routing_of(trace)
    labels = token_labels(model.tokenizer, ids)
    explorer = pm.RouterExplorer(model, r, labels)
    fig = explorer.draw(token=6, layer=8)
    ax, bx = fig.axes
    np.testing.assert_allclose([p.get_height() for p in ax.patches], r.probs[8, 6])
    colors = [matplotlib.colors.to_hex(p.get_facecolor()) for p in ax.patches]
    assert {i for i, c in enumerate(colors) if c == pm.CHOSEN_COLOR} == set(r.index[8, 6])
    top = r.probs[8, 6, r.index[8, 6]]
    heights = np.array([p.get_height() for p in bx.patches]).reshape(3, -1)
    np.testing.assert_allclose(heights[0], top)
    np.testing.assert_allclose(heights[1], top / top.sum(), rtol=1e-6)
    np.testing.assert_allclose(heights[2], r.weights[8, 6], rtol=1e-6)  # what the model used
    assert labels[6] in ax.get_title()
    pytest.importorskip("ipywidgets")
    _ = explorer.widget
    first = explorer.figure
    explorer.controls["token"].value = 9
    explorer.controls["layer"].value = 3
    assert explorer.figure is not first
    np.testing.assert_allclose(
        [p.get_height() for p in explorer.figure.axes[0].patches], r.probs[3, 9]
    )
