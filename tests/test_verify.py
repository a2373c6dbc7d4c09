"""verify.py: the identity, statistics, unperturbed-slot and chunk checks on arrays built
here, at the edge of their tolerance (allclose: |got - ref| <= atol + rtol |ref|, with
rtol = 1e-4 or 2 ulp of float16 and atol = rtol / 10 * max(1, max |ref|))."""

import numpy as np
import pytest

from tfue_onnx import verify
from tfue_onnx.results import OutputStats

REF = np.full((1, 2, 3, 3), 2.0)  # float64: rtol 1e-4, scale 2
EDGE = 1e-4 * 2 + 1e-5 * 2        # rtol |ref| + atol = 2.2e-4


def _graph_outputs(output, mean=None, variance=None):
    out = {"y": output}
    if mean is not None:
        out.update({"y.mean": mean, "y.variance": variance})
    return out


def test_identity_passes_within_the_tolerance_and_reports_the_error():
    v = verify.check_identity(_graph_outputs(REF + 2.1e-4, REF - 1e-4, np.zeros_like(REF)),
                              {"y": REF}, ["y"])
    assert v.ok and v.reason == "" and v.max_error == pytest.approx(2.1e-4, rel=1e-6)


@pytest.mark.parametrize("which", ["output", "sample mean"])
def test_identity_fails_just_past_the_tolerance(which):
    bad = REF.copy()
    bad[0, 1, 2, 0] += 2.3e-4
    got = _graph_outputs(bad, REF, np.zeros_like(REF)) if which == "output" else \
        _graph_outputs(REF, bad, np.zeros_like(REF))
    v = verify.check_identity(got, {"y": REF}, ["y"])
    assert not v.ok and v.max_error == pytest.approx(2.3e-4, rel=1e-6)
    assert v.reason.startswith(f"{which} of 'y' differs from the original output by 0.00023")
    assert "tolerance 2.0e-05 + 0.0001" in v.reason


def test_identity_checks_the_mean_only_of_outputs_with_statistics():
    far = REF + 1.0
    assert verify.check_identity(_graph_outputs(REF, far, far), {"y": REF}, []).ok


def test_identity_variance_limit_is_the_squared_tolerance():
    limit = (1e-4 * 2) ** 2  # (rtol * scale)^2 = 4e-8
    ok = verify.check_identity(_graph_outputs(REF, REF, np.full(REF.shape, 0.9 * limit)),
                               {"y": REF}, ["y"])
    assert ok.ok
    var = np.zeros(REF.shape)
    var[0, 0, 1, 1] = 1.1 * limit
    v = verify.check_identity(_graph_outputs(REF, REF, var), {"y": REF}, ["y"])
    assert not v.ok and v.max_error == pytest.approx(1.1 * limit)
    assert "variance of 'y' is 4.4e-08 with the perturbation off (should be 0)" == v.reason


def test_identity_shape_mismatch():
    v = verify.check_identity({"y": REF[:, :1]}, {"y": REF}, [])
    assert not v.ok and v.max_error == float("inf")
    assert v.reason == "output of 'y' has shape (1, 1, 3, 3), the original (1, 2, 3, 3)"


def test_nan_where_the_original_has_nan_passes_and_nowhere_else():
    ref = REF.copy()
    ref[0, 0, 0, 0] = np.nan
    var = np.zeros(REF.shape)
    var[0, 0, 0, 0] = np.nan  # the model's own NaN carries into the variance
    assert verify.check_identity(_graph_outputs(ref.copy(), ref.copy(), var), {"y": ref},
                                 ["y"]).ok
    made = ref.copy()
    made[0, 1, 1, 1] = np.nan
    v = verify.check_identity(_graph_outputs(made, ref, var), {"y": ref}, ["y"])
    assert not v.ok and v.reason.startswith("output of 'y' differs")
    # The scale ignores NaN and infinities: a huge finite value sets it.
    big = np.array([np.nan, 1000.0, 0.0])
    assert verify.check_identity({"y": big + [0, 0, 0.01]}, {"y": big}, []).ok  # atol 0.01
    assert not verify.check_identity({"y": big + [0, 0, 0.011]}, {"y": big}, []).ok


def test_float16_outputs_get_two_units_in_the_last_place():
    ulp = float(np.finfo(np.float16).eps)  # 2^-10 at 1.0
    ref16 = np.ones((4,), np.float16)
    one_step = np.full((4,), 1 + ulp, np.float16)
    assert verify.check_identity({"y": one_step}, {"y": ref16}, []).ok
    assert not verify.check_identity({"y": one_step.astype(np.float32)},
                                     {"y": ref16.astype(np.float32)}, []).ok
    # The coarser of the two types counts: a float16 rewrite of a float32 model.
    assert verify.check_identity({"y": one_step}, {"y": ref16.astype(np.float32)}, []).ok
    three = np.full((4,), 1 + 5 * ulp, np.float16)  # past 2 ulp (+ atol)
    assert not verify.check_identity({"y": three}, {"y": ref16}, []).ok


def test_statistics_name_the_source():
    mean, var = np.arange(6.0).reshape(2, 3), np.full((2, 3), 0.5)
    expected = {"y": (mean, var)}
    assert verify.check_statistics({"y.mean": mean + 1e-5, "y.variance": var}, expected,
                                   "transformed runs").ok
    v = verify.check_statistics({"y.mean": mean, "y.variance": var * 1.01}, expected,
                                "transformed runs")
    assert not v.ok and v.max_error == pytest.approx(0.005)
    assert v.reason.startswith("variance of 'y' differs from that of the transformed runs "
                               "by 0.005")


def test_unperturbed_slot():
    assert verify.check_unperturbed_slot({"y": REF + 1e-4}, {"y": REF}).ok
    v = verify.check_unperturbed_slot({"y": REF + 1e-3}, {"y": REF})
    assert not v.ok and v.reason.startswith("unperturbed output (perturbation on) of 'y'")
    assert v.reason.endswith("the batch axis is probably not outermost at the location")


def test_chunk_independence_compares_sample_two_with_itself_alone():
    rng = np.random.default_rng(0)
    samples = rng.random((2, 1, 3, 4))
    alone = {"y.samples": samples[1:]}
    assert verify.check_chunk_independence({"y.samples": samples}, alone, ["y"]).ok
    mixed = samples.copy()
    mixed[1] = samples.mean(0)  # sample 2 depends on sample 1: the samples mix
    v = verify.check_chunk_independence({"y.samples": mixed}, alone, ["y"])
    expected = np.abs(mixed[1] - samples[1]).max()
    assert not v.ok and v.max_error == pytest.approx(expected)
    assert "differs from the same sample run alone" in v.reason
    assert "the samples of one run mix" in v.reason
    # Sample 1 may differ: only sample 2 is compared.
    other = samples.copy()
    other[0] += 1
    assert verify.check_chunk_independence({"y.samples": other}, alone, ["y"]).ok


def test_result_outputs_feed_check_identity():
    a = np.ones((1, 2))
    out = verify.result_outputs({"y": OutputStats(a, a, np.zeros_like(a)),
                                 "labels": OutputStats(np.zeros(2, np.int64))})
    assert set(out) == {"y", "y.mean", "y.variance", "labels"}
    assert verify.check_identity(out, {"y": a, "labels": np.zeros(2, np.int64)}, ["y"]).ok
