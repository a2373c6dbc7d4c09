import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tfue_onnx import Dropout, MCDropout, Noise, TfueError
from tfue_onnx import graph as graphs
from tfue_onnx.model import ModelInfo, inspect_model


def _session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _run(model, feeds):
    s = _session(model)
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def _feeds(info, ug, x, **kw):
    """The feeds of ``ug`` on input ``x``: the banks sized by the location probe."""
    shapes = None
    if ug.draws:
        probe = graphs.location_probe(info, ug.draws)
        shapes = {"x": x.shape, **({} if probe is None else
                                   {k: v.shape for k, v in _run(probe, {"x": x}).items()})}
    return {"x": x, **ug.feeds(shapes=shapes, **kw)}


@pytest.mark.parametrize("strategy", graphs.GRAPH_STRATEGIES)
@pytest.mark.parametrize("spec", [Noise(0.3, at="r1"), Noise(0.3, at="input", mode="relative"),
                                  Dropout(0.3, at="c1"), Dropout(0.3, at="y")])
def test_level_zero_reproduces_the_model(toy, x8, strategy, spec):
    path = toy()
    info = inspect_model(path)
    ref = _run(info.model, {"x": x8})["y"]
    if strategy == "shared-prefix" and spec.at in ("input", "y"):
        # At the input nothing comes before; at the output nothing after.
        with pytest.raises(graphs.StrategyUnavailable, match="nothing"):
            graphs.build(info, spec, strategy, samples=5, seed=3)
        return
    ug = graphs.build(info, spec, strategy, samples=5, seed=3)
    out = _run(ug.model, _feeds(info, ug, x8, level=0.0))
    assert set(out) == {"y", "y.mean", "y.variance"}
    np.testing.assert_allclose(out["y"], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["y.mean"], out["y"], rtol=1e-6, atol=1e-7)
    assert out["y.variance"].shape == ref.shape and float(out["y.variance"].max()) < 1e-12
    if strategy != "loop":  # same kernels for every slot: exactly the output
        np.testing.assert_array_equal(out["y.mean"], out["y"])
        assert float(out["y.variance"].max()) == 0.0
    on = _run(ug.model, _feeds(info, ug, x8))
    np.testing.assert_allclose(on["y"], ref, rtol=1e-5, atol=1e-6)  # unperturbed stays so
    assert float(on["y.variance"].mean()) > 1e-4


def test_graph_keeps_names_ir_and_opset(toy):
    info = inspect_model(toy(opset=11, ir_version=6))
    ug = graphs.build(info, Noise(0.1, at="r1"), "batched", samples=4)
    m = ug.model
    assert m.ir_version == 6
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 11)]
    assert [o.name for o in m.graph.output] == ["y", "y.mean", "y.variance"]
    new = [n for n in m.graph.node if n.name not in {"conv1", "relu1", "conv2", "sigmoid"}]
    assert new and all(n.name.startswith("tfue/") for n in new)
    assert all(o.startswith("tfue/") or o in ("y", "y.mean", "y.variance")
               for n in new for o in n.output)
    onnx.checker.check_model(m)
    # N, the level and the bank of draws are inputs the runner feeds.
    assert [i.name for i in m.graph.input] == ["x", *ug.level_inputs, "tfue/bank/1",
                                               ug.samples_input]
    assert [(d.input, d.location, d.kind) for d in ug.draws] == [("tfue/bank/1", "r1", "normal")]
    with pytest.raises(ValueError, match="sampling='graph'"):
        ug.frozen()
    # With the draws made in the graph, N and the level frozen are constants.
    ug = graphs.build(info, Noise(0.1, at="r1"), "batched", samples=4, sampling="graph")
    assert ug.draws == [] and ug.sampling == "graph"
    onnx.checker.check_model(ug.model)
    frozen = ug.frozen()
    assert [i.name for i in frozen.graph.input] == ["x"]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in frozen.graph.initializer}
    assert inits[ug.samples_input].tolist() == [4]
    assert [float(inits[k]) for k in ug.level_inputs] == [pytest.approx(0.1)]


def test_prefix_avoids_existing_names(tmp_path, toy):
    m = onnx.load(toy())
    m.graph.node[1].output[0] = "tfue/r1"
    m.graph.node[2].input[0] = "tfue/r1"
    ug = graphs.build(ModelInfo(m), Noise(0.1, at="tfue/r1"), "batched", samples=2)
    added = [n for n in ug.model.graph.node if n.name.startswith("tfue")]
    assert added and all(n.name.startswith("tfue1/") for n in added)


def test_dropout_drops_fraction_p(toy, x8):
    """Dropout at the output: each sample zeroes ~p of the elements, scales the rest."""
    info = inspect_model(toy())
    p = 0.3
    ug = graphs.build(info, Dropout(p, at="y"), "batched", samples=64, seed=0, keep_samples=True)
    out = _run(ug.model, _feeds(info, ug, x8))
    samples, y = out["y.samples"], out["y"]
    assert samples.shape == (64, 1, 2, 8, 8)
    dropped = float(np.mean(samples == 0))
    assert abs(dropped - p) < 0.03  # 8192 Bernoulli draws: std 0.005
    kept = samples != 0
    np.testing.assert_allclose(samples[kept], np.broadcast_to(y / (1 - p), samples.shape)[kept],
                               rtol=1e-5)


def test_noise_has_requested_sigma(toy, x8):
    info = inspect_model(toy())
    ug = graphs.build(info, Noise(0.2, at="y"), "loop", samples=64, seed=0, keep_samples=True)
    out = _run(ug.model, _feeds(info, ug, x8))
    noise = out["y.samples"] - out["y"][None]
    assert abs(float(noise.std()) - 0.2) < 0.01 and abs(float(noise.mean())) < 0.01
    # Variance from the Welford loop equals numpy's population variance of the samples.
    np.testing.assert_allclose(out["y.variance"], out["y.samples"].var(axis=0), rtol=1e-3,
                               atol=1e-7)


@pytest.mark.parametrize("opset,training_input", [(7, False), (10, False), (13, True)])
def test_mc_dropout_switches_on_own_dropout(toy, x8, opset, training_input):
    path = toy(opset=opset, dropout_ratio=0.5, dropout_training_input=training_input)
    info = inspect_model(path)
    ref = _run(info.model, {"x": x8})["y"]
    strategy = "loop" if opset < 10 else "batched"
    for sampling, randoms in (("graph", 1), ("fed", 0)):
        ug = graphs.build(info, MCDropout(), strategy, samples=8, seed=1, sampling=sampling)
        sampled = ug.model.graph.node
        if strategy == "loop":  # the outer copy is the unperturbed model; the body samples
            [loop] = [n for n in sampled if n.op_type == "Loop"]
            sampled = loop.attribute[0].g.node
        assert not any(n.op_type == "Dropout" for n in sampled)
        assert sum(n.op_type == "RandomUniformLike" for n in sampled) == randoms
    assert [(d.location, d.kind) for d in ug.draws] == [("r1", "uniform")]  # fed: one bank
    assert [float(v) for v in ug.level_inputs.values()] == [0.5]  # the node's own ratio
    out = _run(ug.model, _feeds(info, ug, x8))
    np.testing.assert_allclose(out["y"], ref, rtol=1e-5, atol=1e-6)
    assert float(out["y.variance"].mean()) > 1e-3
    zero = _run(ug.model, _feeds(info, ug, x8, level=0.0))
    assert float(zero["y.variance"].max()) < 1e-10


def test_mc_dropout_errors(toy):
    with pytest.raises(TfueError, match=r"no Dropout node.*Dropout\(...\)"):
        graphs.build(inspect_model(toy()), MCDropout(), "batched")
    info = inspect_model(toy("d", dropout_ratio=0.2))
    with pytest.raises(TfueError, match="unknown Dropout node 'drop2'.*'drop1'"):
        graphs.build(info, MCDropout(nodes=("drop2",)), "batched")


def test_batched_needs_a_free_batch_axis(toy):
    info = inspect_model(toy(batch=1))
    with pytest.raises(graphs.StrategyUnavailable, match="fixed batch size 1"):
        graphs.build(info, Noise(0.1, at="r1"), "batched")


@pytest.mark.parametrize("samples,message", [(1, "samples must be an integer >= 2"),
                                             (0, "samples must be an integer >= 2"),
                                             (-3, "samples must be an integer >= 2"),
                                             (2.5, "samples must be an integer, got 2.5")])
def test_samples_must_be_at_least_two(toy, samples, message):
    with pytest.raises(TfueError, match=message):
        graphs.build(inspect_model(toy()), Noise(0.1, at="r1"), "batched", samples=samples)


def test_shared_prefix_tiles_only_what_crosses_the_cut(tmp_path, x8):
    import toys
    info = inspect_model(toys.skip_net(tmp_path / "skip.onnx"))
    ug = graphs.build(info, Noise(0.3, at="r1"), "shared-prefix", samples=6, seed=2,
                      keep_samples=True)
    tiles = [n for n in ug.model.graph.node if n.op_type == "Tile" and
             n.input[0] in ("x", "c1", "r1")]
    assert sorted(n.input[0] for n in tiles) == ["c1", "r1"]  # the location and the skip
    conv1 = [n for n in ug.model.graph.node if n.op_type == "Conv" and n.input[1] == "w1"]
    assert conv1[0].input[0] == "x"  # the prefix reads the untiled input: it runs once
    out = _run(ug.model, _feeds(info, ug, x8))
    batched = graphs.build(info, Noise(0.3, at="r1"), "batched", samples=6, seed=2,
                           keep_samples=True)
    ref = _run(batched.model, _feeds(info, batched, x8))
    # Same seed, same tensor shape at the location: the very same samples.
    np.testing.assert_allclose(out["y.samples"], ref["y.samples"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["y.variance"], ref["y.variance"], rtol=1e-4, atol=1e-8)
    assert float(out["y.variance"].mean()) > 1e-3


def test_random_nodes_get_uncorrelated_streams():
    """onnxruntime's generator is linear congruential: seeds s and s+1 give streams
    with correlation 0.5. The seeds of a graph's random nodes are hashed apart."""
    from onnx import TensorProto, helper
    from tfue_onnx.graph.graybox import _Perturber

    def stream(seed):
        g = helper.make_graph([helper.make_node("RandomUniformLike", ["x"], ["y"], seed=seed)],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 7
        return _run(m, {"x": np.zeros(50000, np.float32)})["y"]

    assert np.corrcoef(stream(1.0), stream(2.0))[0, 1] > 0.4  # why the seeds are hashed
    for user_seed in (0, 7):
        p = _Perturber(None, user_seed)
        a, b = stream(p._seed()), stream(p._seed())
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.03
