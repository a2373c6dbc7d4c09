"""Control-flow bodies whose outputs have a type but no shape (issue 9 round 2, class 1).

onnxruntime's Scan needs a shape (a rank) on every body output; for the original
model it infers one from the tensors the Scan reads. A rewrite that reshapes to a
computed shape (the fed draws, the slot mask) hid their ranks from shape
inference, so the rewritten Scan stopped running ("Subgraph must have the shape
set for all outputs") at every location upstream of it, in every strategy.

Each model here comes with its body outputs shaped and unshaped; every location,
strategy and method must run both, and sample k must equal an independent
reference: plain onnxruntime on the model with the location turned into an input
fed ``t + sigma * eps_k`` (eps_k from ``builder.draw_bank``).
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from toys import cut_at, run_plain, with_output

from tfue_onnx import Noise, Transform
from tfue_onnx import graph as graphs
from tfue_onnx.graph.builder import Draw, draw_bank, keep_ranks
from tfue_onnx.model import ModelInfo
from tfue_onnx.perturb import Dropout, Ensemble
from tfue_onnx.runner import Estimator

F = TensorProto.FLOAT
RNG = np.random.default_rng(11)


def _w(*shape):
    return (RNG.standard_normal(shape) * 0.5).astype(np.float32)


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _conv(x, w, out):
    return helper.make_node("Conv", [x, w], [out], pads=[1, 1, 1, 1])


def _model(nodes, inits, opset):
    graph = helper.make_graph(nodes, "t", [_vi("x", ["N", 3, "H", "W"])],
                              [_vi("y", ["N", 2, "H", "W"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def _reduce_mean(x, out, axes, opset):
    if opset >= 18:
        return [helper.make_node("ReduceMean", [x, out + "_axes"], [out], keepdims=0)], \
            [numpy_helper.from_array(np.array(axes, np.int64), out + "_axes")]
    return [helper.make_node("ReduceMean", [x], [out], axes=axes, keepdims=0)], []


def scan_model(shaped: bool, opset: int = 11):
    """The tester's model: Scan over the width of a = Conv(x); the body adds mo =
    mean_W(a), read from the outer scope, to each column, and keeps a running sum
    (state st0 = 0 * mo). Body outputs shaped [N, 4, H] or only typed."""
    shape = ["N", 4, "H"] if shaped else None
    body = helper.make_graph(
        [helper.make_node("Add", ["sl", "mo"], ["s1"]), helper.make_node("Relu", ["s1"], ["so"]),
         helper.make_node("Add", ["st", "so"], ["st2"]),
         helper.make_node("Identity", ["st2"], ["st_out"])], "sbody",
        [_vi("st", shape), _vi("sl", shape)], [_vi("st_out", shape), _vi("so", shape)])
    mean_nodes, mean_inits = _reduce_mean("a", "mo", [3], opset)
    nodes = [_conv("x", "w1", "a"), *mean_nodes, helper.make_node("Mul", ["mo", "zero"], ["st0"]),
             helper.make_node("Scan", ["st0", "a"], ["stf", "scanned"], body=body,
                              num_scan_inputs=1, scan_input_axes=[3], scan_output_axes=[3]),
             _conv("scanned", "w2", "y")]
    inits = [numpy_helper.from_array(_w(4, 3, 3, 3), "w1"),
             numpy_helper.from_array(_w(2, 4, 3, 3), "w2"),
             numpy_helper.from_array(np.array(0, np.float32), "zero"), *mean_inits]
    return _model(nodes, inits, opset)


def loop_model(shaped: bool, opset: int = 13):
    """A Loop (3 iterations) carrying v (started at r = Tanh(Conv(x))) that adds
    Sigmoid(r), read from the outer scope, and emits v as a scan output whose mean
    over the iterations feeds the last Conv."""
    shape = ["N", 4, "H", "W"] if shaped else None
    body = helper.make_graph(
        [helper.make_node("Sigmoid", ["r"], ["g"]),
         helper.make_node("Add", ["v_in", "g"], ["v_out"]),
         helper.make_node("Identity", ["v_out"], ["emit"]),
         helper.make_node("Identity", ["c_in"], ["c_out"])], "lbody",
        [_vi("i", [], TensorProto.INT64), _vi("c_in", [], TensorProto.BOOL), _vi("v_in", shape)],
        [_vi("c_out", [], TensorProto.BOOL), _vi("v_out", shape),
         _vi("emit", None if shape is None else ["N", 4, "H", "W"])])
    mean_nodes, mean_inits = _reduce_mean("stack", "stack_mean", [0], opset)
    nodes = [_conv("x", "w1", "c"), helper.make_node("Tanh", ["c"], ["r"]),
             helper.make_node("Loop", ["trips", "", "r"], ["v_final", "stack"], body=body),
             *mean_nodes, helper.make_node("Add", ["stack_mean", "v_final"], ["m"]),
             _conv("m", "w2", "y")]
    inits = [numpy_helper.from_array(_w(4, 3, 3, 3), "w1"),
             numpy_helper.from_array(_w(2, 4, 3, 3), "w2"),
             numpy_helper.from_array(np.array(3, np.int64), "trips"), *mean_inits]
    return _model(nodes, inits, opset)


def if_model(shaped: bool, opset: int = 13):
    """An If on mean(x) > 0 whose branches read r = Tanh(Conv(x)) and a Scan output
    from the outer scope: then Relu(r) * 2, else Sigmoid(r)."""
    shape = ["N", 4, "H", "W"] if shaped else None
    then_g = helper.make_graph([helper.make_node("Relu", ["r"], ["t1"]),
                                helper.make_node("Mul", ["t1", "two"], ["t_out"])], "then", [],
                               [_vi("t_out", shape)],
                               [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    else_g = helper.make_graph([helper.make_node("Sigmoid", ["r"], ["e_out"])], "else", [],
                               [_vi("e_out", shape)])
    mean_nodes, mean_inits = _reduce_mean("x", "xm", [0, 1, 2, 3], opset)
    nodes = [_conv("x", "w1", "c"), helper.make_node("Tanh", ["c"], ["r"]), *mean_nodes,
             helper.make_node("Greater", ["xm", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["b"], then_branch=then_g, else_branch=else_g),
             _conv("b", "w2", "y")]
    inits = [numpy_helper.from_array(_w(4, 3, 3, 3), "w1"),
             numpy_helper.from_array(_w(2, 4, 3, 3), "w2"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"), *mean_inits]
    return _model(nodes, inits, opset)


CASES = [  # (builder, opset, locations upstream of the control flow)
    (scan_model, 11, ["a", "mo", "st0"]),
    (scan_model, 13, ["mo"]),
    (scan_model, 18, ["a", "st0"]),
    (loop_model, 11, ["c"]),
    (loop_model, 17, ["r"]),
    (if_model, 13, ["r"]),
]
IDS = [f"{b.__name__}-op{o}" for b, o, _ in CASES]


def _x(batch, seed=0, width=5):
    return np.random.default_rng(seed).standard_normal((batch, 3, 4, width)).astype(np.float32)


def test_the_unshaped_scan_fails_in_onnxruntime_without_the_ranks():
    """The fault itself: without keep_ranks the rewritten Scan cannot run; with it, it does."""
    model = scan_model(shaped=False)
    info = ModelInfo(model)
    ug = graphs.build(info, Dropout(0.2, at="a"), "batched", samples=2, seed=0)
    x = _x(1)
    shapes = {"a": run_plain(with_output(model, "a"), {"x": x})["a"].shape}
    feeds = {"x": x, **ug.feeds(shapes=shapes)}
    bare = onnx.ModelProto()
    bare.CopyFrom(ug.model)
    for g in [bare.graph] + [a.g for n in bare.graph.node for a in n.attribute if a.g.node]:
        del g.value_info[:]
        for o in g.output:
            if o.name in ("st_out", "so"):
                o.type.tensor_type.ClearField("shape")
    with pytest.raises(Exception, match="shape set for all outputs"):
        run_plain(bare, feeds)
    assert "y.variance" in run_plain(keep_ranks(bare), feeds)


SHAPED = [(c, False) for c in CASES] + [(CASES[0], True)]


@pytest.mark.parametrize("case,shaped", SHAPED,
                         ids=[f"{i}-{'shaped' if s else 'unshaped'}" for i, (_, s) in
                              zip(IDS + IDS[:1], SHAPED)])
def test_every_location_and_strategy_matches_the_reference(case, shaped):
    """Noise at each location upstream of the control flow, in every strategy, at
    batch 2 (and 1 for the tester's model): slot 0 is the model's output, and sample k
    is plain onnxruntime's output with the location set to t + sigma * eps_k."""
    build, opset, locations = case
    model = build(shaped, opset)
    sigma, n, seed = 0.3, 3, 7
    for batch in (1, 2) if case is CASES[0] else (2,):
        x = _x(batch, seed=batch)
        ref = run_plain(model, {"x": x})["y"]
        for at in locations:
            t = run_plain(with_output(model, at), {"x": x})[at]
            eps = draw_bank(Draw("", at, "normal", np.dtype(np.float32), 1), seed, t.shape, 0, n,
                            batch_axis=0)
            cut = cut_at(model, at, t.shape)
            want = np.stack([run_plain(cut, {"x": x, at: t + sigma * e.reshape(t.shape)})["y"]
                             for e in eps])
            for strategy in ("shared-prefix", "batched", "loop"):
                res = Estimator(model, Noise(sigma, at=at), samples=n, seed=seed, strategy=strategy,
                             provider="cpu", keep_samples=True).run({"x": x})
                assert res.metadata["strategy"] == strategy, (at, strategy)
                y = res.outputs["y"]
                np.testing.assert_array_equal(y.output, ref)
                np.testing.assert_allclose(y.samples, want, rtol=1e-4, atol=1e-5,
                                           err_msg=f"{at} {strategy} batch {batch}")
                np.testing.assert_allclose(y.variance, want.var(0), rtol=1e-3,
                                           atol=1e-6)


@pytest.mark.parametrize("build,opset,locations", CASES[:1] + CASES[3:4], ids=IDS[:1] + IDS[3:4])
def test_dropout_and_exported_graph_on_unshaped_bodies(build, opset, locations):
    """Dropout in every strategy (fed), and the exported graph (graph sampling, frozen)
    runs in plain onnxruntime with its output equal to the model's."""
    model = build(False, opset)
    x = _x(2, seed=3)
    ref = run_plain(model, {"x": x})["y"]
    for at in locations[:2]:  # st0 is 0 * mo: dropout leaves it unchanged
        variances = []
        for strategy in ("shared-prefix", "batched", "loop"):
            res = Estimator(model, Dropout(0.3, at=at), samples=4, seed=2, strategy=strategy,
                         provider="cpu").run({"x": x})
            assert res.metadata["strategy"] == strategy
            np.testing.assert_array_equal(res.outputs["y"].output, ref)
            variances.append(res.outputs["y"].variance)
        assert float(variances[0].mean()) > 1e-6
        np.testing.assert_allclose(variances[1], variances[0], rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(variances[2], variances[0], rtol=1e-3, atol=1e-6)
        ug = graphs.build(ModelInfo(model), Dropout(0.3, at=at), "batched", samples=4, seed=1,
                          sampling="graph")
        out = run_plain(ug.frozen(), {"x": x})
        np.testing.assert_allclose(out["y"], ref, rtol=1e-6, atol=1e-6)
        assert float(out["y.variance"].mean()) > 1e-6


@pytest.mark.parametrize("build,opset,locations", CASES, ids=IDS)
def test_transforms_and_ensembles_on_unshaped_bodies(build, opset, locations):
    """infer-transformation (both strategies) and a two-member ensemble run models
    whose bodies have unshaped outputs; the ensemble's numbers match numpy."""
    a, b = build(False, opset), build(False, opset)  # new weights each call
    x = _x(1, seed=5, width=4)  # square: the 90° family applies
    ya, yb = run_plain(a, {"x": x})["y"], run_plain(b, {"x": x})["y"]
    for strategy in ("batched", "loop"):
        res = Estimator(a, Transform(), strategy=strategy, provider="cpu").run({"x": x})
        assert res.metadata["strategy"] == strategy
        np.testing.assert_allclose(res.outputs["y"].output, ya, rtol=1e-6, atol=1e-6)
    res = Estimator(a, Ensemble([b]), provider="cpu").run({"x": x})
    want = np.stack([ya, yb])
    np.testing.assert_allclose(res.outputs["y"].mean, want.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.outputs["y"].variance, want.var(0), rtol=1e-4, atol=1e-6)


def test_keep_ranks_writes_ranks_only_and_leaves_unknown_models_alone():
    """Hints carry a rank with every dimension unknown (tiling changes the batch), and
    a model shape inference cannot read comes back unchanged."""
    model = scan_model(shaped=False)
    ug = graphs.build(ModelInfo(model), Noise(0.3, at="a"), "batched", samples=2, seed=0)
    hints = list(ug.model.graph.value_info)
    assert hints and all(not d.HasField("dim_value") and not d.HasField("dim_param")
                         for vi in hints for d in vi.type.tensor_type.shape.dim)
    [scan] = [n for n in ug.model.graph.node if n.op_type == "Scan"]
    assert [len(o.type.tensor_type.shape.dim) for o in scan.attribute[0].g.output] == [3, 3]
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "b", [],
                               [_vi("z", None)])
    broken = helper.make_model(helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["c"], domain="nowhere"),
         helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)], "b",
        [_vi("x", [1])], [_vi("y", None)]), opset_imports=[helper.make_opsetid("", 13)])
    before = broken.SerializeToString()
    assert keep_ranks(broken).SerializeToString() == before
