"""Reading inputs (images, .npy, .npz, folders) the way ``tfue run`` does (report stage).

Inputs become feed dicts (:func:`load_input`; the public :func:`load_image` for one
image) and maps become 2-D arrays for pictures (:func:`spatial_map`). Writing files
(atomic writes, output folders, JSON, npz) is ``files.py``'s; pictures are
``plots.py``'s; layouts and the batch axis come from ``layout.py``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from .errors import ArgumentError, TfueError
from .layout import LAYOUTS, array_layout, check_layout, image_layout, with_batch
from .names import CHANNEL_ORDERS

__all__ = ["IMAGE_EXTS", "ARRAY_EXTS", "LAYOUTS", "ImageOptions", "collect_inputs",
           "check_image_options", "read_npy", "read_npz", "npz_feeds", "load_input",
           "load_image", "read_image", "open_image", "image_to_input", "spatial_map"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
ARRAY_EXTS = (".npy", ".npz")
IMAGE_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # Pillow's 16-bit gray modes


# --- pictures -------------------------------------------------------------------------


def spatial_map(arr: np.ndarray, axes=None) -> np.ndarray | None:
    """Reduce an output-shaped array to an HxW map (mean over the other axes), or None.

    Args:
        arr: an output (or its variance), any rank.
        axes: the output's (h, w) axes as found by ``axes.AxesProbe`` (recorded in a
            result's ``metadata["spatial_axes"]``); ``False``: the output has none
            (no map). None: guess from the shape (rank 4 is NCHW unless the last
            axis is small (<= 4) and axis 1 is not: ``layout.array_layout``; rank 3
            is [B, H, W]).

    Returns:
        A float64 array [H, W], or None when there is no map (or it is 1 pixel wide).
    """
    a = np.asarray(arr, dtype=np.float64)
    if axes is False:
        return None
    if axes is not None:
        h, w = (int(k) % a.ndim for k in axes)
        others = tuple(k for k in range(a.ndim) if k not in (h, w))
        m = a.mean(axis=others) if others else a
        if h > w:
            m = m.T
    elif a.ndim == 4:
        if array_layout(a.shape) == "NHWC":
            a = a.transpose(0, 3, 1, 2)
        m = a.mean(axis=(0, 1))
    elif a.ndim == 3:
        m = a.mean(axis=0)
    else:
        return None
    return m if m.shape[0] > 1 and m.shape[1] > 1 else None


# --- reading --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """How an image file becomes a model input (``tfue run``'s image options).

    Attributes:
        layout: auto, NCHW or NHWC (``layout.image_layout``).
        channel_order: rgb or bgr.
        scale: pixel values (0..255) are multiplied by this first; for 16-bit images
            (Pillow modes I;16 / I) the default 1/255 becomes 1/65535 (the same range).
        mean, std: per-channel numbers (one per channel or one for all) in scaled
            units, applied as ``(x - mean) / std``; None: not applied.
        resize: (height, width) in pixels; None: the input's fixed size, else the image's.

    Raises:
        TfueError: (on construction) an unknown layout or channel order, a zero or
            non-finite scale, a mean/std that is empty or not finite, a std with a 0.
    """

    layout: str = "auto"  # auto, NCHW or NHWC
    channel_order: str = "rgb"  # rgb or bgr
    # Pixel values are multiplied by this first. For 16-bit images (Pillow modes
    # I;16 / I) the default 1/255 becomes 1/65535: the same [0, 1] range.
    scale: float = 1 / 255
    mean: tuple | None = None  # then (x - mean) / std per channel
    std: tuple | None = None
    resize: tuple | None = None  # (H, W); default: the model's fixed size, else the image's

    def __post_init__(self):
        check_layout(self.layout)
        if self.channel_order not in CHANNEL_ORDERS:
            raise ArgumentError(f"unknown channel order {self.channel_order!r}", "use rgb or bgr")
        try:
            scale = float(self.scale)
        except (TypeError, ValueError):
            scale = float("nan")
        if not (np.isfinite(scale) and scale != 0):
            raise ArgumentError(f"--scale must be a finite, non-zero number, got {self.scale!r}",
                            "e.g. --scale 0.00392156 (1/255)")
        for name, values in (("--mean", self.mean), ("--std", self.std)):
            if values is None:
                continue
            try:
                arr = np.asarray(values.split(",") if isinstance(values, str) else values,
                                 dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise ArgumentError(f"{name} must be numbers, got {values!r}",
                                    f"e.g. {name} 0.485,0.456,0.406") from None
            object.__setattr__(self, name[2:], tuple(float(a) for a in arr))
            if arr.size == 0 or not np.all(np.isfinite(arr)):
                raise ArgumentError(f"{name} must be finite numbers, got {values!r}",
                                f"e.g. {name} 0.485,0.456,0.406")
            if name == "--std" and np.any(arr == 0):
                raise ArgumentError(f"--std must not contain 0 (inputs are divided by it), got "
                                    f"{values!r}", "e.g. --std 0.229,0.224,0.225")
        object.__setattr__(self, "resize", parse_size(self.resize))


def parse_size(value) -> tuple | None:
    """An image size: None, ``"HxW"`` (e.g. ``"640x640"``) or a (height, width) pair of
    whole numbers >= 1, as ``(h, w)`` ints (None stays None).

    Raises:
        ArgumentError (a ValueError): anything else.
    """
    if value is None:
        return None
    try:
        parts = value.lower().split("x") if isinstance(value, str) else list(value)
        h, w = (int(v) for v in parts)
        if h < 1 or w < 1 or (not isinstance(value, str) and
                              any(float(v) != int(v) for v in parts)):
            raise ValueError
    except (TypeError, ValueError):
        raise ArgumentError(f"--resize must look like HxW (two whole numbers >= 1), got "
                            f"{value!r}", "e.g. --resize 640x640") from None
    return (h, w)


def collect_inputs(paths, unique_stems: bool = True) -> list:
    """Expand folders into their input files (sorted); check every path exists.

    Args:
        paths: files and folders (str or path-like), in order.
        unique_stems: refuse two inputs with one name stem (for commands that write a
            file per input, named after it).

    Returns:
        The input files (images IMAGE_EXTS, arrays ARRAY_EXTS) as str paths.

    Raises:
        TfueError: a path does not exist or is no input; a folder has no input files;
            nothing given; two inputs share a name stem (their results would collide),
            with ``unique_stems``.
    """
    files = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p)
                           if f.lower().endswith(IMAGE_EXTS + ARRAY_EXTS))
            if not found:
                raise TfueError(f"folder '{p}' has no input files",
                                "put .png/.jpg images or .npy/.npz arrays in it")
            files.extend(found)
        elif os.path.exists(p):
            if not p.lower().endswith(IMAGE_EXTS + ARRAY_EXTS):
                raise TfueError(f"input '{p}' is not an image or a .npy/.npz array",
                                "give PNG/JPEG images or .npy/.npz files")
            files.append(p)
        else:
            raise TfueError(f"input '{p}' does not exist", "check the path")
    if not files:
        raise TfueError("no inputs given", "pass image files, .npy/.npz arrays or a folder")
    return check_unique_stems(files) if unique_stems else files


def check_unique_stems(files: list) -> list:
    """``files``, refused when two share a name stem (the files written for each input
    are named after it).

    Raises:
        TfueError: naming the two.
    """
    stems = {}
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        if stem in stems:
            raise TfueError(f"inputs '{stems[stem]}' and '{f}' share the name '{stem}', which "
                            "names the files written for each", "rename one of them or run "
                            "them separately")
        stems[stem] = f
    return files


def check_image_options(files, options: "ImageOptions") -> None:
    """Refuse image-reading options that would be ignored: ``mean``, ``std``, ``resize``,
    a ``scale`` other than 1/255 and the ``bgr`` channel order apply to image files
    only, and arrays (.npy/.npz) are fed as they are.

    Raises:
        TfueError: such an option is set and one of ``files`` is an array.
    """
    arrays = [f for f in files if os.fspath(f).lower().endswith(ARRAY_EXTS)]
    if not arrays:
        return
    set_ = [flag for flag, on in (("--mean", options.mean is not None),
                                  ("--std", options.std is not None),
                                  ("--resize", options.resize is not None),
                                  ("--scale", options.scale != ImageOptions.scale),
                                  ("--channel-order bgr", options.channel_order == "bgr")) if on]
    if set_:
        raise TfueError(f"{', '.join(set_)} appl{'y' if len(set_) > 1 else 'ies'} to image "
                        f"files, but '{arrays[0]}' is an array, which is fed as it is",
                        "normalise arrays before saving them, or pass image files")


def read_npy(path: str) -> np.ndarray:
    """The array of a .npy file (no pickles).

    Raises:
        TfueError: the file cannot be read as a .npy array.
    """
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise TfueError(f"cannot read '{path}' as a .npy array ({exc})",
                        "save it with numpy.save") from None


def read_npz(path: str) -> dict:
    """name -> array of a .npz archive, all read into memory (no pickles).

    Raises:
        TfueError: the file cannot be read as an .npz archive.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise TfueError(f"cannot read '{path}' as an .npz archive ({exc})",
                        "save it with numpy.savez") from None


def npz_feeds(arrays: dict, inputs: list, path: str) -> dict:
    """The feed dict for a model with ``inputs`` (TensorInfo list) from the arrays of
    an .npz file: each array named after its input (one array feeds a one-input model
    whatever its name); a batch axis of 1 is added to an array one axis short of its
    input's declared rank (``layout.with_batch``). Arrays not named after an input
    are ignored (``evaluate`` keeps its ``target`` beside the inputs).

    Raises:
        TfueError: an input has no array.
    """
    names = [i.name for i in inputs]
    if len(arrays) == 1 and len(inputs) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    if any(n not in arrays for n in names):
        raise TfueError(f"'{path}' has arrays {sorted(arrays)}, which do not match the model's "
                        f"inputs {names}", "name the arrays after the model's inputs")
    return {i.name: with_batch(arrays[i.name], i.shape) for i in inputs}


def load_input(path: str, inputs: list, options: ImageOptions = ImageOptions()) -> dict:
    """Read one input file into a feed dict, as ``tfue run`` does.

    Args:
        path: an image (IMAGE_EXTS), a .npy array (for a one-input model) or an .npz
            archive (one array per input name, see :func:`npz_feeds`).
        inputs: the model's inputs (``ModelInfo.inputs``, TensorInfo list).
        options: how images become inputs (:class:`ImageOptions`); arrays are fed as
            they are, with a batch axis of 1 added when one axis short.

    Returns:
        input name -> array (images: float32, see :func:`image_to_input`).

    Raises:
        TfueError: the file cannot be read, or does not fit the model's inputs.
    """
    low = path.lower()
    if low.endswith(".npy"):
        if len(inputs) != 1:
            raise TfueError(f"'{path}' holds one array but the model has {len(inputs)} inputs",
                            "use an .npz with one array per input name")
        return {inputs[0].name: with_batch(read_npy(path), inputs[0].shape)}
    if low.endswith(".npz"):
        return npz_feeds(read_npz(path), inputs, path)
    if len(inputs) != 1:
        raise TfueError(f"the model has {len(inputs)} inputs, so an image alone cannot feed it",
                        "use an .npz with one array per input name")
    return {inputs[0].name: read_image(path, inputs[0], options)}


def open_image(path: str):
    """Open an image file with Pillow, fully loaded (the file is closed again).

    Raises:
        TfueError: Pillow cannot read it as an image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im
    except (UnidentifiedImageError, OSError) as exc:
        raise TfueError(f"cannot read '{path}' as an image ({exc})",
                        "give a PNG or JPEG file") from None


def read_image(path: str, inp, options: ImageOptions = ImageOptions()) -> np.ndarray:
    """Read an image file as a 1-image batch laid out for input ``inp`` (TensorInfo):
    :func:`image_to_input` of the opened file (the worker behind :func:`load_image`)."""
    return image_to_input(open_image(path), inp, options)


def load_image(path, model, *, layout: str = "auto", channel_order: str = "rgb",
               scale: float = 1 / 255, mean=None, std=None, resize=None) -> np.ndarray:
    """Load an image file as the input array of ``model``, exactly as ``tfue run`` does.

    The image is converted to the model's channels (1: gray, 3: RGB; a 16-bit gray
    image keeps its 16 bits), resized with Pillow's bilinear filter to ``resize`` or
    else to the input's fixed height and width (free ones take the image's size),
    optionally reordered to BGR, multiplied by ``scale``, then ``(x - mean) / std``
    per channel, laid out NCHW or NHWC and given a batch axis of 1. The same code
    reads the images of ``tfue run`` (``load_input``), so ``Estimator(...)`` on this
    array gives the result ``tfue run`` writes for the file.

    Args:
        path: an image file (.png, .jpg, .bmp, .tif, .webp, ...).
        model: the model whose (single) input the image feeds: an ``Estimator`` (its
            own, possibly padded, model: the one ``tfue run`` reads for), a
            ``ModelInfo``, an ``onnx.ModelProto``, or the path of an .onnx file.
        layout: auto (from where the input's 1 or 3 channels are), NCHW or NHWC
            (``--layout``).
        channel_order: rgb or bgr (``--channel-order``).
        scale: the pixel values (0..255; 0..65535 for 16-bit images, whose default
            scale becomes 1/65535) are multiplied by this first (``--scale``).
        mean, std: per-channel numbers (one per channel, or one for all), in the
            scaled units; None: not applied (``--mean``, ``--std``).
        resize: (height, width) in pixels or ``"HxW"``, or None: the input's fixed
            size if it has one, else the image's own (``--resize``).

    Returns:
        A C-contiguous float32 array ``[1, C, H, W]`` (NCHW) or ``[1, H, W, C]``
        (NHWC), C being 1 or 3 as the input declares; values in ``scale`` units.

    Raises:
        TfueError: the file is not an image (or a 32-bit float one); the model has
            not exactly one input, or its input is not a 4-D image batch whose layout
            can be told; a bad option (unknown layout or channel order, zero or
            non-finite scale, ``mean``/``std`` of the wrong length or with a zero std).
    """
    if not os.fspath(path).lower().endswith(IMAGE_EXTS):
        raise TfueError(f"'{path}' is not an image file ({', '.join(IMAGE_EXTS)})",
                        "read arrays with numpy.load")
    options = ImageOptions(layout=layout, channel_order=channel_order, scale=scale,
                           mean=mean, std=std, resize=resize)
    inputs = _model_inputs(model)
    if len(inputs) != 1:
        raise TfueError(f"the model has {len(inputs)} inputs, so an image alone cannot feed it",
                        "build the feed dict yourself, one array per input name")
    return load_input(os.fspath(path), inputs, options)[inputs[0].name]


def _model_inputs(model) -> list:
    """The inputs (TensorInfo list) of an Estimator, ModelInfo, ModelProto or .onnx path."""
    from .model import ModelInfo, inspect_model

    info = getattr(model, "info", model)
    if isinstance(info, ModelInfo):
        return info.inputs
    if isinstance(info, (str, os.PathLike)):
        return inspect_model(os.fspath(info)).inputs
    import onnx

    if isinstance(info, onnx.ModelProto):
        return ModelInfo(info).inputs
    raise ArgumentError(f"model must be an Estimator, ModelInfo, onnx.ModelProto or .onnx path, "
                    f"got {type(model).__name__}", "pass the Estimator you will run")


def image_to_input(im, inp, options: ImageOptions = ImageOptions()) -> np.ndarray:
    """A Pillow image as a 1-image batch laid out, sized and scaled for input ``inp``.

    Args:
        im: a loaded Pillow image (any mode but 32-bit float ``F``).
        inp: the model's image input (TensorInfo, declared 4-D shape).
        options: layout, channel order, scale, mean/std and size (:class:`ImageOptions`).

    Returns:
        float32 ``[1, C, H, W]`` (NCHW) or ``[1, H, W, C]`` (NHWC), C-contiguous, in
        ``scale`` units then ``(x - mean) / std``; H, W from ``options.resize``, else the
        input's fixed size, else the image's (bilinear resize).

    Raises:
        TfueError: the input's layout cannot be told; ``mean``/``std`` of the wrong
            length; a 32-bit float image, or 16-bit values beyond 65535.
    """
    from PIL import Image

    layout = image_layout(inp, options.layout)
    shape = inp.shape
    channels = shape[1] if layout == "NCHW" else shape[3]
    h_dim, w_dim = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    _check_norm_lengths(options, channels, inp.name)
    im, scale = _pixels(im, channels, options.scale)
    size = options.resize
    if size is None and isinstance(h_dim, int) and h_dim > 0 \
            and isinstance(w_dim, int) and w_dim > 0:
        size = (h_dim, w_dim)
    if size is not None and (im.height, im.width) != tuple(size):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] != (1 if channels == 1 else 3):  # a 16-bit gray image for an RGB model
        arr = np.repeat(arr, 3, axis=-1)
    if options.channel_order == "bgr" and arr.shape[-1] == 3:
        arr = arr[..., ::-1]
    arr = arr * np.float32(scale)
    if options.mean is not None:
        arr = arr - np.asarray(options.mean, np.float32).reshape(1, 1, -1)
    if options.std is not None:
        arr = arr / np.asarray(options.std, np.float32).reshape(1, 1, -1)
    arr = arr[None]
    if layout == "NCHW":
        arr = arr.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_norm_lengths(options: ImageOptions, channels, name: str) -> None:
    """Refuse a ``mean``/``std`` that has neither one value nor one per channel."""
    for flag, values in (("--mean", options.mean), ("--std", options.std)):
        n = np.size(values)
        if values is not None and n not in (1, channels):
            raise ArgumentError(f"{flag} has {n} values, but input '{name}' takes images with "
                            f"{channels} channel(s)",
                            f"give one value per channel ({channels}) or one for all")


def _pixels(im, channels, scale: float):
    """(image in mode L, RGB or F, scale): 16-bit gray images keep their 16 bits (mode
    F, and the default scale 1/255 becomes 1/65535); others are converted to the
    model's channels (1: L, else RGB)."""
    from PIL import Image

    what = getattr(im, "filename", "") or "the image"
    if im.mode == "F":  # Pillow would clip the floats to 0..255 when converting
        raise TfueError(f"'{what}' is a 32-bit float image, whose value range tfue cannot tell",
                        "save it as a .npy array with the values the model expects")
    if im.mode not in IMAGE_16BIT_MODES:
        return im.convert("L" if channels == 1 else "RGB"), scale
    # Pillow would clip 16-bit values to 255 when converting to L or RGB.
    gray = np.asarray(im, dtype=np.float32)
    if gray.size and float(gray.max()) > 65535:
        raise TfueError(f"'{what}' holds {im.mode}-mode values up to {gray.max():g}, beyond "
                        "16 bits", "save it as a .npy array with the values the model expects")
    return Image.fromarray(gray), (1 / 65535 if scale == 1 / 255 else scale)
