"""io.py: reading inputs as `tfue run` does (the public load_image). files.py and layout.py
are tested in test_files.py and test_layout.py."""

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tfue_onnx
from tfue_onnx import Noise, TfueError
from tfue_onnx.io import ImageOptions, load_input, npz_feeds, read_image
from tfue_onnx.model import TensorInfo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = os.path.join(ROOT, "models", "srresnet_x2.onnx")

def _inp(shape, dtype="float32"):
    return TensorInfo("x", dtype, tuple(shape) if shape is not None else None)


# --- io.py: reading inputs --------------------------------------------------------------
def test_npz_feeds_names_batch_and_mismatch():
    inputs = [_inp(("n", 3, 4, 4))]
    a = np.ones((3, 4, 4), np.float32)
    feeds = npz_feeds({"whatever": a}, inputs, "f.npz")  # one array, one input
    assert list(feeds) == ["x"] and feeds["x"].shape == (1, 3, 4, 4)
    two = [TensorInfo("a", "float32", (2,)), TensorInfo("b", "float32", (1, 2))]
    feeds = npz_feeds({"a": np.ones(2), "b": np.ones(2), "target": np.ones(3)}, two, "f.npz")
    assert feeds["a"].shape == (2,) and feeds["b"].shape == (1, 2) and "target" not in feeds
    with pytest.raises(TfueError, match=r"has arrays \['a', 'c'\], which do not match"):
        npz_feeds({"a": np.ones(2), "c": np.ones(2)}, two, "f.npz")


def test_load_input_npz_and_npy(tmp_path):
    inputs = [_inp(("n", 3, 4, 4))]
    a = np.arange(48, dtype=np.float32).reshape(3, 4, 4)
    np.savez(tmp_path / "x.npz", x=a)
    np.save(tmp_path / "x.npy", a)
    for name in ("x.npz", "x.npy"):
        feeds = load_input(str(tmp_path / name), inputs)
        np.testing.assert_array_equal(feeds["x"], a[None])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(TfueError, match="cannot read .* as an .npz archive"):
        load_input(str(tmp_path / "bad.npz"), inputs)


def test_evaluate_reads_npz_pairs_the_same_way(tmp_path):
    from tfue_onnx.evaluate import make_pairs
    from tfue_onnx.model import inspect_model

    info = inspect_model(SR)
    x = np.random.default_rng(0).random((3, 6, 5), np.float32)
    target = np.ones((3, 12, 10), np.float32)
    np.savez(tmp_path / "p.npz", input=x, target=target)
    np.savez(tmp_path / "q.npz", target=target)
    (pair,) = make_pairs(info, [str(tmp_path / "p.npz")])
    feeds, t = pair.load()
    np.testing.assert_array_equal(feeds["input"], x[None])
    assert t.shape == (1, 3, 12, 10)
    (bad,) = make_pairs(info, [str(tmp_path / "q.npz")])
    with pytest.raises(TfueError, match=r"has arrays \[\], which do not match"):
        bad.load()


def _image(path, size=(24, 20), seed=0):
    from PIL import Image

    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def test_load_image_takes_every_model_form_and_matches_the_worker(tmp_path):
    from tfue_onnx.model import inspect_model

    img = str(tmp_path / "a.png")
    rgb = _image(img)
    info = inspect_model(SR)
    got = tfue_onnx.load_image(img, SR, channel_order="bgr", mean=(0.5,), std=(0.25,))
    assert got.shape == (1, 3, 20, 24) and got.dtype == np.float32
    expected = ((rgb[..., ::-1].astype(np.float32) / 255 - 0.5) / 0.25).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    opts = ImageOptions(channel_order="bgr", mean=(0.5,), std=(0.25,))
    np.testing.assert_array_equal(got, read_image(img, info.inputs[0], opts))
    for form in (info, info.model, tfue_onnx.Estimator(SR, Noise(0.1, at=0.5), samples=2)):
        np.testing.assert_array_equal(
            tfue_onnx.load_image(img, form, channel_order="bgr", mean=(0.5,), std=(0.25,)), got)
    assert tfue_onnx.load_image(img, SR, resize=(8, 10)).shape == (1, 3, 8, 10)


def test_load_image_errors(tmp_path):
    img = str(tmp_path / "a.png")
    _image(img)
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(TfueError, match="is not an image file") as err:
        tfue_onnx.load_image(str(tmp_path / "a.npy"), SR)
    assert "numpy.load" in err.value.hint
    with pytest.raises(TfueError, match="^mean has 2 values") as err:
        tfue_onnx.load_image(img, SR, mean=(0.1, 0.2))
    assert "--mean" in err.value.cli_text()  # the CLI's face names the option
    with pytest.raises(TfueError, match="unknown channel order"):
        tfue_onnx.load_image(img, SR, channel_order="rbg")
    with pytest.raises(TfueError, match="model must be an Estimator"):
        tfue_onnx.load_image(img, 42)
    f = TensorProto.FLOAT
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info(n, f, [1, 3, 4, 4]) for n in "ab"],
                              [helper.make_tensor_value_info("y", f, [1, 3, 4, 4])])
    two = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(two)
    with pytest.raises(TfueError, match="has 2 inputs"):
        tfue_onnx.load_image(img, two)


def test_load_image_and_estimator_give_what_tfue_run_writes(tmp_path, cli):
    """The public pipeline (load_image + Estimator) reproduces the arrays of 'tfue run'
    on one image, with every image option set."""
    img = str(tmp_path / "pic.png")
    _image(img, size=(24, 20), seed=3)
    out = tmp_path / "out"
    r = cli("run", SR, img, "--method", "noise", "--at", "0.5", "--sigma", 0.05, "-n", 3,
            "--seed", 7, "--resize", "16x12", "--channel-order", "bgr", "--scale", 0.005,
            "--mean", "0.4,0.5,0.6", "--std", "0.2,0.3,0.25", "--out", out)
    assert r.exit_code == 0, r.output
    x = tfue_onnx.load_image(img, SR, resize=(16, 12), channel_order="bgr", scale=0.005,
                             mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    assert x.shape == (1, 3, 16, 12)
    est = tfue_onnx.Estimator(SR, Noise(0.05, at=0.5), samples=3, seed=7)
    res = est(x)
    with np.load(out / "pic.npz") as z:
        written = {k: z[k] for k in z.files}
    assert written["output"].shape == (1, 3, 32, 24)
    np.testing.assert_array_equal(res.output, written["output"])
    np.testing.assert_array_equal(res.mean, written["mean"])
    np.testing.assert_array_equal(res.variance, written["variance"])
    assert float(np.max(written["variance"])) > 0


def test_resize_takes_text_or_a_pair_in_every_face(tmp_path):
    from tfue_onnx.io import parse_size

    assert parse_size(None) is None and parse_size("640x480") == (640, 480)
    assert parse_size((64, 48)) == (64, 48) and parse_size("8X8") == (8, 8)
    for bad in ("64", "0x3", (0, 3), "axb", (6.5, 3), (1, 2, 3)):
        with pytest.raises(ValueError, match="resize must look like HxW"):
            parse_size(bad)
    img = str(tmp_path / "a.png")
    _image(img)
    assert tfue_onnx.load_image(img, SR, resize="16x12").shape == (1, 3, 16, 12)
    assert tfue_onnx.load_image(img, SR, resize=(16, 12)).shape == (1, 3, 16, 12)
