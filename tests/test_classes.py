"""classes.py: which outputs hold class probabilities (traced back to a Softmax through ops
that keep or move axes), on which axis; the opset-11 Softmax over several axes."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfue_onnx.classes import find_classes, softmax_axis
from tfue_onnx.errors import TfueError
from tfue_onnx.model import ModelInfo

F = TensorProto.FLOAT


def _info(nodes, x_shape, outputs, opset=13, inits=()):
    """``outputs``: (name, shape) pairs; float outputs, shapes left to inference when None."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, x_shape)],
                              [helper.make_tensor_value_info(n, F, s) for n, s in outputs],
                              list(inits))
    return ModelInfo(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _softmax(out="p", op="Softmax", **attrs):
    return helper.make_node(op, ["x"], [out], **attrs)


def test_a_softmax_output_has_its_axis():
    info = _info([_softmax(axis=1)], ["N", 4, "H", "W"], [("p", None)])
    assert softmax_axis(info, "p") == (1, None)
    assert find_classes(info) == ({"p": 1}, [])
    info = _info([_softmax()], ["N", 4, 6], [("p", None)])  # opset 13: the last axis
    assert find_classes(info) == ({"p": 2}, [])


def test_the_axis_is_followed_through_transpose_identity_and_unsqueeze():
    nodes = [_softmax("s", axis=1),
             helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Identity", ["t"], ["p"])]
    info = _info(nodes, ["N", 4, 5, 6], [("p", None)])
    assert find_classes(info) == ({"p": 3}, [])
    nodes = [_softmax("s", axis=-1), helper.make_node("Identity", ["s"], ["i"]),
             helper.make_node("Unsqueeze", ["i", "axes"], ["p"])]
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    info = _info(nodes, ["N", 7], [("p", None)], inits=[axes])
    assert info.tensor_infos["p"].shape[1:] == (1, 7)
    assert softmax_axis(info, "p") == (2, None)


def test_a_reshape_that_keeps_the_class_axis_and_one_that_loses_it():
    shape = numpy_helper.from_array(np.array([2, 3, 4], np.int64), "shape")
    nodes = [_softmax("s", axis=-1), helper.make_node("Reshape", ["s", "shape"], ["p"])]
    info = _info(nodes, [2, 12], [("p", None)], inits=[shape])  # 12 classes -> 3 x 4: lost
    assert softmax_axis(info, "p") == (None, None)
    flat = numpy_helper.from_array(np.array([2, 1, 12], np.int64), "shape")
    info = _info(nodes, [2, 12], [("p", None)], inits=[flat])  # a size-1 axis added
    assert softmax_axis(info, "p") == (2, None)


def test_log_softmax_is_not_probabilities():
    info = _info([_softmax(op="LogSoftmax", axis=1)], ["N", 4, 5, 5], [("p", None)])
    assert softmax_axis(info, "p") == (None, None)
    assert find_classes(info) == ({}, [])


def test_opset_11_softmax_over_several_axes_is_one_distribution():
    info = _info([_softmax(axis=1)], ["N", 3, 5, 5], [("p", None)], opset=11)
    assert find_classes(info) == ({"p": (1, 2, 3)}, [])
    # The axes after k of size 1: one axis after all.
    info = _info([_softmax(axis=1)], ["N", 3, 1, 1], [("p", None)], opset=11)
    assert find_classes(info) == ({"p": 1}, [])
    info = _info([_softmax()], ["N", 10], [("p", None)], opset=11)  # default axis 1, last
    assert find_classes(info) == ({"p": 1}, [])


def test_opset_11_softmax_over_several_axes_reshaped_after_is_left_out_with_a_note():
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    nodes = [_softmax("s", axis=1), helper.make_node("Reshape", ["s", "shape"], ["p"])]
    info = _info(nodes, ["N", 3, 4, 4], [("p", None)], opset=11, inits=[shape])
    found, notes = find_classes(info)
    assert found == {}
    [note] = notes
    assert note.startswith("output 'p' comes from Softmax(axis=1) at opset 11, which "
                           "normalises over all axes from 1 on, and is reshaped after")
    assert "--classify --class-axis K" in note


def test_softmax_and_classify_take_every_float_output_on_class_axis():
    nodes = [_softmax(axis=1), helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Shape", ["x"], ["shape_out"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 4, 5, 5])],
        [helper.make_tensor_value_info("p", F, ["N", 4, 5, 5]),
         helper.make_tensor_value_info("r", F, ["N", 4, 5, 5]),
         helper.make_tensor_value_info("shape_out", TensorProto.INT64, None)])
    info = ModelInfo(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert find_classes(info) == ({"p": 1}, [])  # auto: the Softmax output only
    assert find_classes(info, softmax=True) == ({"p": 1, "r": 1}, [])
    assert find_classes(info, classify=True, class_axis=-1) == ({"p": 3, "r": 3}, [])
    assert find_classes(info, classify=False) == ({}, [])
    assert find_classes(info, softmax=True, classify=False) == ({"p": 1, "r": 1}, [])


@pytest.mark.parametrize("axis", [4, -5])
def test_a_class_axis_outside_the_rank_is_refused(axis):
    info = _info([_softmax(axis=1)], ["N", 4, 5, 5], [("p", ["N", 4, 5, 5])])
    with pytest.raises(TfueError, match=f"class axis {axis} does not exist in output 'p' of "
                                        "rank 4") as err:
        find_classes(info, classify=True, class_axis=axis)
    assert "--class-axis" in err.value.hint


def test_bfloat16_outputs_are_not_float_outputs_numpy_can_reduce():
    from onnx import TensorProto, helper

    from tfue_onnx.classes import find_classes
    from tfue_onnx.feeds import check_inputs_fit
    from tfue_onnx.model import ModelInfo
    from tfue_onnx.perturb import Transform

    b = TensorProto.BFLOAT16
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", b, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", b, [1, 3, 8, 8])])
    info = ModelInfo(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert find_classes(info, classify=True) == ({}, [])
    with pytest.raises(TfueError, match="infer-transformation needs one image input"):
        check_inputs_fit(info, Transform("flips"))
