"""feeds.py: every input checked against the model before any graph is built (each
refusal, the float cast), synthetic inputs, input signatures."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from tfue_onnx.errors import TfueError
from tfue_onnx.feeds import check_feeds, fmt_shape, signature, synthetic_input
from tfue_onnx.model import ModelInfo


def _info(inputs):
    """A model passing each (name, elem type, shape) input through an Identity."""
    nodes = [helper.make_node("Identity", [n], [n + "_out"]) for n, _, _ in inputs]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n + "_out", t, s) for n, t, s in inputs])
    return ModelInfo(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


@pytest.fixture
def two():
    return _info([("x", TensorProto.FLOAT, ["N", 3, 6, "W"]), ("ids", TensorProto.INT64, ["N", 5])])


def _ok(n=1):
    return {"x": np.zeros((n, 3, 6, 7), np.float32), "ids": np.zeros((n, 5), np.int64)}


def _refused(info, feeds, match, **kw):
    with pytest.raises(TfueError, match=match) as err:
        check_feeds(info, feeds, **kw)
    assert "\n" not in str(err.value)
    return err.value


def test_valid_feeds_come_back_in_the_models_order_c_contiguous(two):
    x = np.asfortranarray(np.arange(2 * 3 * 6 * 7, dtype=np.float32).reshape(2, 3, 6, 7))
    ids = np.arange(10, dtype=np.int64).reshape(5, 2).T  # a transposed view
    out = check_feeds(two, {"ids": ids, "x": x})
    assert list(out) == ["x", "ids"]
    assert all(a.flags.c_contiguous for a in out.values())
    np.testing.assert_array_equal(out["x"], x)
    np.testing.assert_array_equal(out["ids"], ids)


def test_another_float_dtype_is_cast_to_the_models(two):
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 7))  # float64
    out = check_feeds(two, {**_ok(), "x": x})
    assert out["x"].dtype == np.float32
    np.testing.assert_array_equal(out["x"], x.astype(np.float32))
    half = check_feeds(two, {**_ok(), "x": x.astype(np.float16)})["x"]
    assert half.dtype == np.float32
    np.testing.assert_array_equal(half, x.astype(np.float16).astype(np.float32))


def test_one_array_for_a_one_input_model_only(two):
    one = _info([("x", TensorProto.FLOAT, ["N", 3])])
    arr = np.ones((2, 3), np.float32)
    assert list(check_feeds(one, arr)) == ["x"]
    err = _refused(two, _ok()["x"], "the model has 2 inputs; pass a dict of arrays by input name")
    assert err.hint == "inputs: x, ids"


def test_a_missing_input(two):
    err = _refused(two, {"x": _ok()["x"]}, "missing input 'ids'")
    assert err.hint == "the model's inputs are: x, ids"


def test_an_unknown_input(two):
    err = _refused(two, {**_ok(), "z": np.zeros(1), "a": np.zeros(1)}, r"unknown input\(s\) 'a', 'z'")
    assert err.hint == "the model's inputs are: x, ids"


def test_a_wrong_rank(two):
    err = _refused(two, {**_ok(), "x": np.zeros((3, 6, 7), np.float32)},
                   r"input 'x' has shape \(3, 6, 7\), the model expects rank 4 \[\?, 3, 6, \?\]")
    assert "batch axis" in err.hint


@pytest.mark.parametrize("shape,axis,size", [((1, 4, 6, 7), 1, 3), ((1, 3, 5, 7), 2, 6)])
def test_a_wrong_fixed_size(two, shape, axis, size):
    _refused(two, {**_ok(), "x": np.zeros(shape, np.float32)},
             rf"expects \[\?, 3, 6, \?\] \(axis {axis} must be {size}\)")
    # Free dims take any size.
    assert check_feeds(two, {"x": np.zeros((4, 3, 6, 11), np.float32),
                             "ids": np.zeros((4, 5), np.int64)})["x"].shape == (4, 3, 6, 11)


@pytest.mark.parametrize("name,arr,got,want", [
    ("x", np.zeros((1, 3, 6, 7), np.int32), "int32", "float32"),
    ("ids", np.zeros((1, 5), np.int32), "int32", "int64"),
    ("ids", np.zeros((1, 5), np.float32), "float32", "int64")])
def test_a_wrong_dtype_is_refused_not_cast(two, name, arr, got, want):
    err = _refused(two, {**_ok(), name: arr},
                   f"input '{name}' has dtype {got}, the model expects {want}")
    assert err.hint == f"convert it, e.g. array.astype('{want}')"


def test_nan_and_inf_are_counted(two):
    x = _ok()["x"]
    x[0, 0, 0, :2] = np.nan
    x[0, 1, 2, 3] = -np.inf
    err = _refused(two, {**_ok(), "x": x}, "input 'x' contains 3 NaN or infinite values")
    assert "nan_to_num" in err.hint


@pytest.mark.parametrize("pad,ok", [(2, True), (3, False)])
def test_pad_needs_an_image_more_than_twice_as_large(two, pad, ok):
    feeds = _ok()  # height 6, width 7
    if ok:
        assert check_feeds(two, feeds, pad=pad, pad_input=("x", (2, 3)))["x"].shape[2] == 6
    else:
        _refused(two, feeds, r"pad=3 needs an image more than twice as large: input 'x' has "
                 r"size 6 on axis 2", pad=pad, pad_input=("x", (2, 3)))
    assert check_feeds(two, feeds, pad=pad, pad_input=("other", (2, 3)))  # another input


def test_synthetic_input_fills_free_dims_from_seed_zero(two):
    feeds = synthetic_input(two, size=9)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(feeds["x"], rng.standard_normal((1, 3, 6, 9)).astype(np.float32))
    assert feeds["ids"].dtype == np.int64 and feeds["ids"].shape == (1, 5)
    assert not feeds["ids"].any()
    assert check_feeds(two, feeds).keys() == feeds.keys()  # what it makes passes the check
    half = _info([("h", TensorProto.FLOAT16, [2, "c"])])
    assert synthetic_input(half)["h"].dtype == np.float16 and synthetic_input(half)["h"].shape == (2, 64)


def test_synthetic_input_needs_a_known_rank():
    with pytest.raises(TfueError, match="input 'u' has no known shape") as err:
        synthetic_input(_info([("u", TensorProto.FLOAT, None)]))
    assert "--example" in err.value.hint


def test_signature_is_sorted_names_shapes_and_dtypes():
    a = {"x": np.zeros((1, 3), np.float32), "b": np.zeros(2, np.int64)}
    assert signature(a) == (("b", (2,), "<i8"), ("x", (1, 3), "<f4"))
    assert signature(dict(reversed(list(a.items())))) == signature(a)
    assert signature({**a, "x": np.zeros((1, 4), np.float32)}) != signature(a)
    assert signature({**a, "x": np.zeros((1, 3), np.float16)}) != signature(a)
    assert fmt_shape(["N", 3, 0, -1, 5]) == "[?, 3, ?, ?, 5]"


def test_check_inputs_fit_refuses_transforms_without_one_float_image_input(two):
    from tfue_onnx.feeds import check_inputs_fit
    from tfue_onnx.perturb import Noise, Transform

    check_inputs_fit(two, Noise(0.1, at="x_out"))  # gray-box: any inputs
    check_inputs_fit(_info([("x", TensorProto.FLOAT, ["N", 3, "H", "W"])]), Transform())
    check_inputs_fit(_info([("x", TensorProto.FLOAT, ["N", "H", "W"])]), Transform())
    with pytest.raises(TfueError) as err:
        check_inputs_fit(two, Transform())
    assert err.value.message == (
        "infer-transformation needs one image input (float, [N,C,H,W]/[N,H,W,C]/[N,H,W]); "
        "this model has 2 inputs: x float32 [N, 3, 6, W], ids int64 [N, 5]")
    assert "--method noise or --method dropout" in err.value.hint
    for bad in ([("t", TensorProto.INT64, ["N", 3, 8, 8])], [("v", TensorProto.FLOAT, ["N", 8])],
                [("u", TensorProto.FLOAT, None)]):
        with pytest.raises(TfueError, match="this model has 1 input: "):
            check_inputs_fit(_info(bad), Transform())
