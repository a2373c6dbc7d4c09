"""Which axes of each output carry the input image's height and width.

Outputs lay the image out in many ways: NHWC outputs of NCHW models, ``[N, H, W]``
maps, super-resolution multiples (2H, 2W), valid convolutions (H - 2), strided
maps (H / 4), sequences ``[N, T, K]`` whose T follows W only, class scores
``[N, K]``. The rank says none of this, so the axes are found by running the
original model:

- free height / width: the model runs again with the input's height grown by 32
  (keeps multiples of 32; else doubled), then its width; an output axis *follows*
  an input axis when it grows with it and with nothing else. An output is a map
  when exactly one axis follows the height and another one the width.
- fixed height / width: an output axis is a candidate when its size is the
  input's (surest), or a multiple (2, 3, 4, 8), a stride (H / 2 ... H / 32) or a
  valid convolution's (H - 1 ... H - 8).
- where more than one pairing fits (a square fixed input, say), or the height and
  width grow at different rates (unequal strides, or the height folded into the
  features as in ``[N, W/4, C*H/4]``), a local probe decides: the same random
  change is added to the input's top quarter, then its bottom quarter (left and
  right for the width). Along the output's real height axis the centre of mass of
  the change moves from start to end; along other axes it stays put.

``find_axes`` probes a model on a synthetic input. This module runs models (it
comes after ``session`` in the pipeline); the rewrite stage (``graph/``) takes the
axes it finds as an argument and never probes itself.

Each output ends up as ``(h, w)``, as ``None`` with no image axis (class scores),
or *unresolved* (some axis follows the image but no (h, w) pair is certain). Only
``(h, w)`` outputs are inverse-transformed, and only they get heatmaps.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import TfueError
from .layout import image_input

GROW = 32  # the probe grows an axis by this much first (keeps multiples of 32)
MULTIPLES = (2, 3, 4, 8)
STRIDES = (2, 4, 8, 16, 32)
VALID_SHRINK = 8


@dataclasses.dataclass(frozen=True)
class SpatialAxes:
    """The image axes of a model's input and outputs, for one input shape.

    Attributes:
        input_name: the image input's name (None when the model has no image input).
        input_axes: its (h, w) axes, or None.
        outputs: output name -> (h, w) axes of that output, or None (not a map).
        ranks: output name -> rank of the output at this input shape.
        sizes: output name -> (size of h, size of w), for outputs with axes.
        input_sizes: the input's (height, width).
        unresolved: outputs with an axis that follows the image but no certain (h, w).
        how: "probe" (the model ran at other sizes), "sizes" (fixed size: matched
            by size, local probe where ambiguous), "mixed", or "none".
    """

    input_name: str | None
    input_axes: tuple | None
    outputs: dict
    ranks: dict
    sizes: dict
    input_sizes: tuple | None = None
    unresolved: frozenset = frozenset()
    how: str = "none"

    def renamed(self, users: dict) -> "SpatialAxes":
        """The same axes under the builders' names of the outputs.

        Args:
            users: builder name -> the model's own output name (a name may stand for
                several builder names, e.g. an output listed twice).
        """
        def rekey(d):
            return {inner: d[user] for inner, user in users.items() if user in d}
        return dataclasses.replace(
            self, outputs=rekey(self.outputs), ranks=rekey(self.ranks), sizes=rekey(self.sizes),
            unresolved=frozenset(inner for inner, user in users.items()
                                 if user in self.unresolved))

    def to_json(self) -> dict:
        """A JSON-able dict that :meth:`from_json` turns back into these axes."""
        def pairs(d):
            return {k: (list(v) if v is not None else None) for k, v in d.items()}
        return {"input_name": self.input_name,
                "input_axes": list(self.input_axes) if self.input_axes is not None else None,
                "outputs": pairs(self.outputs), "ranks": dict(self.ranks),
                "sizes": pairs(self.sizes),
                "input_sizes": list(self.input_sizes) if self.input_sizes is not None else None,
                "unresolved": sorted(self.unresolved), "how": self.how}

    @classmethod
    def from_json(cls, d: dict) -> "SpatialAxes":
        """The axes :meth:`to_json` wrote (raises KeyError/TypeError on a bad dict)."""
        def pairs(m):
            return {str(k): (tuple(int(a) for a in v) if v is not None else None)
                    for k, v in m.items()}
        return cls(d["input_name"],
                   tuple(d["input_axes"]) if d["input_axes"] is not None else None,
                   pairs(d["outputs"]), {str(k): int(v) for k, v in d["ranks"].items()},
                   pairs(d["sizes"]),
                   tuple(d["input_sizes"]) if d["input_sizes"] is not None else None,
                   frozenset(d["unresolved"]), str(d["how"]))

    def metadata(self) -> dict:
        """``{output: [h, w] or None}``, as recorded in results and summaries."""
        return {k: (list(v) if v is not None else None) for k, v in self.outputs.items()}

    def check_rotations(self, elements, outputs) -> None:
        """Refuse 90° rotations when one of ``outputs`` cannot take them.

        Args:
            elements: the transform elements (D4) of the run.
            outputs: names of the outputs whose samples are stacked.

        Raises:
            TfueError: an output follows the image but its (h, w) axes are unknown,
                or its h and w sizes differ on a square input (the rotated sample
                would not line up with the others).
        """
        rotations = [e.name for e in elements if e.swaps_axes]
        if not rotations:
            return
        hint = ("use --transforms flips (or hflip, rot180): flips keep the output's shape and "
                "are undone only on outputs whose axes are known")
        for name in outputs:
            if name in self.unresolved:
                raise TfueError(f"output '{name}' changes with the image's size, but tfue cannot "
                                "tell which of its axes carry the image's height and width, so "
                                f"the rotations ({', '.join(rotations)}) cannot be undone on it",
                                hint)
            if self.outputs.get(name) is not None and self.input_sizes is not None:
                (sh, sw), (ih, iw) = self.sizes[name], self.input_sizes
                # A rotation swaps the input's sizes; turned back, the output must have
                # its own sizes again: the same map from input to output size on h and w
                # (equal offsets, as a valid convolution's, equal scales, or one affine
                # map such as super-resolution of a valid convolution, 2 * (H - 14)).
                # Verification checks the transformed-back statistics in the end.
                if sh - ih != sw - iw and sh * iw != sw * ih and \
                        not _common_affine((sh, sw), (ih, iw)):
                    h, w = self.outputs[name]
                    raise TfueError(f"output '{name}' is {sh}x{sw} on axes ({h}, {w}) for an "
                                    f"input of {ih}x{iw}, so a sample of the rotated input "
                                    f"cannot be turned back onto it ({', '.join(rotations)})",
                                    hint)


def _common_affine(out_sizes, in_sizes) -> bool:
    """Whether one map ``out = a * in + b`` with a plausible scale ``a`` (exactly 1 or a
    multiple in MULTIPLES; 1 / a stride in STRIDES within 15 %, as strides round down)
    takes both input sizes to the output sizes; a square input needs equal outputs."""
    (sh, sw), (ih, iw) = out_sizes, in_sizes
    if ih == iw:
        return sh == sw
    a = (sh - sw) / (ih - iw)
    if a in (1,) + tuple(MULTIPLES):
        return True
    # Strides round their sizes down, so their scale shows only roughly.
    return any(abs(a - 1 / s) <= 0.15 / s for s in STRIDES)


def _free(dim) -> bool:
    return not (isinstance(dim, int) and dim > 0)


def _grown(x: np.ndarray, axis: int, by: int) -> np.ndarray:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, by)
    return np.pad(x, pad, mode="edge")


def _plausible(n_out: int, n_in: int) -> bool:
    """Whether an output axis of size ``n_out`` may carry an input axis of ``n_in``."""
    if n_out == n_in or n_out in [k * n_in for k in MULTIPLES]:
        return True
    if any(n_out in (n_in // s, -(-n_in // s)) for s in STRIDES) and n_out > 1:
        return True
    return n_in - VALID_SHRINK <= n_out < n_in and n_out > 1


def find_axes(info, layout: str = "auto") -> SpatialAxes:
    """The outputs' image axes, probed on a synthetic input of the model.

    The input is standard normal noise (seed 0) of the input's fixed sizes, 64 for a
    free height or width and 1 for a free batch; the model runs on CPU without
    prepacking (once at that size, up to twice more at grown sizes).

    Args:
        info: the model (ModelInfo); its first input is the one probed.
        layout: auto, NCHW or NHWC: how to read a 4-D image input.

    Returns:
        SpatialAxes (see :class:`AxesProbe`); every output ``None`` without an image input.

    Raises:
        TfueError: onnxruntime cannot load the model.
    """
    from .session import create_session

    sess, _ = create_session(info.model, "cpu", prepack=False)
    names = [o.name for o in info.outputs]

    def run(feeds):
        return dict(zip(names, sess.run(names, feeds)))

    inp = info.inputs[0]
    shape = [d if isinstance(d, int) and d > 0 else (1 if k == 0 else 64)
             for k, d in enumerate(inp.shape or ())]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.dtype(inp.dtype))
    return AxesProbe(info, run, layout)({inp.name: x})


class AxesProbe:
    """Finds the output axes of a model that carry its input's height and width.

    Args:
        info: the model (ModelInfo).
        run: ``run(feeds) -> {output name: array}``, the original model (raises on
            inputs it cannot take).
        layout: auto, NCHW or NHWC: how to read a 4-D image input.

    Calling the probe with feeds returns a :class:`SpatialAxes`, cached per input
    shape. Each new shape costs up to two more runs of the model at a grown size
    (four when the first size is refused), and four at the input's size where the
    local probe is needed.
    """

    def __init__(self, info, run, layout: str = "auto"):
        self.info = info
        self.run = run
        self.layout = layout
        self._cache = {}

    def __call__(self, feeds: dict, outputs: dict | None = None) -> SpatialAxes:
        """The axes for ``feeds`` (name -> array).

        Args:
            feeds: the model's inputs.
            outputs: the model's outputs on ``feeds`` when already computed.

        Returns:
            SpatialAxes for this input shape.
        """
        key = tuple((k, np.shape(v)) for k, v in sorted(feeds.items()))
        if key not in self._cache:
            self._cache[key] = self._find(feeds, outputs)
        return self._cache[key]

    def _try(self, feeds):
        try:
            return {k: np.shape(v) for k, v in self.run(feeds).items()}
        except Exception:  # the model does not take this size: fall back to sizes
            return None

    def _find(self, feeds, outputs) -> SpatialAxes:
        inp, in_axes = image_input(self.info, self.layout)
        names = [o.name for o in self.info.outputs]
        if inp is None:
            return SpatialAxes(None, None, {n: None for n in names}, {}, {})
        x = np.asarray(feeds[inp.name])
        base = {k: np.shape(v) for k, v in (outputs or self.run(feeds)).items()}
        follows, probed = {}, []  # input axis -> {output: [axes that grew]}
        rates = {}  # input axis -> {output: output shape growth per input pixel}
        for axis in in_axes:
            if not _free(inp.shape[axis]):
                continue
            for by in dict.fromkeys((GROW, x.shape[axis])):
                grown = self._try({**feeds, inp.name: _grown(x, axis, by)})
                if grown is not None:
                    follows[axis] = {n: _changed(base[n], grown.get(n)) for n in names}
                    rates[axis] = {n: (np.subtract(grown[n], base[n]) / by)
                                   for n in names if follows[axis][n] is not None}
                    probed.append(axis)
                    break
        local = _LocalProbe(self.run, feeds, inp.name, in_axes)
        result, unresolved, sizes = {}, set(), {}
        for n in names:
            shape = base[n]
            grew = {axis: follows[axis][n] for axis in follows}
            hw, status = _pair(_candidates(shape, x.shape, in_axes, grew), local, n,
                               len(shape))
            if hw is not None and len(probed) == 2:
                # Height and width growing at different rates: a map with unequal strides,
                # or an axis that flattens the height with the channels ([N, W, C*H]);
                # only a local change of the input tells them apart.
                rh, rw = rates[in_axes[0]][n][hw[0]], rates[in_axes[1]][n][hw[1]]
                if max(rh, rw) > 1.5 * min(rh, rw):
                    hw = local.decide(n, [hw])
                    status = "map" if hw is not None else "unresolved"
            result[n] = hw
            if status == "unresolved":
                unresolved.add(n)
            if hw is not None:
                sizes[n] = (shape[hw[0]], shape[hw[1]])
        how = "probe" if len(probed) == 2 else "mixed" if probed else "sizes"
        return SpatialAxes(inp.name, in_axes, result, {n: len(base[n]) for n in names}, sizes,
                           (x.shape[in_axes[0]], x.shape[in_axes[1]]), frozenset(unresolved),
                           how)


def _changed(before, after):
    """Output axes that grew (None: the output changed rank, vanished or shrank)."""
    if after is None or len(after) != len(before):
        return None
    if any(b > a for a, b in zip(after, before)):  # an axis shrank: not a plain map
        return None
    return [k for k, (a, b) in enumerate(zip(after, before)) if a != b]


def _candidates(shape, in_shape, in_axes, grew):
    """Per input axis (h, w): the output axes that may carry it, as a list of
    candidate lists, surest first: the axes that grew in the probe (None when the
    output changed rank), or those of the same size, then those of a plausible size
    (an axis the other input axis's probe claimed is never a candidate)."""
    claimed = {a for g in grew.values() if g for a in g}
    cands = []
    for axis in in_axes:
        if axis in grew:
            cands.append([grew[axis]])
            continue
        free = [a for a in range(1, len(shape)) if a not in claimed]
        cands.append([[a for a in free if shape[a] == in_shape[axis]],
                      [a for a in free if _plausible(shape[a], in_shape[axis])]])
    return cands


def _pair(cands, local, name, rank):
    """(h, w) from the candidates of each input axis, and a status: "map", "none"
    (no axis follows the image) or "unresolved"."""
    ch_all, cw_all = cands
    if any(c is None for c in ch_all + cw_all):
        return None, "unresolved"
    if not ch_all[-1] and not cw_all[-1]:
        return None, "none"
    probed = len(ch_all) == 1 and len(cw_all) == 1
    if rank < 3 and len(ch_all) + len(cw_all) == 4:  # fixed size, [N, K]: not a map
        return None, "none"
    if probed and set(ch_all[0]) & set(cw_all[0]):  # follows both (a flattened H*W)
        return None, "unresolved"
    # Surest candidates first: probed or exact sizes, then plausible sizes.
    for level in range(max(len(ch_all), len(cw_all))):
        ch, cw = ch_all[min(level, len(ch_all) - 1)], cw_all[min(level, len(cw_all) - 1)]
        pairs = [(a, b) for a in ch for b in cw if a != b]
        if len(pairs) == 1 and len(ch) == len(cw) == 1:
            return pairs[0], "map"
        if pairs:
            hw = local.decide(name, pairs)
            return (hw, "map") if hw is not None else (None, "unresolved")
    return None, "unresolved"


class _LocalProbe:
    """Decides between candidate (h, w) pairs by changing one edge band of the input.

    The input is changed in its top quarter, then its bottom, left and right quarters.
    Along the output's real height axis the change's centre of mass moves from the
    start (top change) to the end (bottom change); along any other axis (the width,
    channels, or a height folded into the features) it stays near the middle.
    """

    SHIFT = 0.2  # the least move of the centre of mass (as a fraction of the axis)

    def __init__(self, run, feeds, input_name, in_axes):
        self.run, self.feeds, self.name, self.in_axes = run, feeds, input_name, in_axes
        self._diffs = None

    def _changes(self):
        """[(top, bottom), (left, right)]: per output, |change| of each band change."""
        if self._diffs is None:
            x = np.asarray(self.feeds[self.name])
            rng = np.random.default_rng(0)
            scale = float(x.std()) or 1.0
            self._diffs = []
            try:
                base = self.run(self.feeds)
                for axis in self.in_axes:
                    n = x.shape[axis]
                    band = max(1, n // 4)
                    pair = []
                    shape = list(x.shape)
                    shape[axis] = band
                    # The same change at both ends: only its place differs.
                    change = (rng.standard_normal(shape) * scale).astype(x.dtype)
                    for start in (0, n - band):
                        index = [slice(None)] * x.ndim
                        index[axis] = slice(start, start + band)
                        y = x.copy()
                        y[tuple(index)] += change
                        out = self.run({**self.feeds, self.name: y})
                        pair.append({k: np.abs(np.asarray(out[k], np.float64)
                                               - np.asarray(base[k], np.float64))
                                     for k in base if np.asarray(base[k]).dtype.kind == "f"})
                    self._diffs.append(pair)
            except Exception:  # the model cannot run: nothing is decided
                self._diffs = []
        return self._diffs

    @staticmethod
    def _centre(diff, axis):
        """Centre of mass of the change along ``axis``, in [0, 1]; None if no change."""
        if diff.shape[axis] < 2:
            return None
        profile = diff.sum(axis=tuple(k for k in range(diff.ndim) if k != axis))
        total = profile.sum()
        if not np.isfinite(total) or total <= 0:
            return None
        return float((profile * np.arange(len(profile))).sum() / total / (len(profile) - 1))

    def _shift(self, pair, name, axis):
        start, end = (self._centre(d[name], axis) for d in pair)
        return None if start is None or end is None else end - start

    def decide(self, name, pairs):
        """The one pair whose h follows the top-to-bottom move and whose w the
        left-to-right move, by at least SHIFT each; else None."""
        diffs = self._changes()
        if len(diffs) != 2 or name not in diffs[0][0]:
            return None
        good = []
        for h, w in pairs:
            sh, sw = self._shift(diffs[0], name, h), self._shift(diffs[1], name, w)
            # The other axis must not follow the same move (an axis is height or width).
            oh, ow = self._shift(diffs[0], name, w), self._shift(diffs[1], name, h)
            if None in (sh, sw, oh, ow):
                continue
            if min(sh, sw) >= self.SHIFT and max(abs(oh), abs(ow)) < self.SHIFT:
                good.append((h, w))
        return good[0] if len(good) == 1 else None
