"""cache.py: the disk cache of verified graphs and measured choices (issue 11): entries
used by a second runner, damaged or contradicting entries verified afresh, trimming."""

import json
import os

import numpy as np
import onnx
import pytest

import toys
from tfue_onnx import Dropout, Estimator, Noise, TfueError
from tfue_onnx.cache import DiskCache


def _plain(path, x):
    return toys.run_plain(onnx.load(path), {"x": x})["y"]


def _spy_verify(monkeypatch):
    calls = []
    real = Estimator._verify

    def verify(self, ug, sess, feeds, reference):
        calls.append(ug.strategy)
        return real(self, ug, sess, feeds, reference)
    monkeypatch.setattr(Estimator, "_verify", verify)
    return calls


def test_a_second_runner_starts_from_the_cache(toy, x8, monkeypatch, own_cache):
    calls = _spy_verify(monkeypatch)
    path = toy()
    first = Estimator(path, Noise(0.2, at="r1"), samples=12, seed=5)(x8)
    assert calls == ["looped-suffix"] and first.metadata["autotune"]["how"] == "measured"
    files = sorted(os.listdir(own_cache))
    assert len(files) == 3 and [f.split(".", 1)[1] for f in files] == \
        ["json", "model.onnx", "prefix.onnx"]
    est = Estimator(path, Noise(0.2, at="r1"), samples=12, seed=5)
    second = est(x8)
    assert calls == ["looped-suffix"]  # not verified again
    assert second.metadata["autotune"]["how"] == "cached"
    assert set(second.metadata["chunks"][:-1]) == {first.metadata["autotune"]["chunk"]}
    assert any("verified by an earlier run" in n for n in est.notes)
    for k in ("output", "mean", "variance"):
        np.testing.assert_array_equal(getattr(second, k), getattr(first, k))
    assert second.metadata["spatial_axes"] == first.metadata["spatial_axes"]
    # Another seed, another N, another level: the same entry (none of them is in the graph).
    other = Estimator(path, Noise(0.2, at="r1"), samples=5, seed=9)(x8)
    assert calls == ["looped-suffix"] and sum(other.metadata["chunks"]) == 5
    np.testing.assert_array_equal(
        other.variance, Estimator(path, Noise(0.2, at="r1"), samples=5, seed=9, chunk=5,
                                  cache=False)(x8).variance)
    assert calls == ["looped-suffix"] * 2  # the one with cache=False verified for itself
    # Another input shape, location or method: verified anew.
    Estimator(path, Noise(0.2, at="r1"), samples=5)(np.repeat(x8, 2, axis=0))
    Estimator(path, Dropout(0.2, at="r1"), samples=5)(x8)
    assert calls == ["looped-suffix"] * 4


def test_cache_off_and_unwritable(toy, x8, monkeypatch, own_cache, tmp_path):
    calls = _spy_verify(monkeypatch)
    path = toy()
    for _ in range(2):
        Estimator(path, Noise(0.2, at="r1"), samples=6, cache=False)(x8)
    assert calls == ["looped-suffix"] * 2 and not own_cache.exists()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    est = Estimator(path, Noise(0.2, at="r1"), samples=6, cache=str(blocker / "sub"))
    res = est(x8)
    assert res.metadata["strategy"] == "looped-suffix"
    assert any(n.startswith("cache: not written (") for n in est.notes)


@pytest.mark.parametrize("damage", ["garbage", "truncated-graph", "edited-graph", "other-key",
                                    "wrong-types", "bad-tuning", "level", "shapes", "batch-axes",
                                    "draw-kind", "stats-outputs"])
def test_a_damaged_entry_is_ignored_and_replaced(toy, x8, monkeypatch, own_cache, damage):
    calls = _spy_verify(monkeypatch)
    path = toy()
    first = Estimator(path, Noise(0.2, at="r1"), samples=6, seed=1)(x8)
    [entry] = [own_cache / f for f in os.listdir(own_cache) if f.endswith(".json")]
    graph = entry.with_name(entry.name.replace(".json", ".model.onnx"))
    data = json.loads(entry.read_text())
    fields = data["fields"]
    if damage == "garbage":
        entry.write_bytes(b"\x00{not json")
    elif damage == "truncated-graph":
        graph.write_bytes(graph.read_bytes()[:100])
    elif damage == "edited-graph":
        m = onnx.load(str(graph))
        m.graph.node[0].name = "edited"
        graph.write_bytes(m.SerializeToString())
    else:  # the JSON edited by hand, its types kept where they are plausible
        if damage == "other-key":
            data["key"] = "0" * 40
        elif damage == "wrong-types":
            fields["shapes"] = "[1, 4, 8, 8]"
        elif damage == "bad-tuning":
            fields["tuning"] = {"chunk": "lots", "threads": None}
        elif damage == "level":
            [name] = fields["graph"]["level_inputs"]
            fields["graph"]["level_inputs"][name][0] = 5.0
        elif damage == "shapes":
            fields["shapes"] = {}
        elif damage == "batch-axes":
            fields["batch_axes"] = {"r1": 1}
        elif damage == "draw-kind":
            fields["graph"]["draws"][0][2] = "uniform"
        else:
            fields["graph"]["stats_outputs"] = ["zz"]
        entry.write_text(json.dumps(data))
    est = Estimator(path, Noise(0.2, at="r1"), samples=6, seed=1)
    res = est(x8)
    np.testing.assert_array_equal(res.variance, first.variance)
    assert calls == ["looped-suffix"] * 2  # verified again
    assert not any("verified by an earlier run" in n for n in est.notes)
    # ... and the entry is whole again: a third runner uses it.
    Estimator(path, Noise(0.2, at="r1"), samples=6, seed=1)(x8)
    assert len(calls) == 2


def test_a_sealed_entry_that_fails_is_verified_afresh(toy, x8, monkeypatch, own_cache):
    """Even an entry whose seal matches (made by a fault in tfue, say) cannot break a
    run: the run that fails on it verifies afresh and overwrites it."""
    from tfue_onnx.cache import _seal

    calls = _spy_verify(monkeypatch)
    path = toy()
    first = Estimator(path, Noise(0.2, at="r1"), samples=6, seed=1)(x8)
    [entry] = [own_cache / f for f in os.listdir(own_cache) if f.endswith(".json")]
    data = json.loads(entry.read_text())
    data["fields"]["shapes"] = {"r1": [1, 5, 8, 8]}  # banks of the wrong size
    data["seal"] = _seal(data)
    entry.write_text(json.dumps(data))
    est = Estimator(path, Noise(0.2, at="r1"), samples=6, seed=1)
    res = est(x8)
    np.testing.assert_array_equal(res.variance, first.variance)
    assert calls == ["looped-suffix"] * 2
    assert any(n.startswith("cache: the entry for this input shape failed (TfueError")
               for n in est.notes)
    Estimator(path, Noise(0.2, at="r1"), samples=6, seed=1)(x8)
    assert len(calls) == 2  # the entry was rewritten whole


def test_a_changed_model_file_misses_the_cache(toy, x8, monkeypatch, tmp_path):
    calls = _spy_verify(monkeypatch)
    path = toy()
    Estimator(path, Noise(0.2, at="r1"), samples=6)(x8)
    toys.conv_net(path, seed=7)  # same graph, other weights, same file name
    res = Estimator(path, Noise(0.2, at="r1"), samples=6)(x8)
    assert calls == ["looped-suffix"] * 2
    np.testing.assert_allclose(res.output, _plain(path, x8), rtol=1e-5, atol=1e-6)


def test_disk_cache_load_and_store(tmp_path):
    cache = DiskCache(str(tmp_path / "c"))
    assert cache.load("k1", {}) is None
    assert cache.store("k1", {"a": 1}, {"model": b"abc"})
    fields, graphs_ = cache.load("k1", {"a": int})
    assert fields == {"a": 1} and graphs_ == {"model": b"abc"}
    assert cache.load("k1", {"a": str}) is None  # a field of the wrong type: a miss
    assert cache.update("k1", tuning={"chunk": 2})
    assert cache.load("k1", {})[0] == {"a": 1, "tuning": {"chunk": 2}}
    assert not cache.update("k2", x=1)
    off = DiskCache(str(tmp_path / "off"), enabled=False)
    assert not off.store("k", {}) and off.load("k", {}) is None
    assert not (tmp_path / "off").exists()


def test_other_tfue_code_misses_the_cache(toy, x8, monkeypatch):
    from tfue_onnx import cache as cache_module

    digest = cache_module.code_digest()
    assert len(digest) == 64 and int(digest, 16) >= 0
    calls = _spy_verify(monkeypatch)
    Estimator(toy(), Noise(0.2, at="r1"), samples=6)(x8)
    monkeypatch.setattr(cache_module, "_CODE", ["another build of tfue"])
    Estimator(toy(), Noise(0.2, at="r1"), samples=6)(x8)
    assert calls == ["looped-suffix"] * 2


@pytest.mark.parametrize("edit", ["level", "draw-kind", "draw-index", "outputs", "batch-axis"])
def test_a_resealed_entry_that_contradicts_the_run_is_not_used(toy, x8, monkeypatch,
                                                                 own_cache, edit):
    from tfue_onnx.cache import _seal

    calls = _spy_verify(monkeypatch)
    first = Estimator(toy(), Noise(0.2, at="r1"), samples=6, seed=1)(x8)
    [entry] = [own_cache / f for f in os.listdir(own_cache) if f.endswith(".json")]
    data = json.loads(entry.read_text())
    g = data["fields"]["graph"]
    if edit == "level":
        [name] = g["level_inputs"]
        g["level_inputs"][name][0] = 0.5
    elif edit == "draw-kind":
        g["draws"][0][2] = "uniform"
    elif edit == "draw-index":
        g["draws"][0][4] = 7
    elif edit == "batch-axis":
        data["fields"]["batch_axes"] = {"r1": 1}
    else:
        g["stats_outputs"] = []
    data["seal"] = _seal(data)
    entry.write_text(json.dumps(data))
    res = Estimator(toy(), Noise(0.2, at="r1"), samples=6, seed=1)(x8)
    assert calls == ["looped-suffix"] * 2
    np.testing.assert_array_equal(res.variance, first.variance)


def test_graphs_too_large_to_store_are_built_again_but_not_verified(toy, x8, monkeypatch,
                                                                     own_cache):
    from tfue_onnx import cache as cache_module

    monkeypatch.setattr(cache_module, "MAX_GRAPH_BYTES", 0)
    calls = _spy_verify(monkeypatch)
    first = Estimator(toy(), Noise(0.2, at="r1"), samples=6, seed=1)(x8)
    assert [f.split(".", 1)[1] for f in os.listdir(own_cache)] == ["json"]
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=6, seed=1)
    res = est(x8)
    assert calls == ["looped-suffix"]
    assert any("verified by an earlier run" in n for n in est.notes)
    np.testing.assert_array_equal(res.variance, first.variance)


def test_the_cache_folder_is_trimmed_least_recently_used_first(tmp_path):
    import time

    from tfue_onnx.cache import make_key

    folder = tmp_path / "c"
    cache = DiskCache(str(folder))
    a, b, c = (make_key({"k": k}) for k in "abc")
    for k in (a, b, c):
        assert cache.store(k, {"k": k}, {"model": bytes(1000)})
        time.sleep(0.01)
    cache.load(a, {})  # used again: now the most recent
    # Files that are not whole tfue entries are never touched, however old or named: a
    # hex-named JSON that is not a tfue entry, graph files without their JSON (a store
    # under way, or one that failed: the next store of the key overwrites them).
    import hashlib

    hex_json = hashlib.sha1(b"run 17").hexdigest() + ".json"
    hex_onnx = hashlib.sha1(b"w").hexdigest() + ".best.onnx"
    under_way = make_key({"k": "d"}) + ".model.onnx"
    left_over = make_key({"k": "e"}) + ".model.onnx"
    (folder / "my_thesis.txt").write_bytes(bytes(5000))
    (folder / hex_json).write_text('{"accuracy": 0.93}')
    (folder / hex_onnx).write_bytes(b"user model")
    (folder / ".tfue-x.tmp").write_bytes(bytes(10))  # another process's write under way
    (folder / under_way).write_bytes(bytes(10))
    (folder / left_over).write_bytes(bytes(10))
    (folder / "notes").mkdir()
    for name in ("my_thesis.txt", ".tfue-x.tmp", hex_json, hex_onnx, left_over):
        os.utime(folder / name, (0, 0))
    ours = [f for f in os.listdir(folder) if f.startswith((a, b, c))]
    size = sum(os.path.getsize(folder / f) for f in ours)
    removed = cache.trim(limit=size - 1)
    assert removed > 0 and cache.load(b, {}) is None  # the least recently used went
    assert cache.load(a, {}) is not None and cache.load(c, {}) is not None
    assert cache.trim(limit=0, keep=a) > 0 and cache.load(a, {}) is not None
    assert sorted(os.listdir(folder)) == sorted([
        ".tfue-x.tmp", "my_thesis.txt", "notes", hex_json, hex_onnx, under_way, left_over,
        f"{a}.json", f"{a}.model.onnx"])
    assert (folder / "my_thesis.txt").stat().st_size == 5000
    assert (folder / hex_json).read_text() == '{"accuracy": 0.93}'


def test_a_fifo_in_the_cache_is_a_miss_not_a_hang(tmp_path):
    from tfue_onnx.cache import make_key

    cache = DiskCache(str(tmp_path / "c"))
    key = make_key({"k": 1})
    assert cache.store(key, {"a": 1}, {"model": b"abc"})
    os.remove(tmp_path / "c" / f"{key}.model.onnx")
    os.mkfifo(tmp_path / "c" / f"{key}.model.onnx")
    assert cache.load(key, {}) is None


def test_update_of_an_entry_trimmed_meanwhile_is_no_error(tmp_path):
    from tfue_onnx import cache as cache_module

    cache = DiskCache(str(tmp_path / "c"))
    key = cache_module.make_key({"k": 1})
    assert cache.store(key, {"a": 1})
    os.remove(os.path.join(cache.folder, f"{key}.json"))  # trimmed by another process
    assert cache.update(key, tuning={"chunk": 2}) is False


def test_a_batch_of_two_from_the_cache_keeps_its_batch_axis(toy, x8, monkeypatch):
    calls = _spy_verify(monkeypatch)
    x2 = np.concatenate([x8, x8[:, :, ::-1]])
    first = Estimator(toy(), Noise(0.2, at="r1"), samples=6, seed=2)(x2)
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=6, seed=2)
    second = est(x2)
    assert calls == ["looped-suffix"] and any("verified by an earlier run" in n
                                              for n in est.notes)
    assert second.metadata["draws"] == first.metadata["draws"]
    assert "per batch item (axis 0" in second.metadata["draws"]["r1"]
    np.testing.assert_array_equal(second.variance, first.variance)


# --- the pieces: keys, digests, folder, plausible batch axes ------------------------------
def test_make_key_is_the_sorted_json_digest():
    import hashlib

    from tfue_onnx.cache import make_key

    parts = {"b": [1, 2], "a": "x", "shape": (1, 3)}
    want = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]
    assert make_key(parts) == want and len(want) == 40
    assert make_key(dict(reversed(list(parts.items())))) == want
    assert make_key({**parts, "a": "y"}) != want


def test_model_digest_and_cache_dir(toy, monkeypatch, tmp_path):
    import hashlib

    from tfue_onnx.cache import ENV, cache_dir, model_digest

    model = onnx.load(toy())
    assert model_digest(model) == hashlib.sha256(model.SerializeToString()).hexdigest()
    model.graph.node[0].name = "renamed"
    assert model_digest(model) != model_digest(onnx.load(toy()))
    assert model_digest(object()) is None  # not a proto: not cached, no error
    monkeypatch.setenv(ENV, str(tmp_path / "mine"))
    assert cache_dir() == str(tmp_path / "mine")
    monkeypatch.delenv(ENV)
    assert "tfue-onnx" in cache_dir()


def test_disk_cache_from_every_kind_of_argument(tmp_path):
    from tfue_onnx.cache import disk_cache

    given = DiskCache(str(tmp_path / "g"))
    assert disk_cache(given) is given
    assert disk_cache(str(tmp_path / "s")).folder == str(tmp_path / "s")
    assert disk_cache(tmp_path / "p").folder == str(tmp_path / "p")
    assert disk_cache(True).enabled and not disk_cache(False).enabled
    assert not disk_cache(None).enabled
    for bad in (3, 1.0, ["x"]):
        with pytest.raises(TfueError, match="cache must be True, False or a folder"):
            disk_cache(bad)


@pytest.mark.parametrize("batch,axes,ok", [
    (2, {"r1": 0}, True), (2, {"r1": None}, True), (2, {}, True), (1, {"r1": 0}, False),
    (2, {"r1": 1}, False), (2, {"r1": 4}, False), (2, {"r1": -1}, False),
    (2, {"gone": 0}, False), (1, {"r1": None}, True)])
def test_plausible_axes(batch, axes, ok):
    from tfue_onnx.cache import plausible_axes

    feeds = {"x": np.zeros((batch, 3, 8, 8), np.float32), "scalar": np.float32(1)}
    shapes = {"r1": [batch, 4, 8, 8]}
    assert plausible_axes(feeds, shapes, axes) is ok
