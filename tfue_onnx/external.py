"""Weights in external data: find them, keep them on disk, and write them out again.

Models over 2 GB (large transformer exports) keep their weights in separate files;
protobuf cannot hold them in one message. tfue never reads those weights into a
ModelProto. ``load_model`` reads the graph with the tensors left external and
*anchors* every external location to the absolute path of its file: the small
proto can then be copied and rewritten freely (graphsurgeon keeps the
TensorProto of every weight it does not touch), and still says where each
weight lives, even when ensemble members come from different folders.

A model whose weights are inline is read the same way (``read_leaving_weights``):
every large top-level initializer's ``raw_data`` is left in the .onnx file and the
tensor points at its bytes there, as if they were external data. onnxruntime then
maps them from the file as it does external data, and no copy of the proto or of
a session holds them; ``save_model`` writes them inline again.

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
# Inline initializers from this size on are left in the .onnx file (read_leaving_weights).
INLINE_LEAVE_BYTES = 65536
# Real paths of .onnx files whose inline weights tensors point into (save_model inlines
# those again, so an inline model is exported as one file, as before).
_MODEL_FILES: set = set()


def _graph_tensors(graph: onnx.GraphProto):
    """Every TensorProto of ``graph``: initializers, sparse ones' parts, attributes,
    subgraphs' (recursively)."""
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
    """Every TensorProto of ``model`` (subgraphs too) whose data lives in a file
    (``data_location`` EXTERNAL, onnx external data), in graph order."""
    return [t for t in _graph_tensors(model.graph)
            if t.data_location == onnx.TensorProto.EXTERNAL]


def has_external_data(model: onnx.ModelProto) -> bool:
    """Whether any tensor of ``model`` keeps its data in an external file."""
    return any(True for t in _graph_tensors(model.graph)
               if t.data_location == onnx.TensorProto.EXTERNAL)


def _entries(tensor: onnx.TensorProto) -> dict:
    """``tensor``'s external_data entries (location, offset, length, ...) as a dict."""
    return {e.key: e.value for e in tensor.external_data}


def _set_entries(tensor: onnx.TensorProto, entries: dict) -> None:
    """Replace ``tensor``'s external_data entries by ``entries`` (values as strings)."""
    del tensor.external_data[:]
    for key, value in entries.items():
        e = tensor.external_data.add()
        e.key, e.value = key, str(value)


def region(tensor: onnx.TensorProto) -> tuple:
    """``(path, offset, length)`` of an external tensor's bytes (path as stored; offset
    and length in bytes, per onnx's external data entries). Without a ``length`` entry:
    to the end of the file, or -1 when there is no such file."""
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


def _varint(buf, pos: int) -> tuple:
    """The protobuf varint at ``buf[pos]``: ``(value, position after it)``."""
    shift = value = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encode_varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf varint."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if not n:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _fields(buf, start: int, end: int):
    """Protobuf wire fields in ``buf[start:end]``: (number, field start, payload start
    or None when not length-delimited, field end)."""
    pos = start
    while pos < end:
        first = pos
        key, pos = _varint(buf, pos)
        number, kind = key >> 3, key & 7
        if kind == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise ValueError("truncated field")
            yield number, first, pos, pos + n
            pos += n
            continue
        if kind == 0:
            _, pos = _varint(buf, pos)
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {kind}")
        yield number, first, None, pos
    if pos != end:
        raise ValueError("truncated message")


def _key_length(number: int, size: int) -> bytes:
    """The key and length of a length-delimited field ``number`` of ``size`` bytes."""
    return _encode_varint(number << 3 | 2) + _encode_varint(size)


def _delimited(number: int, payload) -> bytes:
    """Length-delimited field ``number`` holding ``payload``, encoded."""
    return _key_length(number, len(payload)) + bytes(payload)


# Field numbers of onnx.proto: ModelProto.graph, GraphProto.initializer, TensorProto.raw_data.
_GRAPH, _INITIALIZER, _RAW_DATA = 7, 5, 9


def _without_raw_data(buf) -> tuple:
    """The ModelProto bytes ``buf`` without the ``raw_data`` of its large top-level
    initializers, and ``[(initializer index, offset, length)]`` of what was left out."""
    regions, out, graphs = [], bytearray(), 0
    for number, first, start, end in _fields(buf, 0, len(buf)):
        if number != _GRAPH or start is None:
            out += buf[first:end]
            continue
        graphs += 1
        if graphs > 1:  # a graph split over several fields (protobuf merges them): the
            raise ValueError("graph field repeated")  # indices would not hold; read whole
        graph, index = bytearray(), 0
        for g_number, g_first, g_start, g_end in _fields(buf, start, end):
            if g_number != _INITIALIZER or g_start is None:
                graph += buf[g_first:g_end]
                continue
            tensor = bytearray()
            for t_number, t_first, t_start, t_end in _fields(buf, g_start, g_end):
                if t_number == _RAW_DATA and t_start is not None and \
                        t_end - t_start >= INLINE_LEAVE_BYTES:
                    regions.append((index, t_start, t_end - t_start))
                else:
                    tensor += buf[t_first:t_end]
            graph += _delimited(_INITIALIZER, tensor)
            index += 1
        out += _delimited(_GRAPH, graph)
    return bytes(out), regions


def read_leaving_weights(path: str) -> onnx.ModelProto | None:
    """Read the model at ``path`` with its large inline weights left in the file: each
    such initializer becomes an external tensor whose location is the .onnx file
    itself (offset and length of its ``raw_data``), so the proto stays small.

    Returns:
        The ModelProto (locations relative to the file's folder, for :func:`anchor`),
        or None when the file cannot be read this way (the caller reads it whole).
    """
    import mmap

    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return None
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                data, regions = _without_raw_data(buf)
        model = onnx.load_model_from_string(data)
    except Exception:  # not protobuf as expected: onnx.load says what is wrong
        return None
    if not regions:
        return model
    tensors = model.graph.initializer
    name = os.path.basename(path)
    for index, offset, length in regions:
        t = tensors[index]
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
            return None  # both raw_data and external entries: leave it to onnx
        _set_entries(t, {"location": name, "offset": offset, "length": length})
        t.data_location = onnx.TensorProto.EXTERNAL
    _MODEL_FILES.add(os.path.realpath(path))
    return model


def read_tensor(tensor: onnx.TensorProto):
    """The numpy value of ``tensor`` (its shape and dtype), reading only its own bytes
    when it is external (locations as anchored by :func:`anchor`, or relative to the
    working folder).

    Raises:
        TfueError: its data file ends before the tensor's last byte. OSError: the file
            cannot be opened.
    """
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
    onnxruntime that cannot be told where the weights are; costs their memory).
    TfueError when a data file ends early (see :func:`read_tensor`)."""
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
    """Real paths of the files holding ``model``'s external data (empty set when it has
    none)."""
    return {os.path.realpath(_entries(t).get("location", "")) for t in external_tensors(model)}


def save_model(model: onnx.ModelProto, path: str, force: bool = False) -> list:
    """Write ``model`` to ``path`` atomically; external weights are copied into
    ``path + '.data'`` beside it (the original data files are only read), each tensor
    at a 64 KiB-aligned offset (onnx external data: ``location``, ``offset``,
    ``length``, relative to the model's folder). Weights that were inline in the
    model's own file (:func:`read_leaving_weights`) go inline again.

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
    from .files import atomic_write_bytes, check_new_file

    path = os.fspath(path)
    tensors = external_tensors(model)
    if tensors and not writes_data_file(model):
        # Weights that were inline in the model's own file go inline again, as they came.
        _refuse_own_files(model, [path])
        _write_inline_again(model, path)
        return [path]
    if not tensors:
        atomic_write_bytes(path, model.SerializeToString())
        return [path]
    data_path = path + ".data"
    _refuse_own_files(model, [path, data_path])
    check_new_file(data_path, force)
    _write_with_data(model, path, data_path)
    return [path, data_path]


def _refuse_own_files(model: onnx.ModelProto, targets: list) -> None:
    """Refuse (TfueError) to write over a file ``model`` reads its weights from."""
    sources = data_files(model)
    for target in targets:
        if os.path.realpath(target) in sources:
            raise TfueError(f"refusing to overwrite '{target}': the model reads its weights "
                            "from it", "give another output path with -o")


def _write_temp(folder: str, suffix: str, write) -> str:
    """A new file in ``folder`` filled by ``write(binary file)``, with the permissions
    of an ordinary new file (mkstemp makes 0600); its path. Removed if writing fails."""
    fd, tmp = tempfile.mkstemp(prefix=".tfue-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as dst:
            write(dst)
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        _discard(tmp)
        raise
    return tmp


def _discard(tmp: str | None) -> None:
    """Remove the temporary file ``tmp`` if there is one (after a failed write)."""
    if tmp is not None and os.path.exists(tmp):
        os.remove(tmp)


def _write_with_data(model: onnx.ModelProto, path: str, data_path: str) -> None:
    """Write ``model`` to ``path`` and its external weights into ``data_path``, both
    under temporary names renamed into place when complete (the data first: a model
    whose rename fails takes its new data file with it)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    folder = os.path.dirname(os.path.abspath(path))
    tmp_data = tmp_model = None
    try:
        tmp_data = _write_temp(folder, ".data.tmp", lambda dst: _copy_regions(
            external_tensors(out), os.path.basename(data_path), dst))
        tmp_model = _write_temp(folder, ".onnx.tmp",
                                lambda dst: dst.write(out.SerializeToString()))
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
            _discard(tmp)


def writes_data_file(model: onnx.ModelProto) -> bool:
    """Whether :func:`save_model` writes ``model``'s weights into a ``.data`` file beside
    it: it has external data other than inline weights left in a model file (those go
    inline again, unless they would pass protobuf's 2 GB)."""
    tensors = external_tensors(model)
    if not tensors:
        return False
    return not all(_in_model_file(t) for t in tensors) or \
        sum(region(t)[2] for t in tensors) + model.ByteSize() >= 1_800_000_000


def keeps_inline_weights_in_file(model: onnx.ModelProto) -> bool:
    """Whether some of ``model``'s tensors were inline in its .onnx file and were left
    there by :func:`read_leaving_weights`."""
    return any(_in_model_file(t) for t in external_tensors(model))


def _write_inline_again(model: onnx.ModelProto, path: str) -> None:
    """Write ``model`` to ``path`` (atomically) with the weights that
    :func:`read_leaving_weights` left in a model file back in their ``raw_data``,
    streamed from that file: no proto and no bytes object holds them all."""
    pieces = _inline_pieces(model)
    tmp = _write_temp(os.path.dirname(os.path.abspath(path)), ".onnx.tmp",
                      lambda dst: _write_pieces(pieces, dst))
    try:
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def _inline_pieces(model: onnx.ModelProto) -> list:
    """The serialised ``model`` with its left-in-file weights inline again, as pieces:
    bytes, or ``(file, offset, length)`` regions to copy from the model file."""
    out = onnx.ModelProto()
    out.CopyFrom(model)  # cheap: the weights are not in it
    regions = {}
    for index, t in enumerate(out.graph.initializer):
        if t.data_location == onnx.TensorProto.EXTERNAL and _in_model_file(t):
            regions[index] = region(t)
            del t.external_data[:]
            t.ClearField("data_location")
    small = out.SerializeToString()
    pieces = []  # bytes, or (file, offset, length) to copy
    for number, first, start, end in _fields(small, 0, len(small)):
        if number != _GRAPH or start is None:
            pieces.append(small[first:end])
            continue
        graph, index = [], 0
        for g_number, g_first, g_start, g_end in _fields(small, start, end):
            if g_number == _INITIALIZER and g_start is not None and index in regions:
                src, offset, length = regions[index]
                body = small[g_start:g_end] + _key_length(_RAW_DATA, length)
                graph += [_key_length(_INITIALIZER, len(body) + length) + body,
                          (src, offset, length)]
            else:
                graph.append(small[g_first:g_end])
            index += g_number == _INITIALIZER
        size = sum(len(p) if isinstance(p, bytes) else p[2] for p in graph)
        pieces += [_key_length(_GRAPH, size)] + graph
    return pieces


def _write_pieces(pieces: list, dst) -> None:
    """Write ``pieces`` (see :func:`_inline_pieces`) into the open file ``dst``."""
    for piece in pieces:
        if isinstance(piece, bytes):
            dst.write(piece)
            continue
        src, offset, length = piece
        with open(src, "rb") as f:
            _copy_bytes(f, offset, length, dst, TfueError(
                f"model file '{src}' ended early", "the model changed on disk while tfue ran"))


def _copy_bytes(src, offset: int, length: int, dst, short: TfueError) -> None:
    """Copy ``length`` bytes at ``offset`` of the open file ``src`` into ``dst`` in
    blocks; raise ``short`` when ``src`` ends first."""
    src.seek(offset)
    while length:
        block = src.read(min(length, _COPY_BLOCK))
        if not block:
            raise short
        dst.write(block)
        length -= len(block)


def _in_model_file(tensor: onnx.TensorProto) -> bool:
    """Whether ``tensor`` points at its bytes inside an .onnx file that held it inline."""
    return os.path.realpath(_entries(tensor).get("location", "")) in _MODEL_FILES


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
                _copy_bytes(files[key[0]], offset, length, dst, TfueError(
                    f"external data file '{src}' ended early",
                    "check that the model's data files are complete"))
                written[key] = pos
            info = _entries(t)
            info.update(location=location, offset=written[key], length=length)
            _set_entries(t, info)
    finally:
        for f in files.values():
            f.close()


def _umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
