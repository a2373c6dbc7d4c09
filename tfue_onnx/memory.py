"""Memory planning: how many samples one run may hold.

A sample's memory is the peak of the model's tensors alive at once at the real input
shape (:func:`peak_bytes`); the estimator's chunks of samples stay within
``max_memory`` (BENCHMARKS.md compares the estimate with measured peaks).
"""

from __future__ import annotations

import numpy as np

from .errors import ArgumentError

DEFAULT_CHUNK = 8  # samples per run without an input to plan from
MAX_AUTO_CHUNK = 64  # the most samples an automatic chunk holds
DEFAULT_MAX_MEMORY = 2 * 1024**3  # bytes the samples of one run may take


def peak_bytes(model, feeds) -> int:
    """Peak bytes of the tensors alive at once while ``model`` runs on ``feeds``.

    Shape inference sizes every tensor at the real input shape; walking the nodes in
    order, a tensor lives from the node that makes it to the last node that reads it
    (graph outputs to the end), and the peak of the live total is the estimate
    (weights are not counted: they do not grow with the samples). Tensors shape
    inference cannot size count as nothing, so this is an estimate, not a bound.
    Without shape inference, the inputs' bytes.
    """
    import onnx

    from .model import node_inputs

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in feeds:
            dims = vi.type.tensor_type.shape.dim
            for d, size in zip(dims, feeds[vi.name].shape):
                d.Clear()
                d.dim_value = int(size)
    fed = sum(int(v.nbytes) for v in feeds.values())
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:
        return fed
    size = {k: int(v.nbytes) for k, v in feeds.items()}
    for vi in list(m.graph.value_info) + list(m.graph.output):
        tt = vi.type.tensor_type
        dims = [d.dim_value for d in tt.shape.dim]
        if not tt.HasField("shape") or any(d <= 0 for d in dims):
            continue
        try:
            item = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).itemsize
        except Exception:
            item = 4
        size[vi.name] = int(np.prod(dims, dtype=np.int64)) * item
    nodes = list(m.graph.node)
    last = {}
    for k, node in enumerate(nodes):
        for name in node_inputs(node):
            last[name] = k
    for o in m.graph.output:
        last[o.name] = len(nodes)
    live = dict((k, v) for k, v in size.items() if k in feeds)
    total = peak = sum(live.values())
    for k, node in enumerate(nodes):
        for o in node.output:
            if o in size and o not in live:
                live[o] = size[o]
                total += size[o]
        peak = max(peak, total)
        for name in set(node_inputs(node)) | set(node.output):
            if name in live and last.get(name, -1) <= k:
                total -= live.pop(name)
    return max(peak, fed)


def check_chunk(chunk) -> int | None:
    """Validate a chunk size (None = automatic).

    Raises:
        ArgumentError (a ValueError): not an integer >= 1.
    """
    if chunk is None:
        return None
    if isinstance(chunk, bool):
        raise ArgumentError(f"chunk must be an integer, got {chunk!r}", "give --chunk 8")
    try:
        c = int(chunk)
    except (TypeError, ValueError):
        raise ArgumentError(f"chunk must be an integer, got {chunk!r}", "give --chunk 8") from None
    if c < 1 or c != chunk:
        raise ArgumentError(f"chunk must be an integer >= 1, got {chunk}", "give --chunk 8")
    return c


def split_sizes(total: int, chunk: int) -> list:
    """``total`` samples in runs of ``chunk`` (the last one smaller)."""
    sizes = [chunk] * (total // chunk)
    if total % chunk:
        sizes.append(total % chunk)
    return sizes
