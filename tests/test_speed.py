"""Issue 11: the looped-suffix strategy end to end. The measured chunk choice is tested in
test_autotune.py, the disk cache in test_cache.py, the memory estimate in test_memory.py."""

import json

import numpy as np
import onnx
import pytest
from onnx import helper

import toys
from tfue_onnx import Dropout, Estimator, MCDropout, Noise
from tfue_onnx import graph as graphs
from tfue_onnx.model import inspect_model


def _plain(path, x):
    return toys.run_plain(onnx.load(path), {"x": x})["y"]


# --- looped-suffix: the two graphs ------------------------------------------------------
@pytest.mark.parametrize("spec", [Noise(0.3, at="r1"), Dropout(0.3, at="c1"),
                                  Noise(0.3, at="r1", mode="relative")])
def test_prefix_and_suffix_graphs_give_the_model_at_level_zero(toy, x8, spec):
    info = inspect_model(toy())
    ug = graphs.build(info, spec, "looped-suffix", samples=5, seed=3)
    assert ug.prefix is not None and ug.cut == [spec.at]
    assert [o.name for o in ug.prefix.graph.output] == ug.cut
    # The suffix reads the cut, not the model input (conv1 is not in it).
    names = [i.name for i in ug.model.graph.input]
    assert "x" not in names and spec.at in names
    assert {n.name for n in ug.model.graph.node} & {"conv1"} == set()
    cut = toys.run_plain(ug.prefix, {"x": x8})
    shapes = {d.location: cut[d.location].shape for d in ug.draws}
    ref = _plain(toy(), x8)
    zero = toys.run_plain(ug.model, {**cut, **ug.feeds(samples=3, level=0.0, shapes=shapes)})
    assert set(zero) == {"y", "y.samples"} and zero["y.samples"].shape == (3, *ref.shape)
    for k in range(3):  # every slot is a sample; at level 0 each is the model's output
        np.testing.assert_allclose(zero["y.samples"][k], ref, rtol=1e-5, atol=1e-6)
    on = toys.run_plain(ug.model, {**cut, **ug.feeds(samples=3, shapes=shapes)})
    assert float(on["y.samples"].var(axis=0).mean()) > 1e-5
    # Sample 2 alone (first=2) is sample 2 of the run of 3.
    alone = toys.run_plain(ug.model, {**cut, **ug.feeds(samples=1, first=2, shapes=shapes)})
    np.testing.assert_allclose(alone["y.samples"][0], on["y.samples"][2], rtol=1e-5, atol=1e-6)


def test_a_skip_connection_crosses_the_cut(tmp_path):
    path = toys.skip_net(tmp_path / "skip.onnx")
    ug = graphs.build(inspect_model(path), Noise(0.2, at="r1"), "looped-suffix", samples=4)
    assert sorted(ug.cut) == ["c1", "r1"]  # the location and the skip
    x = np.random.default_rng(1).random((2, 3, 6, 5), dtype=np.float32)
    est = Estimator(path, Noise(0.2, at="r1"), samples=6, seed=1)
    res, loop = est(x), Estimator(path, Noise(0.2, at="r1"), samples=6, seed=1,
                                  strategy="loop")(x)
    assert res.metadata["strategy"] == "looped-suffix"
    np.testing.assert_allclose(res.output, _plain(path, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.variance, loop.variance, rtol=1e-4, atol=1e-7)


def test_export_never_writes_the_two_graph_strategy(toy, x8, tmp_path):
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=4, seed=0)
    est(x8)
    assert est.uncertainty_graph(x8).strategy == "looped-suffix"
    out = tmp_path / "u.onnx"
    est.export(out, example=x8)
    m = onnx.load(str(out))
    assert [o.name for o in m.graph.output] == ["y", "y.mean", "y.variance"]
    assert not any("looped-suffix" in n for n in est.notes if n.startswith("export"))
    with pytest.raises(graphs.StrategyUnavailable, match="two graphs"):
        graphs.build(inspect_model(toy()), Noise(0.2, at="r1"), "looped-suffix",
                     sampling="graph")


def _batch_mean_net(path):
    """x -> Relu ('r') -> r - mean over the batch axis -> y: the suffix mixes the items
    of a batch (as training-mode normalisation would), so tiled samples mix."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("ReduceMean", ["r"], ["m"], name="mean", axes=[0], keepdims=1),
             helper.make_node("Sub", ["r", "m"], ["d"], name="sub"),
             helper.make_node("Mul", ["d", "r"], ["y"], name="mul")]
    return toys._save(path, nodes, [], ["b", 3, "h", "w"], ["b", 3, "h", "w"], "bmean",
                      opset=13)


def test_samples_that_mix_in_one_run_fail_verification(tmp_path):
    path = _batch_mean_net(tmp_path / "bm.onnx")
    x = np.random.default_rng(0).random((1, 3, 4, 4), dtype=np.float32)
    est = Estimator(path, Noise(0.3, at="r"), samples=4, seed=0)
    res = est(x)
    notes = "\n".join(est.notes)
    assert "strategy looped-suffix: failed verification (sample 2 of a run of 2 of 'y' " \
           "differs from the same sample run alone" in notes
    assert "samples of one run mix" in notes
    assert res.metadata["strategy"] == "loop"  # the tiled strategies fail the same way
    np.testing.assert_allclose(res.output, _plain(path, x), rtol=1e-5, atol=1e-6)


def test_mc_dropout_runs_looped(tmp_path):
    path = str(tmp_path / "d.onnx")
    toys.conv_net(path, dropout_ratio=0.4)
    x = np.random.default_rng(2).random((1, 3, 8, 8), dtype=np.float32)
    res = Estimator(path, MCDropout(), samples=8, seed=2)(x)
    loop = Estimator(path, MCDropout(), samples=8, seed=2, strategy="loop")(x)
    assert res.metadata["strategy"] == "looped-suffix"
    np.testing.assert_allclose(res.variance, loop.variance, rtol=1e-4, atol=1e-7)


# --- the CLI: cache, threads, timing (the cache and the autotune: test_cache.py, test_autotune.py)
def test_cli_no_cache_writes_nothing(cli, toy, x8, tmp_path, own_cache):
    np.save(tmp_path / "x.npy", x8)
    args = ["run", toy(), str(tmp_path / "x.npy"), "--method", "noise", "--at", "r1",
            "-n", 6, "--json"]
    r = cli(*args, "--no-cache", "--out", tmp_path / "o1")
    assert r.exit_code == 0, r.output and not own_cache.exists()
    assert not own_cache.exists()
    r = cli(*args, "--out", tmp_path / "o2", "-v")
    assert r.exit_code == 0 and own_cache.exists()
    for bad in (0, 99999):
        r = cli(*args, "--out", tmp_path / "o4", "--threads", bad)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and "threads" in lines[0], r.stderr
    assert not (tmp_path / "o4").exists()
    r = cli(*args, "--out", tmp_path / "o3", "-v", "--threads", 1, "--chunk", 3)
    s = json.loads(r.stdout)
    assert s["chunks"] == [3, 3] and s["autotune"] == {"chunk": 3, "threads": 1, "how": "given",
                                                      "chunk_cap": 6}


def test_summary_times_start_up_sampling_and_writing(cli, toy, x8, tmp_path):
    np.save(tmp_path / "x.npy", x8)
    runs = []
    for k in range(2):
        r = cli("run", toy(), str(tmp_path / "x.npy"), "--method", "noise", "--at", "r1",
                "-n", 6, "--json", "--out", tmp_path / f"o{k}")
        assert r.exit_code == 0, r.output
        runs.append(json.loads(r.stdout)["timing"])
    for t in runs:
        assert set(t) == {"startup_s", "sampling_s", "writing_s", "total_s"}
        assert min(t.values()) > 0
        assert t["startup_s"] + t["sampling_s"] + t["writing_s"] <= t["total_s"] + 1e-3
    r = cli("run", toy(), str(tmp_path / "x.npy"), "--method", "noise", "--at", "r1", "-n", 6,
            "--out", tmp_path / "o2")
    assert "time: start-up " in r.stdout and "chunk 1 (cached)" in r.stdout


@pytest.mark.parametrize("kind,dtype", [("normal", np.float32), ("uniform", np.float32),
                                        ("normal", np.float16), ("normal", np.float64)])
def test_banks_drawn_on_every_core_are_the_same_numbers(monkeypatch, kind, dtype):
    from tfue_onnx.graph import builder

    draw = builder.Draw("tfue/bank/1", "r1", kind, np.dtype(dtype), 1)
    monkeypatch.setattr(builder, "PARALLEL_DRAWS", 1 << 40)
    serial = builder.item_draws(draw, 7, (3, 5, 4), 2, 6)
    monkeypatch.setattr(builder, "PARALLEL_DRAWS", 1)
    monkeypatch.setattr(builder.os, "cpu_count", lambda: 3)
    parallel = builder.item_draws(draw, 7, (3, 5, 4), 2, 6)
    assert parallel.dtype == dtype and parallel.shape == (6, 3, 5, 4)
    np.testing.assert_array_equal(parallel, serial)
    # Row k is sample first + k: the same as drawing it alone.
    np.testing.assert_array_equal(builder.item_draws(draw, 7, (3, 5, 4), 5, 1)[0], serial[3])


def test_export_after_asking_for_looped_suffix_writes_a_one_graph_strategy(toy, x8, tmp_path):
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=4, seed=0, strategy="looped-suffix")
    assert est(x8).metadata["strategy"] == "looped-suffix"
    est.export(tmp_path / "u.onnx", example=x8)
    out = toys.run_plain(onnx.load(str(tmp_path / "u.onnx")), {"x": x8})
    assert set(out) == {"y", "y.mean", "y.variance"} and float(out["y.variance"].mean()) > 0
    assert any(n.startswith("export: looped-suffix runs as two graphs") for n in est.notes)


def test_each_input_says_how_it_ran(cli, toy, tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.random((1, 3, 8, 8), dtype=np.float32))
    np.save(tmp_path / "b.npy", rng.random((1, 3, 6, 10), dtype=np.float32))
    r = cli("run", toy(), str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--method", "noise",
            "--at", "r1", "-n", 5, "--json", "-v", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    items = json.loads(r.stdout)["inputs"]
    assert [sum(i["chunks"]) for i in items] == [5, 5]
    assert all(i["autotune"]["how"] == "measuring" for i in items)
    # Five samples are too few to finish measuring: -v says so, per shape.
    notes = [ln for ln in r.stderr.splitlines() if "autotune: still measuring" in ln]
    assert len(notes) == 2 and "x[1, 3, 8, 8]" in notes[0] and "x[1, 3, 6, 10]" in notes[1]
