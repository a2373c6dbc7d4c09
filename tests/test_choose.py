"""--at auto without targets: choose.choose_by_agreement (issue 10)."""

import numpy as np
import pytest
from onnx import helper, numpy_helper

import toys
from tfue_onnx import metrics
from tfue_onnx.choose import choose_by_agreement, interior_locations, per_image_agreement
from tfue_onnx.errors import TfueError
from tfue_onnx.model import inspect_model

CORNER = (slice(0, 2), slice(0, 2))  # the top-left 2 x 2: its D4 orbit is the 4 corners
CENTER = (slice(2, 6), slice(2, 6))  # the middle 4 x 4: D4-symmetric


def _masks():
    ma, mb = np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 1, 8, 8), np.float32)
    ma[(0, 0) + CORNER] = 0.2
    mb[(0, 0) + CENTER] = 0.2
    return ma, mb


def two_branch_net(path):
    """y = x + Ma * relu_a(r) + Mb * relu_b(r), r = relu(x), on [1, 1, 8, 8].

    Ma is non-zero on the top-left corner only (not D4-symmetric), Mb on the center (D4-
    symmetric). With the target x + Mb * x, the model's error is Ma * x: in the corner.
    Noise at ``a`` varies the output in the corner (tracks the error), noise at ``b``
    in the center (does not); the d4 variance is non-zero only in the four corners.
    """
    ma, mb = _masks()
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Relu", ["r"], ["a"], name="relu_a"),
             helper.make_node("Relu", ["r"], ["b"], name="relu_b"),
             helper.make_node("Mul", ["a", "ma"], ["ea"], name="mul_a"),
             helper.make_node("Mul", ["b", "mb"], ["eb"], name="mul_b"),
             helper.make_node("Add", ["ea", "eb"], ["s"], name="add_s"),
             helper.make_node("Add", ["x", "s"], ["y"], name="add_y")]
    inits = [numpy_helper.from_array(ma, "ma"), numpy_helper.from_array(mb, "mb")]
    return toys._save(path, nodes, inits, [1, 1, 8, 8], [1, 1, 8, 8], name="two_branch")


@pytest.fixture
def two_branch(tmp_path):
    return two_branch_net(tmp_path / "two_branch.onnx")


@pytest.fixture
def inputs():
    rng = np.random.default_rng(0)
    return [rng.uniform(0.5, 1.0, (1, 1, 8, 8)).astype(np.float32) for _ in range(2)]


def test_ranks_the_location_whose_variance_tracks_the_error_first(two_branch, inputs):
    pick = choose_by_agreement(two_branch, "noise", inputs, samples=8, provider="cpu",
                               levels=(0.02, 0.05))
    assert pick["at"] == "a" and pick["index"] == 2 and "weak" not in pick["reason"]
    by_at = {}
    for p in pick["points"]:
        by_at.setdefault(p["at"], []).append(p["agreement"])
    # a agrees with the d4 map, b is anti-aligned with it; noise after the masks (ea, eb,
    # s) is spread evenly over the image: only the sampling noise of 8 samples correlates.
    assert min(by_at["a"]) > 0.3 and max(by_at["b"]) < 0
    assert max(abs(v) for at in ("ea", "eb", "s") for v in by_at[at]) < 0.1
    # The toy is what it says: a's variance tracks the known error, b's does not.
    from tfue_onnx import Estimator, Noise

    ma, mb = _masks()
    x = inputs[0]
    error = np.abs(ma * x)  # output - (x + mb * x)
    corr = {}
    for at in ("a", "b"):
        var = Estimator(two_branch, Noise(0.2, at=at), samples=16, seed=0,
                        provider="cpu")(x).variance
        corr[at] = metrics.pearson(var, error)
    assert corr["a"] > 0.9 and corr["b"] < 0


def test_deterministic_interior_and_says_what_it_measured(tmp_path):
    model = str(tmp_path / "conv.onnx")
    toys.conv_net(model, channels=3)
    xs = [np.random.default_rng(k).random((1, 3, 8, 8), dtype=np.float32) for k in range(2)]
    kw = dict(samples=4, seed=3, provider="cpu", levels=(0.05, 0.2), tolerance=0.5)
    one, two = (choose_by_agreement(model, "dropout", xs, **kw) for _ in range(2))
    np.testing.assert_equal(one, two)  # NaN scores compare equal here
    assert 0 < one["depth"] < 1
    assert {"at", "index", "depth", "level", "reason", "agreement", "relative_change",
            "points", "sample_runs"} <= set(one)
    # 2 inputs: 8 d4 runs each, then 4 samples per level and location on each input
    assert one["sample_runs"] == 2 * 8 + 2 * 4 * len(one["points"])
    assert "agrees best with infer-transformation's (d4)" in one["reason"]
    assert f"{one['agreement']:.3f}" in one["reason"] and "<= 50%" in one["reason"]
    other = choose_by_agreement(model, "dropout", xs, **dict(kw, seed=4))
    assert other["points"] != one["points"]  # the seed is used


def test_interior_locations_and_agreement(tmp_path):
    toys.conv_net(tmp_path / "conv.onnx")
    info = inspect_model(tmp_path / "conv.onnx")
    locs = interior_locations(info, 8)
    assert locs and all(0 < c.depth < 1 for c in locs)
    one = interior_locations(info, 1)
    assert len(one) == 1 and 0 < one[0].depth < 1
    with pytest.raises(TfueError, match="at_count must be >= 1"):
        interior_locations(info, 0)
    a = np.zeros((2, 1, 4, 4))
    a[0, 0, 0, 0] = a[1, 0, 3, 3] = 1
    assert per_image_agreement(a, a) == pytest.approx(1.0)
    assert per_image_agreement(a, a[::-1]) == pytest.approx(-1 / 15)
    assert per_image_agreement(np.ones((1, 1, 4, 4)), a[:1]) != \
        per_image_agreement(np.ones((1, 1, 4, 4)), a[:1])  # NaN: a constant map


def test_bad_arguments(two_branch, inputs):
    with pytest.raises(TfueError, match="noise or dropout"):
        choose_by_agreement(two_branch, "transform", inputs)
    with pytest.raises(TfueError, match="tolerance must be > 0"):
        choose_by_agreement(two_branch, "noise", inputs, tolerance=0)
    with pytest.raises(TfueError, match="at least one input"):
        choose_by_agreement(two_branch, "noise", [])
