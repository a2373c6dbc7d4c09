"""From a variance map to an expected error and intervals with a coverage guarantee.

Fitted on calibration pairs (the model's output, its variance map, the target), per
element, with ``s = sqrt(variance)`` (output units) and ``e = |output - target|``:

- **expected error**: a monotone non-decreasing map ``s -> E[e]`` by isotonic regression
  (``scipy.optimize.isotonic_regression``) on quantile bins of ``s`` (weighted by their
  counts), read between the bins by linear interpolation and flat beyond them; and, as
  the simple alternative, one scale ``a`` with ``E[e] = a * s`` (least squares).
- **split-conformal intervals** (Vovk et al. 2005; Lei et al. 2018): the scores
  ``r = e / s`` of the n calibration elements; ``q`` is their ``ceil((n + 1)(1 - alpha))``
  -th smallest (the finite-sample correction). Then ``output ± q * s`` covers the target
  with probability at least ``1 - alpha`` for a new element *exchangeable with the
  calibration elements*: the guarantee is marginal, over elements (pixels of images) of
  the calibration distribution, not for each pixel or each image, and pixels of one
  image are not independent.

Elements where ``s`` is 0 score with ``s`` floored at ``S_FLOOR`` times the mean ``s``
(and their intervals use that floor too).

How well a calibration holds on held-out pairs (:class:`Assessment`): the empirical
coverage and mean width of the intervals, and the expected normalized calibration error
(ENCE, Levi et al. 2022, "Evaluating and calibrating uncertainty prediction in
regression tasks"): elements are put in bins by their predicted standard deviation
(equal-count bins, edges fixed on the calibration set); per bin the root mean variance
RMV = sqrt(mean sigma^2) and the RMSE = sqrt(mean e^2);
``ENCE = mean over bins of |RMV - RMSE| / RMV``. It is given for the raw ``s`` and for
the calibrated standard deviation ``sqrt(E[e^2 | s])`` (a second isotonic map).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .errors import ArgumentError, TfueError

BINS = 64  # quantile bins of s for the isotonic fits
RELIABILITY_BINS = 10  # equal-count bins of s for ENCE and the reliability diagram
S_FLOOR = 1e-6  # relative to the mean s: where s = 0, the score's denominator

_FIELDS = {"coverage": float, "q": float, "scale": float, "knots_s": tuple,
           "knots_e": tuple, "knots_rmse": tuple, "bin_edges": tuple, "count": int,
           "floor": float}


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A fitted calibration (see the module docstring); plain data, JSON-able.

    Attributes:
        coverage: the interval's target coverage 1 - alpha, in (0, 1).
        q: the conformal quantile of e / s (intervals are ``output ± q * max(s, floor)``).
        scale: ``a`` of the one-parameter fit ``E[e] = a * s``.
        knots_s: the isotonic maps' knots in s (ascending, output units).
        knots_e: E[e] at each knot (non-decreasing, output units).
        knots_rmse: sqrt(E[e^2]) at each knot (non-decreasing, output units): the
            calibrated standard deviation.
        bin_edges: the interior edges of the reliability bins in s (calibration-set
            quantiles; ``RELIABILITY_BINS - 1`` of them, fewer where values tie).
        count: the number of calibration elements.
        floor: the s used where s is smaller (output units).
    """

    coverage: float
    q: float
    scale: float
    knots_s: tuple
    knots_e: tuple
    knots_rmse: tuple
    bin_edges: tuple
    count: int
    floor: float

    def std(self, variance) -> np.ndarray:
        """s = sqrt(variance), floored at ``floor`` (float64, the variance's shape)."""
        v = np.maximum(np.asarray(variance, dtype=np.float64), 0.0)
        return np.maximum(np.sqrt(v), self.floor)

    def expected_error(self, variance, fit: str = "isotonic") -> np.ndarray:
        """E[|error|] per element of a variance map (output units; float64, its shape):
        ``fit="isotonic"`` the isotonic map read by linear interpolation, flat beyond its
        end knots; ``"scale"`` the one-parameter alternative ``scale * s``.

        Raises:
            ArgumentError (a ValueError): another ``fit``.
        """
        if fit == "scale":
            return self.scale * self.std(variance)
        if fit != "isotonic":
            raise ArgumentError(f"unknown fit {fit!r}", "give 'isotonic' or 'scale'")
        return np.interp(self.std(variance), self.knots_s, self.knots_e)

    def calibrated_std(self, variance) -> np.ndarray:
        """sqrt(E[error^2]) per element (output units; float64, the variance's shape)."""
        return np.interp(self.std(variance), self.knots_s, self.knots_rmse)

    def interval(self, output, variance) -> tuple:
        """``(lower, upper) = output ∓ q * max(s, floor)`` per element (float64, the
        output's shape)."""
        half = self.q * self.std(variance)
        y = np.asarray(output, dtype=np.float64)
        if y.shape != half.shape:
            raise ArgumentError(f"output {y.shape} and variance {half.shape} differ in shape",
                                "give the variance map of this output")
        return y - half, y + half

    def to_json(self) -> dict:
        """The fit as plain data (``Calibration.from_json`` reads it back)."""
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "Calibration":
        """Read ``to_json``'s dict back.

        Raises:
            TfueError: a field is missing or of the wrong kind, or the knots are not
                ascending.
        """
        try:
            fields = {k: (tuple(_number(v, float) for v in data[k]) if kind is tuple else
                          _number(data[k], kind)) for k, kind in _FIELDS.items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise TfueError(f"not a calibration ({type(exc).__name__}: {exc})",
                            "give a calibration made by tfue calibrate") from None
        problem = _implausible(fields)
        if problem:
            raise TfueError(f"not a calibration ({problem})",
                            "give a calibration made by tfue calibrate")
        return cls(**fields)


def _number(value, kind):
    """``value`` as ``kind`` (float or int) when it is a JSON number of that kind
    (TypeError otherwise: a string, a bool, a list)."""
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise TypeError(f"{value!r} is not a number")
    return kind(value)


BIG = 1e30  # no number of a calibration is this large (q * s would overflow)


def _implausible(f: dict) -> str | None:
    """What is wrong with a calibration's fields (None: nothing): every number finite, q
    and the errors >= 0, the floor > 0, knots ascending in s and non-decreasing in error."""
    s, e, r = (np.asarray(f[k], dtype=np.float64) for k in ("knots_s", "knots_e",
                                                            "knots_rmse"))
    numbers = [f["q"], f["scale"], f["floor"], f["coverage"], *s, *e, *r, *f["bin_edges"]]
    if not all(math.isfinite(v) and abs(v) < BIG for v in numbers):
        return "a number is not finite or absurdly large"
    if not 0 < f["coverage"] < 1 or f["q"] < 0 or f["floor"] <= 0 or f["count"] < 1 or \
            f["scale"] < 0 or s.size and s[0] < 0:
        return "its coverage, q, scale, floor, count or knots are out of range"
    if not (s.size and s.size == e.size == r.size and np.all(np.diff(s) > 0)
            and np.all(np.diff(e) >= 0) and np.all(np.diff(r) >= 0) and e[0] >= 0
            and r[0] >= 0 and np.all(np.diff(f["bin_edges"]) > 0)):
        return "its knots are not ascending, differ in number or decrease"
    return None


def fit(outputs, variances, targets, coverage: float = 0.9) -> Calibration:
    """Fit the expected-error maps and the conformal quantile on calibration pairs.

    Args:
        outputs, variances, targets: lists of arrays (one per image), each output, its
            variance (squared output units) and its target of one shape; non-finite
            elements are left out.
        coverage: the intervals' target coverage 1 - alpha, in (0, 1).

    Returns:
        A :class:`Calibration`.

    Raises:
        ArgumentError (a ValueError): ``coverage`` not in (0, 1); lists of different
            lengths or arrays of different shapes.
        TfueError: no finite element, or too few for the coverage (n < 1/alpha - 1).
    """
    check_coverage(coverage)
    return fit_elements(*_elements(outputs, variances, targets), coverage)


def fit_elements(s: np.ndarray, e: np.ndarray, coverage: float = 0.9) -> Calibration:
    """:func:`fit` on calibration elements given flat: ``s`` = sqrt(variance) and ``e`` =
    |output - target| (float arrays of one length, finite; output units); same errors."""
    coverage = check_coverage(coverage)
    s, e = np.asarray(s, dtype=np.float64), np.asarray(e, dtype=np.float64)
    n = s.size
    if n == 0:
        raise ArgumentError("the calibration pairs hold no finite element (output, variance "
                            "and target all finite)", "give finite outputs and targets")
    rank = math.ceil((n + 1) * coverage)
    if rank > n:
        need = next(m for m in range(1, n + 10**7) if math.ceil((m + 1) * coverage) <= m)
        raise TfueError(f"{n} calibration element(s) are too few for coverage {coverage:g} "
                        f"(the conformal quantile needs at least {need})",
                        "calibrate on more pairs, or ask for a lower coverage")
    floor = S_FLOOR * float(s.mean()) if s.mean() > 0 else S_FLOOR
    s = np.maximum(s, floor)
    q = float(np.partition(e / s, rank - 1)[rank - 1])
    scale = float((s * e).sum() / (s * s).sum())
    knots_s, knots_e, knots_rmse = _isotonic(s, e)
    edges = bin_edges(s, RELIABILITY_BINS)
    return Calibration(coverage=float(coverage), q=q, scale=scale, knots_s=knots_s,
                       knots_e=knots_e, knots_rmse=knots_rmse,
                       bin_edges=tuple(float(v) for v in edges), count=int(n), floor=floor)


def bin_edges(s: np.ndarray, bins: int) -> np.ndarray:
    """Interior edges of up to ``bins`` equal-count bins of ``s`` (a bin holds
    ``edge[i-1] <= s < edge[i]``); a run of tied values stays in one bin, and the values
    above it are split again into equal counts (so a map that is mostly 0 still gets
    bins over the rest)."""
    s = np.sort(np.asarray(s, dtype=np.float64))
    edges, start = [], 0
    for left in range(bins - 1, 0, -1):  # bins still to cut after this one
        pos = start + (s.size - start) // (left + 1)
        if pos >= s.size:
            break
        if s[pos] <= s[start]:  # tied with the bin's first value: cut above the tie
            pos = int(np.searchsorted(s, s[start], side="right"))
            if pos >= s.size:
                break
        edges.append(s[pos])
        start = int(np.searchsorted(s, s[pos], side="left"))
    return np.array(edges)


def check_coverage(coverage) -> float:
    """``coverage`` as a float in (0, 1); ArgumentError (a ValueError) otherwise."""
    if isinstance(coverage, (bool, np.bool_)) or not (
            isinstance(coverage, (int, float, np.integer, np.floating)) and 0 < coverage < 1):
        raise ArgumentError(f"coverage must be in (0, 1), got {coverage!r}",
                            "e.g. --coverage 0.9")
    return float(coverage)


def _check_lengths(outputs, variances, targets) -> None:
    """Refuse lists of outputs, variances and targets of different lengths."""
    if not (len(outputs) == len(variances) == len(targets)):
        raise ArgumentError("outputs, variances and targets must be lists of one length, got "
                            f"{len(outputs)}, {len(variances)}, {len(targets)}",
                            "give one variance and one target per output")


def _elements(outputs, variances, targets) -> tuple:
    """(s, e): every finite calibration element's sqrt(variance) and |error|, flat."""
    _check_lengths(outputs, variances, targets)
    ss, es = [], []
    for y, v, t in zip(outputs, variances, targets):
        s, e = elements(y, v, t)
        ss.append(s)
        es.append(e)
    return (np.concatenate(ss), np.concatenate(es)) if ss else (np.zeros(0), np.zeros(0))


def elements(output, variance, target) -> tuple:
    """(s, e) of one image: sqrt(variance) and |output - target| of its finite elements,
    flat float64 arrays.

    Raises:
        ArgumentError (a ValueError): the three arrays differ in shape, or the variance
            is negative (beyond rounding).
    """
    y, v, t = (np.asarray(a, dtype=np.float64) for a in (output, variance, target))
    if not (y.shape == v.shape == t.shape):
        raise ArgumentError(f"output {y.shape}, variance {v.shape} and target {t.shape} "
                            "differ in shape", "give arrays of the output's shape")
    ok = np.isfinite(y) & np.isfinite(v) & np.isfinite(t)
    v = v[ok]
    if v.size and v.min() < -max(1e-9 * float(np.abs(v).max()), 1e-12):
        raise ArgumentError(f"a variance map holds negative values (down to {v.min():.3g})",
                            "give variances (squared output units, >= 0)")
    return np.sqrt(np.maximum(v, 0.0)), np.abs(y[ok] - t[ok])


def _isotonic(s: np.ndarray, e: np.ndarray) -> tuple:
    """Knots of the monotone maps s -> E[e] and s -> sqrt(E[e^2]): isotonic regressions of
    the mean e (and e^2) of quantile bins of s on their mean s, weighted by the bins'
    counts; bins of one mean s (a run of tied s) are merged first, and knots collinear
    with their neighbours in both maps are dropped."""
    from scipy.optimize import isotonic_regression

    order = np.argsort(s, kind="stable")
    groups = np.split(order, _cuts(s[order], BINS))
    mean_s, weights, sums = _merged_bins(
        np.array([s[g].mean() for g in groups]), np.array([g.size for g in groups], float),
        np.array([[e[g].sum(), (e[g] * e[g]).sum()] for g in groups]))
    fitted = [isotonic_regression(sums[:, k] / weights, weights=weights, increasing=True).x
              for k in (0, 1)]
    fitted[1] = np.sqrt(np.maximum(fitted[1], 0.0))
    keep = _needed(mean_s, fitted)
    return tuple(tuple(float(v) for v in a[keep]) for a in (mean_s, fitted[0], fitted[1]))


def _cuts(sorted_s: np.ndarray, bins: int) -> np.ndarray:
    """Where to split ascending ``sorted_s`` into about ``bins`` equal-count groups, with
    no run of tied values split: a cut inside a run moves to both of its ends."""
    n = sorted_s.size
    cuts = set()
    for c in np.linspace(0, n, min(bins, n) + 1)[1:-1].astype(int):
        lo = int(np.searchsorted(sorted_s, sorted_s[c], side="left"))
        cuts.update((c,) if lo == c else (lo, int(np.searchsorted(sorted_s, sorted_s[c],
                                                                     side="right"))))
    return np.array(sorted(c for c in cuts if 0 < c < n), dtype=int)


def _merged_bins(mean_s: np.ndarray, counts: np.ndarray, sums: np.ndarray) -> tuple:
    """Bins with equal mean s (ascending) merged: (mean s, counts, summed columns)."""
    start = np.flatnonzero(np.concatenate([[True], np.diff(mean_s) > 0]))
    return mean_s[start], np.add.reduceat(counts, start), np.add.reduceat(sums, start, axis=0)


def _needed(x: np.ndarray, ys: list) -> np.ndarray:
    """Indices of the knots (x, y) that linear interpolation needs: the two ends and every
    knot where the slope of some y changes."""
    if x.size <= 2:
        return np.arange(x.size)
    keep = [0]
    for i in range(1, x.size - 1):
        for y in ys:
            left = (y[i] - y[keep[-1]]) / (x[i] - x[keep[-1]])
            right = (y[i + 1] - y[i]) / (x[i + 1] - x[i])
            if abs(left - right) > 1e-9 * max(abs(left), abs(right), 1e-300):
                keep.append(i)
                break
    return np.array(keep + [x.size - 1])


class Assessment:
    """How a calibration holds on held-out pairs, accumulated one image at a time (no
    element is kept): the intervals' coverage and width, expected vs observed error, and
    ENCE (Levi et al. 2022) for the raw and the calibrated standard deviation, per
    reliability bin of s (``calibration.bin_edges``).

    ``add(output, variance, target)`` takes one image (arrays of one shape; non-finite
    elements are left out) and returns its coverage; ``result()`` gives the totals.
    """

    _SUMS = ("count", "s2", "std2", "e", "e2", "expected", "covered")

    def __init__(self, calibration: Calibration):
        self.calibration = calibration
        bins = len(calibration.bin_edges) + 1
        self._sums = {k: np.zeros(bins) for k in self._SUMS}
        self._width = 0.0
        self.image_coverage = []  # per image, in the order added (NaN: no finite element)

    def add(self, output, variance, target) -> float:
        """Add one image; return its coverage (the fraction of its finite elements inside
        the interval; NaN when it has none).

        Raises:
            ArgumentError (a ValueError): the arrays differ in shape.
        """
        return self.add_elements(*elements(output, variance, target))

    def add_elements(self, s: np.ndarray, e: np.ndarray) -> float:
        """:meth:`add` on one image's elements given flat (``s``, ``e`` as
        :func:`elements` returns them)."""
        c = self.calibration
        s = np.maximum(s, c.floor)
        std = np.interp(s, c.knots_s, c.knots_rmse)
        parts = {"count": np.ones_like(s), "s2": s * s, "std2": std * std, "e": e,
                 "e2": e * e, "expected": np.interp(s, c.knots_s, c.knots_e),
                 "covered": (e <= c.q * s).astype(np.float64)}
        where = np.searchsorted(np.asarray(c.bin_edges), s, side="right")
        for key, values in parts.items():
            self._sums[key] += np.bincount(where, weights=values, minlength=len(self._sums[key]))
        self._width += float(2 * c.q * s.sum())
        covered = float(parts["covered"].mean()) if s.size else float("nan")
        self.image_coverage.append(covered)
        return covered

    def result(self) -> dict:
        """The totals: {"coverage", "target_coverage", "mean_width" (output units),
        "mean_error", "mean_expected_error" (output units), "ence_raw" and "ence" (ENCE of
        s and of the calibrated standard deviation; NaN over no element),
        "image_coverage": {"min", "median", "max"} over images, "count", "bins": per
        reliability bin {"count", "rmv_raw", "rmv", "rmse", "mean_expected_error",
        "mean_error", "coverage"}}."""
        t = self._sums
        n = float(t["count"].sum())
        live = t["count"] > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            per = {"rmv_raw": np.sqrt(t["s2"] / t["count"]), "rmv": np.sqrt(t["std2"] / t["count"]),
                   "rmse": np.sqrt(t["e2"] / t["count"]),
                   "mean_expected_error": t["expected"] / t["count"],
                   "mean_error": t["e"] / t["count"], "coverage": t["covered"] / t["count"]}
        bins = [{"count": int(t["count"][b]), **{k: float(v[b]) for k, v in per.items()}}
                for b in range(len(t["count"])) if live[b]]
        seen = [v for v in self.image_coverage if not math.isnan(v)]
        return {"coverage": _ratio(t["covered"].sum(), n),
                "target_coverage": self.calibration.coverage,
                "mean_width": _ratio(self._width, n), "mean_error": _ratio(t["e"].sum(), n),
                "mean_expected_error": _ratio(t["expected"].sum(), n),
                "ence_raw": _ence(per["rmv_raw"][live], per["rmse"][live]),
                "ence": _ence(per["rmv"][live], per["rmse"][live]),
                "image_coverage": {k: (float(f(seen)) if seen else float("nan")) for k, f in
                                   (("min", np.min), ("median", np.median), ("max", np.max))},
                "count": int(n), "bins": bins}


def _ratio(total, n) -> float:
    return float(total / n) if n else float("nan")


def _ence(rmv: np.ndarray, rmse: np.ndarray) -> float:
    """ENCE (Levi et al. 2022): the mean over bins of |RMV - RMSE| / RMV (bins with RMV 0
    left out); NaN over no bin."""
    ok = rmv > 0
    return float(np.mean(np.abs(rmv[ok] - rmse[ok]) / rmv[ok])) if ok.any() else float("nan")


def assess(calibration: Calibration, outputs, variances, targets) -> dict:
    """:class:`Assessment` of a calibration on held-out pairs given as lists of arrays
    (one output, variance and target per image); returns ``Assessment.result()``.

    Raises:
        ArgumentError (a ValueError): lists of different lengths or arrays of different
            shapes.
    """
    _check_lengths(outputs, variances, targets)
    if not len(outputs):
        raise ArgumentError("no held-out pairs to assess", "give one output, variance and "
                            "target per image")
    found = Assessment(calibration)
    for y, v, t in zip(outputs, variances, targets):
        found.add(y, v, t)
    return found.result()


def graph_nodes(calibration: Calibration, output: str, variance: str, elem_type: int,
                prefix: str | None = None) -> tuple:
    """ONNX nodes computing ``output.expected_error``, ``output.lower`` and
    ``output.upper`` from the tensors ``output`` and ``variance`` (as
    ``Calibration.expected_error`` and ``.interval`` do, in the tensors' float type).

    The isotonic map is built as ``e_0 + sum_i slope_i * min(relu(s - s_i), width_i)``
    over its segments: a few elementwise nodes per knot, no table of the tensor's size
    times the knots.

    Args:
        calibration: the fit; output, variance: tensor names in the graph;
        elem_type: their onnx.TensorProto type (FLOAT, FLOAT16, DOUBLE).
        prefix: node and initializer names start with it (default ``output + '/cal'``).

    Returns:
        (nodes, initializers): lists of onnx NodeProto and TensorProto.
    """
    from onnx import helper, numpy_helper

    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    prefix = prefix or f"{output}/cal"
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), f"{prefix}/{name}"))
        return f"{prefix}/{name}"

    def node(op, inputs, name, out=None):
        out = out or f"{prefix}/{name}"
        nodes.append(helper.make_node(op, inputs, [out], name=f"{prefix}/{name}"))
        return out

    s = node("Max", [node("Sqrt", [node("Relu", [variance], "relu_var")], "sqrt"),
                     const("floor", calibration.floor)], "s")
    half = node("Mul", [s, const("q", calibration.q)], "half")
    node("Sub", [output, half], "lower", f"{output}.lower")
    node("Add", [output, half], "upper", f"{output}.upper")
    x, e = np.asarray(calibration.knots_s), np.asarray(calibration.knots_e)
    acc = node("Add", [node("Mul", [s, const("zero", 0.0)], "zeros"), const("e0", e[0])], "acc0")
    for i in range(x.size - 1):
        rise, width = e[i + 1] - e[i], x[i + 1] - x[i]
        if rise == 0:
            continue
        ramp = node("Relu", [node("Sub", [s, const(f"x{i}", x[i])], f"sub{i}")], f"ramp{i}")
        part = node("Mul", [node("Min", [ramp, const(f"w{i}", width)], f"min{i}"),
                            const(f"slope{i}", rise / width)], f"part{i}")
        acc = node("Add", [acc, part], f"acc{i + 1}")
    node("Identity", [acc], "expected_error", f"{output}.expected_error")
    return nodes, inits
