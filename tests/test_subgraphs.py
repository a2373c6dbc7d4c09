"""Control flow in the strategies that copy the model's nodes (issue 9, class 1).

infer-transformation runs the 90° family through a second copy of the nodes (and
every element through a copy of its own with the ``loop`` strategy), the gray-box
``loop`` strategy builds its Loop body from a copy of the perturbed graph, and an
ensemble copies every member's nodes into one graph. A copied If / Loop / Scan
must read the COPIES of the outer tensors inside its subgraphs (else it silently
computes on the first copy's values) and keep every name unique. Checked here
against plain onnxruntime runs of the model and numpy.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from test_analysis import _conv, _model, _run, _vi, _w, if_model, loop_model, scan_model
from tfue_onnx import Noise, Transform
from tfue_onnx import graph as graphs
from tfue_onnx.axes import find_axes
from tfue_onnx.model import ModelInfo
from tfue_onnx.perturb import Ensemble
from tfue_onnx.runner import Estimator
from tfue_onnx.transforms import ELEMENTS


def _if_around(then_g, else_g):
    """x -> Conv -> c1 -> Tanh -> r1; If(mean(x) > 0) with the given branches (which may
    read c1, r1, x) -> branch -> Conv -> y."""
    nodes = [_conv("x", "w1", "c1"), helper.make_node("Tanh", ["c1"], ["r1"]),
             helper.make_node("ReduceMean", ["x"], ["xm"], keepdims=0),
             helper.make_node("Greater", ["xm", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["branch"], then_branch=then_g,
                              else_branch=else_g),
             _conv("branch", "w2", "y")]
    inits = [numpy_helper.from_array(_w(4, 3, 3, 3), "w1"),
             numpy_helper.from_array(_w(2, 4, 3, 3), "w2"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    return _model(nodes, inits, [_vi("y", ["N", 2, "H", "W"])])


def nested_model():
    """An If whose then-branch holds a Loop (2 iterations) adding r1, read two scopes
    up, to the carried value (started at c1, read one scope up); the else-branch is
    Sigmoid(r1). The condition is mean(x) > 0."""
    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "r1"], ["v_out"]),
         helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
        [_vi("i", [], TensorProto.INT64), _vi("c_in", [], TensorProto.BOOL), _vi("v_in", None)],
        [_vi("c_out", [], TensorProto.BOOL), _vi("v_out", None)])
    then_g = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "c1"], ["t_out"], body=body)], "then", [],
        [_vi("t_out", None)], [numpy_helper.from_array(np.array(2, np.int64), "n")])
    else_g = helper.make_graph([helper.make_node("Sigmoid", ["r1"], ["e_out"])], "else", [],
                               [_vi("e_out", None)])
    return _if_around(then_g, else_g)


def if_input_model():
    """An If whose then-branch reads the model input x itself (and r1): a copy made for
    transformed inputs must read the transformed x inside the branch too."""
    then_g = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["xc"], axes=[1]),
                                helper.make_node("Add", ["r1", "xc"], ["t_out"])], "then", [],
                               [_vi("t_out", None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["r1"], ["e_out"])], "else", [],
                               [_vi("e_out", None)])
    return _if_around(then_g, else_g)


MODELS = {
    "if-value": lambda: if_model("value"),
    "if-shape": lambda: if_model("shape"),  # the condition reads x's width: W > 4
    "loop": loop_model,
    "scan": scan_model,
    "nested": nested_model,
    "if-input": if_input_model,
}


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) + 0.5


def _all_graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                yield from _all_graphs(sub)


def _made_names(model):
    """Every tensor a node makes or a (sub)graph takes as input, in every scope."""
    names = []
    for g in _all_graphs(model.graph):
        names += [i.name for i in g.input] + [o for n in g.node for o in n.output if o]
    return names


def _check_unique(model):
    names = _made_names(model)
    twice = sorted({n for n in names if names.count(n) > 1})
    assert not twice, f"names defined twice: {twice}"


def _control_flow(model):
    return [n for g in _all_graphs(model.graph) for n in g.node
            if n.op_type in ("If", "Loop", "Scan")]


# --- infer-transformation: the 90° family runs through a copy of the nodes -------------------
@pytest.mark.parametrize("strategy", ["batched", "loop"])
@pytest.mark.parametrize("shape", [(1, 3, 6, 6), (1, 3, 4, 6)], ids=["square", "non-square"])
@pytest.mark.parametrize("name", list(MODELS))
def test_d4_on_control_flow_matches_numpy(name, shape, strategy):
    """Each sample is inverse(model(forward(x))) on output axes (2, 3), the model run
    by plain onnxruntime on the transformed input. For 'if-shape' on 4x6 the rotated
    inputs (6x4) take the other branch than the identity: the copy's If must decide
    on the copy's tensors and its branches read the copy's r1."""
    model = MODELS[name]()
    info = ModelInfo(model)
    x = _x(shape)
    ug = graphs.build(info, Transform("d4"), strategy, keep_samples=True, axes=find_axes(info))
    before = len(_control_flow(model))
    copies = _control_flow(ug.model)
    assert len(copies) >= 2 * before  # the model's control flow is copied, not refused
    _check_unique(ug.model)
    out = _run(ug.model, {"x": x})
    want = []
    for e in (ELEMENTS[n] for n in ug.locations):
        fx = np.ascontiguousarray(e.forward(x, axes=(2, 3)))
        want.append(e.inverse(_run(model, {"x": fx})["y"], axes=(2, 3)))
    want = np.stack(want)
    np.testing.assert_allclose(out["y.samples"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["y"], _run(model, {"x": x})["y"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["y.mean"], want.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["y.variance"], want.var(0), rtol=1e-4, atol=1e-5)
    assert float(want.var(0).mean()) > 1e-4  # the models are not equivariant


def test_shape_condition_takes_both_branches_across_transforms():
    """The 4x6 case above is a real test of the copied condition: the model itself
    answers differently on the input and on its rotation."""
    model = if_model("shape")
    full = onnx.ModelProto()
    full.CopyFrom(model)
    full.graph.output.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    x = _x((1, 3, 4, 6))
    rot = np.ascontiguousarray(ELEMENTS["rot90"].forward(x, axes=(2, 3)))
    assert bool(_run(full, {"x": x})["cond"]) and not bool(_run(full, {"x": rot})["cond"])


@pytest.mark.parametrize("name", ["if-shape", "nested"])
def test_exported_d4_graph_runs_in_plain_onnxruntime(name, tmp_path):
    model = MODELS[name]()
    info = ModelInfo(model)
    x = _x((1, 3, 4, 6), seed=1)
    ug = graphs.build(info, Transform("d4"), "batched", axes=find_axes(info))
    path = tmp_path / "unc.onnx"
    onnx.save(ug.frozen(), str(path))
    onnx.checker.check_model(str(path))
    out = _run(onnx.load(str(path)), {"x": x})
    assert set(out) == {"y", "y.mean", "y.variance"}
    want = np.stack([e.inverse(_run(model, {"x": np.ascontiguousarray(
        e.forward(x, axes=(2, 3)))})["y"], axes=(2, 3)) for e in map(ELEMENTS.get, ug.locations)])
    np.testing.assert_allclose(out["y.variance"], want.var(0), rtol=1e-4, atol=1e-5)


# --- the loop strategy: the Loop body is a copy of the perturbed graph -----------------------
LOOP_CASES = [("if-value", "r1"), ("if-value", "c2"), ("if-shape", "r1"), ("loop", "r1"),
              ("loop", "loop_out"), ("scan", "r1"), ("nested", "r1"), ("nested", "c1"),
              ("if-input", "r1"), ("if-input", "input")]


@pytest.mark.parametrize("name,at", LOOP_CASES, ids=[f"{n}-{a}" for n, a in LOOP_CASES])
def test_loop_strategy_on_control_flow(name, at):
    """Level 0 gives the model's output exactly (and the mean to rounding, variance 0);
    the variance equals the batched strategy's, both fed the same draws: noise at a
    tensor read only inside the subgraphs (r1, c1) reaches them in the Loop body."""
    model = MODELS[name]()
    info = ModelInfo(model)
    x = _x((1, 3, 6, 6), seed=2)
    ref = _run(model, {"x": x})["y"]
    ug = graphs.build(info, Noise(0.3, at=at), "loop", samples=3, seed=1)
    _check_unique(ug.model)
    [loop] = [n for n in ug.model.graph.node if n.name == "tfue/Loop"]
    body = loop.attribute[0].g
    assert _control_flow(model) and any(n.op_type in ("If", "Loop", "Scan") for n in body.node)
    shapes = {d.location: _run(_with_output(model, d.location), {"x": x})[d.location].shape
              for d in ug.draws}
    zero = _run(ug.model, {"x": x, **ug.feeds(level=0.0, shapes=shapes)})
    np.testing.assert_array_equal(zero["y"], ref)
    np.testing.assert_allclose(zero["y.mean"], ref, rtol=1e-5, atol=1e-5)
    assert float(zero["y.variance"].max()) < 1e-10

    runs = {s: Estimator(model, Noise(0.3, at=at), samples=6, seed=4, strategy=s, provider="cpu",
                      keep_samples=True).run({"x": x}) for s in ("loop", "batched")}
    assert runs["loop"].metadata["strategy"] == "loop"
    loop_y, batched_y = runs["loop"].outputs["y"], runs["batched"].outputs["y"]
    np.testing.assert_array_equal(loop_y.output, ref)
    np.testing.assert_allclose(loop_y.samples, batched_y.samples, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loop_y.variance, batched_y.variance, rtol=1e-3, atol=1e-6)
    assert float(loop_y.variance.mean()) > 1e-4


def _with_output(model, name):
    full = onnx.ModelProto()
    full.CopyFrom(model)
    full.graph.output.append(onnx.ValueInfoProto(name=name))
    return full


def test_loop_body_reads_the_perturbed_copy():
    """In the exported (graph-sampled) loop model, the copied If's branches read the
    body's r1, never the outer r1, and their own tensors carry the body's prefix."""
    model = if_model("value")
    info = ModelInfo(model)
    ug = graphs.build(info, Noise(0.3, at="c1"), "loop", samples=4, seed=0, sampling="graph")
    frozen = ug.frozen()
    onnx.checker.check_model(frozen)
    [loop] = [n for n in frozen.graph.node if n.name == "tfue/Loop"]
    [copy_if] = [n for n in loop.attribute[0].g.node if n.op_type == "If"]
    branch_reads = {i for a in copy_if.attribute for n in a.g.node for i in n.input}
    branch_made = {o for a in copy_if.attribute for n in a.g.node for o in n.output}
    assert "r1" not in branch_reads and any(r.endswith("loop/r1") for r in branch_reads)
    assert all(o.startswith("tfue/loop/") for o in branch_made)
    x = _x((1, 3, 6, 6), seed=3)
    out = _run(frozen, {"x": x})
    np.testing.assert_array_equal(out["y"], _run(model, {"x": x})["y"])
    assert float(out["y.variance"].mean()) > 1e-4


# --- ensembles of members with control flow -------------------------------------------------
@pytest.mark.parametrize("name", ["if-value", "if-shape", "nested", "if-input"])
def test_ensemble_of_control_flow_members_matches_numpy(name):
    """Two members of the same architecture with different weights (and the same
    tensor names inside their branches): mean and variance over the members'
    plain onnxruntime outputs."""
    a, b = MODELS[name](), MODELS[name]()  # the builders draw new weights each call
    x = _x((1, 3, 6, 6), seed=4)
    ya, yb = _run(a, {"x": x})["y"], _run(b, {"x": x})["y"]
    assert float(np.abs(ya - yb).max()) > 1e-3
    info = ModelInfo(a)
    ug = graphs.build(info, Ensemble([b]), "batched")
    _check_unique(ug.model)
    out = _run(ug.frozen(), {"x": x})
    want = np.stack([ya, yb])
    np.testing.assert_allclose(out["y"], ya, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["y.mean"], want.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["y.variance"], want.var(0), rtol=1e-4, atol=1e-6)
    res = Estimator(a, Ensemble([b]), provider="cpu").run({"x": x})
    np.testing.assert_allclose(res.outputs["y"].variance, want.var(0), rtol=1e-4, atol=1e-6)


# --- outputs that do not depend on the input, made by control flow ---------------------------
def constant_if_model():
    """if_model plus an output 'k' that an If on a constant condition makes from an outer
    initializer ('scale') and a tensor of its own ('two'): it is copied beside the graph."""
    m = if_model("value")
    then_g = helper.make_graph([helper.make_node("Mul", ["scale", "two"], ["k_then"])], "kt", [],
                               [_vi("k_then", None)],
                               [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    else_g = helper.make_graph([helper.make_node("Neg", ["scale"], ["k_else"])], "ke", [],
                               [_vi("k_else", None)])
    m.graph.initializer.extend([numpy_helper.from_array(np.arange(3, dtype=np.float32), "scale"),
                                numpy_helper.from_array(np.array(True), "always")])
    m.graph.node.append(helper.make_node("If", ["always"], ["k"], then_branch=then_g,
                                         else_branch=else_g))
    m.graph.output.append(_vi("k", [3]))
    return m


@pytest.mark.parametrize("strategy", ["batched", "loop"])
def test_constant_output_made_by_an_if(strategy):
    model = constant_if_model()
    info = ModelInfo(model)
    x = _x((1, 3, 6, 6), seed=5)
    ug = graphs.build(info, Noise(0.3, at="r1"), strategy, samples=3, seed=0, sampling="graph")
    _check_unique(ug.model)
    out = _run(ug.frozen(), {"x": x})
    ref = _run(model, {"x": x})
    np.testing.assert_array_equal(out["k"], np.arange(3, dtype=np.float32) * 2)
    np.testing.assert_array_equal(out["y"], ref["y"])
    assert "k.variance" not in out and float(out["y.variance"].mean()) > 1e-4


@pytest.mark.parametrize("name", ["if-value", "nested"])
def test_loop_strategy_on_an_opset9_model(name):
    """At opset 9 the loop strategy runs the model at its own opset (the tiled ones run a
    converted copy): the same draws give the same variance."""
    model = MODELS[name]()
    model.opset_import[0].version = 9
    onnx.checker.check_model(model)
    x = _x((1, 3, 6, 6), seed=6)
    loop = Estimator(model, Noise(0.3, at="r1"), samples=5, seed=3, strategy="loop",
                  provider="cpu").run({"x": x})
    tiled = Estimator(model, Noise(0.3, at="r1"), samples=5, seed=3, provider="cpu").run({"x": x})
    assert loop.metadata["strategy"] == "loop" and "converted_opset" not in loop.metadata
    assert tiled.metadata["converted_opset"] == [9, 13]
    np.testing.assert_array_equal(loop.outputs["y"].output, _run(model, {"x": x})["y"])
    np.testing.assert_allclose(loop.outputs["y"].variance, tiled.outputs["y"].variance,
                               rtol=1e-3, atol=1e-6)
    assert float(loop.outputs["y"].variance.mean()) > 1e-3


def test_constant_outputs_are_copied_in_the_same_order_every_run():
    """The nodes and weights copied beside the graph for an output that does not depend
    on the input come out in one order whatever Python's string hashing: the same
    model gives the same file on every run (an exported file is reproducible)."""
    import hashlib
    import os
    import subprocess
    import sys

    script = (
        "import hashlib, sys; sys.path.insert(0, 'tests')\n"
        "from test_subgraphs import constant_if_model\n"
        "from tfue_onnx import Noise, graph as graphs\n"
        "from tfue_onnx.model import ModelInfo\n"
        "ug = graphs.build(ModelInfo(constant_if_model()), Noise(0.3, at='r1'), 'batched',\n"
        "                  samples=2, sampling='graph')\n"
        "print(hashlib.sha256(ug.model.SerializeToString()).hexdigest())\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digests = set()
    for seed in ("1", "2", "3"):
        run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                             text=True, env={**os.environ, "PYTHONHASHSEED": seed})
        assert run.returncode == 0, run.stderr[-2000:]
        digests.add(run.stdout.strip())
    assert len(digests) == 1 and len(digests.pop()) == len(hashlib.sha256().hexdigest())
