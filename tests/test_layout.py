"""layout.py: NCHW/NHWC guessing, the image input, the batch axis, evenly spaced picks."""

import os

import numpy as np
import pytest
from onnx import TensorProto, helper

from tfue_onnx import TfueError
from tfue_onnx.layout import (array_layout, declared_layout, evenly_spaced, image_axes,
                              image_input, image_layout, with_batch)
from tfue_onnx.model import ModelInfo, TensorInfo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = os.path.join(ROOT, "models", "srresnet_x2.onnx")


def _inp(shape, dtype="float32"):
    return TensorInfo("x", dtype, tuple(shape) if shape is not None else None)


@pytest.mark.parametrize("shape, expected", [
    ((1, 3, 32, 32), "NCHW"), (("n", 1, "h", "w"), "NCHW"),
    ((1, 32, 32, 3), "NHWC"), (("n", "h", "w", 1), "NHWC"),
    ((1, 3, 32, 3), None), (("n", "c", "h", "w"), None), ((1, 8, 8, 8), None),
    ((1, 3, 32), None), (None, None)])
def test_declared_layout(shape, expected):
    assert declared_layout(shape) == expected


def test_image_layout_guesses_takes_given_and_refuses_ambiguous():
    assert image_layout(_inp((1, 3, 8, 8))) == "NCHW"
    assert image_layout(_inp((1, 8, 8, 3))) == "NHWC"
    assert image_layout(_inp((1, 3, 8, 3)), "NHWC") == "NHWC"  # given wins
    with pytest.raises(TfueError, match="cannot tell whether input 'x'") as err:
        image_layout(_inp(("n", "c", "h", "w")))
    assert "--layout NCHW" in err.value.hint
    with pytest.raises(TfueError, match="not a 4-D image batch"):
        image_layout(_inp((1, 8, 8)))
    with pytest.raises(TfueError, match="unknown layout"):
        image_layout(_inp((1, 3, 8, 8)), "CHW")


def test_image_axes_and_image_input():
    assert image_axes(_inp((1, 8, 8))) == (1, 2)
    assert image_axes(_inp((1, 3, 8, 8))) == (2, 3)
    assert image_axes(_inp((1, 8, 8, 3))) == (1, 2)

    def info(*inputs):
        vis = [helper.make_tensor_value_info(name, elem, shape) for name, elem, shape in inputs]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        graph = helper.make_graph([helper.make_node("Identity", [inputs[0][0]], ["y"])], "g",
                                  vis, [out])
        return ModelInfo(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))

    f = TensorProto.FLOAT
    inp, axes = image_input(info(("x", f, ["n", 3, "h", "w"])))
    assert (inp.name, axes) == ("x", (2, 3))
    assert image_input(info(("x", f, ["n", "h", "w", 1])))[1] == (1, 2)
    assert image_input(info(("x", f, ["n", "c", "h", "w"]))) == (None, None)  # unclear
    assert image_input(info(("x", f, ["n", "c", "h", "w"])), "NHWC")[1] == (1, 2)
    assert image_input(info(("x", TensorProto.INT64, ["n", 3, "h", "w"]))) == (None, None)
    assert image_input(info(("x", f, ["n", 3, "h", "w"]), ("z", f, [1]))) == (None, None)


def test_array_layout_and_the_maps_that_use_it():
    from tfue_onnx.io import spatial_map
    from tfue_onnx.metrics import image_maps

    assert array_layout((2, 3, 16, 16)) == "NCHW"
    assert array_layout((2, 16, 16, 3)) == "NHWC"
    assert array_layout((2, 4, 4, 4)) == "NCHW"  # unclear: NCHW
    nhwc = np.zeros((1, 5, 6, 3))
    nhwc[0, 1, 2, :] = 3.0
    assert spatial_map(nhwc).shape == (5, 6) and spatial_map(nhwc)[1, 2] == 3.0
    (m,) = image_maps(nhwc)
    assert m.shape == (5, 6) and m[1, 2] == 3.0


def test_with_batch():
    a = np.ones((3, 4, 5))
    assert with_batch(a, (1, 3, 4, 5)).shape == (1, 3, 4, 5)
    assert with_batch(a, ("n", 3, "h", "w")).shape == (1, 3, 4, 5)
    assert with_batch(a, (3, 4, 5)) is a  # already of the declared rank
    assert with_batch(a, None) is a  # undeclared: as it is
    assert with_batch(np.ones((2, 3)), (1, 2, 3, 4)).shape == (2, 3)  # two short: as it is


def test_evenly_spaced():
    items = list(range(10))
    assert evenly_spaced(items, 4) == [0, 3, 6, 9]  # ends included
    assert evenly_spaced(items, 1) == [0]
    assert evenly_spaced(items, 3, ends=False) == [2, 4, 7]  # off both ends
    assert evenly_spaced(items, 10) == items and evenly_spaced(items, 20) == items
    assert evenly_spaced("abc", 2) == ["a", "c"]
    with pytest.raises(ValueError, match="k must be >= 1"):
        evenly_spaced(items, 0)


def test_evenly_spaced_is_what_inspect_sweep_and_choose_pick():
    from tfue_onnx.choose import interior_locations
    from tfue_onnx.cli import _spread
    from tfue_onnx.model import inspect_model
    from tfue_onnx.sweep import sweep_locations

    info = inspect_model(SR)
    cands = info.candidates
    assert _spread(cands, 5) == evenly_spaced(cands, 5)
    assert [c.name for c in sweep_locations(info, at_count=5)] == \
        [c.name for c in evenly_spaced(cands, 5)]
    assert [c.name for c in sweep_locations(info, at_count=5)][0] == cands[0].name
    interior = [c for c in cands if 0 < c.depth < 1]
    picks = interior_locations(info, 3)
    assert [c.name for c in picks] == [c.name for c in evenly_spaced(interior, 3, ends=False)]
    assert len(picks) == 3 and picks[0].name != interior[0].name


def test_layout_and_graph_do_not_import_later_stages():
    import ast

    def package(path, level):  # modules of tfue_onnx imported (lazily too)
        tree = ast.parse(open(os.path.join(ROOT, "tfue_onnx", *path.split("/"))).read())
        return {n.module for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and n.level == level}

    assert package("layout.py", 1) <= {"errors", "names", "model"}  # foundation and load
    for name in ("__init__.py", "blackbox.py", "pad.py"):
        found = package("graph/" + name, 2)
        assert found and not found & {"io", "axes", "session", "runner"}, (name, found)
