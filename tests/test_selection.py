"""selection.py: the first strategy, fastest first, that passes verification against the
original model; why each one before it failed (notes), and the error when none passes or
none applies."""

import numpy as np
import pytest

from tfue_onnx import Estimator, Noise, TfueError, Transform
from tfue_onnx.names import STRATEGIES
from tfue_onnx.selection import _batch_axis
from tfue_onnx.verify import Verdict


def _failing(monkeypatch, failing):
    """Estimator._verify with the strategies in ``failing`` failing verification; the
    strategies verified, in order."""
    calls, real = [], Estimator._verify

    def verify(self, ug, sess, feeds, reference):
        calls.append(ug.strategy)
        if ug.strategy in failing:
            return Verdict(False, f"{ug.strategy} made to fail by the test")
        return real(self, ug, sess, feeds, reference)
    monkeypatch.setattr(Estimator, "_verify", verify)
    return calls


def test_the_first_strategy_failing_falls_back_to_the_next_and_says_why(toy, x8, monkeypatch):
    calls = _failing(monkeypatch, {"looped-suffix"})
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=6, seed=3, cache=False)
    res = est(x8)
    assert calls == ["looped-suffix", "shared-prefix"]
    assert res.metadata["strategy"] == "shared-prefix"
    assert "strategy looped-suffix: failed verification (looped-suffix made to fail by the " \
           "test)" in est.notes
    assert any(n.startswith("strategy shared-prefix: verified (max |error| at level 0 = ")
               for n in est.notes)
    # The same numbers as asking for shared-prefix; the choice is kept for the shape.
    direct = Estimator(toy(), Noise(0.2, at="r1"), samples=6, seed=3, cache=False,
                       strategy="shared-prefix")(x8)
    np.testing.assert_allclose(res.variance, direct.variance, rtol=1e-5, atol=1e-8)
    assert est(x8[:, :, ::-1].copy()).metadata["strategy"] == "shared-prefix"
    assert calls == ["looped-suffix", "shared-prefix", "shared-prefix"]


def test_nothing_passing_names_every_strategys_reason(toy, x8, monkeypatch):
    calls = _failing(monkeypatch, set(STRATEGIES))
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=4, seed=0, cache=False)
    with pytest.raises(TfueError) as err:
        est(x8)
    assert calls == list(STRATEGIES)
    assert err.value.message == (
        "no uncertainty graph passed verification against the original model (" +
        "; ".join(f"{s}: {s} made to fail by the test" for s in STRATEGIES) + ")")
    assert err.value.hint == ("try another location (--at) or --strategy loop; --verbose "
                              "shows details")


def test_no_strategy_applies_lists_only_the_reasons(toy, x8):
    est = Estimator(toy(), Transform("flips"), strategy="shared-prefix", cache=False)
    with pytest.raises(TfueError) as err:
        est(x8)
    assert err.value.message == ("no sampling strategy applies to this model: shared-prefix: "
                                 "black-box methods perturb the input: no prefix to share")
    assert err.value.hint == ("try --strategy auto (the strategies in turn); --verbose shows "
                              "details")
    assert "strategy shared-prefix: not available (black-box methods perturb the input: no " \
           "prefix to share)" in est.notes


@pytest.mark.parametrize("shape,alt,want", [
    ((3, 4, 8), (5, 4, 8), 0), ((4, 3, 8), (4, 5, 8), 1), ((3, 4, 8), (3, 4, 8), None),
    ((3, 4, 8), (5, 4, 9), None), ((3, 4), (5, 4, 1), None), ((4, 3), (4, 6), None)])
def test_batch_axis_is_the_one_axis_that_follows_the_batch(shape, alt, want):
    assert _batch_axis(shape, alt, 3, 5) == want
