"""Memory stays near the size of the weights (issue 9).

onnxruntime packs the weights of MatMul, Gemm, Conv ... into a layout of its own when a
session is created: a copy as large as the weights, in the session's anonymous memory.
Only the sampling session runs often enough to gain from it; the sessions that run once
per input signature (the original model's reference run, the location probe, the axes
probe, the verification of an export) are made with ``session.disable_prepacking``. With
weights in external data (memory-mapped by onnxruntime) those sessions then cost next to
no memory of their own. These tests check that mechanism and that the numbers are the
same as a plain onnxruntime session's.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import toys
from tfue_onnx import Noise, Dropout
from tfue_onnx.memory import peak_bytes as _peak_bytes
from tfue_onnx import session as sessions
from tfue_onnx.runner import Estimator

KEY = sessions.NO_PREPACK_KEY


@pytest.fixture(autouse=True)
def _pack_nothing_for_free(monkeypatch):
    """The models here are small: count any packable weight as worth not packing, so the
    mechanism is tested (real models pass sessions.PACK_FREE_BYTES; tested below)."""
    monkeypatch.setattr(sessions, "PACK_FREE_BYTES", 0)


def _prepacks(sess) -> bool:
    try:
        return sess.get_session_options().get_session_config_entry(KEY) != "1"
    except RuntimeError:  # the key was never set: onnxruntime's default, prepacking on
        return True


def mlp(path, layers=3, n=64, opset=17, external=False, seed=0):
    """x [N, n] -> (MatMul -> Tanh) x layers -> y: the weights MatMul prepacks."""
    import onnx

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Tanh", [f"m{i}"], [f"t{i}"], name=f"tanh{i}")]
        prev = f"t{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", n])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)
    return str(path)


def _plain(path, x):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_session_options_switch_prepacking_off_only_when_asked():
    assert _prepacks_options(sessions.session_options())
    assert not _prepacks_options(sessions.session_options(prepack=False))


def _prepacks_options(so) -> bool:
    try:
        return so.get_session_config_entry(KEY) != "1"
    except RuntimeError:
        return True


@pytest.mark.parametrize("external", [False, True])
@pytest.mark.parametrize("opset", [13, 17])
def test_only_the_sampling_session_prepacks(tmp_path, external, opset):
    path = mlp(tmp_path / "m.onnx", opset=opset, external=external)
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    r = Estimator(path, Noise(0.0, at="t0"), samples=4, seed=3, strategy="shared-prefix")
    res = r.run(x)
    # sigma 0: every sample is the plain model's output
    np.testing.assert_allclose(res.mean, _plain(path, x), rtol=1e-5, atol=1e-6)
    assert float(np.abs(res.variance).max()) < 1e-10
    assert not _prepacks(r._reference[0])
    assert r._probe is not None and not _prepacks(r._probe)
    ug, sess, _ = r._built["shared-prefix"]
    assert _prepacks(sess)


def test_dropout_at_the_input_reference_does_not_prepack(tmp_path):
    path = mlp(tmp_path / "m.onnx", external=True)
    x = np.random.default_rng(2).standard_normal((1, 64)).astype(np.float32)
    r = Estimator(path, Dropout(0.0, at="input"), samples=3, seed=1)
    res = r.run(x)
    np.testing.assert_allclose(res.mean, _plain(path, x), rtol=1e-5, atol=1e-6)
    assert not _prepacks(r._reference[0])
    assert all(_prepacks(b[1]) for b in r._built.values() if b is not None)


def _spy_on_prepack(monkeypatch, module) -> list:
    """Record the ``prepack`` argument of every create_session call made through
    ``module``; the sessions are still made."""
    made = []
    real = sessions.create_session

    def spy(model, provider="auto", prepack=True):
        made.append(prepack)
        return real(model, provider, prepack)

    monkeypatch.setattr(module, "create_session", spy)
    return made


def test_export_verifies_without_prepacking(tmp_path, monkeypatch):
    path = mlp(tmp_path / "m.onnx", external=True)
    x = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)
    import tfue_onnx.selection as runner_module

    made = _spy_on_prepack(monkeypatch, runner_module)
    r = Estimator(path, Noise(0.1, at="t1"), samples=4, seed=5)
    ug = r.standalone_graph(x)  # what 'tfue export' writes
    assert ug.sampling == "graph"
    assert made and not any(made)  # reference and verification: nothing packed


def test_axes_probe_does_not_prepack(monkeypatch, tmp_path):
    from tfue_onnx.axes import find_axes
    from tfue_onnx.model import ModelInfo, load_model
    import tfue_onnx.session as session_module

    made = _spy_on_prepack(monkeypatch, session_module)
    from toys import conv_net

    p = str(tmp_path / "c.onnx")
    conv_net(p)
    find_axes(ModelInfo(load_model(p), p))
    assert made == [False]


# --- inline weights stay in the .onnx file ------------------------------------------------
def mixed_inits_net(path, opset=13, big=256):
    """x [N, big] -> MatMul(w_big) -> Add(b_small) -> MatMul(w_float_data) -> y.

    ``w_big`` (big x big float32, raw_data) is large enough to be left in the file;
    ``b_small`` stays inline; ``w_fd`` is large but stored in float_data (not raw_data),
    which tfue leaves as it is."""
    import onnx

    rng = np.random.default_rng(0)
    w_big = (rng.standard_normal((big, big)) / np.sqrt(big)).astype(np.float32)
    b_small = rng.standard_normal(big).astype(np.float32)
    w_fd = (rng.standard_normal((big, 16)) / np.sqrt(big)).astype(np.float32)
    inits = [numpy_helper.from_array(w_big, "w_big"), numpy_helper.from_array(b_small, "b_small"),
             helper.make_tensor("w_fd", TensorProto.FLOAT, w_fd.shape, w_fd.ravel().tolist())]
    nodes = [helper.make_node("MatMul", ["x", "w_big"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b_small"], ["a"], name="add"),
             helper.make_node("MatMul", ["a", "w_fd"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", big])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return str(path), {"w_big": w_big, "b_small": b_small, "w_fd": w_fd}


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_inline_weights_are_left_in_the_model_file(tmp_path, opset):
    import os

    import onnx

    from tfue_onnx import external
    from tfue_onnx.model import load_model

    path, values = mixed_inits_net(tmp_path / "m.onnx", opset)
    model = load_model(path)
    inits = {t.name: t for t in model.graph.initializer}
    big = inits["w_big"]
    assert big.data_location == onnx.TensorProto.EXTERNAL and not big.raw_data
    where, offset, length = external.region(big)
    assert where == os.path.realpath(path) and length == values["w_big"].nbytes
    with open(path, "rb") as f:  # the region is the tensor's own bytes in the file
        f.seek(offset)
        assert f.read(length) == values["w_big"].tobytes()
    for name in ("b_small", "w_fd"):  # small, or not raw_data: inline as they were
        assert inits[name].data_location != onnx.TensorProto.EXTERNAL
    for name, value in values.items():
        np.testing.assert_array_equal(external.read_tensor(inits[name]), value)
    assert model.ByteSize() < values["w_big"].nbytes // 4  # the proto holds no big weight


@pytest.mark.parametrize("strategy", ["shared-prefix", "batched", "loop"])
def test_inline_model_numbers_and_small_graphs(tmp_path, strategy):
    from tfue_onnx import external

    path, values = mixed_inits_net(tmp_path / "m.onnx")
    x = np.random.default_rng(4).standard_normal((2, 256)).astype(np.float32)
    r = Estimator(path, Noise(0.0, at="h"), samples=3, seed=2, strategy=strategy)
    res = r.run(x)
    np.testing.assert_allclose(res.mean, _plain(path, x), rtol=1e-4, atol=1e-5)
    ug, sess, _ = r._built[strategy]
    source, folder = external.session_source(ug.model)
    assert len(source) < values["w_big"].nbytes // 4 and folder == str(tmp_path)
    assert not _prepacks(r._reference[0]) and _prepacks(sess)


def test_inline_model_exports_inline_and_runs(tmp_path):
    import onnx

    from tfue_onnx import Estimator, external

    path, values = mixed_inits_net(tmp_path / "m.onnx")
    out = tmp_path / "u.onnx"
    x = np.random.default_rng(5).standard_normal((1, 256)).astype(np.float32)
    Estimator(path, Noise(0.0, at="h"), samples=2, seed=1).export(out, example=x)
    assert not (tmp_path / "u.onnx.data").exists()
    saved = onnx.load(str(out))
    assert not external.has_external_data(saved)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
    np.testing.assert_allclose(got["y.mean"], _plain(path, x), rtol=1e-4, atol=1e-5)


def test_not_a_model_still_says_so(tmp_path):
    from tfue_onnx.errors import TfueError
    from tfue_onnx.model import load_model

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x0a\xff\xff\xff\xff\x0f" + b"x" * 100)
    with pytest.raises(TfueError, match="is not an ONNX model"):
        load_model(str(bad))


@pytest.mark.parametrize("opset", [13, 17])
def test_inline_export_streams_the_weights_back_bit_for_bit(tmp_path, opset):
    """The exported file holds each weight's own bytes inline (no .data), is a valid
    model, and a stale .data beside the output does not stop the export."""
    import onnx

    from tfue_onnx import Estimator

    path, values = mixed_inits_net(tmp_path / "m.onnx", opset)
    out = tmp_path / "u.onnx"
    (tmp_path / "u.onnx.data").write_bytes(b"old")  # not ours to write: no refusal
    x = np.random.default_rng(6).standard_normal((1, 256)).astype(np.float32)
    Estimator(path, Dropout(0.0, at="h"), samples=2, seed=1).export(out, example=x)
    saved = onnx.load(str(out))
    onnx.checker.check_model(saved)
    inits = {t.name: t for t in saved.graph.initializer}
    for name, value in values.items():
        np.testing.assert_array_equal(numpy_helper.to_array(inits[name]), value)
    assert (tmp_path / "u.onnx.data").read_bytes() == b"old"


def test_export_refuses_to_overwrite_the_file_its_weights_are_in(tmp_path):
    from tfue_onnx import external
    from tfue_onnx.errors import TfueError
    from tfue_onnx.model import load_model

    path, _ = mixed_inits_net(tmp_path / "m.onnx")
    with pytest.raises(TfueError, match="reads its weights from it"):
        external.save_model(load_model(path), path, force=True)


def test_a_strategy_that_fails_verification_lets_go_of_its_session(tmp_path, monkeypatch):
    """Only the verified strategy's session (with its packed weights) stays; a failed
    one is made again when another input signature reaches it."""
    import gc
    import weakref

    from tfue_onnx.verify import Verdict

    path = mlp(tmp_path / "m.onnx", external=True)
    r = Estimator(path, Noise(0.0, at="t0"), samples=3, seed=1)
    real = Estimator._verify
    seen, dropped = [], []

    def verify(self, ug, sess, feeds, reference):
        seen.append((ug.strategy, next(iter(feeds.values())).shape[0]))
        if ug.strategy == "looped-suffix" and next(iter(feeds.values())).shape[0] == 1:
            dropped.append(weakref.ref(sess))
            return Verdict(False, "made to fail")
        return real(self, ug, sess, feeds, reference)

    monkeypatch.setattr(Estimator, "_verify", verify)
    x1 = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    np.testing.assert_allclose(r.run(x1).mean, _plain(path, x1), rtol=1e-5, atol=1e-6)
    gc.collect()
    assert r._built["looped-suffix"][1] is None and dropped[0]() is None  # released
    assert r._built["shared-prefix"][1] is not None and _prepacks(r._built["shared-prefix"][1])
    x2 = np.repeat(x1, 2, axis=0)  # another signature: looped-suffix is tried again
    np.testing.assert_allclose(r.run(x2).mean, _plain(path, x2), rtol=1e-5, atol=1e-6)
    assert seen == [("looped-suffix", 1), ("shared-prefix", 1), ("looped-suffix", 2)]
    assert r._built["looped-suffix"][1] is not None


def test_small_packable_weights_keep_packing(tmp_path, monkeypatch):
    """Turning packing off maps the weights twice (address space); below
    PACK_FREE_BYTES of packable weights a one-shot session keeps packing."""
    import onnx

    monkeypatch.setattr(sessions, "PACK_FREE_BYTES", 64 * 1024**2)
    path = mlp(tmp_path / "m.onnx", layers=3, n=64)
    model = onnx.load(path)
    assert sessions.packed_bytes(model) == 3 * 64 * 64 * 4
    sess, _ = sessions.create_session(model, "cpu", prepack=False)
    assert _prepacks(sess)
    monkeypatch.setattr(sessions, "PACK_FREE_BYTES", 3 * 64 * 64 * 4)
    sess, _ = sessions.create_session(model, "cpu", prepack=False)
    assert not _prepacks(sess)
    # Weights read by ops that do not pack (an embedding's Gather) count for nothing.
    g = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e"])], "emb",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
                          [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 64])],
                          [numpy_helper.from_array(np.zeros((1000, 64), np.float32), "table")])
    assert sessions.packed_bytes(helper.make_model(g)) == 0


def test_a_path_source_is_judged_by_its_graph(tmp_path, monkeypatch):
    """A session made from a path (the reference of a model with external weights) keeps
    packing when little would be packed: the graph is read without its weights."""
    monkeypatch.setattr(sessions, "PACK_FREE_BYTES", 64 * 1024**2)
    path = mlp(tmp_path / "m.onnx", layers=2, n=64, external=True)
    sess, _ = sessions.create_session(path, "cpu", prepack=False)
    assert _prepacks(sess)
    monkeypatch.setattr(sessions, "PACK_FREE_BYTES", 1)
    sess, _ = sessions.create_session(path, "cpu", prepack=False)
    assert not _prepacks(sess)


def test_peak_bytes_follow_the_live_tensors(tmp_path):
    x = np.zeros((1, 3, 8, 8), np.float32)
    model = onnx.load(toys.skip_net(tmp_path / "s.onnx"))
    # conv2 runs while x is gone but c1 (the skip), r1 and c2 are alive: 12 channels;
    # then the Add holds c1, c2 and y: 12 again.
    assert _peak_bytes(model, {"x": x}) == 12 * 64 * 4
    # A chain: at most a tensor and its successor (plus nothing else) are alive.
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    chain = helper.make_model(helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3, 8, 8])]))
    assert _peak_bytes(chain, {"x": x}) == 2 * 3 * 64 * 4
    assert _peak_bytes(chain, {"x": np.zeros((4, 3, 8, 8), np.float32)}) == 4 * 2 * 3 * 64 * 4
