"""Outputs listed twice, scalar locations, the 'no strategy' message and shape
inference on shuffled graphs (issue 9, round 2)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfue_onnx import Noise, TfueError, Transform
from tfue_onnx import graph as graphs

from tfue_onnx.model import ModelInfo
from tfue_onnx.runner import Estimator

F = TensorProto.FLOAT
RNG = np.random.default_rng(3)


def _w(*shape):
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.5).astype(np.float32))


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _conv(x, w, out):
    return helper.make_node("Conv", [x, w], [out], pads=[1, 1, 1, 1])


def _model(nodes, inits, outputs, opset=13, x_shape=("N", 3, "H", "W")):
    graph = helper.make_graph(nodes, "t", [_vi("x", list(x_shape))], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _named(init, name):
    init.name = name
    return init


def _ort(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess, dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)


# --- an output listed twice -------------------------------------------------------------
def dup_model(kind, opset=13):
    """x -> Conv -> `a` -> Relu -> y, with y listed twice in several ways.

    plain: [y, y]; const: [y, y, cst]; between: [y, z, y] with z = Conv(y) (y is also
    read inside); three: [y, y, y] at opset 11; input: [x, y, x] (a returned input twice).
    """
    nodes = [_conv("x", "w1", "a"), helper.make_node("Relu", ["a"], ["y"])]
    inits = [_named(_w(4, 3, 3, 3), "w1")]
    y = _vi("y", ["N", 4, "H", "W"])
    outputs = {"plain": [y, y], "three": [y, y, y], "const": [y, y, _vi("cst", [2])],
               "input": [_vi("x", ["N", 3, "H", "W"]), y, _vi("x", ["N", 3, "H", "W"])]}
    if kind == "const":
        inits.append(numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "cst"))
    if kind == "between":
        nodes.append(_conv("y", "w2", "z"))
        inits.append(_named(_w(2, 4, 3, 3), "w2"))
        outputs["between"] = [y, _vi("z", ["N", 2, "H", "W"]), y]
    return _model(nodes, inits, outputs[kind], opset=opset)


def single_model(model):
    """``model`` with every output listed once."""
    single = onnx.ModelProto()
    single.CopyFrom(model)
    kept = list({o.name: o for o in model.graph.output}.values())
    del single.graph.output[:]
    single.graph.output.extend(kept)
    return single


DUPS = [("plain", 13), ("const", 13), ("between", 13), ("three", 11), ("input", 17)]


def _expected_outputs(model, stats):
    """The model's outputs in order, each listing again right after the earlier one,
    then each float output's statistics once, after its last listing."""
    names = [o.name for o in model.graph.output]
    out = []
    for name in dict.fromkeys(names):
        out += [name] * names.count(name)
        if name in stats:
            out += [f"{name}.mean", f"{name}.variance"]
    return out


@pytest.mark.parametrize("kind,opset", DUPS)
@pytest.mark.parametrize("strategy", graphs.GRAPH_STRATEGIES)
def test_output_listed_twice_gets_its_statistics_once(kind, opset, strategy, x):
    model = dup_model(kind, opset)
    info = ModelInfo(model)
    if kind == "input" and strategy == "shared-prefix":
        with pytest.raises(graphs.StrategyUnavailable, match="output 'x' does not depend"):
            graphs.build(info, Noise(0.3, at="a"), strategy, samples=4, sampling="graph")
        return
    ug = graphs.build(info, Noise(0.3, at="a"), strategy, samples=4, seed=1, sampling="graph")
    names = [o.name for o in ug.model.graph.output]
    floats = [o.name for o in model.graph.output if o.name != "cst"]
    assert ug.stats_outputs == list(dict.fromkeys(floats))
    stats = set(ug.stats_outputs)
    assert names == _expected_outputs(model, stats)
    # The graph's own head: level 0 gives the model, level 0.3 a spread.
    sess, ref = _ort(model, {"x": x})
    _, out = _ort(ug.model, {"x": x, **ug.feeds(level=0.0)})
    for name in stats:
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[f"{name}.mean"], ref[name], rtol=1e-5, atol=1e-6)
        assert float(np.abs(out[f"{name}.variance"]).max()) < 1e-10
    if "x" in names:
        np.testing.assert_array_equal(out["x"], x)


@pytest.mark.parametrize("kind,opset", DUPS)
def test_estimator_on_output_listed_twice_equals_the_model_listing_it_once(kind, opset, x):
    """Same seed, same location: the model with y listed twice gives exactly the
    results of the model listing it once; at level 0 the mean is the output."""
    model = dup_model(kind, opset)
    _, ref = _ort(model, {"x": x})
    for strategy in ("auto", "loop"):
        twice = Estimator(model, Noise(0.3, at="a"), samples=5, seed=4, strategy=strategy,
                          provider="cpu")
        once = Estimator(single_model(model), Noise(0.3, at="a"), samples=5, seed=4,
                         strategy=strategy, provider="cpu")
        zero = twice({"x": x}, level=0.0)
        np.testing.assert_allclose(zero.outputs["y"].mean, ref["y"], rtol=1e-5, atol=1e-6)
        assert float(zero.outputs["y"].variance.max()) < 1e-10
        a, b = twice({"x": x}), once({"x": x})
        assert set(a.outputs) == set(b.outputs)
        for name in a.outputs:
            np.testing.assert_allclose(a.outputs[name].output, b.outputs[name].output)
            if b.outputs[name].mean is not None:
                np.testing.assert_allclose(a.outputs[name].mean, b.outputs[name].mean,
                                           rtol=1e-6, atol=1e-7)
                np.testing.assert_allclose(a.outputs[name].variance,
                                           b.outputs[name].variance, rtol=1e-5, atol=1e-9)
        assert float(a.outputs["y"].variance.mean()) > 1e-4


def _flips_reference(model, x):
    """Mean and variance of infer-transformation (flips) on an NCHW map output, from
    plain onnxruntime runs of the model and numpy flips."""
    sess, _ = _ort(model, {"x": x})
    outs = []
    for flip in [(), (3,), (2,), (2, 3)]:
        y = sess.run(["y"], {"x": np.ascontiguousarray(np.flip(x, flip) if flip else x)})[0]
        outs.append(np.flip(y, flip) if flip else y)
    return np.mean(outs, 0), np.var(outs, 0)


@pytest.mark.parametrize("kind,opset", [("plain", 13), ("const", 13), ("between", 17)])
def test_transforms_on_output_listed_twice(kind, opset, x, tmp_path):
    model = dup_model(kind, opset)
    mean, var = _flips_reference(model, x)
    for strategy in ("batched", "loop"):
        r = Estimator(model, Transform("flips"), strategy=strategy, provider="cpu")({"x": x})
        np.testing.assert_allclose(r.outputs["y"].mean, mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.outputs["y"].variance, var, rtol=1e-4, atol=1e-7)
    path = Estimator(model, Transform("flips"), provider="cpu").export(tmp_path / "u.onnx")
    exported = onnx.load(path)
    stats = {"y", "z"} & {o.name for o in model.graph.output}  # cst is a constant
    assert [o.name for o in exported.graph.output] == _expected_outputs(model, stats)
    _, out = _ort(exported, {"x": x})
    np.testing.assert_allclose(out["y.mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["y.variance"], var, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", ["plain", "const", "between"])
def test_ensemble_of_models_listing_an_output_twice(kind, x):
    from tfue_onnx import Ensemble

    model, member = dup_model(kind), dup_model(kind)
    w1 = numpy_helper.to_array(member.graph.initializer[0]) * 1.2
    member.graph.initializer[0].CopyFrom(numpy_helper.from_array(w1, "w1"))
    ys = [_ort(m, {"x": x})[1]["y"] for m in (model, member)]
    runner = Estimator(model, Ensemble((member,)), provider="cpu")
    r = runner.run({"x": x})
    np.testing.assert_allclose(r.outputs["y"].mean, np.mean(ys, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.outputs["y"].variance, np.var(ys, 0), rtol=1e-4, atol=1e-7)
    ug = runner.uncertainty_graph({"x": x})
    stats = {"y", "z"} & {o.name for o in model.graph.output}
    assert [o.name for o in ug.model.graph.output] == _expected_outputs(model, stats)


def test_output_listed_twice_from_the_cli(cli, tmp_path, x):
    path = tmp_path / "dup.onnx"
    model = dup_model("const")
    onnx.save(model, path)
    np.save(tmp_path / "x.npy", x)
    mean, _ = _flips_reference(model, x)
    r = cli("run", path, tmp_path / "x.npy", "--method", "transform", "--transforms", "flips",
            "-o", tmp_path / "o", "--provider", "cpu")
    assert r.exit_code == 0, r.output
    npz = sorted((tmp_path / "o").rglob("*.npz"))
    assert npz, r.output
    with np.load(npz[0]) as data:
        key = next(k for k in data.files if k.endswith("mean"))
        np.testing.assert_allclose(data[key].reshape(mean.shape), mean, rtol=1e-5, atol=1e-6)


def test_verification_checks_the_runners_own_reduction(x, monkeypatch):
    """The graph's head may be right while the runner's reduction of the samples is
    wrong: verification checks what the user gets, so a wrong mean never passes."""
    model = dup_model("plain")
    real = Estimator._statistics

    def doubled(self, ug, chunks):
        results = real(self, ug, chunks)
        for r in results.values():
            if r.mean is not None:
                r.mean = r.mean + r.output
        return results

    monkeypatch.setattr(Estimator, "_statistics", doubled)
    with pytest.raises(TfueError, match="no uncertainty graph passed verification.*"
                                        "sample mean of 'y' differs"):
        Estimator(model, Noise(0.3, at="a"), samples=3, seed=0, provider="cpu")({"x": x})


def test_verification_checks_the_transform_mean(x, monkeypatch):
    """Transforms not undone on the output give a wrong mean: verification compares
    it with the original model's runs on transformed inputs."""
    from tfue_onnx.graph import blackbox

    monkeypatch.setattr(blackbox, "_inverse", lambda b, part, *args: part)
    with pytest.raises(TfueError, match="sample mean of 'y' differs from that of the "
                                        "transformed runs of the original"):
        Estimator(dup_model("plain"), Transform("flips"), provider="cpu")({"x": x})


# --- a scalar location ----------------------------------------------------------------
def scalar_model(kind):
    """A rank-0 tensor `s` between Conv `a` and the output y = a * s (or a + s)."""
    nodes = [_conv("x", "w1", "a")]
    if kind == "mean13":
        nodes.append(helper.make_node("ReduceMean", ["a"], ["s"], keepdims=0))
        opset = 13
    elif kind == "max18":  # axes as an input from opset 18; none given: every axis
        nodes.append(helper.make_node("ReduceMax", ["a"], ["s"], keepdims=0))
        opset = 18
    else:  # sum11: ReduceSum over the listed axes, all of them
        nodes.append(helper.make_node("ReduceSum", ["a"], ["s"], keepdims=0, axes=[0, 1, 2, 3]))
        opset = 11
    nodes.append(helper.make_node("Mul" if kind != "max18" else "Add", ["a", "s"], ["y"]))
    return _model(nodes, [_named(_w(4, 3, 3, 3), "w1")], [_vi("y", ["N", 4, "H", "W"])],
                  opset=opset)


@pytest.mark.parametrize("kind", ["mean13", "max18", "sum11"])
def test_scalar_location_runs_in_the_loop_strategy(kind, x):
    model = scalar_model(kind)
    assert ModelInfo(model).tensor_infos["s"].shape == ()
    for strategy in ("batched", "shared-prefix"):
        with pytest.raises(graphs.StrategyUnavailable, match="location 's' is a scalar"):
            graphs.build(ModelInfo(model), Noise(0.3, at="s"), strategy, samples=3)
        with pytest.raises(TfueError) as e:
            Estimator(model, Noise(0.3, at="s"), samples=3, seed=0, strategy=strategy,
                   provider="cpu").run({"x": x})
        assert e.value.message == (f"no sampling strategy applies to this model: {strategy}: "
                                   "location 's' is a scalar (rank 0): it has no batch axis "
                                   "to tile")
        assert e.value.hint.startswith("try --strategy auto")
    est = Estimator(model, Noise(0.3, at="s"), samples=6, seed=2, provider="cpu")
    zero = est({"x": x}, level=0.0)
    assert zero.metadata["strategy"] == "loop"
    assert any("strategy batched: not available (location 's' is a scalar" in n
               for n in est.notes)
    # Independent reference: a and s from the model, y_k = a op (s + 0.3 eps_k) in numpy.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend([_vi("a", None), _vi("s", None)])
    _, ref = _ort(probe, {"x": x})
    np.testing.assert_allclose(zero.outputs["y"].mean, ref["y"], rtol=1e-5, atol=1e-6)
    r = est({"x": x})
    ug = est._built["loop"][0]
    (draw,) = ug.draws
    eps = graphs.builder.draw_bank(draw, 2, (), 0, 6).reshape(6)
    op = np.add if kind == "max18" else np.multiply
    samples = np.stack([op(ref["a"], ref["s"] + np.float32(0.3) * e) for e in eps])
    np.testing.assert_allclose(r.outputs["y"].mean, samples.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r.outputs["y"].variance, samples.var(0), rtol=1e-3, atol=1e-7)


# --- the 'no strategy applies' message ----------------------------------------------------
def test_no_strategy_message_lists_only_the_strategies_reasons(x):
    est = Estimator(dup_model("plain"), Transform("flips"), strategy="shared-prefix",
                    provider="cpu")
    with pytest.raises(TfueError) as e:
        est({"x": x})
    assert e.value.message == ("no sampling strategy applies to this model: shared-prefix: "
                               "black-box methods perturb the input: no prefix to share")
    assert any(n.startswith("transforms undone on output axes") for n in est.notes)


# --- shape inference on shuffled graphs --------------------------------------------------
def ifloop_model(opset):
    then_g = helper.make_graph([helper.make_node("Relu", ["h2"], ["tout"])], "then", [],
                               [_vi("tout", None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["h2"], ["eout"])], "else", [],
                               [_vi("eout", None)])
    nodes = [_conv("x", "w1", "h1"), _conv("h1", "w2", "h2"),
             helper.make_node("ReduceMean", ["x"], ["xm"], keepdims=0),
             helper.make_node("Greater", ["xm", "big"], ["cond"]),
             helper.make_node("If", ["cond"], ["ifo"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Mul", ["ifo", "ifo"], ["y"])]
    inits = [_named(_w(4, 3, 3, 3), "w1"), _named(_w(2, 4, 3, 3), "w2"),
             numpy_helper.from_array(np.array(-1e9, np.float32), "big")]
    return _model(nodes, inits, [_vi("y", ["N", 2, "H", "W"])], opset=opset)


def chain_model(opset):
    nodes = [_conv("x", "w1", "c1"), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Transpose", ["r1"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Sigmoid", ["t"], ["y"])]
    return _model(nodes, [_named(_w(4, 3, 3, 3), "w1")], [_vi("y", ["N", "H", "W", 4])],
                  opset=opset)


def _shuffled(model, order):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes = [copy.graph.node[k] for k in order(len(copy.graph.node))]
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes]
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


@pytest.mark.parametrize("make,opset", [(ifloop_model, 17), (ifloop_model, 11),
                                        (chain_model, 13), (scalar_model, "mean13"),
                                        (dup_model, "between")])
@pytest.mark.parametrize("order", ["reversed", "rotated"])
def test_shuffled_nodes_give_the_sorted_models_shapes(make, opset, order):
    model = make(opset)
    orders = {"reversed": lambda n: list(range(n))[::-1],
              "rotated": lambda n: list(range(1, n)) + [0]}
    sorted_info = ModelInfo(model)
    shuffled_info = ModelInfo(_shuffled(model, orders[order]))
    assert shuffled_info.tensor_infos == sorted_info.tensor_infos
    # The order of candidates follows the file where it may; their shapes are the same.
    assert {c.name: c.shape for c in shuffled_info.candidates} == \
        {c.name: c.shape for c in sorted_info.candidates}
    if make is ifloop_model:  # a Conv output: rank 4, never a scalar
        assert len(shuffled_info.tensor_infos["h2"].shape) == 4
