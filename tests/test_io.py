"""files.py (atomic writes, output folders, JSON, npz), layout.py (layout guessing, the
batch axis, evenly spaced picks) and io.py (reading inputs; the public load_image)."""

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tfue_onnx
from tfue_onnx import Noise, TfueError
from tfue_onnx.files import (atomic_write, atomic_write_bytes, check_new_file, check_out_dir,
                             cleanup_out_dir, plain_json, prepare_out_dir, save_json, save_npz)
from tfue_onnx.io import ImageOptions, load_input, npz_feeds, read_image
from tfue_onnx.layout import (array_layout, declared_layout, evenly_spaced, image_axes,
                              image_input, image_layout, with_batch)
from tfue_onnx.model import ModelInfo, TensorInfo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = os.path.join(ROOT, "models", "srresnet_x2.onnx")


# --- files.py ---------------------------------------------------------------------------
def test_atomic_write_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "r.bin"
    path.write_bytes(b"old")

    def half(f):
        f.write(b"new but unfinis")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        atomic_write(str(path), half)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["r.bin"]  # the temporary file is gone


def test_atomic_write_failure_on_a_new_path_leaves_nothing(tmp_path):
    def fail(f):
        f.write(b"x" * 1000)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(tmp_path / "new.bin"), fail)
    assert os.listdir(tmp_path) == []


def test_atomic_write_bytes_writes_an_ordinary_file(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_bytes(str(path), b"hello")
    assert path.read_bytes() == b"hello"
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_check_new_file(tmp_path):
    path = tmp_path / "x.npz"
    check_new_file(str(path), force=False)  # free: fine
    path.write_bytes(b"")
    with pytest.raises(TfueError, match="already exists") as err:
        check_new_file(str(path), force=False)
    assert "--force" in err.value.hint
    check_new_file(str(path), force=True)
    with pytest.raises(TfueError, match="is a folder"):
        check_new_file(str(tmp_path), force=True)
    with pytest.raises(TfueError, match="does not exist"):
        check_new_file(str(tmp_path / "no" / "x.npz"), force=False)


def test_out_dir_checks_prepares_and_cleans_up(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(TfueError, match="is a file"):
        check_out_dir(str(tmp_path / "f"))
    with pytest.raises(TfueError, match="cannot be created"):
        check_out_dir(str(tmp_path / "f" / "below"))
    deep = tmp_path / "a" / "b"
    assert check_out_dir(str(deep)) == str(deep) and not deep.exists()  # nothing made
    with pytest.raises(ValueError):
        with cleanup_out_dir(str(deep)):
            prepare_out_dir(str(deep))
            assert deep.is_dir() and os.listdir(deep) == []  # the probe file is gone
            raise ValueError("refused")
    assert not (tmp_path / "a").exists()  # both empty folders made were removed
    with cleanup_out_dir(str(deep)):
        prepare_out_dir(str(deep))
        (deep / "r.npz").write_bytes(b"")
    assert (deep / "r.npz").exists()


def test_plain_json_and_save_json(tmp_path):
    obj = {"a": float("nan"), "b": [np.float32(1.5), float("inf")], "c": np.arange(2)}
    assert plain_json(obj) == {"a": None, "b": [1.5, None], "c": [0, 1]}
    save_json(str(tmp_path / "s.json"), obj)
    text = (tmp_path / "s.json").read_text()
    assert "NaN" not in text and json.loads(text) == {"a": None, "b": [1.5, None], "c": [0, 1]}


@pytest.mark.parametrize("compress", [False, True])
def test_save_npz_round_trip(tmp_path, compress):
    path = str(tmp_path / "r.npz")
    save_npz(path, {"y": np.arange(6.0).reshape(2, 3)}, {"method": "noise", "n": 4}, compress)
    with np.load(path) as z:
        assert sorted(z.files) == ["metadata", "y"]
        np.testing.assert_array_equal(z["y"], np.arange(6.0).reshape(2, 3))
        assert json.loads(str(z["metadata"])) == {"method": "noise", "n": 4}


def test_files_imports_only_errors():
    import ast

    tree = ast.parse(open(os.path.join(ROOT, "tfue_onnx", "files.py")).read())
    local = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert local == {"errors"}


# --- layout.py --------------------------------------------------------------------------
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

    assert package("layout.py", 1) <= {"errors", "model", "names"}
    for name in ("__init__.py", "blackbox.py", "pad.py"):
        found = package("graph/" + name, 2)
        assert found and not found & {"io", "axes", "session", "runner"}, (name, found)


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
