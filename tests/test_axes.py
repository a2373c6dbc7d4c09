"""Which output axes carry the image: the probe (axes.py), and infer-transformation undoing
each transform on exactly those axes, checked against numpy + onnxruntime."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfue_onnx import Estimator, TfueError
from tfue_onnx.axes import AxesProbe
from tfue_onnx.io import spatial_map
from tfue_onnx.model import ModelInfo
from tfue_onnx.perturb import Noise, Transform

F = TensorProto.FLOAT


def _w(rng, *shape):
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.5)


def _model(path, nodes, inits, inputs, outputs, opset=13):
    rng = np.random.default_rng(0)
    tensors = []
    for name, shape in inits.items():
        t = _w(rng, *shape) if isinstance(shape, tuple) else numpy_helper.from_array(shape)
        t.name = name
        tensors.append(t)
    graph = helper.make_graph(nodes, "axes", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _conv(x, y, w, cin, cout, inits, pad=1):
    inits[w] = (cout, cin, 3, 3)
    return helper.make_node("Conv", [x, w], [y], pads=[pad] * 4)


def nchw_to_nhwc(path, opset=13, h="H", w="W", n="N", perm=(0, 2, 3, 1)):
    """x [N, 3, H, W] -> conv -> Transpose(perm) -> softmax over classes (5)."""
    inits = {}
    nodes = [_conv("x", "c", "w1", 3, 5, inits),
             helper.make_node("Transpose", ["c"], ["t"], perm=list(perm)),
             helper.make_node("Softmax", ["t"], ["probs"], axis=3)]
    dims = {0: n, 1: 5, 2: h, 3: w}
    return _model(path, nodes, inits, [("x", F, [n, 3, h, w])],
                  [("probs", F, [dims[p] for p in perm])], opset)


def nhwc(path, opset=11):
    """x [N, H, W, 3] -> Transpose -> conv -> Transpose back: y [N, H, W, 5]."""
    inits = {}
    nodes = [helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]),
             _conv("xc", "c", "w1", 3, 5, inits),
             helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1])]
    return _model(path, nodes, inits, [("x", F, ["N", "H", "W", 3])],
                  [("y", F, ["N", "H", "W", 5])], opset)


def map_nhw(path):
    """x [N, 3, H, W] -> conv to 1 channel -> Squeeze: y [N, H, W]."""
    inits = {"sq": np.array([1], np.int64)}
    nodes = [_conv("x", "c", "w1", 3, 1, inits),
             helper.make_node("Squeeze", ["c", "sq"], ["y"])]
    return _model(path, nodes, inits, [("x", F, ["N", 3, "H", "W"])], [("y", F, ["N", "H", "W"])])


def sr_depth_to_space(path):
    """x [N, 3, H, W] -> conv to 12 -> DepthToSpace(2): y [N, 3, 2H, 2W]."""
    inits = {}
    nodes = [_conv("x", "c", "w1", 3, 12, inits),
             helper.make_node("DepthToSpace", ["c"], ["y"], blocksize=2)]
    return _model(path, nodes, inits, [("x", F, ["N", 3, "H", "W"])],
                  [("y", F, ["N", 3, "H2", "W2"])], 11)


def sr_resize(path):
    """x [N, 3, H, W] -> conv -> Resize x2 (linear): y [N, 2, 2H, 2W] (opset 17)."""
    inits = {"scales": np.array([1, 1, 2, 2], np.float32)}
    nodes = [_conv("x", "c", "w1", 3, 2, inits),
             helper.make_node("Resize", ["c", "", "scales"], ["y"], mode="linear")]
    return _model(path, nodes, inits, [("x", F, ["N", 3, "H", "W"])],
                  [("y", F, ["N", 2, "H2", "W2"])], 17)


def valid_conv(path):
    """Two unpadded 3x3 convs: y [N, 2, H - 4, W - 4]."""
    inits = {}
    nodes = [_conv("x", "c", "w1", 3, 4, inits, pad=0),
             _conv("c", "y", "w2", 4, 2, inits, pad=0)]
    return _model(path, nodes, inits, [("x", F, ["N", 3, "H", "W"])],
                  [("y", F, ["N", 2, "Hv", "Wv"])])


def sequence(path, height=8):
    """A text-recogniser head: x [N, 3, 8, W] -> conv -> 4x4 pool -> [N, W/4, C, 2] ->
    Reshape: y [N, T, 10] with T = W/4; the height is folded into the features."""
    inits = {"shape": np.array([0, 0, -1], np.int64)}
    nodes = [_conv("x", "c", "w1", 3, 5, inits),
             helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Transpose", ["p"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Reshape", ["t", "shape"], ["y"])]
    return _model(path, nodes, inits, [("x", F, ["N", 3, height, "W"])],
                  [("y", F, ["N", "T", 5 * height // 4 if isinstance(height, int) else "K"])])


def scores_and_map(path):
    """Two outputs: a map [N, 2, H, W] and class scores [N, 6] of the same features."""
    inits = {"wg": (4, 6)}
    nodes = [_conv("x", "c", "w1", 3, 4, inits),
             helper.make_node("Relu", ["c"], ["r"]),
             _conv("r", "c2", "w2", 4, 2, inits),
             helper.make_node("Sigmoid", ["c2"], ["map"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "wg"], ["l"]),
             helper.make_node("Softmax", ["l"], ["scores"], axis=1)]
    return _model(path, nodes, inits, [("x", F, ["N", 3, "H", "W"])],
                  [("map", F, ["N", 2, "H", "W"]), ("scores", F, ["N", 6])])


def _fixed(size):
    return lambda p: nchw_to_nhwc(p, h=size[0], w=size[1], n=1)


# name -> (builder, input shape, input's (h, w), expected {output: axes}, unresolved)
MODELS = {
    "nchw_to_nhwc": (nchw_to_nhwc, (1, 3, 16, 16), (2, 3), {"probs": (1, 2)}, set()),
    "nchw_to_nhwc_opset11": (lambda p: nchw_to_nhwc(p, opset=11), (2, 3, 10, 10), (2, 3),
                             {"probs": (1, 2)}, set()),
    "transposed_out": (lambda p: nchw_to_nhwc(p, perm=(0, 3, 2, 1)), (1, 3, 12, 12), (2, 3),
                       {"probs": (2, 1)}, set()),
    "nhwc": (nhwc, (1, 16, 16, 3), (1, 2), {"y": (1, 2)}, set()),
    "map_nhw": (map_nhw, (1, 3, 12, 12), (2, 3), {"y": (1, 2)}, set()),
    "sr_depth_to_space": (sr_depth_to_space, (1, 3, 8, 8), (2, 3), {"y": (2, 3)}, set()),
    "sr_resize": (sr_resize, (1, 3, 8, 8), (2, 3), {"y": (2, 3)}, set()),
    "valid_conv": (valid_conv, (1, 3, 12, 12), (2, 3), {"y": (2, 3)}, set()),
    "sequence": (sequence, (1, 3, 8, 16), (2, 3), {"y": None}, {"y"}),
    # Free height: the features (5 * H / 4) grow with H, T with W, at other rates.
    "sequence_free_height": (lambda p: sequence(p, height="H"), (1, 3, 8, 16), (2, 3),
                             {"y": None}, {"y"}),
    "scores_and_map": (scores_and_map, (1, 3, 12, 12), (2, 3),
                       {"map": (2, 3), "scores": None}, set()),
    "fixed_square": (_fixed((16, 16)), (1, 3, 16, 16), (2, 3), {"probs": (1, 2)}, set()),
    "fixed_square_transposed": (lambda p: nchw_to_nhwc(p, h=16, w=16, n=1, perm=(0, 3, 2, 1)),
                                (1, 3, 16, 16), (2, 3), {"probs": (2, 1)}, set()),
    "fixed_12x16": (_fixed((12, 16)), (1, 3, 12, 16), (2, 3), {"probs": (1, 2)}, set()),
    # Height fixed, width free: the width is probed, the height matched by size.
    "fixed_height": (lambda p: nchw_to_nhwc(p, h=16), (1, 3, 16, 16), (2, 3), {"probs": (1, 2)},
                     set()),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("axes")
    return lambda name: MODELS[name][0](folder / f"{name}.onnx")


def _input(name):
    return np.random.default_rng(1).standard_normal(MODELS[name][1]).astype(np.float32)


def _probe(path):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    calls = []

    def run(feeds):
        calls.append({k: v.shape for k, v in feeds.items()})
        return dict(zip(names, sess.run(names, feeds)))

    return AxesProbe(ModelInfo(onnx.load(path), path), run), calls


@pytest.mark.parametrize("name", list(MODELS))
def test_probe_finds_the_image_axes(models, name):
    path = models(name)
    _, shape, in_axes, expected, unresolved = MODELS[name]
    probe, calls = _probe(path)
    found = probe({"x": _input(name)})
    assert found.input_axes == in_axes
    assert found.outputs == expected
    assert set(found.unresolved) == unresolved
    assert found.metadata() == {k: list(v) if v else None for k, v in expected.items()}
    how = {"fixed_height": "mixed", "sequence": "mixed", "fixed_square": "sizes",
           "fixed_square_transposed": "sizes", "fixed_12x16": "sizes"}.get(name, "probe")
    assert found.how == how
    n = len(calls)
    assert probe({"x": _input(name)}) is found and len(calls) == n  # cached per shape


def test_class_scores_of_a_classifier_have_no_image_axes(tmp_path):
    from toys import classifier_net

    probe, _ = _probe(classifier_net(tmp_path / "c.onnx"))
    found = probe({"x": np.zeros((1, 3, 8, 8), np.float32)})
    assert found.outputs == {"p": None} and not found.unresolved and found.how == "probe"


def test_free_in_the_signature_fixed_inside(tmp_path):
    """H and W free in the signature, but a constant [1, 2, 8, 12] bias: the probe's
    grown inputs fail, and the sizes decide."""
    from toys import fixed_bias_net

    path = fixed_bias_net(tmp_path / "fb.onnx")
    probe, calls = _probe(path)
    found = probe({"x": np.zeros((1, 3, 8, 12), np.float32)})
    assert found.outputs == {"y": (2, 3)} and found.how == "sizes"
    assert len(calls) == 5  # the input, then height and width grown by 32 and doubled


def test_no_image_input_runs_nothing(tmp_path):
    inits = {"wm": (4, 3)}
    path = _model(tmp_path / "v.onnx", [helper.make_node("MatMul", ["x", "wm"], ["y"])], inits,
                  [("x", F, ["N", 4])], [("y", F, ["N", 3])])
    found = AxesProbe(ModelInfo(onnx.load(path), path),
                      lambda feeds: pytest.fail("nothing to probe"))({"x": np.zeros((2, 4))})
    assert found.input_name is None and found.outputs == {"y": None}


# --- infer-transformation against numpy + onnxruntime -------------------------------------------
def _d4(ih, iw, oh, ow):
    """(forward, inverse) pairs on the input's (ih, iw) and the output's (oh, ow) axes,
    written with numpy's rot90 / flip / swapaxes (independent of tfue's transforms)."""
    return {
        "identity": (lambda a: a, lambda y: y),
        "hflip": (lambda a: np.flip(a, iw), lambda y: np.flip(y, ow)),
        "vflip": (lambda a: np.flip(a, ih), lambda y: np.flip(y, oh)),
        "rot180": (lambda a: np.flip(a, (ih, iw)), lambda y: np.flip(y, (oh, ow))),
        "rot90": (lambda a: np.rot90(a, 1, (ih, iw)), lambda y: np.rot90(y, -1, (oh, ow))),
        "rot270": (lambda a: np.rot90(a, 3, (ih, iw)), lambda y: np.rot90(y, -3, (oh, ow))),
        "transpose": (lambda a: np.swapaxes(a, ih, iw), lambda y: np.swapaxes(y, oh, ow)),
        "antitranspose": (lambda a: np.rot90(np.swapaxes(a, ih, iw), 2, (ih, iw)),
                          lambda y: np.swapaxes(np.rot90(y, -2, (oh, ow)), oh, ow)),
    }


def _reference(path, x, in_axes, out_axes, names):
    """Per output: the stack of inverse(model(forward(x))) over ``names``; outputs with
    no known axes are stacked as they come."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    stacks = {o: [] for o in outs}
    for t in names:
        for o, y in zip(outs, sess.run(None, {"x": np.ascontiguousarray(
                _d4(*in_axes, 0, 0)[t][0](x))})):
            axes = out_axes[o]
            y = y.astype(np.float64)
            stacks[o].append(_d4(0, 0, *axes)[t][1](y) if axes else y)
    return {o: np.stack(s) for o, s in stacks.items()}


NON_SQUARE = ["sequence", "sequence_free_height", "fixed_12x16"]
SQUARE = [n for n in MODELS if n not in NON_SQUARE]


@pytest.mark.parametrize("tset", ["flips", "d4"])
@pytest.mark.parametrize("name", SQUARE)
def test_transforms_are_undone_on_the_found_axes(models, name, tset):
    path = models(name)
    _, _, in_axes, expected, _ = MODELS[name]
    x = _input(name)
    res = Estimator(path, Transform(tset))(x)
    names = res.metadata["transforms"]
    ref = _reference(path, x, in_axes, expected, names)
    assert res.metadata["inverted_axes"] == {k: list(v) if v else None
                                             for k, v in expected.items()}
    for o, stack in ref.items():
        s = res.outputs[o]
        np.testing.assert_allclose(s.mean, stack.mean(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(s.variance, stack.var(0), rtol=1e-3, atol=1e-7)
    # The numbers differ from a wrong inversion (the check above can fail).
    assert max(float(ref[o].var(0).mean()) for o in ref) > 1e-4


@pytest.mark.parametrize("name", NON_SQUARE)
def test_non_square_flips(models, name):
    path = models(name)
    _, _, in_axes, expected, _ = MODELS[name]
    x = _input(name)
    res = Estimator(path, Transform("flips"))(x)
    ref = _reference(path, x, in_axes, expected, res.metadata["transforms"])
    for o, stack in ref.items():
        np.testing.assert_allclose(res.outputs[o].mean, stack.mean(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(res.outputs[o].variance, stack.var(0), rtol=1e-3, atol=1e-7)
    assert res.metadata["inverted_axes"] == {k: list(v) if v else None
                                             for k, v in expected.items()}


def test_other_sizes_reuse_the_graph(models):
    """Axes are probed per input shape; the graph is rebuilt only when they differ."""
    path = models("nchw_to_nhwc")
    est = Estimator(path, Transform("d4"))
    rng = np.random.default_rng(0)
    for size in (16, 12, 16):
        x = rng.standard_normal((1, 3, size, size)).astype(np.float32)
        res = est(x)
        ref = _reference(path, x, (2, 3), {"probs": (1, 2)}, res.metadata["transforms"])
        np.testing.assert_allclose(res.variance, ref["probs"].var(0), rtol=1e-3, atol=1e-7)
    assert sum("transforms undone on output axes" in n for n in est.notes) == 1
    assert len(est._axes_probe._cache) == 2


def test_rotations_refused_on_a_sequence_output(models):
    path = models("sequence")
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)  # square
    with pytest.raises(TfueError, match=r"output 'y' changes with the image's size, but tfue "
                                        r"cannot tell which of its axes carry .*rot90.*Hint: "
                                        r"use transforms=.flips."):
        Estimator(path, Transform("d4"))(x)


def test_rotations_refused_when_the_output_is_not_square(tmp_path):
    """A map with stride 2 in height only: a rotated sample cannot line up."""
    inits = {}
    nodes = [_conv("x", "c", "w1", 3, 2, inits),
             helper.make_node("AveragePool", ["c"], ["y"], kernel_shape=[2, 1], strides=[2, 1])]
    path = _model(tmp_path / "aniso.onnx", nodes, inits, [("x", F, ["N", 3, "H", "W"])],
                  [("y", F, ["N", 2, "Ho", "W"])])
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with pytest.raises(TfueError, match=r"output 'y' is 8x16 on axes \(2, 3\) for an input of "
                                        r"16x16.*Hint: use transforms=.flips."):
        Estimator(path, Transform("rot"))(x)
    res = Estimator(path, Transform("flips"))(x)
    assert res.metadata["inverted_axes"] == {"y": [2, 3]}
    ref = _reference(path, x, (2, 3), {"y": (2, 3)}, res.metadata["transforms"])["y"]
    np.testing.assert_allclose(res.variance, ref.var(0), rtol=1e-3, atol=1e-7)


# --- heatmaps and summaries ------------------------------------------------------------------
def test_spatial_map_uses_the_given_axes():
    a = np.zeros((1, 6, 4, 5))
    a[0, :, 1, 2] = 1.0  # a column at w = 2 of a map on axes (1, 3)
    m = spatial_map(a, (1, 3))
    assert m.shape == (6, 5)
    np.testing.assert_allclose(m, a[0].mean(1))
    np.testing.assert_allclose(spatial_map(a, (3, 1)), m.T)  # rows follow h, not axis order
    assert spatial_map(a, False) is None
    assert spatial_map(np.zeros((1, 6)), False) is None


@pytest.mark.parametrize("method", ["transform", "noise"])
def test_heatmap_of_an_nhwc_output_is_h_by_w(cli, models, tmp_path, method):
    path = models("nhwc")
    x = np.random.default_rng(0).standard_normal((1, 24, 20, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    extra = ["--transforms", "flips"] if method == "transform" else ["--at", "input"]
    r = cli("run", path, tmp_path / "x.npy", "--method", method, *extra,
            "--out", tmp_path / "o", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["spatial_axes"] == {"y": [1, 2]}
    assert summary["inputs"][0]["spatial_axes"] == {"y": [1, 2]}
    if method == "transform":
        assert summary["inverted_axes"] == {"y": [1, 2]}
    assert summary["inputs"][0]["heatmap_shape"] == [24, 20]  # (h, w): upright
    assert (tmp_path / "o" / "x.variance.png").stat().st_size > 5000
    with np.load(tmp_path / "o" / "x.npz") as z:
        assert json.loads(str(z["metadata"]))["spatial_axes"] == {"y": [1, 2]}


def test_no_heatmap_for_an_output_without_image_axes(cli, models, tmp_path):
    path = models("sequence")
    np.save(tmp_path / "x.npy", _input("sequence"))
    r = cli("run", path, tmp_path / "x.npy", "--method", "transform", "--transforms", "hflip",
            "--out", tmp_path / "o", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["inverted_axes"] == {"y": None}
    assert not (tmp_path / "o" / "x.variance.png").exists()


@pytest.mark.parametrize("name", ["nchw_to_nhwc", "transposed_out"])
def test_entropy_heatmap_is_h_by_w(cli, models, tmp_path, name):
    """The entropy map loses the class axis (last here): the map is still the image's
    H x W, upright even when the output holds it as [N, W, H, K]."""
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal(
        (1, 3, 24, 20)).astype(np.float32))
    r = cli("run", models(name), tmp_path / "x.npy", "--method", "entropy",
            "--out", tmp_path / "o", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["inputs"][0]["heatmap_shape"] == [24, 20]  # (h, w)
    assert (tmp_path / "o" / "x.entropy.png").stat().st_size > 5000


def test_build_with_found_axes(models):
    """graphs.build called directly (no runner) with axes.find_axes on a synthetic input;
    without axes it refuses (the rewrite stage runs no model)."""
    from tfue_onnx import graph as graphs
    from tfue_onnx.axes import find_axes

    path = models("nchw_to_nhwc")
    info = ModelInfo(onnx.load(path), path)
    with pytest.raises(ValueError, match="find_axes"):
        graphs.build(info, Transform("d4"), "batched")
    found = find_axes(info)
    assert found.metadata() == {"probs": [1, 2]}
    ug = graphs.build(info, Transform("d4"), "batched", axes=found)
    sess = ort.InferenceSession(ug.model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    x = _input("nchw_to_nhwc")
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
    ref = _reference(path, x, (2, 3), {"probs": (1, 2)}, Transform("d4").names)["probs"]
    np.testing.assert_allclose(out["probs.variance"], ref.var(0), rtol=1e-3, atol=1e-7)


def test_graybox_records_axes(models):
    path = models("scores_and_map")
    res = Estimator(path, Noise(0.1, at="r"), samples=4, seed=0)(_input("scores_and_map"))
    assert res.metadata["spatial_axes"] == {"map": [2, 3], "scores": None}
    assert "inverted_axes" not in res.metadata


# --- the real detector -----------------------------------------------------------------------
def test_ppocr_detector_inverts_on_2_3(ppocr_det, text_array):
    res = Estimator(ppocr_det, Transform("hflip"))(text_array)
    name = res.primary
    assert res.metadata["inverted_axes"] == {name: [2, 3]}
    assert res.metadata["spatial_axes"] == {name: [2, 3]}


@pytest.mark.parametrize("out,inp,ok", [
    ((68, 52), (48, 40), True),    # 2 * (H - 14): super-resolution of a valid convolution
    ((20, 16), (40, 32), True),    # H / 2
    ((10, 8), (40, 33), True),     # floor(H / 4): a stride, within 15 %
    ((44, 36), (40, 32), True),    # H + 4
    ((52, 68), (48, 40), False),   # h and w swapped: no positive scale
    ((30, 16), (40, 32), False),   # scale 1.75: not a plausible one
    ((20, 21), (40, 40), False),   # square input, unequal outputs
    ((20, 20), (40, 40), True),
])
def test_common_affine_map(out, inp, ok):
    from tfue_onnx.axes import _common_affine

    assert _common_affine(out, inp) is ok
