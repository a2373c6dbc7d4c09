"""session.py: sessions on the provider that really ran, options, and the messages a
model onnxruntime cannot load gets."""

import types

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import toys
from tfue_onnx import session
from tfue_onnx.errors import TfueError

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def test_cpu_session_runs_the_model_and_reports_cpu(toy, x8):
    path = toy()
    sess, provider = session.create_session(path, "cpu")
    assert provider == "cpu" and sess.get_providers() == [CPU]
    [y] = sess.run(None, {"x": x8})
    expected = toys.run_plain(onnx.load(path), {"x": x8})["y"]
    np.testing.assert_array_equal(y, expected)
    # A ModelProto works the same (sent as bytes).
    sess2, provider2 = session.create_session(onnx.load(path), "cpu", threads=2)
    assert provider2 == "cpu" and sess2.get_session_options().intra_op_num_threads == 2
    np.testing.assert_array_equal(sess2.run(None, {"x": x8})[0], expected)


def test_unknown_provider_is_refused(toy):
    with pytest.raises(TfueError, match="unknown provider 'gpu'") as e:
        session.create_session(toy(), "gpu")
    assert e.value.hint == "use auto, cpu or cuda"


def test_a_model_onnxruntime_cannot_load_gets_one_clean_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf at all\n" * 4)
    with pytest.raises(TfueError) as e:
        session.create_session(str(bad), "cpu")
    text = str(e.value)
    assert text.startswith("onnxruntime cannot load the model: ") and "\n" not in text
    assert len(text) > len("onnxruntime cannot load the model: ")  # ort's first line kept
    assert e.value.hint == "check that the model runs in plain onnxruntime"


class _FakeSession:
    def __init__(self, loads_cuda, calls):
        self.loads_cuda, self.calls = loads_cuda, calls

    def __call__(self, source, sess_options=None, providers=()):
        self.calls.append(list(providers))
        got = [p for p in providers if p != CUDA or self.loads_cuda]
        return types.SimpleNamespace(get_providers=lambda: got)


def _fake_ort(monkeypatch, listed, loads_cuda):
    """onnxruntime as session.py sees it: ``listed`` providers, CUDA loading or not."""
    import onnxruntime

    calls, severity = [], [2]
    fake = types.SimpleNamespace(
        SessionOptions=onnxruntime.SessionOptions, __version__=onnxruntime.__version__,
        get_available_providers=lambda: list(listed),
        InferenceSession=_FakeSession(loads_cuda, calls),
        get_default_logger_severity=lambda: severity[0],
        set_default_logger_severity=lambda s: severity.__setitem__(0, s))
    monkeypatch.setattr(session, "_ort", lambda: fake)
    monkeypatch.setattr(session, "_cuda_failed", False)
    return calls, severity


def test_auto_reports_cpu_when_cuda_is_listed_but_does_not_load(toy, monkeypatch):
    calls, severity = _fake_ort(monkeypatch, [CUDA, CPU], loads_cuda=False)
    assert session.create_session(toy(), "auto")[1] == "cpu"
    assert calls == [[CUDA, CPU]] and severity == [2]  # logger severity put back
    assert session._cuda_failed
    session.create_session(toy(), "auto")
    assert calls[-1] == [CPU]  # not tried again in this process
    with pytest.raises(TfueError, match="the CUDA execution provider did not load"):
        session.create_session(toy(), "cuda")


def test_cuda_that_loads_is_reported(toy, monkeypatch):
    calls, _ = _fake_ort(monkeypatch, [CUDA, CPU], loads_cuda=True)
    assert session.create_session(toy(), "auto")[1] == "cuda"
    assert session.create_session(toy(), "cuda")[1] == "cuda"
    assert session.create_session(toy(), "cpu")[1] == "cpu"
    assert calls == [[CUDA, CPU], [CUDA, CPU], [CPU]]


def test_cuda_asked_of_an_onnxruntime_without_it(toy, monkeypatch):
    calls, _ = _fake_ort(monkeypatch, [CPU], loads_cuda=False)
    with pytest.raises(TfueError, match="this onnxruntime has no CUDA execution provider"):
        session.create_session(toy(), "cuda")
    assert calls == []
    assert session.create_session(toy(), "auto")[1] == "cpu" and calls == [[CPU]]


@pytest.mark.parametrize("installed, expected", [
    ({"onnxruntime": "1.20.0"}, []),
    ({}, []),
    ({"onnxruntime-gpu": "1.31.1", "onnxruntime-openvino": "1.19.0"},
     ["onnxruntime-gpu 1.31.1", "onnxruntime-openvino 1.19.0"]),
    ({"onnxruntime": "1.2", "onnxruntime-directml": "1.3", "onnxruntime-silicon": "1.4",
      "onnxruntime-extensions": "0.9"},  # extensions is no build of onnxruntime
     ["onnxruntime 1.2", "onnxruntime-directml 1.3", "onnxruntime-silicon 1.4"]),
])
def test_conflicting_onnxruntimes(monkeypatch, installed, expected):
    from importlib import metadata

    def version(name):
        if name in installed:
            return installed[name]
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "version", version)
    assert session.conflicting_onnxruntimes() == expected


def _entry(so, key):
    try:
        return so.get_session_config_entry(key)
    except RuntimeError:  # onnxruntime: no such entry
        return None


def test_session_options():
    so = session.session_options()
    assert so.log_severity_level == 4
    assert _entry(so, session.NO_PREPACK_KEY) is None  # prepacking on
    off = session.session_options(quiet=False, prepack=False, threads=3)
    assert _entry(off, session.NO_PREPACK_KEY) == "1"
    assert off.intra_op_num_threads == 3 and off.log_severity_level != 4
    assert _entry(off, "session.intra_op.allow_spinning") is None
    one = session.session_options(threads=1)
    assert one.intra_op_num_threads == 1
    assert _entry(one, "session.intra_op.allow_spinning") == "0"


def test_packed_bytes_counts_the_weights_of_packing_ops(toy):
    model = onnx.load(toy())
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert session.packed_bytes(model) == sum(a.nbytes for a in inits.values())  # Conv only
    assert session.packed_bytes(model) == (4 * 3 * 9 + 4 + 2 * 4 * 9 + 2) * 4


@pytest.mark.parametrize("version, supported", [("1.20.1", False), ("1.21.0", True),
                                                ("2.0.0", True), ("dev", True)])
def test_folder_option_by_onnxruntime_version(monkeypatch, version, supported):
    monkeypatch.setattr(session, "_ort", lambda: types.SimpleNamespace(__version__=version))
    assert session.folder_option_supported() is supported
