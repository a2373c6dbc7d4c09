"""tfue evaluate and tfue sweep, on PP-OCRv4's detector with honest targets and on toys."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import toys
from conftest import DET_MEAN, DET_STD
from tfue_onnx import Estimator, Noise, TfueError
from tfue_onnx.evaluate import evaluate, make_pairs
from tfue_onnx.model import inspect_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NORM = ("--mean", DET_MEAN, "--std", DET_STD)


@pytest.fixture(scope="module")
def ocr_pairs(ppocr_det, tmp_path_factory):
    """Degraded text images and the detector's clean outputs (tools/ocr_pairs.py)."""
    out = tmp_path_factory.mktemp("ocr")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "ocr_pairs.py"), ppocr_det,
                        str(out), "--count", "4", "--size", "64x128"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out / "inputs")) == [f"text{k:02d}.png" for k in range(4)]
    return out


def test_evaluate_cli(cli, ppocr_det, ocr_pairs, tmp_path):
    out = tmp_path / "eval"
    r = cli("evaluate", ppocr_det, ocr_pairs / "inputs", "--targets", ocr_pairs / "targets",
            "--method", "noise", "--at", "0.5", "--sigma", 0.2, "--seed", 0, *NORM,
            "--out", out)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[1].split() == ["error", "pixel", "block", "mean", "ause", "aurg"]
    assert [ln[:13].strip() for ln in lines[2:6]] == ["L1", "L1 baseline", "L2", "L2 baseline"]
    assert ("(4 images; pixel, block, AUSE, AURG: per image, then averaged; mean: over the "
            "images' means; [95% bootstrap interval over images, 1000 resamples, seed 0])"
            ) in r.stdout
    assert "blocks: local centre of mass at --block-sigma 2 " in r.stdout
    assert "L1 pooled over all pixels of all images: pixel_pooled " in r.stdout
    assert "baseline: gradient energy of the output" in r.stdout
    progress = [ln for ln in r.stderr.splitlines() if "[1/4]" in ln]  # no terminal: lines
    assert len(progress) == 1 and progress[0].endswith("] text00.png"), r.stderr
    assert sorted(os.listdir(out)) == ["metrics.csv", "metrics.json"] + \
        [f"text{k:02d}.eval.png" for k in range(4)]
    m = json.loads((out / "metrics.json").read_text())
    table = m["table"]
    for kind in ("l1", "l2"):
        for row in (table[kind], table["baseline"][kind]):
            for col in ("mean", "block", "pixel", "pixel_spearman", "pixel_pooled",
                        "block_pooled"):
                assert -1 <= row[col] <= 1
            # AUSE + AURG = (random - oracle) area >= 0: the oracle beats random.
            assert row["ause"] >= 0 and np.isfinite(row["aurg"])
            assert row["ause"] + row["aurg"] >= 0
        for col, (lo, hi) in table["intervals"][kind].items():
            assert lo <= table[kind][col] <= hi, col
        # The primary pixel number is the mean of the per-image ones stored beside.
        per = [img[f"pixel_{kind}"] for img in m["images"]]
        assert table[kind]["pixel"] == pytest.approx(np.mean(per))
        assert table["per_image"][kind]["pixel"] == pytest.approx(per)
    assert table["images"] == 4 and len(m["images"]) == 4
    assert table["block_sigma"] == 2.0 and table["bootstrap"]["resamples"] == 1000
    csv = (out / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("error,map,pixel,pixel_low,pixel_high,block,") and len(csv) == 5
    assert [c.split(",")[:2] for c in csv[1:]] == [["l1", "method"], ["l1", "baseline"],
                                                   ["l2", "method"], ["l2", "baseline"]]
    assert float(csv[1].split(",")[2]) == pytest.approx(table["l1"]["pixel"], rel=1e-5)
    from PIL import Image
    with Image.open(out / "text00.eval.png") as im:  # three labelled panels side by side
        assert im.size[0] > 2 * im.size[1]
    assert m["images"][0]["picture_map"] == [64, 128]  # H x W as the output has them
    # Existing results are not overwritten.
    r = cli("evaluate", ppocr_det, ocr_pairs / "inputs", "--targets", ocr_pairs / "targets",
            "--method", "noise", *NORM, "--out", out)
    assert r.exit_code == 2 and "already exists" in r.stderr


def test_evaluate_matches_metrics_by_hand(ppocr_det, ocr_pairs):
    from tfue_onnx import metrics
    from tfue_onnx.io import ImageOptions
    from tfue_onnx.segment import block_means, grid_blocks

    info = inspect_model(ppocr_det)
    pairs = make_pairs(info, [ocr_pairs / "inputs"], targets=str(ocr_pairs / "targets"),
                       options=ImageOptions(mean=(0.485, 0.456, 0.406),
                                            std=(0.229, 0.224, 0.225)))
    assert [p.name for p in pairs] == [f"text{k:02d}" for k in range(4)]
    result = evaluate(Estimator(ppocr_det, Noise(0.3, at="0.5"), seed=0), pairs[:1], grid=8)
    # The same run by hand: a fresh estimator with the same seed draws the same noise.
    feeds, target = pairs[0].load()
    res = Estimator(ppocr_det, Noise(0.3, at="0.5"), seed=0)(feeds)
    var, err = res.variance[0, 0], np.abs(res.output - target)[0, 0]
    labels = grid_blocks(var.shape, 8)
    row = result["table"]["l1"]
    assert result["images"][0]["mean_l1"] == pytest.approx(float(err.mean()), rel=1e-6)
    assert row["pixel"] == pytest.approx(metrics.pearson(var, err), rel=1e-6)
    assert row["block"] == pytest.approx(metrics.pearson(block_means(var, labels),
                                                         block_means(err, labels)), rel=1e-6)
    assert row["ause"] == pytest.approx(metrics.sparsification(var, err, "l1")["ause"],
                                        rel=1e-6)
    # One image: the per-image and the pooled numbers agree.
    assert row["pixel_pooled"] == pytest.approx(row["pixel"], rel=1e-9)


def test_sr_pairs_and_npz_pairs(tmp_path):
    from PIL import Image
    model = toys.upscale_net(tmp_path / "up.onnx")
    rng = np.random.default_rng(0)
    hr = (rng.random((33, 41, 3)) * 255).astype(np.uint8)
    Image.fromarray(hr).save(tmp_path / "hr.png")
    info = inspect_model(model)
    [pair] = make_pairs(info, [tmp_path / "hr.png"], sr_scale=2)
    feeds, target = pair.load()
    assert feeds["x"].shape == (1, 3, 16, 20) and target.shape == (1, 3, 32, 40)
    lr = Image.fromarray(hr).crop((0, 0, 40, 32)).resize((20, 16), Image.BICUBIC)
    np.testing.assert_allclose(feeds["x"][0].transpose(1, 2, 0), np.asarray(lr) / 255,
                               atol=1e-6)
    np.testing.assert_allclose(target[0].transpose(1, 2, 0), hr[:32, :40] / 255, atol=1e-6)
    res = evaluate(Estimator(model, Noise(0.05, at="c"), seed=0), [pair])
    assert res["table"]["images"] == 1
    np.savez(tmp_path / "p.npz", x=feeds["x"][0], target=target[0])
    [npz_pair] = make_pairs(info, [tmp_path / "p.npz"])
    f2, t2 = npz_pair.load()
    np.testing.assert_array_equal(f2["x"], feeds["x"])
    np.testing.assert_array_equal(t2, target)
    with pytest.raises(TfueError, match="has no target"):
        make_pairs(info, [tmp_path / "hr.png"])


def test_sweep_resumes_and_picks_best(cli, ppocr_det, ocr_pairs, tmp_path, own_cache):
    out = tmp_path / "sweep"
    args = ["sweep", ppocr_det, ocr_pairs / "inputs", "--targets", ocr_pairs / "targets",
            "--methods", "noise", "--at", "0.25,0.5", "-n", 4, *NORM, "--out", out]
    r = cli(*args, "--sigmas", "0.1", "--no-cache")
    assert r.exit_code == 0, r.output
    assert not own_cache.exists()  # --no-cache: nothing written
    lines = r.stderr.splitlines()  # two points, with progress lines and intervals
    assert len(lines) == 2 and all(re.match(r"\[\d/2\] noise at .* level 0.1: pixel_l1 = "
                                            r"-?\d\.\d{4} \[-?\d\.\d{4}, -?\d\.\d{4}\]"
                                            r"( \(ETA \d+s\))?$", ln)
                                   for ln in lines), lines
    assert "(ETA " in lines[0] and "ETA" not in lines[1]  # the last point has none
    # A second run with one more level finishes only the new points.
    r = cli(*args, "--sigmas", "0.1,0.5")
    assert r.exit_code == 0, r.output
    assert len([f for f in os.listdir(own_cache) if f.endswith(".json")]) == 2  # 2 locations
    progress = [ln for ln in r.stderr.splitlines() if ln.startswith("[")]
    assert len(progress) == 2 and all("level 0.5" in ln for ln in progress)
    assert progress[-1].startswith("[4/4]")
    lines = (out / "sweep.jsonl").read_text().splitlines()
    assert len(lines) == 5 and "config" in json.loads(lines[0])
    summary = json.loads((out / "sweep.json").read_text())
    assert len(summary["points"]) == 4
    best = json.loads((out / "best.json").read_text())
    values = [p["table"]["l1"]["pixel"] for p in summary["points"]]
    assert best["value"] == pytest.approx(max(values)) and best["metric"] == "pixel_l1"
    lo, hi = best["interval"]
    assert lo <= best["value"] <= hi
    for other in best["not_separated"]:  # listed only where the intervals overlap
        assert other["interval"][0] <= hi and other["interval"][1] >= lo
    assert len(best["not_separated"]) <= 3
    assert "gradient energy" in summary["baseline"]["map"]
    assert sum("baseline" in p for p in summary["points"]) == 1
    header = (out / "sweep.csv").read_text().splitlines()[0]
    assert header.endswith(",pixel_l1_low,pixel_l1_high") and "pixel_pooled_l1" in header
    assert (out / "sweep_noise.png").stat().st_size > 5000
    assert len((out / "sweep.csv").read_text().splitlines()) == 5
    # Other settings in the same folder are refused without --force.
    r = cli(*args, "--sigmas", "0.1", "--seed", 3)
    assert r.exit_code == 2 and "holds a sweep with other settings" in r.stderr

    # --at auto takes the best point of the sweep, and says so.
    r = cli("run", ppocr_det, ocr_pairs / "inputs" / "text00.png", "--method", "noise",
            "--at", "auto", "--sweep-result", out, *NORM, "--out", tmp_path / "run", "--json")
    assert r.exit_code == 0, r.output
    assert f"--at auto picked {best['at']} at level {best['level']:g}" in r.stderr
    s = json.loads(r.stdout)
    assert s["location"] == best["at"] and s["level"] == best["level"]
    assert s["at_auto"]["from"] == "sweep" and s["at_auto"]["value"] == best["value"]
    assert s["at_auto"]["interval"] == best["interval"]
    # Asked for the method the sweep did not try: one line naming what to do.
    r = cli("run", ppocr_det, ocr_pairs / "inputs" / "text00.png", "--method", "dropout",
            "--at", "auto", "--sweep-result", out, *NORM, "--out", tmp_path / "run2")
    assert r.exit_code == 2 and "has no point for dropout" in r.stderr
    assert "sweep --methods dropout" in r.stderr
    # The same folder with a smaller grid: only its points count, the others stay apart.
    r = cli(*args, "--sigmas", "0.5")
    assert r.exit_code == 0, r.output
    assert not [ln for ln in r.stderr.splitlines() if ln.startswith("[")]  # all done
    small = json.loads((out / "sweep.json").read_text())
    assert {p["level"] for p in small["points"]} == {0.5} and len(small["points"]) == 2
    assert small["points_of_other_grids"] == 2 and "2 finished point(s) of another grid" \
        in r.stdout
    assert json.loads((out / "best.json").read_text())["level"] == 0.5
    assert len((out / "sweep.jsonl").read_text().splitlines()) == 5  # nothing lost


def test_at_auto_takes_the_best_of_the_method_asked_for(cli, ppocr_det, ocr_pairs, tmp_path):
    out = tmp_path / "sweep"
    r = cli("sweep", ppocr_det, ocr_pairs / "inputs", "--targets", ocr_pairs / "targets",
            "--methods", "noise,dropout", "--at", "0.25,0.5", "--sigmas", "0.1", "--rates",
            "0.1", "-n", 4, *NORM, "--bootstrap", 0, "--out", out)
    assert r.exit_code == 0, r.output
    points = json.loads((out / "sweep.json").read_text())["points"]
    overall = json.loads((out / "best.json").read_text())
    other = "dropout" if overall["method"] == "noise" else "noise"
    mine = [p for p in points if p["method"] == other]
    want = max(mine, key=lambda p: p["table"]["l1"]["pixel"])
    r = cli("run", ppocr_det, ocr_pairs / "inputs" / "text00.png", "--method", other,
            "--at", "auto", "--sweep-result", out, *NORM, "--out", tmp_path / "run", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["method"], s["location"], s["level"]) == (other, want["at"], want["level"])
    assert s["at_auto"]["value"] == pytest.approx(want["table"]["l1"]["pixel"])
    assert f"the best {other} pixel_l1" in r.stderr


def test_at_auto_without_a_sweep(cli, toy, tmp_path, x8):
    np.save(tmp_path / "x.npy", x8)
    r = cli("run", toy(), tmp_path / "x.npy", "--method", "dropout", "--at", "auto",
            "--tolerance", 0.1, "--out", tmp_path / "o", "--json")
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.stderr.splitlines() if "--at auto picked" in ln)
    assert "agrees best with infer-transformation's (d4)" in line and "<= 10%" in line
    # One progress line per location tried, the last without an ETA.
    steps = [ln for ln in r.stderr.splitlines() if ln.startswith("tfue: --at auto [")]
    assert steps and steps[-1].startswith(f"tfue: --at auto [{len(steps)}/{len(steps)}] ")
    assert all("(ETA " in ln for ln in steps[:-1]) and "ETA" not in steps[-1]
    assert "that agreement is weak" in line  # a random toy: nothing agrees
    s = json.loads(r.stdout)
    assert s["location"] in ("c1", "r1", "c2") and 0 < s["level"] <= 0.5  # intermediate
    auto = s["at_auto"]  # what the choice measured is kept with the results
    assert auto["from"] == "agreement" and auto["at"] == s["location"]
    assert -1 <= auto["agreement"] <= 1 and auto["reference"] == "d4" and auto["sample_runs"] > 0
    saved = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert saved["at_auto"]["agreement"] == auto["agreement"]
    r = cli("run", toy(), tmp_path / "x.npy", "--method", "dropout", "--at", "auto",
            "--tolerance", 1e-9, "--out", tmp_path / "o2")
    assert r.exit_code == 2 and "no location and level keeps the mean output" in r.stderr


def test_bootstrap_option(cli, tmp_path):
    from PIL import Image

    model = toys.upscale_net(tmp_path / "up.onnx")
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray((rng.random((24, 20, 3)) * 255).astype(np.uint8)).save(
            tmp_path / f"hr{k}.png")
    pngs = [tmp_path / f"hr{k}.png" for k in range(3)]
    r = cli("evaluate", model, *pngs, "--sr-scale", 2, "--method", "noise", "--at", "c",
            "--sigma", 0.05, "--bootstrap", 7, "--out", tmp_path / "bad")
    assert r.exit_code == 2 and "--bootstrap must be 0 or at least 100, got 7" in r.stderr
    assert not (tmp_path / "bad").exists()
    r = cli("evaluate", model, *pngs, "--sr-scale", 2, "--method", "noise", "--at", "c",
            "--sigma", 0.05, "--bootstrap", 0, "--out", tmp_path / "none")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "none" / "metrics.json").read_text())
    assert "intervals" not in m["table"] and "bootstrap" not in m["table"]
    assert "[" not in r.stdout.splitlines()[2]  # no intervals printed
    row = (tmp_path / "none" / "metrics.csv").read_text().splitlines()[1].split(",")
    assert row[:2] == ["l1", "method"] and row[3:5] == ["", ""]
    r = cli("evaluate", model, *pngs, "--sr-scale", 2, "--method", "noise", "--at", "c",
            "--sigma", 0.05, "--bootstrap", 100, "--seed", 4, "--out", tmp_path / "b50")
    m = json.loads((tmp_path / "b50" / "metrics.json").read_text())
    assert m["table"]["bootstrap"] == {"resamples": 100, "seed": 4, "level": 0.95}


def test_bootstrap_is_seeded_by_the_runs_own_seed(tmp_path):
    from PIL import Image

    model = toys.upscale_net(tmp_path / "up.onnx")
    rng = np.random.default_rng(1)
    for k in range(5):
        Image.fromarray((rng.random((24, 20, 3)) * 255).astype(np.uint8)).save(
            tmp_path / f"hr{k}.png")
    info = inspect_model(model)
    pairs = make_pairs(info, [tmp_path / f"hr{k}.png" for k in range(5)], sr_scale=2)
    from tfue_onnx import Transform
    a = evaluate(Estimator(model, Transform("d4")), pairs, bootstrap=200)  # no seed given
    b = evaluate(Estimator(model, Transform("d4")), pairs, bootstrap=200)
    seed_a = a["metadata"]["seed"]
    assert a["table"]["bootstrap"]["seed"] == seed_a
    # The recorded seed repeats the intervals.
    c = evaluate(Estimator(model, Transform("d4"), seed=seed_a), pairs, bootstrap=200)
    assert c["table"]["intervals"] == a["table"]["intervals"]
    assert b["table"]["bootstrap"]["seed"] == b["metadata"]["seed"]


def _npz_pairs(model, folder, arrays) -> list:
    """(input, target) arrays written as ``folder``/p0.npz, p1.npz, ...; their pairs."""
    folder.mkdir()
    for k, (x, target) in enumerate(arrays):
        np.savez(folder / f"p{k}.npz", x=x, target=target)
    return make_pairs(inspect_model(model), [folder])


def _segmenter_pairs(tmp_path):
    """The softmax segmenter and three random pairs for it."""
    seg = toys.softmax_segmenter(tmp_path / "seg.onnx")
    rng = np.random.default_rng(0)
    return seg, _npz_pairs(seg, tmp_path / "seg_pairs",
                           [(rng.normal(0, 1, (3, 10, 12)).astype(np.float32),
                             rng.random((4, 10, 12), dtype=np.float32)) for _ in range(3)])


def test_evaluate_reads_the_runs_own_image_axes(tmp_path):
    # NHWC with 8 channels: the layout guess would read W x C maps; the run's spatial
    # axes say H x W.
    model = toys.nhwc_net(tmp_path / "nhwc8.onnx")
    rng = np.random.default_rng(0)
    pairs = _npz_pairs(model, tmp_path / "pairs",
                       [(rng.random((12, 10, 3), dtype=np.float32),
                         rng.random((12, 10, 8), dtype=np.float32)) for _ in range(3)])
    res = evaluate(Estimator(model, Noise(0.3, at="t"), samples=4, seed=0), pairs,
                   out_dir=tmp_path, bootstrap=0)
    from tfue_onnx import metrics
    per = []
    for k, pair in enumerate(pairs):
        feeds, target = pair.load()
        r = Estimator(model, Noise(0.3, at="t"), samples=4, seed=0)(feeds)
        assert r.metadata["spatial_axes"] == {"y": [1, 2]}
        v, e = r.variance[0].mean(-1), np.abs(r.output - target)[0].mean(-1)  # 12 x 10
        per.append(metrics.pearson(v, e))
    assert res["table"]["l1"]["pixel"] == pytest.approx(np.mean(per), rel=1e-6)
    assert (tmp_path / "p0.eval.png").stat().st_size > 5000
    assert res["images"][0]["picture_map"] == [12, 10]  # the H x W axes of an NHWC output
    maps = metrics.image_maps(np.zeros((2, 6, 5, 8)), hw_axes=(1, 2))
    assert len(maps) == 2 and maps[0].shape == (6, 5)


def test_vector_outputs_get_no_blocks_and_no_baseline(tmp_path):
    model = toys.classifier_net(tmp_path / "cls.onnx", softmax=False)
    info = inspect_model(model)
    rng = np.random.default_rng(0)
    shape = [d if isinstance(d, int) else 1 for d in info.inputs[0].shape][1:]
    pairs = _npz_pairs(model, tmp_path / "pairs",
                       [(rng.random(shape, dtype=np.float32), rng.random(4, dtype=np.float32))
                        for _ in range(3)])
    res = evaluate(Estimator(model, Noise(0.2, at="0.5"), samples=4, seed=0), pairs,
                   out_dir=tmp_path)
    t = res["table"]
    assert np.isnan(t["l1"]["block"]) and np.isnan(t["l1"]["block_pooled"])
    assert "baseline" not in t and np.isfinite(t["l1"]["pixel"])
    assert not any("picture" in item for item in res["images"])
    assert not list(tmp_path.glob("*.eval.png"))


def test_a_float32_constant_error_counts_as_constant():
    out = np.random.default_rng(0).random((1, 1, 8, 8)).astype(np.float32)
    tgt = out + np.float32(0.1)  # the error is 0.1 up to float32 rounding
    var = np.random.default_rng(1).random((1, 1, 8, 8))
    t = metrics_table([var], [out], [tgt])
    assert t["skipped"] == {"l1": 1, "l2": 1} and np.isnan(t["l1"]["pixel"])


def metrics_table(*args, **kw):
    from tfue_onnx import metrics
    return metrics.table(*args, **kw)


def test_block_and_bootstrap_options_are_checked_before_any_work(cli, tmp_path):
    model = toys.upscale_net(tmp_path / "up.onnx")
    from PIL import Image
    Image.fromarray(np.zeros((24, 20, 3), np.uint8)).save(tmp_path / "hr.png")
    for opt, value, text in (("--block-grid", 0, "--block-grid must be a whole number of "
                                                   "pixels >= 1, got 0"),
                             ("--block-grid", -1, "--block-grid must be"),
                             ("--block-sigma", 0, "--block-sigma must be > 0 and at most "
                                                  "1000 px, got 0.0"),
                             ("--bootstrap", 1, "--bootstrap must be 0 or at least 100")):
        r = cli("evaluate", model, tmp_path / "hr.png", "--sr-scale", 2, "--method", "noise",
                "--at", "c", opt, value, "--out", tmp_path / "ev")
        assert r.exit_code == 2 and text in r.stderr, (opt, r.stderr)
        assert "sampling" not in r.stderr and not (tmp_path / "ev").exists()


def test_a_failed_sweep_leaves_no_folder(cli, tmp_path):
    model = toys.upscale_net(tmp_path / "up.onnx")
    from PIL import Image
    Image.fromarray(np.zeros((24, 20, 3), np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "t").mkdir()
    np.save(tmp_path / "t" / "x.npy", np.zeros((3, 5, 5), np.float32))  # wrong shape
    r = cli("sweep", model, tmp_path / "x.png", "--targets", tmp_path / "t", "--methods",
            "noise", "--at", "c", "--sigmas", "0.1", "-n", 2, "--out", tmp_path / "sw")
    assert r.exit_code == 2 and "target has shape" in r.stderr, r.stderr
    assert not (tmp_path / "sw").exists()
    r = cli("sweep", model, tmp_path / "x.png", "--targets", tmp_path / "t", "--methods",
            "noise", "--block-sigma", 0, "--out", tmp_path / "sw")
    assert r.exit_code == 2 and "--block-sigma must be > 0 and at most" in r.stderr
    assert not (tmp_path / "sw").exists()


def test_evaluate_entropy_on_a_segmenter_and_a_classifier(tmp_path):
    from tfue_onnx import Entropy, metrics

    rng = np.random.default_rng(0)
    seg, pairs = _segmenter_pairs(tmp_path)
    res = evaluate(Estimator(seg, Entropy()), pairs, out_dir=tmp_path, bootstrap=0)
    per = []
    for pair in pairs:
        feeds, target = pair.load()
        r = Estimator(seg, Entropy())(feeds)
        assert r.entropy.shape == (1, 10, 12)
        per.append(metrics.pearson(r.entropy[0], np.abs(r.output - target)[0].mean(0)))
    assert res["table"]["l1"]["pixel"] == pytest.approx(np.mean(per), rel=1e-6)
    assert (tmp_path / "p0.eval.png").stat().st_size > 5000
    assert res["images"][0]["picture_map"] == [10, 12]  # the entropy map's H x W
    # A classifier's entropy is one number per input: only the correlation over inputs.
    cls = toys.classifier_net(tmp_path / "cls.onnx")
    pairs = _npz_pairs(cls, tmp_path / "cls_pairs",
                       [(rng.random((3, 8, 8), dtype=np.float32),
                         np.eye(4, dtype=np.float32)[k % 4]) for k in range(4)])
    res = evaluate(Estimator(cls, Entropy()), pairs, bootstrap=0)
    t = res["table"]
    assert np.isnan(t["l1"]["pixel"]) and np.isnan(t["l1"]["ause"]) and -1 <= t["l1"]["mean"] <= 1
    assert t["skipped"] == {"l1": 0, "l2": 0} and "baseline" not in t


def test_constant_errors_leave_ause_out_too_and_float16_rounding_counts_as_constant():
    from tfue_onnx import metrics

    rng = np.random.default_rng(0)
    outs = [rng.random((1, 1, 8, 8)).astype(np.float16) for _ in range(3)]
    tgts = [outs[0] + np.float16(0.1), outs[1] + rng.random((1, 1, 8, 8)).astype(np.float16),
            outs[2] - np.float16(2.0)]
    var = [rng.random((1, 1, 8, 8)) for _ in range(3)]
    t = metrics.table(var, outs, tgts, grid=2)
    assert t["skipped"] == {"l1": 2, "l2": 2}
    for col in ("pixel", "ause", "aurg", "block"):
        assert np.isnan(t["per_image"]["l1"][col][0]) and np.isnan(t["per_image"]["l1"][col][2])
        assert t["l1"][col] == pytest.approx(t["per_image"]["l1"][col][1])


def test_choose_reads_the_runs_image_axes():
    from tfue_onnx.choose import per_image_agreement

    rng = np.random.default_rng(0)
    a = rng.random((1, 12, 10, 16))  # NHWC, 16 channels
    b = a + rng.random(a.shape) * 0.5
    hw = (1, 2)
    by_hand = np.corrcoef(a[0].mean(-1).ravel(), b[0].mean(-1).ravel())[0, 1]
    assert per_image_agreement(a, b, hw) == pytest.approx(by_hand)
    assert per_image_agreement(a, b) != pytest.approx(by_hand)  # the guess reads W x C


def test_more_bad_options_refused_before_work(cli, tmp_path):
    model = toys.upscale_net(tmp_path / "up.onnx")
    from PIL import Image
    Image.fromarray(np.zeros((24, 20, 3), np.uint8)).save(tmp_path / "hr.png")
    r = cli("evaluate", model, tmp_path / "hr.png", "--sr-scale", 2, "--method", "noise",
            "--at", "c", "--block-sigma", "inf", "--out", tmp_path / "ev")
    assert r.exit_code == 2 and "--block-sigma must be > 0 and at most 1000" in r.stderr
    assert not (tmp_path / "ev").exists()
    for levels in (["--sigmas", "0.1,nan"], ["--rates", "0.1,1.5"]):
        r = cli("sweep", model, tmp_path / "hr.png", "--sr-scale", 2, "--methods",
                "noise" if levels[0] == "--sigmas" else "dropout", "--at", "c", *levels,
                "--out", tmp_path / "sw")
        assert r.exit_code == 2 and f"Hint: give {levels[0]} as numbers" in r.stderr, r.stderr
        assert not (tmp_path / "sw").exists()
    r = cli("sweep", model, tmp_path / "hr.png", "--sr-scale", 2, "--at", "c", "--at-count", 2,
            "--out", tmp_path / "sw")
    assert r.exit_code == 2 and "give --at or --at-count, not both" in r.stderr


def test_a_failed_evaluation_leaves_none_of_its_pictures(cli, tmp_path):
    model = toys.upscale_net(tmp_path / "up.onnx")
    from PIL import Image
    (tmp_path / "in").mkdir()
    (tmp_path / "t").mkdir()
    for k in range(3):
        Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "in" / f"a{k}.png")
        shape = (3, 16, 20) if k < 2 else (3, 5, 5)  # the last target is wrong
        np.save(tmp_path / "t" / f"a{k}.npy", np.zeros(shape, np.float32))
    r = cli("evaluate", model, tmp_path / "in", "--targets", tmp_path / "t", "--method",
            "noise", "--at", "c", "--out", tmp_path / "ev")
    assert r.exit_code == 2 and "target has shape" in r.stderr
    assert not (tmp_path / "ev").exists()


def test_image_targets_for_an_output_without_a_declared_shape(tmp_path):
    import onnx
    from tfue_onnx.evaluate import _image_target
    from PIL import Image

    class Out:
        shape = None
    im = Image.fromarray(np.full((6, 5, 3), 255, np.uint8))
    t = _image_target(im, Out(), 1 / 255)
    assert t.shape == (1, 3, 6, 5) and float(t.max()) == 1.0
    assert _image_target(im.convert("L"), Out(), 1 / 255).shape == (1, 1, 6, 5)
    assert onnx  # imported for the model helpers above


def test_batched_pairs_give_one_entry_per_image(tmp_path):
    from tfue_onnx import metrics

    model = toys.pointwise_net(tmp_path / "pw.onnx")
    rng = np.random.default_rng(0)
    pairs = _npz_pairs(model, tmp_path / "pairs",
                       [(rng.random((2, 3, 3, 20), dtype=np.float32),
                         rng.random((2, 2, 3, 20), dtype=np.float32)) for _ in range(2)])
    res = evaluate(Estimator(model, Noise(0.2, at="c"), samples=4, seed=0), pairs,
                   bootstrap=0)
    assert [i["name"] for i in res["images"]] == ["p0[0]", "p0[1]", "p1[0]", "p1[1]"]
    assert res["table"]["images"] == 4
    per = []
    for pair in pairs:
        feeds, target = pair.load()
        r = Estimator(model, Noise(0.2, at="c"), samples=4, seed=0)(feeds)
        for b in range(2):
            per.append(metrics.pearson(r.variance[b].mean(0),
                                       np.abs(r.output - target)[b].mean(0)))
    assert [i["pixel_l1"] for i in res["images"]] == pytest.approx(per)
    assert res["table"]["l1"]["pixel"] == pytest.approx(np.mean(per))


def test_a_softmax_segmenter_gets_no_edge_baseline_or_noise_blocks(tmp_path):
    from tfue_onnx import Entropy

    seg, pairs = _segmenter_pairs(tmp_path)
    res = evaluate(Estimator(seg, Entropy()), pairs, bootstrap=0)
    assert "baseline" not in res["table"] and np.isnan(res["table"]["l1"]["block"])
    assert any("channel mean is constant" in n for n in res["notes"])
    grid = evaluate(Estimator(seg, Entropy()), pairs, bootstrap=0, grid=4)
    assert np.isfinite(grid["table"]["l1"]["block"])  # grid blocks do not need content


def test_a_model_cast_to_float16_at_the_end_verifies(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    model = toys.conv_net(tmp_path / "c.onnx")
    model = onnx.load(model) if isinstance(model, str) else model
    g = model.graph
    out = g.output[0]
    g.node.append(helper.make_node("Cast", [out.name], ["y16"], to=TensorProto.FLOAT16))
    g.output.remove(out)
    g.output.append(helper.make_tensor_value_info(
        "y16", TensorProto.FLOAT16, [d.dim_param or d.dim_value for d in
                                     out.type.tensor_type.shape.dim]))
    onnx.save(model, str(tmp_path / "c16.onnx"))
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32) * 4
    from tfue_onnx import Transform
    for spec, kw in ((Noise(0.1, at="0.5"), {"samples": 4}), (Transform("d4"), {})):
        r = Estimator(str(tmp_path / "c16.onnx"), spec, seed=0, **kw)(x)
        assert r.output.dtype == np.float16 and float(np.mean(r.variance)) > 0


def test_at_auto_on_a_fixed_non_square_input_uses_flips(tmp_path):
    from tfue_onnx.choose import choose_by_agreement

    model = toys.conv_net(tmp_path / "c.onnx")
    import onnx
    m = onnx.load(model) if isinstance(model, str) else model
    for vi in (m.graph.input[0],):  # fix the input at 1 x 3 x 8 x 12
        for d, v in zip(vi.type.tensor_type.shape.dim, (1, 3, 8, 12)):
            d.Clear()
            d.dim_value = v
    for vi in m.graph.output:
        vi.type.tensor_type.ClearField("shape")
    onnx.save(m, str(tmp_path / "fixed.onnx"))
    x = np.random.default_rng(0).random((1, 3, 8, 12), dtype=np.float32)
    pick = choose_by_agreement(str(tmp_path / "fixed.onnx"), "noise", [x], samples=4,
                               at_count=2, levels=(0.05, 0.1))
    assert pick["reference"] == "flips" and "infer-transformation's (flips)" in pick["reason"]


def test_tolerability_of_an_all_zero_output_is_said_in_words():
    from tfue_onnx.evaluate import tolerability_line
    from tfue_onnx.metrics import tolerability

    zero = np.zeros((1, 1, 4, 4), np.float32)
    t = tolerability(zero + 0.01, zero)
    assert t["relative_change"] == float("inf")
    assert tolerability_line(t) == ("tolerability: mean |mean - output| = 0.01 (the output "
                                    "is 0 everywhere: no relative change)")
    t = tolerability(np.full(4, 1.02), np.ones(4))
    assert tolerability_line(t) == ("tolerability: mean |mean - output| = 0.02 (2.00% of "
                                    "mean |output|)")


def test_evaluate_checks_image_options_before_any_work(cli, ppocr_det, ocr_pairs, tmp_path):
    """Issue 12: a --std of the wrong length is one line and exit 2, before progress."""
    out = tmp_path / "ev"
    r = cli("evaluate", ppocr_det, ocr_pairs / "inputs", "--targets", ocr_pairs / "targets",
            "--method", "noise", "-n", 2, "--std", "0.5,0.5", "--out", out)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: --std has 2 values") and "Hint:" in lines[0]
    assert not out.exists()


def test_output_image_draws_an_image_as_an_image():
    """Issue 12: eval's output panel is the output drawn as an image, not false colour."""
    from tfue_onnx.evaluate import output_image

    rgb = np.random.default_rng(0).random((1, 3, 6, 5)).astype(np.float32)
    img = output_image(rgb, (2, 3))
    assert img.shape == (6, 5, 3)
    np.testing.assert_allclose(img, rgb[0].transpose(1, 2, 0), rtol=1e-6)
    nhwc = np.moveaxis(rgb, 1, -1)
    np.testing.assert_allclose(output_image(nhwc, (1, 2)), img, rtol=1e-6)
    grey = output_image(rgb[:, :1] * 40 - 7, (2, 3))  # outside [0, 1]: stretched
    assert grey.shape == (6, 5) and grey.min() == 0 and grey.max() == 1
    assert output_image(np.zeros((1, 10)), False) is None


def test_a_target_of_the_wrong_shape_is_named(tmp_path, cli):
    model = toys.upscale_net(tmp_path / "up.onnx")
    from PIL import Image

    (tmp_path / "in").mkdir()
    (tmp_path / "tg").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in" / f"{name}.png")
    np.save(tmp_path / "tg" / "a.npy", np.zeros((1, 3, 16, 16), np.float32))
    np.save(tmp_path / "tg" / "b.npy", np.zeros((1, 3, 10, 10), np.float32))
    r = cli("evaluate", model, tmp_path / "in", "--targets", tmp_path / "tg", "--method",
            "noise", "--at", "c", "-n", 2, "--out", tmp_path / "ev")
    assert r.exit_code == 2 and "b.png': target has shape (1, 3, 10, 10)" in r.stderr, r.stderr
