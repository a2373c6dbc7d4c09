"""A result is a function of (model, input, method, location, level, N, seed) only.

Not of what ran before in the session, the order of inputs, the chunk size or the
strategy: gray-box draws are fed to the graph, row k of a bank drawn from
SeedSequence([seed, node, k]) (onnxruntime's seeded Random* ops keep their state
in the session and advance it on every run).
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import toys
from tfue_onnx import Dropout, Estimator, MCDropout, Noise
from tfue_onnx import graph as graphs
from tfue_onnx.graph import builder

SPECS = {
    "noise": Noise(0.3, at="r1"),
    "noise-relative": Noise(0.5, at="c1", mode="relative"),
    "dropout": Dropout(0.3, at="r1"),
}


def two_dropout_net(path, opset=13):
    """x -> Conv -> Relu -> Dropout(0.2) -> Conv -> Relu -> Dropout(0.4) -> Conv -> y."""
    rng = np.random.default_rng(7)
    w = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.4, f"w{k}")
         for k, s in enumerate([(4, 3, 3, 3), (4, 4, 3, 3), (2, 4, 3, 3)], 1)]
    nodes, inits, prev = [], list(w), "x"
    for k in (1, 2):
        inits.append(numpy_helper.from_array(np.array(0.2 * k, np.float32), f"ratio{k}"))
        nodes += [helper.make_node("Conv", [prev, f"w{k}"], [f"c{k}"], name=f"conv{k}",
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}"),
                  helper.make_node("Dropout", [f"r{k}", f"ratio{k}"], [f"d{k}"], name=f"drop{k}")]
        prev = f"d{k}"
    nodes.append(helper.make_node("Conv", [prev, "w3"], ["y"], name="conv3", pads=[1, 1, 1, 1]))
    graph = helper.make_graph(
        nodes, "two_dropouts",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2, "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture
def inputs():
    rng = np.random.default_rng(3)
    return [rng.random((1, 3, 8, 8), dtype=np.float32) for _ in range(3)]


def _same(a, b):
    for key in ("output", "mean", "variance"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)


@pytest.mark.parametrize("spec", [*SPECS.values(), MCDropout()], ids=[*SPECS, "mc-dropout"])
def test_input_alone_among_others_and_in_any_order(tmp_path, toy, inputs, spec):
    path = (two_dropout_net(tmp_path / "dd.onnx") if isinstance(spec, MCDropout) else toy())
    a, b, c = inputs
    alone = Estimator(path, spec, samples=6, seed=5)(b)
    est = Estimator(path, spec, samples=6, seed=5)
    first_a, after_a, then_c = est(a), est(b), est(c)
    _same(alone, after_a)
    _same(est(b), alone)  # again in the same session
    reverse = Estimator(path, spec, samples=6, seed=5)
    _same(reverse(c), then_c)
    _same(reverse(b), alone)
    _same(reverse(a), first_a)
    assert float(alone.variance.mean()) > 1e-5


@pytest.mark.parametrize("strategy", graphs.STRATEGIES)
@pytest.mark.parametrize("name", list(SPECS))
def test_any_chunk_size_gives_the_same_floats(toy, inputs, strategy, name):
    path = toy()
    runs = {chunk: Estimator(path, SPECS[name], samples=8, chunk=chunk, seed=2,
                             strategy=strategy, keep_samples=True)(inputs[0])
            for chunk in (None, 1, 3)}  # None: one chunk of 8
    assert runs[3].metadata["chunks"] == [3, 3, 2] and runs[3].metadata["strategy"] == strategy
    # None: one chunk of 8, or for looped-suffix the runs its trial timed (chunks of 1
    # and 2 twice each at the default thread count, then 1 twice on one thread).
    assert runs[None].metadata["chunks"] == ([1, 1, 2, 2, 1, 1] if strategy == "looped-suffix"
                                             else [8])
    for chunk in (1, 3):
        _same(runs[chunk], runs[None])
        np.testing.assert_array_equal(runs[chunk].samples, runs[None].samples)


def test_mc_dropout_two_nodes_any_chunk_and_strategy(tmp_path, inputs):
    path = two_dropout_net(tmp_path / "dd.onnx")
    runs = {(s, c): Estimator(path, MCDropout(), samples=7, chunk=c, seed=1, strategy=s,
                              keep_samples=True)(inputs[1])
            for s in graphs.STRATEGIES for c in (2, 7)}
    ug = Estimator(path, MCDropout(), samples=7, seed=1).uncertainty_graph(inputs[1])
    assert [(d.location, d.kind) for d in ug.draws] == [("r1", "uniform"), ("r2", "uniform")]
    for s in graphs.STRATEGIES:
        _same(runs[s, 2], runs[s, 7])
        np.testing.assert_allclose(runs[s, 2].samples, runs["loop", 7].samples, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(runs[s, 2].variance, runs["loop", 7].variance, rtol=1e-4,
                                   atol=1e-7)


VARIANTS = {  # model builder, spec, input dtype
    "opset7-mc-dropout": (lambda p: toys.conv_net(p, opset=7, dropout_ratio=0.5), MCDropout(),
                          np.float32),
    "opset11-noise": (lambda p: toys.conv_net(p, opset=11), Noise(0.3, at="c1"), np.float32),
    "external-data": (lambda p: toys.conv_net(p, external_data=True), Dropout(0.2, at="r1"),
                      np.float32),
    "float16": (lambda p: toys.classifier_net(p, dtype=TensorProto.FLOAT16),
                Noise(0.3, at="r", mode="relative"), np.float16),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_other_opsets_dtypes_and_external_data(tmp_path, inputs, variant):
    build, spec, dtype = VARIANTS[variant]
    path = str(tmp_path / "m.onnx")
    build(path)
    x = inputs[2].astype(dtype)
    one = Estimator(path, spec, samples=5, seed=2, chunk=1)(x)
    whole = Estimator(path, spec, samples=5, seed=2)(x)
    _same(one, whole)
    assert one.variance.dtype == dtype and float(one.variance.mean()) > 0
    if variant != "opset7-mc-dropout":  # opset 7: the loop is the only strategy
        loop = Estimator(path, spec, samples=5, seed=2, strategy="loop")(x)
        assert whole.metadata["strategy"] != "loop"
        # float16 samples round to 3 digits: their spread (small next to the output)
        # differs by a few percent between the loop's kernels and the batched ones.
        tol = 5e-2 if dtype == np.float16 else 1e-4
        np.testing.assert_allclose(loop.variance, whole.variance, rtol=tol, atol=1e-8)


@pytest.mark.parametrize("name", list(SPECS))
def test_strategies_draw_the_same_samples(toy, name):
    """Batch of 2: slot k+1 of the tiled strategies is iteration k of the loop."""
    x = np.random.default_rng(4).random((2, 3, 8, 6), dtype=np.float32)
    path = toy()
    runs = {s: Estimator(path, SPECS[name], samples=5, chunk=2, seed=8, strategy=s,
                         keep_samples=True)(x) for s in graphs.STRATEGIES}
    for s in ("looped-suffix", "shared-prefix", "batched"):
        assert runs[s].metadata["strategy"] == s
        np.testing.assert_allclose(runs[s].samples, runs["loop"].samples, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(runs[s].variance, runs["loop"].variance, rtol=1e-4, atol=1e-8)
    assert float(runs["loop"].variance.mean()) > 1e-5


def test_fixed_batch_model_falls_back_to_loop_with_the_same_draws(toy, inputs):
    """Same weights, batch fixed to 1: auto picks the loop, and draws what batched draws."""
    fixed = Estimator(toy("fixed", batch=1), SPECS["noise"], samples=6, seed=3)(inputs[0])
    free = Estimator(toy("free"), SPECS["noise"], samples=6, seed=3,
                     strategy="batched")(inputs[0])
    assert fixed.metadata["strategy"] == "loop"
    np.testing.assert_allclose(fixed.variance, free.variance, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(fixed.mean, free.mean, rtol=1e-5, atol=1e-6)


def _draws(seed, node, k, shape, kind="normal"):
    """The documented draw of sample k, written out independently."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, node, k]))
    return rng.standard_normal(shape, dtype=np.float32) if kind == "normal" else \
        rng.random(shape, dtype=np.float32)


@pytest.mark.parametrize("strategy", graphs.STRATEGIES)
def test_samples_match_a_numpy_reference(tmp_path, toy, inputs, strategy):
    """Noise at r1: sample k = suffix(r1 + sigma * eps_k), the suffix run by onnxruntime."""
    path = toy()
    x, sigma, n = inputs[0], 0.3, 5
    prefix, suffix = str(tmp_path / "pre.onnx"), str(tmp_path / "suf.onnx")
    onnx.utils.extract_model(path, prefix, ["x"], ["r1"])
    onnx.utils.extract_model(path, suffix, ["r1"], ["y"])
    r1 = ort.InferenceSession(prefix, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rest = ort.InferenceSession(suffix, providers=["CPUExecutionProvider"])
    ref = np.stack([rest.run(None, {"r1": r1 + np.float32(sigma) * _draws(9, 1, k, r1.shape)})[0]
                    for k in range(n)])
    res = Estimator(path, Noise(sigma, at="r1"), samples=n, chunk=2, seed=9, strategy=strategy,
                    keep_samples=True)(x)
    np.testing.assert_allclose(res.samples, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.variance, ref.var(axis=0), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(res.mean, ref.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_dropout_at_the_output_matches_a_numpy_reference(toy, inputs):
    p, n = 0.4, 6
    res = Estimator(toy(), Dropout(p, at="y"), samples=n, seed=4, keep_samples=True)(inputs[1])
    y = res.output
    ref = np.stack([y * (_draws(4, 1, k, y.shape, "uniform") >= p) / np.float32(1 - p)
                    for k in range(n)])
    np.testing.assert_allclose(res.samples, ref, rtol=1e-6)
    # A longer run starts with the same samples: sample k is sample k.
    longer = Estimator(toy(), Dropout(p, at="y"), samples=2 * n, seed=4,
                       keep_samples=True)(inputs[1])
    np.testing.assert_array_equal(longer.samples[:n], res.samples)


def test_inputs_of_other_shapes_get_banks_of_their_own(tmp_path, inputs):
    """Location shapes come from the input (a probe run per shape); upscaling model."""
    path = toys.upscale_net(tmp_path / "up.onnx")
    small = inputs[0]
    big = np.random.default_rng(1).random((1, 3, 12, 10), dtype=np.float32)
    est = Estimator(path, Noise(0.2, at="c"), samples=4, seed=0)
    mixed = [est(small), est(big), est(small)]
    assert mixed[1].variance.shape == (1, 3, 24, 20)
    _same(mixed[0], mixed[2])
    _same(mixed[1], Estimator(path, Noise(0.2, at="c"), samples=4, seed=0)(big))


def test_noise_at_the_model_input_needs_no_probe(toy, inputs):
    est = Estimator(toy(), Noise(0.2, at="input"), samples=4, seed=0, strategy="batched")
    res = est(inputs[0])
    assert est._probe is None and float(res.variance.mean()) > 0
    _same(res, Estimator(toy(), Noise(0.2, at="input"), samples=4, seed=0, chunk=1,
                         strategy="batched")(inputs[0]))


def test_banks_are_drawn_once_per_shape(monkeypatch, tmp_path, toy, inputs):
    calls = []
    real = builder.item_draws

    def counting(draw, seed, shape, first, count):
        calls.append((tuple(shape), first, count))
        return real(draw, seed, shape, first, count)

    monkeypatch.setattr(builder, "item_draws", counting)
    est = Estimator(toy(), SPECS["dropout"], samples=8, chunk=3, seed=0)
    for x in inputs:
        est(x)
    assert calls == [((1, 4, 8, 8), 0, 8)]  # verification and every chunk share it
    est(np.concatenate(inputs))  # a batch of 3: one item's draws (axis 0 left out)
    assert calls == [((1, 4, 8, 8), 0, 8), ((4, 8, 8), 0, 8)]
    # Strategies that fail verification share the bank with the one that passes.
    calls.clear()
    tb = Estimator(toys.transposed_batch_net(tmp_path / "tb.onnx"), Noise(0.5, at="r"),
                   samples=4, seed=0)
    tb(inputs[0])
    assert sum("failed verification" in n or "fails running" in n for n in tb.notes) == 3
    assert any(n.startswith("strategy looped-suffix: onnxruntime fails running") for n in tb.notes)
    assert calls == [((4, 1, 8, 8), 0, 4)]
    # Banks are kept up to an eighth of max_memory: 8 x 256 float32 draws = 8 KiB
    # need 64 KiB; with 32 KiB they are drawn per chunk.
    calls.clear()
    est = Estimator(toy(), SPECS["dropout"], samples=8, chunk=3, seed=0, max_memory=32 * 1024)
    est(inputs[0])
    assert [c[1:] for c in calls][-3:] == [(0, 3), (3, 3), (6, 2)]
    calls.clear()
    Estimator(toy(), SPECS["dropout"], samples=8, chunk=3, seed=0,
              max_memory=64 * 1024)(inputs[0])
    assert [c[1:] for c in calls] == [(0, 8)]


def test_draw_bank_rows_depend_on_the_index_only():
    draw = builder.Draw("b", "t", "uniform", np.dtype(np.float16), 2)
    whole = builder.draw_bank(draw, 3, (4, 5), 0, 6)
    assert whole.shape == (6, 20) and whole.dtype == np.float16
    np.testing.assert_array_equal(builder.draw_bank(draw, 3, (4, 5), 2, 3), whole[2:5])
    assert float(whole.max()) < 1.0 and float(whole.min()) >= 0.0
    big = builder.draw_bank(draw, 3, (100000,), 0, 1)
    assert float(big.max()) < 1.0  # float16 rounds u near 1 up: kept below 1
    normal = builder.Draw("b", "t", "normal", np.dtype(np.float64), 1)
    np.testing.assert_array_equal(builder.draw_bank(normal, -1, (3,), 0, 1),
                                  builder.draw_bank(normal, 2**64 - 1, (3,), 0, 1))


def test_metadata_records_seed_and_sampling(toy, inputs):
    res = Estimator(toy(), SPECS["noise"], samples=4, seed=12)(inputs[0])
    assert res.metadata["seed"] == 12
    assert "SeedSequence([seed, node, sample])" in res.metadata["sampling"]


def test_export_keeps_in_graph_sampling(tmp_path, toy, inputs):
    """A file has no bank: seeded Random* nodes; each run draws anew, a fresh session
    repeats the same sequence of runs."""
    out = str(tmp_path / "unc.onnx")
    est = Estimator(toy(), SPECS["dropout"], samples=16, seed=1)
    est.export(out, example=inputs[0])
    model = onnx.load(out)
    assert [i.name for i in model.graph.input] == ["x"]
    assert sum(n.op_type == "RandomUniformLike" for n in model.graph.node) == 1
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["tfue.seed"] == "1" and "in-graph" in meta["tfue.sampling"]

    def two_runs():
        s = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
        return [s.run(["y.variance"], {"x": inputs[0]})[0] for _ in range(2)]

    first, again = two_runs(), two_runs()
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], first[1])
    # Same distribution as the estimator's own (fed) draws.
    fed = est(inputs[0]).variance
    assert 0.5 < float(first[0].mean() / fed.mean()) < 2


def test_cli_folder_of_two_inputs_vs_one(cli, tmp_path, toy, inputs):
    model = toy()
    both, one = tmp_path / "both", tmp_path / "one"
    both.mkdir()
    one.mkdir()
    np.save(both / "a.npy", inputs[0][0])
    np.save(both / "b.npy", inputs[1][0])
    np.save(one / "b.npy", inputs[1][0])
    common = ["--method", "dropout", "--at", "r1", "--rate", 0.2, "--seed", 0, "-n", 6]
    for src, out, extra in ((both, "o_both", []), (one, "o_one", ["--chunk", 1]),
                            (one, "o_one3", ["--chunk", 4, "--strategy", "batched"])):
        r = cli("run", model, src, *common, "--out", tmp_path / out, *extra)
        assert r.exit_code == 0, r.output
    with np.load(tmp_path / "o_both" / "b.npz") as z1, np.load(tmp_path / "o_one" / "b.npz") as z2:
        np.testing.assert_array_equal(z1["variance"], z2["variance"])
        np.testing.assert_array_equal(z1["mean"], z2["mean"])
        meta = json.loads(str(z1["metadata"]))
        assert meta["seed"] == 0 and "SeedSequence" in meta["sampling"]
    with np.load(tmp_path / "o_one3" / "b.npz") as z3, np.load(tmp_path / "o_one" / "b.npz") as z2:
        np.testing.assert_allclose(z3["variance"], z2["variance"], rtol=1e-4, atol=1e-9)
    summary = json.loads((tmp_path / "o_both" / "summary.json").read_text())
    assert summary["seed"] == 0 and "SeedSequence" in summary["sampling"]
