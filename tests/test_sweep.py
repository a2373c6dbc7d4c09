"""sweep.py on a toy model: the grid's points, the best one, resuming, another grid in the
same folder kept apart, and load_best per method (small N, 3 pairs)."""

import json
import os

import numpy as np
import pytest

import toys

from tfue_onnx import sweep
from tfue_onnx.errors import TfueError
from tfue_onnx.evaluate import evaluate, make_pairs
from tfue_onnx.model import inspect_model
from tfue_onnx.perturb import Dropout, Noise
from tfue_onnx import Estimator

GRID = dict(methods=("noise", "dropout"), at="r1,c2", sigmas=(0.05, 0.5), rates=(0.2,),
            samples=2, seed=0, bootstrap=0)


@pytest.fixture
def setup(tmp_path, toy):
    model = toy()
    folder = toys.npz_pairs(tmp_path / "pairs")
    (tmp_path / "sweep").mkdir()  # as the CLI does (sweep() makes a new one itself: below)
    return model, make_pairs(inspect_model(model), [folder]), tmp_path / "sweep"


def _value(point, metric="pixel_l1"):
    return sweep.metric_value(point["table"], metric)


def test_grid_points_best_and_files(setup):
    model, pairs, out = setup
    seen = []
    s = sweep.sweep(model, pairs, out_dir=str(out), progress=lambda d, t, p: seen.append((d, t)),
                    **GRID)
    keys = [(p["method"], p["at"], p["level"]) for p in s["points"]]
    assert keys == [("noise", "r1", 0.05), ("noise", "r1", 0.5), ("noise", "c2", 0.05),
                    ("noise", "c2", 0.5), ("dropout", "r1", 0.2), ("dropout", "c2", 0.2)]
    assert seen == [(k, 6) for k in range(1, 7)]
    values = [_value(p) for p in s["points"]]
    assert all(-1 <= v <= 1 for v in values)
    top = s["points"][int(np.nanargmax(values))]
    assert (s["best"]["method"], s["best"]["at"], s["best"]["level"]) == \
        (top["method"], top["at"], top["level"])
    assert s["best"]["value"] == max(values) and s["best"]["metric"] == "pixel_l1"
    # A point is what evaluate gives for that method, location and level.
    est = Estimator(model, Noise(0.5, at="c2"), samples=2, seed=0)
    alone = evaluate(est, pairs, level=0.5, bootstrap=0, pictures=False)
    assert _value(s["points"][3]) == pytest.approx(alone["table"]["l1"]["pixel"], abs=1e-12)
    names = sorted(os.listdir(out))
    assert names == ["best.json", "sweep.csv", "sweep.json", "sweep.jsonl",
                     "sweep_dropout.png", "sweep_noise.png"]
    lines = (out / "sweep.jsonl").read_text().splitlines()
    assert len(lines) == 7 and "config" in json.loads(lines[0])
    csv = (out / "sweep.csv").read_text().splitlines()
    assert len(csv) == 7 and csv[0].startswith("method,at,index,depth,level,")
    assert json.loads((out / "best.json").read_text()) == json.loads(json.dumps(s["best"]))


def test_resume_runs_only_the_missing_points(setup):
    model, pairs, out = setup
    first = sweep.sweep(model, pairs, out_dir=str(out), **GRID)
    seen = []
    again = sweep.sweep(model, pairs, out_dir=str(out), progress=lambda *a: seen.append(a),
                        **GRID)
    assert seen == [] and again["points"] == json.loads(json.dumps(first["points"]))
    path = out / "sweep.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-2]) + "\n")  # stopped before the last two points
    resumed = sweep.sweep(model, pairs, out_dir=str(out), progress=lambda *a: seen.append(a),
                          **GRID)
    assert [(d, t) for d, t, _ in seen] == [(5, 6), (6, 6)]
    assert [_value(p) for p in resumed["points"]] == \
        pytest.approx([_value(p) for p in first["points"]], nan_ok=True)


def test_other_settings_are_refused_unless_forced(setup):
    model, pairs, out = setup
    sweep.sweep(model, pairs, out_dir=str(out), **{**GRID, "rates": (), "methods": ("noise",),
                                                   "at": "c2"})
    with pytest.raises(TfueError, match=r"holds a sweep with other settings \(samples differ\)"):
        sweep.sweep(model, pairs, out_dir=str(out), **{**GRID, "samples": 3})
    forced = sweep.sweep(model, pairs, out_dir=str(out), force=True,
                         **{**GRID, "samples": 3, "methods": ("dropout",), "at": "r1"})
    assert len(forced["points"]) == 1 and "points_of_other_grids" not in forced
    assert json.loads((out / "sweep.jsonl").read_text().splitlines()[0])["config"]["samples"] == 3


def test_another_grid_in_the_same_folder_is_kept_apart(setup):
    model, pairs, out = setup
    sweep.sweep(model, pairs, out_dir=str(out), **GRID)
    other = sweep.sweep(model, pairs, out_dir=str(out),
                        **{**GRID, "methods": ("noise",), "sigmas": (0.1,)})
    assert [(p["at"], p["level"]) for p in other["points"]] == [("r1", 0.1), ("c2", 0.1)]
    assert other["points_of_other_grids"] == 6
    assert other["best"]["level"] == 0.1
    assert len((out / "sweep.jsonl").read_text().splitlines()) == 9  # all kept on disk


def test_load_best_per_method(setup):
    model, pairs, out = setup
    s = sweep.sweep(model, pairs, out_dir=str(out), **GRID)
    assert sweep.load_best(str(out)) == sweep.load_best(str(out / "best.json")) == \
        json.loads(json.dumps(s["best"]))
    for method in ("noise", "dropout"):
        mine = [p for p in s["points"] if p["method"] == method]
        top = mine[int(np.nanargmax([_value(p) for p in mine]))]
        got = sweep.load_best(str(out), method)
        assert (got["method"], got["at"], got["level"]) == (method, top["at"], top["level"])
        assert got["value"] == _value(top)
        # What --at auto builds from it runs.
        spec = Noise(got["level"], at=got["at"]) if method == "noise" else \
            Dropout(got["level"], at=got["at"])
        assert Estimator(model, spec, samples=2, seed=0)(pairs[0].load()[0]).variance.shape \
            == (1, 2, 16, 16)
    with pytest.raises(TfueError, match="has no point for mc-dropout"):
        sweep.load_best(str(out), "mc-dropout")
    (out / "junk.json").write_text("[1, 2]")
    with pytest.raises(TfueError, match="is not a sweep result"):
        sweep.load_best(str(out / "junk.json"))
    with pytest.raises(TfueError, match="cannot read a sweep result"):
        sweep.load_best(str(out / "nothing"))


def test_metric_helpers():
    assert sweep.check_metric("ause_l2") == "ause_l2"
    with pytest.raises(TfueError, match="unknown metric 'pixel'"):
        sweep.check_metric("pixel")
    assert sweep.better("pixel_l1", 0.5, 0.4) and not sweep.better("pixel_l1", 0.4, 0.5)
    assert sweep.better("ause_l1", 0.1, 0.2)  # lower is better
    assert not sweep.better("pixel_l1", float("nan"), 0.0)
    assert sweep.better("pixel_l1", 0.0, float("nan"))


def test_sweep_creates_its_out_folder(setup):
    model, pairs, out = setup
    s = sweep.sweep(model, pairs, out_dir=str(out / "new"), **{**GRID, "methods": ("noise",),
                                                               "at": "c2", "sigmas": (0.1,)})
    assert len(s["points"]) == 1 and (out / "new" / "best.json").exists()
