"""What a model is fed: validating inputs, synthetic inputs, input signatures.

Beside the model description (model.py); the estimator checks every input here before
any graph is built or run.
"""

from __future__ import annotations

import numpy as np

from .errors import ArgumentError, TfueError
from .model import ModelInfo
from .names import FLOAT_DTYPES
from .perturb import Transform


def check_feeds(info: ModelInfo, feeds, pad: int | None = None, pad_input=None) -> dict:
    """Validate inputs against the model's signature.

    Args:
        info: the model (its inputs' names, dtypes and shapes; free dims take any size).
        feeds: an array (a model with one input) or a dict input name -> array.
        pad: ``--pad`` pixels, checked against the image's size (None: no padding).
        pad_input: ``(input name, (h axis, w axis))`` that ``pad`` applies to.

    Returns:
        Input name -> C-contiguous array, in the model's input order; float inputs of
        another float dtype are cast to the model's.

    Raises:
        ArgumentError (a TfueError and ValueError): a missing, unknown, wrong-rank, wrong-size or wrong-dtype input
            (non-float data of another dtype), NaN/Inf values, or an image too small
            for ``pad``.
    """
    if not isinstance(feeds, dict):
        if len(info.inputs) != 1:
            raise ArgumentError(f"the model has {len(info.inputs)} inputs; pass a dict "
                            "of arrays by input name",
                            "inputs: " + ", ".join(i.name for i in info.inputs))
        feeds = {info.inputs[0].name: feeds}
    out = {}
    for inp in info.inputs:
        if inp.name not in feeds:
            raise ArgumentError(f"missing input '{inp.name}'",
                            "the model's inputs are: "
                            + ", ".join(i.name for i in info.inputs))
        arr = _checked(inp, np.asarray(feeds[inp.name]))
        if pad and pad_input[0] == inp.name:
            for axis in pad_input[1]:
                if 2 * pad >= arr.shape[axis]:
                    raise ArgumentError(f"--pad {pad} needs an image more than twice as "
                                    f"large: input '{inp.name}' has size {arr.shape[axis]} "
                                    f"on axis {axis}",
                                    "use a smaller --pad (reflect padding mirrors the "
                                    "image's own pixels)")
        out[inp.name] = np.ascontiguousarray(arr)
    extra = set(feeds) - set(out)
    if extra:
        raise ArgumentError(f"unknown input(s) {', '.join(sorted(map(repr, extra)))}",
                        "the model's inputs are: " + ", ".join(out))
    return out


def _checked(inp, arr: np.ndarray) -> np.ndarray:
    """``arr`` checked against model input ``inp`` (dtype, rank, fixed sizes, finite
    values); a float array of another float dtype is cast to the model's."""
    want = onnx_dtype(inp.dtype)
    if want is not None and arr.dtype != want:
        if arr.dtype.kind == "f" and want.kind == "f":
            arr = arr.astype(want)
        else:
            raise ArgumentError(f"input '{inp.name}' has dtype {arr.dtype}, the model "
                            f"expects {want}",
                            f"convert it, e.g. array.astype('{want}')")
    if inp.shape is not None:
        if arr.ndim != len(inp.shape):
            raise ArgumentError(f"input '{inp.name}' has shape {tuple(arr.shape)}, the model "
                            f"expects rank {len(inp.shape)} {fmt_shape(inp.shape)}",
                            "add or remove axes (a batch axis first)")
        for axis, (got, dim) in enumerate(zip(arr.shape, inp.shape)):
            if isinstance(dim, int) and dim > 0 and got != dim:
                channels = min(got, dim) <= 4  # a channel axis, not a size
                raise ArgumentError(f"input '{inp.name}' has shape {tuple(arr.shape)}, the "
                                    f"model expects {fmt_shape(inp.shape)} (axis {axis} "
                                    f"must be {dim})",
                                    f"give {dim} channels on axis {axis} (images: check "
                                    "--layout)" if channels else
                                    "resize the input to the model's size (images: --resize "
                                    "HxW)")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ArgumentError(f"input '{inp.name}' contains {bad} NaN or infinite values",
                        "clean the input (e.g. np.nan_to_num) before running")
    return arr


def synthetic_input(info: ModelInfo, size: int = 64) -> dict:
    """A synthetic input for ``info``'s model: free dims become 1 (axis 0, the batch)
    or ``size``; float inputs N(0, 1) from a fixed seed (0), others zeros.

    Returns:
        Input name -> array of the input's dtype (float32 when unknown).

    Raises:
        TfueError: an input of unknown rank (the hint asks for a real example).
    """
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in info.inputs:
        if inp.shape is None:
            raise TfueError(f"input '{inp.name}' has no known shape to make an example from",
                            "pass an example input (--example FILE)")
        shape = [d if isinstance(d, int) and d > 0 else (1 if axis == 0 else size)
                 for axis, d in enumerate(inp.shape)]
        dtype = onnx_dtype(inp.dtype) or np.float32
        if dtype.kind == "f":
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[inp.name] = np.zeros(shape, dtype)
    return feeds


def check_inputs_fit(info: ModelInfo, spec) -> None:
    """Refuse up front a method the model's inputs do not fit (before any work).

    Raises:
        TfueError: infer-transformation on a model without one float image input
            (the hint names the gray-box methods, which take any input).
    """
    if not isinstance(spec, Transform):
        return
    inputs = info.inputs
    if len(inputs) == 1 and inputs[0].dtype in FLOAT_DTYPES and inputs[0].shape is not None \
            and len(inputs[0].shape) in (3, 4):
        return
    listed = ", ".join(f"{i.name} {i.dtype} " + ("[rank unknown]" if i.shape is None else
                                                 "[" + ", ".join(map(str, i.shape)) + "]")
                       for i in inputs)
    raise TfueError("infer-transformation needs one image input (float, [N,C,H,W]/[N,H,W,C]/"
                    f"[N,H,W]); this model has {len(inputs)} input"
                    f"{'' if len(inputs) == 1 else 's'}: {listed}",
                    "use a gray-box method instead: --method noise or --method dropout "
                    "(perturbs an inner tensor, any input type)")


def onnx_dtype(info_dtype: str):
    """The numpy dtype of a ModelInfo dtype name (None when numpy has none)."""
    try:
        return np.dtype(info_dtype)
    except TypeError:
        return None


def signature(feeds: dict) -> tuple:
    """An input signature (names, shapes, dtypes): what graphs, probes, draws and
    verifications are cached by."""
    return tuple((k, v.shape, v.dtype.str) for k, v in sorted(feeds.items()))


def fmt_shape(shape) -> str:
    """A model shape as text, free dims as ``?``."""
    return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in shape) + "]"
