"""report.py: NAME.npz written and read back, the files a run plans, summary.json, and the
counts and words of the NaN/Inf warnings."""

import json
import os

import numpy as np
import pytest

from tfue_onnx import __version__, report
from tfue_onnx.errors import TfueError
from tfue_onnx.perturb import Noise
from tfue_onnx.results import OutputStats, Result
from tfue_onnx import Estimator


@pytest.fixture
def run_result(toy, x8):
    est = Estimator(toy(), Noise(0.1), samples=4, seed=0)
    return est(x8)


def test_read_result_round_trips_a_run(run_result, tmp_path):
    item = report.write_result(str(tmp_path), "x", run_result, "x.npy")
    back = report.read_result(tmp_path / "x.npz")
    assert list(back.outputs) == list(run_result.outputs) == ["y"]
    for key in ("output", "mean", "variance"):
        a, b = getattr(back, key), getattr(run_result, key)
        assert a.dtype == b.dtype and a.shape == b.shape == (1, 2, 8, 8)
        np.testing.assert_array_equal(a, b)
    assert back.metadata == {**json.loads(json.dumps(run_result.metadata, default=str)),
                             "input": "x.npy", "primary": "y", "tfue_version": __version__}
    assert back.image_axes == run_result.image_axes == (2, 3)
    assert item["files"] == [str(tmp_path / "x.npz"), str(tmp_path / "x.variance.png")]
    assert item["mean_variance"] == pytest.approx(float(np.mean(run_result.variance)))
    assert item["max_variance"] == pytest.approx(float(np.max(run_result.variance)))
    assert item["outputs"]["y"]["shape"] == [1, 2, 8, 8]


def test_every_output_is_stored_once_under_its_own_name(tmp_path):
    rng = np.random.default_rng(0)
    labels = OutputStats(np.arange(6).reshape(1, 6))
    probs = OutputStats(rng.random((1, 3)), rng.random((1, 3)), rng.random((1, 3)),
                        entropy=rng.random(1), class_variance=rng.random(1))
    dotted = OutputStats(rng.random((2,)), rng.random((2,)), rng.random((2,)))
    res = Result({"labels": labels, "probs": probs, "a.b": dotted}, {"method": "noise"})
    arrays = report.result_arrays(res)
    assert sorted(arrays) == sorted(["output", "mean", "variance", "entropy",
                                     "class_variance", "labels.output", "a.b.output",
                                     "a.b.mean", "a.b.variance"])
    assert all(arrays[k] is v for k, v in [("output", probs.output),
                                           ("labels.output", labels.output)])
    report.write_result(str(tmp_path), "r", res, "r.npy")
    back = report.read_result(str(tmp_path / "r.npz"))
    assert list(back.outputs) == ["probs", "labels", "a.b"] and back.primary == "probs"
    np.testing.assert_array_equal(back.outputs["a.b"].variance, dotted.variance)
    np.testing.assert_array_equal(back.entropy, probs.entropy)
    assert back.outputs["labels"].mean is None


def test_read_result_refuses_other_files(tmp_path):
    np.savez(tmp_path / "plain.npz", x=np.zeros(2))
    (tmp_path / "text.npz").write_text("hello")
    for name in ("plain.npz", "text.npz"):
        with pytest.raises(TfueError, match="is not a result tfue wrote") as e:
            report.read_result(str(tmp_path / name))
        assert "\n" not in str(e.value) and e.value.hint == "give a NAME.npz from 'tfue run'"
    meta = np.array(json.dumps({"primary": "y"}))
    np.savez(tmp_path / "other.npz", metadata=meta, **{"z.output": np.zeros(2)})
    with pytest.raises(TfueError, match=r"an output is missing"):
        report.read_result(str(tmp_path / "other.npz"))


def test_planned_files():
    assert report.planned_files("out", ["a/img.png", "b/c.d.npy"]) == [
        os.path.join("out", n) for n in ("summary.json", "img.npz", "img.variance.png",
                                         "img.entropy.png", "img.overlay.png",
                                         "img.weights.npy", "c.d.npz", "c.d.variance.png",
                                         "c.d.entropy.png", "c.d.overlay.png",
                                         "c.d.weights.npy")]


def test_summary_json_fields(cli, toy, tmp_path, x8):
    rng = np.random.default_rng(1)
    for k, x in enumerate((x8, rng.random((1, 3, 8, 8), dtype=np.float32))):
        np.save(tmp_path / f"in{k}.npy", x)
    out = tmp_path / "out"
    r = cli("run", toy(), tmp_path / "in0.npy", tmp_path / "in1.npy", "--method", "noise",
            "--sigma", "0.2", "--samples", "4", "--seed", "3", "--out", out)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tfue_version"] == __version__
    assert (summary["method"], summary["level"], summary["samples"], summary["seed"]) == \
        ("noise", 0.2, 4, 3)
    assert summary["location"] and "at" not in summary and "input" not in summary
    assert set(summary["timing"]) == {"startup_s", "sampling_s", "writing_s", "total_s"}
    assert summary["timing"]["total_s"] >= summary["timing"]["sampling_s"] > 0
    assert [os.path.basename(i["input"]) for i in summary["inputs"]] == ["in0.npy", "in1.npy"]
    for k, item in enumerate(summary["inputs"]):
        var = report.read_result(out / f"in{k}.npz").variance
        assert item["mean_variance"] == pytest.approx(float(var.mean()))
        assert item["max_variance"] == pytest.approx(float(var.max()))
        assert item["files"] == [str(out / f"in{k}.npz"), str(out / f"in{k}.variance.png")]
        assert "chunks" in item
    assert "warnings" not in summary and "notes" not in summary


def _stats(output, mean, variance):
    return OutputStats(np.array(output, float), np.array(mean, float), np.array(variance, float))


def test_non_finite_counts_tell_the_model_from_the_perturbation():
    nan, inf = np.nan, np.inf
    clean = _stats([1, 2], [1, 2], [0, 0])
    model = _stats([nan, 2, 3], [nan, 2, 3], [nan, 0, 0])     # the model's own NaN
    made = _stats([1, 2, 3], [1, inf, 3], [0, nan, nan])       # the perturbation's
    both = _stats([nan, 2, 3], [nan, 2, inf], [nan, 0, 0])
    res = Result({"c": clean, "m": model, "p": made, "b": both}, {"method": "noise"})
    found = report.non_finite(res)
    assert found == {
        "m": {"output": 1, "mean": 1, "variance": 1, "from_model": 1, "from_perturbation": 0},
        "p": {"mean": 1, "variance": 2, "from_model": 0, "from_perturbation": 2},
        "b": {"output": 1, "mean": 2, "variance": 1, "from_model": 1, "from_perturbation": 1}}
    own = report._non_finite_warning("in.npy", {"m": found["m"]}, res)
    assert own.startswith("in.npy: NaN or Inf in the results (output 'm': 1 of 3 output "
                          "values, 1 of 3 mean values, 1 of 3 variance values (1 already in "
                          "the unperturbed output)); the model's own (unperturbed) output")
    theirs = report._non_finite_warning("in.npy", {"p": found["p"]}, res)
    assert theirs.endswith("the perturbation makes them (the model overflows, or a Log/Sqrt/"
                           "division leaves its domain): lower --sigma/--rate or perturb "
                           "elsewhere (--at)")
    mixed = report._non_finite_warning("in.npy", {"b": found["b"]}, res)
    assert "1 come from the model's own (unperturbed) output on this input; the " \
           "perturbation makes 1 more" in mixed


def test_non_finite_results_are_written_with_a_warning_in_the_summary(tmp_path, monkeypatch):
    class Fake:
        """An estimator whose perturbation overflows in one element."""
        info = type("I", (), {"inputs": []})()
        samples, keep_samples = 4, False

        def check_feeds(self, feeds):
            return feeds

        def prepare(self, feeds):
            pass

        def __call__(self, feeds, progress=None):
            return Result({"y": _stats([[1.0, 2.0]], [[1.0, np.inf]], [[0.1, np.nan]])},
                          {"method": "noise", "at": "x", "level": 0.1})

    np.save(tmp_path / "a.npy", np.zeros(2, np.float32))
    monkeypatch.setattr(report, "load_input", lambda path, inputs, options: {"x": np.load(path)})
    lines = []
    summary = report.run_inputs(Fake(), [str(tmp_path / "a.npy")], str(tmp_path / "o"), None,
                                note=lines.append)
    [warning] = summary["warnings"]
    assert lines == ["warning: " + warning] and "1 made by the perturbation" in warning
    assert summary["inputs"][0]["non_finite"] == {"y": {
        "mean": 1, "variance": 1, "from_model": 0, "from_perturbation": 1}}
    assert np.isnan(report.read_result(tmp_path / "o" / "a.npz").variance[0, 1])


def test_no_pictures_writes_the_npz_only(cli, toy, tmp_path, x8):
    np.save(tmp_path / "in.npy", x8)
    out = tmp_path / "out"
    r = cli("run", toy(), tmp_path / "in.npy", "--method", "noise", "--sigma", "0.2",
            "--samples", "2", "--seed", "3", "--no-pictures", "--json", "--out", out)
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(out)) == ["in.npz", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["color_scale"] == {"drawn": False}
    assert summary["inputs"][0]["files"] == [str(out / "in.npz")]
    r = cli("run", toy(), tmp_path / "in.npy", "--method", "noise", "--no-pictures",
            "--overlay", "--out", tmp_path / "o2")
    assert r.exit_code == 2 and "--no-pictures" in r.output and not (tmp_path / "o2").exists()


def test_read_result_of_a_missing_file_says_so(tmp_path):  # not "not a result"
    with pytest.raises(TfueError, match="result file '.*nope.npz' does not exist"):
        report.read_result(str(tmp_path / "nope.npz"))
