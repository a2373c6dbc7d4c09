"""Bad input and degenerate results, from the CLI and the API (issue 9, class 10).

Every bad input ends in one line ("error: ... Hint: ..."), exit code 2, no
traceback, and nothing lost: no output folder left behind, existing files
byte-identical. Results with NaN/Inf are written, warned about and recorded
(exit code 3).
"""

import hashlib
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from PIL import Image

import toys
from tfue_onnx import Estimator, Noise
from tfue_onnx.errors import TfueError
from tfue_onnx.io import ImageOptions, read_image
from tfue_onnx.model import inspect_model
from tfue_onnx.perturb import MAX_SAMPLES, Ensemble


def _digests(folder):
    return {p: hashlib.sha256(open(os.path.join(folder, p), "rb").read()).hexdigest()
            for p in sorted(os.listdir(folder))}


def _refused(r):
    """The single error line of a refused command (exit 2, no traceback)."""
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and "Hint: " in lines[0]
    assert "Traceback" not in r.output
    return lines[0]


def exp_net(path):
    """x -> Identity (h) -> Exp -> y: noise of sigma 1e4 at h overflows to Inf."""
    nodes = [helper.make_node("Identity", ["x"], ["h"]), helper.make_node("Exp", ["h"], ["y"])]
    graph = helper.make_graph(
        nodes, "exp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3, "h", "w"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return str(path)


def two_input_net(path):
    """a, b [B,3,H,W] -> y = a + b."""
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 3, "h", "w"])
           for n in ("a", "b")]
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two", ins,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             ["b", 3, "h", "w"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture
def env(tmp_path, toy, x8):
    model = toy()
    np.save(tmp_path / "x.npy", x8)
    Image.fromarray((x8[0].transpose(1, 2, 0) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_models").mkdir()
    (tmp_path / "no_models" / "readme.txt").write_text("no model here")
    return tmp_path, model


def _cases(d, model):
    """(arguments, expected part of the error line) for each bad input."""
    x, png = d / "x.npy", d / "x.png"
    noise = ["--method", "noise", "--at", "r1"]
    return [
        (["run", d / "empty", x, *noise], "folder '{d}/empty' holds no .onnx model"),
        (["run", d / "no_models", x, *noise], "folder '{d}/no_models' holds no .onnx model"),
        (["run", d / "empty", x, "--method", "ensemble"],
         "folder '{d}/empty' holds no .onnx model"),
        (["run", model, x, *noise, "--max-memory", "inf"],
         "--max-memory must be a size like 512M or 2G (at least 1 byte), got 'inf'"),
        (["run", model, x, *noise, "--max-memory", "nan"], "got 'nan'"),
        (["run", model, x, *noise, "--max-memory", "0"], "got '0'"),
        (["run", model, x, *noise, "--max-memory", "-1G"], "got '-1G'"),
        (["run", model, x, *noise, "--max-memory", "2X"], "got '2X'"),
        (["run", model, png, *noise, "--mean", "0.5,0.5"],
         "--mean has 2 values, but input 'x' takes images with 3 channel(s)"),
        (["run", model, png, *noise, "--std", "0.2,0.2,0.2,0.2"],
         "--std has 4 values, but input 'x' takes images with 3 channel(s)"),
        (["run", model, png, *noise, "--std", "0.2,0,0.2"], "--std must not contain 0"),
        (["run", model, x, *noise, "--seed", "-1"], "seed must be in [0, 2**63 - 1], got -1"),
        (["run", model, x, *noise, "--seed", str(2**63)],
         f"seed must be in [0, 2**63 - 1], got {2**63}"),
        (["run", model, x, *noise, "-n", str(10**30)],
         f"samples N = {10**30} is above the limit of {MAX_SAMPLES}"),
        (["run", model, x, *noise, "-n", str(10**9)], "is above the limit of 100000"),
        (["run", model, x, *noise, "-n", "1"], "samples must be an integer >= 2, got 1"),
        (["run", model, x, *noise, "--chunk", "0"], "chunk must be an integer >= 1, got 0"),
        (["run", model, png, *noise, "--resize", "0x5"], "--resize must look like HxW"),
        (["run", model, d / "bad.npz", *noise], "has arrays ['a', 'b'], which do not match"),
        (["run", d / "two.onnx", png, "--method", "noise", "--at", "y"],
         "the model has 2 inputs, so an image alone cannot feed it"),
        (["run", toys.fixed_bias_net(d / "fixed.onnx"), d / "x.npy", "--method", "noise",
          "--at", "c"], "the model failed on input x(1, 3, 8, 8)"),
        (["run", model, x, *noise, "--scale", "nan"], "--scale must be a finite, non-zero"),
        (["run", model, x, *noise, "-n", "10000", "--save-samples", "--max-memory", "4M"],
         "keeping the samples (--save-samples) would hold N = 10000 x 0.000488 MiB = "
         "0.00477 GiB in memory, above --max-memory (0.00391 GiB)"),
        (["export", d / "empty", "-o", d / "m.onnx", "--method", "noise"],
         "holds no .onnx model"),
        (["sweep", model, x, "--targets", d, "--seed", "-3"], "seed must be in [0, 2**63 - 1]"),
        (["sweep", d / "empty", x, "--targets", d], "folder '{d}/empty' holds no .onnx model"),
        (["inspect", d / "no_models"], "folder '{d}/no_models' holds no .onnx model"),
    ]


def test_every_bad_input_is_one_line_and_leaves_nothing(cli, env):
    d, model = env
    np.savez(d / "bad.npz", a=np.zeros((1, 3, 8, 8), np.float32), b=np.zeros(3, np.float32))
    two_input_net(d / "two.onnx")
    cases = _cases(d, model)
    existing = d / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("results of an earlier run")
    before = _digests(existing)
    for k, (args, expected) in enumerate(cases):
        fresh = d / f"out{k}" / "nested"
        for out in (fresh, existing):
            extra = [] if args[0] in ("export", "inspect") else ["--out", out]
            line = _refused(cli(*args, *extra))
            assert expected.format(d=d) in line, (args, line)
            assert not (d / f"out{k}").exists(), args  # never left behind
            assert _digests(existing) == before, args
    assert not (d / "m.onnx").exists()
    line = _refused(cli("run", model, d / "x.npy", "--method", "noise", "--out", ""))
    assert "the output folder is an empty name" in line


def test_click_usage_errors_are_exit_2(cli, env):
    d, model = env
    for bad in (["-n", "2.5"], ["-n", "many"], ["--seed", "1.5"]):
        r = cli("run", model, d / "x.npy", "--method", "noise", "--out", d / "o", *bad)
        assert r.exit_code == 2 and "Invalid value" in r.stderr and not (d / "o").exists()


def test_refusal_in_an_existing_empty_folder_keeps_it(cli, env):
    d, model = env
    out = d / "mine"
    out.mkdir()
    _refused(cli("run", model, d / "x.png", "--method", "noise", "--mean", "1,2", "--out", out))
    assert out.is_dir() and os.listdir(out) == []


def test_non_finite_results_are_written_warned_and_recorded(cli, env, x8):
    d, _ = env
    model = exp_net(d / "exp.onnx")
    np.save(d / "y.npy", x8 * 2)
    out = d / "out"
    r = cli("run", model, d / "x.npy", d / "y.npy", "--method", "noise", "--at", "h",
            "--sigma", "1e4", "--seed", "0", "--out", out)
    assert r.exit_code == 3, r.output
    warnings = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 2  # one line per input
    assert warnings[0].startswith(f"tfue: warning: {d / 'x.npy'}: NaN or Inf in the results "
                                  "(output 'y': ")
    assert "lower --sigma/--rate" in warnings[0]
    assert "mean variance nan (NaN/Inf: see the warning)" in r.stdout
    summary = json.loads((out / "summary.json").read_text())  # standard JSON: NaN as null
    assert len(summary["warnings"]) == 2
    for item in summary["inputs"]:
        found = item["non_finite"]["y"]
        assert found["variance"] > 0 and set(found) <= {"output", "mean", "variance",
                                                         "from_model", "from_perturbation"}
        assert found["from_model"] == 0 and found["from_perturbation"] == found["variance"]
        assert item["mean_variance"] is None
    with np.load(out / "x.npz") as z:
        assert np.count_nonzero(~np.isfinite(z["variance"])) == \
            summary["inputs"][0]["non_finite"]["y"]["variance"]
    # --json prints standard JSON too, and exits 3 as well.
    r = cli("run", model, d / "x.npy", "--method", "noise", "--at", "h", "--sigma", "1e4",
            "--out", d / "out2", "--json")
    assert r.exit_code == 3 and json.loads(r.stdout)["warnings"]
    # A finite result: no warning, exit 0.
    r = cli("run", model, d / "x.npy", "--method", "noise", "--at", "h", "--sigma", "0.1",
            "--out", d / "out3", "--json")
    assert r.exit_code == 0 and "warnings" not in json.loads(r.stdout)
    assert "non_finite" not in json.loads(r.stdout)["inputs"][0]


def test_large_n_gets_a_time_estimate(cli, env):
    d, model = env
    r = cli("run", model, d / "x.npy", "--method", "noise", "--at", "r1", "-n", "1000",
            "--out", d / "o")
    assert r.exit_code == 0, r.output
    assert "tfue: N = 1000 samples x 1 input(s): one plain model run takes " in r.stderr
    assert "so expect roughly" in r.stderr
    r = cli("run", model, d / "x.npy", "--method", "noise", "--at", "r1", "-n", "999",
            "--out", d / "o2")
    assert "expect roughly" not in r.stderr


# --- 16-bit images --------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_png_is_read_with_its_range(tmp_path, channels):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 65536, size=(10, 12), dtype=np.uint16)
    Image.fromarray(raw).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")  # Pillow reads it as 16-bit
    model = toys.conv_net(tmp_path / "m.onnx", channels=channels)
    inp = inspect_model(str(tmp_path / "m.onnx")).inputs[0]
    arr = read_image(str(tmp_path / "deep.png"), inp)
    expected = raw.astype(np.float64) / 65535
    assert arr.shape == (1, channels, 10, 12) and model is not None
    for c in range(channels):
        np.testing.assert_allclose(arr[0, c], expected, atol=1e-6)
    assert (arr >= 0.999).mean() < 0.01  # not saturated as 8-bit reading did
    # An explicit scale applies to the raw 16-bit values; mean/std after it.
    arr = read_image(str(tmp_path / "deep.png"), inp,
                     ImageOptions(scale=1.0, mean=(100.0,), std=(2.0,)))
    np.testing.assert_allclose(arr[0, 0], (raw - 100.0) / 2, rtol=1e-6)
    # Resized without losing the 16 bits.
    arr = read_image(str(tmp_path / "deep.png"), inp, ImageOptions(resize=(5, 6)))
    assert arr.shape == (1, channels, 5, 6) and 0 <= arr.min() and arr.max() <= 1
    steps = arr * 255  # 8-bit reading would leave whole steps of 1/255
    assert np.abs(steps - np.round(steps)).max() > 0.1
    block = raw[:2, :2].astype(np.float64).mean() / 65535  # 2x2 average, roughly
    assert abs(float(arr[0, 0, 0, 0]) - block) < 0.2


def test_float_tiff_is_refused_not_clipped(tmp_path):
    Image.fromarray(np.random.default_rng(0).random((6, 6), dtype=np.float32)).save(
        tmp_path / "f.tiff")
    toys.conv_net(tmp_path / "m.onnx")
    inp = inspect_model(str(tmp_path / "m.onnx")).inputs[0]
    with pytest.raises(TfueError, match="f.tiff' is a 32-bit float image"):
        read_image(str(tmp_path / "f.tiff"), inp)


def test_16bit_png_through_the_cli_matches_numpy(cli, tmp_path):
    raw = np.random.default_rng(1).integers(0, 65536, size=(8, 8), dtype=np.uint16)
    Image.fromarray(raw).save(tmp_path / "deep.png")
    model = toys.conv_net(tmp_path / "m.onnx")
    r = cli("run", tmp_path / "m.onnx", tmp_path / "deep.png", "--method", "noise", "--at",
            "r1", "--sigma", "0", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    x = np.repeat((raw / 65535).astype(np.float32)[None, None], 3, axis=1)
    y = ort.InferenceSession(model.SerializeToString(),
                             providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with np.load(tmp_path / "o" / "deep.npz") as z:
        np.testing.assert_allclose(z["output"], y, rtol=1e-5, atol=1e-6)


# --- the API --------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    ({"model": None}, "model must be a path to an .onnx file or an onnx.ModelProto, got "
                      "NoneType"),
    ({"model": 3}, "got int"),
    ({"spec": None}, "spec must be one of Noise, Dropout, MCDropout, Transform, Ensemble, "
                     "Entropy, got NoneType"),
    ({"spec": "noise"}, "got str"),
    ({"samples": 8.0}, "samples must be an integer, got 8.0 (float)"),
    ({"samples": "8"}, "samples must be an integer, got '8' (str)"),
    ({"samples": True}, "samples must be an integer, got True (bool)"),
    ({"samples": 1}, "samples must be an integer >= 2"),
    ({"samples": 10**30}, "is above the limit of 100000"),
    ({"seed": -1}, "seed must be in [0, 2**63 - 1], got -1"),
    ({"seed": 2**63}, "seed must be in [0, 2**63 - 1]"),
    ({"seed": 1.5}, "seed must be an integer, got 1.5 (float)"),
    ({"seed": "3"}, "seed must be an integer, got '3' (str)"),
    ({"max_memory": float("inf")}, "max_memory must be a size like 512M or 2G (at least 1 byte)"),
    ({"max_memory": float("nan")}, "max_memory must be a size like 512M or 2G (at least 1 byte)"),
    ({"max_memory": "2 lots"}, "max_memory must be a size like 512M or 2G (at least 1 byte), "
                               "got '2 lots'"),
    ({"chunk": 0}, "chunk must be an integer >= 1"),
])
def test_estimator_arguments(toy, kwargs, message):
    args = {"model": toy(), "spec": Noise(0.1, at="r1"), **kwargs}
    with pytest.raises(TfueError) as err:
        Estimator(args.pop("model"), args.pop("spec"), **args)
    assert message in str(err.value) and err.value.hint


def test_estimator_edge_values_accepted(toy, x8):
    est = Estimator(toy(), Noise(0.1, at="r1"), samples=np.int64(4), seed=2**63 - 1)
    assert est.seed == 2**63 - 1 and est.samples == 4
    assert np.all(np.isfinite(est(x8).variance))
    assert Estimator(toy(), Noise(0.1, at="r1"), seed=np.uint32(0)).seed == 0


def test_image_options_and_ensemble_arguments():
    with pytest.raises(TfueError, match="scale must be a finite, non-zero number"):
        ImageOptions(scale=0)
    with pytest.raises(TfueError, match="mean must be finite numbers"):
        ImageOptions(mean=(float("nan"),))
    with pytest.raises(TfueError, match="Ensemble members must be a list of models"):
        Ensemble(None)


def test_model_folder(cli, env):
    d, model = env
    one = d / "one"
    one.mkdir()
    os.replace(model, one / "m.onnx")
    r = cli("inspect", one, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["path"] == str(one / "m.onnx")
    r = cli("run", one, d / "x.npy", "--method", "noise", "--at", "r1", "--out", d / "o", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["model"] == str(one / "m.onnx")
    toys.conv_net(one / "n.onnx")
    line = _refused(cli("run", one, d / "x.npy", "--method", "noise", "--out", d / "o2"))
    assert f"2 models given ({one / 'm.onnx'}, {one / 'n.onnx'}), but only --method ensemble " \
           "takes several" in line
    assert not (d / "o2").exists()
