import json

import pytest

from tfue_onnx import TfueError
from tfue_onnx.model import inspect_model, load_model


def test_ppocr_det_description(ppocr_det):
    info = inspect_model(ppocr_det)
    assert info.opset == 12 and info.ir_version == 8
    assert [i.name for i in info.inputs] == ["x"]
    assert info.inputs[0].shape[1] == 3 and info.inputs[0].dtype == "float32"
    assert [o.name for o in info.outputs] == ["sigmoid_0.tmp_0"]
    cands = info.candidates
    assert len(cands) > 200
    assert cands[0].name == "x" and cands[0].op == "input" and cands[0].depth == 0.0
    assert cands[-1].name == "sigmoid_0.tmp_0" and cands[-1].is_output and cands[-1].depth == 1.0
    depths = [c.depth for c in cands]
    assert depths == sorted(depths) and all(0 <= d <= 1 for d in depths)
    assert [c.index for c in cands] == list(range(len(cands)))
    # Constants and shape computations are not candidates.
    assert not any(c.op in ("Constant", "Shape") for c in cands)
    assert info.dropouts == []


def test_location_forms(ppocr_det):
    info = inspect_model(ppocr_det)
    cands = info.candidates
    assert info.resolve_location("input").name == "x"
    assert info.resolve_location(5).name == cands[5].name
    assert info.resolve_location("5").name == cands[5].name
    mid = info.resolve_location("0.5")
    assert abs(mid.depth - 0.5) < 0.01
    assert info.resolve_location("1.0").name == "sigmoid_0.tmp_0"
    assert info.resolve_location(cands[42].name).index == 42


def test_unknown_location_lists_closest_names(ppocr_det):
    info = inspect_model(ppocr_det)
    with pytest.raises(TfueError) as err:
        info.resolve_location("sigmoid_0.tmp")
    assert "unknown tensor 'sigmoid_0.tmp'" in str(err.value)
    assert "'sigmoid_0.tmp_0'" in err.value.hint
    with pytest.raises(TfueError, match="out of range"):
        info.resolve_location(100000)
    with pytest.raises(TfueError, match=r"outside \[0, 1\]"):
        info.resolve_location("1.5")


def test_non_float_tensor_is_refused(ppocr_cls):
    info = inspect_model(ppocr_cls)
    shape_tensor = next(n.output[0] for n in info.graph.node if n.op_type == "Shape")
    with pytest.raises(TfueError, match="not a float tensor that depends on the model input"):
        info.resolve_location(shape_tensor)


def test_external_data_model(toy):
    path = toy("ext", external_data=True)
    info = inspect_model(path)
    assert info.dropouts == [] and len(info.candidates) == 5
    assert [c.name for c in info.candidates] == ["x", "c1", "r1", "c2", "y"]


def test_dropout_nodes_listed(toy):
    for opset in (7, 10, 13):
        info = inspect_model(toy(f"d{opset}", opset=opset, dropout_ratio=0.3))
        [d] = info.dropouts
        assert d.name == "drop1" and d.input == "r1" and d.ratio == pytest.approx(0.3)


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n" * 10)
    with pytest.raises(TfueError, match="is not an ONNX model"):
        load_model(bad)
    with pytest.raises(TfueError, match="does not exist"):
        load_model(tmp_path / "missing.onnx")


def test_cli_inspect(cli, ppocr_cls):
    r = cli("inspect", ppocr_cls)
    assert r.exit_code == 0
    assert "opset 11" in r.output and "input   x  float32  [-1, 3, ?, ?]" in r.output
    assert "235 candidate locations" in r.output and "0 Dropout node(s)" in r.output
    r = cli("inspect", ppocr_cls, "--json")
    d = json.loads(r.stdout)
    assert d["opset"] == 11 and len(d["candidates"]) == 235
    assert d["outputs"][0] == {"name": "save_infer_model/scale_0.tmp_1", "dtype": "float32",
                               "shape": [-1, 2]}


def _renaming_model():
    """x -> Relu -> a -> If(cond): then reads outer 'a', else makes its own 'a'."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    then_g = helper.make_graph([helper.make_node("Neg", ["a"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Abs", ["x"], ["a"]),
                                helper.make_node("Neg", ["a"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array(True), "cond")])
    return helper.make_model(graph)


def test_rename_tensor_follows_outer_reads_and_leaves_a_shadowing_subgraph():
    from tfue_onnx.model import rename_tensor

    model = _renaming_model()
    rename_tensor(model.graph, "a", "b")
    g = model.graph
    assert list(g.node[0].output) == ["b"] and [o.name for o in g.output] == ["y", "b"]
    branches = {a.name: a.g for a in g.node[1].attribute}
    then_g, else_g = branches["then_branch"], branches["else_branch"]
    assert list(then_g.node[0].input) == ["b"]  # reads the outer tensor: renamed
    assert list(else_g.node[0].output) == ["a"] and list(else_g.node[1].input) == ["a"]
    rename_tensor(model.graph, "cond", "c")
    assert [i.name for i in g.initializer] == ["c"] and list(g.node[1].input) == ["c"]


def test_reorder_nodes_puts_nodes_in_the_given_order():
    from tfue_onnx.model import reorder_nodes, topological_order

    model = _renaming_model()
    model.graph.node.reverse()  # the If now comes before the Relu it reads
    order = topological_order(model.graph.node)
    assert order == [1, 0]
    reorder_nodes(model.graph, order)
    assert [n.op_type for n in model.graph.node] == ["Relu", "If"]
