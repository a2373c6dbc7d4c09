"""How well uncertainty tracks the real error: correlations, sparsification, intervals.

numpy and scipy only. A *map* is one output image reduced to H x W (channels
averaged, ``image_maps``); every metric is computed per map and then summarised.

- pixel-wise (the paper's definition, the primary number): for each image, the
  Pearson correlation of the variance map with the error map, then the mean over
  images. ``pixel_pooled`` correlates all pixels of all images at once: it is
  reported beside, named as such, because a map holding one constant per image
  (no spatial information) can win it on images whose errors differ in size;
- block-wise: variance and error replaced by their means over blocks of the
  unperturbed output (local center of mass, ``segment.py``, at ``sigma``), then
  as pixel-wise: per image then averaged (``block``), or pooled (``block_pooled``);
- mean: over images, the correlation of each image's mean variance with its mean
  error (needs 3 images or more);
- AUSE / AURG as Poggi et al., "On the uncertainty of self-supervised monocular
  depth estimation", CVPR 2020 (their ``compute_aucs``): per image, remove the
  q % most uncertain pixels for q = 0, 2, ..., 98 (percentile thresholds, so tied
  pixels leave together and raster order plays no part), follow the mean absolute
  error (L1) or the RMSE (L2) of the rest, end the curve with 0 at q = 100, take
  the trapezoid area; AUSE = area minus the oracle's (largest errors removed
  first), AURG = the error of all pixels minus the area. In output units; per
  image then averaged;
- bootstrap: 95 % percentile intervals of every summary over images resampled
  with replacement (B resamples, seeded);
- baseline: the same metrics for a sampling-free map made from the output alone
  (``gradient_energy``), so a user sees whether their uncertainty beats an edge map;
- tolerability: how far the sample mean moves from the unperturbed output.

Conventions per image: a map that is constant over the image ranks nothing, so
its correlation is 0; an image whose error is constant has nothing to track and
is left out of the per-image means (counted in ``skipped``).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage, stats

from .errors import ArgumentError, TfueError
from .layout import array_layout
from .segment import DEFAULT_SIGMA, grid_blocks, lcm_blocks

ERRORS = ("l1", "l2")
# Summary columns of a metrics table, primary ones first.
COLUMNS = ("pixel", "block", "mean", "pixel_pooled", "block_pooled", "pixel_spearman",
           "ause", "aurg")
LOWER_IS_BETTER = ("ause",)
PER_IMAGE = ("pixel", "block", "pixel_spearman", "ause", "aurg")  # averaged over images
POGGI_INTERVALS = 50  # removal steps of 2 %, as Poggi et al.'s compute_aucs
BOOTSTRAP = 1000  # default resamples
MAX_BLOCK_SIGMA = 1000.0  # px; far beyond any image a metric is computed on
MIN_BOOTSTRAP = 100  # fewer cannot place the 2.5 % and 97.5 % percentiles
BASELINE_SIGMA = 1.0  # pixels, of the gradient in the baseline map
BASELINE = (f"gradient energy of the output: the squared Gaussian gradient magnitude "
            f"(sigma {BASELINE_SIGMA:g} px) of the channel-mean unperturbed output "
            "(sampling-free)")


def higher_is_better(column: str) -> bool:
    """Whether a larger value of ``column`` (e.g. 'pixel', 'ause'; a metric name such as
    'ause_l1' works too) is better: correlations and AURG rise with quality, AUSE (an
    area between error curves, in error units) falls."""
    if column.endswith(tuple("_" + kind for kind in ERRORS)):
        column = column.rsplit("_", 1)[0]
    return column not in LOWER_IS_BETTER


def metric_value(table: dict, metric: str) -> float:
    """``metric`` (a column and an error kind, e.g. 'pixel_l1', 'ause_l2') read from a
    metrics table (``summarize``/``table``): a float, NaN where it could not be computed.

    Raises:
        KeyError: the table has no such column or error kind.
    """
    col, kind = metric.rsplit("_", 1)
    return table[kind][col]


def metric_interval(table: dict, metric: str):
    """The 95 % bootstrap interval ``[low, high]`` of ``metric`` (e.g. 'pixel_l1') in a
    metrics table, or None when the table was made without bootstrap."""
    col, kind = metric.rsplit("_", 1)
    return interval(table, col, kind)


def error_map(output, target, kind: str = "l1") -> np.ndarray:
    """Per-element L1 (absolute) or L2 (squared) error of ``output`` against ``target``.

    Args:
        output, target: arrays of one shape (float64 is used inside).
        kind: "l1" or "l2".

    Returns:
        float64 array of that shape, in output units (L1) or squared units (L2).

    Raises:
        TfueError: shapes differ, or ``kind`` is unknown.
    """
    output, target = np.asarray(output, np.float64), np.asarray(target, np.float64)
    if output.shape != target.shape:
        raise TfueError(f"target has shape {target.shape}, the model output {output.shape}",
                        "give targets of the output's shape")
    diff = output - target
    if kind == "l1":
        return np.abs(diff)
    if kind == "l2":
        return diff * diff
    raise ArgumentError(f"unknown error kind {kind!r}", "use l1 or l2")


def image_maps(arr, hw_axes=None) -> list:
    """Split an output-shaped array into per-image H x W maps (channels averaged).

    Args:
        arr: the array.
        hw_axes: the (height, width) axes when known (a run records them as
            ``spatial_axes``): the axis before them that is not one of them (axis 0
            unless H or W is axis 0) is the batch, every other axis is averaged as a
            channel. Without them the layout is guessed: [B, C, H, W] -> B maps (NHWC
            read when the last axis is small and axis 1 is not); [B, H, W] -> B maps;
            [H, W] -> 1 map; lower ranks -> one 1 x K map. False: the array has no
            image axes (one 1 x K vector per item of axis 0).

    Returns:
        list of float64 arrays (H x W, or 1 x K for non-image outputs).
    """
    a = np.asarray(arr, np.float64)
    if hw_axes is False:  # known to have no image axes: one vector per batch item
        return [row.reshape(1, -1) for row in a.reshape(a.shape[0] if a.ndim > 1 else 1, -1)]
    if hw_axes is not None:
        h, w = (int(k) % a.ndim for k in hw_axes)
        rest = [k for k in range(a.ndim) if k not in (h, w)]
        a = a.transpose(rest + [h, w])
        if not rest:
            return [a]
        a = a.reshape((a.shape[0], -1) + a.shape[-2:])  # [B, C, H, W]
        return list(a.mean(axis=1))
    if a.ndim == 4:
        if array_layout(a.shape) == "NHWC":
            a = a.transpose(0, 3, 1, 2)
        return list(a.mean(axis=1))
    if a.ndim == 3:
        return list(a)
    if a.ndim == 2 and a.shape[0] > 1 and a.shape[1] > 1:
        return [a]
    return [a.reshape(1, -1)]


def is_image(m) -> bool:
    """Whether a map is an image (2-D, both sides >= 3 px): blocks and the baseline
    need one."""
    return np.ndim(m) == 2 and min(np.shape(m)) >= 3


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


def image_correlation(uncertainty, error, weights=None, rank: bool = False,
                      scale: float = 0.0) -> float:
    """Correlation of one image's uncertainty with its error, by this module's rules.

    Returns 0.0 when the uncertainty is constant (it ranks nothing), NaN when the
    error is constant (nothing to track; ``scale``: the output's magnitude, against
    which float rounding is judged), else the (weighted) Pearson correlation, or
    Spearman's with ``rank``.
    """
    u, e = np.ravel(uncertainty), np.ravel(error)
    flat_e, flat_u = e.size < 2 or _flat(e, scale), _flat(u)
    if rank:
        return _ruled(flat_e, flat_u, stats.rankdata(u), stats.rankdata(e))
    return _ruled(flat_e, flat_u, u, e, weights)


def _ruled(flat_error: bool, flat_uncertainty: bool, x, y, weights=None) -> float:
    """This module's per-image rule: NaN when the error is constant (nothing to track),
    0 when the uncertainty is (it ranks nothing), else the (weighted) Pearson
    correlation of ``x`` and ``y`` (the maps, their ranks or their block means)."""
    if flat_error:
        return float("nan")
    if flat_uncertainty:
        return 0.0
    return pearson(x, y, weights)


FLAT = 1e-6  # relative spread below which a map counts as constant (float32 rounding)


def _flat(a, scale: float = 0.0, rel: float = FLAT) -> bool:
    """Whether ``a`` is constant up to float rounding: its spread is at most FLAT times
    its largest magnitude (or ``scale``, e.g. the output's, when larger). Block means
    of a constant map, or an error of output + 0.1 in float32, differ in the last bits."""
    a = np.asarray(a)
    if a.size == 0:
        return True
    spread = float(np.ptp(a))
    return spread <= rel * max(float(np.max(np.abs(a))), scale)


def _moments(x, y, w=None) -> np.ndarray:
    """[weight, mean x, mean y, Sxx, Syy, Sxy] (centered sums) of one image, for pooling."""
    x, y = np.ravel(x).astype(np.float64), np.ravel(y).astype(np.float64)
    w = np.ones_like(x) if w is None else np.ravel(w).astype(np.float64)
    total = w.sum()
    mx, my = (w @ x) / total, (w @ y) / total
    dx, dy = x - mx, y - my
    return np.array([total, mx, my, w @ (dx * dx), w @ (dy * dy), w @ (dx * dy)])


def _pooled_pearson(m: np.ndarray) -> np.ndarray:
    """Pearson over the union of images from per-image moments ``m`` [..., images, 6]
    (Chan et al.'s pairwise combination); NaN where a side is constant."""
    w, mx, my = m[..., 0], m[..., 1], m[..., 2]
    total = w.sum(-1)
    gx, gy = (w * mx).sum(-1) / total, (w * my).sum(-1) / total
    dx, dy = mx - gx[..., None], my - gy[..., None]
    sxx = m[..., 3].sum(-1) + (w * dx * dx).sum(-1)
    syy = m[..., 4].sum(-1) + (w * dy * dy).sum(-1)
    sxy = m[..., 5].sum(-1) + (w * dx * dy).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sxy / np.sqrt(sxx * syy)
    r = np.where((sxx > 0) & (syy > 0), r, np.nan)
    return np.clip(r, -1.0, 1.0)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``x`` with the same row of ``y``."""
    dx = x - x.mean(-1, keepdims=True)
    dy = y - y.mean(-1, keepdims=True)
    sxx, syy = (dx * dx).sum(-1), (dy * dy).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (dx * dy).sum(-1) / np.sqrt(sxx * syy)
    return np.clip(np.where((sxx > 0) & (syy > 0), r, np.nan), -1.0, 1.0)


def _sparse_curve(key, error, reduce, intervals: int, order=None) -> np.ndarray:
    """Poggi et al.'s curve: for q = 0, 100/intervals, ..., keep the pixels whose ``key``
    is >= the q-th percentile of ``key`` (ties stay together) and reduce their error;
    the end point 0 (everything removed) is appended. ``order``: argsort of ``key``
    when known (shared between error kinds)."""
    order = np.argsort(key) if order is None else order
    ks, es = key[order], error[order]
    tail = np.cumsum(es[::-1])[::-1]  # error sum of es[i:]
    thresholds = np.percentile(ks, [100.0 / intervals * t for t in range(intervals)])
    first = np.searchsorted(ks, thresholds, side="left")
    kept = ks.size - first
    return np.append(reduce(tail[first] / kept), 0.0)


def _trapezoid(curve: np.ndarray) -> float:
    """Trapezoid area of a curve sampled at x = 0, 1/K, ..., 1."""
    return float((curve.sum() - (curve[0] + curve[-1]) / 2) / (curve.size - 1))


def sparsification(uncertainty, error, kind: str = "l1",
                   intervals: int = POGGI_INTERVALS, _orders=None) -> dict:
    """AUSE and AURG of one image, as Poggi et al. (CVPR 2020, ``compute_aucs``).

    Args:
        uncertainty: per-pixel uncertainty, any shape (flattened).
        error: per-pixel error of the same size: absolute error for ``kind`` "l1",
            squared error for "l2".
        kind: "l1" (the curve follows the mean absolute error of the pixels kept) or
            "l2" (the curve follows their RMSE, the square root of the mean squared error).
        intervals: removal steps; the curve is sampled at fractions 0, 1/K, ...,
            (K-1)/K removed, plus 0 at 1 (everything removed).

    Returns:
        {"ause", "aurg": floats in error units (output units for both kinds),
        "curve", "oracle": arrays of intervals + 1 values, "fractions": x}.
        AUSE >= 0 up to ties; lower is better. AURG: higher is better.
    """
    u = np.asarray(uncertainty, np.float64).ravel()
    e = np.asarray(error, np.float64).ravel()
    by_u, by_e = _orders or (None, None)
    reduce = np.sqrt if kind == "l2" else (lambda a: a)
    curve = _sparse_curve(-u, e, reduce, intervals, by_u)
    oracle = _sparse_curve(-e, e, reduce, intervals, by_e)
    random = float(reduce(e.mean()))
    area = _trapezoid(curve)
    return {"ause": area - _trapezoid(oracle), "aurg": random - area, "curve": curve,
            "oracle": oracle, "fractions": np.linspace(0.0, 1.0, intervals + 1)}


def gradient_energy(output_map, sigma: float = BASELINE_SIGMA) -> np.ndarray | None:
    """The sampling-free baseline map: squared Gaussian gradient magnitude of one
    H x W output map (``scipy.ndimage.gaussian_gradient_magnitude``, ``sigma`` in
    pixels, 'nearest' border). None for maps that are not images (H or W < 3)."""
    o = np.asarray(output_map, np.float64)
    if o.ndim != 2 or min(o.shape) < 3:
        return None
    g = ndimage.gaussian_gradient_magnitude(o, sigma, mode="nearest")
    return g * g


def _blocks(o, sigma, grid) -> np.ndarray:
    return (grid_blocks(o.shape, grid) if grid is not None else lcm_blocks(o, sigma)).ravel()


def _order_and_ranks(values: np.ndarray):
    """(ascending argsort, average ranks 1..n with ties averaged, like
    ``scipy.stats.rankdata``) of a flat array, from one sort."""
    order = np.argsort(values)
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    counts = np.diff(np.r_[starts, ordered.size])
    ranks = np.empty(ordered.size)
    ranks[order] = np.repeat(starts + (counts + 1) / 2.0, counts)
    return order, ranks


def _map_stats(u, errors: dict, labels, scale: float = 0.0, rel: float = FLAT) -> dict:
    """Per-image numbers of uncertainty map ``u`` against each error in ``errors``:
    kind -> (flat error map, its ascending order, its average ranks). ``labels``: the
    blocks, or None for a map that is not an image (no block numbers)."""
    u = np.ravel(u).astype(np.float64)
    order_u, ranks_u = _order_and_ranks(u)
    flat_u = _flat(u)
    if labels is not None:
        count = np.bincount(labels)
        keep = count > 0
        bu = np.bincount(labels, u)[keep] / count[keep]
    found = {}
    for kind, (e, order_e, ranks_e) in errors.items():
        flat_e = e.size < 2 or _flat(e, scale, rel)
        # A constant error has nothing to rank: no sparsification either. Most uncertain
        # first: the descending orders (ties stay together either way).
        sp = {"ause": float("nan"), "aurg": float("nan")} if flat_e else \
            sparsification(u, e, kind, _orders=(order_u[::-1], order_e[::-1]))
        if labels is not None:
            be = np.bincount(labels, e)[keep] / count[keep]
            block = _ruled(flat_e or _flat(be, scale, rel), flat_u or _flat(bu), bu, be,
                           count[keep])
            block_moments = _moments(bu, be, count[keep])
        else:
            block, block_moments = float("nan"), np.full(6, np.nan)
        found[kind] = {
            "pixel": _ruled(flat_e, flat_u, u, e),
            "pixel_spearman": _ruled(flat_e, flat_u, ranks_u, ranks_e),
            "block": block, "ause": sp["ause"], "aurg": sp["aurg"],
            "mean_u": float(np.mean(u)), "mean_e": float(np.mean(e)),
            "constant_error": bool(flat_e),
            "pixel_moments": _moments(u, e), "block_moments": block_moments}
    return found


def _scalar_stats(u: float, errors: dict) -> dict:
    """Numbers of an image whose uncertainty is one value (a classifier's entropy):
    only the means, for the correlation over images."""
    nan = float("nan")
    return {kind: {"pixel": nan, "pixel_spearman": nan, "block": nan, "ause": nan,
                   "aurg": nan, "mean_u": float(u), "mean_e": float(np.mean(e)),
                   "pixel_moments": np.full(6, np.nan), "block_moments": np.full(6, np.nan)}
            for kind, (e, _, _) in errors.items()}


def image_stats(uncertainty, output, target, sigma: float = DEFAULT_SIGMA,
                grid: int | None = None, baseline: bool = True, hw_axes=None,
                u_axes="same") -> list:
    """Per-image numbers for one result, to be summarised by ``summarize``.

    Args:
        uncertainty: the variance (or another uncertainty), output-shaped.
        output: the unperturbed output; target: the ground truth, output-shaped.
        sigma: block scale (pixels) of the local-center-of-mass segmentation.
        grid: square blocks of ``grid`` px on a side instead, when given (>= 1).
        baseline: also score the sampling-free ``gradient_energy`` map.
        hw_axes: the output's (height, width) axes when known (``image_maps``).
        u_axes: the uncertainty's, when it differs from the output's shape (an entropy
            map has lost the class axis); "same": ``hw_axes``. An uncertainty of one
            value per image (a classifier's entropy) gives only the means (for the
            correlation over images); per-image columns are NaN.

    Returns:
        One dict per image in the array (the batch): {"method": {kind: {...}},
        "baseline": {kind: {...}} or None}. Outputs that are not images (vectors)
        get no block numbers (NaN) and no baseline.

    Raises:
        TfueError: shapes differ, or a bad ``grid`` / ``sigma``.
    """
    check_blocks(sigma, grid)
    errors = {kind: image_maps(error_map(output, target, kind), hw_axes) for kind in ERRORS}
    scale = float(max(np.max(np.abs(output)), np.max(np.abs(target)))) \
        if np.size(output) else 0.0
    dtype = np.result_type(np.asarray(output).dtype, np.asarray(target).dtype)
    rel = max(FLAT, 4 * float(np.finfo(dtype).eps)) if dtype.kind == "f" else FLAT
    u_maps = image_maps(uncertainty, hw_axes if u_axes == "same" else u_axes)
    o_maps = image_maps(output, hw_axes)
    if len(u_maps) != len(o_maps):
        raise TfueError(f"the uncertainty splits into {len(u_maps)} image(s), the output into "
                        f"{len(o_maps)}", "give an uncertainty map per output image")
    found = []
    for k, (u, o) in enumerate(zip(u_maps, o_maps)):
        per_kind = {}
        for kind in ERRORS:
            e = np.ravel(errors[kind][k])
            per_kind[kind] = (e, *_order_and_ranks(e))
        found.append(_one_image_stats(u, o, per_kind, sigma, grid, baseline, scale, rel))
    return found


def _one_image_stats(u, o, per_kind, sigma, grid, baseline, scale, rel) -> dict:
    """``image_stats``'s entry for one image: uncertainty map ``u`` and output map ``o``
    (H x W, or 1 x K), its errors ``per_kind`` (error kind -> (flat errors, order,
    ranks))."""
    if np.size(u) == 1 and np.size(o) > 1:
        return {"method": _scalar_stats(np.ravel(u)[0], per_kind), "baseline": None}
    if np.shape(u) != np.shape(o):
        raise TfueError(f"the uncertainty map is {np.shape(u)}, the output's {np.shape(o)}",
                        "give an uncertainty shaped like the output")
    # An output whose channel mean is constant (class probabilities) has no
    # content to cut into blocks, and its edge map is rounding noise.
    flat_o = is_image(o) and _flat(o, rel=rel)
    labels = _blocks(o, sigma, grid) if is_image(o) and (grid is not None or not flat_o) \
        else None
    # Each error map is sorted once (in image_stats), for the method's map and the
    # baseline's. (L1 and L2 maps of several channels rank pixels differently.)
    base = gradient_energy(o) if baseline and labels is not None and not flat_o else None
    return {"method": _map_stats(u, per_kind, labels, scale, rel),
            "baseline": None if base is None else _map_stats(base, per_kind, labels, scale, rel),
            "flat_output": bool(flat_o)}


def check_blocks(sigma, grid) -> None:
    """Refuse a block scale that is not > 0, or a grid size that is not >= 1.

    Raises:
        TfueError: naming the option and a good value.
    """
    if grid is not None:
        if int(grid) != grid or grid < 1:
            raise ArgumentError(f"--block-grid must be a whole number of pixels >= 1, got {grid}",
                            "e.g. --block-grid 16 (squares 16 px on a side)")
    elif not (np.isfinite(sigma) and 0 < sigma <= MAX_BLOCK_SIGMA):
        raise ArgumentError(f"--block-sigma must be > 0 and at most {MAX_BLOCK_SIGMA:g} px, got "
                        f"{sigma}", "e.g. --block-sigma 2")


def check_bootstrap(bootstrap) -> int:
    """Validate a number of bootstrap resamples: 0 (no intervals) or at least 100.

    Raises:
        TfueError: fewer than 100 (the 2.5 % and 97.5 % tails need that many) or < 0.
    """
    b = int(bootstrap)
    if b != bootstrap or b < 0 or 0 < b < MIN_BOOTSTRAP:
        raise ArgumentError(f"--bootstrap must be 0 or at least {MIN_BOOTSTRAP}, got {bootstrap}",
                        "e.g. --bootstrap 1000, or --bootstrap 0 for no intervals")
    return b


def _summary(per: list, idx: np.ndarray) -> dict:
    """Columns for the images ``idx`` (rows of resamples: [B, n] gives arrays of B)."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN
        for col in PER_IMAGE:
            vals = np.array([p[col] for p in per], np.float64)[idx]
            out[col] = np.nanmean(vals, axis=-1)
    out["pixel_pooled"] = _pooled_pearson(np.stack([p["pixel_moments"] for p in per])[idx])
    out["block_pooled"] = _pooled_pearson(np.stack([p["block_moments"] for p in per])[idx])
    mu = np.array([p["mean_u"] for p in per])[idx]
    me = np.array([p["mean_e"] for p in per])[idx]
    out["mean"] = _pearson_rows(mu, me) if len(per) >= 3 else np.full(np.shape(mu)[:-1], np.nan)
    return out


def _rows(per_images: list, bootstrap: int, seed: int, level: float) -> dict:
    """Summary values (and intervals) per error kind for a list of per-image stats."""
    n = len(per_images)
    rows, intervals, skipped = {}, {}, {}
    if n == 0:  # nothing to summarise (every image was left out)
        nan = {c: float("nan") for c in COLUMNS}
        return {"rows": {kind: dict(nan) for kind in ERRORS}, "intervals": {},
                "skipped": {kind: 0 for kind in ERRORS}}
    every = np.arange(n)
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, n, size=(bootstrap, n)) if bootstrap and n else None
    for kind in ERRORS:
        per = [p[kind] for p in per_images]
        point = _summary(per, every)
        rows[kind] = {c: float(point[c]) for c in COLUMNS}
        skipped[kind] = int(sum(bool(p.get("constant_error")) for p in per))
        if resamples is not None:
            boot = _summary(per, resamples)
            tail = 100 * (1 - level) / 2
            intervals[kind] = {}
            for c in COLUMNS:
                vals = boot[c][np.isfinite(boot[c])]
                intervals[kind][c] = [float(np.percentile(vals, tail)),
                                      float(np.percentile(vals, 100 - tail))] \
                    if vals.size else [None, None]
    return {"rows": rows, "intervals": intervals, "skipped": skipped}


def summarize(stats_list: list, sigma: float = DEFAULT_SIGMA, grid: int | None = None,
              bootstrap: int = BOOTSTRAP, seed: int = 0, level: float = 0.95) -> dict:
    """The metrics table from per-image stats (``image_stats`` of every result).

    Args:
        stats_list: the per-image dicts, in image order.
        sigma, grid: the block scale used (recorded in the table).
        bootstrap: resamples for the intervals (0: none).
        seed: seed of the resampling (numpy default_rng).
        level: coverage of the percentile intervals.

    Returns:
        {"images": n, "block": text, "block_sigma": sigma or None, "block_grid": grid
        or None, "l1": {column: value}, "l2": {...}, "skipped": {kind: images whose
        error is constant}, "per_image": {kind: {column: [values]}}, and with
        ``bootstrap``: "intervals": {kind: {column: [low, high]}}, "bootstrap":
        {"resamples", "seed", "level"}; "baseline": the same rows (and intervals) for
        the gradient-energy map, with "map" saying what it is, when every image has one}.
        Correlations are in [-1, 1], NaN where undefined; AUSE/AURG in error units.

    Raises:
        TfueError: ``bootstrap`` < 0, or ``level`` not in (0, 1).
    """
    bootstrap = check_bootstrap(bootstrap)
    if not 0 < level < 1:
        raise ArgumentError(f"interval level must be in (0, 1), got {level}", "e.g. 0.95")
    n = len(stats_list)
    method = _rows([s["method"] for s in stats_list], bootstrap, seed, level)
    grid_given = grid is not None
    table = {"images": n, "block": f"grid {grid}" if grid_given else f"lcm sigma {sigma:g}",
             "block_sigma": None if grid_given else float(sigma), "block_grid": grid,
             **method["rows"], "skipped": method["skipped"],
             "per_image": {kind: {c: [s["method"][kind][c] for s in stats_list]
                                  for c in PER_IMAGE} for kind in ERRORS}}
    if bootstrap and n:
        table["intervals"] = method["intervals"]
        table["bootstrap"] = {"resamples": bootstrap, "seed": seed, "level": level}
    if n and all(s["baseline"] is not None for s in stats_list):
        base = _rows([s["baseline"] for s in stats_list], bootstrap, seed, level)
        table["baseline"] = {"map": BASELINE, **base["rows"], "per_image": {
            kind: {c: [s["baseline"][kind][c] for s in stats_list] for c in PER_IMAGE}
            for kind in ERRORS}}
        if bootstrap:
            table["baseline"]["intervals"] = base["intervals"]
    return table


def table(variances, outputs, targets, means=None, sigma: float = DEFAULT_SIGMA,
          grid: int | None = None, bootstrap: int = 0, seed: int = 0,
          baseline: bool = True, hw_axes=None, u_axes="same") -> dict:
    """The metrics table for lists of output-shaped arrays (one entry per result).

    The same as ``summarize`` over ``image_stats`` of each (variance, output,
    target), plus "tolerability" (mean over results) when ``means`` are given.
    Pass ``hw_axes=result.image_axes`` (and ``u_axes=result.uncertainty_axes`` for an
    entropy map) so the maps are read on the axes the run found; without them the
    layout is guessed from the shape (NCHW, or NHWC with at most 4 channels).
    """
    stats_list = []
    for v, o, t in zip(variances, outputs, targets):
        stats_list += image_stats(v, o, t, sigma, grid, baseline, hw_axes, u_axes)
    result = summarize(stats_list, sigma, grid, bootstrap, seed)
    if means is not None:
        tol = [tolerability(m, o) for m, o in zip(means, outputs)]
        result["tolerability"] = {key: float(np.mean([t[key] for t in tol]))
                                  for key in ("mean_abs_change", "relative_change")}
    return result


def interval(table: dict, column: str, kind: str, baseline: bool = False):
    """The bootstrap interval [low, high] of ``column`` for error ``kind`` in a table,
    or None when the table has none."""
    src = table.get("baseline", {}) if baseline else table
    return src.get("intervals", {}).get(kind, {}).get(column)


def separated(a, b) -> bool | None:
    """Whether two intervals [low, high] do not overlap (None when one is missing)."""
    if not a or not b or None in a or None in b:
        return None
    return a[1] < b[0] or b[1] < a[0]


def tolerability(mean, output) -> dict:
    """How far the sample mean moves from the unperturbed output: mean absolute change,
    and that relative to the output's mean magnitude. Needs no target."""
    mean, output = np.asarray(mean, np.float64), np.asarray(output, np.float64)
    change = float(np.mean(np.abs(mean - output)))
    scale = float(np.mean(np.abs(output)))
    return {"mean_abs_change": change,
            "relative_change": change / scale if scale > 0 else (0.0 if change == 0
                                                                  else float("inf"))}
