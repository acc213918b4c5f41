"""Chapter 6's pictures and helpers (`gemma4_ref/plots/int4.py`), on the demo model's bf16 and
w4a16 checkpoints.

Figures are drawn off-screen (Agg) and checked for what they show: the word picture holds
`unpack_ref`'s integers, the scale heatmap the stored scales, the layout picture the real
packers' nibble order. The Q4_0 codec must round-trip, put weight k and k + 16 in byte k, and
write the same bytes as llama.cpp's own Python quantizer (its `gguf-py`, published on PyPI as
`gguf`, pinned in the test extra).
"""

from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import gemma4_ref  # noqa: E402
from gemma4_ref.int4 import QuantizedLinear, dequantize_ref, quantize_ref, unpack_ref  # noqa: E402
from gemma4_ref.linear import Linear, bf16_to_f32, widen  # noqa: E402
from gemma4_ref.plots import int4 as pi  # noqa: E402
from gemma4_ref.quantize import quantize_checkpoint  # noqa: E402

DENSE = Path(gemma4_ref.DEFAULT_MODEL)
PACKED = DENSE.with_name(DENSE.name + "-w4a16")
Q_PROJ = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def models():
    return gemma4_ref.load_model(DENSE), gemma4_ref.load_model(PACKED)


@pytest.fixture(scope="module")
def layers(models):
    dense, packed = models
    return pi.linear_layers(dense), pi.quantized_layers(packed)


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


# --- finding layers -------------------------------------------------------------------------------


def test_linear_layers_match_by_name(models, layers):
    dense_model, packed_model = models
    dense, packed = layers
    cfg = packed_model.config
    # q, o, gate, up, down, two PLE linears per layer, k per own-KV layer, v where K != V,
    # and the model-level PLE projection; the routers stay bf16
    own_kv = [s for s in cfg.layers if not s.shares_kv]
    expected = 7 * cfg.num_hidden_layers + len(own_kv) + sum(not s.k_eq_v for s in own_kv) + 1
    assert len(packed) == expected == 82
    assert set(dense) - set(packed) == {f"model.layers.{i}.router.proj" for i in range(10)}
    assert all(isinstance(v, QuantizedLinear) for v in packed.values())
    assert all(isinstance(v, Linear) for v in dense.values())
    for name, lin in packed.items():
        assert (lin.out_features, lin.in_features) == dense[name].weight.shape
    assert pi.kind(Q_PROJ) == "q_proj" and pi.short_name(Q_PROJ) == "L0 q_proj"
    assert set(map(pi.kind, packed)) == set(pi.KINDS)


# --- one word, scales, a group --------------------------------------------------------------------


def test_word_picture_shows_unpack_ref(layers):
    _, packed = layers
    word = pi.words(packed[Q_PROJ])[0, 0]
    q = unpack_ref(np.array([[word]], np.int32), 4, 8)[0]
    fig = pi.plot_word(word)
    texts = _texts(fig)
    assert [f"{int(v) + 8} − 8 = {int(v):+d}" for v in q] == [t for t in texts if " − 8 = " in t]
    # the big hex digits are drawn nibble 0 first: reversed, they spell the word in hex
    big = [t.get_text() for t in fig.axes[0].texts if t.get_fontweight() == "bold"]
    assert "".join(reversed(big)) == f"{int(word) & 0xFFFFFFFF:08X}"
    assert [t for t in texts if t.startswith("w[")] == [f"w[{j}]" for j in range(8)]


def test_word_picture_takes_unsigned_words():
    texts = _texts(pi.plot_word(0xF0000001))  # nibble 0 = 1, nibble 7 = F
    assert "1 − 8 = -7" in texts and "15 − 8 = +7" in texts and "0 − 8 = -8" in texts


def test_scale_heatmap_is_the_stored_scales(layers):
    _, packed = layers
    lin = packed["model.layers.0.mlp.down_proj"]
    fig = pi.plot_scales(lin)
    shown = np.asarray(fig.axes[0].images[0].get_array())
    np.testing.assert_array_equal(shown, bf16_to_f32(lin.scale).T)
    assert np.array_equal(pi.scale_f32(lin), bf16_to_f32(lin.scale))


def test_levels_and_group_picture(layers):
    dense, packed = layers
    lin = packed[Q_PROJ]
    s = float(pi.scale_f32(lin)[0, 0])
    lv = pi.levels(s)
    assert lv.shape == (16,) and lv[8] == 0 and lv[0] == -8 * s and lv[12] == 4 * s
    deq = lin.dequantize(0, 1)[0, :32]
    assert set(deq) <= set(lv)  # every stored value is one of the group's 16 levels
    w = widen(dense[Q_PROJ].weight[0, :32], "bf16")
    fig = pi.plot_group(deq, s, w)
    lines = fig.axes[0].get_lines()
    ys = {tuple(np.asarray(line.get_ydata(), np.float32)) for line in lines}
    assert tuple(deq) in ys and tuple(w) in ys


def test_rtn_error_at_7_5_is_quantize_ref(layers):
    dense, _ = layers
    w = widen(dense[Q_PROJ].weight, "bf16")
    q, s, _ = quantize_ref(w, 4, 32)
    deq = dequantize_ref(q, bf16_to_f32(s), None, 32, "bf16")
    assert pi.rtn_error(w, 32, 7.5) == np.linalg.norm(w - deq) / np.linalg.norm(w)
    assert pi.rtn_error(w, 32, 6.0) > pi.rtn_error(w, 32, 7.5)
    fig = pi.plot_divisor_sweep(np.array([7.0, 7.5, 8.0]), {Q_PROJ: np.array([0.1, 0.09, 0.095])})
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [10, 9, 9.5])


def test_rounding_effect_by_hand():
    # s = 1 + 1/128 (bf16 bits 0x3F81): 3·s = 3.0234375 needs 9 significant bits and is
    # rounded to even (3.03125); powers of two never round.
    s = bf16_to_f32(np.array([0x3F81], np.uint16))
    q, share, worst = pi.rounding_effect(s)
    assert list(q) == list(range(-8, 8))
    assert share[q == 3][0] == 1 and share[q == 4][0] == 0 and share[q == -8][0] == 0
    assert worst[q == 3][0] == pytest.approx((3.03125 - 3.0234375) / float(s[0]))
    fig = pi.plot_rounding(q, share, worst)
    assert [p.get_height() for p in fig.axes[0].patches] == list(100 * share)


# --- errors and bytes -----------------------------------------------------------------------------


def test_weight_errors_match_the_quantizer_report(layers, tmp_path):
    dense, packed = layers
    errors = pi.weight_errors(dense, packed)
    report = quantize_checkpoint(DENSE, tmp_path / "q", progress=None)
    by_report = {t.name: t.rel_error for t in report.tensors}
    assert errors.names == list(packed)
    for name, rel in zip(errors.names, errors.rel, strict=True):
        assert rel == pytest.approx(by_report[name], rel=1e-5)
    assert errors.counts.sum() == sum(lin.out_features * lin.in_features for lin in packed.values())
    # every error within half a step (and the bf16 rounding of s and of q·s)
    inside = (errors.edges[:-1] >= -0.55) & (errors.edges[1:] <= 0.55)
    assert errors.counts[~inside].sum() == 0
    fig = pi.plot_errors(errors)
    heights = [p.get_height() for p in fig.axes[1].patches]
    assert heights == list(errors.counts)
    n_dots = sum(len(line.get_ydata()) for line in fig.axes[0].get_lines())
    assert n_dots == len(packed)


def test_stored_and_decode_bytes(models, layers):
    dense_model, packed_model = models
    _, packed = layers
    for model in models:
        stored = pi.stored_bytes(model)
        ck = model.checkpoint
        assert sum(stored.values()) == sum(ck.info(t).nbytes for t in ck.tensors)
        assert stored["embedding (tied head)"] == 4096 * 256 * 2
    sd, sp = pi.stored_bytes(dense_model), pi.stored_bytes(packed_model)
    assert sd["int4 scales"] == 0 and sp["MoE experts"] == sd["MoE experts"]
    n_weights = sum(lin.out_features * lin.in_features for lin in packed.values())
    assert sp["int4 scales"] == n_weights // 32 * 2
    routers = 10 * 8 * 256 * 2
    assert sp["linear weights"] == n_weights // 2 + routers
    dd, dp = pi.decode_bytes(dense_model), pi.decode_bytes(packed_model)
    assert dd["linear layers"] == 2 * n_weights + routers
    assert dp["linear layers"] == n_weights // 2 + n_weights // 32 * 2 + routers
    experts = 10 * 2 * (2 * 128 * 256 + 256 * 128) * 2  # 10 layers, top 2, gate_up + down, bf16
    assert dd["MoE experts (top-k)"] == dp["MoE experts (top-k)"] == experts
    assert dd["embedding + PLE rows"] == (256 + 10 * 64) * 2
    fig = pi.plot_bytes({"bf16": dd, "w4a16": dp}, "per token")
    widths = np.array([p.get_width() for p in fig.axes[0].patches]).reshape(len(dd), 2)
    np.testing.assert_allclose(widths.sum(0), [sum(dd.values()) / 1e6, sum(dp.values()) / 1e6])


def test_random_pair_is_one_layer_twice():
    dense, packed = pi.random_pair(64, 128, seed=3)
    x = np.random.default_rng(0).standard_normal((1, 128), dtype=np.float32)
    y_d, y_q = dense(x), packed(x)
    q, s, _ = quantize_ref(bf16_to_f32(dense.weight), 4, 32)
    np.testing.assert_array_equal(
        packed.dequantize(), dequantize_ref(q, bf16_to_f32(s), None, 32, "bf16")
    )
    assert np.linalg.norm(y_q - y_d) / np.linalg.norm(y_d) < 0.2


# --- Q4_0 -----------------------------------------------------------------------------------------


def test_q4_0_pack_unpack_round_trip():
    rng = np.random.default_rng(7)
    u = rng.integers(0, 16, size=(5, 128)).astype(np.uint8)
    d = rng.standard_normal((5, 4)).astype(np.float16)
    blocks = pi.q4_0_pack(u, d)
    assert blocks.shape == (5, 4) and blocks.itemsize == 18 and pi.Q4_0_BLOCK.itemsize == 18
    u2, d2 = pi.q4_0_unpack(blocks)
    assert np.array_equal(u2, u) and np.array_equal(d2, d)
    qs = blocks["qs"][2, 1]  # block 1 of row 2: weights 32..63
    assert np.array_equal(qs & 15, u[2, 32:48]) and np.array_equal(qs >> 4, u[2, 48:64])
    # the GGUF bytes: d (little-endian fp16), then the 16 bytes
    raw = blocks[2, 1].tobytes()
    assert raw[:2] == d[2, 1].tobytes() and raw[2:] == qs.tobytes()
    expected = (u.astype(np.float32) - 8) * np.repeat(d.astype(np.float32), 32, axis=1)
    np.testing.assert_array_equal(pi.q4_0_dequantize(blocks), expected)


def test_q4_0_quantize_rule():
    w = np.linspace(-1, 0.9, 64, dtype=np.float32).reshape(1, 64)
    w[0, 40] = 2.0  # block 1's extreme is positive
    blocks = pi.q4_0_quantize(w)
    u, d = pi.q4_0_unpack(blocks)
    assert d[0, 0] == np.float16(-1.0 / -8) and d[0, 1] == np.float16(2.0 / -8)
    assert u[0, 0] == 0 and u[0, 40] == 0  # the extreme weight of each block gets code 0 (q = -8)
    deq = pi.q4_0_dequantize(blocks)
    assert deq[0, 0] == -1.0 and deq[0, 40] == 2.0  # exactly
    step = np.repeat(np.abs(d.astype(np.float32)), 32, axis=1)
    assert (np.abs(deq - w) <= step / 2 + 1e-6).all()  # no clamping here: within half a step
    zero = pi.q4_0_quantize(np.zeros((2, 32), np.float32))
    assert (pi.q4_0_dequantize(zero) == 0).all()


def test_q4_0_matches_llama_cpp_gguf_py():
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    rng = np.random.default_rng(11)
    w = (rng.standard_normal((32, 256)) * 0.05).astype(np.float32)
    w[3, :32] = 0  # an all-zero block
    w[4, :32] = np.round(w[4, :32] * 64) / 64  # ties
    mine = pi.q4_0_quantize(w)
    theirs = quantize(w, GGMLQuantizationType.Q4_0)  # uint8 [rows, 18 * blocks]
    assert np.array_equal(mine.view(np.uint8).reshape(theirs.shape), theirs)
    assert np.array_equal(pi.q4_0_dequantize(mine), dequantize(theirs, GGMLQuantizationType.Q4_0))


def test_layout_maps_and_picture():
    ct, q4 = pi.layout_map("compressed-tensors"), pi.layout_map("Q4_0")
    assert np.array_equal(ct, np.arange(32).reshape(16, 2).T)  # byte k: weights 2k, 2k + 1
    assert np.array_equal(q4, np.arange(32).reshape(2, 16))  # byte k: weights k, k + 16
    with pytest.raises(ValueError):
        pi.layout_map("Q8_0")
    fig = pi.plot_layouts()
    for ax, m in zip(fig.axes, (ct, q4), strict=True):
        shown = sorted(int(t.get_text()) for t in ax.texts if t.get_text().isdigit())
        # element labels 0..31 and byte numbers 0..15 under the columns
        assert shown == sorted(list(range(32)) + list(range(16)))
        assert m.min() == 0 and m.max() == 31


# --- model outputs and the explorer ---------------------------------------------------------------


def test_token_nll_averages_to_mean_nll(models):
    from gemma4_ref.perplexity import mean_nll

    model, _ = models
    ids = np.array([2] + model.tokenizer.encode("ROMEO. But soft, what light through yonder"))
    logits = model.forward(ids)
    nll = pi.token_nll(logits, ids)
    assert nll.shape == (len(ids) - 1,)
    assert nll.mean() == pytest.approx(mean_nll(logits, ids), rel=1e-12)
    fig = pi.plot_model_comparison(nll, nll + 0.1, np.ones(len(ids)), ("a", "b"))
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), nll + 0.1)


def test_explorer_draws_the_group(models, layers):
    dense_model, packed_model = models
    dense, packed = layers
    name, row, group = "model.layers.3.mlp.gate_proj", 5, 2
    explorer = pi.Int4Explorer(packed_model, dense_model)
    fig = explorer.draw(name, row, group)
    lin = packed[name]
    q = unpack_ref(np.array(pi.words(lin)), 4, lin.in_features)[row, 64:96].reshape(4, 8)
    np.testing.assert_array_equal(np.asarray(fig.axes[0].images[0].get_array()), q)
    words = pi.words(lin)[row, 8:12]
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == [f"0x{int(w) & 0xFFFFFFFF:08X}" for w in words]
    ys = {tuple(np.asarray(line.get_ydata(), np.float32)) for line in fig.axes[1].get_lines()}
    assert tuple(lin.dequantize(row, row + 1)[0, 64:96]) in ys
    assert tuple(widen(dense[name].weight[row, 64:96], "bf16")) in ys
    alone = pi.Int4Explorer(packed_model)  # without the bf16 model: no originals drawn
    assert alone.original(name, row) is None
    alone.draw(name, row, group)


def test_explorer_widget_redraws(models):
    pytest.importorskip("ipywidgets")
    dense_model, packed_model = models
    explorer = pi.Int4Explorer(packed_model, dense_model)
    _ = explorer.widget
    first = explorer.figure
    name = "model.layers.4.self_attn.o_proj"
    lin = explorer.layers[name]
    explorer.controls["layer"].value = name
    explorer.controls["group"].value = 3
    assert explorer.figure is not first
    assert explorer.controls["row"].max == lin.out_features - 1
    assert explorer.controls["group"].max == lin.in_features // 32 - 1
    explorer.controls["layer"].value = "model.layers.0.mlp.down_proj"  # 768 inputs: 24 groups
    assert explorer.controls["group"].max == 23
