"""Per-element loss weights from an uncertainty map, for training pipelines.

Mi et al. (training-free uncertainty, §5) weight a training loss by the uncertainty map,
so that the elements the model is unsure of count more. The weights here are computed
from the standard deviation ``s = sqrt(variance)`` (output units), relative to its mean
over each batch item, so they do not depend on the output's scale:

- ``linear`` (the default): ``w = clip(1 + strength * s / mean(s), 1, max_weight)``;
  every element keeps at least weight 1, uncertain ones get more.
- ``normalized``: ``w = clip(s / mean(s), 0, max_weight)``; mean about 1 (before the
  clip), certain elements get about 0.

A batch item whose map is 0 everywhere gets weight 1 everywhere (``linear``) or 0
(``normalized``): nothing is more uncertain than anything else.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .errors import ArgumentError
from .names import WEIGHT_FORMULAS as FORMULAS


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """How to turn a variance map into loss weights (see the module docstring).

    Args:
        formula: ``linear`` or ``normalized``.
        strength: λ of ``linear`` (>= 0; 0 gives weight 1 everywhere).
        max_weight: the largest weight (> 0; >= 1 for ``linear``), so a few very
            uncertain elements cannot dominate the loss.

    Raises:
        ArgumentError (a ValueError): an unknown formula, or a strength or maximum out
            of range.
    """

    formula: str = "linear"
    strength: float = 1.0
    max_weight: float = 10.0

    def __post_init__(self):
        if self.formula not in FORMULAS:
            raise ArgumentError(f"unknown loss-weight formula {self.formula!r}",
                                "use --weights " + " or --weights ".join(FORMULAS))
        for name, value, low in (("weight strength", self.strength, 0.0),
                                 ("max weight", self.max_weight, 1e-12)):
            ok = isinstance(value, (int, float, np.integer, np.floating)) and \
                not isinstance(value, (bool, np.bool_)) and math.isfinite(value) and value >= low
            if not ok:
                raise ArgumentError(f"{name} must be a finite number >= {low:g}, got "
                                    f"{value!r}", "e.g. --weight-strength 1 --max-weight 10")
        if self.formula == "normalized" and self.strength != 1.0:
            raise ArgumentError(f"the normalized formula (s / mean s) has no strength, got "
                                f"{self.strength!r}", "drop --weight-strength, or use "
                                "--weights linear")
        if self.formula == "linear" and self.max_weight < 1:
            raise ArgumentError(f"max weight must be >= 1 for the linear formula (its "
                                f"weights start at 1), got {self.max_weight!r}",
                                "e.g. --max-weight 10")

    def __call__(self, variance) -> np.ndarray:
        """The weights of a variance map: float32, the map's shape.

        ``variance``: per-element variance (squared output units) with the batch axis
        first when it has 3 or more axes (the mean of s is taken per batch item), else
        one map. Negative values (rounding) count as 0; NaN/Inf give NaN weights.
        """
        v = np.asarray(variance, dtype=np.float64)
        s = np.sqrt(np.maximum(v, 0.0))
        axes = tuple(range(1, s.ndim)) if s.ndim >= 3 else None
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s.mean(axis=axes, keepdims=True)
            rel = np.where(mean > 0, s / np.where(mean > 0, mean, 1.0), 0.0)
        rel = np.where(np.isfinite(v), rel, np.nan)
        if self.formula == "linear":
            w = np.clip(1.0 + self.strength * rel, 1.0, self.max_weight)
        else:
            w = np.clip(rel, 0.0, self.max_weight)
        return w.astype(np.float32)

    def describe(self) -> dict:
        """The settings as plain data, recorded in the run summary."""
        return {"formula": self.formula, "strength": float(self.strength),
                "max_weight": float(self.max_weight)}


def loss_weights(variance, formula: str = "linear", strength: float = 1.0,
                 max_weight: float = 10.0) -> np.ndarray:
    """``LossWeights(formula, strength, max_weight)(variance)``: float32 weights of the
    variance map's shape (see the module docstring for the formulas).

    Raises:
        ArgumentError (a ValueError): as :class:`LossWeights`.
    """
    return LossWeights(formula, strength, max_weight)(variance)
