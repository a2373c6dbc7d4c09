"""How well uncertainty tracks the real error: correlations, sparsification, tolerability.

numpy and scipy only. Maps are per image (H x W, channels averaged) unless said.

- pixel-wise: Pearson (and Spearman) correlation of variance with error over all
  pixels of all images;
- mean: over images, correlation of each image's mean variance with its mean error;
- block-wise: variance and error replaced by their means over blocks of the
  unperturbed output (local center of mass, ``segment.py``), then pixel-wise;
- sparsification (Poggi et al. 2020): remove pixels from most to least uncertain
  and follow the mean error of the rest; AUSE is the area between that curve and
  the oracle's (largest errors first), AURG the area between random removal and it;
- tolerability: how far the sample mean moves from the unperturbed output.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from .errors import TfueError
from .segment import DEFAULT_SIGMA, grid_blocks, lcm_blocks

ERRORS = ("l1", "l2")


def error_map(output, target, kind: str = "l1") -> np.ndarray:
    """Per-element L1 (absolute) or L2 (squared) error of ``output`` against ``target``."""
    output, target = np.asarray(output, np.float64), np.asarray(target, np.float64)
    if output.shape != target.shape:
        raise TfueError(f"target has shape {target.shape}, the model output {output.shape}",
                        "give targets of the output's shape")
    diff = output - target
    if kind == "l1":
        return np.abs(diff)
    if kind == "l2":
        return diff * diff
    raise TfueError(f"unknown error kind {kind!r}", "use l1 or l2")


def image_maps(arr) -> list:
    """Split an output-shaped array into per-image H x W maps (channels averaged).

    [B, C, H, W] -> B maps (NHWC read when the last axis is small and axis 1 is
    not); [B, H, W] -> B maps; [H, W] -> 1 map; lower ranks -> one 1 x K map.
    """
    a = np.asarray(arr, np.float64)
    if a.ndim == 4:
        if a.shape[-1] <= 4 < a.shape[1]:
            a = a.transpose(0, 3, 1, 2)
        return list(a.mean(axis=1))
    if a.ndim == 3:
        return list(a)
    if a.ndim == 2 and a.shape[0] > 1 and a.shape[1] > 1:
        return [a]
    return [a.reshape(1, -1)]


def pearson(x, y, weights=None) -> float:
    """Pearson correlation (optionally weighted); NaN when either side is constant."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    w = np.ones_like(x) if weights is None else np.asarray(weights, np.float64).ravel()
    if x.size < 2:
        return float("nan")
    total = w.sum()
    dx = x - (w @ x) / total
    dy = y - (w @ y) / total
    sxx, syy = w @ (dx * dx), w @ (dy * dy)
    if sxx <= 0 or syy <= 0:
        return float("nan")
    return float(np.clip((w @ (dx * dy)) / np.sqrt(sxx * syy), -1.0, 1.0))


def spearman(x, y) -> float:
    """Spearman rank correlation; NaN when either side is constant."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return pearson(stats.rankdata(x), stats.rankdata(y))


def pixel_correlation(variances, errors) -> tuple:
    """(Pearson, Spearman) of variance with error over all pixels of all images."""
    v = np.concatenate([np.ravel(m) for m in variances])
    e = np.concatenate([np.ravel(m) for m in errors])
    return pearson(v, e), spearman(v, e)


def mean_correlation(variances, errors) -> float:
    """Correlation, over images, of each image's mean variance with its mean error."""
    if len(variances) < 3:
        return float("nan")  # two points always correlate perfectly: say nothing
    return pearson([np.mean(m) for m in variances], [np.mean(m) for m in errors])


def block_correlation(variances, errors, outputs, sigma: float = DEFAULT_SIGMA,
                      grid: int | None = None) -> float:
    """Pixel-wise correlation after replacing variance and error by block means.

    Blocks segment each unperturbed ``outputs`` map by the local center of mass at
    scale ``sigma``, or a fixed ``grid`` of square blocks when given.
    """
    # Correlating block-mean maps pixel by pixel is correlating the block means
    # weighted by block size, which needs no full-size maps.
    bv, be, sizes = [], [], []
    for v, e, o in zip(variances, errors, outputs):
        labels = (grid_blocks(o.shape, grid) if grid else lcm_blocks(o, sigma)).ravel()
        count = np.bincount(labels)
        keep = count > 0
        bv.append(np.bincount(labels, np.ravel(v))[keep] / count[keep])
        be.append(np.bincount(labels, np.ravel(e))[keep] / count[keep])
        sizes.append(count[keep])
    return pearson(np.concatenate(bv), np.concatenate(be), np.concatenate(sizes))


def sparsification_curve(uncertainty, error, steps: int = 100, order_by=None) -> np.ndarray:
    """Mean error of the pixels left after removing the most uncertain fraction k/steps
    (k = 0..steps-1), normalised by the mean error of all pixels."""
    u = np.asarray(uncertainty, np.float64).ravel()
    e = np.asarray(error, np.float64).ravel()
    key = u if order_by is None else np.asarray(order_by, np.float64).ravel()
    order = np.argsort(-key, kind="stable")  # most uncertain first
    remaining = np.cumsum(e[order][::-1])[::-1]  # error sum of pixels order[i:]
    n = e.size
    cut = (np.arange(steps) * n) // steps
    curve = remaining[cut] / (n - cut)
    total = e.mean()
    return curve / total if total > 0 else np.zeros(steps)


def sparsification(uncertainty, error, steps: int = 100) -> dict:
    """AUSE and AURG of one map (normalised curves, fraction removed in [0, 1))."""
    spars = sparsification_curve(uncertainty, error, steps)
    oracle = sparsification_curve(error, error, steps)
    random = np.ones(steps) if np.mean(error) > 0 else np.zeros(steps)
    area = {k: float(np.mean(c)) for k, c in  # Riemann sums over fractions k/steps
            (("spars", spars), ("oracle", oracle), ("random", random))}
    return {"ause": area["spars"] - area["oracle"], "aurg": area["random"] - area["spars"],
            "curve": spars, "oracle": oracle}


def tolerability(mean, output) -> dict:
    """How far the sample mean moves from the unperturbed output: mean absolute change,
    and that relative to the output's mean magnitude. Needs no target."""
    mean, output = np.asarray(mean, np.float64), np.asarray(output, np.float64)
    change = float(np.mean(np.abs(mean - output)))
    scale = float(np.mean(np.abs(output)))
    return {"mean_abs_change": change,
            "relative_change": change / scale if scale > 0 else (0.0 if change == 0
                                                                  else float("inf"))}


def table(variances, outputs, targets, means=None, sigma: float = DEFAULT_SIGMA,
          grid: int | None = None) -> dict:
    """The metrics table for lists of per-image maps (output-shaped arrays per image).

    Rows ``l1`` and ``l2``: mean, block-wise, pixel-wise (Pearson and Spearman)
    correlation of variance with error, AUSE and AURG (averaged over images).
    """
    v_maps, o_maps = [], []
    for v, o in zip(variances, outputs):
        v_maps += image_maps(v)
        o_maps += image_maps(o)
    result = {"images": len(v_maps), "block": f"grid {grid}" if grid else f"lcm sigma {sigma}"}
    for kind in ERRORS:
        e_maps = []
        for o, t in zip(outputs, targets):
            e_maps += image_maps(error_map(o, t, kind))
        pix, rank = pixel_correlation(v_maps, e_maps)
        spars = [sparsification(v, e) for v, e in zip(v_maps, e_maps)]
        result[kind] = {
            "mean": mean_correlation(v_maps, e_maps),
            "block": block_correlation(v_maps, e_maps, o_maps, sigma, grid),
            "pixel": pix,
            "pixel_spearman": rank,
            "ause": float(np.mean([s["ause"] for s in spars])),
            "aurg": float(np.mean([s["aurg"] for s in spars])),
        }
    if means is not None:
        tol = [tolerability(m, o) for m, o in zip(means, outputs)]
        result["tolerability"] = {key: float(np.mean([t[key] for t in tol]))
                                  for key in ("mean_abs_change", "relative_change")}
    return result
