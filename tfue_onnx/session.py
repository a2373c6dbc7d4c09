"""onnxruntime sessions with explicit, verified execution providers.

``get_available_providers()`` lists CUDA on machines where the CUDA provider
cannot load (no GPU, missing CUDA/cuDNN libraries), and onnxruntime then falls
back to the CPU quietly. So a session's provider is read back from the session
itself after creating it, and the run reports what really ran.
"""

from __future__ import annotations

import os
import re
import tempfile

from .errors import ArgumentError, TfueError
from .names import PROVIDERS
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_cuda_failed = False  # once CUDA fails to load in this process, don't try again


def _ort():
    import onnxruntime

    return onnxruntime


# Distributions that all install the Python package `onnxruntime` into one folder.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml",
                     "onnxruntime-openvino", "onnxruntime-silicon")


def conflicting_onnxruntimes() -> list:
    """The onnxruntime distributions installed side by side (empty when at most one).

    Each of them installs the package ``onnxruntime``; with two, the files of one
    overwrite the other's and imports or providers break in ways that do not name the
    cause (installing tfue where plain ``onnxruntime`` already was adds
    ``onnxruntime-gpu`` on Linux x86-64 and Windows). Read from the installed
    metadata; nothing is imported.
    """
    from importlib import metadata

    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found if len(found) > 1 else []


# Session option that stops onnxruntime from packing the weights of MatMul, Gemm, Conv,
# LSTM ... into a layout of its own at session creation: a packed copy lives in the
# session's anonymous memory (as large as the weights), beside the weights themselves.
NO_PREPACK_KEY = "session.disable_prepacking"


def session_options(quiet: bool = True, prepack: bool = True, threads: int | None = None):
    """Session options.

    Args:
        quiet: leave reporting to tfue: onnxruntime's warnings about the overridable
            inputs and its error logs (raised as TfueError too) are hidden.
        prepack: let onnxruntime pack the weights for speed (a copy as large as the
            weights). False for sessions that run only a few times (the original
            model's reference run, probes, verification of an export): their memory
            then stays the weights' own (memory-mapped external data costs none).
        threads: onnxruntime's intra-op thread count (None: its default, one per
            physical core). With 1 the thread pool does not spin either: on a loaded
            machine that can be the faster choice (the runner measures it).

    Returns:
        onnxruntime.SessionOptions.
    """
    so = _ort().SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        if threads == 1:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if quiet:
        so.log_severity_level = 4
    if not prepack:
        so.add_session_config_entry(NO_PREPACK_KEY, "1")
    return so


def _model_source(model):
    """What InferenceSession gets: ``(path or bytes, external-data folder or None,
    temporary folder to remove or None)``.

    A model loaded by tfue keeps its weights in their external files: the small proto
    goes as bytes and onnxruntime reads the weights from the folder that holds them
    (no copy). Only a proto that holds over 2 GB of weights itself is written out.
    """
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model), None, None
    from .external import has_external_data, inlined, session_source

    if has_external_data(model):
        if folder_option_supported():
            data, folder = session_source(model)
            return data, folder, None
        model = inlined(model)  # the weights' memory, as tfue needed before
    if model.ByteSize() < 1_800_000_000:
        return model.SerializeToString(), None, None
    # Protobuf cannot serialize 2 GB; onnxruntime reads external data from a folder.
    import onnx

    tmp = tempfile.TemporaryDirectory(prefix="tfue-")
    path = os.path.join(tmp.name, "model.onnx")
    onnx.save(model, path, save_as_external_data=True, location="model.data")
    return path, None, tmp


def folder_option_supported() -> bool:
    """Whether onnxruntime reads the external data of a model given as bytes from a
    folder named in the session options (onnxruntime >= 1.21)."""
    try:
        major, minor = (int(p) for p in _ort().__version__.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) >= (1, 21)


# Ops whose constant weights onnxruntime's CPU provider packs into a copy of its own.
PACKED_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "LSTM", "GRU", "RNN", "Attention",
              "FusedConv", "FusedGemm", "FusedMatMul", "MatMulInteger", "QLinearConv",
              "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulNBits", "MatMulIntegerToFloat",
              "DynamicQuantizeLSTM"}
# Below this many bytes of packable weights a packed copy costs little memory, while
# turning packing off costs address space (onnxruntime then maps the weights twice; a
# process under an address-space limit such as `prlimit --as` can run out of it).
PACK_FREE_BYTES = 64 * 1024**2


def packed_bytes(model) -> int:
    """Bytes of the initializers that ``model``'s packing ops read (a copy of them is
    what prepacking adds to a session's memory); read from the dims, weights untouched.

    Args:
        model: an onnx.ModelProto (top-level graph; subgraph weights are not counted).
    """
    import numpy as np
    import onnx

    inits = {t.name: t for t in model.graph.initializer}
    used = {i for n in model.graph.node if n.op_type in PACKED_OPS for i in n.input if i in inits}
    total = 0
    for name in used:
        t = inits[name]
        try:
            item = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except Exception:
            item = 4
        total += int(np.prod(t.dims, dtype=np.int64)) * item
    return total


def _graph_only(model):
    """``model`` as a ModelProto; a path is read without its external data."""
    if isinstance(model, (str, os.PathLike)):
        import onnx

        return onnx.load(os.fspath(model), load_external_data=False)
    return model


def check_provider(provider) -> str:
    """``provider`` when it is one of PROVIDERS (auto, cpu, cuda).

    Raises:
        ArgumentError (a ValueError): any other value.
    """
    if provider not in PROVIDERS:
        raise ArgumentError(f"unknown provider {provider!r}", "use auto, cpu or cuda")
    return provider


def create_session(model, provider: str = "auto", prepack: bool = True,
                   threads: int | None = None):
    """Create an InferenceSession on ``provider`` (auto, cpu or cuda).

    Args:
        model: a path, or a ModelProto (tfue's external-data convention).
        provider: auto, cpu or cuda.
        prepack: False for a session that runs only a few times (reference, probes,
            verification): onnxruntime then keeps no packed copy of the weights
            (see :func:`session_options`), when that copy would be large (over
            ``PACK_FREE_BYTES`` of packable weights; below it packing
            stays on, as it costs little memory and less address space). The
            sampling session keeps it (speed).
        threads: intra-op threads (see :func:`session_options`; None: default).

    Returns:
        ``(session, provider_name)`` where provider_name is ``"cuda"`` or ``"cpu"``
        as read back from the session.

    Raises:
        TfueError: unknown provider, ``cuda`` that cannot load, or a model that
            onnxruntime cannot load.
    """
    global _cuda_failed
    check_provider(provider)
    ort = _ort()
    if not prepack:
        prepack = packed_bytes(_graph_only(model)) < PACK_FREE_BYTES
    source, folder, tmp = _model_source(model)
    try:
        want_cuda = provider == "cuda" or (provider == "auto" and not _cuda_failed
                                           and _CUDA in ort.get_available_providers())
        if provider == "cuda" and _CUDA not in ort.get_available_providers():
            raise TfueError("--provider cuda was asked for, but this onnxruntime has no CUDA "
                            "execution provider",
                            "install onnxruntime-gpu (and not onnxruntime beside it), or use "
                            "--provider auto")
        if want_cuda:
            old = getattr(ort, "get_default_logger_severity", lambda: 2)()
            ort.set_default_logger_severity(4)  # a failed CUDA load is expected on CPU machines
            try:
                sess = _new_session(ort, source, [_CUDA, _CPU], folder, prepack, threads)
            finally:
                ort.set_default_logger_severity(old)
            if sess.get_providers()[0] == _CUDA:
                return sess, "cuda"
            _cuda_failed = True
            if provider == "cuda":
                raise TfueError("--provider cuda was asked for, but the CUDA execution provider "
                                "did not load (no GPU, or CUDA/cuDNN libraries missing)",
                                "check 'nvidia-smi' and the onnxruntime-gpu CUDA requirements, "
                                "or use --provider cpu")
            return sess, "cpu"
        return _new_session(ort, source, [_CPU], folder, prepack, threads), "cpu"
    finally:
        if tmp is not None:
            tmp.cleanup()


def _new_session(ort, source, providers, folder=None, prepack=True, threads=None):
    options = session_options(prepack=prepack, threads=threads)
    if folder is not None:
        from .external import FOLDER_KEY

        options.add_session_config_entry(FOLDER_KEY, folder)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TfueError(f"onnxruntime cannot load the model: {first}",
                        "check that the model runs in plain onnxruntime") from exc


def run_session(sess, feeds: dict) -> dict:
    """Run ``sess`` on ``feeds``: output name -> array.

    Raises:
        TfueError: onnxruntime failed (its message cleaned, the input shapes named;
            the original exception is the cause).
    """
    try:
        values = sess.run(None, feeds)
    except Exception as exc:
        raise model_failed({k: v.shape for k, v in feeds.items()
                             if not k.startswith("tfue")}, exc) from exc
    return dict(zip([o.name for o in sess.get_outputs()], values))


def run_bound(sess, device_feeds: dict, extra: dict) -> dict:
    """Run with IO binding: the model inputs are OrtValues already on the device
    (bound once for every chunk); the small extra feeds and the statistics go
    through the host.

    Raises:
        TfueError: onnxruntime failed (as :func:`run_session`).
    """
    binding = sess.io_binding()
    for name, value in device_feeds.items():
        binding.bind_ortvalue_input(name, value)
    for name, value in extra.items():
        binding.bind_cpu_input(name, value)
    names = [o.name for o in sess.get_outputs()]
    for name in names:
        binding.bind_output(name, "cpu")
    try:
        sess.run_with_iobinding(binding)
    except Exception as exc:
        raise model_failed({k: v.shape() for k, v in device_feeds.items()}, exc) from exc
    return dict(zip(names, binding.copy_outputs_to_cpu()))


def device_feeds(feeds: dict, provider: str, io_binding: bool | None = None):
    """``feeds`` as OrtValues on ``provider``'s device when IO binding is on
    (``io_binding`` None: on CUDA only), else None (feed numpy arrays)."""
    use = io_binding if io_binding is not None else provider == "cuda"
    if not use:
        return None
    ort = _ort()

    device = "cuda" if provider == "cuda" else "cpu"
    return {k: ort.OrtValue.ortvalue_from_numpy(v, device, 0) for k, v in feeds.items()}


def model_failed(shapes: dict, exc) -> TfueError:
    """The error for onnxruntime failing on inputs of ``shapes`` (name -> shape)."""
    named = ", ".join(f"{k}{tuple(v)}" for k, v in shapes.items())
    return TfueError(f"the model failed on input {named}: {ort_message(exc)}",
                     "check the input size and layout the model expects "
                     "(for images: --resize HxW)")


def ort_message(exc) -> str:
    """onnxruntime's error, without its source paths and C++ signatures."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"/onnxruntime_src/\S+:\d+ ", "", text)
    text = re.sub(r"(?:[\w:]+ )?onnxruntime::[\w:<>]+\([^)]*\)\s*", "", text)
    text = re.sub(r"(Status Message: ).*? was false\.\s*", r"\1", text)
    return text[:240]
