"""Blocks of similar low-level content, by the local center of mass (Aganj et al. 2018).

The local center of mass of a pixel is the Gaussian-weighted centroid of the
intensity around it; its offset from the pixel, c(x) - x = s² ∇(G*I)(x) / (G*I)(x),
points up the gradient of the Gaussian-smoothed image. Following that field,
pixels flow to attractors, and pixels with the same attractor form one block:
the basins of steepest ascent of the smoothed image. Here each pixel steps to
its highest 8-neighbour until none is higher; plateaus of equal maxima join.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import ArgumentError, TfueError

DEFAULT_SIGMA = 2.0


def lcm_blocks(image: np.ndarray, sigma: float = DEFAULT_SIGMA) -> np.ndarray:
    """Label each pixel of a 2-D ``image`` with its block, by the local center of mass
    at smoothing scale ``sigma`` (Aganj et al. 2018; see the module's text).

    Args:
        image: an [H, W] map (any real dtype; float64 inside; any units).
        sigma: the Gaussian smoothing scale in pixels (> 0).

    Returns:
        int64 [H, W] labels 0..K-1, every label used: one block per local maximum
        (plateau) of the smoothed image, its basin of steepest ascent.

    Raises:
        TfueError: ``image`` is not 2-D, or ``sigma`` is not > 0.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise TfueError(f"blocks need a 2-D map, got shape {img.shape}", "reduce channels first")
    if not sigma > 0:
        raise ArgumentError(f"block smoothing scale must be > 0, got {sigma}", "e.g. --block-sigma 2")
    h, w = img.shape
    # Intensity must be non-negative for a center of mass; the shift leaves the
    # gradient direction, and so the basins, unchanged.
    smooth = ndimage.gaussian_filter(img - img.min(), sigma, mode="nearest")
    # Quantise away float noise so plateaus are exactly flat.
    scale = float(smooth.max()) or 1.0
    smooth *= 2**40 / scale
    np.round(smooth, out=smooth)
    padded = np.pad(smooth, 1, mode="constant", constant_values=-np.inf)
    best_val = smooth.copy()
    step = np.zeros((h, w), np.int64)  # flat offset to the highest neighbour (0: stay)
    better = np.empty((h, w), bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            val = padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
            np.greater(val, best_val, out=better)
            np.copyto(best_val, val, where=better)
            np.copyto(step, dy * w + dx, where=better)
    idx = np.arange(h * w).reshape(h, w)
    pointer = (idx + step).ravel()
    # Pointer jumping: every pixel reaches its attractor in log2(path length) steps.
    while True:
        nxt = pointer[pointer]
        if np.array_equal(nxt, pointer):
            break
        pointer = nxt
    roots = pointer.reshape(h, w) == idx
    # Adjacent attractors have equal height (neither is higher): one plateau, one block.
    root_labels, _ = ndimage.label(roots, structure=np.ones((3, 3), bool))
    labels = root_labels.ravel()[pointer].reshape(h, w) - 1
    return labels


def grid_blocks(shape, size: int) -> np.ndarray:
    """Label the pixels of an (H, W) ``shape`` map by a fixed grid of ``size`` x ``size``
    pixel blocks (the last row and column of blocks may be smaller).

    Returns:
        int64 [H, W] labels, row-major over the blocks (0..K-1).

    Raises:
        TfueError: ``size`` is below 1.
    """
    if int(size) < 1:
        raise ArgumentError(f"grid block size must be >= 1, got {size}", "e.g. --block-grid 16")
    h, w = shape
    rows = np.arange(h)[:, None] // size
    cols = np.arange(w)[None, :] // size
    return rows * ((w + size - 1) // size) + cols


def block_means(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Every pixel of ``values`` replaced by the mean of its block.

    Args:
        values: an [H, W] map (any units); labels: int [H, W] block labels >= 0
            (``lcm_blocks``, ``grid_blocks``).

    Returns:
        float64 [H, W] in the units of ``values``.
    """
    flat = labels.ravel()
    sums = np.bincount(flat, weights=np.asarray(values, np.float64).ravel())
    counts = np.bincount(flat)
    return (sums / np.maximum(counts, 1))[flat].reshape(labels.shape)
