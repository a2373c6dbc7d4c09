"""Weights in external data: find them, keep them on disk, and write them out again.

Models over 2 GB (large transformer exports) keep their weights in separate files;
protobuf cannot hold them in one message. tfue never reads those weights into a
ModelProto. ``load_model`` reads the graph with the tensors left external and
*anchors* every external location to the absolute path of its file: the small
proto can then be copied and rewritten freely (graphsurgeon keeps the
TensorProto of every weight it does not touch), and still says where each
weight lives, even when ensemble members come from different folders.

Absolute locations are tfue's in-memory convention only. onnxruntime refuses
them (and any location that leaves its folder), so a session gets a copy whose
locations are relative to the folder that holds every data file, which it is
told through a session option (``session_source``); ``save_model`` writes an
exported model with its weights copied beside it (``OUT.onnx.data``).
"""

from __future__ import annotations

import os
import tempfile

import onnx

from .errors import TfueError

# onnxruntime reads the weights of a model loaded from bytes from this folder.
FOLDER_KEY = "session.model_external_initializers_file_folder_path"
# Exported tensors start on 64 KiB boundaries: onnxruntime may map them into memory.
ALIGN = 65536
_COPY_BLOCK = 16 * 1024 * 1024


def _graph_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def external_tensors(model: onnx.ModelProto) -> list:
    """Every TensorProto of ``model`` (subgraphs too) whose data lives in a file."""
    return [t for t in _graph_tensors(model.graph)
            if t.data_location == onnx.TensorProto.EXTERNAL]


def has_external_data(model: onnx.ModelProto) -> bool:
    """Whether any tensor of ``model`` keeps its data in an external file."""
    return any(True for t in _graph_tensors(model.graph)
               if t.data_location == onnx.TensorProto.EXTERNAL)


def _entries(tensor: onnx.TensorProto) -> dict:
    return {e.key: e.value for e in tensor.external_data}


def _set_entries(tensor: onnx.TensorProto, entries: dict) -> None:
    del tensor.external_data[:]
    for key, value in entries.items():
        e = tensor.external_data.add()
        e.key, e.value = key, str(value)


def region(tensor: onnx.TensorProto) -> tuple:
    """``(path, offset, length)`` of an external tensor's bytes (path as stored)."""
    info = _entries(tensor)
    path = info.get("location", "")
    offset = int(info.get("offset", 0) or 0)
    if "length" in info:
        length = int(info["length"])
    else:
        length = os.path.getsize(path) - offset if os.path.isfile(path) else -1
    return path, offset, length


def anchor(model: onnx.ModelProto, base_dir: str, model_path: str) -> onnx.ModelProto:
    """Check that every external tensor's data is readable and make its location the
    absolute real path of its file (in place; returns ``model``).

    Args:
        model: a model loaded with ``load_external_data=False``.
        base_dir: the folder of the .onnx file (locations are relative to it).
        model_path: the model's path, for messages.

    Raises:
        TfueError: a location is missing, absolute, outside ``base_dir``, or its file
            is missing or too short.
    """
    hint = "keep the model's .data files beside the .onnx file"
    base = os.path.realpath(base_dir)
    sizes = {}
    for t in external_tensors(model):
        info = _entries(t)
        loc = info.get("location")
        where = f"'{model_path}' refers to external data that could not be read"
        if not loc:
            raise TfueError(f"{where} (tensor '{t.name}' has no location)", hint)
        if os.path.isabs(loc):
            raise TfueError(f"{where} (tensor '{t.name}' has the absolute location '{loc}', "
                            "which onnxruntime refuses)",
                            "save the model with locations relative to its folder")
        path = os.path.realpath(os.path.join(base, loc))
        if os.path.commonpath([base, path]) != base:
            raise TfueError(f"{where} (tensor '{t.name}': '{loc}' is outside the model's "
                            "folder, which onnxruntime refuses)", hint)
        if path not in sizes:
            if not os.path.isfile(path):
                raise TfueError(f"{where} (tensor '{t.name}': file '{loc}' not found)", hint)
            sizes[path] = os.path.getsize(path)
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if "length" in info else sizes[path] - offset
        if offset < 0 or length < 0 or offset + length > sizes[path]:
            raise TfueError(f"{where} (tensor '{t.name}': bytes {offset}..{offset + length} "
                            f"lie beyond the end of '{loc}', {sizes[path]} bytes)", hint)
        info["location"] = path
        _set_entries(t, info)
    return model


def read_tensor(tensor: onnx.TensorProto):
    """The numpy value of ``tensor``, reading only its own bytes when it is external
    (locations as anchored by :func:`anchor`, or relative to the working folder)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return onnx.numpy_helper.to_array(tensor)
    inline = onnx.TensorProto()
    inline.CopyFrom(tensor)
    _load_into(inline)
    return onnx.numpy_helper.to_array(inline)


def _load_into(tensor: onnx.TensorProto) -> None:
    """Read an external tensor's bytes into its ``raw_data`` (external data is raw,
    little-endian, as raw_data is) and make it an ordinary tensor."""
    path, offset, length = region(tensor)
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(length)
    if len(raw) != length:
        raise TfueError(f"external data file '{path}' ended early (tensor '{tensor.name}')",
                        "check that the model's data files are complete")
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
    tensor.raw_data = raw


def inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every external tensor's data read into it (for an
    onnxruntime that cannot be told where the weights are; costs their memory)."""
    full = onnx.ModelProto()
    full.CopyFrom(model)
    for t in external_tensors(full):
        _load_into(t)
    return full


def session_source(model: onnx.ModelProto):
    """``(bytes, folder)`` for onnxruntime: the model serialised with its external
    locations relative to ``folder``, the folder that holds all of its data files;
    ``folder`` is None for a model without external data."""
    tensors = external_tensors(model)
    if not tensors:
        return model.SerializeToString(), None
    small = onnx.ModelProto()
    small.CopyFrom(model)  # cheap: external tensors hold no data
    tensors = external_tensors(small)
    paths = [os.path.realpath(_entries(t)["location"]) for t in tensors]
    folder = os.path.commonpath([os.path.dirname(p) for p in paths])
    for t, p in zip(tensors, paths):
        info = _entries(t)
        info["location"] = os.path.relpath(p, folder)
        _set_entries(t, info)
    return small.SerializeToString(), folder


def data_files(model: onnx.ModelProto) -> set:
    """Real paths of the files holding ``model``'s external data."""
    return {os.path.realpath(_entries(t).get("location", "")) for t in external_tensors(model)}


def save_model(model: onnx.ModelProto, path: str, force: bool = False) -> list:
    """Write ``model`` to ``path`` atomically; external weights are copied into
    ``path + '.data'`` beside it (the original data files are only read).

    Both files are written under temporary names and renamed into place only when
    complete, so a failure leaves neither half-written.

    Args:
        model: the model; external locations as anchored by :func:`anchor`.
        path: the .onnx file to write.
        force: overwrite existing files (never the model's own data files).

    Returns:
        The paths written: ``[path]`` or ``[path, path + '.data']``.

    Raises:
        TfueError: the data file exists (without ``force``) or is one the model reads.
    """
    from .io import atomic_write_bytes, check_new_file

    path = os.fspath(path)
    tensors = external_tensors(model)
    if not tensors:
        atomic_write_bytes(path, model.SerializeToString())
        return [path]
    data_path = path + ".data"
    sources = data_files(model)
    for target in (path, data_path):
        if os.path.realpath(target) in sources:
            raise TfueError(f"refusing to overwrite '{target}': the model reads its weights "
                            "from it", "give another output path with -o")
    check_new_file(data_path, force)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    folder = os.path.dirname(os.path.abspath(path))
    tmp_data = tmp_model = None
    try:
        fd, tmp_data = tempfile.mkstemp(prefix=".tfue-", suffix=".data.tmp", dir=folder)
        with os.fdopen(fd, "wb") as dst:
            _copy_regions(external_tensors(out), os.path.basename(data_path), dst)
        os.chmod(tmp_data, 0o666 & ~_umask())
        fd, tmp_model = tempfile.mkstemp(prefix=".tfue-", suffix=".onnx.tmp", dir=folder)
        with os.fdopen(fd, "wb") as dst:
            dst.write(out.SerializeToString())
        os.chmod(tmp_model, 0o666 & ~_umask())
        os.replace(tmp_data, data_path)
        tmp_data = None
        try:
            os.replace(tmp_model, path)
        except BaseException:
            os.remove(data_path)  # a data file without its model is of no use
            raise
        tmp_model = None
    finally:
        for tmp in (tmp_data, tmp_model):
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)
    return [path, data_path]


def _copy_regions(tensors, location: str, dst) -> None:
    """Copy each tensor's bytes into ``dst`` and point the tensor there; a region
    shared by several tensors is written once."""
    written = {}
    files = {}
    try:
        for t in tensors:
            src, offset, length = region(t)
            key = (os.path.realpath(src), offset, length)
            if key not in written:
                pos = dst.tell()
                pad = -pos % ALIGN
                if pad:
                    dst.write(b"\0" * pad)
                    pos += pad
                if key[0] not in files:
                    files[key[0]] = open(key[0], "rb")
                f = files[key[0]]
                f.seek(offset)
                left = length
                while left:
                    block = f.read(min(left, _COPY_BLOCK))
                    if not block:
                        raise TfueError(f"external data file '{src}' ended early",
                                        "check that the model's data files are complete")
                    dst.write(block)
                    left -= len(block)
                written[key] = pos
            info = _entries(t)
            info.update(location=location, offset=written[key], length=length)
            _set_entries(t, info)
    finally:
        for f in files.values():
            f.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
