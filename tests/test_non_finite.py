"""NaN/Inf in results: the warning and summary.json tell the ones the model makes on its
own (already in the unperturbed output) from the ones the perturbation makes (issue 9)."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tfue_onnx.report import non_finite
from tfue_onnx.results import OutputStats, Result


def log_net(path, opset=13, conv=False):
    """x [b,3,h,w] -> Identity (h) -> (Conv 3x3) -> Log -> y: NaN wherever its argument < 0."""
    nodes = [helper.make_node("Identity", ["x"], ["h"])]
    inits, last = [], "h"
    if conv:
        w = np.zeros((3, 3, 3, 3), np.float32)
        w[np.arange(3), np.arange(3), 1, 1] = 1.0  # identity kernel: Log of x itself
        inits.append(onnx.numpy_helper.from_array(w, "w"))
        nodes.append(helper.make_node("Conv", ["h", "w"], ["c"], pads=[1, 1, 1, 1]))
        last = "c"
    nodes.append(helper.make_node("Log", [last], ["y"]))
    graph = helper.make_graph(
        nodes, "log", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3, "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return str(path)


def _x(seed=0):
    """Half the values negative (Log: NaN in the plain model), half in [1, 2]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(1, 2, (1, 3, 8, 8)).astype(np.float32)
    x[rng.random(x.shape) < 0.5] *= -1
    return x


def _warning(r):
    lines = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("opset,conv", [(9, False), (13, True), (17, False)])
def test_nan_of_the_model_itself_is_not_blamed_on_the_perturbation(cli, tmp_path, opset, conv):
    model = log_net(tmp_path / "log.onnx", opset, conv)
    x = _x()
    np.save(tmp_path / "x.npy", x)
    own = int(np.count_nonzero(x < 0))
    # sigma 1e-3 cannot move a value in [1, 2] below zero: every NaN is the model's own
    r = cli("run", model, tmp_path / "x.npy", "--method", "noise", "--at", "h", "--sigma",
            "1e-3", "--seed", "1", "--out", tmp_path / "o")
    assert r.exit_code == 3, r.output
    line = _warning(r)
    assert f"{own} already in the unperturbed output" in line
    assert "not the perturbation" in line and "--sigma" not in line and "made by" not in line
    found = json.loads((tmp_path / "o" / "summary.json").read_text())["inputs"][0]["non_finite"]
    assert found["y"] == {"output": own, "mean": own, "variance": own,
                          "from_model": own, "from_perturbation": 0}


def test_model_and_perturbation_counted_apart(cli, tmp_path):
    model = log_net(tmp_path / "log.onnx")
    x = _x(1)
    np.save(tmp_path / "x.npy", x)
    own, positive = int(np.count_nonzero(x < 0)), int(np.count_nonzero(x > 0))
    # sigma 1e3: each of 32 samples sends a positive value below zero with chance 1/2
    r = cli("run", model, tmp_path / "x.npy", "--method", "noise", "--at", "h", "--sigma",
            "1e3", "-n", "32", "--seed", "2", "--out", tmp_path / "o")
    assert r.exit_code == 3, r.output
    line = _warning(r)
    assert f"{own} already in the unperturbed output, {positive} made by the perturbation" in line
    assert "lower --sigma/--rate" in line
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    found = summary["inputs"][0]["non_finite"]["y"]
    assert (found["from_model"], found["from_perturbation"]) == (own, positive)
    assert found["output"] == own and found["variance"] == own + positive
    assert summary["warnings"] == [line.split("tfue: warning: ", 1)[1]]


def test_transform_of_a_model_that_makes_nan_itself(cli, tmp_path):
    model = log_net(tmp_path / "log.onnx")
    x = _x(2)
    np.save(tmp_path / "x.npy", x)
    own = int(np.count_nonzero(x < 0))
    r = cli("run", model, tmp_path / "x.npy", "--method", "transform", "--transforms", "flips",
            "--out", tmp_path / "o")
    assert r.exit_code == 3, r.output
    line = _warning(r)
    assert "not the perturbation" in line and "--sigma" not in line
    found = json.loads((tmp_path / "o" / "summary.json").read_text())["inputs"][0]["non_finite"]
    assert found["y"]["from_model"] == own and found["y"]["from_perturbation"] == 0


def test_counts_without_an_array_of_the_outputs_shape():
    """Entropy maps only (no mean/variance): NaN beside a clean output is the run's."""
    clean = OutputStats(output=np.ones((1, 4, 2, 2), np.float32),
                        entropy=np.array([[[np.nan, 0.1], [0.2, 0.3]]], np.float32))
    dirty = OutputStats(output=np.full((1, 4, 2, 2), np.nan, np.float32),
                        entropy=np.full((1, 2, 2), np.nan, np.float32))
    found = non_finite(Result({"p": clean, "q": dirty}, {"method": "noise"}))
    assert found["p"] == {"entropy": 1, "from_model": 0, "from_perturbation": 1}
    assert found["q"] == {"output": 16, "entropy": 4, "from_model": 16, "from_perturbation": 0}


@pytest.mark.parametrize("strategy", ["batched", "loop"])
def test_overflow_raises_no_numpy_warning(tmp_path, strategy):
    """NaN/Inf are tfue's to report (counted, warned once per input); numpy's own
    RuntimeWarnings from the statistics must not leak onto the user's stderr."""
    import warnings

    from test_bad_input import exp_net
    from tfue_onnx import Estimator, Noise

    path = exp_net(tmp_path / "exp.onnx")
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        res = Estimator(path, Noise(1e4, at="h"), samples=4, seed=0, strategy=strategy)(x)
    assert not np.all(np.isfinite(res.variance))
    assert non_finite(res)["y"]["from_perturbation"] > 0


def test_evaluate_leaves_non_finite_images_out_and_refuses_non_finite_targets(tmp_path):
    from tfue_onnx import Estimator, Noise, TfueError
    from tfue_onnx.evaluate import evaluate, make_pairs
    from tfue_onnx.model import inspect_model

    model = log_net(tmp_path / "log.onnx", conv=True)
    rng = np.random.default_rng(0)
    folder = tmp_path / "pairs"
    folder.mkdir()
    for k in range(4):
        x = rng.uniform(1, 2, (3, 8, 8)).astype(np.float32)
        if k == 1:
            x[0, 0, 0] = -1.0  # Log of a negative number: NaN in the output
        np.savez(folder / f"p{k}.npz", x=x,
                 target=np.log(np.abs(x)) + 0.01 * rng.random(x.shape).astype(np.float32))
    info = inspect_model(model)
    pairs = make_pairs(info, [folder])
    res = evaluate(Estimator(model, Noise(0.01, at="h"), samples=4, seed=0), pairs, grid=2)
    assert res["table"]["images"] == 3  # p1 left out
    assert any("1 image(s) have NaN/Inf" in n and "p1" in n for n in res["notes"])
    assert np.isfinite(res["table"]["l1"]["pixel"])
    assert np.isnan(res["images"][1]["pixel_l1"])
    # Every image non-finite: the table holds NaN, not a crash.
    bad = evaluate(Estimator(model, Noise(0.01, at="h"), samples=4, seed=0), pairs[1:2])
    assert bad["table"]["images"] == 0 and np.isnan(bad["table"]["l1"]["pixel"])
    # A target with NaN is refused, naming the file.
    x = rng.uniform(1, 2, (3, 8, 8)).astype(np.float32)
    t = np.log(x)
    t[0, 2, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, target=t)
    [pair] = make_pairs(info, [tmp_path / "nan.npz"])
    with pytest.raises(TfueError, match=r"the target of '.*nan.npz' holds 1 NaN/Inf value"):
        evaluate(Estimator(model, Noise(0.01, at="h"), samples=4, seed=0), [pair])
