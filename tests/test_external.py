"""Models whose weights live in external data (the >2 GB class): the weights stay in
their files through inspect, every rewrite, verification, runs and export.

Each model here is built twice, once with its weights in external data and once
inline: tfue must give the same numbers for both (and the numbers a plain
onnxruntime session gives), while no graph it builds ever holds the weights.
"""

import hashlib
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfue_onnx import Dropout, Estimator, MCDropout, Noise, TfueError
from tfue_onnx import external
from tfue_onnx import graph as graphs
from tfue_onnx.model import inspect_model, load_model
from tfue_onnx.perturb import Ensemble, Transform

BIG = 1024  # the table is BIG x BIG float32: 4 MiB of weights


def ext_net(folder, name="m", opset=13, layout="one_file", dropout=None, seed=0, c=3):
    """x [B,c,H,W] -> Conv -> Relu -> (Dropout) -> Conv -> + mean(table) -> Sigmoid -> y.

    Written twice into ``folder``: ``name.onnx`` with every tensor in external data
    (``layout``: ``one_file`` beside the model, ``per_tensor`` files, ``subfolder``
    data in ``weights/``) and ``name_inline.onnx`` with the weights inside.
    Returns the two paths and the total bytes of the weights.
    """
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((8, c, 3, 3)) * 0.3).astype(np.float32),
                                     "w1"),
             numpy_helper.from_array((rng.standard_normal((2, 8, 3, 3)) * 0.3).astype(np.float32),
                                     "w2"),
             numpy_helper.from_array((rng.standard_normal((BIG, BIG)) * 0.1).astype(np.float32),
                                     "table")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1")]
    mid = "r1"
    if dropout is not None:
        if opset < 12:
            nodes.append(helper.make_node("Dropout", ["r1"], ["d1"], name="drop1",
                                          ratio=float(dropout)))
        else:
            inits.append(numpy_helper.from_array(np.array(dropout, np.float32), "ratio"))
            nodes.append(helper.make_node("Dropout", ["r1", "ratio"], ["d1"], name="drop1"))
        mid = "d1"
    mean_attrs = {"keepdims": 0}
    if opset < 18:
        mean_attrs["axes"] = [0, 1]
    nodes += [helper.make_node("Conv", [mid, "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
              helper.make_node("ReduceMean", ["table"], ["s"], name="mean", **mean_attrs),
              helper.make_node("Add", ["c2", "s"], ["z"], name="add"),
              helper.make_node("Sigmoid", ["z"], ["y"], name="sigmoid")]
    graph = helper.make_graph(
        nodes, "ext", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", c, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2, "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    inline = os.path.join(folder, f"{name}_inline.onnx")
    onnx.save(model, inline)
    path = os.path.join(folder, f"{name}.onnx")
    location = {"one_file": f"{name}.onnx.data", "per_tensor": None,
                "subfolder": f"weights/{name}.data"}[layout]
    if layout == "subfolder":
        os.makedirs(os.path.join(folder, "weights"), exist_ok=True)
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=location is not None,
              location=location, size_threshold=0)
    weight_bytes = sum(numpy_helper.to_array(i).nbytes for i in inits)
    return path, inline, weight_bytes


def _digests(folder) -> dict:
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _plain(path, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def _largest_inline_tensor(model) -> int:
    sizes = [len(t.raw_data) for t in external._graph_tensors(model.graph)]
    return max(sizes, default=0)


@pytest.fixture
def x6():
    return np.random.default_rng(1).random((1, 3, 6, 6), dtype=np.float32)


# --- loading and inspecting -------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["one_file", "per_tensor", "subfolder"])
def test_load_leaves_the_weights_on_disk(tmp_path, layout, monkeypatch):
    path, inline, weight_bytes = ext_net(tmp_path, layout=layout, dropout=0.25)
    monkeypatch.chdir(tmp_path.parent)  # locations must not depend on the working folder
    model = load_model(path)
    tensors = external.external_tensors(model)
    assert {t.name for t in tensors} == {"w1", "w2", "table", "ratio"}
    assert model.ByteSize() < 4000 < weight_bytes  # the proto holds references only
    for t in tensors:
        loc, offset, length = external.region(t)
        assert os.path.isabs(loc) and os.path.isfile(loc) and not t.raw_data
    info = inspect_model(path)
    ref = inspect_model(inline)
    # Shape inference runs on the small proto: every inner tensor is a candidate.
    assert [c.to_dict() for c in info.candidates] == [c.to_dict() for c in ref.candidates]
    assert [c.name for c in info.candidates] == ["x", "c1", "r1", "d1", "c2", "z", "y"]
    assert info.tensor_infos["c1"].shape == ("b", 8, "?", "?") == ref.tensor_infos["c1"].shape
    # The ratio is read from its own bytes in the data file.
    [d] = info.dropouts
    assert d.ratio == pytest.approx(0.25) and ref.dropouts == info.dropouts


def test_missing_or_short_data_is_a_clear_error(tmp_path):
    path, _, _ = ext_net(tmp_path)
    data = path + ".data"
    full = open(data, "rb").read()
    with open(data, "wb") as f:
        f.write(full[:1000])
    with pytest.raises(TfueError, match="refers to external data that could not be read") as e:
        load_model(path)
    assert "beyond the end" in e.value.message and ".data files beside" in e.value.hint
    os.remove(data)
    with pytest.raises(TfueError, match="could not be read.*not found") as e:
        inspect_model(path)
    assert "beside the .onnx file" in e.value.hint


def test_locations_outside_the_folder_are_refused(tmp_path):
    path, _, _ = ext_net(tmp_path / "a")
    model = onnx.load(path, load_external_data=False)
    for t in external.external_tensors(model):
        for e in t.external_data:
            if e.key == "location":
                e.value = "../a/" + e.value
    os.makedirs(tmp_path / "b")
    onnx.save(model, str(tmp_path / "b" / "m.onnx"))
    with pytest.raises(TfueError, match="outside the model's folder"):
        load_model(tmp_path / "b" / "m.onnx")


# --- rewriting and running ---------------------------------------------------------------------
@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("strategy", graphs.STRATEGIES)
def test_noise_at_an_inner_tensor_matches_the_inline_model(tmp_path, x6, opset, strategy):
    path, inline, weight_bytes = ext_net(tmp_path, opset=opset)
    results = []
    for p in (path, inline):
        r = Estimator(p, Noise(0.2, at="r1"), samples=5, seed=7, strategy=strategy, chunk=2)
        results.append(r.run(x6))
        ug = r.uncertainty_graph(x6)
        assert ug.strategy == strategy
    ext, ref = results
    plain = _plain(inline, {"x": x6})["y"]
    np.testing.assert_allclose(ext.output, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ext.mean, ref.mean)  # same graph, same seed: same numbers
    np.testing.assert_array_equal(ext.variance, ref.variance)
    assert float(ext.variance.mean()) > 1e-5
    # The graph tfue built (and serialised for onnxruntime) holds no weights.
    ug = Estimator(path, Noise(0.2, at="r1"), samples=5, seed=7, strategy=strategy).uncertainty_graph(x6)
    assert len(ug.model.SerializeToString()) < weight_bytes / 50
    assert _largest_inline_tensor(ug.model) < 1024
    models = [ug.model] + ([ug.prefix] if ug.prefix is not None else [])
    assert {t.name for m in models for t in external.external_tensors(m)} == \
        {"w1", "w2", "table"}


@pytest.mark.parametrize("spec", [Dropout(0.3, at="c1"), MCDropout(), MCDropout(rate=0.5)])
def test_dropout_and_mc_dropout_match_the_inline_model(tmp_path, x6, spec):
    path, inline, weight_bytes = ext_net(tmp_path, dropout=0.25, opset=13)
    ext, ref = (Estimator(p, spec, samples=6, seed=3).run(x6) for p in (path, inline))
    np.testing.assert_allclose(ext.output, _plain(inline, {"x": x6})["y"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ext.mean, ref.mean)
    np.testing.assert_array_equal(ext.variance, ref.variance)
    assert float(ext.variance.mean()) > 1e-6
    ug = Estimator(path, spec, samples=6, seed=3).uncertainty_graph(x6)
    assert len(ug.model.SerializeToString()) < weight_bytes / 50
    if isinstance(spec, MCDropout):  # without --rate: the node's ratio, read from the file
        assert [float(v) for v in ug.level_inputs.values()] == \
            [pytest.approx(spec.rate or 0.25)]


@pytest.mark.parametrize("strategy", ["batched", "loop"])
def test_transform_matches_numpy(tmp_path, strategy):
    path, inline, weight_bytes = ext_net(tmp_path)
    x = np.random.default_rng(2).random((1, 3, 6, 6), dtype=np.float32)
    res = Estimator(path, Transform("flips"), strategy=strategy).run(x)
    # Independent: run the plain model on each flipped input and flip the output back.
    flips = [(), (3,), (2,), (2, 3)]
    ys = [np.flip(_plain(inline, {"x": np.flip(x, axes).copy()})["y"], axes) for axes in flips]
    ys = np.stack(ys)
    np.testing.assert_allclose(res.mean, ys.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.variance, ys.var(0), rtol=1e-4, atol=1e-9)
    ug = Estimator(path, Transform("flips"), strategy=strategy).uncertainty_graph(x)
    assert len(ug.model.SerializeToString()) < weight_bytes / 50


def test_ensemble_of_external_models_in_different_folders(tmp_path, x6):
    a, a_inline, weight_bytes = ext_net(tmp_path / "a", seed=0)
    b, b_inline, _ = ext_net(tmp_path / "deep" / "b", name="other", seed=1, layout="subfolder")
    before = _digests(tmp_path)
    r = Estimator(a, Ensemble((b,)))
    res = r.run(x6)
    ys = np.stack([_plain(p, {"x": x6})["y"] for p in (a_inline, b_inline)])
    np.testing.assert_allclose(res.output, ys[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.mean, ys.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.variance, ys.var(0), rtol=1e-4, atol=1e-9)
    ug = r.uncertainty_graph(x6)
    # Member 1's weights are references under names of their own, to its own file.
    refs = {t.name: external.region(t)[0] for t in external.external_tensors(ug.model)}
    assert len(refs) == 6 and len(set(refs.values())) == 2
    assert len(ug.model.SerializeToString()) < weight_bytes / 25
    # The members were only read; importing them did not rename their tensors.
    assert [i.name for i in r._members[0].model.graph.initializer] == ["w1", "w2", "table"]
    assert _digests(tmp_path) == before


# --- export ----------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["one_file", "per_tensor", "subfolder"])
def test_export_writes_the_data_beside_the_model(tmp_path, x6, layout):
    path, inline, weight_bytes = ext_net(tmp_path / "model", layout=layout)
    before = _digests(tmp_path / "model")
    out = tmp_path / "out" / "u.onnx"
    os.makedirs(out.parent)
    est = Estimator(path, Noise(0.2, at="r1"), samples=4, seed=1)
    assert est.export(out, example=x6) == str(out)
    assert sorted(os.listdir(out.parent)) == ["u.onnx", "u.onnx.data"]  # no temporary left
    assert os.path.getsize(out) < weight_bytes / 50
    assert os.path.getsize(str(out) + ".data") >= weight_bytes
    assert _digests(tmp_path / "model") == before  # the original is untouched
    # Plain onnxruntime runs the exported file (from another working folder too).
    shutil.move(str(out.parent), str(tmp_path / "moved"))
    got = _plain(str(tmp_path / "moved" / "u.onnx"), {"x": x6})
    np.testing.assert_allclose(got["y"], _plain(inline, {"x": x6})["y"], rtol=1e-5, atol=1e-6)
    assert got["y.variance"].shape == x6.shape[:1] + (2, 6, 6)
    assert float(got["y.variance"].mean()) > 1e-5
    exported = onnx.load(str(tmp_path / "moved" / "u.onnx"), load_external_data=False)
    assert {e.value for t in external.external_tensors(exported) for e in t.external_data
            if e.key == "location"} == {"u.onnx.data"}
    # The exported model is itself a model tfue can load and rewrite.
    assert "r1" in [c.name for c in inspect_model(tmp_path / "moved" / "u.onnx").candidates]


def test_export_refuses_to_overwrite(tmp_path, x6):
    path, _, _ = ext_net(tmp_path, name="w")
    est = Estimator(path, Noise(0.2, at="r1"), samples=4, seed=1)
    out = tmp_path / "u.onnx"
    (tmp_path / "u.onnx.data").write_bytes(b"keep")
    with pytest.raises(TfueError, match="u.onnx.data' already exists"):
        est.export(out, example=x6)
    assert not out.exists() and (tmp_path / "u.onnx.data").read_bytes() == b"keep"
    before = _digests(tmp_path)
    # 'w' + '.data' would be the model's own data file ('w.onnx' + '.data' is, here).
    model_data = path + ".data"
    with pytest.raises(TfueError, match="refusing to overwrite"):
        est.export(path, example=x6, force=True)
    other = tmp_path / "w2.onnx"
    os.rename(model_data, str(other) + ".data")
    m = onnx.load(path, load_external_data=False)
    for t in external.external_tensors(m):
        for e in t.external_data:
            if e.key == "location":
                e.value = "w2.onnx.data"
    onnx.save(m, path)
    est = Estimator(path, Noise(0.2, at="r1"), samples=4, seed=1)
    with pytest.raises(TfueError, match="reads its weights from it"):
        est.export(other, example=x6, force=True)
    assert (tmp_path / "u.onnx.data").read_bytes() == b"keep"
    assert set(_digests(tmp_path)) == set(before) - {model_data} | {str(other) + ".data"}


def test_export_failure_leaves_nothing_half_written(tmp_path, x6, monkeypatch):
    path, _, _ = ext_net(tmp_path / "m")
    est = Estimator(path, Noise(0.2, at="r1"), samples=4, seed=1)
    ug = est.standalone_graph(x6)
    out = tmp_path / "u.onnx"
    real = os.replace
    calls = []

    def failing(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        external.save_model(ug.frozen(), str(out))
    monkeypatch.setattr(os, "replace", real)
    assert os.listdir(tmp_path) == ["m"]  # neither file, no temporaries


def test_cli_inspect_run_export(cli, tmp_path, x6):
    path, inline, _ = ext_net(tmp_path / "m")
    np.save(tmp_path / "x.npy", x6)
    r = cli("inspect", path)
    assert r.exit_code == 0 and "r1" in r.output and "6 candidate locations" in r.output
    r = cli("run", path, str(tmp_path / "x.npy"), "--method", "noise", "--at", "r1", "--sigma",
            "0.1", "-n", "4", "--seed", "0", "-o", str(tmp_path / "out"), "--provider", "cpu")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "out" / "x.npz") as z:
        np.testing.assert_allclose(z["output"], _plain(inline, {"x": x6})["y"], rtol=1e-5,
                                   atol=1e-6)
    r = cli("export", path, "--method", "dropout", "--at", "c1", "--rate", "0.2",
            "-o", str(tmp_path / "u.onnx"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "u.onnx.data").is_file()
    assert "y.variance" in _plain(str(tmp_path / "u.onnx"), {"x": x6})


def test_inline_models_export_as_before(tmp_path, x6):
    _, inline, weight_bytes = ext_net(tmp_path)
    out = tmp_path / "u.onnx"
    Estimator(inline, Noise(0.2, at="r1"), samples=4, seed=1).export(out, example=x6)
    assert not (tmp_path / "u.onnx.data").exists()
    assert os.path.getsize(out) > weight_bytes  # one self-contained file
    assert not external.has_external_data(onnx.load(str(out)))


# --- the real size: 2.16 GB of weights (case 14_external_data_2gb) ---------------------------
NEED_MEMORY = 12 * 1024**3
NEED_DISK = 6 * 1024**3


def big_case_skip_reason(available_memory: int, free_disk: int):
    """Why the 2 GB test cannot run here (None: it can): it needs 12 GB of available
    memory (headroom should onnxruntime read rather than map the weights) and 6 GB
    of disk (the model's data and the export's copy)."""
    gb = 1024**3
    if available_memory < NEED_MEMORY:
        return (f"needs 12 GB of available memory, the machine has "
                f"{available_memory / gb:.1f} GB")
    if free_disk < NEED_DISK:
        return f"needs 6 GB of free disk for its 4.3 GB of files, {free_disk / gb:.1f} GB free"
    return None


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_big_case_skip_logic():
    gb = 1024**3
    assert big_case_skip_reason(16 * gb, 100 * gb) is None
    assert big_case_skip_reason(12 * gb, 6 * gb) is None
    assert "11.5 GB" in big_case_skip_reason(int(11.5 * gb), 100 * gb)
    assert "memory" in big_case_skip_reason(4 * gb, 1 * gb)  # memory is named first
    assert "5.0 GB free" in big_case_skip_reason(64 * gb, 5 * gb)


def _build_big_case(folder):
    """The case's model: three 180000 x 1000 float32 tables behind Gathers (2.16 GB),
    written straight to the .data file (little memory), and a small classifier head."""
    V, D, K = 180_000, 1000, 3
    block = np.random.default_rng(0).standard_normal((1000, D)).astype(np.float32) * 0.1
    inits, offset = [], 0
    with open(os.path.join(folder, "big.onnx.data"), "wb") as f:
        for k in range(K):
            rolled = np.roll(block, k, axis=1).tobytes()
            for _ in range(0, V, 1000):
                f.write(rolled)
            t = TensorProto(name=f"emb{k}", data_type=TensorProto.FLOAT, dims=[V, D])
            t.data_location = TensorProto.EXTERNAL
            for key, val in (("location", "big.onnx.data"), ("offset", str(offset)),
                             ("length", str(V * D * 4))):
                e = t.external_data.add()
                e.key, e.value = key, val
            offset += V * D * 4
            inits.append(t)
    inits.append(numpy_helper.from_array(
        np.random.default_rng(1).standard_normal((D, 4)).astype(np.float32), "wc"))
    nodes = [helper.make_node("Gather", [f"emb{k}", "ids"], [f"e{k}"], axis=0) for k in range(K)]
    nodes += [helper.make_node("Sum", [f"e{k}" for k in range(K)], ["e"]),
              helper.make_node("ReduceMean", ["e"], ["pooled"], axes=[1], keepdims=0),
              helper.make_node("MatMul", ["pooled", "wc"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    g = helper.make_graph(nodes, "big",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 4])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path = os.path.join(folder, "big.onnx")
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    ids = np.random.default_rng(2).integers(0, V, (1, 16)).astype(np.int64)
    return path, ids, V * D * 4 * K


@pytest.mark.slow
def test_two_gigabyte_model(tmp_path):
    reason = big_case_skip_reason(_available_memory(), shutil.disk_usage(tmp_path).free)
    if reason:
        pytest.skip(reason)
    try:
        _two_gigabyte_model(tmp_path)
    finally:  # pytest keeps the last runs' folders: do not leave 4 GB behind
        for name in ("big.onnx.data", "u.onnx.data", "u2.onnx.data"):
            if (tmp_path / name).exists():
                os.remove(tmp_path / name)


def _two_gigabyte_model(tmp_path):
    import resource

    path, ids, weight_bytes = _build_big_case(str(tmp_path))
    data = path + ".data"
    stamp = (os.path.getsize(data), os.stat(data).st_mtime_ns)
    info = inspect_model(path)
    assert [c.name for c in info.candidates] == ["e0", "e1", "e2", "e", "pooled", "logits",
                                                 "probs"]
    est = Estimator(path, Noise(0.1, at="e"), samples=4, seed=0, provider="cpu")
    res = est(ids)
    plain = _plain(path, {"ids": ids})["probs"]
    np.testing.assert_allclose(res.output, plain, rtol=1e-5, atol=1e-7)
    assert res.variance.shape == (1, 4) and float(res.variance.mean()) > 0
    assert len(est.uncertainty_graph(ids).model.SerializeToString()) < 1_000_000
    out = str(tmp_path / "u.onnx")
    est.export(out, example=ids)
    assert os.path.getsize(out) < 1_000_000 <= weight_bytes <= os.path.getsize(out + ".data")
    got = _plain(out, {"ids": ids})
    np.testing.assert_allclose(got["probs"], plain, rtol=1e-5, atol=1e-7)
    assert got["probs.variance"].shape == (1, 4)
    assert (os.path.getsize(data), os.stat(data).st_mtime_ns) == stamp
    # onnxruntime maps the weights; nothing here holds a copy of them in memory.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < weight_bytes
    # The CLI under the case's address-space cap (8 GiB, like `prlimit --as`): every
    # session maps the 2.16 GB; one that mapped them twice (packing switched off where
    # nothing packs) would run out of address space.
    import subprocess
    import sys

    def capped():
        resource.setrlimit(resource.RLIMIT_AS, (8 * 1024**3, 8 * 1024**3))

    np.save(tmp_path / "ids.npy", ids)
    for args in (["run", path, str(tmp_path / "ids.npy"), "--method", "noise", "--at", "e",
                  "-n", "4", "--seed", "0", "-o", str(tmp_path / "cli"), "--provider", "cpu"],
                 ["export", path, "-o", str(tmp_path / "u2.onnx"), "--method", "noise", "--at",
                  "e", "--example", str(tmp_path / "ids.npy"), "--provider", "cpu"]):
        r = subprocess.run([sys.executable, "-m", "tfue_onnx.cli", *args], capture_output=True,
                           text=True, preexec_fn=capped)
        assert r.returncode == 0, r.stderr


def test_older_onnxruntime_gets_the_weights_inline(tmp_path, x6, monkeypatch):
    """onnxruntime < 1.21 cannot be told where a model from bytes keeps its weights:
    sessions then get them read into the proto (as before), with the same numbers."""
    from tfue_onnx import session

    path, inline, weight_bytes = ext_net(tmp_path, dropout=0.25)
    want = Estimator(path, Noise(0.2, at="r1"), samples=4, seed=5).run(x6)
    monkeypatch.setattr(session, "folder_option_supported", lambda: False)
    model = load_model(path)
    full = external.inlined(model)
    assert not external.has_external_data(full) and full.ByteSize() > weight_bytes
    assert external.has_external_data(model)  # the loaded model itself is unchanged
    got = Estimator(path, Noise(0.2, at="r1"), samples=4, seed=5).run(x6)
    np.testing.assert_array_equal(got.variance, want.variance)
    np.testing.assert_allclose(got.output, _plain(inline, {"x": x6})["y"], rtol=1e-5, atol=1e-6)


def test_softmax_appended_to_an_external_model(tmp_path, x6):
    path, inline, weight_bytes = ext_net(tmp_path)
    ext, ref = (Estimator(p, Noise(0.2, at="c2"), samples=4, seed=2, softmax=True, class_axis=1)
                .run(x6) for p in (path, inline))
    y = _plain(inline, {"x": x6})["y"]
    np.testing.assert_allclose(ext.output, np.exp(y) / np.exp(y).sum(1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ext.mean, ref.mean)
    np.testing.assert_array_equal(ext.mutual_information, ref.mutual_information)


def test_no_session_ever_gets_the_weights(tmp_path, x6, monkeypatch):
    """Every onnxruntime session tfue makes, for every method, gets the graph as small
    bytes (or the user's own file), never a proto holding the weights."""
    path, _, weight_bytes = ext_net(tmp_path / "a", dropout=0.25)
    other, _, _ = ext_net(tmp_path / "b", seed=1)
    real = ort.InferenceSession
    sources = []

    def recording(source, *args, **kw):
        sources.append(source)
        return real(source, *args, **kw)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    specs = [(Noise(0.2, at="r1"), s) for s in graphs.STRATEGIES] + [
        (Dropout(0.2, at="c2"), "auto"), (MCDropout(), "auto"), (Transform("flips"), "auto"),
        (Ensemble((other,)), "auto")]
    for spec, strategy in specs:
        Estimator(path, spec, strategy=strategy, seed=0).run(x6)
    Estimator(path, Noise(0.2, at="r1"), softmax=True, seed=0).run(x6)
    Estimator(path, Noise(0.2, at="r1"), seed=0).export(tmp_path / "u.onnx", example=x6)
    blobs = [s for s in sources if isinstance(s, bytes)]
    assert len(blobs) >= len(specs) + 1
    assert max(len(b) for b in blobs) < weight_bytes / 50
    assert {s for s in sources if not isinstance(s, bytes)} == {path}


@pytest.mark.parametrize("spec", [Noise(0.2, at="r1"), Dropout(0.2, at="c1")])
def test_export_holds_at_most_two_sessions_of_the_weights(tmp_path, x6, monkeypatch, spec):
    """Each onnxruntime session maps the weights: export verifies its in-graph-sampling
    graph one session at a time, beside the original model's, and makes no graph with
    fed draws (nor its location probe)."""
    import tfue_onnx.selection as runner_module

    path, inline, _ = ext_net(tmp_path / "m")
    made = []
    real = runner_module.create_session

    def counting(model, provider="auto", **kw):
        made.append(model if isinstance(model, str) else model.graph.name)
        return real(model, provider, **kw)

    monkeypatch.setattr(runner_module, "create_session", counting)
    est = Estimator(path, spec, samples=4, seed=1)
    out = est.export(tmp_path / "u.onnx", example=x6)
    assert len(made) == 2, made  # the original model, then one uncertainty graph
    res = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(
        ["y", "y.variance"], {"x": x6})
    np.testing.assert_allclose(res[0], _plain(inline, {"x": x6})["y"], rtol=1e-5, atol=1e-6)
    assert float(res[1].mean()) > 0
    assert est.standalone_graph(x6).sampling == "graph" and len(made) == 2  # cached
