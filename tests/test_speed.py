"""Issue 11: the looped-suffix strategy, the measured chunk choice, the disk cache and the
memory estimate that caps the chunks."""

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import toys
from tfue_onnx import Dropout, Estimator, MCDropout, Noise, TfueError
from tfue_onnx import graph as graphs
from tfue_onnx.cache import DiskCache
from tfue_onnx.model import inspect_model
from tfue_onnx.memory import peak_bytes as _peak_bytes


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


# --- the measured choice ----------------------------------------------------------------
def test_trial_samples_count_and_never_exceed_the_memory_cap(toy, x8):
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=40, seed=4)
    cap_bytes = est.sample_bytes({"x": x8})
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=40, seed=4, max_memory=3 * cap_bytes)
    res = est(x8)
    tune = res.metadata["autotune"]
    assert tune["chunk_cap"] == 3 and sum(res.metadata["chunks"]) == 40
    assert max(res.metadata["chunks"]) <= 3 and max(t["chunk"] for t in tune["trials"]) <= 2
    # The same numbers as any fixed chunking: the trial's samples are real samples.
    fixed = Estimator(toy(), Noise(0.2, at="r1"), samples=40, seed=4, chunk=7)(x8)
    np.testing.assert_array_equal(res.variance, fixed.variance)
    np.testing.assert_array_equal(res.mean, fixed.mean)
    # The second input of the same shape runs at the chosen chunk, without a trial.
    again = est(x8[:, :, ::-1].copy())
    assert set(again.metadata["chunks"][:-1]) == {tune["chunk"]}
    assert any(n.startswith("autotune: chunk ") for n in est.notes)


def test_given_chunk_and_threads_skip_the_trial(toy, x8):
    res = Estimator(toy(), Noise(0.2, at="r1"), samples=9, seed=4, chunk=4, threads=1)(x8)
    assert res.metadata["chunks"] == [4, 4, 1]
    assert res.metadata["autotune"]["how"] == "given" and res.metadata["autotune"]["threads"] == 1
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(TfueError, match="threads must be an integer from 1 to"):
            Estimator(toy(), Noise(0.2, at="r1"), threads=bad)
    with pytest.raises(TfueError, match=f"threads 512 is more than the {os.cpu_count()} CPUs"):
        Estimator(toy(), Noise(0.2, at="r1"), threads=512)
    with pytest.raises(TfueError, match="cache must be True, False or a folder"):
        Estimator(toy(), Noise(0.2, at="r1"), cache=3)


def test_mc_dropout_runs_looped(tmp_path):
    path = str(tmp_path / "d.onnx")
    toys.conv_net(path, dropout_ratio=0.4)
    x = np.random.default_rng(2).random((1, 3, 8, 8), dtype=np.float32)
    res = Estimator(path, MCDropout(), samples=8, seed=2)(x)
    loop = Estimator(path, MCDropout(), samples=8, seed=2, strategy="loop")(x)
    assert res.metadata["strategy"] == "looped-suffix"
    np.testing.assert_allclose(res.variance, loop.variance, rtol=1e-4, atol=1e-7)


# --- the peak-memory estimate ------------------------------------------------------------
def test_peak_bytes_follow_the_live_tensors(tmp_path):
    x = np.zeros((1, 3, 8, 8), np.float32)
    model = onnx.load(toys.skip_net(tmp_path / "s.onnx"))
    # conv2 runs while x is gone but c1 (the skip), r1 and c2 are alive: 12 channels;
    # then the Add holds c1, c2 and y: 12 again.
    assert _peak_bytes(model, {"x": x}) == 12 * 64 * 4
    # A chain: at most a tensor and its successor (plus nothing else) are alive.
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    chain = helper.make_model(helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3, 8, 8])]))
    assert _peak_bytes(chain, {"x": x}) == 2 * 3 * 64 * 4
    assert _peak_bytes(chain, {"x": np.zeros((4, 3, 8, 8), np.float32)}) == 4 * 2 * 3 * 64 * 4


# --- the disk cache -----------------------------------------------------------------------
def _spy_verify(monkeypatch):
    calls = []
    real = Estimator._verify

    def verify(self, ug, sess, feeds, reference):
        calls.append(ug.strategy)
        return real(self, ug, sess, feeds, reference)
    monkeypatch.setattr(Estimator, "_verify", verify)
    return calls


def test_a_second_runner_starts_from_the_cache(toy, x8, monkeypatch, own_cache):
    calls = _spy_verify(monkeypatch)
    path = toy()
    first = Estimator(path, Noise(0.2, at="r1"), samples=12, seed=5)(x8)
    assert calls == ["looped-suffix"] and first.metadata["autotune"]["how"] == "measured"
    files = sorted(os.listdir(own_cache))
    assert len(files) == 3 and [f.split(".", 1)[1] for f in files] == \
        ["json", "model.onnx", "prefix.onnx"]
    est = Estimator(path, Noise(0.2, at="r1"), samples=12, seed=5)
    second = est(x8)
    assert calls == ["looped-suffix"]  # not verified again
    assert second.metadata["autotune"]["how"] == "cached"
    assert set(second.metadata["chunks"][:-1]) == {first.metadata["autotune"]["chunk"]}
    assert any("verified by an earlier run" in n for n in est.notes)
    for k in ("output", "mean", "variance"):
        np.testing.assert_array_equal(getattr(second, k), getattr(first, k))
    assert second.metadata["spatial_axes"] == first.metadata["spatial_axes"]
    # Another seed, another N, another level: the same entry (none of them is in the graph).
    other = Estimator(path, Noise(0.2, at="r1"), samples=5, seed=9)(x8)
    assert calls == ["looped-suffix"] and sum(other.metadata["chunks"]) == 5
    np.testing.assert_array_equal(
        other.variance, Estimator(path, Noise(0.2, at="r1"), samples=5, seed=9, chunk=5,
                                  cache=False)(x8).variance)
    assert calls == ["looped-suffix"] * 2  # the one with cache=False verified for itself
    # Another input shape, location or method: verified anew.
    Estimator(path, Noise(0.2, at="r1"), samples=5)(np.repeat(x8, 2, axis=0))
    Estimator(path, Dropout(0.2, at="r1"), samples=5)(x8)
    assert calls == ["looped-suffix"] * 4


def test_cache_off_and_unwritable(toy, x8, monkeypatch, own_cache, tmp_path):
    calls = _spy_verify(monkeypatch)
    path = toy()
    for _ in range(2):
        Estimator(path, Noise(0.2, at="r1"), samples=6, cache=False)(x8)
    assert calls == ["looped-suffix"] * 2 and not own_cache.exists()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    est = Estimator(path, Noise(0.2, at="r1"), samples=6, cache=str(blocker / "sub"))
    res = est(x8)
    assert res.metadata["strategy"] == "looped-suffix"
    assert any(n.startswith("cache: not written (") for n in est.notes)


@pytest.mark.parametrize("damage", ["garbage", "truncated-graph", "edited-graph", "other-key",
                                    "wrong-types", "bad-tuning", "level", "shapes", "batch-axes",
                                    "draw-kind", "stats-outputs"])
def test_a_damaged_entry_is_ignored_and_replaced(toy, x8, monkeypatch, own_cache, damage):
    calls = _spy_verify(monkeypatch)
    path = toy()
    first = Estimator(path, Noise(0.2, at="r1"), samples=6, seed=1)(x8)
    [entry] = [own_cache / f for f in os.listdir(own_cache) if f.endswith(".json")]
    graph = entry.with_name(entry.name.replace(".json", ".model.onnx"))
    data = json.loads(entry.read_text())
    fields = data["fields"]
    if damage == "garbage":
        entry.write_bytes(b"\x00{not json")
    elif damage == "truncated-graph":
        graph.write_bytes(graph.read_bytes()[:100])
    elif damage == "edited-graph":
        m = onnx.load(str(graph))
        m.graph.node[0].name = "edited"
        graph.write_bytes(m.SerializeToString())
    else:  # the JSON edited by hand, its types kept where they are plausible
        if damage == "other-key":
            data["key"] = "0" * 40
        elif damage == "wrong-types":
            fields["shapes"] = "[1, 4, 8, 8]"
        elif damage == "bad-tuning":
            fields["tuning"] = {"chunk": "lots", "threads": None}
        elif damage == "level":
            [name] = fields["graph"]["level_inputs"]
            fields["graph"]["level_inputs"][name][0] = 5.0
        elif damage == "shapes":
            fields["shapes"] = {}
        elif damage == "batch-axes":
            fields["batch_axes"] = {"r1": 1}
        elif damage == "draw-kind":
            fields["graph"]["draws"][0][2] = "uniform"
        else:
            fields["graph"]["stats_outputs"] = ["zz"]
        entry.write_text(json.dumps(data))
    est = Estimator(path, Noise(0.2, at="r1"), samples=6, seed=1)
    res = est(x8)
    np.testing.assert_array_equal(res.variance, first.variance)
    assert calls == ["looped-suffix"] * 2  # verified again
    assert not any("verified by an earlier run" in n for n in est.notes)
    # ... and the entry is whole again: a third runner uses it.
    Estimator(path, Noise(0.2, at="r1"), samples=6, seed=1)(x8)
    assert len(calls) == 2


def test_a_sealed_entry_that_fails_is_verified_afresh(toy, x8, monkeypatch, own_cache):
    """Even an entry whose seal matches (made by a fault in tfue, say) cannot break a
    run: the run that fails on it verifies afresh and overwrites it."""
    from tfue_onnx.cache import _seal

    calls = _spy_verify(monkeypatch)
    path = toy()
    first = Estimator(path, Noise(0.2, at="r1"), samples=6, seed=1)(x8)
    [entry] = [own_cache / f for f in os.listdir(own_cache) if f.endswith(".json")]
    data = json.loads(entry.read_text())
    data["fields"]["shapes"] = {"r1": [1, 5, 8, 8]}  # banks of the wrong size
    data["seal"] = _seal(data)
    entry.write_text(json.dumps(data))
    est = Estimator(path, Noise(0.2, at="r1"), samples=6, seed=1)
    res = est(x8)
    np.testing.assert_array_equal(res.variance, first.variance)
    assert calls == ["looped-suffix"] * 2
    assert any(n.startswith("cache: the entry for this input shape failed (TfueError")
               for n in est.notes)
    Estimator(path, Noise(0.2, at="r1"), samples=6, seed=1)(x8)
    assert len(calls) == 2  # the entry was rewritten whole


def test_a_changed_model_file_misses_the_cache(toy, x8, monkeypatch, tmp_path):
    calls = _spy_verify(monkeypatch)
    path = toy()
    Estimator(path, Noise(0.2, at="r1"), samples=6)(x8)
    toys.conv_net(path, seed=7)  # same graph, other weights, same file name
    res = Estimator(path, Noise(0.2, at="r1"), samples=6)(x8)
    assert calls == ["looped-suffix"] * 2
    np.testing.assert_allclose(res.output, _plain(path, x8), rtol=1e-5, atol=1e-6)


def test_disk_cache_load_and_store(tmp_path):
    cache = DiskCache(str(tmp_path / "c"))
    assert cache.load("k1", {}) is None
    assert cache.store("k1", {"a": 1}, {"model": b"abc"})
    fields, graphs_ = cache.load("k1", {"a": int})
    assert fields == {"a": 1} and graphs_ == {"model": b"abc"}
    assert cache.load("k1", {"a": str}) is None  # a field of the wrong type: a miss
    assert cache.update("k1", tuning={"chunk": 2})
    assert cache.load("k1", {})[0] == {"a": 1, "tuning": {"chunk": 2}}
    assert not cache.update("k2", x=1)
    off = DiskCache(str(tmp_path / "off"), enabled=False)
    assert not off.store("k", {}) and off.load("k", {}) is None
    assert not (tmp_path / "off").exists()


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


def test_the_smallest_chunk_within_five_percent_of_the_fastest_wins():
    from tfue_onnx.autotune import choose_trial as _choose

    trials = [{"chunk": 1, "threads": None, "s_per_sample": 0.0100},
              {"chunk": 1, "threads": 1, "s_per_sample": 0.0130},
              {"chunk": 2, "threads": None, "s_per_sample": 0.0098},
              {"chunk": 4, "threads": None, "s_per_sample": 0.0097}]
    assert _choose(trials) == trials[0]  # 3 % slower than chunk 4, a quarter of its memory
    trials[3]["s_per_sample"] = 0.0080  # clearly faster: worth its memory
    assert _choose(trials) == trials[3]
    trials[1]["s_per_sample"] = 0.0060  # one thread wins outright
    assert _choose(trials) == trials[1]


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


def test_the_trial_follows_the_measured_times(toy, x8, sample_cost, own_cache):
    """A device where batches pay (per-sample cost falling with the chunk): the trial
    doubles the chunk across inputs while it gains 5 %, keeps the smallest chunk within
    5 % of the fastest, and stops scanning one thread once it is far behind."""
    per_sample = {1: 10, 2: 6, 4: 4, 8: 3, 16: 2.5, 32: 2.4}
    sample_cost(lambda threads, n: per_sample[n] * (2 if threads == 1 else 1) * 1e-3)
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=32, seed=0)
    first = est(x8).metadata
    assert first["chunks"] == [1, 1, 2, 2, 4, 4, 8, 8, 2]  # 2 left over: at the best so far
    assert first["autotune"]["how"] == "measuring" and first["autotune"]["next"] == [None, 16]
    assert est(x8).metadata["chunks"] == [16, 16]
    third = est(x8).metadata  # 2 x 32 > N: one run of 32 decides (it gains only 4 %)
    assert third["chunks"] == [32] and third["autotune"]["next"] == [1, 1]
    fourth = est(x8).metadata  # one thread: twice as slow, far behind: not scanned on
    assert fourth["chunks"] == [1, 1, 16, 14] and fourth["autotune"]["how"] == "measured"
    tune = fourth["autotune"]
    assert [(t["chunk"], t["threads"], t["s_per_sample"]) for t in tune["trials"]] == [
        (1, None, 0.01), (2, None, 0.006), (4, None, 0.004), (8, None, 0.003),
        (16, None, 0.0025), (32, None, 0.0024), (1, 1, 0.02)]
    assert (tune["chunk"], tune["threads"]) == (16, None)  # 32 is within 5 %: 16 wins
    assert est(x8).metadata["chunks"] == [16, 16]
    # A new process reads the finished choice from the cache.
    cached = Estimator(toy(), Noise(0.2, at="r1"), samples=32, seed=0)(x8).metadata
    assert cached["autotune"]["how"] == "cached" and cached["chunks"] == [16, 16]


def test_a_busy_cpu_picks_one_thread(toy, x8, sample_cost):
    sample_cost(lambda threads, n: (4e-3 if threads == 1 else 9e-3) * (1 + 0.3 * (n > 1)))
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=10, seed=0)
    first = est(x8).metadata
    assert first["chunks"] == [1, 1, 2, 2, 1, 1, 1, 1]  # the last two at the best so far
    second = est(x8).metadata
    tune = second["autotune"]
    assert tune["how"] == "measured" and (tune["chunk"], tune["threads"]) == (1, 1)
    assert [(t["chunk"], t["threads"]) for t in tune["trials"]] == [(1, None), (2, None),
                                                                    (1, 1), (2, 1)]
    assert second["chunks"] == [2, 2] + [1] * 6


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


def test_large_weights_get_no_second_session(toy, x8, monkeypatch):
    import tfue_onnx.selection as runner_module

    monkeypatch.setattr(runner_module, "SPARE_SESSION_BYTES", 0)  # every model is "large"
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=8, seed=0)
    tune = est(x8).metadata["autotune"]
    assert {t["threads"] for t in tune["trials"]} == {None}
    [(ug, split, _)] = [b for b in est._built.values() if b is not None]
    assert list(split.suffix) == [None]  # one suffix session only


def test_export_after_asking_for_looped_suffix_writes_a_one_graph_strategy(toy, x8, tmp_path):
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=4, seed=0, strategy="looped-suffix")
    assert est(x8).metadata["strategy"] == "looped-suffix"
    est.export(tmp_path / "u.onnx", example=x8)
    out = toys.run_plain(onnx.load(str(tmp_path / "u.onnx")), {"x": x8})
    assert set(out) == {"y", "y.mean", "y.variance"} and float(out["y.variance"].mean()) > 0
    assert any(n.startswith("export: looped-suffix runs as two graphs") for n in est.notes)


def test_other_tfue_code_misses_the_cache(toy, x8, monkeypatch):
    from tfue_onnx import cache as cache_module

    digest = cache_module.code_digest()
    assert len(digest) == 64 and int(digest, 16) >= 0
    calls = _spy_verify(monkeypatch)
    Estimator(toy(), Noise(0.2, at="r1"), samples=6)(x8)
    monkeypatch.setattr(cache_module, "_CODE", ["another build of tfue"])
    Estimator(toy(), Noise(0.2, at="r1"), samples=6)(x8)
    assert calls == ["looped-suffix"] * 2


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


@pytest.mark.parametrize("edit", ["level", "draw-kind", "draw-index", "outputs", "batch-axis"])
def test_a_resealed_entry_that_contradicts_the_run_is_not_used(toy, x8, monkeypatch,
                                                                 own_cache, edit):
    from tfue_onnx.cache import _seal

    calls = _spy_verify(monkeypatch)
    first = Estimator(toy(), Noise(0.2, at="r1"), samples=6, seed=1)(x8)
    [entry] = [own_cache / f for f in os.listdir(own_cache) if f.endswith(".json")]
    data = json.loads(entry.read_text())
    g = data["fields"]["graph"]
    if edit == "level":
        [name] = g["level_inputs"]
        g["level_inputs"][name][0] = 0.5
    elif edit == "draw-kind":
        g["draws"][0][2] = "uniform"
    elif edit == "draw-index":
        g["draws"][0][4] = 7
    elif edit == "batch-axis":
        data["fields"]["batch_axes"] = {"r1": 1}
    else:
        g["stats_outputs"] = []
    data["seal"] = _seal(data)
    entry.write_text(json.dumps(data))
    res = Estimator(toy(), Noise(0.2, at="r1"), samples=6, seed=1)(x8)
    assert calls == ["looped-suffix"] * 2
    np.testing.assert_array_equal(res.variance, first.variance)


def test_graphs_too_large_to_store_are_built_again_but_not_verified(toy, x8, monkeypatch,
                                                                     own_cache):
    from tfue_onnx import cache as cache_module

    monkeypatch.setattr(cache_module, "MAX_GRAPH_BYTES", 0)
    calls = _spy_verify(monkeypatch)
    first = Estimator(toy(), Noise(0.2, at="r1"), samples=6, seed=1)(x8)
    assert [f.split(".", 1)[1] for f in os.listdir(own_cache)] == ["json"]
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=6, seed=1)
    res = est(x8)
    assert calls == ["looped-suffix"]
    assert any("verified by an earlier run" in n for n in est.notes)
    np.testing.assert_array_equal(res.variance, first.variance)


def test_the_cache_folder_is_trimmed_least_recently_used_first(tmp_path):
    import time

    from tfue_onnx.cache import make_key

    folder = tmp_path / "c"
    cache = DiskCache(str(folder))
    a, b, c = (make_key({"k": k}) for k in "abc")
    for k in (a, b, c):
        assert cache.store(k, {"k": k}, {"model": bytes(1000)})
        time.sleep(0.01)
    cache.load(a, {})  # used again: now the most recent
    # Files that are not whole tfue entries are never touched, however old or named: a
    # hex-named JSON that is not a tfue entry, graph files without their JSON (a store
    # under way, or one that failed: the next store of the key overwrites them).
    import hashlib

    hex_json = hashlib.sha1(b"run 17").hexdigest() + ".json"
    hex_onnx = hashlib.sha1(b"w").hexdigest() + ".best.onnx"
    under_way = make_key({"k": "d"}) + ".model.onnx"
    left_over = make_key({"k": "e"}) + ".model.onnx"
    (folder / "my_thesis.txt").write_bytes(bytes(5000))
    (folder / hex_json).write_text('{"accuracy": 0.93}')
    (folder / hex_onnx).write_bytes(b"user model")
    (folder / ".tfue-x.tmp").write_bytes(bytes(10))  # another process's write under way
    (folder / under_way).write_bytes(bytes(10))
    (folder / left_over).write_bytes(bytes(10))
    (folder / "notes").mkdir()
    for name in ("my_thesis.txt", ".tfue-x.tmp", hex_json, hex_onnx, left_over):
        os.utime(folder / name, (0, 0))
    ours = [f for f in os.listdir(folder) if f.startswith((a, b, c))]
    size = sum(os.path.getsize(folder / f) for f in ours)
    removed = cache.trim(limit=size - 1)
    assert removed > 0 and cache.load(b, {}) is None  # the least recently used went
    assert cache.load(a, {}) is not None and cache.load(c, {}) is not None
    assert cache.trim(limit=0, keep=a) > 0 and cache.load(a, {}) is not None
    assert sorted(os.listdir(folder)) == sorted([
        ".tfue-x.tmp", "my_thesis.txt", "notes", hex_json, hex_onnx, under_way, left_over,
        f"{a}.json", f"{a}.model.onnx"])
    assert (folder / "my_thesis.txt").stat().st_size == 5000
    assert (folder / hex_json).read_text() == '{"accuracy": 0.93}'


def test_a_fifo_in_the_cache_is_a_miss_not_a_hang(tmp_path):
    from tfue_onnx.cache import make_key

    cache = DiskCache(str(tmp_path / "c"))
    key = make_key({"k": 1})
    assert cache.store(key, {"a": 1}, {"model": b"abc"})
    os.remove(tmp_path / "c" / f"{key}.model.onnx")
    os.mkfifo(tmp_path / "c" / f"{key}.model.onnx")
    assert cache.load(key, {}) is None


def test_update_of_an_entry_trimmed_meanwhile_is_no_error(tmp_path):
    from tfue_onnx import cache as cache_module

    cache = DiskCache(str(tmp_path / "c"))
    key = cache_module.make_key({"k": 1})
    assert cache.store(key, {"a": 1})
    os.remove(os.path.join(cache.folder, f"{key}.json"))  # trimmed by another process
    assert cache.update(key, tuning={"chunk": 2}) is False


def test_a_batch_of_two_from_the_cache_keeps_its_batch_axis(toy, x8, monkeypatch):
    calls = _spy_verify(monkeypatch)
    x2 = np.concatenate([x8, x8[:, :, ::-1]])
    first = Estimator(toy(), Noise(0.2, at="r1"), samples=6, seed=2)(x2)
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=6, seed=2)
    second = est(x2)
    assert calls == ["looped-suffix"] and any("verified by an earlier run" in n
                                              for n in est.notes)
    assert second.metadata["draws"] == first.metadata["draws"]
    assert "per batch item (axis 0" in second.metadata["draws"]["r1"]
    np.testing.assert_array_equal(second.variance, first.variance)
