"""Reading inputs (images, .npy, .npz, folders) and writing results atomically.

Every file is written to a temporary name in its folder and renamed into place,
so a crash never leaves a half-written file, and nothing that exists is
overwritten unless the caller says ``force``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile

import numpy as np

from .errors import TfueError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
ARRAY_EXTS = (".npy", ".npz")
LAYOUTS = ("auto", "NCHW", "NHWC")
IMAGE_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # Pillow's 16-bit gray modes


# --- writing --------------------------------------------------------------------------
def check_new_file(path: str, force: bool) -> None:
    """Raise unless ``path`` can be written: it must not exist (or ``force``)."""
    if os.path.isdir(path):
        raise TfueError(f"'{path}' is a folder", "give a file path")
    if os.path.exists(path) and not force:
        raise TfueError(f"'{path}' already exists and would be overwritten",
                        "pass --force to overwrite it, or choose another output path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise TfueError(f"the folder '{parent}' does not exist", "create it first")
    if not os.access(parent, os.W_OK):
        raise TfueError(f"the folder '{parent}' is not writable",
                        "choose an output path in a folder you can write to")


def check_out_dir(path: str) -> str:
    """Check, without creating anything, that ``path`` can become the output folder.

    The folder must be a folder if it exists; otherwise the nearest existing
    folder above it must be writable (and no file may sit on the way).

    Raises:
        TfueError: ``path`` is a file, lies under a file, or cannot be created.
    """
    path = os.fspath(path)
    if not path.strip():
        raise TfueError("the output folder is an empty name", "give a folder with --out")
    if os.path.exists(path) and not os.path.isdir(path):
        raise TfueError(f"output path '{path}' is a file, not a folder",
                        "give a folder with --out")
    above = os.path.abspath(path)
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise TfueError(f"output folder '{path}' cannot be created: '{above}' is a file",
                        "give a folder with --out")
    if not os.access(above, os.W_OK | os.X_OK):
        raise TfueError(f"output folder '{path}' is not writable ('{above}' is read-only)",
                        "choose a folder you can write to with --out")
    return path


def prepare_out_dir(path: str) -> str:
    """Create the output folder if needed and prove it is writable.

    Raises:
        TfueError: ``path`` is a file or cannot be written.
    """
    path = check_out_dir(path)
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tfue-probe-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise TfueError(f"output folder '{path}' is not writable ({exc.strerror})",
                        "choose a folder you can write to with --out") from None
    return path


@contextlib.contextmanager
def cleanup_out_dir(path: str):
    """Within this block, folders made for ``path`` are removed again on an error if
    nothing was written in them, so a refused run leaves no empty output folder."""
    made, above = [], os.path.abspath(os.fspath(path))
    while not os.path.exists(above):
        made.append(above)
        above = os.path.dirname(above)
    try:
        yield path
    except BaseException:
        for folder in made:  # deepest first
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: str, write) -> None:
    """Call ``write(file)`` on a temporary binary file beside ``path``, then rename it
    to ``path``: a reader never sees a half-written file, and a failure leaves none."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tfue-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_npz(path: str, arrays: dict, metadata: dict, compress: bool = False) -> None:
    """Write arrays and a JSON metadata string to ``path`` (.npz) atomically.

    Args:
        path: the .npz file.
        arrays: name -> array, each stored once as it is.
        metadata: JSON-able dict, stored as a 0-d string array ``metadata``.
        compress: zip-deflate the arrays (``numpy.savez_compressed``): smaller files,
            about 50x slower to write for float maps; off by default (``--compress``).
    """
    save = np.savez_compressed if compress else np.savez
    meta = np.array(json.dumps(metadata, default=str))
    atomic_write(path, lambda f: save(f, **arrays, metadata=meta))


def plain_json(obj):
    """``obj`` with NaN and infinities as None, so the JSON is standard."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return plain_json(obj.item())
    if isinstance(obj, np.ndarray):
        return plain_json(obj.tolist())
    return obj


def save_json(path: str, obj) -> None:
    """Write ``obj`` as indented, standard JSON (NaN as null) atomically."""
    atomic_write_bytes(path, (json.dumps(plain_json(obj), indent=2, default=str) + "\n")
                       .encode())


def save_png(path: str, rgb: np.ndarray) -> None:
    """Write an HxWx3 uint8 image atomically."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


# --- pictures -------------------------------------------------------------------------
_VIRIDIS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
                    dtype=np.float64)


def spatial_map(arr: np.ndarray, axes=None) -> np.ndarray | None:
    """Reduce an output-shaped array to an HxW map (mean over the other axes), or None.

    Args:
        arr: an output (or its variance), any rank.
        axes: the output's (h, w) axes as found by ``axes.AxesProbe`` (recorded in a
            result's ``metadata["spatial_axes"]``); ``False``: the output has none
            (no map). None: guess from the shape (rank 4 is NCHW unless the last
            axis is small (<= 4) and axis 1 is not; rank 3 is [B, H, W]).

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
        if a.shape[-1] <= 4 < a.shape[1]:
            a = a.transpose(0, 3, 1, 2)
        m = a.mean(axis=(0, 1))
    elif a.ndim == 3:
        m = a.mean(axis=0)
    else:
        return None
    return m if m.shape[0] > 1 and m.shape[1] > 1 else None


def colorize(m: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Map a 2-D array to viridis RGB (0 -> dark purple, vmax -> yellow).

    ``vmax`` defaults to the 99.5th percentile (the maximum if that is 0), so a
    few extreme pixels do not flatten the rest of the map to one colour.
    """
    m = np.nan_to_num(np.asarray(m, dtype=np.float64))
    if vmax is None:
        vmax = float(np.percentile(m, 99.5)) if m.size else 0.0
        vmax = vmax if vmax > 0 else float(m.max(initial=0.0))
    t = np.clip(m / vmax, 0, 1) if vmax > 0 else np.zeros_like(m)
    pos = t * (len(_VIRIDIS) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(_VIRIDIS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac
    return np.round(rgb).astype(np.uint8)


# --- reading --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """How an image file becomes a model input."""

    layout: str = "auto"  # auto, NCHW or NHWC
    channel_order: str = "rgb"  # rgb or bgr
    # Pixel values are multiplied by this first. For 16-bit images (Pillow modes
    # I;16 / I) the default 1/255 becomes 1/65535: the same [0, 1] range.
    scale: float = 1 / 255
    mean: tuple | None = None  # then (x - mean) / std per channel
    std: tuple | None = None
    resize: tuple | None = None  # (H, W); default: the model's fixed size, else the image's

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise TfueError(f"unknown layout {self.layout!r}", "use auto, NCHW or NHWC")
        if self.channel_order not in ("rgb", "bgr"):
            raise TfueError(f"unknown channel order {self.channel_order!r}", "use rgb or bgr")
        try:
            scale = float(self.scale)
        except (TypeError, ValueError):
            scale = float("nan")
        if not (np.isfinite(scale) and scale != 0):
            raise TfueError(f"--scale must be a finite, non-zero number, got {self.scale!r}",
                            "e.g. --scale 0.00392156 (1/255)")
        for name, values in (("--mean", self.mean), ("--std", self.std)):
            if values is None:
                continue
            arr = np.asarray(values, dtype=np.float64).reshape(-1)
            if arr.size == 0 or not np.all(np.isfinite(arr)):
                raise TfueError(f"{name} must be finite numbers, got {values!r}",
                                f"e.g. {name} 0.485,0.456,0.406")
            if name == "--std" and np.any(arr == 0):
                raise TfueError(f"--std must not contain 0 (inputs are divided by it), got "
                                f"{values!r}", "e.g. --std 0.229,0.224,0.225")


def collect_inputs(paths) -> list:
    """Expand folders into their input files (sorted); check every path exists."""
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
    stems = {}
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        if stem in stems:
            raise TfueError(f"inputs '{stems[stem]}' and '{f}' would write the same output "
                            f"'{stem}.npz'", "rename one of them or run them separately")
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


def _with_batch(arr: np.ndarray, inp) -> np.ndarray:
    if inp.shape is not None and arr.ndim == len(inp.shape) - 1:
        return arr[None]
    return arr


def load_input(path: str, inputs: list, options: ImageOptions = ImageOptions()) -> dict:
    """Read one input file into a feed dict for a model with ``inputs`` (TensorInfo list)."""
    low = path.lower()
    if low.endswith(".npy"):
        if len(inputs) != 1:
            raise TfueError(f"'{path}' holds one array but the model has {len(inputs)} inputs",
                            "use an .npz with one array per input name")
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise TfueError(f"cannot read '{path}' as a .npy array ({exc})",
                            "save it with numpy.save") from None
        return {inputs[0].name: _with_batch(arr, inputs[0])}
    if low.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:
            raise TfueError(f"cannot read '{path}' as an .npz archive ({exc})",
                            "save it with numpy.savez") from None
        names = [i.name for i in inputs]
        if all(n in arrays for n in names):
            return {i.name: _with_batch(arrays[i.name], i) for i in inputs}
        if len(arrays) == 1 and len(inputs) == 1:
            return {inputs[0].name: _with_batch(next(iter(arrays.values())), inputs[0])}
        raise TfueError(f"'{path}' has arrays {sorted(arrays)}, which do not match the model's "
                        f"inputs {names}", "name the arrays after the model's inputs")
    if len(inputs) != 1:
        raise TfueError(f"the model has {len(inputs)} inputs, so an image alone cannot feed it",
                        "use an .npz with one array per input name")
    return {inputs[0].name: load_image(path, inputs[0], options)}


def image_layout(inp, layout: str = "auto") -> str:
    """The layout (NCHW or NHWC) of a 4-D image input."""
    shape = inp.shape
    if shape is None or len(shape) != 4:
        raise TfueError(f"input '{inp.name}' has shape {shape}, not a 4-D image batch",
                        "feed a .npy/.npz array instead of an image")
    if layout != "auto":
        return layout
    c_first, c_last = shape[1] in (1, 3), shape[3] in (1, 3)
    if c_first and not c_last:
        return "NCHW"
    if c_last and not c_first:
        return "NHWC"
    raise TfueError(f"cannot tell whether input '{inp.name}' {list(shape)} is NCHW or NHWC",
                    "pass --layout NCHW or --layout NHWC")


def open_image(path: str):
    """Open an image file with Pillow (loaded), or raise a TfueError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im
    except (UnidentifiedImageError, OSError) as exc:
        raise TfueError(f"cannot read '{path}' as an image ({exc})",
                        "give a PNG or JPEG file") from None


def load_image(path: str, inp, options: ImageOptions = ImageOptions()) -> np.ndarray:
    """Read an image file as a 1-image batch laid out for input ``inp``."""
    return image_to_input(open_image(path), inp, options)


def image_to_input(im, inp, options: ImageOptions = ImageOptions()) -> np.ndarray:
    """A Pillow image as a 1-image batch laid out, sized and scaled for input ``inp``."""
    from PIL import Image

    layout = image_layout(inp, options.layout)
    shape = inp.shape
    channels = shape[1] if layout == "NCHW" else shape[3]
    h_dim, w_dim = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    for name, values in (("--mean", options.mean), ("--std", options.std)):
        n = np.size(values)
        if values is not None and n not in (1, channels):
            raise TfueError(f"{name} has {n} values, but input '{inp.name}' takes images with "
                            f"{channels} channel(s)",
                            f"give one value per channel ({channels}) or one for all")
    scale = options.scale
    if im.mode == "F":  # Pillow would clip the floats to 0..255 when converting
        raise TfueError(f"'{getattr(im, 'filename', '') or 'the image'}' is a 32-bit float "
                        "image, whose value range tfue cannot tell",
                        "save it as a .npy array with the values the model expects")
    if im.mode in IMAGE_16BIT_MODES:
        # Pillow would clip 16-bit values to 255 when converting to L or RGB.
        gray = np.asarray(im, dtype=np.float32)
        if gray.size and float(gray.max()) > 65535:
            raise TfueError(f"'{getattr(im, 'filename', '') or 'the image'}' holds "
                            f"{im.mode}-mode values up to {gray.max():g}, beyond 16 bits",
                            "save it as a .npy array with the values the model expects")
        if scale == 1 / 255:
            scale = 1 / 65535
        im = Image.fromarray(gray)  # mode F: resized without losing the 16 bits
    else:
        im = im.convert("L" if channels == 1 else "RGB")
    arr_channels = 1 if channels == 1 else 3
    size = options.resize
    if size is None and isinstance(h_dim, int) and h_dim > 0 \
            and isinstance(w_dim, int) and w_dim > 0:
        size = (h_dim, w_dim)
    if size is not None and (im.height, im.width) != tuple(size):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] != arr_channels:  # a 16-bit gray image for an RGB model
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
