"""segment.py: blocks by the local centre of mass (basins of the smoothed map), grid blocks
and block means, checked against numpy/scipy computed here."""

import numpy as np
import pytest
from scipy import ndimage

from tfue_onnx import segment
from tfue_onnx.errors import TfueError

CENTRES = [(8, 8), (8, 40), (30, 24)]


def _blobs(h=40, w=48, seed=0):
    """Three well-separated Gaussian bumps of different heights plus faint noise."""
    yy, xx = np.mgrid[:h, :w]
    img = sum(a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 120.0)
              for a, (cy, cx) in zip((1.0, 0.8, 0.6), CENTRES))
    return img + np.random.default_rng(seed).normal(0, 1e-4, (h, w))


def _check_basins(image, labels, sigma):
    """Every block is one basin of steepest ascent of the smoothed map: it holds exactly
    one connected set of local maxima, and each pixel's highest 8-neighbour (when higher
    than the pixel) lies in the pixel's own block."""
    smooth = ndimage.gaussian_filter(image - image.min(), sigma, mode="nearest")
    h, w = smooth.shape
    padded = np.pad(smooth, 1, constant_values=-np.inf)
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    neigh = np.stack([padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in shifts])
    peaks = smooth >= neigh.max(0)
    for k in np.unique(labels):
        _, n = ndimage.label(peaks & (labels == k), structure=np.ones((3, 3)))
        assert n == 1, f"block {k} holds {n} separate local maxima"
    best = neigh.argmax(0)
    for y in range(h):
        for x in range(w):
            if neigh[best[y, x], y, x] > smooth[y, x]:
                dy, dx = shifts[best[y, x]]
                assert labels[y + dy, x + dx] == labels[y, x], (y, x)


def test_lcm_blocks_are_the_basins_of_the_smoothed_map():
    img = _blobs()
    labels = segment.lcm_blocks(img, sigma=2.0)
    assert labels.shape == img.shape and labels.dtype.kind == "i"
    # Every pixel has exactly one block; the labels are 0..K-1 with none empty.
    assert labels.min() == 0 and set(np.unique(labels)) == set(range(labels.max() + 1))
    assert labels.max() + 1 == 3
    assert len({labels[c] for c in CENTRES}) == 3  # one block per bump
    _check_basins(img, labels, 2.0)


@pytest.mark.parametrize("broken", ["merged", "grid", "split"])
def test_the_basin_check_fails_on_a_broken_segmentation(broken):
    img = _blobs()
    good = segment.lcm_blocks(img, sigma=2.0)
    bad = {"merged": np.zeros_like(good),  # two maxima in one block
           "grid": segment.grid_blocks(img.shape, 8),  # blocks without a maximum
           "split": np.where(np.arange(img.shape[1]) < 8, good, good + 3)}[broken]
    with pytest.raises(AssertionError):
        _check_basins(img, bad, 2.0)


def test_lcm_blocks_follow_the_smoothing_scale_and_ignore_an_offset():
    img = _blobs()
    fine = segment.lcm_blocks(img + 0.05 * np.random.default_rng(1).random(img.shape), 0.5)
    assert fine.max() + 1 > 3  # little smoothing: the noise makes many small basins
    np.testing.assert_array_equal(segment.lcm_blocks(img + 100.0, 2.0),
                                  segment.lcm_blocks(img, 2.0))
    flat = segment.lcm_blocks(np.ones((6, 5)))
    np.testing.assert_array_equal(flat, np.zeros((6, 5)))  # one plateau: one block


def test_lcm_blocks_refuse_bad_arguments():
    with pytest.raises(TfueError, match="2-D map, got shape"):
        segment.lcm_blocks(np.zeros((2, 4, 4)))
    for sigma in (0, -1.0, float("nan")):
        with pytest.raises(TfueError, match="smoothing scale must be > 0"):
            segment.lcm_blocks(np.zeros((4, 4)), sigma)


@pytest.mark.parametrize("shape, size", [((10, 7), 4), ((8, 8), 8), ((5, 9), 1), ((3, 3), 5)])
def test_grid_blocks_sizes(shape, size):
    labels = segment.grid_blocks(shape, size)
    rows, cols = -(-shape[0] // size), -(-shape[1] // size)
    assert labels.shape == shape
    assert set(np.unique(labels)) == set(range(rows * cols))
    for r in range(rows):
        for c in range(cols):
            block = labels[r * size:(r + 1) * size, c * size:(c + 1) * size]
            assert (block == r * cols + c).all()
            assert block.size == min(size, shape[0] - r * size) * min(size, shape[1] - c * size)
    with pytest.raises(TfueError, match="grid block size must be >= 1"):
        segment.grid_blocks(shape, 0)


def test_block_means_against_a_loop():
    rng = np.random.default_rng(0)
    values = rng.random((10, 7))
    labels = segment.grid_blocks(values.shape, 4)
    got = segment.block_means(values, labels)
    for k in np.unique(labels):
        np.testing.assert_allclose(got[labels == k], values[labels == k].mean())
