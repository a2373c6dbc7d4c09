"""--pad P / --pad auto: valid-convolution models, whose output loses a border.

Toy models (built here): valid Convs (no padding) and a DepthToSpace x2, so the output
is 2 * (H - 2 * border); the real ones are waifu2x's upconv_7 (border 7, opset 8).
Every number is checked against numpy's reflect pad + plain onnxruntime.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from tfue_onnx import Dropout, Estimator, Noise, Transform
from tfue_onnx.errors import TfueError
from tfue_onnx.evaluate import crop_target
from tfue_onnx.transforms import ELEMENTS, SETS


def valid_net(path, opset=13, layout="NCHW", kernels=(3, 3), channels=3, seed=0):
    """x -> Conv(k1, no pad) -> Relu -> Conv(k2, no pad) -> DepthToSpace(2) -> y.

    The border per side is sum(k - 1) / 2; NHWC models transpose in and out."""
    rng = np.random.default_rng(seed)
    k1, k2 = kernels
    w1 = (rng.standard_normal((8, channels, k1, k1)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((4 * channels, 8, k2, k2)) * 0.3).astype(np.float32)
    nodes, x, y = [], "x", "y"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]))
        x = "x_nchw"
    nodes += [helper.make_node("Conv", [x, "w1"], ["c1"], name="conv1"),
              helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
              helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
              helper.make_node("DepthToSpace", ["c2"], ["d2s" if layout == "NHWC" else y],
                               blocksize=2)]
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["d2s"], [y], perm=[0, 2, 3, 1]))
    shape = ["n", channels, "h", "w"] if layout == "NCHW" else ["n", "h", "w", channels]
    graph = helper.make_graph(nodes, "valid",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             ["n", "a", "b", "c"])],
                              [numpy_helper.from_array(w1, "w1"),
                               numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _plain(path, x, name="x"):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {name: np.ascontiguousarray(x)})[0]


def _reflect(x, p, axes=(2, 3)):
    widths = [(0, 0)] * x.ndim
    for a in axes:
        widths[a] = (p, p)
    return np.pad(x, widths, mode="reflect")


@pytest.fixture
def x():
    return np.random.default_rng(0).random((1, 3, 14, 18), dtype=np.float32)


# --- the toy: round trip, export == run, auto ------------------------------------------------
@pytest.mark.parametrize("opset", [9, 13, 18])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_pad_round_trip_covers_the_image(tmp_path, x, opset, layout):
    path = valid_net(tmp_path / "v.onnx", opset=opset, layout=layout)
    axes = (2, 3) if layout == "NCHW" else (1, 2)
    xi = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    unpadded = _plain(path, xi)
    assert unpadded.shape[axes[0]] == 2 * (14 - 4)  # the border the model loses
    res = Estimator(path, Noise(0.1, at="r1"), samples=4, seed=0, pad=2, layout=layout)(xi)
    ref = _plain(path, _reflect(xi, 2, axes))
    assert res.output.shape[axes[0]] == 28 and res.output.shape[axes[1]] == 36
    np.testing.assert_allclose(res.output, ref, rtol=1e-5, atol=1e-6)
    assert res.metadata["pad"] == 2
    assert float(res.variance.mean()) > 0
    zero = Estimator(path, Noise(0.0, at="r1"), samples=2, seed=0, pad=2, layout=layout)(xi)
    np.testing.assert_allclose(zero.mean, ref, rtol=1e-5, atol=1e-6)


def test_transforms_on_the_padded_input_match_plain_runs(tmp_path, x):
    path = valid_net(tmp_path / "v.onnx")
    res = Estimator(path, Transform("d4"), pad=2)(x)
    px = _reflect(x, 2)
    ys = np.stack([e.inverse(_plain(path, e.forward(px, (2, 3))), (2, 3))
                   for e in (ELEMENTS[n] for n in SETS["d4"])]).astype(np.float64)
    assert ys.shape[1:] == (1, 3, 28, 36)
    np.testing.assert_allclose(res.mean, ys.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.variance, ys.var(0), rtol=1e-3, atol=1e-8)


@pytest.mark.parametrize("spec", [Transform("d4"), Dropout(0.2, at="r1")])
def test_export_pads_like_run(tmp_path, x, spec):
    path = valid_net(tmp_path / "v.onnx", opset=13)
    est = Estimator(path, spec, samples=None if isinstance(spec, Transform) else 4, seed=0,
                    pad=2)
    res = est(x)
    out = est.export(tmp_path / "u.onnx", example=x)
    s = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"x": x})))
    assert s.get_inputs()[0].name == "x"
    np.testing.assert_allclose(got["y"], _plain(path, _reflect(x, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["y"], res.output, rtol=1e-5, atol=1e-6)
    assert got["y.variance"].shape == (1, 3, 28, 36)
    if isinstance(spec, Transform):  # deterministic: the file's statistics are run's
        np.testing.assert_allclose(got["y.mean"], res.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["y.variance"], res.variance, rtol=1e-4, atol=1e-8)
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert props["tfue.pad"] == "2"


@pytest.mark.parametrize("kernels,border", [((3, 3), 2), ((3, 5), 3), ((5, 7), 5)])
def test_pad_auto_finds_the_border(tmp_path, kernels, border):
    path = valid_net(tmp_path / "v.onnx", kernels=kernels)
    x = np.random.default_rng(1).random((1, 3, 24, 20), dtype=np.float32)
    res = Estimator(path, Noise(0.05, at="r1"), samples=2, seed=0, pad="auto")(x)
    assert res.metadata["pad"] == border
    assert f"2 * height - {4 * border}" in res.metadata["pad_found"]
    assert res.output.shape == (1, 3, 48, 40)
    np.testing.assert_allclose(res.output, _plain(path, _reflect(x, border)), rtol=1e-5,
                               atol=1e-6)


def test_pad_auto_on_a_same_size_model_pads_nothing(toy, x8):
    res = Estimator(toy(), Noise(0.1, at="r1"), samples=2, seed=0, pad="auto")(x8)
    assert res.metadata["pad"] == 0 and res.output.shape[2:] == (8, 8)


# --- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("pad", [-1, 1.5, "seven"])
def test_bad_pad_values(tmp_path, pad):
    path = valid_net(tmp_path / "v.onnx")
    with pytest.raises(TfueError, match="pad must be"):
        Estimator(path, Noise(0.1, at="r1"), pad=pad)


@pytest.mark.parametrize("size", [(8, 18), (14, 4)])
def test_pad_at_least_half_the_image_is_refused(tmp_path, size):
    path = valid_net(tmp_path / "v.onnx")
    x = np.zeros((1, 3) + size, np.float32)
    with pytest.raises(TfueError, match=r"pad=4 needs an image more than twice as large"):
        Estimator(path, Noise(0.1, at="r1"), pad=4)(x)


def test_pad_needs_an_image_input(tmp_path):
    w = numpy_helper.from_array(np.ones((5, 2), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
                              [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(tmp_path / "mlp.onnx"))
    for pad in (3, "auto"):
        with pytest.raises(TfueError, match="pad pads an image input, and the model has none"):
            Estimator(str(tmp_path / "mlp.onnx"), Noise(0.1, at="y"), pad=pad)


def test_pad_of_an_unclear_layout_needs_layout(tmp_path):
    """2 channels: the layout of [n, 2, h, w] cannot be told (layout.image_input finds no
    image input) until it is given, and --pad auto then finds the border on it."""
    from tfue_onnx.border import resolve_pad
    from tfue_onnx.graph.pad import pad_axes
    from tfue_onnx.model import inspect_model

    info = inspect_model(valid_net(tmp_path / "two.onnx", channels=2))
    with pytest.raises(TfueError, match="the model has none") as err:
        pad_axes(info)
    assert "--layout NCHW or NHWC" in err.value.hint
    assert pad_axes(info, "NCHW") == ("x", (2, 3))
    assert pad_axes(info, "NHWC") == ("x", (1, 2))
    border, how = resolve_pad(info, "auto", "NCHW")
    assert border == 2 and "border 2 per side" in how


def test_pad_auto_refuses_a_fixed_size(tmp_path):
    path = tmp_path / "fixed.onnx"
    model = onnx.load(valid_net(tmp_path / "v.onnx"))
    for k, d in enumerate(model.graph.input[0].type.tensor_type.shape.dim):
        d.dim_value = (1, 3, 20, 20)[k]
    onnx.save(model, str(path))
    with pytest.raises(TfueError, match="fixed size 20"):
        Estimator(str(path), Noise(0.1, at="r1"), pad="auto")
    # A fixed P works: the model now takes the image without its border.
    res = Estimator(str(path), Noise(0.1, at="r1"), samples=2, pad=2)(
        np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32))
    assert res.output.shape == (1, 3, 32, 32)


def test_cli_bad_pad_is_one_line(cli, tmp_path, x):
    path = valid_net(tmp_path / "v.onnx")
    np.save(tmp_path / "x.npy", x)
    for bad, words in (("-2", "--pad must be a whole number"), ("seven", "--pad must be a")):
        r = cli("run", path, tmp_path / "x.npy", "--method", "noise", "--at", "r1", "--pad", bad,
                "--out", tmp_path / "o")
        assert r.exit_code == 2, r.output
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and words in lines[0] and "Hint: " in lines[0], r.stderr


def test_crop_target_is_centered():
    t = np.arange(2 * 10 * 12, dtype=np.float32).reshape(1, 2, 10, 12)
    got, was = crop_target(t, np.zeros((1, 2, 6, 12)))
    assert was == (1, 2, 10, 12)
    np.testing.assert_array_equal(got, t[:, :, 2:8, :])
    same, none = crop_target(t, np.zeros_like(t))
    assert none is None and same is t


# --- the real models: waifu2x upconv_7 -------------------------------------------------------
@pytest.fixture
def lr(tmp_path):
    x = np.random.default_rng(2).random((1, 3, 20, 24), dtype=np.float32)
    np.save(tmp_path / "lr.npy", x[0])
    return x, str(tmp_path / "lr.npy")


@pytest.mark.parametrize("pad", ["7", "auto"])
def test_upconv7_run_with_pad_covers_the_image(cli, upconv7, tmp_path, lr, pad):
    x, npy = lr
    model = upconv7["scale2.0x_model"]
    out = tmp_path / "out"
    r = cli("run", model, npy, "--method", "noise", "--at", "0.5", "--sigma", 0.05, "-n", 4,
            "--seed", 1, "--pad", pad, "--out", out)
    assert r.exit_code == 0, r.output
    if pad == "auto":
        assert "tfue: --pad auto chose 7: output size conv7 axis 2 = 2 * height - 28" in r.stderr
    with np.load(out / "lr.npz") as z:
        assert z["output"].shape == (1, 3, 40, 48)
        np.testing.assert_allclose(z["output"], _plain(model, _reflect(x, 7), "input"),
                                   rtol=1e-5, atol=1e-6)
        assert z["variance"].shape == (1, 3, 40, 48) and float(z["variance"].mean()) > 0
        assert json.loads(str(z["metadata"]))["pad"] == 7


def test_upconv7_export_with_pad(cli, upconv7, tmp_path, lr):
    x, npy = lr
    model = upconv7["noise1_scale2.0x_model"]
    r = cli("export", model, "--method", "transform", "--transforms", "hflip,rot180",
            "--pad", "auto", "--example", npy, "-o", tmp_path / "u.onnx")
    assert r.exit_code == 0, r.output
    s = ort.InferenceSession(str(tmp_path / "u.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"input": x})))
    px = _reflect(x, 7)
    ys = np.stack([_plain(model, px, "input"),
                   _plain(model, px[..., ::-1].copy(), "input")[..., ::-1],
                   _plain(model, px[..., ::-1, ::-1].copy(), "input")[..., ::-1, ::-1]])
    np.testing.assert_allclose(got["conv7"], ys[0], rtol=1e-5, atol=1e-6)
    # The samples are the two transforms listed (no identity among them).
    np.testing.assert_allclose(got["conv7.mean"], ys[1:].mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["conv7.variance"], ys[1:].var(0), rtol=1e-3, atol=1e-7)


def _pngs(folder, n=2, size=(64, 48)):
    folder.mkdir()
    rng = np.random.default_rng(3)
    for k in range(n):
        base = rng.random((size[1] // 4, size[0] // 4, 3))
        img = np.kron(base, np.ones((4, 4, 1)))  # smooth enough to upscale
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"im{k}.png")
    return str(folder)


@pytest.mark.parametrize("pad,cropped", [("auto", False), ("3", True)])
def test_upconv7_evaluate_sr_with_pad(cli, upconv7, tmp_path, pad, cropped):
    pngs = _pngs(tmp_path / "hr", n=3)  # the mean correlation needs 3 images
    out = tmp_path / "ev"
    r = cli("evaluate", upconv7["scale2.0x_model"], pngs, "--sr-scale", 2, "--method",
            "dropout", "--at", "0.5", "--rate", 0.1, "-n", 4, "--seed", 0, "--pad", pad,
            "--out", out)
    assert r.exit_code == 0, r.output
    assert ("target's border was cropped (centered)" in r.stderr) == cropped, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["metadata"]["pad"] == (7 if pad == "auto" else 3)
    values = [v for kind in ("l1", "l2") for v in m["table"][kind].values()]
    assert len(values) == 16 and all(np.isfinite(v) for v in values), m["table"]


def test_sweep_and_at_auto_take_pad(cli, tmp_path):
    path = valid_net(tmp_path / "v.onnx")
    pngs = _pngs(tmp_path / "hr")
    out = tmp_path / "sw"
    r = cli("sweep", path, pngs, "--sr-scale", 2, "--methods", "noise", "--at", "r1",
            "--sigmas", "0.1", "-n", 2, "--pad", "auto", "--out", out)
    assert r.exit_code == 0, r.output
    assert "--pad auto chose 2" in r.stderr
    assert json.loads((out / "sweep.json").read_text())["config"]["pad"] == 2
    x = np.random.default_rng(0).random((3, 12, 16), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    r = cli("run", path, tmp_path / "x.npy", "--method", "noise", "--at", "auto", "-n", 2,
            "--pad", "2", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "run" / "x.npz") as z:
        assert z["output"].shape == (1, 3, 24, 32)


def test_pad_with_an_ensemble_is_refused(tmp_path):
    from tfue_onnx.perturb import Ensemble

    a = valid_net(tmp_path / "a.onnx", seed=0)
    b = valid_net(tmp_path / "b.onnx", seed=1)
    with pytest.raises(TfueError, match=r"pad is not supported with Ensemble\(...\)"):
        Estimator(a, Ensemble((b,)), pad=2)
