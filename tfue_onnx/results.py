"""What a run returns: :class:`OutputStats` per model output and a :class:`Result`.

Plain data (numpy arrays and a JSON-able metadata dict); written by report.py,
read back by ``report.read_result``.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class OutputStats:
    """Prediction and uncertainty of one model output (Mi et al.: the variance of N
    tolerably perturbed outputs is the uncertainty map).

    Every array has the output's shape and dtype (float16/32/64) unless said otherwise;
    ``variance`` is in squared output units, ``entropy`` and ``mutual_information`` in
    nats. Fields that do not apply are None.
    """

    output: np.ndarray  # the unperturbed output (the original model's own)
    mean: np.ndarray | None = None  # sample mean (None: a non-float output, entropy runs)
    variance: np.ndarray | None = None  # per-element population variance (ddof 0)
    samples: np.ndarray | None = None  # [N, *shape] when asked for (keep_samples=True)
    # Class probabilities only (maps over pixels for dense outputs; the class axis gone):
    entropy: np.ndarray | None = None  # predictive entropy of the mean (nats)
    mutual_information: np.ndarray | None = None  # BALD: entropy - mean sample entropy
    class_variance: np.ndarray | None = None  # variance of the winning class
    # With a calibration (calibration.CalibrationFile.apply), in output units:
    expected_error: np.ndarray | None = None  # E|output - target| from the isotonic map
    lower: np.ndarray | None = None  # output - q * s: the conformal interval's ends
    upper: np.ndarray | None = None  # output + q * s

    @property
    def uncertainty(self):
        """The map to look at: ``variance``, or ``entropy`` for ``Entropy()`` runs
        (None for outputs without statistics)."""
        return self.variance if self.variance is not None else self.entropy


@dataclasses.dataclass
class Result:
    """What one run returns: per-output statistics and how they were made.

    ``outputs`` maps every model output's name to its :class:`OutputStats` (in the
    model's order); the properties below read the *primary* output, the first with
    statistics. ``metadata`` is JSON-able: method, location (``at``), level, N
    (``samples``), seed, strategy, provider, chunks, the image axes found and notes;
    ``tfue run`` stores it in NAME.npz and ``report.read_result`` reads it back.
    """

    outputs: dict  # output name -> OutputStats
    metadata: dict

    @property
    def primary(self) -> str:
        """Name of the first output that has statistics (else the first output)."""
        for name, s in self.outputs.items():
            if s.uncertainty is not None:
                return name
        return next(iter(self.outputs))

    @property
    def output(self) -> np.ndarray:
        """The primary output unperturbed: the model's shape and dtype."""
        return self.outputs[self.primary].output

    @property
    def mean(self) -> np.ndarray | None:
        """The primary output's sample mean over the N samples (its shape and dtype;
        None for entropy runs)."""
        return self.outputs[self.primary].mean

    @property
    def variance(self) -> np.ndarray | None:
        """The uncertainty map: per-element variance of the primary output over the N
        samples (population variance, squared output units, the output's shape and
        dtype; None for entropy runs)."""
        return self.outputs[self.primary].variance

    @property
    def samples(self) -> np.ndarray | None:
        """The primary output's N samples ``[N, *shape]`` (None unless
        ``keep_samples=True`` / ``--save-samples``)."""
        return self.outputs[self.primary].samples

    @property
    def entropy(self) -> np.ndarray | None:
        """Predictive entropy (nats) of the primary output's class probabilities, the
        class axis reduced away (None when it holds no class probabilities)."""
        return self.outputs[self.primary].entropy

    @property
    def mutual_information(self) -> np.ndarray | None:
        """BALD mutual information (nats; entropy of the mean minus the mean entropy of
        the samples) of the primary output (None without class probabilities or
        samples)."""
        return self.outputs[self.primary].mutual_information

    @property
    def uncertainty(self) -> np.ndarray | None:
        """The primary output's map to look at: ``variance``, or ``entropy`` for
        ``Entropy()`` runs."""
        return self.outputs[self.primary].uncertainty

    @property
    def image_axes(self):
        """The primary output's (height, width) axes as the run found them (a tuple),
        False when it has none (not an image), None when not recorded (guess); for
        ``metrics.table(..., hw_axes=)``."""
        return map_axes(self)

    @property
    def uncertainty_axes(self):
        """The same for ``uncertainty`` (the entropy map has lost the class axis)."""
        return map_axes(self, "variance" if self.variance is not None else "entropy")


def map_axes(result, kind: str = "variance"):
    """The (h, w) axes of the primary output's ``kind`` map (variance, entropy) from
    the result's metadata; False when it has none; None when not recorded (guess).

    The entropy map has the class axis reduced away, so the axes after it move down.
    """
    found = result.metadata.get("spatial_axes")
    if found is None:
        return None
    hw = found.get(result.primary)
    if hw is None:
        return False
    if kind == "entropy":
        c = result.metadata.get("classes", {}).get("outputs", {}).get(result.primary)
        cs = [] if c is None else [c] if np.ndim(c) == 0 else list(c)
        if not cs or any(k in hw for k in cs):
            return False
        hw = [k - sum(k > a for a in cs) for k in hw]
    return tuple(hw)
