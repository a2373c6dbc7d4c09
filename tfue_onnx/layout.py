"""Where an image's axes are, the batch axis, and evenly spaced picks (load/inspect stage).

The one place that guesses layouts: of a model's declared image input
(:func:`image_layout`, :func:`image_axes`, :func:`image_input`), of a declared
output shape (:func:`declared_layout`) and of a computed 4-D array
(:func:`array_layout`). Also the one place that adds a missing batch axis
(:func:`with_batch`) and picks evenly spaced items (:func:`evenly_spaced`).
Imports only ``errors`` (and ``model``'s types): the rewrite stage (graph/), the
measures and every later stage read layouts from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import ArgumentError, TfueError
from .names import FLOAT_DTYPES, LAYOUTS

if TYPE_CHECKING:  # types only: importing this module loads no onnx
    from .model import ModelInfo, TensorInfo

IMAGE_CHANNELS = (1, 3)  # what a declared channel axis of an image holds

__all__ = ["LAYOUTS", "check_layout", "declared_layout", "image_layout", "image_axes",
           "image_input", "array_layout", "with_batch", "evenly_spaced"]


def declared_layout(shape) -> str | None:
    """The layout of a declared 4-D image shape, from where its 1 or 3 channels are.

    Args:
        shape: a declared shape (ints, and str or None for free dimensions).

    Returns:
        "NCHW" when only axis 1 holds 1 or 3, "NHWC" when only axis 3 does, else
        None (both, neither, or not of rank 4).
    """
    if shape is None or len(shape) != 4:
        return None
    first, last = shape[1] in IMAGE_CHANNELS, shape[3] in IMAGE_CHANNELS
    if first != last:
        return "NCHW" if first else "NHWC"
    return None


def check_layout(layout) -> str:
    """``layout`` when it is one of LAYOUTS (auto, NCHW, NHWC).

    Raises:
        ArgumentError (a ValueError): any other value.
    """
    if layout not in LAYOUTS:
        raise ArgumentError(f"unknown layout {layout!r}", "use --layout auto, NCHW or NHWC")
    return layout


def image_layout(inp: TensorInfo, layout: str = "auto") -> str:
    """The layout (NCHW or NHWC) of a 4-D image input.

    Args:
        inp: the input (its declared ``shape``).
        layout: auto (guess from :func:`declared_layout`), NCHW or NHWC (taken as given).

    Raises:
        TfueError: the input is not 4-D, or auto cannot tell (hint: ``--layout``).
    """
    shape = inp.shape
    if shape is None or len(shape) != 4:
        raise TfueError(f"input '{inp.name}' has shape {shape}, not a 4-D image batch",
                        "feed a .npy/.npz array instead of an image")
    if check_layout(layout) != "auto":
        return layout
    found = declared_layout(shape)
    if found is None:
        raise TfueError(f"cannot tell whether input '{inp.name}' {list(shape)} is NCHW or NHWC",
                        "pass --layout NCHW or --layout NHWC")
    return found


def image_axes(inp: TensorInfo, layout: str = "auto") -> tuple:
    """The (h, w) axes of an image input: (1, 2) for [N, H, W], (2, 3) for NCHW,
    (1, 2) for NHWC.

    Raises:
        TfueError: the input is not of rank 3 or 4, or its 4-D layout is unclear.
    """
    if inp.shape is not None and len(inp.shape) == 3:
        return (1, 2)
    return (2, 3) if image_layout(inp, layout) == "NCHW" else (1, 2)


def image_input(info: ModelInfo, layout: str = "auto"):
    """The model's image input and its (h, w) axes, or (None, None).

    An image input is the only input, float, of rank 3 ``[N, H, W]`` or 4 (layout
    from :func:`image_layout`: given, or guessed from 1 or 3 channels). (None, None)
    also when a 4-D input's layout cannot be told.
    """
    if len(info.inputs) != 1:
        return None, None
    inp = info.inputs[0]
    if inp.shape is None or inp.dtype not in FLOAT_DTYPES or len(inp.shape) not in (3, 4):
        return None, None
    try:
        return inp, image_axes(inp, layout)
    except TfueError:
        return None, None


def array_layout(shape) -> str:
    """The guessed layout of a computed 4-D array (an output, a variance) whose axes
    are not known: "NHWC" when its last axis is small (<= 4) and axis 1 is not, else
    "NCHW". Callers with found axes (``axes.SpatialAxes``) use those instead."""
    return "NHWC" if len(shape) == 4 and shape[-1] <= 4 < shape[1] else "NCHW"


def with_batch(arr: np.ndarray, shape) -> np.ndarray:
    """``arr`` with a leading batch axis of 1 when it has one axis fewer than ``shape``
    (the declared shape of the input or output it is for); else ``arr`` as it is
    (also when ``shape`` is None: undeclared)."""
    arr = np.asarray(arr)
    if shape is not None and arr.ndim == len(shape) - 1:
        return arr[None]
    return arr


def evenly_spaced(items, k: int, ends: bool = True) -> list:
    """Up to ``k`` items of ``items`` evenly spaced by position, in order, no repeats.

    Args:
        items: a sequence.
        k: how many to pick (>= 1); all items when there are no more than ``k``.
        ends: include the first and the last item (positions ``i * (n-1) / (k-1)``);
            False keeps off both ends (``(i+1) * (n-1) / (k+1)``), as ``--at auto``
            picks intermediate locations.

    Returns:
        A list of at most ``k`` items (fewer when rounding makes positions meet).

    Raises:
        ValueError: ``k`` < 1.
    """
    items, k = list(items), int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(items)
    if n <= k:
        return items
    if ends:
        idx = {round(i * (n - 1) / max(k - 1, 1)) for i in range(k)}
    else:
        idx = {round((i + 1) * (n - 1) / (k + 1)) for i in range(k)}
    return [items[i] for i in sorted(idx)]
