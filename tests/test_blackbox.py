"""Infer-transformation, deep ensembles and classification uncertainty."""

import json

import numpy as np
import onnxruntime as ort
import pytest

import toys
from conftest import DET_MEAN, DET_STD
from tfue_onnx import Estimator, TfueError
from tfue_onnx.perturb import Dropout, Ensemble, Entropy, Transform
from tfue_onnx.transforms import ELEMENTS


def _plain(model, x, name="x"):
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {name: x})[0]


# --- infer-transformation --------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["batched", "loop"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 3, 6, 10)])
def test_equivariant_model_has_zero_variance(tmp_path, strategy, shape):
    """A 1x1 conv commutes with every D4 element: the round trip must give back y."""
    model = toys.pointwise_net(tmp_path / "pw.onnx")
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    res = Estimator(model, Transform("d4"), strategy=strategy, keep_samples=True)(x)
    assert res.metadata["strategy"] == strategy and res.metadata["samples"] == 8
    assert res.samples.shape == (8,) + res.output.shape
    np.testing.assert_allclose(res.samples, np.broadcast_to(res.output, res.samples.shape),
                               rtol=1e-6, atol=1e-6)
    assert float(res.variance.max()) < 1e-12


def test_samples_are_the_inverse_transformed_outputs(toy):
    """Each sample equals inverse(model(forward(x))), computed here with numpy."""
    model = toy()
    x = np.random.default_rng(1).random((1, 3, 6, 6), dtype=np.float32)
    res = Estimator(model, Transform("d4"), keep_samples=True)(x)
    for k, name in enumerate(res.metadata["transforms"]):
        e = ELEMENTS[name]
        want = e.inverse(_plain(model, np.ascontiguousarray(e.forward(x))))
        np.testing.assert_allclose(res.samples[k], want, rtol=1e-5, atol=1e-6)
    assert float(res.variance.mean()) > 1e-4  # a random conv net is not equivariant


def test_non_square_fixed_input_rejects_rotations(toy, tmp_path):
    import onnx
    m = onnx.load(toy())
    for vi in (m.graph.input[0], m.graph.output[0]):
        dims = vi.type.tensor_type.shape.dim
        dims[2].dim_value, dims[3].dim_value = 8, 12
    onnx.save(m, tmp_path / "fixed.onnx")
    with pytest.raises(TfueError, match=r"fixed at 8x12.*Hint: use one of the sets flips, "
                                        r"hflip, rot180"):
        Estimator(str(tmp_path / "fixed.onnx"), Transform("d4"))(np.zeros((1, 3, 8, 12),
                                                                          np.float32))
    res = Estimator(str(tmp_path / "fixed.onnx"), Transform("flips"))(
        np.random.default_rng(0).random((1, 3, 8, 12), dtype=np.float32))
    assert res.variance.shape == (1, 2, 8, 12)


def test_model_rejecting_the_rotated_shape(tmp_path):
    model = toys.fixed_bias_net(tmp_path / "fb.onnx")
    x = np.random.default_rng(0).random((1, 3, 8, 12), dtype=np.float32)
    # onnxruntime's shape inference already refuses the graph, so no size is named here.
    with pytest.raises(TfueError, match=r"does not accept the input rotated by 90°.*Hint: use "
                                        r"one of the sets flips, hflip, rot180"):
        Estimator(model, Transform("rot"))(x)
    assert Estimator(model, Transform("hflip"))(x).variance.shape == (1, 2, 8, 12)


@pytest.fixture(scope="module")
def corner_text(tmp_path_factory):
    """Text in the top-left corner only, on white: an input that is not symmetric."""
    from PIL import Image, ImageDraw, ImageFont

    def make(h, w):
        im = Image.new("RGB", (w, h), "white")
        ImageDraw.Draw(im).text((4, 4), "tfue", fill="black",
                                font=ImageFont.load_default(size=24))
        path = tmp_path_factory.mktemp("corner") / f"corner_{h}x{w}.png"
        im.save(path)
        return str(path)
    return make


@pytest.mark.parametrize("size", [(128, 128), (96, 256)])
@pytest.mark.parametrize("tset", ["hflip", "d4"])
def test_detector_maps_align_with_the_input(cli, tmp_path, ppocr_det, corner_text, size, tset):
    image = corner_text(*size)
    r = cli("run", ppocr_det, image, "--method", "transform", "--transforms", tset,
            "--mean", DET_MEAN, "--std", DET_STD, "--save-samples", "--out", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["method"] == "transform" and s["samples"] == (2 if tset == "hflip" else 8)
    stem = image.rsplit("/", 1)[1][:-4]
    with np.load(tmp_path / f"{stem}.npz") as z:
        samples, output = z["samples"][:, 0, 0], z["output"][0, 0]
    h, w = size
    assert output.shape == (h, w) and samples.shape[1:] == (h, w)
    # Every inverse-transformed map puts the text where the input has it: top left,
    # its centre of mass within a few pixels of the plain output's (a wrong inverse
    # would move it by ~100 px).
    def centre(a):
        rows, cols = np.mgrid[: a.shape[0], : a.shape[1]]
        return np.array([(a * rows).sum(), (a * cols).sum()]) / a.sum()

    for k, sample in enumerate(samples):
        corner = sample[: h // 2, : w // 2].sum()
        assert corner > 0.9 * sample.sum() and sample.max() > 0.5, (tset, k)
        assert np.abs(centre(sample) - centre(output)).max() < 6, (tset, k)
        assert np.corrcoef(sample.ravel(), output.ravel())[0, 1] > 0.5
    assert (tmp_path / f"{stem}.variance.png").exists()


# --- deep ensemble ---------------------------------------------------------------------------
def test_ensemble_of_three(toy, x8):
    members = [toy(f"m{k}", seed=k) for k in range(3)]
    res = Estimator(members[0], Ensemble(members[1:]), keep_samples=True)(x8)
    outs = np.stack([_plain(m, x8) for m in members])
    np.testing.assert_allclose(res.samples, outs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.output, outs[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.mean, outs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.variance, outs.var(0), rtol=1e-4, atol=1e-7)
    assert res.metadata["samples"] == 3 and res.metadata["method"] == "ensemble"


def test_ensemble_cli_and_folder(cli, toy, tmp_path, x8):
    folder = tmp_path / "members"
    folder.mkdir()
    for k in range(4):
        toys.conv_net(folder / f"m{k}.onnx", seed=k)
    np.save(tmp_path / "x.npy", x8)
    r = cli("run", folder / "m0.onnx", folder, tmp_path / "x.npy", "--method", "ensemble",
            "--out", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["samples"] == 4  # m0 given twice (as MODEL and in the folder) counts once
    assert "is the same file as member" in r.stderr and "ensemble of 4 member(s)" in r.stderr
    r = cli("export", *[folder / f"m{k}.onnx" for k in range(4)], "-o", tmp_path / "ens.onnx",
            "--method", "ensemble")
    assert r.exit_code == 0, r.output
    y, mean, var = ort.InferenceSession(str(tmp_path / "ens.onnx"),
                                        providers=["CPUExecutionProvider"]).run(None, {"x": x8})
    outs = np.stack([_plain(str(folder / f"m{k}.onnx"), x8) for k in range(4)])
    np.testing.assert_allclose(var, outs.var(0), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("make,message", [
    (lambda p: toys.conv_net(p, channels=1), "input 0 ('x') has shape ['batch', 1, 'h', 'w'], "
                                             "not ['batch', 3, 'h', 'w']"),
    (lambda p: toys.classifier_net(p), "output 0 ('p') has rank 2 ['b', 4], not 4 "
                                       "['batch', 2, 'h', 'w'] (matched by position to 'y')"),
])
def test_ensemble_mismatch_names_member_and_difference(toy, tmp_path, make, message):
    bad = tmp_path / "bad.onnx"
    make(bad)
    with pytest.raises(TfueError) as err:
        Estimator(toy(), Ensemble([toy("ok", seed=1), str(bad)]))
    assert f"ensemble member '{bad}' does not match" in str(err.value)
    assert message in str(err.value)


def test_ensemble_dtype_and_output_shape_mismatch(tmp_path):
    from onnx import TensorProto
    a = toys.classifier_net(tmp_path / "a.onnx")
    b = toys.classifier_net(tmp_path / "b.onnx", dtype=TensorProto.DOUBLE)
    with pytest.raises(TfueError, match=r"input 0 \('x'\) has dtype float64, not float32"):
        Estimator(a, Ensemble([b]))
    c = toys.classifier_net(tmp_path / "c.onnx", classes=3)
    with pytest.raises(TfueError, match=r"output 0 \('p'\) has shape \['b', 3\], not \['b', 4\]"):
        Estimator(a, Ensemble([c]))


# --- classification ---------------------------------------------------------------------------
def test_entropy_and_bald_on_a_toy_classifier(tmp_path, x8):
    model = toys.classifier_net(tmp_path / "c.onnx")
    p = _plain(model, x8)
    res = Estimator(model, Entropy())(x8)
    np.testing.assert_allclose(res.entropy, -(p * np.log(p)).sum(1), rtol=1e-5)
    assert res.variance is None and res.metadata["classes"]["outputs"] == {"p": 1}
    res = Estimator(model, Dropout(0.3, at="r"), samples=32, seed=0, keep_samples=True)(x8)
    s = res.samples.astype(np.float64)
    m = s.mean(0)
    h_mean = -(m * np.log(m)).sum(-1)
    mean_h = -(s * np.log(s)).sum(-1).mean(0)
    np.testing.assert_allclose(res.entropy, h_mean, rtol=1e-4)
    np.testing.assert_allclose(res.mutual_information, h_mean - mean_h, rtol=1e-3, atol=1e-6)
    assert float(res.mutual_information.min()) > 0
    cls_var = res.outputs["p"].class_variance
    np.testing.assert_allclose(cls_var[0], s.var(0)[0, m[0].argmax()], rtol=1e-4)


def test_softmax_flag_for_logits(tmp_path, x8):
    logits_model = toys.classifier_net(tmp_path / "l.onnx", softmax=False)
    with pytest.raises(TfueError, match="no output of the model holds class probabilities.*"
                                        "softmax=True"):
        Estimator(logits_model, Entropy())
    logits = _plain(logits_model, x8)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    res = Estimator(logits_model, Entropy(), softmax=True)(x8)
    np.testing.assert_allclose(res.output, probs, rtol=1e-5)
    np.testing.assert_allclose(res.entropy, -(probs * np.log(probs)).sum(1), rtol=1e-5)


def test_angle_classifier_from_the_cli(cli, tmp_path, ppocr_cls, cls_array):
    np.save(tmp_path / "crop.npy", cls_array)
    x = tmp_path / "crop.npy"
    r = cli("run", ppocr_cls, x, "--method", "entropy", "--out", tmp_path / "e", "--json")
    assert r.exit_code == 0, r.output
    item = json.loads(r.stdout)["inputs"][0]
    p = _plain(ppocr_cls, cls_array)
    assert item["mean_entropy"] == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-5)
    assert item["mean_variance"] is None

    r = cli("run", ppocr_cls, x, "--method", "dropout", "--at", "0.5", "--rate", 0.2,
            "--samples", 16, "--seed", 0, "--out", tmp_path / "d", "--json")
    item = json.loads(r.stdout)["inputs"][0]
    assert item["mean_mutual_information"] > 0 and item["mean_variance"] > 0
    assert item["mean_entropy"] > 0 and "mean_class_variance" in item

    r = cli("run", ppocr_cls, x, "--method", "transform", "--transforms", "rot180",
            "--out", tmp_path / "t", "--json")
    s = json.loads(r.stdout)
    assert s["samples"] == 2 and s["transforms"] == ["identity", "rot180"]
    with np.load(tmp_path / "t" / "crop.npz") as z:
        np.testing.assert_allclose(z["output"], p, rtol=1e-5, atol=1e-6)
        flipped = _plain(ppocr_cls, np.ascontiguousarray(cls_array[:, :, ::-1, ::-1]))
        np.testing.assert_allclose(z["mean"], (p + flipped) / 2, rtol=1e-5, atol=1e-6)
        assert float(z["mutual_information"].item()) > 0


def test_transform_export_is_standalone_and_exact(cli, toy, tmp_path):
    x = np.random.default_rng(3).random((1, 3, 6, 10), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    r = cli("export", toy(), "-o", tmp_path / "t.onnx", "--method", "transform",
            "--transforms", "d4", "--example", tmp_path / "x.npy")
    assert r.exit_code == 0, r.output
    sess = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"]
    y, mean, var = sess.run(None, {"x": x})
    res = Estimator(toy(), Transform("d4"))(x)  # transforms are deterministic: same numbers
    np.testing.assert_allclose(var, res.variance, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(mean, res.mean, rtol=1e-5, atol=1e-7)
