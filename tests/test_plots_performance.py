"""Chapter 8's counting, measuring and drawing helpers (`gemma4_ref/plots/performance.py`).

What is checked is what the numbers mean, never how large a speed is: the header byte count
equals the model's own count plus the small vectors it leaves out; the bandwidth kernel sums
correctly; the timing helper calls what it is given as often as it says; the kernels the
chapter times agree with the NumPy references; the figures draw the numbers they are given; the
targets are the ratios of the committed bench results.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import gemma4_ref  # noqa: E402
from gemma4_ref import int4, linear  # noqa: E402
from gemma4_ref.plots import int4 as p4  # noqa: E402
from gemma4_ref.plots import performance as pf  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DENSE = Path(gemma4_ref.DEFAULT_MODEL)
PACKED = DENSE.with_name(DENSE.name + "-w4a16")
RESULTS = ROOT / "bench" / "results" / "intel-xeon-processor-2-cores.json"


@pytest.fixture(scope="module")
def models():
    return {"bf16": gemma4_ref.load_model(DENSE), "w4a16": gemma4_ref.load_model(PACKED)}


# --- bytes per token -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["bf16", "w4a16"])
def test_bytes_per_token_is_the_sum_of_what_a_decode_step_reads(models, fmt):
    model = models[fmt]
    header = pf.hf_bytes_per_token(model.path)
    ck = model.checkpoint
    # every matrix a decode step multiplies by, as the model holds it: the linear layers, the
    # head (the tied embedding) and, per MoE layer, top_k of its experts
    matrices = sum(lin.nbytes for lin in pf.decode_layers(model).values())
    experts = 0
    for layer in model.layers:
        if layer.moe is not None:
            ex = layer.moe.experts
            experts += layer.moe.top_k * (ex.gate_up[0].nbytes + ex.down[0].nbytes)
    vectors = sum(info.nbytes for info in ck.tensors.values() if len(info.shape) <= 1)
    ple_row = model.ple.table[0].nbytes
    assert header["total"] == matrices + experts + vectors + ple_row
    assert header["head_and_embedding"] == model.head.nbytes
    assert header["experts"] == experts
    # chapter 6's model-side count reads the same matrices (plus the embedding row, which sits
    # inside the head's table and which the header count does not count twice)
    read = p4.decode_bytes(model)
    assert sum(read.values()) == header["total"] - vectors + model.embed_table[0].nbytes
    # KV-shared layers have no k/v projections to read, and the file holds none for them
    first_shared = len(model.layers) - model.config.num_kv_shared_layers
    assert all(layer.k_proj is None for layer in model.layers[first_shared:])


def test_w4a16_reads_fewer_bytes_only_in_the_linear_layers():
    bf16, w4 = pf.hf_bytes_per_token(DENSE), pf.hf_bytes_per_token(PACKED)
    assert w4["head_and_embedding"] == bf16["head_and_embedding"]
    assert w4["experts"] == bf16["experts"] and w4["ple_row"] == bf16["ple_row"]
    assert 3 < bf16["layers"] / w4["layers"] < 4


def test_bench_roofline_uses_the_package_counter():
    spec = importlib.util.spec_from_file_location("bench_roofline", ROOT / "bench" / "roofline.py")
    roofline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roofline)
    assert roofline.hf_bytes_per_token is pf.hf_bytes_per_token
    assert roofline.folder_bytes(DENSE) == sum(
        f.stat().st_size for f in DENSE.glob("*.safetensors")
    )
    assert callable(roofline.gguf_bytes_per_token)
    assert "bench_roofline" not in sys.modules  # loaded from its path, not installed


# --- measuring -----------------------------------------------------------------------------------


def test_chunk_sums_agree_with_numpy_and_bandwidth_is_a_rate():
    a = np.random.default_rng(0).standard_normal(64 * 1000, dtype=np.float32)
    np.testing.assert_allclose(
        pf._chunk_sums(a, 64), a.reshape(64, -1).sum(1), rtol=1e-4, atol=1e-4
    )
    bw = pf.read_bandwidth(megabytes=8, reps=1)
    assert np.isfinite(bw) and bw > 0


def test_time_per_call_calls_each_layer_once_per_rep():
    calls: list[int] = []
    t = pf.time_per_call(lambda layer, x: calls.append(layer), [1, 2, 3], np.zeros(1), reps=4)
    assert calls == [1] + [1, 2, 3] * 4  # one warm-up call, then every layer per repetition
    assert t >= 0


def test_copies_are_separate_and_equal():
    dense, packed = p4.random_pair(64, 96)
    x = np.random.default_rng(1).standard_normal((1, 96), dtype=np.float32)
    for lin, field in ((dense, "weight"), (packed, "packed")):
        copies = pf.copies(lin, 3)
        assert len(copies) == 3 and pf.copies_for(lin, 1) >= 2
        for c in copies:
            assert not np.shares_memory(getattr(c, field), getattr(lin, field))
            np.testing.assert_array_equal(c(x), lin(x))


def test_the_timed_kernels_agree_with_the_references():
    dense, packed = p4.random_pair(256, 512)
    x = np.random.default_rng(2).standard_normal(512, dtype=np.float32)
    ref = linear.linear_ref(x[None], dense.weight, "bf16")[0]
    np.testing.assert_allclose(dense(x[None])[0], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    q = int4.unpack_ref(np.asarray(p4.words(packed)), 4, packed.in_features)
    w = int4.dequantize_ref(q, p4.scale_f32(packed), None, packed.group, "bf16")
    np.testing.assert_array_equal(packed.dequantize(), w)  # bit-exact weights
    np.testing.assert_allclose(
        packed(x[None])[0], w @ x, rtol=1e-5, atol=1e-5 * np.abs(w @ x).max()
    )
    X = np.random.default_rng(3).standard_normal((8, 512), dtype=np.float32)  # prefill path
    np.testing.assert_allclose(
        dense(X), linear.linear_ref(X, dense.weight, "bf16"), rtol=1e-5, atol=1e-4
    )


def _outer(v):
    return _inner(v)  # a module-level callee, as kernels are


def _inner(v):
    return v


def test_source_with_kernels_lists_the_function_and_its_callees():
    text = pf.source_with_kernels(_outer)
    assert text.index("def _outer") < text.index("def _inner")
    assert pf.source_with_kernels(_outer, depth=0).count("def ") == 1
    listing = pf.source_with_kernels(linear.Linear.__call__)
    assert "def __call__" in listing and "def _matmul_tiled" in listing


# --- figures -------------------------------------------------------------------------------------


def test_kernel_speed_bars_are_the_speeds():
    speeds = {"NumPy a": 2e9, "Numba b": 9e9}
    fig = pf.plot_kernel_speeds(speeds, 10e9)
    ax = fig.axes[0]
    np.testing.assert_allclose([p.get_width() for p in ax.patches], [2.0, 9.0])
    assert ax.lines[0].get_xdata()[0] == pytest.approx(10.0)


def test_roofline_is_the_minimum_of_the_two_roofs():
    bw, peak = 20e9, 400e9
    fig = pf.plot_roofline(bw, peak, {"S = 1": (1.0, 15e9), "S = 64": (64.0, 300e9)})
    line = fig.axes[0].lines[0]
    xs, ys = line.get_xdata(), line.get_ydata()
    np.testing.assert_allclose(ys, np.minimum(peak, bw * xs) / 1e9)
    points = [ln for ln in fig.axes[0].lines if ln.get_marker() == "o"]
    assert [tuple(p.get_xydata()[0]) for p in points] == [(1.0, 15.0), (64.0, 300.0)]


def test_layer_speed_explorer(models):
    explorer = pf.LayerSpeedExplorer(models, bandwidth=10e9, reps=2)
    names = list(explorer.layers["bf16"])
    assert (
        names[-1] == "head (tied embedding)"
        and len(names) == len(p4.linear_layers(models["bf16"])) + 1
    )
    name = "model.layers.3.mlp.gate_proj"
    t = explorer.measure("bf16", name)
    lin = explorer.layers["bf16"][name]
    assert t.nbytes == lin.nbytes and t.shape == (lin.out_features, lin.in_features)
    assert t.gbs == pytest.approx(t.nbytes / t.seconds / 1e9)
    assert explorer.measure("bf16", name) is t  # measured once
    fig = explorer.draw("bf16", name)
    ax, bx = fig.axes
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [explorer.layers["bf16"][n].nbytes / 1e3 for n in names])
    marked = [i for i, p in enumerate(ax.patches) if p.get_facecolor()[0] > 0.8]
    assert marked == [names.index(name)]
    assert bx.patches[0].get_width() == pytest.approx(t.gbs)
    assert f"{t.nbytes / 1e3:.1f} KB" in bx.get_title()
    # w4a16: the same layer, packed, is smaller
    assert explorer.measure("w4a16", name).nbytes < t.nbytes / 3
    fig = pf.plot_layer_speeds({"bf16": [t]}, 10e9)
    np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets()[0], [t.nbytes / 1e3, t.gbs])


def test_layer_speed_widget_redraws(models):
    pytest.importorskip("ipywidgets")
    explorer = pf.LayerSpeedExplorer(models, bandwidth=10e9, reps=1)
    _ = explorer.widget
    first = explorer.figure
    assert explorer.controls["format"].value == "bf16"
    explorer.controls["format"].value = "w4a16"
    explorer.controls["layer"].value = "model.layers.5.mlp.down_proj"
    assert explorer.figure is not first
    assert ("w4a16", "model.layers.5.mlp.down_proj") in explorer.timings
    assert "w4a16" in explorer.figure.axes[0].get_title()


# --- the bench results ---------------------------------------------------------------------------


def test_speed_targets_are_the_ratios_of_the_committed_results():
    data = pf.load_results(RESULTS)
    targets = {t.what: t for t in pf.speed_targets(data, "e2b")}
    e = data["models"]["e2b"]
    ours = e["ours"]["bf16"]["decode"]["tok_s"]
    # the roofline of E2B's own bench invocation, not of a later invocation's model
    roof = e["bandwidth"]["gbs"] * 1e9 / e["bytes_per_token"]["bf16"]["total"]
    assert targets["decode bf16 / roofline"].ratio == pytest.approx(ours / roof)
    assert targets["decode bf16 / llama.cpp BF16"].ratio == pytest.approx(
        ours / e["llama.cpp"]["BF16"]["decode"]
    )
    pp = e["ours"]["bf16"]["prefill128"]["tok_s"] / e["transformers"]["prefill"]["128"]["tok_s"]
    assert targets["prefill 128 bf16 / transformers"].ratio == pytest.approx(pp)
    assert len(targets) == 11
    assert all(t.met == (t.ratio >= t.goal) for t in targets.values())
    fig = pf.plot_targets(list(targets.values()))
    widths = [p.get_width() for p in fig.axes[0].patches]
    np.testing.assert_allclose(widths, [t.ratio / t.goal for t in targets.values()])


def test_latest_results_takes_the_newest_complete_run(tmp_path):
    data = pf.load_results(RESULTS)
    old, new, partial = (json.loads(json.dumps(data)) for _ in range(3))
    old["updated"], new["updated"], partial["updated"] = "2026-01-01", "2026-06-01", "2026-12-01"
    del partial["models"]["e2b"]["llama.cpp"]  # newest, but llama.cpp was not measured
    for name, d in (("a", old), ("b", new), ("c", partial)):
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
    assert pf.latest_results(tmp_path) == tmp_path / "b.json"
    assert not pf.complete(partial) and pf.complete(new)
    with pytest.raises(FileNotFoundError, match="e4b"):
        pf.latest_results(tmp_path, "e4b")
