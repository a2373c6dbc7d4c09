"""convert.py: the copy at opset >= 10 of an old model (onnx.version_converter), its
tensor and Dropout names kept, the refusal and the command when it cannot be made."""

import numpy as np
import pytest
from onnx import TensorProto, helper
from toys import run_plain

from tfue_onnx.convert import (MIN_OPSET, Conversion, conversion_command, conversion_failed,
                               convert, needs_conversion)
from tfue_onnx.errors import TfueError
from tfue_onnx.model import ModelInfo

F = TensorProto.FLOAT


def _relu_model(opset, extra=()):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), *extra]
    out = nodes[-1].output[0]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info(out, F, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 4
    return model


@pytest.mark.parametrize("opset,needed", [(7, True), (9, True), (10, False), (13, False)])
def test_needs_conversion_below_opset_10(opset, needed):
    assert MIN_OPSET == 10
    assert needs_conversion(ModelInfo(_relu_model(opset))) is needed


def test_convert_keeps_the_numbers_names_and_dropout_names():
    drop = helper.make_node("Dropout", ["a"], ["d"], ratio=0.5)  # unnamed: ModelInfo names it
    model = _relu_model(7, [drop])
    info = ModelInfo(model)
    [orig] = info.dropouts
    conv = convert(info, 13)
    assert isinstance(conv, Conversion) and conv.ok and conv.error is None
    assert (conv.source, conv.target, conv.info.opset) == (7, 13, 13)
    [node] = [n for n in conv.info.model.graph.node if n.op_type == "Dropout"]
    assert node.name == orig.name and list(node.output)[:1] == ["d"]
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_plain(conv.info.model, {"x": x})["d"], np.maximum(x, 0))
    assert model.opset_import[0].version == 7  # the user's model is a copy, untouched


def test_an_unconvertible_op_fails_with_one_readable_line():
    scale = helper.make_node("ImageScaler", ["a"], ["s"], scale=2.0, bias=[0.0, 0.0, 0.0])
    conv = convert(ModelInfo(_relu_model(8, [scale])), 13)
    assert not conv.ok and conv.info is None
    assert conv.error == ("onnx.version_converter has no schema for op 'ImageScaler' (an "
                          "experimental or removed op), so it cannot convert it")
    err = conversion_failed(conv, "infer-transformation", "/m/old.onnx")
    assert isinstance(err, TfueError)
    assert err.message.startswith("infer-transformation needs opset >= 10 and the model has "
                                  "opset 8; converting a copy to opset 13 failed: "
                                  "onnx.version_converter has no schema for op 'ImageScaler'")
    assert err.hint.endswith(conversion_command("/m/old.onnx", 13))


@pytest.mark.parametrize("path,target,dst", [("/m/old.onnx", 13, "/m/old_opset13.onnx"),
                                             ("net.bin", 11, "net.bin_opset11.onnx"),
                                             (None, 13, "model_opset13.onnx")])
def test_conversion_command_names_the_copy_beside_the_model(path, target, dst):
    cmd = conversion_command(path, target)
    assert cmd.startswith('python -c "import onnx; from onnx import version_converter as vc; ')
    assert cmd.endswith(f"onnx.save(vc.convert_version(onnx.load('{path or 'model.onnx'}'), "
                        f"{target}), '{dst}')\"")


def test_restore_names_matches_unread_tensors_through_their_producer():
    """An Upsample output nothing reads (no consumer to match) and one that is the graph
    output (kept by the converter) beside it, both reading the same tensor."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Upsample", ["a"], ["y"], scales=[1.0, 1.0, 2.0, 2.0]),
             helper.make_node("Upsample", ["a"], ["dead"], scales=[1.0, 1.0, 2.0, 2.0])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", F, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    model.ir_version = 4
    converted = convert(ModelInfo(model)).info.model
    made = [o for n in converted.graph.node if n.op_type == "Resize" for o in n.output]
    assert sorted(made) == ["dead", "y"]
    assert [o.name for o in converted.graph.output] == ["y"]
