"""The Ray Data engine (tfue_onnx/ray_engine.py): the same results as the local engine,
failures recorded while the job goes on, resuming, the Python API, and the refusals.

One local Ray (2 CPUs, no dashboard, no network) serves the whole module."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import toys
from tfue_onnx.cli import main

# Not importorskip: the README's test command installs the [ray] extra, so CI runs this
# module; an install without Ray fails here loudly instead of skipping it.
import ray  # noqa: E402

SEED, N, COUNT = 7, 4, 40


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray for the module: 2 CPUs, quiet, no dashboard; its workers use a disk
    cache of their own (the environment at start is theirs)."""
    cache = str(tmp_path_factory.mktemp("ray-cache"))
    old = os.environ.get("TFUE_CACHE_DIR")
    os.environ["TFUE_CACHE_DIR"] = cache
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("TFUE_CACHE_DIR", None)
    else:
        os.environ["TFUE_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(model, folder of COUNT good .npy inputs, a corrupt .npy beside them in 'all')."""
    root = tmp_path_factory.mktemp("ray-inputs")
    model = root / "net.onnx"
    toys.conv_net(model)
    good, every = root / "good", root / "all"
    good.mkdir()
    every.mkdir()
    for k in range(COUNT):
        x = np.random.default_rng(k).standard_normal((1, 3, 6 + k % 3, 8)).astype(np.float32)
        np.save(good / f"x{k:02d}.npy", x)
        np.save(every / f"x{k:02d}.npy", x)
    (every / "broken.npy").write_bytes(b"\x93NUMPY not really")
    return str(model), str(good), str(every)


def _run(*args):
    return CliRunner().invoke(main, ["run", *map(str, args)])


RUN = ("--method", "noise", "--sigma", "0.1", "-n", str(N), "--seed", str(SEED))


@pytest.fixture(scope="module")
def both(local_ray, inputs, tmp_path_factory):
    """The local engine on the good inputs and the Ray engine on them plus the corrupt
    one: (local folder, ray folder, the Ray run's CliRunner result)."""
    model, good, every = inputs
    root = tmp_path_factory.mktemp("ray-runs")
    local, far = root / "local", root / "ray"
    r = _run(model, good, *RUN, "--no-pictures", "--out", local)
    assert r.exit_code == 0, r.output
    r = _run(model, every, *RUN, "--no-pictures", "--out", far, "--engine", "ray",
             "--ray-actors", "2")
    return str(local), str(far), r


def _arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k != "metadata"}, json.loads(str(z["metadata"]))


def test_forty_inputs_give_the_local_engines_results(both):
    local, far, _ = both
    names = sorted(f for f in os.listdir(local) if f.endswith(".npz"))
    assert len(names) == COUNT
    for name in names:
        a, meta_a = _arrays(os.path.join(local, name))
        b, meta_b = _arrays(os.path.join(far, name))
        assert sorted(a) == sorted(b) == ["mean", "output", "variance"]
        for key in a:  # byte for byte, not merely close
            assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), \
                (name, key)
        for key in ("seed", "samples", "at", "level", "method"):
            assert meta_a[key] == meta_b[key], key
        assert os.path.basename(meta_a["input"]) == os.path.basename(meta_b["input"])
    with open(os.path.join(local, "summary.json")) as f:
        s_local = json.load(f)
    with open(os.path.join(far, "summary.json")) as f:
        s_ray = json.load(f)
    assert [i["mean_variance"] for i in s_local["inputs"]] == \
        [i["mean_variance"] for i in s_ray["inputs"]]
    assert [os.path.basename(i["input"]) for i in s_local["inputs"]] == \
        [os.path.basename(i["input"]) for i in s_ray["inputs"]]
    assert s_ray["seed"] == SEED and s_ray["location"] == s_local["location"]


def test_a_corrupt_input_is_listed_and_the_others_complete(both, inputs):
    _, far, r = both
    assert r.exit_code == 4, r.output  # ray_engine.EXIT_INPUTS_FAILED
    with open(os.path.join(far, "summary.json")) as f:
        s = json.load(f)
    broken = os.path.join(inputs[2], "broken.npy")
    assert [f["input"] for f in s["failures"]] == [broken]
    reason = s["failures"][0]["reason"]
    assert "broken.npy" in reason and "\n" not in reason
    assert s["engine"]["done"] == COUNT and s["engine"]["failed"] == 1
    assert s["engine"]["resumed"] == 0 and s["engine"]["actors"] == 2
    assert len(s["inputs"]) == COUNT
    assert f"failed: {broken}: " in r.output
    assert f"ray: {COUNT} done, 0 resumed" in r.output
    assert not os.path.exists(os.path.join(far, ".tfue-ray"))  # no staging left behind
    assert not any(f.startswith("broken") for f in os.listdir(far))


def test_a_rerun_recomputes_only_the_deleted_results(both, inputs, tmp_path):
    _, far, _ = both
    again = tmp_path / "again"
    shutil.copytree(far, again)
    names = sorted(f for f in os.listdir(again) if f.endswith(".npz"))
    deleted = names[::2]
    for name in deleted:
        os.remove(again / name)
    kept = {n: os.stat(again / n).st_mtime_ns for n in names if n not in deleted}
    r = _run(inputs[0], inputs[2], *RUN, "--no-pictures", "--out", again, "--engine", "ray",
             "--ray-actors", "2")
    assert r.exit_code == 4, r.output  # the corrupt input fails again
    s = json.loads((again / "summary.json").read_text())
    assert s["engine"]["done"] == len(deleted) == COUNT // 2
    assert s["engine"]["resumed"] == COUNT - len(deleted)
    assert {n: os.stat(again / n).st_mtime_ns for n in kept} == kept  # untouched
    for name in deleted:  # recomputed, the same bytes
        a, _ = _arrays(os.path.join(far, name))
        b, _ = _arrays(str(again / name))
        assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    resumed = [i for i in s["inputs"] if i.get("resumed")]
    assert len(resumed) == len(kept)
    assert all(i["files"] == [str(again / (os.path.basename(i["input"])[:-4] + ".npz"))]
               for i in resumed)


def test_pictures_and_files_are_the_local_engines(local_ray, inputs, tmp_path):
    model, good, _ = inputs
    three = [os.path.join(good, f"x{k:02d}.npy") for k in range(3)]
    r = _run(model, *three, *RUN, "--overlay", "--weights", "--out", tmp_path / "l")
    assert r.exit_code == 0, r.output
    r = _run(model, *three, *RUN, "--overlay", "--weights", "--out", tmp_path / "r",
             "--engine", "ray", "--ray-actors", "1")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(tmp_path / "l")) == sorted(os.listdir(tmp_path / "r"))
    s_l = json.loads((tmp_path / "l" / "summary.json").read_text())
    s_r = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s_l["color_scale"] == s_r["color_scale"] == {"shared": False, "overlay": True}
    names = [[os.path.basename(f) for f in i["files"]] for i in s_l["inputs"]]
    assert names == [[os.path.basename(f) for f in i["files"]] for i in s_r["inputs"]]
    assert names[0] == ["x00.npz", "x00.variance.png", "x00.overlay.png", "x00.weights.npy"]
    for k in range(3):
        w_l = np.load(tmp_path / "l" / f"x{k:02d}.weights.npy")
        assert w_l.tobytes() == np.load(tmp_path / "r" / f"x{k:02d}.weights.npy").tobytes()


def test_a_stopped_jobs_leftovers_are_replaced(local_ray, inputs, tmp_path):
    """A job stopped while writing leaves files only in OUT/.tfue-ray/NAME (never a
    NAME.npz in OUT): the next run starts that input afresh and removes the stage."""
    model, good, _ = inputs
    one = os.path.join(good, "x00.npy")
    stage = tmp_path / "out" / ".tfue-ray" / "x00"
    stage.mkdir(parents=True)
    (stage / "x00.variance.png").write_bytes(b"half a picture")
    r = _run(model, one, *RUN, "--out", tmp_path / "out", "--engine", "ray",
             "--ray-actors", "1")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(tmp_path / "out")) == ["summary.json", "x00.npz",
                                                    "x00.variance.png"]
    with open(tmp_path / "out" / "x00.variance.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_score_dataset_takes_a_ray_dataset(local_ray, inputs, both, tmp_path):
    from tfue_onnx.io import ImageOptions
    from tfue_onnx.perturb import Noise
    from tfue_onnx.ray_engine import RaySettings, score_dataset
    from tfue_onnx.runner import Estimator

    model, _, every = inputs
    local, _, _ = both
    est = Estimator(model, Noise(0.1), samples=N, seed=SEED)
    paths = [os.path.join(every, f) for f in ("x03.npy", "broken.npy", "x05.npy")]
    ds = ray.data.from_items([{"path": p} for p in paths])
    rows = score_dataset(est, ds, tmp_path, ImageOptions(), pictures=False,
                         settings=RaySettings(actors=2)).take_all()
    rows = {r["input"]: r for r in rows}
    assert sorted(rows) == sorted(paths)
    assert rows[paths[1]]["status"] == "failed" and "broken.npy" in rows[paths[1]]["error"]
    assert json.loads(rows[paths[1]]["files"]) == []
    s = json.loads(open(os.path.join(local, "summary.json")).read())
    means = {os.path.basename(i["input"]): i["mean_variance"] for i in s["inputs"]}
    for p in (paths[0], paths[2]):
        assert rows[p]["status"] == "done" and rows[p]["error"] == ""
        assert rows[p]["mean_variance"] == means[os.path.basename(p)]
        assert json.loads(rows[p]["files"]) == [str(tmp_path / (os.path.basename(p)[:-4]
                                                                + ".npz"))]
    again = score_dataset(est, paths[:1], tmp_path, pictures=False).take_all()
    assert [r["status"] for r in again] == ["resumed"]  # its NAME.npz exists
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "inputs.parquet"  # a Parquet dataset with a path column
    pq.write_table(pa.table({"path": paths[2:], "label": [1]}), table)
    (row,) = score_dataset(est, str(table), tmp_path / "pq", pictures=False).take_all()
    assert row["status"] == "done" and row["mean_variance"] == means["x05.npy"]
    assert not os.path.exists(tmp_path / "summary.json")  # run_files writes that


def test_an_estimator_that_ran_is_refused(inputs):
    from tfue_onnx.errors import TfueError
    from tfue_onnx.perturb import Noise
    from tfue_onnx.ray_engine import portable
    from tfue_onnx.runner import Estimator

    est = Estimator(inputs[0], Noise(0.1), samples=N, seed=SEED)
    portable(est)  # fine before it runs
    est(np.zeros((1, 3, 6, 8), np.float32))
    with pytest.raises(TfueError, match="has not run yet"):
        portable(est)


def test_rank_on_ray_ranks_as_the_local_engine(local_ray, inputs, tmp_path):
    model, good, every = inputs
    ten = [os.path.join(good, f"x{k:02d}.npy") for k in range(10)]
    args = ("rank", model, *ten, *RUN, "--by", "max")
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "l")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, [*args, os.path.join(every, "broken.npy"), "--out",
                                  str(tmp_path / "r"), "--engine", "ray"])
    assert r.exit_code == 4, r.output
    assert "failed: " + os.path.join(every, "broken.npy") in r.output
    assert (tmp_path / "l" / "ranking.csv").read_text() == \
        (tmp_path / "r" / "ranking.csv").read_text()
    # Resumable across engines: the local engine finds every score in the Ray log.
    before = (tmp_path / "r" / "scores.jsonl").read_text()
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r" / "scores.jsonl").read_text() == before


def test_without_ray_the_engine_says_how_to_install_it(inputs, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    r = _run(inputs[0], inputs[1], *RUN, "--out", tmp_path / "o", "--engine", "ray")
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "pip install 'ray[data]>=2.51'" in lines[0], r.output
    assert not os.path.exists(tmp_path / "o")


def test_an_address_without_ray_is_refused_at_once(inputs, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on (closed again at once)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _run(inputs[0], inputs[1], *RUN, "--out", tmp_path / "o", "--engine", "ray",
             "--ray-address", f"127.0.0.1:{port}")
    assert r.exit_code == 2, r.output
    assert f"cannot reach Ray at '127.0.0.1:{port}'" in r.output
    r = _run(inputs[0], inputs[1], *RUN, "--out", tmp_path / "o", "--engine", "ray",
             "--ray-address", "headnode")
    assert r.exit_code == 2 and "--ray-address must be auto, HOST:PORT" in r.output


@pytest.mark.parametrize("extra, words", [
    (("--ray-actors", "2"), "--ray-actors configure --engine ray"),
    (("--engine", "ray", "--ray-actors", "0"), "--ray-actors must be >= 1"),
    (("--engine", "ray", "--ray-cpus", "0"), "--ray-cpus must be > 0"),
    (("--engine", "ray", "--levels", "0.1,0.2"), "--levels is not available with --engine ray"),
    (("--engine", "ray", "--shared-scale"), "--shared-scale is not available with --engine"),
])
def test_engine_options_are_checked_up_front(inputs, tmp_path, extra, words):
    model, good, _ = inputs
    args = ["--method", "noise", "-n", "4", "--out", str(tmp_path / "o"), *extra]
    if "--levels" not in extra:
        args += ["--sigma", "0.1"]
    r = _run(model, good, *args)
    assert r.exit_code == 2, r.output
    assert words in r.output
    assert not os.path.exists(tmp_path / "o")


def test_evaluate_on_ray_gives_the_local_table(local_ray, tmp_path):
    """The same metrics as the local engine (results computed by actors, scored here);
    a pair that cannot be read is listed and the others are evaluated (exit 4)."""
    model = tmp_path / "net.onnx"
    toys.conv_net(model)
    folder = toys.npz_pairs(tmp_path / "pairs", count=4)
    args = ["evaluate", str(model), str(folder), *RUN, "--bootstrap", "100", "--json"]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "l")])
    assert r.exit_code == 0, r.output
    local = json.loads((tmp_path / "l" / "metrics.json").read_text())
    (tmp_path / "pairs" / "p9.npz").write_bytes(b"not an npz")
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "r"), "--engine", "ray",
                                  "--ray-actors", "2"])
    assert r.exit_code == 4, r.output
    assert "failed: " + str(tmp_path / "pairs" / "p9.npz") in r.output
    far = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert far["table"] == local["table"]
    assert [i["name"] for i in far["images"]] == [i["name"] for i in local["images"]]
    assert sorted(os.listdir(tmp_path / "r")) == sorted(os.listdir(tmp_path / "l"))


def test_bench_ray_compares_and_tabulates(tmp_path, monkeypatch):
    """tools/bench_ray.py's pieces without running the benchmark: the crops, the
    byte-for-byte check, and the table's ratios and overhead per image."""
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                             "tools"))
    import bench_ray

    folder = bench_ray.make_inputs(str(tmp_path / "in"), 3, 16)
    assert sorted(os.listdir(folder)) == ["c0000.png", "c0001.png", "c0002.png"]
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    np.savez(tmp_path / "a" / "x.npz", variance=np.ones(3), metadata="{}")
    np.savez(tmp_path / "b" / "x.npz", variance=np.ones(3), metadata="{}")
    np.savez(tmp_path / "c" / "x.npz", variance=np.ones(3) * 2, metadata="{}")
    assert bench_ray.same_results(str(tmp_path / "a"), str(tmp_path / "b"))
    assert not bench_ray.same_results(str(tmp_path / "a"), str(tmp_path / "c"))

    def run(wall):
        return {"wall_s": wall, "summary": {"timing": {"sampling_s": 1.0, "startup_s": 0.5}}}
    found = {"runs": {"local": [run(10.0)], "ray, 2 actors x 1 CPU": [run(20.0)]},
             "same": {"ray, 2 actors x 1 CPU": True}}
    rows = bench_ray.table(found, 100).splitlines()
    assert rows[2].startswith("| local | 10.00 | 0.50 | 10.0 | 1.00 |")
    assert rows[3] == "| ray, 2 actors x 1 CPU | 20.00 | 0.50 | 5.0 | 0.50 | +100.0 ms | " \
                      "1.00 | yes |"


class _Unloadable:
    """Pickles, but cannot be unpickled (in an actor: its constructor fails)."""

    def __reduce__(self):
        return os.stat, ("/nonexistent/tfue-ray-test",)


def test_a_job_that_cannot_start_its_actors_is_one_error(local_ray, inputs, tmp_path):
    from tfue_onnx.errors import TfueError
    from tfue_onnx.io import ImageOptions
    from tfue_onnx.ray_engine import RaySettings, map_inputs, rows_of

    job = {"mode": "score", "options": ImageOptions(), "by": "mean", "cwd": str(tmp_path)}
    ds = map_inputs(_Unloadable(), [os.path.join(inputs[1], "x00.npy")], job,
                    RaySettings(actors=1))
    with pytest.raises(TfueError, match=r"the Ray job failed \(.*Error"):
        list(rows_of(ds))


def test_calibrated_runs_and_evaluations_on_ray_equal_the_local_ones(local_ray, tmp_path):
    """--calibration on Ray: the same expected_error/lower/upper in every NAME.npz and the
    same coverage in metrics.json as the local engine."""
    from tfue_onnx import Estimator, Noise
    from tfue_onnx.evaluate import calibrate_pairs, make_pairs

    model = tmp_path / "net.onnx"
    toys.conv_net(model)
    folder = toys.npz_pairs(tmp_path / "pairs", count=4)
    est = Estimator(str(model), Noise(0.1), samples=N, seed=SEED)
    cal = calibrate_pairs(est, make_pairs(est.info, [str(folder)]), 0.8)
    path = cal.save(str(tmp_path / "cal.json"))
    args = ["evaluate", str(model), str(folder), *RUN, "--bootstrap", "0",
            "--calibration", path]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "el")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "er"), "--engine", "ray"])
    assert r.exit_code == 0, r.output
    local, far = (json.loads((tmp_path / e / "metrics.json").read_text())["calibration"]
                  for e in ("el", "er"))
    assert far == local and far["count"] > 0
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for k, f in enumerate(sorted(os.listdir(folder))[:3]):
        arrays = dict(np.load(folder / f))
        np.save(inputs / f"i{k}.npy", next(v for key, v in arrays.items() if key != "target"))
    for engine, out in (((), "rl"), (("--engine", "ray"), "rr")):
        r = _run(model, inputs, *RUN, "--calibration", path, "--no-pictures", *engine,
                 "--out", tmp_path / out)
        assert r.exit_code == 0, r.output
    for k in range(3):
        a, b = (np.load(tmp_path / out / f"i{k}.npz") for out in ("rl", "rr"))
        for key in ("lower", "upper", "expected_error"):
            assert a[key].tobytes() == b[key].tobytes(), key
    assert json.loads((tmp_path / "rr" / "summary.json").read_text())["calibration"]["q"] \
        == cal.fit.q


def test_only_results_of_the_same_run_are_resumed(both, inputs, tmp_path):
    """A folder of another run's results is refused before any work; such a file met
    among this run's is a failure, never overwritten; a junk NAME.npz too."""
    model, good, _ = inputs
    local, _, _ = both
    out = tmp_path / "mixed"
    shutil.copytree(local, out)
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    other = ("--method", "dropout", "--rate", "0.2", "-n", str(N), "--seed", "9")
    r = _run(model, good, *other, "--no-pictures", "--out", out, "--engine", "ray")
    assert r.exit_code == 2, r.output
    assert "holds a result of another run: method (made for noise, here dropout)" in r.output
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before
    # The first result is this run's, a later one another's, one is junk: both listed.
    three = [os.path.join(good, f"x{k:02d}.npy") for k in range(3)]
    r = _run(model, *three, *other, "--no-pictures", "--out", tmp_path / "d", "--engine",
             "ray")
    assert r.exit_code == 0, r.output
    shutil.copy(os.path.join(local, "x01.npz"), tmp_path / "d" / "x01.npz")
    (tmp_path / "d" / "x02.npz").write_bytes(b"junk")
    r = _run(model, *three, *other, "--no-pictures", "--out", tmp_path / "d", "--engine",
             "ray")
    assert r.exit_code == 4, r.output
    assert "x01.npz' holds a result of another run" in r.output
    assert "x02.npz' is not a result tfue wrote" in r.output
    assert (tmp_path / "d" / "x02.npz").read_bytes() == b"junk"


def test_actors_the_cluster_cannot_place_are_refused_at_once(local_ray, inputs, tmp_path):
    model, good, _ = inputs
    for option, value, words in (("--ray-gpus", "1", "GPUs per actor than any node"),
                                 ("--ray-cpus", "64", "CPUs per actor than any node")):
        r = _run(model, good, *RUN, "--threads", "1", "--out", tmp_path / option,
                 "--engine", "ray", option, value)
        assert r.exit_code == 2 and words in r.output, r.output
        assert not (tmp_path / option).exists()


def test_the_order_of_the_files_does_not_decide_whether_the_job_runs(local_ray, inputs,
                                                                   tmp_path):
    model, good, _ = inputs
    folder = tmp_path / "odd"
    folder.mkdir()
    np.save(folder / "a_bad.npy", np.zeros((1, 5, 6, 8), np.float32))  # 5 channels
    np.save(folder / "b_bad.npy", np.zeros((1, 2, 6, 8), np.float32))
    shutil.copy(os.path.join(good, "x00.npy"), folder / "c_good.npy")
    r = _run(model, folder, *RUN, "--no-pictures", "--out", tmp_path / "o", "--engine", "ray")
    assert r.exit_code == 4, r.output
    assert sorted(os.listdir(tmp_path / "o")) == ["c_good.npz", "summary.json"]
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert len(summary["failures"]) == 2


def test_evaluate_on_ray_where_every_pair_fails_lists_them(local_ray, tmp_path):
    model = tmp_path / "net.onnx"
    toys.conv_net(model)
    bad = tmp_path / "bad"
    bad.mkdir()
    for k in range(2):
        (bad / f"p{k}.npz").write_bytes(b"not an npz")
    r = CliRunner().invoke(main, ["evaluate", str(model), str(bad), *RUN, "--out",
                                  str(tmp_path / "e"), "--engine", "ray"])
    assert r.exit_code == 4, r.output
    assert r.output.count("failed: ") == 2 and "Traceback" not in r.output
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_score_dataset_refuses_inputs_of_one_name(local_ray, inputs, tmp_path):
    from tfue_onnx import Estimator, Noise, TfueError
    from tfue_onnx.ray_engine import score_dataset

    model, good, _ = inputs
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(os.path.join(good, "x00.npy"), other / "x00.npy")
    est = Estimator(model, Noise(0.1), samples=N, seed=SEED)
    with pytest.raises(TfueError, match="share the name 'x00'"):
        score_dataset(est, [os.path.join(good, "x00.npy"), str(other / "x00.npy")],
                      str(tmp_path / "o"))


def test_resume_takes_only_whole_results_of_this_input_and_run(local_ray, inputs, tmp_path):
    """Another run's summary.json, results of other inputs of one name, a result without
    its map, a missing weights file, a changed calibration: each is refused, listed or run
    again; resumed inputs keep their means in summary.json."""
    from tfue_onnx import Estimator, Noise
    from tfue_onnx.evaluate import calibrate_pairs

    model, good, _ = inputs
    three = [os.path.join(good, f"x{k:02d}.npy") for k in range(3)]
    ray_args = ("--no-pictures", "--engine", "ray", "--ray-actors", "1")
    # a local run's summary.json of another run, no file names in common: refused
    r = _run(model, three[0], "--method", "transform", "--no-pictures", "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    before = (tmp_path / "a" / "summary.json").read_bytes()
    twin = tmp_path / "twin"
    twin.mkdir()
    np.save(twin / "y.npy", np.load(three[1]))
    r = _run(model, twin / "y.npy", *RUN, *ray_args, "--out", tmp_path / "a")
    assert r.exit_code == 2 and "is the summary of another run: method" in r.output
    assert (tmp_path / "a" / "summary.json").read_bytes() == before
    # the same names from another folder: refused before any work
    r = _run(model, *three, *RUN, *ray_args, "--weights", "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    other = tmp_path / "other"
    other.mkdir()
    for f in three:
        np.save(other / os.path.basename(f), np.load(f) * 2)
    r = _run(model, other, *RUN, *ray_args, "--weights", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "holds the result of another input" in r.output
    # rerun: resumed with means; a missing weights file runs its input again
    os.remove(tmp_path / "b" / "x01.weights.npy")
    r = _run(model, *three, *RUN, *ray_args, "--weights", "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert [i.get("resumed", False) for i in s["inputs"]] == [True, False, True]
    assert all(i["mean_variance"] > 0 for i in s["inputs"])
    assert (tmp_path / "b" / "x01.weights.npy").exists()
    # a result without its variance map is not whole: listed, not resumed
    with np.load(tmp_path / "b" / "x02.npz") as z:
        kept = {k: z[k] for k in z.files if k != "variance"}
    np.savez(tmp_path / "b" / "x02.npz", **kept)
    r = _run(model, *three, *RUN, *ray_args, "--weights", "--out", tmp_path / "b")
    assert r.exit_code == 4 and "x02.npz' is not a whole result tfue wrote" in r.output
    # a calibration asked for on resume: another run
    est = Estimator(model, Noise(0.1), samples=N, seed=SEED)
    folder = toys.npz_pairs(tmp_path / "pairs", count=3)
    from tfue_onnx.evaluate import make_pairs

    cal = calibrate_pairs(est, make_pairs(est.info, [str(folder)]), 0.8)
    cal.save(str(tmp_path / "cal.json"))
    r = _run(model, three[0], *RUN, *ray_args, "--calibration", tmp_path / "cal.json",
             "--out", tmp_path / "b")
    assert r.exit_code == 2 and "calibration (made for none" in r.output


def test_many_unreadable_inputs_sorting_first_do_not_stop_the_job(local_ray, inputs,
                                                                  tmp_path):
    model, good, _ = inputs
    folder = tmp_path / "f"
    folder.mkdir()
    for k in range(20):
        (folder / f"a{k:02d}.npy").write_bytes(b"junk")
    shutil.copy(os.path.join(good, "x00.npy"), folder / "z.npy")
    r = _run(model, folder, *RUN, "--no-pictures", "--out", tmp_path / "o", "--engine", "ray")
    assert r.exit_code == 4, r.output
    assert (tmp_path / "o" / "z.npz").exists()
    assert len(json.loads((tmp_path / "o" / "summary.json").read_text())["failures"]) == 20


def test_changed_image_options_are_another_run(local_ray, tmp_path):
    """How images are read (--mean, --std, --scale, --channel-order) is part of the run:
    a Ray resume and a rank resume with another --mean are refused, named."""
    from PIL import Image

    from tfue_onnx.demo import bundled_model

    folder = tmp_path / "img"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
            folder / f"i{k}.png")
    sr, t = bundled_model(), ("--method", "transform", "--transforms", "hflip")
    for _ in range(2):  # the second time: both resumed
        r = _run(sr, folder, *t, "--no-pictures", "--out", tmp_path / "o", "--engine", "ray")
        assert r.exit_code == 0, r.output
    engine = json.loads((tmp_path / "o" / "summary.json").read_text())["engine"]
    assert (engine["resumed"], engine["done"]) == (2, 0)
    r = _run(sr, folder, *t, "--mean", "0.5,0.5,0.5", "--no-pictures", "--out", tmp_path / "o",
             "--engine", "ray")
    assert r.exit_code == 2 and "image_options (made for" in r.output
    rank = ("rank", sr, str(folder), *t, "-o", str(tmp_path / "r"))
    assert CliRunner().invoke(main, list(rank)).exit_code == 0
    r = CliRunner().invoke(main, [*rank, "--mean", "0.5,0.5,0.5"])
    assert r.exit_code == 2 and "image_options" in r.output


def test_a_parquet_dataset_of_paths_is_an_input_of_the_ray_engine(local_ray, inputs, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    model, good, _ = inputs
    three = [os.path.join(good, f"x{k:02d}.npy") for k in range(3)]
    pq.write_table(pa.table({"input": three}), str(tmp_path / "set.parquet"))
    r = _run(model, tmp_path / "set.parquet", *RUN, "--no-pictures", "--out", tmp_path / "o",
             "--engine", "ray")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(tmp_path / "o")) == ["summary.json", "x00.npz", "x01.npz",
                                                  "x02.npz"]
    r = _run(model, tmp_path / "set.parquet", *RUN, "--out", tmp_path / "l")
    assert r.exit_code == 2 and "a .parquet dataset of input paths is read by --engine ray" \
        in r.output
    pq.write_table(pa.table({"name": three}), str(tmp_path / "bad.parquet"))
    r = _run(model, tmp_path / "bad.parquet", *RUN, "--out", tmp_path / "b", "--engine", "ray")
    assert r.exit_code == 2 and "no 'input' or 'path' column (it has name)" in r.output


def test_resume_knows_the_model_weights_samples_and_folder_it_was_made_with(local_ray, inputs,
                                                                         tmp_path,
                                                                         monkeypatch):
    import onnx
    from onnx import numpy_helper

    model, good, _ = inputs
    mine = tmp_path / "m.onnx"
    shutil.copy(model, mine)
    three = [os.path.join(good, f"x{k:02d}.npy") for k in range(3)]
    ray_args = ("--no-pictures", "--engine", "ray", "--ray-actors", "1")
    r = _run(mine, *three, *RUN, *ray_args, "--weights", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    # other loss-weight settings: another run
    r = _run(mine, *three, *RUN, *ray_args, "--weights", "normalized", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "loss_weights (made for" in r.output
    # --save-samples: the results lack their samples, so the inputs run again
    r = _run(mine, *three, *RUN, *ray_args, "--weights", "--save-samples", "--out",
             tmp_path / "o")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "o" / "x00.npz") as z:
        assert z["samples"].shape[0] == N
    # from another folder, with other (absolute) paths to the same files: resumed
    monkeypatch.chdir(tmp_path.parent)
    r = _run(mine, *three, *RUN, *ray_args, "--weights", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["engine"]["resumed"] == 3
    # the model file changed in place: the results are another model's
    m = onnx.load(str(mine))
    w = m.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 3, w.name))
    onnx.save(m, str(mine))
    r = _run(mine, *three, *RUN, *ray_args, "--weights", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "model (another file)" in r.output


def test_threads_beyond_any_nodes_cpus_are_one_line(local_ray, inputs, tmp_path):
    model, good, _ = inputs
    r = _run(model, good, *RUN, "--threads", 8, "--out", tmp_path / "o", "--engine", "ray")
    assert r.exit_code == 2, r.output
    assert r.output.count("\n") == 1 and "--threads 8 asks more CPUs" in r.output
