"""border.py: --pad auto finds the border a valid-convolution model loses from its output
sizes at three probe sizes (64x64, 96x64, 64x96); resolve_pad checks a given one."""

import math

import numpy as np
import pytest
from onnx import TensorProto, helper

from tfue_onnx.border import detect_border, resolve_pad
from tfue_onnx.errors import TfueError
from tfue_onnx.model import ModelInfo


def _info(shape=("N", 3, "H", "W"), elem=TensorProto.FLOAT):
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", elem, list(shape))],
                              [helper.make_tensor_value_info("y", elem, list(shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # one every onnxruntime here loads
    return ModelInfo(model)


def _model(a, b, seen=None):
    """A fake run: output y of size a * H + b, a * W + b; the probes' shapes in ``seen``."""
    def run(feeds):
        (x,) = feeds.values()
        if seen is not None:
            seen.append((x.shape, x.dtype))
        h, w = x.shape[2:]
        return {"y": np.zeros((1, 3, int(a * h + b), int(a * w + b)), np.float32),
                "score": np.zeros((1,), np.float32)}  # follows neither
    return run


@pytest.mark.parametrize("a,b", [(2, -28), (1, -4), (1, -5), (2, -2), (0.5, -3), (3, -1)])
def test_the_border_is_ceil_of_half_the_lost_input_pixels(a, b):
    seen = []
    border, how = detect_border(_info(), _model(a, b, seen))
    assert border == math.ceil(-b / a / 2)
    assert seen == [((1, 3, 64, 64), np.float32), ((1, 3, 96, 64), np.float32),
                    ((1, 3, 64, 96), np.float32)]
    assert how == (f"output size y axis 2 = {a:g} * height - {-b:g}; y axis 3 = {a:g} * width "
                   f"- {-b:g}: border {border} per side")


def test_a_growing_or_same_size_output_needs_no_border():
    border, how = detect_border(_info(), _model(2, 4))
    assert border == 0 and how.endswith("y axis 3 = 2 * width + 4: border 0 per side")
    assert detect_border(_info(), lambda feeds: {"s": np.zeros(3)}) == (
        0, "no output follows the input's size: nothing to pad")


def test_nhwc_and_float16_probes():
    seen = []

    def run(feeds):
        (x,) = feeds.values()
        seen.append((x.shape, x.dtype))
        return {"y": np.zeros((1, x.shape[1] - 6, x.shape[2] - 6, 3))}
    info = _info(("N", "H", "W", 3), TensorProto.FLOAT16)
    assert detect_border(info, run, "NHWC")[0] == 3
    assert seen[1] == ((1, 96, 64, 3), np.float16)


def test_refusals():
    with pytest.raises(TfueError, match="fixed size 20 on axis 2") as err:
        detect_border(_info(("N", 3, 20, "W")), _model(1, -2))
    assert err.value.hint == "give the border yourself, in pixels per side: e.g. --pad 7"
    assert str(err.value).endswith("Hint: give the border yourself, in pixels per side: "
                                   "e.g. pad=7")  # Python's face

    def refuses(feeds):
        raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : bad dims\nmore")
    with pytest.raises(TfueError) as err:
        detect_border(_info(), refuses)
    assert err.value.message == ("--pad auto could not run the model on a 64x64 image "
                                 "([ONNXRuntimeError] : 2 : INVALID_ARGUMENT : bad dims)")


def test_resolve_pad_checks_a_given_pad():
    assert resolve_pad(_info(), 3) == (3, None)
    assert resolve_pad(_info(), 0) == (0, None)
    with pytest.raises(TfueError, match="pad must be"):
        resolve_pad(_info(), -1)
    with pytest.raises(TfueError, match="the model has none"):
        resolve_pad(_info(("N", 5)), 2)


def test_resolve_pad_auto_runs_the_model():
    border, how = resolve_pad(_info(), "auto")  # Identity: the output follows the input
    assert border == 0 and how.startswith("output size y axis 2 = 1 * height + 0")
