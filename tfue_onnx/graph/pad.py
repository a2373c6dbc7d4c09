"""Reflect padding of the image input, for valid-convolution models.

A valid-convolution model (no zero padding: waifu2x's upconv_7, SRCNN-style
networks) returns an output smaller than its input by a border: for upconv_7 the
x2 output is ``2 * (H - 2 * 7)``. ``with_pad`` puts a ``Pad`` node (mode
``reflect``) between the model's image input and the rest of the graph, so the
result covers the whole image. It rewrites the model itself, before any
uncertainty graph is built: the graph that is sampled, the one that is verified
against ("the original model on the padded input") and the one ``tfue export``
writes all carry the same Pad, so run == export.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import ArgumentError, TfueError
from ..layout import image_input
from ..model import ModelInfo
from .builder import Builder, finish, prefix_for

__all__ = ["with_pad", "check_pad", "pad_axes"]


def check_pad(pad) -> int:
    """``pad`` (pixels per side) as an int >= 0.

    Raises:
        TfueError: ``pad`` is negative, a bool or not a whole number.
    """
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ArgumentError(f"--pad must be a whole number of pixels >= 0 (or auto), got {pad!r}",
                        "e.g. --pad 7 for a border of 7 pixels per side, or --pad auto")
    return int(pad)


def pad_axes(info: ModelInfo, layout: str = "auto"):
    """(input name, (h axis, w axis)) of the image input that ``--pad`` pads.

    Raises:
        TfueError: the model has no single float image input (rank 3 or 4).
    """
    inp, axes = image_input(info, layout)
    if inp is None:
        raise TfueError("--pad pads an image input, and the model has none (one float input "
                        "[N, H, W], [N, C, H, W] or [N, H, W, C]: inputs "
                        + ", ".join(f"{i.name} {i.dtype} {i.shape}" for i in info.inputs) + ")",
                        "drop --pad and pad the input yourself; for a 4-D input whose "
                        "channels are unclear, pass --layout NCHW or NHWC")
    return inp.name, axes


def with_pad(info: ModelInfo, pad: int, layout: str = "auto") -> ModelInfo:
    """``info``'s model with its image input reflect-padded by ``pad`` on each side of H, W.

    The graph input keeps its name (users feed the unpadded image); the model's
    own tensors keep theirs, and locations (``--at``, depths, indices) still refer
    to the user's graph: ``--at input`` means the padded image the model reads.

    Args:
        info: the user's model (or a model derived from it).
        pad: pixels per side, >= 1.
        layout: auto, NCHW or NHWC: where H and W are in a 4-D input.

    Returns:
        The ModelInfo of the padded model (``locations_from``: the user's model).

    Raises:
        TfueError: no image input; a fixed input size too small for ``pad``.
    """
    pad = check_pad(pad)
    name, (h, w) = pad_axes(info, layout)
    graph = gs.import_onnx(info.model)
    prefix = prefix_for(info.model)
    b = Builder(graph, prefix + "pad/", info.opset)
    inner = next(t for t in graph.inputs if t.name == name)
    shape = list(inner.shape) if inner.shape is not None else None
    if shape is not None:
        for axis in (h, w):
            dim = shape[axis]
            if isinstance(dim, int) and dim > 0:
                if dim - 2 * pad <= pad:  # reflect needs pad < the unpadded size
                    raise TfueError(f"--pad {pad} does not fit input '{name}' of fixed size "
                                    f"{dim} on axis {axis}: the image fed would be {dim - 2 * pad}",
                                    "use a smaller --pad")
                shape[axis] = dim - 2 * pad
            else:
                shape[axis] = None
    outer = gs.Variable(name, dtype=inner.dtype, shape=shape)
    inner.name = b.name("padded")
    pads = [0] * (2 * len(shape or [0] * 4))
    rank = len(pads) // 2
    pads[h] = pads[w] = pads[rank + h] = pads[rank + w] = pad
    if info.opset >= 11:
        b.op("Pad", [outer, b.ints("pads", pads)], {"mode": "reflect"}, out=inner)
    else:  # Pad-2: pads is an attribute
        b.op("Pad", [outer], {"mode": "reflect", "pads": pads}, out=inner)
    graph.inputs = [outer if t is inner else t for t in graph.inputs]
    model = finish(graph, info)
    user = info.locations_from or info
    aliases = dict(info.aliases)
    aliases[name] = inner.name
    return ModelInfo(model, info.path, locations_from=user, aliases=aliases)
