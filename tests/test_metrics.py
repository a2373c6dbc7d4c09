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
    # Per image: a constant uncertainty ranks nothing (0); a constant error has nothing
    # to track (NaN, left out of the mean).
    assert metrics.image_correlation([1, 1, 1], [1, 2, 3]) == 0.0
    assert np.isnan(metrics.image_correlation([1, 2, 3], [5, 5, 5]))


def _as_output(m):
    return np.asarray(m, float)[None, None]  # [1, 1, H, W]


def test_pixel_correlation_per_image_then_averaged():
    # Image A: r = 1. Image B: v = [0, 1, 2], e = [0, 2, 1]: r = 0.5. Mean 0.75.
    # 3 x 3 images (each row repeated: the correlations are those of the rows).
    va, ea = [[0, 1, 2]] * 3, [[0, 1, 2]] * 3
    vb, eb = [[0, 1, 2]] * 3, [[10, 12, 11]] * 3
    zeros = _as_output([[0, 0, 0]] * 3)
    t = metrics.table([_as_output(va), _as_output(vb)], [zeros, zeros],
                      [_as_output(ea), _as_output(eb)], grid=1, baseline=False)
    assert t["l1"]["pixel"] == pytest.approx(0.75)
    assert t["per_image"]["l1"]["pixel"] == pytest.approx([1.0, 0.5])
    # Pooled: all six pixels at once, a different number (B's errors are larger).
    pooled = metrics.pearson([0, 1, 2, 0, 1, 2], [0, 1, 2, 10, 12, 11])
    assert t["l1"]["pixel_pooled"] == pytest.approx(pooled)
    assert abs(pooled - 0.75) > 0.5
    # Blocks of 1 px are the pixels.
    assert t["l1"]["block"] == pytest.approx(0.75)
    assert t["l1"]["block_pooled"] == pytest.approx(pooled)
    assert t["block_grid"] == 1 and t["block_sigma"] is None


def test_a_constant_per_image_map_scores_zero_per_image_but_wins_pooled():
    rng = np.random.default_rng(0)
    outs, tgts, const, good = [], [], [], []
    for k in range(6):
        out = rng.random((1, 1, 24, 24))
        err = (k + 1) * rng.random((1, 1, 24, 24))  # images differ in error size
        outs.append(out)
        tgts.append(out + err)
        const.append(np.full_like(out, err.mean()))  # one number per image
        good.append(err / (k + 1) + rng.random(out.shape))  # tracks it within the image
    tc = metrics.table(const, outs, tgts, sigma=2.0, bootstrap=200)
    tg = metrics.table(good, outs, tgts, sigma=2.0, bootstrap=200)
    assert tc["l1"]["pixel"] == 0.0 and tc["l1"]["block"] == 0.0
    assert tc["intervals"]["l1"]["pixel"] == [0.0, 0.0]
    assert tc["l1"]["pixel_pooled"] > tg["l1"]["pixel_pooled"]  # pooled is fooled
    assert tg["l1"]["pixel"] > 0.2  # per image it is not
    assert tc["l1"]["ause"] > tg["l1"]["ause"]


def test_pooled_moments_match_concatenation():
    rng = np.random.default_rng(1)
    maps = [(rng.random((5, 7)), rng.random((5, 7)) * s) for s in (1, 3, 10)]
    moments = np.stack([metrics._moments(v, e) for v, e in maps])
    direct = metrics.pearson(np.concatenate([v.ravel() for v, _ in maps]),
                             np.concatenate([e.ravel() for _, e in maps]))
    assert metrics._pooled_pearson(moments) == pytest.approx(direct, rel=1e-12)


def test_mean_correlation_over_images():
    v = [np.full((1, 1, 2, 2), a) for a in (1.0, 2.0, 3.0)]
    e = [np.full((1, 1, 2, 2), a) for a in (10.0, 30.0, 20.0)]
    zeros = [np.zeros((1, 1, 2, 2))] * 3
    assert metrics.table(v, zeros, e, grid=1)["l1"]["mean"] == pytest.approx(0.5)
    assert np.isnan(metrics.table(v[:2], zeros[:2], e[:2], grid=1)["l1"]["mean"])


def test_block_correlation_with_a_grid():
    # 2x4 map, 2x2 grid blocks: left block means v=1, e=2; right block v=3, e=1.
    v = np.array([[0, 2, 3, 3], [1, 1, 3, 3]], float)
    e = np.array([[2, 2, 0, 2], [2, 2, 1, 1]], float)
    labels = grid_blocks(v.shape, 2)
    np.testing.assert_array_equal(labels, [[0, 0, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(block_means(v, labels), [[1, 1, 3, 3], [1, 1, 3, 3]])
    # As a 4 x 4 image (the two rows repeated): four blocks, means v 1, 3, 1, 3, e 2, 1, 2, 1.
    v4, e4 = np.vstack([v, v]), np.vstack([e, e])
    t = metrics.table([_as_output(v4)], [_as_output(v4)], [_as_output(v4 + e4)], grid=2)
    assert t["l1"]["block"] == pytest.approx(-1.0)
    # A 2 x 4 map is not an image: no blocks, no baseline.
    t = metrics.table([_as_output(v)], [_as_output(v)], [_as_output(v + e)], grid=2)
    assert np.isnan(t["l1"]["block"]) and "baseline" not in t


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


def _maxima_per_block(labels, smooth):
    """How many separate local maxima (8-connected groups of them: a plateau counts
    once) of ``smooth`` each block of ``labels`` holds."""
    peaks = smooth == ndimage.maximum_filter(smooth, size=3, mode="constant", cval=-1)
    return [ndimage.label(peaks & (labels == lab), structure=np.ones((3, 3)))[1]
            for lab in np.unique(labels)]


def test_lcm_blocks_are_steepest_ascent_basins():
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.random((64, 64)), 3)
    labels = lcm_blocks(img, sigma=1.5)
    smooth = ndimage.gaussian_filter(img - img.min(), 1.5, mode="nearest")
    # Every block holds exactly one local maximum of the smoothed image (or a plateau).
    counts = _maxima_per_block(labels, smooth)
    assert len(counts) > 3 and counts == [1] * len(counts)
    # The check sees a block with two maxima: two blocks merged into one.
    a = labels[np.nonzero(labels != labels[0, 0])][0]
    merged = np.where(labels == a, labels[0, 0], labels)
    assert 2 in _maxima_per_block(merged, smooth)


def test_ause_by_hand_as_poggi():
    # Four pixels, L1 errors 4, 3, 2, 1. Poggi et al. remove the q % most uncertain for
    # q = 0, 2, ..., 98 with np.percentile thresholds (linear): all 4 kept at q = 0,
    # 3 for q = 2..32 (16 steps), 2 for q = 34..66 (17), 1 for q = 68..98 (16), then
    # the end point 0 at q = 100. Trapezoid area, dx = 1/50:
    #   (c4 / 2 + 16 c3 + 17 c2 + 16 c1 + 0 / 2) / 50.
    e = np.array([4.0, 3.0, 2.0, 1.0])
    oracle = (2.5 / 2 + 16 * 2 + 17 * 1.5 + 16 * 1) / 50  # keeps {3,2,1}, {2,1}, {1}
    worst = (2.5 / 2 + 16 * 3 + 17 * 3.5 + 16 * 4) / 50  # keeps {4,3,2}, {4,3}, {4}
    assert oracle == pytest.approx(1.495) and worst == pytest.approx(3.455)
    best = metrics.sparsification(np.array([3.0, 2.0, 1.0, 0.0]), e, "l1")
    assert best["ause"] == pytest.approx(0.0) and best["aurg"] == pytest.approx(2.5 - oracle)
    bad = metrics.sparsification(np.array([0.0, 1.0, 2.0, 3.0]), e, "l1")
    assert bad["ause"] == pytest.approx(worst - oracle)  # 1.96
    assert bad["aurg"] == pytest.approx(2.5 - worst)  # -0.955
    assert bad["curve"][-1] == 0.0 and len(bad["curve"]) == 51
    # L2 follows the RMSE of the pixels kept (errors given squared).
    rmse = [np.sqrt(30 / 4), np.sqrt(14 / 3), np.sqrt(5 / 2), 1.0]
    oracle2 = (rmse[0] / 2 + 16 * rmse[1] + 17 * rmse[2] + 16 * rmse[3]) / 50
    l2 = metrics.sparsification(np.array([3.0, 2.0, 1.0, 0.0]), e ** 2, "l2")
    assert l2["ause"] == pytest.approx(0.0, abs=1e-12)
    assert l2["aurg"] == pytest.approx(np.sqrt(7.5) - oracle2)


def test_ause_ties_leave_together_whatever_the_raster_order():
    rng = np.random.default_rng(0)
    e = rng.random(100)
    flat = metrics.sparsification(np.ones(100), e, "l1")
    # Every step keeps every pixel: area (m / 2 + 49 m) / 50 = 0.99 m.
    assert _area(flat["curve"]) == pytest.approx(0.99 * e.mean())
    for _ in range(3):  # the same whatever order the errors come in
        assert metrics.sparsification(np.ones(100), rng.permutation(e), "l1")["ause"] == \
            pytest.approx(flat["ause"])
    # Two tie groups: the uncertain half leaves as one block, not pixel by pixel.
    u = np.repeat([1.0, 0.0], 50)
    a = metrics.sparsification(u, e, "l1")["ause"]
    b = metrics.sparsification(u, np.concatenate([e[:50][::-1], e[50:][::-1]]), "l1")["ause"]
    assert a == pytest.approx(b)


def _area(curve):
    return float(np.sum((curve[1:] + curve[:-1]) / 2) / (len(curve) - 1))


def test_ause_matches_a_literal_mask_loop():
    rng = np.random.default_rng(2)
    e = rng.random(257) ** 2
    u = e + rng.random(257)
    u[:40] = 0.5  # a tie group

    def curve(key):  # Poggi's loop, written out with masks
        vals = [np.sqrt(e[key >= np.percentile(key, 2.0 * t)].mean()) for t in range(50)]
        return np.array(vals + [0.0])

    got = metrics.sparsification(u, e, "l2")
    np.testing.assert_allclose(got["curve"], curve(-u), rtol=1e-12)
    np.testing.assert_allclose(got["oracle"], curve(-e), rtol=1e-12)
    assert got["ause"] == pytest.approx(_area(curve(-u)) - _area(curve(-e)), rel=1e-12)


def _noisy_images(n, seed):
    rng = np.random.default_rng(seed)
    outs, tgts, vs = [], [], []
    for _ in range(n):
        out = rng.random((1, 1, 16, 16))
        err = rng.random(out.shape)
        outs.append(out)
        tgts.append(out + err)
        vs.append(err + rng.random(out.shape) * rng.uniform(0.3, 3))
    return vs, outs, tgts


def test_bootstrap_intervals_hold_the_estimate_and_shrink_with_images():
    small = metrics.table(*_noisy_images(8, 0), grid=4, bootstrap=500, seed=1)
    large = metrics.table(*_noisy_images(64, 0), grid=4, bootstrap=500, seed=1)
    for t in (small, large):
        assert t["bootstrap"] == {"resamples": 500, "seed": 1, "level": 0.95}
        for kind in ("l1", "l2"):
            for col in ("pixel", "block", "mean", "pixel_pooled", "ause", "aurg"):
                lo, hi = t["intervals"][kind][col]
                assert lo <= t[kind][col] <= hi, (kind, col)
    for col in ("pixel", "ause", "pixel_pooled"):
        w_small = np.diff(small["intervals"]["l1"][col])[0]
        w_large = np.diff(large["intervals"]["l1"][col])[0]
        assert w_large < 0.6 * w_small, col  # about 1/sqrt(8) as wide
    again = metrics.table(*_noisy_images(8, 0), grid=4, bootstrap=500, seed=1)
    assert again["intervals"] == small["intervals"]  # seeded
    other = metrics.table(*_noisy_images(8, 0), grid=4, bootstrap=500, seed=2)
    assert other["intervals"] != small["intervals"]
    assert "intervals" not in metrics.table(*_noisy_images(4, 0), grid=4)
    with pytest.raises(metrics.TfueError, match="bootstrap"):
        metrics.table(*_noisy_images(2, 0), bootstrap=-1)
    with pytest.raises(metrics.TfueError, match="at least 100"):
        metrics.table(*_noisy_images(2, 0), bootstrap=1)


def test_separated():
    assert metrics.separated([0.1, 0.2], [0.3, 0.4]) is True
    assert metrics.separated([0.1, 0.35], [0.3, 0.4]) is False
    assert metrics.separated(None, [0.3, 0.4]) is None


def test_baseline_row_is_the_gradient_energy_of_the_output():
    # A ramp with a step: the gradient energy peaks at the step; errors there too.
    out = np.tile(np.linspace(0, 1, 20), (12, 1))
    out[:, 10:] += 1.0
    err = np.zeros_like(out)
    err[:, 9:11] = 1.0
    err[0, 0] = 0.1
    g = metrics.gradient_energy(out)
    assert g.shape == out.shape and g[:, 9:11].min() > 10 * g[:, :5].max()
    ramp = ndimage.gaussian_gradient_magnitude(np.tile(np.linspace(0, 1, 20), (12, 1)), 1.0,
                                               mode="nearest")
    np.testing.assert_allclose(metrics.gradient_energy(out - np.where(out > 1.0, 1, 0)
                                                       * (np.arange(20) >= 10)), ramp ** 2)
    var = np.random.default_rng(0).random((1, 1, 12, 20))
    t = metrics.table([var], [_as_output(out)], [_as_output(out + err)], grid=2)
    by_hand = metrics.table([_as_output(g)], [_as_output(out)], [_as_output(out + err)],
                            grid=2, baseline=False)
    assert "gradient energy" in t["baseline"]["map"]
    for col in ("pixel", "block", "ause"):
        assert t["baseline"]["l1"][col] == pytest.approx(by_hand["l1"][col])
    assert t["baseline"]["l1"]["pixel"] > 0.8 > t["l1"]["pixel"]
    # Outputs that are not images (a vector of class scores) get no baseline row.
    vec = metrics.table([np.ones((1, 10))], [np.zeros((1, 10))], [np.ones((1, 10))])
    assert "baseline" not in vec


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
    assert t["images"] == 3 and t["skipped"] == {"l1": 0, "l2": 0}
    for kind in ("l1", "l2"):
        assert t[kind]["pixel"] == pytest.approx(1.0)
        assert t[kind]["block"] == pytest.approx(1.0)
        assert t[kind]["ause"] == pytest.approx(0.0, abs=1e-12)
        assert np.isnan(t[kind]["mean"])  # identical images: no spread to correlate
    assert t["tolerability"]["mean_abs_change"] == 0.0


def _point(method, depth, value, iv):
    return {"method": method, "at": f"t{depth}", "index": int(depth * 10), "depth": depth,
            "level": 0.1, "table": {"l1": {"pixel": value},
                                    "intervals": {"l1": {"pixel": iv}}}}


def test_sweep_best_lists_the_points_it_is_not_separated_from():
    from tfue_onnx.sweep import _best, format_best

    points = [_point("noise", 0.2, 0.30, [0.25, 0.35]), _point("noise", 0.5, 0.40, [0.33, 0.47]),
              _point("dropout", 0.5, 0.36, [0.30, 0.42]), _point("dropout", 0.8, 0.10,
                                                                 [0.05, 0.15])]
    best = _best(points[1], points, "pixel_l1", "absolute")
    assert best["value"] == 0.40 and best["interval"] == [0.33, 0.47]
    assert [(c["method"], c["depth"]) for c in best["not_separated"]] == [
        ("dropout", 0.5), ("noise", 0.2)]  # overlapping ones, best first
    text = format_best({"best": best, "metric": "pixel_l1"})
    assert "not separated from 2 other point(s)" in text and "0.3600" in text
    alone = _best(points[1], [points[1], points[3]], "pixel_l1", "absolute")
    assert alone["not_separated"] == []
    assert "separated from every other point" in format_best(
        {"best": alone, "metric": "pixel_l1", "points": [points[1], points[3]]})
    only = _best(points[1], [points[1]], "pixel_l1", "absolute")
    assert "separated" not in format_best({"best": only, "metric": "pixel_l1",
                                          "points": [points[1]]})
    # Lower is better for AUSE: the same rule, the other direction.
    ause = [{**p, "table": {"l1": {"ause": p["table"]["l1"]["pixel"]},
                            "intervals": {"l1": {"ause": p["table"]["intervals"]["l1"]["pixel"]}}}}
            for p in points]
    low = _best(ause[3], ause, "ause_l1", "absolute")
    assert low["not_separated"] == []


def test_l1_and_l2_rank_pixels_of_several_channels_differently():
    # Pixel A errs by (1, 1, 1), pixel B by (0, 0, 2.5): L1 (channel mean of |d|) ranks A
    # above B (1 > 0.83), L2 (channel mean of d^2) ranks B above A (2.08 > 1).
    rng = np.random.default_rng(3)
    out = np.zeros((1, 3, 6, 6))
    d = rng.random((1, 3, 6, 6)) * np.where(rng.random((1, 3, 6, 6)) < 0.3, 3.0, 0.3)
    var = np.abs(d).mean(1, keepdims=True).repeat(3, 1)  # the L1 error itself
    t = metrics.table([var], [out], [out + d], grid=2, baseline=False)
    e2 = (d ** 2).mean(1)[0]
    v = var.mean(1)[0]
    assert t["l1"]["pixel_spearman"] == pytest.approx(1.0)
    assert t["l2"]["pixel_spearman"] == pytest.approx(metrics.spearman(v, e2))
    assert t["l2"]["pixel_spearman"] < 1 - 1e-6  # with L1's ranks it would be 1
    assert t["l1"]["ause"] == pytest.approx(0.0, abs=1e-12)
    assert t["l2"]["ause"] == pytest.approx(metrics.sparsification(v, e2, "l2")["ause"])
    assert t["l2"]["ause"] > 0  # the L2 oracle is its own, not L1's
    from scipy import stats as sps
    _, ranks = metrics._order_and_ranks(np.array([3.0, 1.0, 3.0, 2.0, 1.0]))
    np.testing.assert_array_equal(ranks, sps.rankdata([3.0, 1.0, 3.0, 2.0, 1.0]))
