"""Which outputs of a model hold class probabilities, and on which axis.

Beside the model description (model.py): an output made by a Softmax (through ops that
keep or move axes) is a class distribution; entropy, mutual information and the
winning class's variance are computed for it (runner, stats.py).
"""

from __future__ import annotations

from .errors import ArgumentError
from .model import ModelInfo
from .names import FLOAT_DTYPES

# Ops that pass a tensor's values through with the same axes.
_SAME_AXES = ("Identity", "Cast", "Dropout")


def find_classes(info: ModelInfo, softmax: bool = False, classify="auto",
                 class_axis: int = 1) -> tuple[dict, list]:
    """The outputs of ``info``'s model that hold class probabilities.

    Args:
        info: the model.
        softmax: the caller appends a softmax over ``class_axis`` to every float
            output (logits): all of them hold probabilities.
        classify: ``"auto"`` finds outputs made by a Softmax (:func:`softmax_axis`,
            following the opset's Softmax semantics); True takes every float output
            as probabilities over ``class_axis``; False none.
        class_axis: the class axis for ``softmax``/``classify=True`` (negative counts
            from the end).

    Returns:
        ``(classes, notes)``: output name -> class axis (an int, or a tuple of axes for
        a pre-13 Softmax over several axes), and why Softmax outputs were left out.

    Raises:
        ArgumentError (a ValueError): ``class_axis`` is outside an output's rank.
    """
    notes = []
    floats = [o for o in info.outputs if o.dtype in FLOAT_DTYPES]

    def axis_of(o):
        rank = len(o.shape) if o.shape is not None else None
        axis = class_axis + rank if (class_axis < 0 and rank) else class_axis
        if rank is not None and not 0 <= axis < rank:
            raise ArgumentError(f"class axis {class_axis} does not exist in output '{o.name}' "
                                f"of rank {rank}", "give --class-axis within the output's rank")
        if o.shape is not None and o.shape[axis] == 1:  # -p ln p of one class means nothing
            raise ArgumentError(f"output '{o.name}' has 1 class on axis {axis} (a single "
                                "probability, such as a sigmoid's, has no distribution over "
                                "classes to take the entropy of)",
                                "use a gray-box method (--method noise or dropout) for its "
                                "variance, or --class-axis for an axis with several classes")
        return axis

    if softmax or classify is True:
        return {o.name: axis_of(o) for o in floats}, notes
    if classify is False:
        return {}, notes
    found = {}
    for o in floats:
        axis, note = softmax_axis(info, o.name)
        if axis is not None:
            found[o.name] = axis
        elif note:
            notes.append(note)
    return found, notes


def softmax_axis(info: ModelInfo, name: str):
    """The class axis of output ``name`` when it holds per-position class probabilities.

    Follows the output back through ops that keep or move axes (Identity, Cast,
    Transpose, Squeeze/Unsqueeze/Reshape/Flatten where the axis can be traced) to a
    Softmax. Before opset 13 ``Softmax(axis=k)`` normalises over all axes from k on
    (the input is coerced to 2-D): the classes are per position only when that is
    one axis (k is the last axis, or the axes after k have size 1); otherwise the
    output is ONE distribution over the flattened axes k.. (a tuple of axes), whose
    entropy has one value per batch item, not a map.

    Returns:
        (axis, note): the class axis in the output (an int; a tuple of axes for a
        pre-13 Softmax over several axes; None when it is not class probabilities),
        and a note saying why a Softmax output was not taken as probabilities (None
        otherwise).
    """
    shapes = info.tensor_infos
    node, path = _softmax_producer(info, name)
    if node is None:  # LogSoftmax outputs are not probabilities
        return None, None
    # The Softmax's shape: its input's, its output's, or the model output's when only
    # shape-keeping ops lie between them.
    known = [shapes.get(node.input[0]), shapes.get(node.output[0])]
    if all(step.op_type in _SAME_AXES for step in path):
        known.append(shapes.get(name))
    src_shape = next((t.shape for t in known if t is not None and t.shape is not None), None)
    rank = len(src_shape) if src_shape is not None else None
    axis = next((a.i for a in node.attribute if a.name == "axis"),
                1 if info.opset < 13 else -1)
    if axis < 0:
        if rank is None:
            return None, None
        axis += rank
    if info.opset < 13:
        found = _flattened_classes(info, name, axis, src_shape, path)
        if found is not None:
            return found
    tensor = node.output[0]
    for step in reversed(path):
        axis = _moved_axis(step, axis, shapes.get(tensor), shapes.get(step.output[0]))
        if axis is None:
            return None, None
        tensor = step.output[0]
    return axis, None


def _softmax_producer(info: ModelInfo, name: str):
    """(the Softmax that makes output ``name`` through axis-keeping or -moving ops, those
    ops output side first); (None, path) when no Softmax makes it."""
    producers = {o: n for n in info.graph.node for o in n.output}
    path = []
    node = producers.get(name)
    while node is not None and node.op_type in _SAME_AXES + (
            "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        path.append(node)
        node = producers.get(node.input[0])
    return (node if node is not None and node.op_type == "Softmax" else None), path


def _flattened_classes(info: ModelInfo, name: str, axis: int, src_shape, path):
    """Before opset 13 ``Softmax(axis=k)`` normalises over the axes k.. together:
    ``(axes, None)`` for one distribution over them, ``(None, note)`` when that cannot
    be traced to the output, None when it is one axis (traced like any other)."""
    trailing = None if src_shape is None else src_shape[axis + 1:]
    if trailing is None:
        return None, (f"output '{name}' comes from Softmax(axis={axis}) at opset "
                      f"{info.opset}, which normalises over all axes from {axis} on, "
                      "and its rank is unknown: it is not treated as class probabilities "
                      "(use --classify --class-axis K to override)")
    if all(d == 1 for d in trailing):
        return None
    # One distribution over all the flattened axes: the classes are those axes
    # together, as long as nothing moves them after.
    if any(step.op_type not in _SAME_AXES for step in path):
        return None, (f"output '{name}' comes from Softmax(axis={axis}) at opset "
                      f"{info.opset}, which normalises over all axes from {axis} on, "
                      "and is reshaped after: it is not treated as class "
                      "probabilities (use --classify --class-axis K to override)")
    return tuple(range(axis, len(src_shape))), None


def _moved_axis(node, axis: int, before, after):
    """Where axis ``axis`` of ``node``'s input is in its output; None when unknown."""
    op = node.op_type
    if op in _SAME_AXES:
        return axis
    if op == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if perm is None:
            rank = len(before.shape) if before is not None and before.shape is not None else None
            return None if rank is None else rank - 1 - axis
        return perm.index(axis) if axis in perm else None
    if before is None or after is None or before.shape is None or after.shape is None:
        # Shapes unknown: a reshape is taken to keep the class axis where it is, as long
        # as the output (when its rank is known) has that axis.
        rank = None if after is None or after.shape is None else len(after.shape)
        return axis if rank is None or axis < rank else None
    src, dst = list(before.shape), list(after.shape)
    if src == dst:
        return axis
    # Axes dropped or added around the class axis: the class axis is the one with the
    # same size whose leading dims (size-1 ones aside) are the same.
    def lead(shape, k):
        return [d for d in shape[:k] if d != 1]

    size = src[axis]
    if not isinstance(size, int) or size == 1:
        return None
    hits = [k for k, d in enumerate(dst) if d == size and lead(dst, k) == lead(src, axis)]
    return hits[0] if len(hits) == 1 else None
