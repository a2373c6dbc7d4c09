import hashlib
import json
import os
import re

import numpy as np
import onnxruntime as ort
import pytest

import toys


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def setup(tmp_path, toy, x8):
    model = toy()
    npy = tmp_path / "img.npy"
    np.save(npy, x8[0])  # without the batch axis: the reader adds it
    out = tmp_path / "out"
    return model, str(npy), out


def _one_error_line(r):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and "Hint: " in lines[0]
    return lines[0]


def test_run_writes_results(cli, setup, x8):
    model, npy, out = setup
    r = cli("run", model, npy, "--method", "noise", "--at", "r1", "--sigma", 0.2, "--seed", 3,
            "--out", out)
    assert r.exit_code == 0, r.output
    assert "noise at r1, level 0.2, N = 8, seed 3, strategy looped-suffix" in r.stdout
    assert sorted(os.listdir(out)) == ["img.npz", "img.variance.png", "summary.json"]
    import zipfile
    with zipfile.ZipFile(out / "img.npz") as zf:  # stored, not deflated, by default
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    with np.load(out / "img.npz") as z:
        # Each array once: the primary output's under plain keys.
        assert sorted(z.files) == ["mean", "metadata", "output", "variance"]
        meta = json.loads(str(z["metadata"]))
        assert meta["primary"] == "y"
        assert (meta["method"], meta["at"], meta["level"], meta["samples"], meta["seed"]) == \
            ("noise", "r1", 0.2, 8, 3)
        assert meta["provider"] in ("cpu", "cuda")
        assert z["variance"].shape == (1, 2, 8, 8)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 3 and summary["inputs"][0]["input"] == npy
    from PIL import Image
    assert summary["inputs"][0]["heatmap_shape"] == [8, 8]  # the map drawn, H x W
    with Image.open(out / "img.variance.png") as im:  # output | map with colour bar, titled
        assert im.size[0] > 2 * im.size[1] > 400


def test_run_json_and_folder_input(cli, setup, tmp_path, x8):
    model, npy, out = setup
    folder = tmp_path / "inputs"
    folder.mkdir()
    for k in range(3):
        np.save(folder / f"a{k}.npy", x8 * (k + 1))
    r = cli("run", model, folder, "--method", "dropout", "--at", "c1", "--rate", 0.1, "-n", 4,
            "--out", out, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert [os.path.basename(i["input"]) for i in s["inputs"]] == ["a0.npy", "a1.npy", "a2.npy"]
    assert s["method"] == "dropout" and s["location"] == "c1" and s["level"] == 0.1
    assert all(i["mean_variance"] > 0 for i in s["inputs"])


def test_existing_results_need_force(cli, setup):
    model, npy, out = setup
    args = ["run", model, npy, "--method", "noise", "--at", "r1", "--out", out]
    assert cli(*args).exit_code == 0
    before = _digest(out / "img.npz")
    line = _one_error_line(cli(*args))
    assert "img.npz' already exists" in line or "summary.json' already exists" in line
    assert "--force" in line
    assert _digest(out / "img.npz") == before
    assert cli(*args, "--force", "--seed", 5).exit_code == 0
    assert _digest(out / "img.npz") != before


def test_verbose_says_which_strategy(cli, toy, tmp_path, x8):
    np.save(tmp_path / "x.npy", x8)
    r = cli("run", toy(batch=1), tmp_path / "x.npy", "--method", "noise", "--at", "r1",
            "--out", tmp_path / "o", "--verbose")
    assert r.exit_code == 0, r.output
    assert "strategy batched: not available (input 'x' has a fixed batch size 1" in r.stderr
    assert "strategy loop: verified" in r.stderr


def test_mc_dropout_cli(cli, toy, tmp_path, x8):
    np.save(tmp_path / "x.npy", x8)
    model = toy(opset=10, dropout_ratio=0.4)
    r = cli("run", model, tmp_path / "x.npy", "--method", "mc-dropout", "--out", tmp_path / "o",
            "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["method"] == "mc-dropout" and s["location"] == "all Dropout nodes"
    assert s["inputs"][0]["mean_variance"] > 0
    r = cli("run", model, tmp_path / "x.npy", "--method", "mc-dropout", "--at", "drop1",
            "--rate", 0.1, "--out", tmp_path / "o2", "--json")
    assert json.loads(r.stdout)["location"] == "drop1"
    line = _one_error_line(cli("run", toy("plain"), tmp_path / "x.npy", "--method",
                               "mc-dropout", "--out", tmp_path / "o3"))
    assert "no Dropout node" in line and "--method dropout" in line


# --- bad input: one clear line, exit 2, nothing of the user's touched ------------------------
def _bad(cli, tmp_path, model, *args):
    """Run with a sentinel in the output folder; check nothing was touched."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "keep.npz").write_bytes(b"precious")
    before = _digest(model)
    r = cli("run", model, *args, "--out", out)
    line = _one_error_line(r)
    assert _digest(model) == before
    assert sorted(os.listdir(out)) == ["keep.npz"]
    assert (out / "keep.npz").read_bytes() == b"precious"
    return line


def test_bad_not_an_onnx_file(cli, tmp_path, setup):
    _, npy, _ = setup
    fake = tmp_path / "model.onnx"
    fake.write_text("hello, I am a text file\n")
    line = _bad(cli, tmp_path, fake, npy, "--method", "noise")
    assert f"'{fake}' is not an ONNX model" in line


def test_bad_unknown_tensor(cli, tmp_path, setup):
    model, npy, _ = setup
    line = _bad(cli, tmp_path, model, npy, "--method", "noise", "--at", "relu")
    assert "unknown tensor 'relu'" in line and "closest names: 'r1'" in line


def test_bad_input_shape(cli, tmp_path, toy, x8):
    np.save(tmp_path / "x.npy", x8[0, :1])
    line = _bad(cli, tmp_path, toy(), tmp_path / "x.npy", "--method", "noise", "--at", "r1")
    assert "has shape (1, 1, 8, 8), the model expects [?, 3, ?, ?] (axis 1 must be 3)" in line


def test_bad_input_dtype(cli, tmp_path, toy):
    np.save(tmp_path / "x.npy", np.ones((1, 3, 8, 8), np.int32))
    line = _bad(cli, tmp_path, toy(), tmp_path / "x.npy", "--method", "noise", "--at", "r1")
    assert "dtype int32, the model expects float32" in line


def test_bad_nan(cli, tmp_path, toy, x8):
    x = x8.copy()
    x[0, 1, 2, 3] = np.nan
    np.save(tmp_path / "x.npy", x)
    line = _bad(cli, tmp_path, toy(), tmp_path / "x.npy", "--method", "noise", "--at", "r1")
    assert "contains 1 NaN or infinite values" in line


@pytest.mark.parametrize("args,message", [
    (("--method", "noise", "--sigma", "-0.5"), "sigma must be >= 0, got -0.5"),
    (("--method", "dropout", "--rate", "1"), "rate must be in [0, 1), got 1"),
    (("--method", "dropout", "--rate", "-0.1"), "rate must be in [0, 1), got -0.1"),
    (("--method", "noise", "--samples", "1"), "samples must be an integer >= 2, got 1"),
    (("--method", "noise", "--at", "1.5"), "location depth 1.5 is outside [0, 1]"),
])
def test_bad_levels(cli, tmp_path, setup, args, message):
    model, npy, _ = setup
    assert message in _bad(cli, tmp_path, model, npy, *args)


def test_bad_output_folder(cli, tmp_path, setup):
    model, npy, _ = setup
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    before = _digest(model)
    r = cli("run", model, npy, "--method", "noise", "--out", blocker / "sub")
    line = _one_error_line(r)
    assert f"cannot be created: '{blocker}' is a file" in line and "--out" in line
    r = cli("run", model, npy, "--method", "noise", "--out", blocker)
    assert "is a file, not a folder" in _one_error_line(r)
    assert blocker.read_text() == "x" and _digest(model) == before
    if os.geteuid() != 0:  # root writes anywhere, so a read-only folder only binds others
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        r = cli("run", model, npy, "--method", "noise", "--out", ro)
        assert "is not writable" in _one_error_line(r)


def test_bad_missing_input_and_wrong_file(cli, tmp_path, setup):
    model, _, _ = setup
    line = _bad(cli, tmp_path, model, tmp_path / "nope.npy", "--method", "noise")
    assert "does not exist" in line
    (tmp_path / "notes.txt").write_text("x")
    line = _bad(cli, tmp_path, model, tmp_path / "notes.txt", "--method", "noise")
    assert "is not an image or a .npy/.npz array" in line


def test_bad_image_for_the_model(cli, tmp_path, ppocr_det):
    from PIL import Image
    Image.new("RGB", (50, 40), "white").save(tmp_path / "odd.png")
    line = _bad(cli, tmp_path, ppocr_det, tmp_path / "odd.png", "--method", "noise")
    assert "the model failed on input x(1, 3, 40, 50)" in line and "--resize" in line


# --- export ------------------------------------------------------------------------------
def test_export_runs_in_plain_onnxruntime_and_agrees_with_run(cli, tmp_path, setup, x8):
    model, npy, out = setup
    exported = tmp_path / "unc.onnx"
    r = cli("export", model, "-o", exported, "--method", "dropout", "--at", "c1", "--rate", 0.2,
            "--samples", 256, "--seed", 4)
    assert r.exit_code == 0, r.output
    assert "strategy shared-prefix" in r.stdout and "y, y.mean, y.variance" in r.stdout
    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"]
    assert [o.name for o in sess.get_outputs()] == ["y", "y.mean", "y.variance"]
    y, mean, var = sess.run(None, {"x": x8})  # only the model's own input is needed
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["tfue.samples"] == "256" and meta["tfue.method"] == "dropout"

    r = cli("run", model, npy, "--method", "dropout", "--at", "c1", "--rate", 0.2,
            "--samples", 256, "--chunk", 64, "--seed", 9, "--out", out)
    assert r.exit_code == 0, r.output
    with np.load(out / "img.npz") as z:
        np.testing.assert_allclose(z["output"], y, rtol=1e-6)
        # Independent draws of 256 samples: statistics agree to sampling error.
        assert abs(z["variance"].mean() / var.mean() - 1) < 0.1
        assert np.corrcoef(z["variance"].ravel(), var.ravel())[0, 1] > 0.9
        # Sample means differ by their standard error sqrt(2 var / N) or so.
        z_scores = (z["mean"] - mean) / np.sqrt(2 * (var + z["variance"]) / 2 / 256 + 1e-12)
        assert float(np.abs(z_scores).mean()) < 1.5


def test_export_fixed_batch_model_uses_a_loop(cli, tmp_path, toy, x8):
    exported = tmp_path / "unc.onnx"
    r = cli("export", toy(batch=1), "-o", exported, "--method", "noise", "--at", "r1",
            "--sigma", 0.3, "-n", 16)
    assert r.exit_code == 0 and "strategy loop" in r.stdout
    y, mean, var = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"]).run(
        None, {"x": x8})
    assert var.shape == y.shape and float(var.mean()) > 0


def test_export_never_overwrites(cli, tmp_path, setup):
    model, _, _ = setup
    before = _digest(model)
    line = _one_error_line(cli("export", model, "-o", model, "--method", "noise", "--force"))
    assert "refusing to overwrite the input model" in line
    target = tmp_path / "taken.onnx"
    target.write_bytes(b"mine")
    line = _one_error_line(cli("export", model, "-o", target, "--method", "noise"))
    assert "already exists" in line and "--force" in line
    assert target.read_bytes() == b"mine" and _digest(model) == before


def test_max_memory_sets_the_chunks(cli, setup):
    model, npy, out = setup
    # One sample of the toy at 8x8 peaks at 8 live channels (relu1's input and output)
    # x 64 px x 4 bytes = 2048 bytes: 8K fits chunks of 4, and no trial goes beyond.
    r = cli("run", model, npy, "--method", "noise", "--at", "r1", "-n", 10,
            "--max-memory", "8K", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["autotune"]["chunk_cap"] == 4 and sum(s["chunks"]) == 10
    assert max(s["chunks"]) <= 4 and s["chunks"][:4] == [1, 1, 2, 2]
    assert max(t["chunk"] for t in s["autotune"]["trials"]) <= 4
    r = cli("run", model, npy, "--method", "noise", "--at", "r1", "-n", 10, "--strategy",
            "shared-prefix", "--max-memory", "8K", "--out", out, "--json", "--force")
    assert json.loads(r.stdout)["chunks"] == [4, 4, 2]
    line = _one_error_line(cli("run", model, npy, "--method", "noise", "--max-memory", "lots",
                               "--out", out))
    assert "--max-memory must be a size like 512M or 2G (at least 1 byte), got 'lots'" in line


def test_ensemble_folder_of_models_vs_folder_of_inputs(cli, toy, tmp_path, x8):
    from tfue_onnx.api import is_model as _is_model
    members, mixed = tmp_path / "members", tmp_path / "mixed"
    members.mkdir()
    mixed.mkdir()
    os.replace(toy("a"), members / "a.onnx")
    os.replace(toy("b"), mixed / "b.onnx")
    np.save(mixed / "x.npy", x8)
    assert _is_model(members) and not _is_model(mixed)
    r = cli("run", toy("c"), members, mixed, "--method", "ensemble", "--out", tmp_path / "o",
            "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["samples"] == 2 and [os.path.basename(i["input"]) for i in s["inputs"]] == ["x.npy"]


def _fixed_size_inside(path):
    """x [N, 3, H, W] in the signature, but a Reshape bakes 3 x 8 x 8 in: the synthetic
    64 x 64 example input fails (as text models that bake a sequence length do)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["y"])]
    inits = [numpy_helper.from_array(np.array([0, 192], np.int64), "shape"),
             numpy_helper.from_array(rng.standard_normal((192, 4)).astype(np.float32), "w")]
    g = helper.make_graph(nodes, "fixed_inside",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return str(path)


def test_export_on_the_synthetic_input_asks_for_an_example(cli, tmp_path, x8):
    model = _fixed_size_inside(tmp_path / "m.onnx")
    out = tmp_path / "u.onnx"
    r = cli("export", model, "-o", out, "--method", "noise", "--at", "r", "--seed", "0")
    line = _one_error_line(r)
    assert "the model failed on input x(1, 3, 64, 64)" in line and "synthetic example" in line
    assert line.endswith("Hint: verify on a real input of the size the model takes: give "
                         "--example")
    assert not out.exists()
    np.save(tmp_path / "x.npy", x8)
    r = cli("export", model, "-o", out, "--method", "noise", "--at", "r", "--seed", "0",
            "--example", tmp_path / "x.npy")
    assert r.exit_code == 0, r.output
    y, var = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        ["y", "y.variance"], {"x": x8})
    assert y.shape == (1, 4) and float(var.mean()) > 0


def test_export_of_an_old_opset_model_records_the_conversion(tmp_path, x8):
    import onnx
    import toys
    from tfue_onnx import Estimator, Noise

    path = toys.conv_net(tmp_path / "old.onnx", opset=9) or str(tmp_path / "old.onnx")
    out = Estimator(path, Noise(0.1, at="r1"), samples=4, seed=0).export(tmp_path / "u.onnx")
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert props["tfue.converted_opset"] == "9->13" and props["tfue.strategy"] == "shared-prefix"


def test_image_options_with_arrays_are_refused(cli, tmp_path, setup):
    model, npy, out = setup
    for flags, named in ((["--mean", "0.5"], "--mean"), (["--std", "1,2"], "--std"),
                         (["--resize", "4x4"], "--resize"), (["--scale", "1"], "--scale"),
                         (["--channel-order", "bgr"], "--channel-order bgr")):
        r = cli("run", model, npy, "--method", "noise", "--out", out, *flags)
        line = _one_error_line(r)
        assert f"{named} applies to image files, but '{npy}' is an array" in line
        assert not out.exists()


def test_export_names_where_the_weights_went(cli, tmp_path, x8):
    """A model whose weights are inline (one large one, read in place) exports inline: the
    message names no .data file; every output of the file is listed."""
    from onnx import TensorProto, helper, numpy_helper
    import onnx

    table = np.random.default_rng(0).standard_normal((200, 100)).astype(np.float32)  # 80 KB
    nodes = [helper.make_node("ReduceMean", ["table"], ["m"], keepdims=0),
             helper.make_node("Add", ["x", "m"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Softmax", ["r"], ["p"], axis=1)]
    g = helper.make_graph(nodes, "inline",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [numpy_helper.from_array(table, "table")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "m.onnx"))
    out = tmp_path / "u.onnx"
    r = cli("export", tmp_path / "m.onnx", "-o", out, "--method", "noise", "--at", "a")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"wrote {out}: noise at a") and ".data" not in r.stdout
    assert r.stdout.strip().endswith("outputs p, p.mean, p.variance, p.mean_entropy")
    assert not os.path.exists(str(out) + ".data")
    names = [o.name for o in onnx.load(str(out)).graph.output]
    assert names == ["p", "p.mean", "p.variance", "p.mean_entropy"]


def test_every_command_taking_at_auto_picks_without_a_sweep(cli, tmp_path, setup, x8):
    """run, export and evaluate take --at auto without a sweep: the location is picked by
    tolerability on the command's own inputs and said on stderr (issue 10: evaluate
    crashed with TypeError)."""
    model, npy, out = setup
    targets = tmp_path / "targets"
    targets.mkdir()
    np.save(targets / "img.npy", np.random.default_rng(1).random((1, 2, 8, 8), np.float32))
    runs = {"run": ("run", model, npy, "--out", out),
            "export": ("export", model, "-o", tmp_path / "u.onnx"),
            "evaluate": ("evaluate", model, npy, "--targets", targets, "--out",
                         tmp_path / "ev")}
    for name, args in runs.items():
        r = cli(*args, "--method", "noise", "--at", "auto", "--seed", "0")
        assert r.exit_code == 0, (name, r.output)
        assert "tfue: --at auto picked " in r.stderr, name
    assert (tmp_path / "ev" / "metrics.json").exists() and (tmp_path / "u.onnx").exists()


def test_run_compress_and_other_outputs_under_their_names(cli, tmp_path, x8):
    import zipfile

    import onnx
    import toys

    base = toys.conv_net(tmp_path / "c.onnx")
    base = onnx.load(base) if isinstance(base, str) else base
    path = tmp_path / "two.onnx"
    onnx.save(toys.with_output(base, "r1"), str(path))  # outputs y and r1
    np.save(tmp_path / "x.npy", x8)
    r = cli("run", path, tmp_path / "x.npy", "--method", "noise", "--at", "c1", "--sigma", 0.2,
            "--seed", 0, "--compress", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    with zipfile.ZipFile(tmp_path / "o" / "x.npz") as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
    with np.load(tmp_path / "o" / "x.npz") as z:
        meta = json.loads(str(z["metadata"]))
        assert meta["primary"] == "y"
        plain = sorted(f for f in z.files if "." not in f)
        assert plain == ["mean", "metadata", "output", "variance"]
        assert "r1.output" in z.files and not any(f.startswith("y.") for f in z.files)


def test_inspect_and_export_print_what_the_user_gave(cli, toy, tmp_path):
    """Issue 12: a float32 ratio printed as the user wrote it, no seed for methods that
    draw nothing."""
    r = cli("inspect", toy(opset=13, dropout_ratio=0.1))
    assert r.exit_code == 0 and "ratio 0.1  input r1" in r.stdout
    assert "0.10000000149" not in r.stdout
    r = cli("export", toy(), "-o", tmp_path / "t.onnx", "--method", "transform")
    assert r.exit_code == 0, r.output
    assert "transform (8: identity, " in r.stdout and "seed" not in r.stdout
    r = cli("export", toy(), "-o", tmp_path / "n.onnx", "--method", "noise", "--at", "r1",
            "--seed", 4)
    assert r.exit_code == 0 and ", seed 4, strategy " in r.stdout


def test_two_onnxruntime_builds_are_named_with_the_fix(cli, toy, monkeypatch):
    """Issue 12: plain onnxruntime beside onnxruntime-gpu overwrite each other's files."""
    from importlib import metadata

    from tfue_onnx.session import conflicting_onnxruntimes

    installed = {"onnxruntime": "1.20.0", "onnxruntime-gpu": "1.31.1"}

    def version(name):
        if name in installed:
            return installed[name]
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "version", version)
    assert conflicting_onnxruntimes() == ["onnxruntime 1.20.0", "onnxruntime-gpu 1.31.1"]
    r = cli("inspect", toy())
    assert r.exit_code == 0
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert "onnxruntime 1.20.0 and onnxruntime-gpu 1.31.1 are installed together" in line
    assert line.endswith("pip uninstall -y onnxruntime onnxruntime-gpu && "
                         "pip install onnxruntime-gpu")
    del installed["onnxruntime"]
    assert conflicting_onnxruntimes() == []
    assert "warning:" not in cli("inspect", toy()).stderr


def test_eta_text():
    from tfue_onnx.cli import _eta

    assert _eta(10.0, 2, 3) == " (ETA 15s)"
    assert _eta(60.0, 1, 2) == " (ETA 2m00s)"
    assert _eta(3600.0, 1, 2) == " (ETA 2h00m)"
    assert _eta(5.0, 1, 0) == "" and _eta(0.0, 0, 4) == ""


def test_quiet_leaves_stderr_to_warnings_and_errors(cli, setup, toy, tmp_path):
    """Issue 12: --quiet: no progress or information lines."""
    model, npy, out = setup
    r = cli("run", model, npy, "--method", "noise", "--at", "auto", "-n", 4, "--out", out,
            "--quiet")
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    assert "summary:" in r.stdout
    r = cli("run", model, npy, "--method", "noise", "--at", "auto", "-n", 4, "--out",
            tmp_path / "loud")
    assert "--at auto picked" in r.stderr and "sampling [1/1]" in r.stderr
    line = _one_error_line(cli("run", model, npy, "--method", "noise", "--sigma", -1, "-q",
                               "--out", tmp_path / "bad"))
    assert "sigma" in line


def test_long_inputs_show_their_samples(cli, setup, monkeypatch):
    """Issue 12: progress within one input's N samples, when there is no terminal."""
    import tfue_onnx.cli as cli_module

    monkeypatch.setattr(cli_module, "SAMPLES_EVERY", 0.0)  # every run of samples
    model, npy, out = setup
    r = cli("run", model, npy, "--method", "noise", "--at", "r1", "-n", 6, "--chunk", 2,
            "--out", out)
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if "samples" in ln]
    # After each run of 2 but the last (6/6 is the input's own line's business).
    assert [ln.split(" (ETA ")[0] for ln in lines] == [
        f"tfue: sampling img.npy: {k}/6 samples" for k in (2, 4)]
    assert all(re.search(r" \(ETA \d+s\)$", ln) for ln in lines), lines
    from tfue_onnx import Estimator, Noise

    seen = []
    Estimator(model, Noise(0.2, at="r1"), samples=5, chunk=2)(
        np.load(npy)[None], progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_a_result_reads_back_as_it_was_run(cli, setup, tmp_path):
    """Issue 12: NAME.npz read back (metadata is JSON inside the file) by a public helper."""
    from onnx import TensorProto, helper

    from tfue_onnx import Estimator, Noise, TfueError, read_result

    model, npy, out = setup
    r = cli("run", model, npy, "--method", "noise", "--at", "r1", "-n", 6, "--seed", 3,
            "--out", out)
    assert r.exit_code == 0, r.output
    back = read_result(out / "img.npz")
    run = Estimator(model, Noise(0.1, at="r1"), samples=6, seed=3)(np.load(npy)[None])
    for key in ("output", "mean", "variance"):
        np.testing.assert_array_equal(getattr(back, key), getattr(run, key))
    assert back.metadata["seed"] == 3 and back.metadata["input"].endswith("img.npy")
    assert back.image_axes == (2, 3)
    # Two outputs, one with dots in its name: each comes back under its own name.
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y.a"]),
         helper.make_node("Tanh", ["r"], ["z"])], "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 4, 4])],
        [helper.make_tensor_value_info("y.a", TensorProto.FLOAT, ["b", 3, 4, 4]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", 3, 4, 4])])
    import onnx

    path = tmp_path / "two.onnx"
    two = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    two.ir_version = 8
    onnx.save(two, path)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((1, 3, 4, 4), dtype=np.float32))
    r = cli("run", path, tmp_path / "x.npy", "--method", "noise", "--at", "r", "-n", 4,
            "--out", tmp_path / "two")
    assert r.exit_code == 0, r.output
    back = read_result(tmp_path / "two" / "x.npz")
    assert list(back.outputs) == ["y.a", "z"] and back.primary == "y.a"
    assert back.outputs["z"].variance.shape == (1, 3, 4, 4)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(TfueError, match="is not a result tfue wrote"):
        read_result(tmp_path / "bad.npz")


def test_a_result_without_its_primary_output_is_refused(tmp_path):
    import json as json_module

    from tfue_onnx import TfueError, read_result

    np.savez(tmp_path / "r.npz", **{"z.output": np.zeros(3)},
             metadata=np.array(json_module.dumps({"primary": "y"})))
    with pytest.raises(TfueError, match="an output is missing"):
        read_result(tmp_path / "r.npz")


def test_option_groups_are_declared_once_and_shared():
    """run, export, evaluate and sweep take one declaration of each shared option: the
    same choices, defaults and help (sweep's --seed default included)."""
    from tfue_onnx import cli as cli_module
    from tfue_onnx.names import LAYOUTS, STRATEGIES
    from tfue_onnx.session import PROVIDERS

    commands = {n: cli_module.main.commands[n] for n in ("run", "export", "evaluate", "sweep")}

    def option(cmd, name):
        return next(p for p in cmd.params if p.name == name)

    for name in ("layout", "pad", "provider", "strategy", "chunk", "max_memory", "threads",
                 "no_cache", "io_binding", "seed", "sigma_mode", "force"):
        seen = {(repr(getattr(option(c, name), "type", None)), option(c, name).default,
                 option(c, name).help) for c in commands.values()}
        assert len(seen) == 1, (name, seen)
    assert option(commands["sweep"], "seed").default is None
    for name in ("channel_order", "scale", "norm_mean", "norm_std", "resize"):
        assert len({option(commands[c], name).help for c in ("run", "evaluate", "sweep")}) == 1
    assert tuple(option(commands["run"], "layout").type.choices) == LAYOUTS
    assert tuple(option(commands["run"], "provider").type.choices) == PROVIDERS
    assert tuple(option(commands["run"], "strategy").type.choices) == ("auto",) + STRATEGIES


def test_io_binding_and_max_memory_reach_the_estimator(cli, setup, monkeypatch):
    from tfue_onnx import runner

    made = []
    real = runner.Estimator.__init__

    def spy(self, *args, **kwargs):
        made.append(kwargs)
        real(self, *args, **kwargs)
    monkeypatch.setattr(runner.Estimator, "__init__", spy)
    model, npy, out = setup
    for flag, expected in (("--io-binding", True), ("--no-io-binding", False), (None, None)):
        args = ["run", model, npy, "--method", "noise", "--at", "r1", "-n", 4, "--max-memory",
                "1M", "--out", out, "--force"] + ([flag] if flag else [])
        r = cli(*args)
        assert r.exit_code == 0, r.output
        assert made[-1]["io_binding"] is expected and made[-1]["max_memory"] == 1024**2


@pytest.mark.parametrize("args, message", [
    (["--transforms", "hflip"], "--transforms does not apply to --method noise"),
    (["--at", "auto", "--tolerance", "0"], "tolerance must be > 0, got 0.0"),
    (["--chunk", "0"], "chunk must be an integer >= 1, got 0"),
    (["--threads", "-2"], "threads must be an integer >= 1, got -2"),
    (["--at", "r1", "--sweep-result", "x"], "--sweep-result is used with --at auto"),
    (["--max-memory", "2Q"], "--max-memory must be a size like 512M or 2G"),
])
def test_option_values_are_checked_before_any_work(cli, setup, monkeypatch, args, message):
    from tfue_onnx import runner

    def never(*a, **k):
        raise AssertionError("an Estimator was built before the options were checked")
    monkeypatch.setattr(runner.Estimator, "__init__", never)
    model, npy, out = setup
    line = _one_error_line(cli("run", model, npy, "--method", "noise", *args, "--out", out))
    assert message in line and not os.path.exists(out)


def test_evaluate_checks_the_target_scale_up_front(cli, setup, tmp_path):
    model, npy, out = setup
    line = _one_error_line(cli("evaluate", model, npy, "--method", "noise", "--targets",
                               tmp_path, "--target-scale", "0", "--out", out))
    assert "--target-scale must be a finite, non-zero number, got 0.0" in line


def test_sweep_without_a_seed_draws_one_and_resumes_with_it(cli, setup, tmp_path, x8):
    model, _, _ = setup
    target = np.random.default_rng(1).random((1, 2, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "p.npz", x=x8, target=target)
    out = tmp_path / "sw"
    args = ["sweep", model, tmp_path / "p.npz", "--at", "r1", "--sigmas", "0.1", "--methods",
            "noise", "-n", 4, "--bootstrap", 0, "--out", out]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    seed = json.loads((out / "sweep.json").read_text())["config"]["seed"]
    assert isinstance(seed, int)
    r = cli(*args, "--sigmas", "0.1,0.2")  # the same sweep, one level more: resumed
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["config"]["seed"] == seed and len(summary["points"]) == 2
    assert r.stderr.count("[2/2]") == 1 and "[1/2]" not in r.stderr  # the first was kept


def test_run_levels_runs_every_level_with_one_graph(cli, setup, monkeypatch):
    """--levels: each input at every level, into OUT/level-L/ (names do not collide); the
    results equal separate runs at each level, and the graph is built once."""
    from tfue_onnx import graph as graphs

    model, npy, out = setup
    built = []
    real = graphs.build

    def counting(*args, **kwargs):
        built.append(kwargs.get("strategy", args[2] if len(args) > 2 else None))
        return real(*args, **kwargs)
    monkeypatch.setattr(graphs, "build", counting)
    r = cli("run", model, npy, "--method", "noise", "--at", "r1", "-n", 4, "--seed", 0,
            "--strategy", "batched", "--levels", "0.05,0.2", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    assert built == ["batched"]  # one graph for both levels
    runs = json.loads(r.stdout)["levels"]
    assert [s["level"] for s in runs] == [0.05, 0.2]
    assert sorted(os.listdir(out)) == ["level-0.05", "level-0.2"]
    for level in ("0.05", "0.2"):
        single = out.parent / f"single-{level}"
        r = cli("run", model, npy, "--method", "noise", "--at", "r1", "-n", 4, "--seed", 0,
                "--strategy", "batched", "--sigma", level, "--out", single)
        assert r.exit_code == 0, r.output
        np.testing.assert_array_equal(np.load(out / f"level-{level}" / "img.npz")["variance"],
                                      np.load(single / "img.npz")["variance"])
    low, high = (float(np.load(out / f"level-{v}" / "img.npz")["variance"].mean())
                 for v in ("0.05", "0.2"))
    assert 0 < low < high
    for args, message in ((["--levels", "0.1,-1"], "a noise level (sigma) must be >= 0, got -1"),
                          (["--levels", "0.1", "--sigma", "0.1"], "give --levels or one"),
                          (["--levels", "0.1,0.1"], "--levels 0.1,0.1 repeats a level")):
        line = _one_error_line(cli("run", model, npy, "--method", "noise", *args, "--out",
                                   out.parent / "refused"))
        assert message in line
    line = _one_error_line(cli("run", model, npy, "--method", "transform", "--levels", "0.1",
                               "--out", out.parent / "refused"))
    assert "--levels applies to noise, dropout and mc-dropout, not transform" in line


def test_the_run_line_gives_a_seed_only_to_methods_that_draw(cli, toy, tmp_path, x8):
    np.save(tmp_path / "x.npy", x8)
    r = cli("run", toy(), tmp_path / "x.npy", "--method", "transform", "--transforms", "flips",
            "--no-pictures", "-o", tmp_path / "t")
    assert r.exit_code == 0, r.output
    first = r.stdout.splitlines()[0]
    assert first.startswith("transform (4: identity, hflip, vflip, rot180), strategy")
    assert "seed" not in first
    r = cli("run", toy(), tmp_path / "x.npy", "--method", "noise", "--seed", "5", "-n", "2",
            "--no-pictures", "-o", tmp_path / "n")
    assert ", N = 2, seed 5, strategy" in r.stdout.splitlines()[0]


def test_sweep_refuses_levels_of_a_method_it_leaves_out(cli, toy, tmp_path):
    pairs = toys.npz_pairs(tmp_path / "pairs")
    for args, words in ((["--methods", "dropout", "--sigmas", "0.1"],
                         "--sigmas are levels of noise, which --methods dropout leaves out"),
                        (["--methods", "noise", "--rates", "0.1"],
                         "--rates are levels of dropout, which --methods noise leaves out")):
        r = cli("sweep", toy(), pairs, *args, "-o", tmp_path / "sw")
        assert r.exit_code == 2 and words in r.output and not (tmp_path / "sw").exists()
