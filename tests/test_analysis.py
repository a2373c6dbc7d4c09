"""Whole-graph analysis (issue 9, classes 1, 3 and 5).

Every model here is built in the test: unsorted nodes, control flow whose
subgraphs read tensors of the enclosing graph (If, Loop, Scan), onnxruntime
contrib ops that onnx's shape inference does not know, outputs that are also
inputs / read inside / listed twice / constant, and Softmax outputs at opsets
whose semantics differ. Numbers are checked against plain onnxruntime and numpy.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfue_onnx import Dropout, Noise, TfueError, Transform
from tfue_onnx import graph as graphs
from tfue_onnx.axes import find_axes
from tfue_onnx.model import ModelInfo, toposorted
from tfue_onnx.perturb import Ensemble, Entropy
from tfue_onnx.runner import Estimator

F = TensorProto.FLOAT
RNG = np.random.default_rng(7)


def _w(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inits, outputs, opset=13, inputs=None, domains=()):
    graph = helper.make_graph(nodes, "t", inputs or [_vi("x", ["N", 3, "H", "W"])],
                              outputs, inits)
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    return model


def _run(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def _signature(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [i.name for i in s.get_inputs()], [o.name for o in s.get_outputs()]


def _conv(x, w, out, name=None):
    return helper.make_node("Conv", [x, w], [out], name=name or f"conv_{out}", pads=[1, 1, 1, 1])


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32) + 0.5


# --- models -----------------------------------------------------------------------
def if_model(cond="value"):
    """x -> Conv -> c1 -> Tanh -> r1; If (branches read r1 from the outer scope) -> branch
    -> Conv -> c2 -> Relu -> r2 -> Conv -> y. The condition comes from x's values or its
    shape (then it does not depend on the input's values at all)."""
    then_g = helper.make_graph([helper.make_node("Relu", ["r1"], ["t1"]),
                                helper.make_node("Mul", ["t1", "two"], ["t_out"])], "then",
                               [], [_vi("t_out", None)],
                               [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    else_g = helper.make_graph([helper.make_node("Sigmoid", ["r1"], ["e_out"])], "else", [],
                               [_vi("e_out", None)])
    if cond == "value":
        cond_nodes = [helper.make_node("ReduceMean", ["x"], ["xm"], keepdims=0),
                      helper.make_node("Greater", ["xm", "zero"], ["cond"])]
    else:
        cond_nodes = [helper.make_node("Shape", ["x"], ["shp"]),
                      helper.make_node("Gather", ["shp", "idx"], ["wdim"]),
                      helper.make_node("Greater", ["wdim", "four"], ["cond1"]),
                      helper.make_node("Squeeze", ["cond1"], ["cond"])]
    nodes = [_conv("x", "w1", "c1"), helper.make_node("Tanh", ["c1"], ["r1"])] + cond_nodes + [
        helper.make_node("If", ["cond"], ["branch"], then_branch=then_g, else_branch=else_g),
        _conv("branch", "w2", "c2"), helper.make_node("Relu", ["c2"], ["r2"]),
        _conv("r2", "w3", "y")]
    inits = [numpy_helper.from_array(_w(4, 3, 3, 3), "w1"),
             numpy_helper.from_array(_w(4, 4, 3, 3), "w2"),
             numpy_helper.from_array(_w(2, 4, 3, 3), "w3"),
             numpy_helper.from_array(np.array([3], np.int64), "idx"),
             numpy_helper.from_array(np.array([4], np.int64), "four"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    return _model(nodes, inits, [_vi("y", ["N", 2, "H", "W"])])


def loop_model():
    """A Loop (2 iterations) whose body adds half of r1, read from the outer scope, to
    the carried value (started at r1): loop_out = 2 * r1."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["r1", "half"], ["m"]),
         helper.make_node("Add", ["v_in", "m"], ["v_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [_vi("it", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("v_in", None)],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("v_out", None)],
        [numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    nodes = [_conv("x", "w1", "c1"), helper.make_node("Tanh", ["c1"], ["r1"]),
             helper.make_node("Loop", ["trips", "true", "r1"], ["loop_out"], body=body),
             _conv("loop_out", "w2", "y")]
    inits = [numpy_helper.from_array(_w(4, 3, 3, 3), "w1"),
             numpy_helper.from_array(_w(2, 4, 3, 3), "w2"),
             numpy_helper.from_array(np.array(2, np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "true")]
    return _model(nodes, inits, [_vi("y", ["N", 2, "H", "W"])])


def scan_model():
    """A Scan over the channels of r1 (axis 1) whose body reads 'gate' (a tensor of the
    main graph) from the outer scope: a running sum scaled by the gate."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["xi", "gate"], ["g"]),
         helper.make_node("Add", ["s_in", "g"], ["s_out"]),
         helper.make_node("Relu", ["s_out"], ["o"])], "body",
        [_vi("s_in", ["N", "H", "W"]), _vi("xi", ["N", "H", "W"])],
        [_vi("s_out", ["N", "H", "W"]), _vi("o", ["N", "H", "W"])])
    nodes = [_conv("x", "w1", "c1"), helper.make_node("Tanh", ["c1"], ["r1"]),
             helper.make_node("ReduceMean", ["c1"], ["gate"], axes=[1], keepdims=0),
             helper.make_node("ReduceMean", ["r1"], ["s0"], axes=[1], keepdims=0),
             helper.make_node("Scan", ["s0", "r1"], ["s_final", "scanned"], body=body,
                              num_scan_inputs=1, scan_input_axes=[1], scan_output_axes=[1]),
             _conv("scanned", "w2", "y")]
    inits = [numpy_helper.from_array(_w(4, 3, 3, 3), "w1"),
             numpy_helper.from_array(_w(2, 4, 3, 3), "w2")]
    return _model(nodes, inits, [_vi("y", ["N", 2, "H", "W"])])


def contrib_model(op="Gelu"):
    """x -> Conv -> c1 -> com.microsoft op (Gelu, or FusedMatMul with a 1x1 weight on the
    last axis) -> g -> Relu -> r -> Conv -> y: onnx's shape inference knows no type
    after g."""
    if op == "Gelu":
        mid = [helper.make_node("Gelu", ["c1"], ["g"], domain="com.microsoft")]
        inits = []
    else:
        mid = [helper.make_node("FusedMatMul", ["c1", "m"], ["g"], domain="com.microsoft",
                                alpha=0.5)]
        inits = [numpy_helper.from_array(_w(8, 8), "m")]
    nodes = [_conv("x", "w1", "c1")] + mid + [helper.make_node("Relu", ["g"], ["r"]),
                                              _conv("r", "w2", "y")]
    inits += [numpy_helper.from_array(_w(4, 3, 3, 3), "w1"),
              numpy_helper.from_array(_w(2, 4, 3, 3), "w2")]
    return _model(nodes, inits, [_vi("y", None)], domains=["com.microsoft"])


def unsorted(model):
    """``model`` with its nodes in reverse order (onnxruntime runs it all the same)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes = list(copy.graph.node)[::-1]
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


def plain_model():
    nodes = [_conv("x", "w1", "c1"), helper.make_node("Relu", ["c1"], ["r1"]),
             _conv("r1", "w2", "c2"), helper.make_node("Sigmoid", ["c2"], ["y"])]
    inits = [numpy_helper.from_array(_w(4, 3, 3, 3), "w1"),
             numpy_helper.from_array(_w(2, 4, 3, 3), "w2")]
    return _model(nodes, inits, [_vi("y", ["N", 2, "H", "W"])])


def _check_level_zero(info, spec, strategy, x, samples=3):
    """Build ``spec`` with ``strategy``; level 0 must give the model's outputs exactly."""
    ref = _run(info.model, {"x": x})
    if strategy == "looped-suffix":  # two graphs: the runner drives them
        r = Estimator(info.model, spec, samples=samples, seed=1, strategy=strategy, provider="cpu")
        res = r.run({"x": x}, level=0.0)
        assert res.metadata["strategy"] == strategy
        for name, value in ref.items():
            np.testing.assert_allclose(res.outputs[name].output, value, rtol=1e-4, atol=1e-5)
            if res.outputs[name].mean is not None:
                np.testing.assert_allclose(res.outputs[name].mean, value, rtol=1e-4, atol=1e-5)
                assert float(np.abs(res.outputs[name].variance).max()) < 1e-10
        return r.uncertainty_graph({"x": x})
    ug = graphs.build(info, spec, strategy, samples=samples, seed=1, sampling="graph")
    out = _run(ug.model, {"x": x, **ug.feeds(level=0.0)})
    for name, value in ref.items():  # other batch sizes may take other kernels
        np.testing.assert_allclose(out[name], value, rtol=1e-4, atol=1e-5)
        if name in ug.stats_outputs:
            np.testing.assert_allclose(out[name + ".mean"], value, rtol=1e-4, atol=1e-5)
            assert float(np.abs(out[name + ".variance"]).max()) < 1e-10
    return ug


# --- class 1: unsorted nodes ----------------------------------------------------------
def test_unsorted_nodes_give_the_sorted_analysis(x):
    model = plain_model()
    shuffled = unsorted(model)
    before = shuffled.SerializeToString()
    a, b = ModelInfo(model), ModelInfo(shuffled)
    assert [(c.name, c.depth, c.op) for c in b.candidates] == \
        [(c.name, c.depth, c.op) for c in a.candidates]
    assert [c.name for c in b.candidates] == ["x", "c1", "r1", "c2", "y"]
    assert b.resolve_location("0.5").name == a.resolve_location("0.5").name == "c2"
    assert shuffled.SerializeToString() == before  # the user's model is untouched
    for strategy in graphs.STRATEGIES:
        _check_level_zero(b, Noise(0.3, at="r1"), strategy, x)


def test_toposorted_keeps_a_sorted_order_and_counts_subgraph_reads():
    model = if_model()
    nodes = list(model.graph.node)
    assert toposorted(nodes) == nodes
    # The If reads r1 only inside its branches: it must still come after the Tanh.
    shuffled = [nodes[-4]] + nodes[:-4] + nodes[-3:]  # the If first
    order = [n.op_type for n in toposorted(shuffled)]
    assert order.index("If") > order.index("Tanh")


# --- class 1: subgraphs reading the enclosing graph ---------------------------------------
@pytest.mark.parametrize("cond", ["value", "shape"])
def test_if_branches_reading_outer_tensors(cond, x):
    info = ModelInfo(if_model(cond))
    names = [c.name for c in info.candidates]
    assert names == ["x", "c1", "r1"] + (["xm"] if cond == "value" else []) + \
        ["branch", "c2", "r2", "y"]
    mid = info.resolve_location("0.5")
    assert mid.name in ("branch", "c2") and mid.op != "input"
    for strategy in ("shared-prefix", "batched"):
        for at in ("r1", "c2", "0.5"):
            _check_level_zero(info, Noise(0.5, at=at), strategy, x)
    _check_level_zero(info, Noise(0.5, at="r1"), "loop", x)  # copies the If (test_subgraphs)
    # Shared prefix cuts before the If: the branches read the tiled r1.
    _check_level_zero(ModelInfo(unsorted(if_model(cond))), Noise(0.5, at="r1"), "shared-prefix", x)
    _check_level_zero(info, Noise(0.5, at="y"), "batched", x)


def _suffix_reference(model, at, x, sigma, n, rng):
    """Monte-Carlo reference of the output variance for noise at ``at``: plain
    onnxruntime runs of the model with ``at`` fed from outside (numpy noise)."""
    full = onnx.ModelProto()
    full.CopyFrom(model)
    full.graph.output.append(onnx.ValueInfoProto(name=at))
    clean = _run(full, {"x": x})[at]
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    keep = [nd for nd in cut.graph.node if at not in nd.output]
    del cut.graph.node[:]
    cut.graph.node.extend(keep)
    cut.graph.input.append(helper.make_tensor_value_info(at, F, None))
    ys = np.stack([_run(cut, {"x": x, at: clean + sigma * rng.standard_normal(clean.shape)
                                .astype(np.float32)})["y"] for _ in range(n)])
    return ys.var(axis=0)


@pytest.mark.parametrize("strategy", ["shared-prefix", "batched"])
def test_noise_before_an_if_reaches_through_its_branches(strategy, x):
    """The variance of y with noise at r1 (read only inside the If) matches a numpy
    Monte-Carlo reference; a perturbation that missed the branches would give 0."""
    model = if_model("value")
    ref = _suffix_reference(model, "r1", x, 0.3, 200, np.random.default_rng(3))
    r = Estimator(model, Noise(0.3, at="r1"), samples=200, seed=5, strategy=strategy,
               provider="cpu").run({"x": x})
    got = r.outputs["y"].variance
    assert r.metadata["strategy"] == strategy
    assert abs(float(got.mean()) / float(ref.mean()) - 1) < 0.15


@pytest.mark.parametrize("build", [loop_model, scan_model], ids=["loop", "scan"])
def test_loop_and_scan_bodies_reading_outer_tensors(build, x):
    info = ModelInfo(build())
    names = [c.name for c in info.candidates]
    out = "loop_out" if build is loop_model else "scanned"
    assert out in names and "y" in names and names[-1] == "y"
    assert info.resolve_location("1.0").name == "y"
    assert info.resolve_location("0.5").op != "input"
    for strategy in ("shared-prefix", "batched"):
        for at in ("r1", out):
            _check_level_zero(info, Noise(0.3, at=at), strategy, x)
    r = Estimator(info.model, Noise(0.3, at="r1"), samples=4, seed=0, provider="cpu")
    assert float(r.run({"x": x}).outputs["y"].variance.mean()) > 1e-4


def test_loop_value_matches_numpy(x):
    """loop_out = r1 + 2 * 0.5 * r1: the analysis did not change what the model computes."""
    model = loop_model()
    full = onnx.ModelProto()
    full.CopyFrom(model)
    full.graph.output.extend([onnx.ValueInfoProto(name="r1"), onnx.ValueInfoProto(name="loop_out")])
    out = _run(full, {"x": x})
    np.testing.assert_allclose(out["loop_out"], 2 * out["r1"], rtol=1e-6)


def test_transform_flips_on_an_if_model(x):
    info = ModelInfo(if_model("value"))
    ug = graphs.build(info, Transform("flips"), "batched", axes=find_axes(info))
    out = _run(ug.model, {"x": x})
    np.testing.assert_allclose(out["y"], _run(info.model, {"x": x})["y"], rtol=1e-5, atol=1e-6)
    assert out["y.variance"].shape == (1, 2, 8, 8) and float(out["y.variance"].max()) > 0


# --- class 1: ops onnx's shape inference does not know -----------------------------------
@pytest.mark.parametrize("op", ["Gelu", "FusedMatMul"])
def test_contrib_ops_are_typed_by_onnxruntime(op, x):
    model = contrib_model(op)
    info = ModelInfo(model)
    names = {c.name: c for c in info.candidates}
    assert list(names) == ["x", "c1", "g", "r", "y"]
    assert info.tensor_infos["g"].dtype == "float32" and info.untyped_tensors == []
    assert list(names["r"].shape)[:2] in (["N", 4], ["?", 4], [-1, 4]) or \
        names["r"].shape is None or len(names["r"].shape) == 4
    assert info.resolve_location("0.5").name in ("g", "r")
    for strategy in graphs.STRATEGIES:
        _check_level_zero(info, Noise(0.3, at="g"), strategy, x)
    r = Estimator(model, Dropout(0.3, at="r"), samples=4, seed=0, provider="cpu")
    assert float(r.run({"x": x}).outputs["y"].variance.mean()) > 0


def test_depth_among_unknown_types_is_refused():
    """An op nobody knows (onnxruntime cannot load it either): the middle of the graph
    has no types, so 0.5 must not silently become the model input."""
    nodes = [helper.make_node("Mystery", ["x"], ["m1"], domain="example.custom"),
             helper.make_node("Mystery", ["m1"], ["m2"], domain="example.custom"),
             helper.make_node("Mystery", ["m2"], ["m3"], domain="example.custom"),
             helper.make_node("Relu", ["m3"], ["y"])]
    info = ModelInfo(_model(nodes, [], [_vi("y", ["N", 3, "H", "W"])],
                            domains=["example.custom"]))
    assert set(info.untyped_tensors) == {"m1", "m2", "m3"}
    with pytest.raises(TfueError, match="unknown.*example.custom.Mystery.*nearest") as e:
        info.resolve_location("0.5")
    assert "--at NAME" in e.value.hint
    assert info.resolve_location("1.0").name == "y"  # known ones still resolve
    assert info.resolve_location("0.0").name == "x"


# --- class 3: names -----------------------------------------------------------------
def passthrough_model():
    """Returns (y, x): the input itself is the second output."""
    m = plain_model()
    m.graph.output.append(_vi("x", ["N", 3, "H", "W"]))
    return m


def consumed_output_model():
    """r1 is an output and also read by the next Conv."""
    m = plain_model()
    m.graph.output.insert(0, _vi("r1", ["N", 4, "H", "W"]))
    return m


def twice_model():
    m = plain_model()
    m.graph.output.append(_vi("y", ["N", 2, "H", "W"]))
    return m


def constant_outputs_model():
    """Also returns an initializer, a Constant node's output and the input's shape."""
    m = plain_model()
    k = numpy_helper.from_array(np.arange(3, dtype=np.float32))
    m.graph.node.append(helper.make_node("Constant", [], ["k"], value=k))
    m.graph.node.append(helper.make_node("Shape", ["x"], ["shape"]))
    m.graph.output.extend([_vi("w2", [2, 4, 3, 3]), _vi("k", [3]),
                           _vi("shape", [4], TensorProto.INT64)])
    return m


NAME_MODELS = {"passthrough": passthrough_model, "consumed": consumed_output_model,
               "twice": twice_model, "constants": constant_outputs_model}


@pytest.mark.parametrize("kind", NAME_MODELS)
@pytest.mark.parametrize("spec,strategy", [
    (Noise(0.3, at="r1"), "shared-prefix"), (Noise(0.3, at="r1"), "batched"),
    (Noise(0.3, at="r1"), "loop"), (Noise(0.3, at="input"), "batched"),
    (Dropout(0.3, at="c1"), "batched"), (Noise(0.3, at="y"), "batched")])
def test_uncertainty_graphs_keep_the_model_names(kind, spec, strategy, x):
    model = NAME_MODELS[kind]()
    info = ModelInfo(model)
    if kind == "passthrough" and strategy == "shared-prefix":
        with pytest.raises(graphs.StrategyUnavailable, match="output 'x' does not depend"):
            graphs.build(info, spec, strategy, samples=3, seed=1, sampling="graph")
        return
    ug = _check_level_zero(info, spec, strategy, x)
    inputs, outputs = _signature(ug.frozen())
    assert inputs == ["x"]
    names = [o.name for o in model.graph.output]
    stats = [n for n in dict.fromkeys(names) if n in ug.stats_outputs]
    assert set(outputs) == set(names) | {f"{n}.{k}" for n in stats for k in ("mean", "variance")}
    out = _run(ug.model, {"x": x, **ug.feeds(level=0.3)})
    ref = _run(model, {"x": x})
    if kind == "passthrough":
        np.testing.assert_array_equal(out["x"], x)
    if kind == "constants":
        np.testing.assert_array_equal(out["shape"], [1, 3, 8, 8])
        np.testing.assert_array_equal(out["k"], ref["k"])
        np.testing.assert_array_equal(out["w2"], ref["w2"])
        assert set(ug.stats_outputs) == {"y"}
    np.testing.assert_allclose(out["y"], ref["y"], rtol=1e-5, atol=1e-6)
    assert float(out["y.variance"].mean()) > 0


def test_consumed_output_perturbed_reaches_its_consumers(x):
    model = consumed_output_model()
    ug = graphs.build(ModelInfo(model), Noise(0.3, at="r1"), "batched", samples=4, seed=0,
                      sampling="graph")
    out = _run(ug.model, {"x": x, **ug.feeds()})
    ref = _run(model, {"x": x})
    np.testing.assert_allclose(out["r1"], ref["r1"], rtol=1e-6)  # unperturbed output
    assert float(out["r1.variance"].mean()) > 0 and float(out["y.variance"].mean()) > 0


@pytest.mark.parametrize("kind", ["passthrough", "consumed", "twice"])
def test_transforms_and_ensembles_keep_the_model_names(kind, x, tmp_path):
    model = NAME_MODELS[kind]()
    info = ModelInfo(model)
    ref = _run(model, {"x": x})
    for spec in (Transform("flips"), Ensemble((ModelInfo(NAME_MODELS[kind]()),))):
        ug = graphs.build(info, spec, "batched", sampling="graph", axes=find_axes(info))
        inputs, outputs = _signature(ug.model)
        assert inputs == ["x"]
        assert set(o.name for o in model.graph.output) <= set(outputs)
        out = _run(ug.model, {"x": x})
        for name, value in ref.items():
            np.testing.assert_allclose(out[name], value, rtol=1e-5, atol=1e-6)
    if kind == "passthrough":  # flipping the input and flipping back is the input
        ug = graphs.build(info, Transform("flips"), "batched", axes=find_axes(info))
        assert float(np.abs(_run(ug.model, {"x": x})["x.variance"]).max()) == 0


def test_passthrough_from_the_cli(cli, tmp_path, x):
    path = tmp_path / "pass.onnx"
    onnx.save(passthrough_model(), path)
    np.save(tmp_path / "x.npy", x)
    for args in (["--method", "noise", "--at", "input"], ["--method", "transform",
                                                          "--transforms", "flips"]):
        r = cli("run", path, tmp_path / "x.npy", *args, "-o", tmp_path / "o", "--force",
                "--provider", "cpu")
        assert r.exit_code == 0, r.output
    r = cli("export", path, "-o", tmp_path / "unc.onnx", "--method", "noise", "--at", "r1",
            "--provider", "cpu", "--force")
    assert r.exit_code == 0, r.output
    inputs, outputs = _signature(onnx.load(tmp_path / "unc.onnx"))
    assert inputs == ["x"] and {"x", "y", "y.mean", "y.variance"} <= set(outputs)


# --- class 5: class probabilities follow the opset ------------------------------------
def softmax_model(opset, axis=1, shape=("N", 4, "H", "W"), op="Softmax", transpose=None,
                  pool=False):
    nodes = [_conv("x", "w1", "logits")]
    if pool:  # [N, 4, 1, 1]
        nodes.append(helper.make_node("GlobalAveragePool", ["logits"], ["pooled"]))
    src = "pooled" if pool else "logits"
    attrs = {} if axis is None else {"axis": axis}
    nodes.append(helper.make_node(op, [src], ["probs" if transpose is None else "p0"], **attrs))
    if transpose == "flatten":  # [N, 4, 1, 1] -> [N, 4]
        nodes.append(helper.make_node("Flatten", ["p0"], ["probs"], axis=1))
    elif transpose is not None:
        nodes.append(helper.make_node("Transpose", ["p0"], ["probs"], perm=transpose))
    return _model(nodes, [numpy_helper.from_array(_w(4, 3, 3, 3, scale=1.0), "w1")],
                  [_vi("probs", None)], opset=opset)


def _entropy(p, axis):
    p = p.astype(np.float64)
    return -(p * np.log(np.maximum(p, 1e-30))).sum(axis)


def res_shape(runner, x):
    return runner.run({"x": x}).outputs["probs"].entropy.shape


@pytest.mark.parametrize("opset,axis,kw,expected", [
    (11, 1, {}, (1, 2, 3)),          # one distribution over K*H*W: not per pixel
    (12, None, {}, (1, 2, 3)),       # default axis 1 before 13: the same
    (11, 2, {}, (2, 3)),             # over H*W, per channel
    (11, 1, {"transpose": [0, 2, 3, 1]}, None),  # over K*H*W, then moved: left out
    (13, 1, {}, 1),                  # per pixel
    (13, None, {}, 3),               # default -1 from 13
    (11, -1, {}, 3),                 # the last axis alone: per position
    (11, 3, {}, 3),
    (11, 1, {"pool": True}, 1),      # trailing axes of size 1: one class axis
    (13, 1, {"transpose": [0, 2, 3, 1]}, 3),  # NHWC after the softmax
    (11, -1, {"transpose": [0, 3, 1, 2]}, 1),
    (11, 1, {"pool": True, "transpose": "flatten"}, 1),  # [N, 4, 1, 1] -> [N, 4]
    (13, 1, {"pool": True, "transpose": "flatten"}, 1),
    (13, 1, {"op": "LogSoftmax"}, None),  # log-probabilities are not probabilities
])
def test_class_axis_follows_the_opset(opset, axis, kw, expected, x):
    model = softmax_model(opset, axis, **kw)
    r = Estimator(model, Entropy(), provider="cpu") if expected is not None else None
    if expected is None:
        with pytest.raises(TfueError, match="class probabilities") as e:
            Estimator(model, Entropy(), provider="cpu")
        if kw.get("op") != "LogSoftmax":
            assert f"opset {opset}" in e.value.message and "--classify" in e.value.hint
        return
    assert r.classes == {"probs": expected}
    p = _run(model, {"x": x})["probs"]
    np.testing.assert_allclose(p.sum(expected), 1, rtol=1e-5)
    if isinstance(expected, tuple):  # one distribution per item (and channel): no map
        kept = tuple(d for k, d in enumerate(p.shape) if k not in expected)
        assert res_shape(r, x) == kept
    res = r.run({"x": x})
    np.testing.assert_allclose(res.outputs["probs"].entropy, _entropy(p, expected), rtol=1e-4,
                               atol=1e-6)


def test_opset11_softmax_over_several_axes_is_one_distribution(x):
    """Before opset 13 Softmax(axis=1) on [N, K, H, W] is one distribution over K*H*W:
    entropy, BALD and the winning-class variance are over those axes together."""
    model = softmax_model(11, 1)
    r = Estimator(model, Noise(0.5, at="logits"), samples=6, seed=0, keep_samples=True,
               provider="cpu")
    assert r.classes == {"probs": (1, 2, 3)}
    res = r.run({"x": x})
    out = res.outputs["probs"]
    s = out.samples.astype(np.float64)
    mean = s.mean(0)
    h = _entropy(mean, (1, 2, 3))
    assert out.entropy.shape == (x.shape[0],)
    np.testing.assert_allclose(out.entropy, h, rtol=1e-4)
    mi = h - np.mean([_entropy(p, (1, 2, 3)) for p in s], axis=0)
    np.testing.assert_allclose(out.mutual_information, np.maximum(mi, 0), rtol=1e-3, atol=1e-6)
    flat = mean.reshape(len(mean), -1)
    win = flat.argmax(1)
    var = s.var(0).reshape(len(mean), -1)[np.arange(len(mean)), win]
    np.testing.assert_allclose(out.class_variance, var, rtol=1e-3, atol=1e-9)
    assert res.metadata["classes"]["outputs"] == {"probs": (1, 2, 3)}
    # Asked for explicitly, the classes are axis 1 (the user's word).
    r = Estimator(model, Entropy(), classify=True, class_axis=1, provider="cpu")
    p = _run(model, {"x": x})["probs"]
    np.testing.assert_allclose(r.run({"x": x}).outputs["probs"].entropy, _entropy(p, 1),
                               rtol=1e-4, atol=1e-6)


def test_opset11_softmax_moved_after_is_noted_not_classified(x):
    model = softmax_model(11, 1, transpose=[0, 2, 3, 1])
    r = Estimator(model, Noise(0.2, at="logits"), samples=3, seed=0, provider="cpu")
    assert r.classes == {}
    assert any("normalises over all axes from 1 on" in n for n in r.notes)
    res = r.run({"x": x})
    assert res.outputs["probs"].entropy is None
    assert "normalises over all axes" in res.metadata["classes_left_out"][0]


def logits_model(opset=13):
    """x -> Conv -> c1 -> Relu -> r1 -> Conv -> logits [N, 4, H, W] (an output)."""
    nodes = [_conv("x", "w1", "c1"), helper.make_node("Relu", ["c1"], ["r1"]),
             _conv("r1", "w2", "logits")]
    inits = [numpy_helper.from_array(_w(4, 3, 3, 3), "w1"),
             numpy_helper.from_array(_w(4, 4, 3, 3, scale=1.0), "w2")]
    return _model(nodes, inits, [_vi("logits", ["N", 4, "H", "W"])], opset=opset)


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_option_keeps_the_user_locations(opset, x):
    model = logits_model(opset)
    user = ModelInfo(model)
    r = Estimator(model, Noise(0.5, at="logits"), softmax=True, samples=6, seed=0,
               keep_samples=True, provider="cpu")
    assert r.location == "logits"
    assert [(c.index, c.depth) for c in r.info.candidates] == \
        [(c.index, c.depth) for c in user.candidates]
    assert len(r.info.candidates) == len(user.candidates) == 4
    for at in ("0.5", 2, "r1", "input"):
        assert r.info.resolve_location(at).name == user.resolve_location(at).name
    res = r.run({"x": x})
    logits = _run(model, {"x": x})["logits"].astype(np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(res.outputs["logits"].output, e / e.sum(1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    samples = res.outputs["logits"].samples
    # Noise on the logits before the softmax: every sample is still a distribution per
    # pixel; noise after the softmax would break the sums.
    np.testing.assert_allclose(samples.sum(2), 1, rtol=1e-5)
    assert float(res.outputs["logits"].variance.mean()) > 1e-6
    # A location inside the user's graph is the same tensor with or without --softmax.
    r2 = Estimator(model, Noise(0.5, at="0.5"), softmax=True, samples=3, seed=0, provider="cpu")
    assert r2.location == user.resolve_location("0.5").name


def test_output_read_inside_a_subgraph_keeps_its_name(x):
    """r1 is an output and is read only inside the If's branches: the renaming of the
    inner tensor must reach into the subgraphs."""
    model = if_model("value")
    model.graph.output.insert(0, _vi("r1", ["N", 4, "H", "W"]))
    info = ModelInfo(model)
    ref = _run(model, {"x": x})
    for strategy, at in (("batched", "r1"), ("shared-prefix", "r1"), ("batched", "c2")):
        ug = _check_level_zero(info, Noise(0.3, at=at), strategy, x)
        inputs, outputs = _signature(ug.frozen())
        assert inputs == ["x"] and set(outputs) == {"r1", "r1.mean", "r1.variance", "y",
                                                    "y.mean", "y.variance"}
        out = _run(ug.model, {"x": x, **ug.feeds()})
        np.testing.assert_allclose(out["r1"], ref["r1"], rtol=1e-5, atol=1e-6)
        assert float(out["y.variance"].mean()) > 0
        assert (float(out["r1.variance"].mean()) > 0) == (at == "r1")


def test_nested_subgraph_reads():
    """A Loop inside an If's branch reads r1 two scopes up: the If reads r1."""
    from tfue_onnx.model import subgraph_reads

    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "r1"], ["v_out"]),
         helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
        [_vi("i", [], TensorProto.INT64), _vi("c_in", [], TensorProto.BOOL), _vi("v_in", None)],
        [_vi("c_out", [], TensorProto.BOOL), _vi("v_out", None)])
    then_g = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "start"], ["t_out"], body=body)], "then", [],
        [_vi("t_out", None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["c1"], ["e_out"])], "else", [],
                               [_vi("e_out", None)])
    node = helper.make_node("If", ["cond"], ["b"], then_branch=then_g, else_branch=else_g)
    assert sorted(subgraph_reads(node)) == ["c1", "n", "r1", "start"]


def dead_ends_model():
    """x -> Conv -> c1 -> Relu -> r1 -> Conv -> y, plus tensors that reach no output
    value: 'dead' (Relu of c1, read by nothing), 'shaped' (Sigmoid of c1, read only by
    Shape, whose result reshapes r1: only its shape matters) and 'masked' (Tanh of c1,
    never selected by a Where on a constant True condition: live by node, dead in value)."""
    nodes = [_conv("x", "w1", "c1"), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Relu", ["c1"], ["dead"]),
             helper.make_node("Sigmoid", ["c1"], ["shaped"]),
             helper.make_node("Shape", ["shaped"], ["shp"]),
             helper.make_node("Reshape", ["r1", "shp"], ["r1b"]),
             helper.make_node("Tanh", ["c1"], ["masked"]),
             helper.make_node("Where", ["true", "r1b", "masked"], ["sel"]),
             _conv("sel", "w2", "y")]
    inits = [numpy_helper.from_array(_w(4, 3, 3, 3), "w1"),
             numpy_helper.from_array(_w(2, 4, 3, 3), "w2"),
             numpy_helper.from_array(np.array(True), "true")]
    return _model(nodes, inits, [_vi("y", ["N", 2, "H", "W"])])


def test_tensors_that_reach_no_output_are_not_candidates(x):
    info = ModelInfo(dead_ends_model())
    names = [c.name for c in info.candidates]
    assert "dead" not in names and "shaped" not in names
    assert {"x", "c1", "r1", "r1b", "masked", "sel", "y"} <= set(names)
    for name in ("dead", "shaped"):
        with pytest.raises(TfueError, match=f"tensor '{name}' reaches no output of the model"):
            info.resolve_location(name)
    # Depths count the whole graph still; indices are consecutive.
    assert [c.index for c in info.candidates] == list(range(len(names)))


def test_a_location_that_changes_no_output_is_noted(cli, tmp_path, x):
    path = tmp_path / "m.onnx"
    onnx.save(dead_ends_model(), path)
    np.save(tmp_path / "x.npy", x)
    r = cli("run", path, tmp_path / "x.npy", "--method", "noise", "--at", "masked", "--sigma",
            "0.5", "--seed", "0", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert "note: " in r.stderr and "the variance is exactly 0 everywhere" in r.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert len(summary["notes"]) == 1 and "warnings" not in summary
    r = cli("run", path, tmp_path / "x.npy", "--method", "noise", "--at", "r1", "--sigma",
            "0.5", "--seed", "0", "--out", tmp_path / "o2")
    assert r.exit_code == 0 and "notes" not in json.loads(
        (tmp_path / "o2" / "summary.json").read_text())
