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
    np.testing.assert_allclose(cal.expected_error(s * s, fit="scale"), cal.scale * s)
    with pytest.raises(ValueError, match="unknown fit 'linear'"):
        cal.expected_error(s, fit="linear")
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


def test_ence_and_the_reliability_bins_of_a_hand_made_calibration():
    # Knots: E|e| = s and RMSE = 2 s; one bin edge at s = 1: bins [s <= 1) and [s >= 1).
    from tfue_onnx.calibrate import Assessment

    cal = Calibration(coverage=0.5, q=1.5, scale=1.0, knots_s=(0.0, 10.0),
                      knots_e=(0.0, 10.0), knots_rmse=(0.0, 20.0), bin_edges=(1.0,),
                      count=4, floor=1e-9)
    found = Assessment(cal)
    # s = 0.5, 0.5, 2, 2 (variance s^2); errors 1, 0, 1, 4.
    y = np.zeros(4)
    cov = found.add(y, np.array([0.25, 0.25, 4.0, 4.0]), np.array([1.0, 0.0, 1.0, 4.0]))
    assert cov == 0.5  # inside q * s: |0| <= 0.75, |1| <= 3; not 1 > 0.75, 4 > 3
    r = found.result()
    lo, hi = r["bins"]
    assert (lo["count"], hi["count"]) == (2, 2)
    assert lo["rmv_raw"] == pytest.approx(0.5) and hi["rmv_raw"] == pytest.approx(2.0)
    assert lo["rmv"] == pytest.approx(1.0) and hi["rmv"] == pytest.approx(4.0)
    assert lo["rmse"] == pytest.approx(math.sqrt(0.5)) and hi["rmse"] == pytest.approx(
        math.sqrt(8.5))
    raw = (abs(0.5 - math.sqrt(0.5)) / 0.5 + abs(2 - math.sqrt(8.5)) / 2) / 2
    calibrated = (abs(1 - math.sqrt(0.5)) / 1 + abs(4 - math.sqrt(8.5)) / 4) / 2
    assert r["ence_raw"] == pytest.approx(raw) and r["ence"] == pytest.approx(calibrated)
    assert r["mean_width"] == pytest.approx(2 * 1.5 * 1.25)  # mean s = 1.25
    assert r["mean_expected_error"] == pytest.approx(1.25) and r["mean_error"] == 1.5
    assert r["coverage"] == 0.5 and r["count"] == 4
    assert r["image_coverage"] == {"min": 0.5, "median": 0.5, "max": 0.5}


def test_knots_collinear_with_their_neighbours_are_dropped():
    from tfue_onnx.calibrate import _needed

    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([0.0, 1.0, 2.0, 2.0, 2.0, 3.0])  # slope 1, 1, 0, 0, 1
    keep = _needed(x, [y])
    assert keep.tolist() == [0, 2, 4, 5]
    t = np.linspace(-1, 6, 57)
    np.testing.assert_allclose(np.interp(t, x[keep], y[keep]), np.interp(t, x, y))
    assert _needed(x, [y, x * x]).tolist() == list(range(6))  # the other map bends


def test_a_fit_has_few_knots_and_its_maps_are_monotone():
    rng = np.random.default_rng(4)
    cal = fit(*_pairs(rng, 6), coverage=0.9)
    assert 2 <= len(cal.knots_s) <= 64
    assert np.all(np.diff(cal.knots_s) > 0)
    assert np.all(np.diff(cal.knots_e) >= 0) and np.all(np.diff(cal.knots_rmse) >= 0)
    s = np.array([0.2, 0.8])
    # Gaussian errors: RMSE = s, E|e| = sqrt(2/pi) s
    np.testing.assert_allclose(cal.calibrated_std(s * s), s, rtol=0.1)
    assert len(cal.bin_edges) == 9 and np.all(np.diff(cal.bin_edges) > 0)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-6), (np.float64, 1e-12),
                                        (np.float16, 2e-2)])
def test_the_graph_nodes_compute_what_the_calibration_computes(dtype, tol):
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from tfue_onnx.calibrate import graph_nodes

    cal = fit(*_pairs(np.random.default_rng(5), 4), coverage=0.9)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits = graph_nodes(cal, "y", "y.variance", elem)
    vi = [helper.make_tensor_value_info(n, elem, [None]) for n in
          ("y", "y.variance", "y.expected_error", "y.lower", "y.upper")]
    model = helper.make_model(helper.make_graph(nodes, "cal", vi[:2], vi[2:], inits),
                              opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    y = np.random.default_rng(6).normal(0, 1, 500).astype(dtype)
    v = np.concatenate([[0.0, 1e-12], np.random.default_rng(7).uniform(0, 1.5, 498)]) \
        .astype(dtype)  # 0, tiny, and beyond the last knot (s up to 1.22)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(["e", "lo", "hi"], sess.run(None, {"y": y, "y.variance": v})))
    lo, hi = cal.interval(y, v)
    np.testing.assert_allclose(got["lo"], lo, atol=tol * 4)
    np.testing.assert_allclose(got["hi"], hi, atol=tol * 4)
    np.testing.assert_allclose(got["e"], cal.expected_error(v), atol=tol)
    assert got["e"].dtype == dtype
    assert len(nodes) < 10 + 5 * len(cal.knots_s)  # a few nodes per knot


def test_reliability_bins_survive_ties_and_mostly_zero_maps():
    from tfue_onnx.calibrate import bin_edges

    s = np.arange(100.0)
    np.testing.assert_array_equal(bin_edges(s, 4), [25.0, 50.0, 75.0])
    mostly_zero = np.concatenate([np.zeros(920), np.linspace(1, 2, 80)])
    edges = bin_edges(mostly_zero, 10)
    assert edges[0] > 0 and len(edges) == 9  # the zeros in one bin, the rest in nine
    counts = np.bincount(np.searchsorted(edges, mostly_zero, side="right"))
    assert counts[0] == 920 and all(8 <= c <= 10 for c in counts[1:])
    assert len(bin_edges(np.zeros(50), 10)) == 0  # all tied: one bin
    cal = fit([np.zeros(1000)], [np.square(mostly_zero)], [mostly_zero], coverage=0.9)
    assert len(cal.bin_edges) == 9


def test_what_fit_assess_and_interval_refuse():
    from tfue_onnx.calibrate import check_coverage

    y = np.zeros(20)
    with pytest.raises(ValueError, match="negative values"):
        fit([y], [np.full(20, -0.5)], [y])
    fit([y], [np.full(20, -1e-15)], [y + 0.1], coverage=0.5)  # rounding: taken as 0
    with pytest.raises(ValueError, match="no finite element"):
        fit([y], [np.ones(20)], [np.full(20, np.nan)])
    assert check_coverage(np.float32(0.75)) == 0.75 and check_coverage(np.float64(0.9)) == 0.9
    with pytest.raises(ValueError, match="coverage must be in"):
        check_coverage(np.bool_(True))
    # The smallest calibration set each coverage needs, said exactly.
    with pytest.raises(TfueError, match=r"at least 19\)"):
        fit([np.zeros(18)], [np.ones(18)], [np.ones(18)], coverage=0.95)
    assert fit([np.zeros(19)], [np.ones(19)], [np.ones(19)], coverage=0.95).count == 19
    cal = fit(*_pairs(np.random.default_rng(8), 2), coverage=0.9)
    with pytest.raises(ValueError, match="differ in shape"):
        cal.interval(np.zeros((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="no held-out pairs"):
        assess(cal, [], [], [])


def test_a_run_of_tied_sigma_gets_its_own_mean_error_whatever_the_order():
    """A detector's map is 0 on most pixels: the map's value there is those pixels' mean
    error, not that of whichever of them sorted first."""
    rng = np.random.default_rng(9)
    s = np.concatenate([np.zeros(9000), rng.uniform(0.1, 1, 1000)])
    e = np.zeros(10000)
    e[8000:9000] = 0.5
    e[9000:] = np.abs(rng.normal(0, 1, 1000)) * s[9000:] + 0.2
    for order in (np.arange(10000), rng.permutation(10000), np.arange(10000)[::-1]):
        cal = fit([np.zeros(10000)], [np.square(s[order])], [e[order]], coverage=0.9)
        assert cal.expected_error(np.zeros(1))[0] == pytest.approx(e[:9000].mean())
        assert cal.calibrated_std(np.zeros(1))[0] == pytest.approx(
            np.sqrt(np.mean(e[:9000] ** 2)))
