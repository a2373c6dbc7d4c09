"""calibration.json (calibration.py) and `tfue calibrate`, `--calibration` on run, export
and evaluate (issue 13), on the bundled SR model (ours) and PP-OCR's text detector."""

import json
import os

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from tfue_onnx import Estimator, TfueError, load_image, read_result
from tfue_onnx.calibrate import Calibration, fit
from tfue_onnx.calibration import CalibrationFile, differences, identity, model_digest
from tfue_onnx.demo import bundled_model
from tfue_onnx.evaluate import calibrate_pairs, make_pairs
from tfue_onnx.perturb import Dropout, Transform

SR = bundled_model()
D4 = ("--method", "transform", "--seed", "0")


def _photos(folder, count, seed, size=32):
    """Smooth random RGB pictures (high-resolution targets for --sr-scale 2)."""
    from scipy.ndimage import gaussian_filter

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(count):
        im = gaussian_filter(rng.uniform(0, 255, (size, size, 3)), (1.5, 1.5, 0))
        Image.fromarray(im.clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f"p{k}.png"))
    return str(folder)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("calsets")
    train, held = _photos(root / "train", 8, 0), _photos(root / "held", 4, 1)
    lr = root / "lr"
    os.makedirs(lr)
    for name in sorted(os.listdir(held)):
        hr = Image.open(os.path.join(held, name))
        hr.resize((16, 16), Image.BICUBIC).save(lr / name)
    return {"train": train, "held": held, "lr": str(lr)}


def _cal(tmp_path, cli, sets, *method, coverage="0.9", name="cal.json"):
    out = tmp_path / name
    r = cli("calibrate", SR, sets["train"], "--sr-scale", "2", *method, "--coverage",
            coverage, "-o", out)
    assert r.exit_code == 0, r.output
    return out, r


def test_tfue_calibrate_writes_the_fit_its_identity_and_a_reliability_diagram(tmp_path, cli,
                                                                              sets):
    out, r = _cal(tmp_path, cli, sets, *D4)
    data = json.loads(out.read_text())
    assert data["tfue_calibration"] == 1
    ident = data["identity"]
    assert ident["model"] == model_digest(SR) and len(ident["model"]) == 64
    assert (ident["method"], ident["at"], ident["samples"], ident["output"]) == (
        "transform", "input", 8, "output")
    assert ident["transforms"] == sorted(["identity", "rot90", "rot180", "rot270", "hflip",
                                          "vflip", "transpose", "antitranspose"])
    assert ident["level"] is None and ident["softmax"] is False and "pad" not in ident
    assert data["seed"] == 0 and data["model_path"] == SR
    assert data["calibration_set"]["pairs"] == 8
    assert data["calibration_set"]["elements"] == 8 * 3 * 32 * 32
    assert len(data["calibration_set"]["sha256"]) == 64
    # The same fit from Python (the CLI's own path), element for element.
    est = Estimator(SR, Transform("d4"), seed=0)
    again = calibrate_pairs(est, make_pairs(est.info, [sets["train"]], sr_scale=2), 0.9)
    assert again.fit == Calibration.from_json(data["fit"])
    assert again.about["calibration_set"]["sha256"] == data["calibration_set"]["sha256"]
    # On the calibration set itself the conformal interval covers at least 90 %.
    assert data["on_calibration_set"]["coverage"] >= 0.9
    assert f"{again.fit.q:.4g}" in r.output and "8 pair(s), 24576 elements" in r.output
    picture = tmp_path / "cal.png"
    assert picture.stat().st_size > 10000
    assert Image.open(picture).size[0] > 800
    # Not overwritten without --force; a failed refit leaves the file as it was.
    before = out.read_bytes()
    r = cli("calibrate", SR, sets["train"], "--sr-scale", "2", *D4, "-o", out)
    assert r.exit_code == 2 and "already exists" in r.output
    assert out.read_bytes() == before


def test_run_adds_expected_error_and_intervals_and_export_returns_the_same(tmp_path, cli,
                                                                           sets):
    cal_path, _ = _cal(tmp_path, cli, sets, *D4)
    cal = CalibrationFile.load(cal_path)
    r = cli("run", SR, sets["lr"], *D4, "--calibration", cal_path, "-o", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "interval width" in r.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["calibration"]["q"] == cal.fit.q
    r = cli("export", SR, *D4, "--calibration", cal_path, "-o", tmp_path / "cal.onnx")
    assert r.exit_code == 0, r.output
    assert "output.expected_error, output.lower, output.upper" in r.output
    sess = ort.InferenceSession(str(tmp_path / "cal.onnx"), providers=["CPUExecutionProvider"])
    est = Estimator(SR, Transform("d4"))
    for name in sorted(os.listdir(sets["lr"])):
        res = read_result(tmp_path / "run" / name.replace(".png", ".npz")).outputs["output"]
        lo, hi = cal.fit.interval(res.output, res.variance)
        np.testing.assert_allclose(res.lower, lo, atol=1e-7)
        np.testing.assert_allclose(res.upper, hi, atol=1e-7)
        np.testing.assert_allclose(res.expected_error, cal.fit.expected_error(res.variance),
                                   atol=1e-7)
        assert res.lower.dtype == np.float32 and res.lower.shape == (1, 3, 32, 32)
        assert np.all(res.lower <= res.output) and np.all(res.output <= res.upper)
        x = load_image(os.path.join(sets["lr"], name), est)
        got = dict(zip([o.name for o in sess.get_outputs()],
                       sess.run(None, {sess.get_inputs()[0].name: x})))
        for part in ("lower", "upper", "expected_error"):
            assert np.abs(got[f"output.{part}"] - getattr(res, part)).max() < 1e-5, part
    props = {p.key: p.value for p in __import__("onnx").load(
        str(tmp_path / "cal.onnx")).metadata_props}
    assert json.loads(props["tfue.calibration"])["q"] == cal.fit.q


def test_evaluate_reports_coverage_width_ence_and_draws_the_reliability_diagram(tmp_path,
                                                                               cli, sets):
    cal_path, _ = _cal(tmp_path, cli, sets, *D4, coverage="0.8")
    out = tmp_path / "ev"
    r = cli("evaluate", SR, sets["held"], "--sr-scale", "2", *D4, "--calibration", cal_path,
            "--bootstrap", "0", "-o", out)
    assert r.exit_code == 0, r.output
    found = json.loads((out / "metrics.json").read_text())["calibration"]
    # The same numbers from the held-out runs by hand.
    from tfue_onnx.calibrate import assess

    cal = CalibrationFile.load(cal_path)
    est = Estimator(SR, Transform("d4"), seed=0)
    ys, vs, ts = [], [], []
    for pair in make_pairs(est.info, [sets["held"]], sr_scale=2):
        feeds, target = pair.load()
        res = est(feeds)
        ys.append(res.output)
        vs.append(res.variance)
        ts.append(target)
    hand = assess(cal.fit, ys, vs, ts)
    for key in ("coverage", "mean_width", "ence", "ence_raw", "mean_error", "count"):
        assert found[key] == pytest.approx(hand[key]), key
    assert found["target_coverage"] == 0.8 and found["count"] == 4 * 3 * 32 * 32
    assert f"coverage {hand['coverage']:.3f}" in r.output and "ENCE" in r.output
    assert (out / "reliability.png").stat().st_size > 10000
    per_image = [item["interval_coverage"] for item in
                 json.loads((out / "metrics.json").read_text())["images"]]
    assert len(per_image) == 4 and min(per_image) == found["image_coverage"]["min"]


def test_a_calibration_for_another_run_is_refused_with_the_difference_named(tmp_path, cli,
                                                                             sets, ppocr_det):
    cal_path, _ = _cal(tmp_path, cli, sets, *D4)
    cases = [
        (("run", SR, sets["lr"], "--method", "dropout", "--rate", "0.1"),
         ["method (made for transform, here dropout)", "level (made for none, here 0.1)"]),
        (("run", SR, sets["lr"], "--method", "transform", "--transforms", "flips"),
         ["N (made for 8, here 4)", "transforms"]),
        (("export", SR, "--method", "transform", "--transforms", "rot"), ["N (made for 8"]),
        (("evaluate", SR, sets["held"], "--sr-scale", "2", "--method", "transform", "--pad",
          "2"), ["pad (made for none, here 2)"]),
        (("run", ppocr_det, sets["lr"], "--method", "transform"), ["model (another file)"]),
        (("run", SR, sets["lr"], "--method", "entropy"), ["--method entropy has none"]),
        (("run", SR, sets["lr"], "--method", "dropout", "--levels", "0.1,0.2"),
         ["--levels runs several"]),
    ]
    for args, words in cases:
        out = tmp_path / "out"
        extra = ("-o", out.with_suffix(".onnx")) if args[0] == "export" else ("-o", out)
        r = cli(*args, "--calibration", cal_path, *extra)
        assert r.exit_code == 2, (args, r.output)
        for w in words:
            assert w in r.output, (w, r.output)
        assert r.output.count("\n") == 1  # one line
        assert not out.exists() and not out.with_suffix(".onnx").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("{\"tfue_calibration\": 1, \"identity\": {}, \"fit\": {}}")
    r = cli("run", SR, sets["lr"], *D4, "--calibration", bad, "-o", tmp_path / "o2")
    assert r.exit_code == 2 and "is not a calibration tfue wrote" in r.output
    r = cli("run", SR, sets["lr"], *D4, "--calibration", tmp_path / "none.json", "-o",
            tmp_path / "o2")
    assert r.exit_code == 2 and "does not exist" in r.output


def test_identity_differences_and_the_python_face(tmp_path, sets):
    meta = {"model": SR, "method": "dropout", "at": "x", "level": 0.1, "samples": 8,
            "seed": 3, "chunks": [8]}
    ident = identity(meta, "output")
    assert ident == {"model": model_digest(SR), "output": "output", "method": "dropout",
                     "at": "x", "level": 0.1, "samples": 8, "softmax": False}
    assert differences(ident, identity({**meta, "seed": 4}, "output")) == []  # seeds differ
    assert differences(ident, identity({**meta, "pad": 0}, "output")) == []  # no pad
    assert differences(ident, identity({**meta, "at": "y", "samples": 16}, "out2")) == [
        "output (made for output, here out2)", "location (made for x, here y)",
        "N (made for 8, here 16)"]
    soft = {**meta, "classes": {"outputs": {"output": 1}, "softmax_added": True}}
    assert differences(ident, identity(soft, "output")) == [
        "softmax (made for False, here True)", "class_axis (made for none, here 1)"]
    other_axis = {**soft, "classes": {"outputs": {"output": 2}, "softmax_added": True}}
    assert differences(identity(soft, "output"), identity(other_axis, "output")) == [
        "class_axis (made for 1, here 2)"]
    t = identity({**meta, "method": "transform", "transforms": ["identity", "hflip"]}, "o")
    assert t["transforms"] == identity({**meta, "method": "transform",
                                        "transforms": ["hflip", "identity"]}, "o")["transforms"]
    # A dropout calibration fitted, saved, loaded and applied in Python.
    est = Estimator(SR, Dropout(0.1, at=0.5), samples=4, seed=1)
    made = calibrate_pairs(est, make_pairs(est.info, [sets["train"]], sr_scale=2), 0.8)
    path = made.save(str(tmp_path / "d.json"))
    loaded = CalibrationFile.load(path)
    assert loaded.fit == made.fit and loaded.identity == json.loads(json.dumps(made.identity))
    x = load_image(os.path.join(sets["lr"], "p0.png"), est)
    res = loaded.apply(est(x))
    assert res.outputs["output"].upper.shape == res.output.shape
    other = Estimator(SR, Dropout(0.2, at=0.5), samples=4, seed=1)
    with pytest.raises(TfueError, match=r"level \(made for 0.1, here 0.2\)"):
        loaded.apply(other(x))
    with pytest.raises(TfueError, match="already exists"):
        made.save(path)
    with pytest.raises(ValueError, match="coverage must be in"):
        calibrate_pairs(est, [], 1.5)
    with pytest.raises(TfueError, match="no calibration pairs"):
        calibrate_pairs(est, [], 0.9)


def test_coverage_holds_on_exchangeable_held_out_pixels_of_a_real_detector(ppocr_det):
    """PP-OCR's detector (not ours), d4: calibrated on half of the pixels of 4 synthetic
    pages, assessed on the other half (exchangeable by construction)."""
    from tfue_onnx.calibrate import assess

    est = Estimator(ppocr_det, Transform("flips"))
    rng = np.random.default_rng(0)
    ys, vs, ts = [], [], []
    for _ in range(4):
        page = np.ones((1, 3, 64, 64), np.float32)
        for _ in range(6):  # dark text-like bars
            r, c = rng.integers(4, 56, 2)
            page[..., r:r + 4, c:c + rng.integers(6, 20)] = 0.0
        res = est({est.info.inputs[0].name: (page - 0.5) / 0.5})
        target = (page[:, :1] < 0.5).astype(np.float32)  # the bars themselves
        ys.append(res.output)
        vs.append(res.variance)
        ts.append(target)
    mask = rng.random(ys[0].shape) < 0.5
    half = [lambda a: [x[mask] for x in a], lambda a: [x[~mask] for x in a]]
    cal = fit(half[0](ys), half[0](vs), half[0](ts), coverage=0.9)
    held = assess(cal, half[1](ys), half[1](vs), half[1](ts))
    assert held["coverage"] == pytest.approx(0.9, abs=0.03)


def test_large_calibration_sets_are_thinned_at_random_and_say_so(sets, monkeypatch):
    import tfue_onnx.evaluate as ev

    est = Estimator(SR, Transform("flips"), seed=0)
    pairs = make_pairs(est.info, [sets["train"]], sr_scale=2)
    full = calibrate_pairs(est, pairs, 0.9)
    assert full.about["calibration_set"]["elements_kept"] == 1.0
    monkeypatch.setattr(ev, "MAX_CALIBRATION_ELEMENTS", 6000)  # of 24576
    thin = calibrate_pairs(est, pairs, 0.9)
    n = thin.about["calibration_set"]
    assert n["elements_kept"] == pytest.approx(6000 / 24576)
    assert 5000 < n["elements"] < 7000 and n["pairs"] == 8
    assert n["sha256"] == full.about["calibration_set"]["sha256"]  # the same set
    assert thin.fit.q == pytest.approx(full.fit.q, rel=0.15)


def test_pairs_given_as_arrays_fit_the_same(sets):
    est = Estimator(SR, Transform("hflip"), seed=0)
    pairs = make_pairs(est.info, [sets["train"]], sr_scale=2)
    loaded = [p.load() for p in pairs]
    as_arrays = calibrate_pairs(est, [(feeds["input"], target) for feeds, target in loaded])
    assert as_arrays.fit == calibrate_pairs(est, pairs).fit
    assert as_arrays.identity == identity(est.describe(), "output")
    with pytest.raises(ValueError, match="calibration pair 0 is a ndarray"):
        calibrate_pairs(est, [loaded[0][1]])
    with pytest.raises(TfueError, match=r"'pair 1'.*differ in shape"):
        calibrate_pairs(est, [loaded[0], (loaded[1][0], loaded[1][1][..., :8])])


def test_ensembles_are_identified_by_their_members_files_wherever_they_lie(tmp_path):
    import shutil

    members = [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "models", f"srresnet_x2_ensemble_{k}.onnx") for k in range(3)]
    copies = []
    for k, m in enumerate(members):
        copies.append(str(tmp_path / f"copy{k}.onnx"))
        shutil.copy(m, copies[-1])
    meta = {"method": "ensemble", "at": ",".join(members), "samples": 3, "level": None}
    made = identity({**meta, "model": members[0], "members": members}, "output")
    moved = {**meta, "at": "elsewhere", "model": copies[0],
             "members": [copies[0], copies[2], copies[1]]}  # moved, others reordered
    assert differences(made, identity(moved, "output")) == []
    swapped = {**moved, "model": copies[1], "members": [copies[1], copies[0], copies[2]]}
    assert differences(made, identity(swapped, "output")) == [
        "model (another file)", "members (another file)"]  # member 0 is the prediction


def test_in_memory_models_and_edited_files_are_refused(tmp_path, sets):
    import onnx

    est = Estimator(SR, Transform("hflip"), seed=0)
    made = calibrate_pairs(est, make_pairs(est.info, [sets["train"]], sr_scale=2), 0.9)
    in_memory = Estimator(onnx.load(SR), Transform("hflip"))
    x = load_image(os.path.join(sets["lr"], "p0.png"), est)
    with pytest.raises(TfueError, match="this run's model was given in memory"):
        made.apply(in_memory(x))
    with pytest.raises(TfueError, match="the Estimator's model was given in memory"):
        calibrate_pairs(in_memory, make_pairs(est.info, [sets["train"]], sr_scale=2))
    path = made.save(str(tmp_path / "c.json"))
    good = json.loads(open(path).read())
    no_model = json.loads(json.dumps(good))
    no_model["identity"]["model"] = None
    with open(path, "w") as f:
        json.dump(no_model, f)
    with pytest.raises(TfueError, match="the calibration's model was given in memory"):
        CalibrationFile.load(path).apply(est(x))
    edits = [("fit", "q", float("nan")), ("fit", "q", -1.0), ("fit", "floor", -1.0),
             ("fit", "knots_e", list(reversed(good["fit"]["knots_e"]))),
             ("fit", "coverage", 1.5), ("fit", "q", "8.9"), ("fit", "q", True),
             ("fit", "q", 1e308), ("fit", "scale", -1.0), ("fit", "coverage", "0.9"),
             ("fit", "knots_s", [-1.0] + good["fit"]["knots_s"][1:]),
             ("identity", "samples", "2"),
             ("identity", "level", True), ("identity", "surprise", 1)]
    for part, key, value in edits:
        data = json.loads(json.dumps(good))
        data[part][key] = value
        with open(path, "w") as f:
            f.write(json.dumps(data).replace("NaN", "NaN"))
        with pytest.raises(TfueError, match="is not a calibration tfue wrote"):
            CalibrationFile.load(path)
    with pytest.raises(TfueError, match="is a folder"):
        CalibrationFile.load(str(tmp_path))


def test_calibrate_refuses_a_png_name_takes_inputs_of_one_name_and_notes_flat_maps(
        tmp_path, cli, sets):
    r = cli("calibrate", SR, sets["train"], "--sr-scale", "2", *D4, "-o", tmp_path / "c.png")
    assert r.exit_code == 2 and "would be the reliability diagram's name too" in r.output
    assert not (tmp_path / "c.png").exists()
    a, b = _photos(tmp_path / "a", 2, 5), _photos(tmp_path / "b", 2, 6)  # p0, p1 twice
    r = cli("calibrate", SR, a, b, "--sr-scale", "2", *D4, "-o", tmp_path / "ab.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ab.json").read_text())["calibration_set"]["pairs"] == 4
    r = cli("evaluate", SR, a, b, "--sr-scale", "2", *D4, "--bootstrap", 0, "--no-pictures",
            "-o", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    r = cli("evaluate", SR, a, b, "--sr-scale", "2", *D4, "--bootstrap", 0, "-o",
            tmp_path / "ev2")
    assert r.exit_code == 2 and "share the name 'p0', which names the files" in r.output
    # A map that is 0 on most elements, with errors 0 there: q = 0 at 50 %, both noted.
    from tfue_onnx.cli import _calibration_notes

    s = np.concatenate([np.zeros(800), np.linspace(0.1, 1, 200)])
    e = np.concatenate([np.zeros(800), np.linspace(0.1, 1, 200)])
    from tfue_onnx.calibrate import Assessment, fit_elements

    f = fit_elements(s, e, 0.5)
    on = Assessment(f)
    on.add_elements(s, e)
    notes = _calibration_notes(CalibrationFile(f, {}, {"on_calibration_set": on.result()}))
    assert f.q == 0 and len(notes) == 2
    assert "q is 0" in notes[0] and "80% of the elements share the smallest" in notes[1]


def test_weight_options_without_weights_are_refused(tmp_path, cli, sets):
    r = cli("run", SR, sets["lr"], *D4, "--weight-strength", 2, "-o", tmp_path / "w")
    assert r.exit_code == 2
    assert "--weight-strength set the loss weights of --weights, which is not given" in r.output
    assert not (tmp_path / "w").exists()


def test_export_takes_a_calibration_path_or_object_and_refuses_anything_else(tmp_path, cli,
                                                                              sets):
    cal_path, _ = _cal(tmp_path, cli, sets, *D4)
    est = Estimator(SR, Transform("d4"))
    est.export(str(tmp_path / "a.onnx"), calibration=str(cal_path))
    est.export(str(tmp_path / "b.onnx"), calibration=CalibrationFile.load(cal_path))
    assert est.exported_outputs[-3:] == ["output.expected_error", "output.lower",
                                         "output.upper"]
    with pytest.raises(ValueError, match="calibration must be a calibration.json path or a "
                                         "CalibrationFile, got dict"):
        est.export(str(tmp_path / "c.onnx"), calibration={"q": 1})
    assert not (tmp_path / "c.onnx").exists()


def test_a_models_weights_are_part_of_its_identity(tmp_path, cli, sets):
    import onnx
    from onnx import numpy_helper

    for k, factor in ((0, 1.0), (1, 1.01)):
        m = onnx.load(SR)
        w = m.graph.initializer[0]
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * factor, w.name))
        os.makedirs(tmp_path / f"d{k}")
        onnx.save(m, str(tmp_path / f"d{k}" / "m.onnx"), save_as_external_data=True,
                  all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    a, b = str(tmp_path / "d0" / "m.onnx"), str(tmp_path / "d1" / "m.onnx")
    assert open(a, "rb").read() == open(b, "rb").read()  # only the weights differ
    assert model_digest(a) != model_digest(b)
    import shutil

    shutil.copytree(tmp_path / "d0", tmp_path / "d2")
    assert model_digest(str(tmp_path / "d2" / "m.onnx")) == model_digest(a)  # moved
    # rank keeps scores by the model's hash, not its path: another model there is new work
    r = cli("rank", a, sets["lr"], *D4, "-o", tmp_path / "r")
    assert r.exit_code == 0, r.output
    shutil.copy(tmp_path / "d1" / "m.data", tmp_path / "d0" / "m.data")
    r = cli("rank", a, sets["lr"], *D4, "-o", tmp_path / "r")
    assert r.exit_code == 2 and "holds scores of other settings (model differ)" in r.output


def test_sweep_takes_inputs_of_one_name_from_two_folders(tmp_path, cli):
    a, b = _photos(tmp_path / "a", 1, 7), _photos(tmp_path / "b", 1, 8)  # p0 twice
    r = cli("sweep", SR, a, b, "--sr-scale", 2, "--methods", "dropout", "--rates", "0.1",
            "--at", "0.5", "-n", 2, "--bootstrap", 0, "-o", tmp_path / "sw")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())


def test_mc_dropout_calibrations_compare_the_nodes_that_run(tmp_path, cli, sets):
    """All Dropout nodes, the one node named, and no --rate or the node's own rate run the
    same graph: one calibration serves them; another rate is refused, named."""
    mc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models",
                      "srresnet_x2_mcdropout.onnx")
    out = tmp_path / "mc.json"
    r = cli("calibrate", mc, sets["train"], "--sr-scale", 2, "--method", "mc-dropout", "-n", 2,
            "--seed", 0, "-o", out)
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["identity"]["dropout_nodes"] == {"dropout": 0.1}
    for extra in ((), ("--at", "dropout"), ("--rate", "0.1"), ("--at", "dropout", "--rate",
                                                               "0.1")):
        r = cli("run", mc, sets["lr"], "--method", "mc-dropout", "-n", 2, *extra,
                "--calibration", out, "--no-pictures", "-o", tmp_path / f"r{len(extra)}",
                "--force")
        assert r.exit_code == 0, (extra, r.output)
    r = cli("run", mc, sets["lr"], "--method", "mc-dropout", "-n", 2, "--rate", "0.2",
            "--calibration", out, "-o", tmp_path / "r9")
    assert r.exit_code == 2
    assert "dropout_nodes (made for {'dropout': 0.1}, here {'dropout': 0.2})" in r.output
