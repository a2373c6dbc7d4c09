"""Ranking inputs by uncertainty for labelling (rank.py; issue 13, the paper's §5)."""

import json
import os

import numpy as np
import pytest

from tfue_onnx import Estimator, Noise, TfueError
from tfue_onnx.rank import copy_top, image_score, rank_inputs
from tfue_onnx.results import OutputStats, Result


def _result(variance=None, entropy=None, mi=None):
    out = OutputStats(output=np.zeros((1, 1, 4, 5)), variance=variance, entropy=entropy,
                      mutual_information=mi)
    return Result({"y": out}, {})


def test_scores_of_a_hand_computed_map():
    var = np.arange(20, dtype=np.float64).reshape(1, 1, 4, 5)  # 0 .. 19
    assert image_score(_result(var), "mean") == pytest.approx(9.5)
    assert image_score(_result(var), "max") == 19.0
    assert image_score(_result(var), "p95") == pytest.approx(np.percentile(np.arange(20), 95))
    with_nan = var.copy()
    with_nan[0, 0, 0, 0] = np.nan
    assert image_score(_result(with_nan), "mean") == pytest.approx(np.arange(1, 20).mean())
    assert np.isnan(image_score(_result(np.full((2, 2), np.nan)), "max"))
    ent, mi = np.full((1, 4, 5), 0.7), np.full((1, 4, 5), 0.2)
    assert image_score(_result(var, ent, mi), "entropy") == pytest.approx(0.7)
    assert image_score(_result(var, ent, mi), "bald") == pytest.approx(0.2)
    with pytest.raises(TfueError, match="no entropy to rank by"):
        image_score(_result(var), "entropy")
    with pytest.raises(ValueError, match="unknown score 'median'"):
        image_score(_result(var), "median")


def _inputs(tmp_path, x8, count=3):
    rng = np.random.default_rng(0)
    paths = []
    for k in range(count):
        path = tmp_path / f"in{k}.npy"
        np.save(path, (x8 * (1 + 2 * k) + rng.normal(0, 0.1, x8.shape)).astype(np.float32))
        paths.append(str(path))
    return paths


def test_ranking_follows_each_inputs_own_variance_and_resumes(toy, tmp_path, x8):
    files = _inputs(tmp_path, x8)
    est = Estimator(toy(), Noise(0.2, at="0.5", mode="relative"), samples=4, seed=1)
    expected = {f: float(np.mean(est(np.load(f)).variance)) for f in files}
    out = tmp_path / "r"
    ranking = rank_inputs(est, files[:2], "mean", out_dir=str(out))
    assert [r["rank"] for r in ranking] == [1, 2]
    assert ranking[0]["score"] >= ranking[1]["score"]
    for r in ranking:
        assert r["score"] == pytest.approx(expected[r["input"]], rel=1e-6)
    calls = []
    real = est.run
    est.run = lambda *a, **k: calls.append(1) or real(*a, **k)
    ranking = rank_inputs(est, files, "mean", out_dir=str(out))  # two kept, one new
    assert len(calls) == 1 and len(ranking) == 3
    order = sorted(files, key=lambda f: -expected[f])
    assert [r["input"] for r in ranking] == order
    lines = (out / "ranking.csv").read_text().splitlines()
    assert lines[0] == "input,score,rank" and lines[1].startswith(order[0] + ",")
    other = Estimator(toy(), Noise(0.3, at="0.5"), samples=4, seed=1)
    with pytest.raises(TfueError, match="holds scores of other settings"):
        rank_inputs(other, files, "mean", out_dir=str(out))


def test_copy_top_copies_and_never_overwrites(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(name.encode())
    ranking = [{"input": str(tmp_path / n), "score": s, "rank": k} for k, (n, s) in
               enumerate((("b.png", 3.0), ("a.png", 2.0), ("c.png", 1.0)), 1)]
    dest = tmp_path / "pick"
    copied = copy_top(ranking, 2, str(dest))
    assert sorted(os.listdir(dest)) == ["a.png", "b.png"] and len(copied) == 2
    assert (tmp_path / "b.png").exists()  # copied, not moved
    (dest / "c.png").write_bytes(b"mine")
    with pytest.raises(TfueError, match="already exists"):
        copy_top(ranking, 3, str(dest))
    assert (dest / "c.png").read_bytes() == b"mine"


def test_rank_from_the_command_line(cli, toy, tmp_path, x8):
    files = _inputs(tmp_path, x8)
    r = cli("rank", toy(), *files, "--method", "noise", "--sigma", "0.2", "-n", 4, "--seed", 1,
            "--by", "max", "--top", 1, "--copy-to", tmp_path / "pick", "-o", tmp_path / "r")
    assert r.exit_code == 0, r.output
    assert "ranked 3 input(s) by max" in r.stdout
    assert len(os.listdir(tmp_path / "pick")) == 1
    from PIL import Image

    with Image.open(tmp_path / "r" / "top.png") as im:  # one row: --top 1
        assert 300 <= im.size[1] <= 500 and im.size[0] >= 400
    rows = (tmp_path / "r" / "ranking.csv").read_text().splitlines()[1:]
    assert [int(row.rsplit(",", 1)[1]) for row in rows] == [1, 2, 3]
    r = cli("rank", toy(), *files, "--method", "noise", "--top", 2, "-o", tmp_path / "r2")
    assert r.exit_code == 2 and "--top and --copy-to go together" in r.output


def test_contact_sheet_shows_the_top_rows_in_rank_order(toy, tmp_path, x8):
    from PIL import Image

    from tfue_onnx.rank import contact_sheet

    files = _inputs(tmp_path, x8)
    est = Estimator(toy(), Noise(0.2, at="0.5"), samples=2, seed=1)
    ranking = rank_inputs(est, files, "mean")
    one = contact_sheet(est, ranking, 1, str(tmp_path / "one.png"))
    three = contact_sheet(est, ranking, 3, str(tmp_path / "three.png"))
    with Image.open(one) as a, Image.open(three) as b:
        assert b.size[0] == a.size[0] and b.size[1] > 2 * a.size[1]  # a row per input


def test_arrays_rank_by_position_beside_files(toy, tmp_path, x8):
    files = _inputs(tmp_path, x8)
    est = Estimator(toy(), Noise(0.2, at="0.5", mode="relative"), samples=4, seed=1)
    arrays = [np.load(f) for f in files]
    by_file = {r["input"]: r["score"] for r in rank_inputs(est, files, "p95")}
    mixed = rank_inputs(est, [arrays[0], {est.info.inputs[0].name: arrays[1]}, files[2]],
                        "p95", out_dir=str(tmp_path / "m"))
    got = {r["input"]: r["score"] for r in mixed}
    assert set(got) == {0, 1, files[2]}
    assert got[0] == pytest.approx(by_file[files[0]], rel=1e-6)
    assert got[1] == pytest.approx(by_file[files[1]], rel=1e-6)
    assert sorted(r["rank"] for r in mixed) == [1, 2, 3]
    assert mixed[0]["score"] >= mixed[1]["score"] >= mixed[2]["score"]
    logged = (tmp_path / "m" / "scores.jsonl").read_text()
    assert files[2] in logged and logged.count("\n") == 2  # settings + the file only


def test_rank_resumes_without_seed_and_takes_inputs_of_one_name(cli, toy, tmp_path, x8):
    files = _inputs(tmp_path, x8)
    other = tmp_path / "other"
    os.makedirs(other)
    np.save(other / "in0.npy", np.load(files[0]) * 3)  # the same name in another folder
    args = (toy(), *files, str(other / "in0.npy"), "--method", "noise", "--sigma", "0.2",
            "-n", 3, "-o", tmp_path / "r")
    r = cli("rank", *args)
    assert r.exit_code == 0, r.output
    log = tmp_path / "r" / "scores.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) == 5  # config + 4 scores
    first = {json.loads(x)["input"]: json.loads(x)["score"] for x in lines[1:]}
    log.write_text("\n".join(lines[:-1]) + "\n")  # a stop before the last score
    r = cli("rank", *args)  # no --seed: the logged one is used again
    assert r.exit_code == 0, r.output
    again = {json.loads(x)["input"]: json.loads(x)["score"]
             for x in log.read_text().splitlines()[1:]}
    assert again == first
    t = ("--method", "transform", "--transforms", "hflip", "-o", tmp_path / "t")
    assert cli("rank", toy(), *files, *t).exit_code == 0
    assert cli("rank", toy(), *files, *t).exit_code == 0  # nothing drawn: no seed kept
    assert "seed" not in json.loads((tmp_path / "t" / "scores.jsonl").read_text()
                                    .splitlines()[0])["config"]


def test_edited_or_empty_score_logs_are_scored_again_not_a_traceback(cli, toy, tmp_path, x8):
    files = _inputs(tmp_path, x8)
    args = (toy(), *files, "--method", "transform", "--transforms", "hflip", "-o",
            tmp_path / "r")
    assert cli("rank", *args).exit_code == 0
    log = tmp_path / "r" / "scores.jsonl"
    config, *records = log.read_text().splitlines()
    for bad in ('{"input": "%s", "score": null}', '{"input": "%s", "score": "abc"}',
                '{"input": "%s"}'):
        log.write_text("\n".join([config, *records[:2], bad % files[2]]) + "\n")
        r = cli("rank", *args)
        assert r.exit_code == 0, r.output
        assert f"{files[2]}" in (tmp_path / "r" / "ranking.csv").read_text()
    for broken in ("", config[:20]):  # nothing whole written, or the config cut short
        log.write_text(broken)
        r = cli("rank", *args)
        assert r.exit_code == 0, r.output
        assert len(log.read_text().splitlines()) == 4  # started afresh
    log.write_text('{"config": [1]}\n')
    r = cli("rank", *args)
    assert r.exit_code == 2 and "holds scores of other settings" in r.output


def test_picked_files_of_one_name_are_all_copied(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    os.makedirs(a)
    os.makedirs(b)
    (a / "x.png").write_bytes(b"A")
    (b / "x.png").write_bytes(b"B")
    (a / "y.png").write_bytes(b"Y")
    ranking = [{"input": str(b / "x.png")}, {"input": str(a / "y.png")},
               {"input": str(a / "x.png")}]
    out = copy_top(ranking, 3, str(tmp_path / "pick"))
    assert [os.path.basename(p) for p in out] == ["x.png", "y.png", "x_2.png"]
    assert [open(p, "rb").read() for p in out] == [b"B", b"Y", b"A"]


def test_top_below_one_is_named_first(cli, toy, tmp_path, x8):
    r = cli("rank", toy(), *_inputs(tmp_path, x8), "--method", "transform", "--top", -1,
            "-o", tmp_path / "r")
    assert r.exit_code == 2 and "--top must be >= 1, got -1" in r.output
