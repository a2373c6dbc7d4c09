"""``--pad auto``: find the border a valid-convolution model loses, from its output size.

The model is run on a synthetic image at three sizes (64 x 64, 96 x 64 and
64 x 96). An output axis whose size follows the input's height (or width) as
``a * H + b`` with ``b < 0`` has lost ``-b / a`` input pixels, half on each side:
the border per side is ``ceil(-b / a / 2)`` (7 for waifu2x's upconv_7, whose x2
output is ``2 * H - 28``). The largest border over the outputs and both axes is
the padding chosen.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import TfueError
from .graph.pad import pad_axes

BASE, GROWN = 64, 96


def detect_border(info, run, layout: str = "auto") -> tuple[int, str]:
    """(border per side in input pixels, a sentence saying how it was found).

    Args:
        info: the user's model (ModelInfo).
        run: ``run(feeds) -> {output name: array}`` of the model (unpadded).
        layout: auto, NCHW or NHWC (a 4-D image input).

    Raises:
        TfueError: no image input; a fixed height or width; the model refuses the
            probe sizes.
    """
    name, (h, w) = pad_axes(info, layout)
    inp = next(i for i in info.inputs if i.name == name)
    for axis in (h, w):
        dim = inp.shape[axis]
        if isinstance(dim, int) and dim > 0:
            raise TfueError(f"--pad auto needs an input of free height and width; '{name}' "
                            f"has the fixed size {dim} on axis {axis}",
                            "give the border yourself, in pixels per side: e.g. --pad 7")
    dtype = np.float16 if inp.dtype == "float16" else \
        np.float64 if inp.dtype == "float64" else np.float32

    def shapes(hh, ww):
        shape = [1 if not (isinstance(d, int) and d > 0) else d for d in inp.shape]
        shape[h], shape[w] = hh, ww
        x = np.random.default_rng(0).random(shape).astype(dtype)
        try:
            outs = run({name: x})
        except Exception as exc:  # onnxruntime's refusal, in its own words
            raise TfueError(f"--pad auto could not run the model on a {hh}x{ww} image "
                            f"({str(exc).splitlines()[0][:200]})",
                            "give the border yourself, in pixels per side: e.g. --pad 7") from None
        return {k: np.shape(v) for k, v in outs.items()}

    base, tall, wide = shapes(BASE, BASE), shapes(GROWN, BASE), shapes(BASE, GROWN)
    border, found = 0, []
    for out, s0 in base.items():
        for grown, what in ((tall, "height"), (wide, "width")):
            s1 = grown[out]
            for axis, (n0, n1) in enumerate(zip(s0, s1)):
                if n0 == n1:
                    continue
                a = (n1 - n0) / (GROWN - BASE)
                b = n0 - a * BASE
                per_side = math.ceil(round(-b / a / 2, 6)) if b < 0 else 0
                found.append(f"{out} axis {axis} = {a:g} * {what} {'-' if b < 0 else '+'} "
                             f"{abs(b):g}")
                border = max(border, per_side)
    if not found:
        return 0, "no output follows the input's size: nothing to pad"
    return border, ("output size " + "; ".join(found) + f": border {border} per side")


def resolve_pad(info, pad, layout: str = "auto") -> tuple[int, str | None]:
    """``pad`` (an int >= 0, or ``"auto"``) as pixels per side, with how auto found it.

    Args:
        info: the user's model (ModelInfo).
        pad: pixels per side, or ``"auto"`` to detect the border (see module doc).
        layout: auto, NCHW or NHWC.

    Returns:
        (pixels, note): note is None unless ``pad`` was ``"auto"``.

    Raises:
        TfueError: a bad ``pad``; no image input; detection failed.
    """
    from .graph.pad import check_pad
    from .session import create_session

    if isinstance(pad, str) and pad.strip().lower() == "auto":
        sess, _ = create_session(info.model, "cpu", prepack=False)
        names = [o.name for o in sess.get_outputs()]
        return detect_border(info, lambda feeds: dict(zip(names, sess.run(None, feeds))),
                             layout)
    pad = check_pad(pad)
    pad_axes(info, layout)  # the model must have an image input
    return pad, None
