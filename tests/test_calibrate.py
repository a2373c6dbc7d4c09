"""Calibration: expected error and split-conformal intervals (calibrate.py; issue 13)."""

import math

import numpy as np
import pytest

from tfue_onnx import TfueError
from tfue_onnx.calibrate import Calibration, assess, fit


def _pairs(rng, count=4, shape=(1, 1, 32, 32)):
    """Outputs, variances and targets whose error is N(0, s^2) with s known per pixel."""
    outs, vars_, targets = [], [], []
    for _ in range(count):
        s = rng.uniform(0.01, 1.0, shape)
        y = rng.normal(0, 1, shape)
        outs.append(y)
        vars_.append(s * s)
        targets.append(y + rng.normal(0, 1, shape) * s)
    return outs, vars_, targets


def test_gaussian_errors_give_the_textbook_numbers_and_the_coverage_holds():
    rng = np.random.default_rng(0)
    cal = fit(*_pairs(rng, 20), coverage=0.9)
    assert cal.q == pytest.approx(1.6449, abs=0.04)  # |z| at 90 %
    assert cal.scale == pytest.approx(math.sqrt(2 / math.pi), abs=0.02)  # E|z| s
    s = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(cal.expected_error(s * s), math.sqrt(2 / math.pi) * s,
                               rtol=0.08)
    assert all(np.diff(cal.knots_e) >= 0) and all(np.diff(cal.knots_s) >= 0)
    held = assess(cal, *_pairs(np.random.default_rng(1), 10))
    assert held["coverage"] == pytest.approx(0.9, abs=0.01)
    assert held["mean_width"] == pytest.approx(2 * cal.q * 0.505, rel=0.03)  # mean s
    at80 = assess(fit(*_pairs(rng, 20), coverage=0.8), *_pairs(np.random.default_rng(2), 10))
    assert at80["coverage"] == pytest.approx(0.8, abs=0.01)


def test_the_finite_sample_correction_and_too_few_elements():
    # n = 9, alpha = 0.1: the ceil(10 * 0.9) = 9th smallest score, the largest.
    e = np.arange(1.0, 10.0)
    cal = fit([e], [np.ones(9)], [np.zeros(9)], coverage=0.9)
    assert cal.q == 9.0 and cal.count == 9
    assert fit([e], [np.ones(9)], [np.zeros(9)], coverage=0.5).q == 5.0  # ceil(5) = 5th
    with pytest.raises(TfueError, match="too few for coverage 0.95"):
        fit([e], [np.ones(9)], [np.zeros(9)], coverage=0.95)


def test_intervals_json_and_bad_arguments():
    rng = np.random.default_rng(3)
    cal = fit(*_pairs(rng, 2), coverage=0.9)
    lo, hi = cal.interval(np.zeros(3), np.array([0.0, 1.0, 4.0]))
    np.testing.assert_allclose(hi, [cal.q * cal.floor, cal.q, 2 * cal.q])  # s floored
    np.testing.assert_allclose(lo, -hi)
    assert Calibration.from_json(cal.to_json()) == cal
    with pytest.raises(TfueError, match="not a calibration"):
        Calibration.from_json({"q": 1.0})
    for bad in (0.0, 1.0, 1.5, "0.9"):
        with pytest.raises(ValueError, match="coverage must be in"):
            fit(*_pairs(rng, 1), coverage=bad)
    with pytest.raises(ValueError, match="differ in shape"):
        fit([np.zeros(3)], [np.zeros(4)], [np.zeros(3)])
    with pytest.raises(ValueError, match="lists of one length"):
        fit([np.zeros(3)], [], [np.zeros(3)])
    nan = fit([np.array([0.0, np.nan] * 10)], [np.ones(20)], [np.ones(20)], coverage=0.5)
    assert nan.count == 10  # non-finite elements left out
