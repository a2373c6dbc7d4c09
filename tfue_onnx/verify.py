"""The zero-perturbation identity check every uncertainty graph must pass.

With every level set to 0 (sigma = 0, rate = 0) the graph must return the
original model's outputs: the unperturbed output and the sample mean equal to
the original, the variance zero. For the batched strategy the unperturbed slot
must also stay untouched when the perturbation is on, which catches models
whose batch axis is not the outermost one at the location.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .graph import output_names

RTOL = 1e-4


@dataclasses.dataclass
class Verdict:
    """The outcome of a verification: ok, or the reason it failed."""

    ok: bool
    reason: str = ""
    max_error: float = 0.0


def _scale(ref) -> float:
    finite = np.abs(ref[np.isfinite(ref)]) if ref.size else np.zeros(1)
    return float(max(1.0, finite.max() if finite.size else 1.0))


def _rtol(ref) -> float:
    """RTOL, or 2 units in the last place of a coarser output type (float16): a model
    that casts to float16 at the end may round one step apart after the rewrite."""
    dtype = np.asarray(ref).dtype
    return max(RTOL, 2 * float(np.finfo(dtype).eps)) if dtype.kind == "f" else RTOL


def _close(name, what, got, ref):
    if got.shape != ref.shape:
        return Verdict(False, f"{what} of '{name}' has shape {got.shape}, the original "
                              f"{ref.shape}", float("inf"))
    rtol = max(_rtol(ref), _rtol(got))  # the coarser of the two types
    atol = rtol / 10 * _scale(ref)
    err = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
    if not np.allclose(got, ref, rtol=rtol, atol=atol, equal_nan=True):
        return Verdict(False, f"{what} of '{name}' differs from the original output by "
                              f"{err:.3g} (tolerance {atol:.1e} + {rtol:g}·|y|)", err)
    return Verdict(True, "", err)


def check_identity(outputs: dict, reference: dict, stats_outputs) -> Verdict:
    """Check outputs of an uncertainty graph run with all levels at 0."""
    worst = 0.0
    for name, ref in reference.items():
        names = output_names(name)
        checks = [("output", outputs[names["output"]])]
        if name in stats_outputs:
            checks.append(("sample mean", outputs[names["mean"]]))
        for what, got in checks:
            v = _close(name, what, np.asarray(got), np.asarray(ref))
            if not v.ok:
                return v
            worst = max(worst, v.max_error)
        if name in stats_outputs:
            var = np.asarray(outputs[names["variance"]], dtype=np.float64)
            limit = (_rtol(ref) * _scale(np.asarray(ref))) ** 2
            peak = float(np.nanmax(var)) if var.size else 0.0
            if peak > limit:
                return Verdict(False, f"variance of '{name}' is {peak:.3g} with the "
                                      "perturbation off (should be 0)", peak)
    return Verdict(True, "", worst)


def check_statistics(outputs: dict, expected: dict, source: str) -> Verdict:
    """Check an uncertainty graph's mean and variance against ones computed apart.

    Args:
        outputs: the graph's outputs by name.
        expected: output name -> (mean, variance), e.g. numpy statistics of the
            original model's runs on transformed inputs.
        source: what ``expected`` comes from, for the reason.

    Returns:
        The Verdict; its reason names the output, the statistic and ``source``.
    """
    worst = 0.0
    for name, (mean, variance) in expected.items():
        names = output_names(name)
        for what, got, ref in (("sample mean", outputs[names["mean"]], mean),
                               ("variance", outputs[names["variance"]], variance)):
            v = _close(name, what, np.asarray(got), np.asarray(ref))
            if not v.ok:
                return Verdict(False, v.reason.replace("the original output",
                                                       f"that of the {source}"), v.max_error)
            worst = max(worst, v.max_error)
    return Verdict(True, "", worst)


def result_outputs(results: dict) -> dict:
    """A run's statistics (output name -> OutputStats) under the uncertainty graph's
    output names, for :func:`check_identity`: verification checks the numbers the
    user gets, not only the graph's own head."""
    outputs = {}
    for name, r in results.items():
        names = output_names(name)
        outputs[names["output"]] = r.output
        if r.mean is not None:
            outputs[names["mean"]] = r.mean
            outputs[names["variance"]] = r.variance
    return outputs


def check_unperturbed_slot(outputs: dict, reference: dict) -> Verdict:
    """Check that the unperturbed output stays the original with the perturbation on."""
    for name, ref in reference.items():
        v = _close(name, "unperturbed output (perturbation on)",
                   np.asarray(outputs[output_names(name)["output"]]), np.asarray(ref))
        if not v.ok:
            return Verdict(False, v.reason + "; the batch axis is probably not outermost at "
                                             "the location", v.max_error)
    return Verdict(True)


def check_chunk_independence(together: dict, alone: dict, stats_outputs) -> Verdict:
    """Check that sample 1 gives the same output in a run of samples 0..1 as alone.

    Args:
        together: outputs of a run of samples 0 and 1 (``y.samples`` of shape [2, ...]).
        alone: outputs of a run of sample 1 alone (``y.samples`` of shape [1, ...]).
        stats_outputs: the output names with samples.

    Returns:
        The Verdict; a failure means the samples of one run mix (the batch axis at the
        location is not the outermost one).
    """
    worst = 0.0
    for name in stats_outputs:
        key = output_names(name)["samples"]
        v = _close(name, "sample 2 of a run of 2", np.asarray(together[key])[1],
                   np.asarray(alone[key])[0])
        if not v.ok:
            return Verdict(False, v.reason.replace("the original output", "the same sample "
                                                   "run alone") + "; the samples of one run "
                           "mix: the batch axis is probably not outermost at the location",
                           v.max_error)
        worst = max(worst, v.max_error)
    return Verdict(True, "", worst)
