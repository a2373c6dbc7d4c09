"""Each metric against a case small enough to compute by hand."""

import numpy as np
import pytest
from scipy import ndimage

from tfue_onnx import metrics
from tfue_onnx.segment import block_means, grid_blocks, lcm_blocks


def test_error_maps():
    out, tgt = np.array([1.0, 2.0, 4.0]), np.array([0.0, 4.0, 4.0])
    np.testing.assert_array_equal(metrics.error_map(out, tgt, "l1"), [1, 2, 0])
    np.testing.assert_array_equal(metrics.error_map(out, tgt, "l2"), [1, 4, 0])


def test_correlations_by_hand():
    assert metrics.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = [0, 1, 2], y = [0, 2, 1]: cov = 1/3 * (1*1 + 0 + 1*0)... = 0.5 / (sd 1 * sd 1)
    assert metrics.pearson([0, 1, 2], [0, 2, 1]) == pytest.approx(0.5)
    assert np.isnan(metrics.pearson([1, 1, 1], [1, 2, 3]))
    # Spearman sees only order: a monotone but curved relation is perfect.
    assert metrics.spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    pix, rank = metrics.pixel_correlation([np.array([[0, 1]]), np.array([[2]])],
                                          [np.array([[0, 2]]), np.array([[1]])])
    assert pix == pytest.approx(0.5) and rank == pytest.approx(0.5)


def test_mean_correlation_over_images():
    v = [np.full((2, 2), a) for a in (1.0, 2.0, 3.0)]
    e = [np.full((2, 2), a) for a in (10.0, 30.0, 20.0)]
    assert metrics.mean_correlation(v, e) == pytest.approx(0.5)
    assert np.isnan(metrics.mean_correlation(v[:2], e[:2]))


def test_block_correlation_with_a_grid():
    # 2x4 map, 2x2 grid blocks: left block means v=1, e=2; right block v=3, e=1.
    v = np.array([[0, 2, 3, 3], [1, 1, 3, 3]], float)
    e = np.array([[2, 2, 0, 2], [2, 2, 1, 1]], float)
    labels = grid_blocks(v.shape, 2)
    np.testing.assert_array_equal(labels, [[0, 0, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(block_means(v, labels), [[1, 1, 3, 3], [1, 1, 3, 3]])
    assert metrics.block_correlation([v], [e], [v], grid=2) == pytest.approx(-1.0)


def test_lcm_blocks_follow_the_bumps():
    img = np.zeros((40, 60))
    img[8:14, 8:14] = 1.0
    img[25:32, 40:50] = 2.0
    labels = lcm_blocks(img, sigma=2)
    # Each bump's pixels flow to its own attractor; the flat background is one plateau.
    a, b, bg = labels[10, 10], labels[28, 45], labels[0, 30]
    assert len({a, b, bg}) == 3
    assert (labels[8:14, 8:14] == a).all() and (labels[25:32, 40:50] == b).all()
    assert labels.max() + 1 == len(np.unique(labels))


def test_lcm_blocks_are_steepest_ascent_basins():
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.random((64, 64)), 3)
    labels = lcm_blocks(img, sigma=1.5)
    smooth = ndimage.gaussian_filter(img - img.min(), 1.5, mode="nearest")
    # Every block holds exactly one local maximum of the smoothed image (or a plateau).
    peaks = (smooth == ndimage.maximum_filter(smooth, size=3, mode="constant", cval=-1))
    for lab in np.unique(labels):
        assert peaks[labels == lab].any()


def test_sparsification_by_hand():
    e = np.array([4.0, 3.0, 2.0, 1.0])
    best = metrics.sparsification(np.array([3.0, 2.0, 1.0, 0.0]), e, steps=4)
    # Remaining means 10/4, 6/3, 3/2, 1/1, over 2.5: [1, .8, .6, .4], mean 0.7.
    np.testing.assert_allclose(best["curve"], [1, 0.8, 0.6, 0.4])
    assert best["ause"] == pytest.approx(0.0) and best["aurg"] == pytest.approx(0.3)
    worst = metrics.sparsification(np.array([0.0, 1.0, 2.0, 3.0]), e, steps=4)
    # Remaining means 10/4, 9/3, 7/2, 4/1, over 2.5: [1, 1.2, 1.4, 1.6], mean 1.3.
    assert worst["ause"] == pytest.approx(0.6) and worst["aurg"] == pytest.approx(-0.3)


def test_tolerability():
    t = metrics.tolerability(np.array([1.0, 3.0]), np.array([2.0, 2.0]))
    assert t == {"mean_abs_change": 1.0, "relative_change": 0.5}


def test_table_shapes_and_values():
    out = np.zeros((1, 1, 4, 4))
    tgt = out.copy()
    tgt[0, 0, :2] = 1.0  # the top half is wrong by 1
    var = np.zeros_like(out)
    var[0, 0, :2] = 0.5  # and uncertain
    t = metrics.table([var] * 3, [out] * 3, [tgt] * 3, means=[out] * 3, grid=2)
    assert t["images"] == 3
    for kind in ("l1", "l2"):
        assert t[kind]["pixel"] == pytest.approx(1.0)
        assert t[kind]["block"] == pytest.approx(1.0)
        assert t[kind]["ause"] == pytest.approx(0.0, abs=1e-12)
        assert np.isnan(t[kind]["mean"])  # identical images: no spread to correlate
    assert t["tolerability"]["mean_abs_change"] == 0.0
