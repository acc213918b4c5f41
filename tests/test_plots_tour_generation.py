"""The book's pictures and widgets for chapters 0, 1 and 7 (gemma4_ref.plots.tour, .generation):
each returns a figure (or widget) with the right content, drawn headless with Agg."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import gemma4_ref
from gemma4_ref.config import text_config_from_dict

matplotlib = pytest.importorskip("matplotlib", reason="the notebooks extra draws with matplotlib")
matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Rectangle  # noqa: E402

from gemma4_ref.plots import figure_png, generation, tour  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model():
    return gemma4_ref.load_model()


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text)]


def _gids(fig: Figure) -> list[str]:
    return [p.get_gid() for p in fig.findobj(matplotlib.patches.Patch) if p.get_gid()]


def test_importing_the_package_does_not_import_matplotlib():
    code = (
        "import sys, gemma4_ref, gemma4_ref.plots, gemma4_ref.plots.tour, "
        "gemma4_ref.plots.generation; "
        "bad = [m for m in ('matplotlib', 'ipywidgets') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- chapter 0: the forward-pass diagram -------------------------------------------------------


def test_forward_diagram_is_drawn_from_the_config(model):
    cfg = model.config
    fig = tour.forward_diagram(cfg)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    gids = _gids(fig)
    for stage in ("ids", "embedding", "ple", "layers", "norm", "head", "softcap"):
        assert f"stage:{stage}" in gids
    for part in ("attn", "mlp", "moe", "ple_gate", "scalar"):
        assert f"stage:layer.{part}" in gids
    text = "\n".join(_texts(fig))
    H, V = cfg.hidden_size, cfg.vocab_size
    for shape in (f"[S, {H}]", f"[S, {V}]", f"[S, {cfg.num_hidden_layers}, 64]", "[S, 4, 64]"):
        assert shape in text
    assert "k=v [S, 1, 128]" in text  # the global layers' single shared K=V head
    assert "30·tanh(z / 30)" in text and "window 64" in text and "top-2 of 8" in text
    assert "256→768→256" in text and "1536 wide on layers 6-9" in text
    assert figure_png(fig, dpi=40).startswith(PNG_MAGIC)


def test_layer_stack_one_row_per_layer(model):
    cfg = model.config
    fig = tour.layer_stack(cfg)
    boxes = {p.get_gid(): p for p in fig.findobj(FancyBboxPatch) if p.get_gid()}
    assert sorted(boxes) == sorted(f"layer:{i}" for i in range(cfg.num_hidden_layers))
    sliding = matplotlib.colors.to_rgba(tour.SLIDING_COLOR)
    for spec in cfg.layers:  # colour by attention type, hatched when KV-sharing
        box = boxes[f"layer:{spec.index}"]
        assert bool(box.get_hatch()) == spec.shares_kv
        assert (box.get_facecolor() == sliding) == spec.is_sliding
    text = "\n".join(_texts(fig))
    assert "reads L5's KV" in text and "reads L4's KV" in text and "MoE top-2 of 8" in text
    # rows run top to bottom, first layer first
    ys = [boxes[f"layer:{i}"].get_y() for i in range(cfg.num_hidden_layers)]
    assert ys == sorted(ys, reverse=True)


def test_forward_diagram_follows_another_config(model):
    raw = json.loads((model.path / "config.json").read_text())
    raw.update(
        num_kv_shared_layers=0,
        enable_moe_block=False,
        use_double_wide_mlp=False,
        hidden_size_per_layer_input=0,
        final_logit_softcapping=None,
    )
    cfg = text_config_from_dict(raw)
    fig = tour.forward_diagram(cfg, seq_len=7)
    gids = _gids(fig)
    assert "stage:ple" not in gids and "stage:layer.moe" not in gids
    assert "stage:layer.ple_gate" not in gids
    text = "\n".join(_texts(fig))
    assert "[7, 4096]" in text and "S = 7 tokens" in text and "no soft-cap" in text
    assert "1536" not in text and "wide on layers" not in text
    stack = tour.layer_stack(cfg)
    assert not any(p.get_hatch() for p in stack.findobj(FancyBboxPatch))
    stack_text = "\n".join(_texts(stack))
    assert "reads L" not in stack_text and "every layer also has" not in stack_text


def test_forward_shapes_match_a_real_forward_pass(model):
    ids = [2] + model.tokenizer.encode("ROMEO. But soft")
    shapes = tour.forward_shapes(model.config, len(ids))
    trace = model.trace(ids)
    assert trace.per_layer_inputs.shape == shapes["per_layer_inputs"]
    assert trace.logits.shape == shapes["logits"]
    assert all(x.shape == shapes["residual"] for x in trace.residual)
    for spec, probs in zip(model.config.layers, trace.attention, strict=True):
        assert probs.shape[0] == shapes[f"q.{spec.layer_type}"][1]
    cache = model.new_cache()
    model.step(ids, cache)
    for i, layer in cache.layers.items():
        kind = model.config.layers[i].layer_type
        assert layer.k.shape[1:] == shapes[f"kv.{kind}"][1:]


def test_layer_rows(model):
    rows = tour.layer_rows(model.config)
    assert [r["kind"] for r in rows] == [
        "sliding" if t == "sliding_attention" else "global" for t in model.config.layer_types
    ]
    assert [r["kv_source"] for r in rows] == [s.kv_source for s in model.config.layers]
    assert rows[4]["rope"].startswith("p-RoPE 0.25") and rows[0]["window"] == 64
    assert rows[4]["window"] == 0 and rows[4]["k_eq_v"] and rows[9]["mlp"] == 1536


# --- chapter 0/1: tokens and predictions --------------------------------------------------------


def test_token_boxes_one_box_per_token_coloured_by_kind(model):
    tok = model.tokenizer
    ids = tok.encode(model.render_chat([{"role": "user", "content": "A rose 🌹"}]))
    fig = tour.token_boxes(tok, ids)
    boxes = [p for p in fig.findobj(Rectangle) if (p.get_gid() or "").startswith("token:")]
    assert len(boxes) == len(ids)
    kinds = [b.get_gid().split(":")[2] for b in boxes]
    assert kinds == [tour.token_kind(tok, i) for i in ids]
    assert kinds.count("byte") == 4  # the rose's four UTF-8 bytes
    assert kinds[0] == "special" and tok.id_to_token(ids[0]) == "<bos>"
    special = matplotlib.colors.to_rgba(tour.SPECIAL_COLOR)
    assert all(
        (b.get_facecolor() == special) == (k == "special")
        for b, k in zip(boxes, kinds, strict=True)
    )
    text = _texts(fig)
    assert "<|turn>" in text and "<0xF0>" in text and "▁rose" in text and str(ids[-1]) in text
    html = tour.token_table(tok, ids)
    assert html.count("<tr>") == len(ids) + 1 and "&lt;|turn&gt;" in html


def test_predictions_figure(model):
    tok = model.tokenizer
    ids = [2] + tok.encode("ROMEO.\nBut soft, what light through yonder window breaks?")
    logits = model.forward(ids)
    fig = tour.predictions_figure(tok, ids, logits)
    (ax,) = fig.axes
    bars = ax.patches
    assert len(bars) == len(ids) - 1
    z = logits[:-1].astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = p[np.arange(len(ids) - 1), ids[1:]]
    np.testing.assert_allclose([b.get_height() for b in bars], expected, rtol=1e-6)
    top1 = int((logits[:-1].argmax(1) == np.array(ids[1:])).sum())
    ppl = math.exp(-np.log(expected).mean())
    assert ax.get_title().startswith(f"{top1} of {len(ids) - 1}")
    assert f"perplexity {ppl:.1f}" in ax.get_title()


# --- widgets -------------------------------------------------------------------------------------


def test_generate_widget_runs_the_model(model):
    pytest.importorskip("ipywidgets")
    tok = model.tokenizer
    out = tour.run_prompt(model, "text", "ROMEO. But soft", 6, 0.0, 0)
    new = model.generate([2] + tok.encode("ROMEO. But soft"), max_new_tokens=6, temperature=0.0)
    assert out == "ROMEO. But soft" + tok.decode(new, skip_special_tokens=True)
    chat = tour.run_prompt(model, "think", "What say you, my lord?", 40, 0.0, 0)
    assert chat.startswith("> What say you") and "[thinking]" in chat and "[answer]" in chat

    box = tour.generate_widget(model, prompt="ROMEO. But soft")
    mode, _text, knobs, buttons, result = box.children
    knobs.children[0].value = 6  # new tokens
    buttons.children[0].click()
    assert result.value == out
    mode.value = "chat"
    buttons.children[0].click()
    assert result.value.startswith("> ROMEO. But soft\n[answer]")


def test_tokenizer_widget_redraws(model):
    pytest.importorskip("ipywidgets")
    box = tour.tokenizer_widget(model.tokenizer, text="hello")
    area, label, image = box.children
    first = bytes(image.value)
    assert first.startswith(PNG_MAGIC)
    assert f"<b>{len(model.tokenizer.encode('hello'))}</b> tokens" in label.value
    area.value = "A rose 🌹 by any other name"
    assert bytes(image.value) != first and bytes(image.value).startswith(PNG_MAGIC)
    assert f"<b>{len(model.tokenizer.encode(area.value))}</b> tokens" in label.value


# --- chapter 7: sampling ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logits(model):
    ids = [2] + model.tokenizer.encode("ROMEO.\nBut soft, what light through yonder window")
    return model.forward(ids)[-1]


def test_distributions(logits):
    raw, same = generation.distributions(logits)
    np.testing.assert_allclose(raw, same, atol=1e-12)
    np.testing.assert_allclose(raw.sum(), 1.0)
    _, greedy = generation.distributions(logits, temperature=0.0)
    assert greedy.sum() == 1.0 and greedy[np.argmax(logits)] == 1.0
    _, k5 = generation.distributions(logits, top_k=5)
    assert (k5 > 0).sum() == 5 and set(np.flatnonzero(k5)) == set(np.argsort(-logits)[:5])
    _, nucleus = generation.distributions(logits, top_p=0.5)
    kept = np.sort(raw[nucleus > 0])[::-1]
    assert kept.sum() >= 0.5 and kept[:-1].sum() < 0.5  # the smallest set reaching p
    _, cold = generation.distributions(logits, temperature=0.5)
    assert generation.entropy_bits(cold) < generation.entropy_bits(raw)


def test_next_token_figure(model, logits):
    fig = generation.next_token_figure(logits, model.tokenizer, 1.0, top_k=5, n=12)
    ax, ax2 = fig.axes
    assert len(ax.patches) == 24  # model and sampler bars for the 12 most likely tokens
    removed = ax.lines[0]
    assert len(removed.get_xdata()) == 12 - 5  # a red x under every token top-k removed
    labels = [t.get_text() for t in ax.get_xticklabels()]
    top = np.argsort(-logits, kind="stable")[:12]
    assert labels == [model.tokenizer.id_to_token(int(i)).replace("\n", "⏎") for i in top]
    assert ax.get_title().startswith("T = 1, top-k = 5, top-p = 1: 5 of 4096 tokens")
    assert [line.get_label() for line in ax2.lines][-1] == "top-k = 5"
    cum = ax2.lines[1].get_ydata()
    assert cum[4] == pytest.approx(1.0) and cum[3] < 1.0


def test_sampling_widget_redraws(model, logits):
    pytest.importorskip("ipywidgets")
    box = generation.sampling_widget(logits, model.tokenizer, n=8)
    sliders, image = box.children
    temperature, top_k, top_p = sliders.children
    first = bytes(image.value)
    assert first.startswith(PNG_MAGIC)
    top_k.value = 3
    second = bytes(image.value)
    assert second != first
    temperature.value = 0.0
    assert bytes(image.value) != second and bytes(image.value).startswith(PNG_MAGIC)


# --- chapter 7: drift and bugs ------------------------------------------------------------------


def test_drift_and_its_figure():
    a = np.zeros((5, 3), np.float32)
    b = a.copy()
    b[3, 1] = -0.5
    np.testing.assert_array_equal(generation.drift(a, b), [0, 0, 0, 0.5, 0])
    with pytest.raises(ValueError, match="shapes differ"):
        generation.drift(a, b[:4])
    curves = {"right": np.zeros(5), "wrong": np.array([0, 1e-3, 1.0, 2.0, 3.0])}
    fig = generation.drift_figure(curves, window=2, tolerance=1e-4)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    labels = [line.get_label() for line in ax.lines]
    assert labels[:2] == ["right", "wrong"] and "pass line (1.0e-04)" in labels
    assert np.all(ax.lines[0].get_ydata() > 0)  # zeros drawn at the floor, not lost
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["right", "wrong"]


def test_injected_bugs_change_the_model_and_are_removed(model):
    import gemma4_ref.model as model_module

    W = model.config.sliding_window
    ids = [2] + model.tokenizer.encode("ROMEO. But soft, what light through yonder window? " * 6)
    ids = ids[: W + 6]
    good = model.forward(ids)
    originals = (model_module.rms_norm, model_module.attention)
    for name in generation.BUGS:
        with generation.inject(name):
            bad = model.forward(ids)
        diff = generation.drift(bad, good)
        if name == "window off by one":  # identical until a key falls out of the window
            assert np.all(diff[:W] == 0) and diff[W:].max() > 1e-3
        elif name == "attention scale 1/sqrt(d)":  # one key at position 0: softmax is 1
            assert diff[0] < 1e-4 and diff[1:].min() > 1e-3
        else:
            assert diff.min() > 1e-2
        assert (model_module.rms_norm, model_module.attention) == originals
    with pytest.raises(RuntimeError), generation.inject("norm x*(1+w)"):
        raise RuntimeError("the bug is removed even when the block fails")
    assert (model_module.rms_norm, model_module.attention) == originals
    np.testing.assert_array_equal(model.forward(ids), good)
