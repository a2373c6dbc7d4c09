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

Elements where ``s`` is 0 score with ``s`` floored at ``S_FLOOR`` times the mean ``s``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .errors import ArgumentError, TfueError

BINS = 200  # quantile bins of s for the isotonic fit
S_FLOOR = 1e-6  # relative to the mean s: where s = 0, the score's denominator


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A fitted calibration (see the module docstring); plain data, JSON-able.

    Attributes:
        coverage: the interval's target coverage 1 - alpha, in (0, 1).
        q: the conformal quantile of e / s (intervals are ``output ± q * s``).
        scale: ``a`` of the one-parameter fit ``E[e] = a * s``.
        knots_s, knots_e: the isotonic map's knots (s ascending, E[e] non-decreasing),
            in output units.
        count: the number of calibration elements.
        floor: the s used where s is 0 (output units).
    """

    coverage: float
    q: float
    scale: float
    knots_s: tuple
    knots_e: tuple
    count: int
    floor: float

    def expected_error(self, variance) -> np.ndarray:
        """E[|error|] per element of a variance map (output units; float64, its shape)."""
        s = np.sqrt(np.maximum(np.asarray(variance, dtype=np.float64), 0.0))
        return np.interp(s, self.knots_s, self.knots_e)

    def interval(self, output, variance) -> tuple:
        """``(lower, upper) = output ∓ q * s`` per element (float64, the output's shape)."""
        s = np.sqrt(np.maximum(np.asarray(variance, dtype=np.float64), 0.0))
        y = np.asarray(output, dtype=np.float64)
        return y - self.q * s, y + self.q * s

    def to_json(self) -> dict:
        """The fit as plain data (``Calibration.from_json`` reads it back)."""
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "Calibration":
        """Read ``to_json``'s dict back.

        Raises:
            TfueError: a field is missing or of the wrong kind.
        """
        try:
            return cls(coverage=float(data["coverage"]), q=float(data["q"]),
                       scale=float(data["scale"]),
                       knots_s=tuple(float(v) for v in data["knots_s"]),
                       knots_e=tuple(float(v) for v in data["knots_e"]),
                       count=int(data["count"]), floor=float(data["floor"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise TfueError(f"not a calibration ({type(exc).__name__}: {exc})",
                            "give a calibration made by tfue_onnx.calibrate.fit") from None


def fit(outputs, variances, targets, coverage: float = 0.9) -> Calibration:
    """Fit the expected-error map and the conformal quantile on calibration pairs.

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
    if not (isinstance(coverage, (int, float)) and 0 < coverage < 1):
        raise ArgumentError(f"coverage must be in (0, 1), got {coverage!r}", "e.g. 0.9")
    s, e = _elements(outputs, variances, targets)
    n = s.size
    rank = math.ceil((n + 1) * coverage)
    if n == 0 or rank > n:
        raise TfueError(f"{n} calibration element(s) are too few for coverage {coverage:g} "
                        f"(the conformal quantile needs at least {math.ceil(1 / (1 - coverage)) - 1})",
                        "calibrate on more pairs, or ask for a lower coverage")
    floor = S_FLOOR * float(s.mean()) if s.mean() > 0 else S_FLOOR
    q = float(np.partition(e / np.maximum(s, floor), rank - 1)[rank - 1])
    scale = float((s * e).sum() / (s * s).sum()) if (s * s).sum() > 0 else 0.0
    knots_s, knots_e = _isotonic(s, e)
    return Calibration(coverage=float(coverage), q=q, scale=scale, knots_s=knots_s,
                       knots_e=knots_e, count=int(n), floor=floor)


def _elements(outputs, variances, targets) -> tuple:
    """(s, e): every finite calibration element's sqrt(variance) and |error|, flat."""
    if not (len(outputs) == len(variances) == len(targets)):
        raise ArgumentError("outputs, variances and targets must be lists of one length, got "
                            f"{len(outputs)}, {len(variances)}, {len(targets)}",
                            "give one variance and one target per output")
    ss, es = [], []
    for y, v, t in zip(outputs, variances, targets):
        y, v, t = (np.asarray(a, dtype=np.float64) for a in (y, v, t))
        if not (y.shape == v.shape == t.shape):
            raise ArgumentError(f"output {y.shape}, variance {v.shape} and target {t.shape} "
                                "differ in shape", "give arrays of the output's shape")
        ok = np.isfinite(y) & np.isfinite(v) & np.isfinite(t)
        ss.append(np.sqrt(np.maximum(v[ok], 0.0)))
        es.append(np.abs(y[ok] - t[ok]))
    return (np.concatenate(ss), np.concatenate(es)) if ss else (np.zeros(0), np.zeros(0))


def _isotonic(s: np.ndarray, e: np.ndarray) -> tuple:
    """Knots of the monotone map s -> E[e]: isotonic regression of the mean e of quantile
    bins of s on their mean s, weighted by the bins' counts."""
    from scipy.optimize import isotonic_regression

    order = np.argsort(s, kind="stable")
    groups = np.array_split(order, min(BINS, s.size))
    mean_s = np.array([s[g].mean() for g in groups])
    mean_e = np.array([e[g].mean() for g in groups])
    weights = np.array([g.size for g in groups], dtype=np.float64)
    fitted = isotonic_regression(mean_e, weights=weights, increasing=True).x
    return tuple(float(v) for v in mean_s), tuple(float(v) for v in fitted)


def assess(calibration: Calibration, outputs, variances, targets) -> dict:
    """How a calibration holds on held-out pairs.

    Returns:
        {"coverage" (the fraction of finite elements inside ``output ± q * s``),
        "target_coverage", "mean_width" (of the intervals, output units),
        "mean_expected_error" and "mean_error" (output units), "count"}.

    Raises:
        ArgumentError (a ValueError): as :func:`fit`.
    """
    s, e = _elements(outputs, variances, targets)
    inside = e <= calibration.q * s
    return {"coverage": float(inside.mean()) if s.size else float("nan"),
            "target_coverage": calibration.coverage,
            "mean_width": float(2 * calibration.q * s.mean()) if s.size else float("nan"),
            "mean_expected_error": float(np.interp(s, calibration.knots_s,
                                                   calibration.knots_e).mean())
            if s.size else float("nan"),
            "mean_error": float(e.mean()) if s.size else float("nan"), "count": int(s.size)}
