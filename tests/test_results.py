"""results.py: which output a Result speaks for, and where its maps' image axes are."""

import numpy as np
import pytest

from tfue_onnx import results
from tfue_onnx.results import OutputStats, Result


def _stats(value, with_variance=True, **kw):
    a = np.full((1, 2, 3, 4), value, np.float32)
    return OutputStats(a, a + 1, a * 0 + value / 10 if with_variance else None, **kw)


def test_primary_is_the_first_output_with_statistics():
    labels = OutputStats(np.zeros((1, 3, 4), np.int64))  # no statistics: not primary
    r = Result({"labels": labels, "y": _stats(2.0), "z": _stats(5.0)}, {})
    assert r.primary == "y"
    np.testing.assert_array_equal(r.output, np.full((1, 2, 3, 4), 2.0))
    np.testing.assert_array_equal(r.mean, np.full((1, 2, 3, 4), 3.0))
    np.testing.assert_allclose(r.variance, 0.2)
    assert r.uncertainty is r.variance and r.samples is None and r.entropy is None


def test_primary_falls_back_to_the_first_output_without_any_statistics():
    r = Result({"a": OutputStats(np.ones(2)), "b": OutputStats(np.zeros(2))}, {})
    assert r.primary == "a" and r.variance is None and r.uncertainty is None
    np.testing.assert_array_equal(r.output, np.ones(2))


def test_entropy_only_output_is_primary_and_its_uncertainty_is_the_entropy():
    ent = np.linspace(0, 1, 12).reshape(1, 3, 4)
    probs = OutputStats(np.ones((1, 5, 3, 4)), entropy=ent, mutual_information=ent / 2)
    r = Result({"plain": OutputStats(np.ones(2)), "p": probs}, {})
    assert r.primary == "p" and r.variance is None
    assert r.uncertainty is ent and r.entropy is ent
    np.testing.assert_array_equal(r.mutual_information, ent / 2)


def _meta(hw, classes=None):
    meta = {"spatial_axes": {"y": hw}}
    if classes is not None:
        meta["classes"] = {"outputs": {"y": classes}}
    return meta


def test_map_axes_of_the_variance_are_the_recorded_ones():
    r = Result({"y": _stats(1.0)}, _meta([2, 3]))
    assert results.map_axes(r) == (2, 3) == r.image_axes == r.uncertainty_axes
    assert results.map_axes(Result({"y": _stats(1.0)}, {})) is None  # not recorded: guess
    none = Result({"y": _stats(1.0)}, {"spatial_axes": {"other": [2, 3]}})
    assert results.map_axes(none) is False  # recorded: this output has none


@pytest.mark.parametrize("hw, classes, expected", [
    ([2, 3], 1, (1, 2)),        # NCHW, classes on axis 1: both image axes move down
    ([1, 2], 3, (1, 2)),        # NHWC, classes last: nothing moves
    ([1, 3], 2, (1, 2)),        # classes between the image axes: only W moves
    ([2, 3], [0, 1], (0, 1)),   # two class axes before: both move down by 2
    ([2, 3], None, False),      # no class axis recorded: no entropy map axes
    ([2, 3], 2, False),         # the class axis is an image axis: nothing left
])
def test_map_axes_of_the_entropy_lose_the_class_axis(hw, classes, expected):
    r = Result({"y": OutputStats(np.ones((1, 4, 5, 6)), entropy=np.ones((1, 5, 6)))},
               _meta(hw, classes))
    assert results.map_axes(r, "entropy") == expected
    assert r.uncertainty_axes == expected
    assert r.image_axes == (tuple(hw) if hw else None)
