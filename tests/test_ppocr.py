"""End to end on real models nobody here wrote: PP-OCRv4's text detector and the
PP-OCR angle classifier, from the rapidocr-onnxruntime wheel, through the CLI."""

import json

import numpy as np
import onnxruntime as ort
import pytest

from conftest import DET_MEAN, DET_STD

LOCATIONS = {"early": "0.1", "middle": "0.5", "late": "0.9"}


def _run_json(cli, *args):
    r = cli("run", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _original(model, x):
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def cls_npy(cls_array, tmp_path_factory):
    path = tmp_path_factory.mktemp("cls") / "crop.npy"
    np.save(path, cls_array)
    return str(path)


@pytest.mark.parametrize("where", LOCATIONS)
@pytest.mark.parametrize("method,flag,levels", [("noise", "--sigma", (0.05, 0.5)),
                                                ("dropout", "--rate", (0.02, 0.3))])
def test_detector_location_and_level(cli, tmp_path, ppocr_det, text_image, where, method, flag,
                                     levels):
    variances = []
    for level in levels:
        out = tmp_path / f"{method}{level}"
        s = _run_json(cli, ppocr_det, text_image, "--method", method, "--at", LOCATIONS[where],
                      flag, level, "--samples", 8, "--seed", 0, "--mean", DET_MEAN, "--std",
                      DET_STD, "--out", out)
        assert s["strategy"] == "looped-suffix" and s["provider"] in ("cpu", "cuda")
        assert s["level"] == level and s["samples"] == 8 and s["seed"] == 0
        [item] = s["inputs"]
        assert item["outputs"]["sigmoid_0.tmp_0"]["shape"] == [1, 1, 96, 256]
        with np.load(out / "text.npz") as z:
            assert z["variance"].shape == (1, 1, 96, 256)
            assert json.loads(str(z["metadata"]))["method"] == method
        assert (out / "text.variance.png").stat().st_size > 200
        variances.append(item["mean_variance"])
    assert 0 < variances[0] < variances[1], (where, method, variances)


@pytest.mark.parametrize("method,flag", [("noise", "--sigma"), ("dropout", "--rate")])
def test_level_zero_is_the_original_output(cli, tmp_path, ppocr_det, text_image, text_array,
                                           method, flag):
    s = _run_json(cli, ppocr_det, text_image, "--method", method, "--at", "0.5", flag, 0,
                  "--mean", DET_MEAN, "--std", DET_STD, "--out", tmp_path)
    assert s["inputs"][0]["mean_variance"] == 0.0
    with np.load(tmp_path / "text.npz") as z:
        ref = _original(ppocr_det, text_array)
        np.testing.assert_allclose(z["output"], ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z["mean"], ref, rtol=1e-5, atol=1e-6)
        assert float(z["variance"].max()) == 0.0


def test_detector_uncertainty_sits_on_the_text(ppocr_det, text_array):
    """Variance is a map aligned with the input: high near text, ~0 on empty paper."""
    from tfue_onnx import Estimator, Noise

    res = Estimator(ppocr_det, Noise(0.5, at="0.5"), samples=8, seed=0)(text_array)
    var = res.variance[0, 0]
    text_rows, blank_rows = var[5:45].mean(), var[85:].mean()
    assert res.output[0, 0, 5:45].max() > 0.5  # the detector sees the text
    assert text_rows > 20 * blank_rows


@pytest.mark.parametrize("where", LOCATIONS)
def test_angle_classifier(cli, tmp_path, ppocr_cls, cls_npy, cls_array, where):
    variances = []
    for sigma in (0.02, 0.5):
        out = tmp_path / str(sigma)
        s = _run_json(cli, ppocr_cls, cls_npy, "--method", "noise", "--at", LOCATIONS[where],
                      "--sigma", sigma, "--seed", 1, "--out", out)
        item = s["inputs"][0]
        assert item["files"] == [str(out / "crop.npz")]  # no heatmap for class scores
        variances.append(item["mean_variance"])
        with np.load(out / "crop.npz") as z:
            np.testing.assert_allclose(z["output"], _original(ppocr_cls, cls_array), rtol=1e-5,
                                       atol=1e-6)
            np.testing.assert_allclose(z["mean"].sum(), 1.0, rtol=1e-5)  # still a softmax
    assert 0 < variances[0] < variances[1]
    out = tmp_path / "drop"
    s = _run_json(cli, ppocr_cls, cls_npy, "--method", "dropout", "--at", LOCATIONS[where],
                  "--rate", 0.2, "--seed", 1, "--out", out)
    assert s["inputs"][0]["mean_variance"] > 0


def test_recognizer_sequence_output_is_not_inverted(cli, tmp_path, ppocr_rec):
    """PP-OCRv4's recognizer returns [N, T, K] (T = W / 8 time steps, K = 6625 classes):
    T follows the image's width but no axis carries its height, so flips are not undone
    on it (its variance is still reported, and the summary says so) and rotations are
    refused with the reason."""
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 320)).astype(np.float32)
    np.save(tmp_path / "line.npy", x)
    s = _run_json(cli, ppocr_rec, tmp_path / "line.npy", "--method", "transform",
                  "--transforms", "flips", "--out", tmp_path / "t", "--provider", "cpu")
    [name] = s["inverted_axes"]
    assert s["inverted_axes"] == {name: None} and s["spatial_axes"] == {name: None}
    [item] = s["inputs"]
    assert item["files"] == [str(tmp_path / "t" / "line.npz")]  # no heatmap for a sequence
    with np.load(tmp_path / "t" / "line.npz") as z:
        ref = ort.InferenceSession(ppocr_rec, providers=["CPUExecutionProvider"])
        run = lambda a: ref.run(None, {"x": np.ascontiguousarray(a)})[0]  # noqa: E731
        ys = np.stack([run(x), run(x[..., ::-1]), run(x[..., ::-1, :]), run(x[..., ::-1, ::-1])])
        assert z["variance"].shape == (1, 40, 6625)
        np.testing.assert_allclose(z["mean"], ys.mean(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(z["variance"], ys.var(0), rtol=1e-3, atol=1e-8)
    r = cli("run", ppocr_rec, tmp_path / "line.npy", "--method", "transform", "--out",
            tmp_path / "d4")
    assert r.exit_code == 2
    assert "cannot tell which of its axes carry the image's height and width" in r.stderr
    assert "--transforms flips" in r.stderr
