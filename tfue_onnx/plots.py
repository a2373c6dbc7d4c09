"""Plots people look at (matplotlib, loaded only when a plot is drawn)."""

from __future__ import annotations

import numpy as np

from .files import atomic_write
from .io import spatial_map
from .names import DRAWING_METHODS


# Colour-bar labels: what a map is, in its units (variance: squared output units).
UNITS = {"variance": "variance, (output units)²", "entropy": "entropy, nats"}
TOP_PERCENTILE = 99.5  # a map's colours span min .. this percentile (a few hot pixels
# would make the rest black); values above get the top colour, marked by the bar's arrow


def method_words(meta: dict, seed: bool = False) -> str:
    """How a run is named, from its metadata: 'noise at r1, level 0.2, N = 8' (transforms:
    'transform (4: identity, hflip, vflip, rot180)'; ensembles: 'ensemble of 4 models');
    ``seed`` adds ', seed 3' for the methods that draw (noise, dropout, mc-dropout). The
    one wording of pictures' titles and the CLI's lines."""
    words = str(meta.get("method"))
    if meta.get("method") == "ensemble":
        return f"ensemble of {len(meta.get('members') or []) or '?'} models"
    if meta.get("transforms"):
        names = list(meta["transforms"])
        words += f" ({len(names)}: {', '.join(names)})"
    elif meta.get("at") is not None:
        words += f" at {meta['at']}"
    if meta.get("level") is not None:
        words += f", level {meta['level']:g}"
    if meta.get("samples") and not meta.get("transforms"):
        words += f", N = {meta['samples']}"
    if seed and meta.get("method") in DRAWING_METHODS and \
            meta.get("seed") is not None:
        words += f", seed {meta['seed']}"
    return words


def display_range(m) -> list | None:
    """[min, the TOP_PERCENTILE-th percentile of the values above the min] of a map's
    finite values: on a sparse map (a detector's, mostly 0) the percentile is taken
    among the pixels that carry something, so their scale shows; [min, min] when nothing
    is above the min (a flat map). None when no value is finite."""
    finite = np.asarray(m, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return None
    lo = float(finite.min())
    above = finite[finite > lo]
    if not above.size:
        return [lo, lo]
    return [lo, float(np.percentile(above, TOP_PERCENTILE))]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str) -> None:
    """Lay out ``fig``, write it to ``path`` as PNG (atomically) and close it."""
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)


def sweep_plot(path: str, points: list, metric: str, method: str, baseline=None) -> None:
    """Metric against location depth, one line per level (the paper's Figure 4), with
    the 95 % bootstrap band of each line where the points carry intervals, and the
    sampling-free baseline's value (``baseline``: its table) as a dashed line."""
    from .metrics import metric_interval, metric_value

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for level in sorted({p["level"] for p in points}):
        row = sorted((p for p in points if p["level"] == level), key=lambda p: p["depth"])
        line, = ax.plot([p["depth"] for p in row],
                        [metric_value(p["table"], metric) for p in row], marker="o",
                        label=f"{'σ' if method == 'noise' else 'p'} = {level:g}")
        ivs = [metric_interval(p["table"], metric) for p in row]
        if all(iv and None not in iv for iv in ivs):  # the 95 % bootstrap band
            ax.fill_between([p["depth"] for p in row], [iv[0] for iv in ivs],
                            [iv[1] for iv in ivs], color=line.get_color(), alpha=0.12)
    if baseline is not None:
        value = metric_value(baseline, metric)
        if value == value:
            ax.axhline(value, color="0.4", linestyle="--", linewidth=1,
                       label="baseline (edge map)")
    ax.set_xlabel("location depth (0 = input, 1 = output)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"infer-{method}: {metric} by location")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    _save(plt, fig, path)


def reliability_picture(path: str, found: dict, title: str) -> None:
    """The reliability diagram of a calibration (Levi et al. 2022), written to ``path``
    (PNG): per reliability bin of s, left: the predicted E|error| against the observed
    mean |error|; right: the root mean variance (raw s and calibrated) against the RMSE;
    the diagonal is perfect calibration. The title line gives the intervals' coverage
    and mean width and both ENCEs.

    Args:
        path: the .png file.
        found: ``calibrate.Assessment.result()`` (its ``bins`` with count > 0).
        title: what was assessed (run, pairs).
    """
    plt = _pyplot()
    bins = found["bins"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 4.4), dpi=110)
    pairs = ((left, [("mean_expected_error", "calibrated E|error|", "o")],
              "predicted mean |error|"),
             (right, [("rmv_raw", "raw s", "s"), ("rmv", "calibrated", "o")],
              "predicted RMV (root mean variance)"))
    for ax, series, xlabel in pairs:
        top = 0.0
        for key, label, marker in series:
            x = [b[key] for b in bins]
            y = [b["mean_error" if ax is left else "rmse"] for b in bins]
            ax.plot(x, y, marker=marker, label=label)
            top = max([top] + x + y)
        ax.plot([0, top], [0, top], color="0.5", linestyle="--", linewidth=1,
                label="perfect")
        ax.set_xlabel(f"{xlabel}, output units")
        ax.set_ylabel("observed " + ("mean |error|" if ax is left else "RMSE")
                      + ", output units")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}\ncoverage {found['coverage']:.3f} (target "
                 f"{found['target_coverage']:g}), mean width {found['mean_width']:.4g}; "
                 f"ENCE raw {found['ence_raw']:.3f}, calibrated {found['ence']:.3f}",
                 fontsize=9)
    _save(plt, fig, path)


def panels(path: str, rows: list, titles: list, title: str | None = None,
           cell: tuple = (3.2, 3.0), row_titles=None) -> None:
    """A labelled grid of pictures written to ``path`` (PNG, atomically), one matplotlib
    figure, closed after saving.

    Args:
        path: the .png file.
        rows: one list per row of cells ``(kind, array, label)`` or ``(kind, array,
            label, (vmin, vmax))``; ``None`` leaves a cell empty. Kinds: ``"image"``
            (an [H, W, 3] array in [0, 1], or [H, W] grey, drawn as it is); ``"map"``
            (an [H, W] float map, false-coloured (magma) with a colour bar whose label
            is ``label``, e.g. the map's units); ``"grey"`` (the same in grey, for a
            one-channel output); ``"overlay"`` (``array`` is
            ``(image, map)`` of one H x W: the map alpha-blended over the image, with
            its colour bar). The range is the colour bar's (None: ``display_range``,
            the map's min to its 99.5th percentile; values above it take the top colour
            and the bar gets an arrow).
        titles: the column titles.
        title: the figure's title.
        cell: (width, height) of one cell in inches (100 pixels each).
        row_titles: one label per row, beside its first cell (None: none).
    """
    plt = _pyplot()
    ncols = len(titles)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(cell[0] * ncols, cell[1] * len(rows)),
                             dpi=100, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
            cell_ = row[c] if c < len(row) else None
            if cell_ is None:
                ax.axis("off")
            else:
                _draw_cell(fig, ax, *cell_)
            if c == 0 and row_titles:
                ax.set_ylabel(row_titles[r], fontsize=9)
    if title:  # wrapped to the figure's width (about 14 characters an inch at size 10)
        import textwrap

        width = max(int(fig.get_figwidth() * 14), 30)
        fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.split("\n")),
                     fontsize=10)
    _save(plt, fig, path)


OVERLAY_ALPHA = 0.6  # opacity of the map over the input in NAME.overlay.png


def _draw_cell(fig, ax, kind: str, arr, label: str, vrange=None) -> None:
    """One cell of ``panels``."""
    if kind == "image":
        _draw_image(ax, arr)
        return
    background = None
    if kind == "overlay":
        background, arr = arr
    arr = np.asarray(arr, dtype=np.float64)
    if vrange is None:
        vrange = _grey_range(arr) if kind == "grey" else display_range(arr)
    vmin, vmax = vrange if vrange is not None else (None, None)
    finite = np.isfinite(arr).any()
    above = bool(vmax is not None and finite and np.nanmax(arr) > vmax)
    cmap = "gray" if kind == "grey" else "magma"
    im = ax.imshow(arr, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                   aspect="auto" if _squeezed(arr.shape) else "equal")
    if background is not None:  # the map over the input, low values see-through
        _draw_image(ax, background)
        im.set_alpha(OVERLAY_ALPHA * np.clip(im.norm(np.nan_to_num(arr)), 0, 1))
        im.set_zorder(2)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, extend="max" if above else "neither")
    bar.solids.set_alpha(1)  # the bar shows the colours themselves, not blended
    bar.ax.yaxis.set_major_formatter(_tick_format())
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _grey_range(arr) -> list | None:
    """A one-channel output's colour range: [0, 1] when its values lie in [0, 1]
    (probabilities: 0.0001 must not look like a detection), else ``display_range``."""
    finite = arr[np.isfinite(arr)]
    if finite.size and finite.min() >= 0 and finite.max() <= 1:
        return [0.0, 1.0]
    return display_range(arr)


def _squeezed(shape) -> bool:
    """Whether a map is so wide or tall that its cell does not keep its aspect."""
    h, w = shape[:2]
    return max(h, w) > 3.5 * min(h, w)


def _tick_format():
    """Colour-bar ticks that carry their own exponent (1.5e-05), so no offset text
    ("1e-5") sits on the panel title above the bar."""
    import matplotlib.ticker as ticker

    return ticker.FuncFormatter(lambda v, _: f"{v:.3g}")


def _draw_image(ax, arr) -> None:
    """An [H, W, 3] or [H, W] picture in [0, 1] (clipped), as it is."""
    arr = np.clip(np.asarray(arr, dtype=np.float64), 0, 1)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1,
              interpolation="nearest", aspect="auto" if _squeezed(arr.shape) else "equal")


def _hw_axes(shape: tuple, axes):
    """The (h, w) axes of an output of ``shape``: ``axes`` as given (``results.map_axes``),
    or guessed as ``io.spatial_map`` does (None for False, or a rank it cannot read)."""
    if axes is False:
        return None
    if axes is not None:
        return tuple(int(a) % len(shape) for a in axes)
    if len(shape) == 4:
        return (1, 2) if shape[-1] <= 4 < shape[1] else (2, 3)
    return (1, 2) if len(shape) == 3 else None


def output_image(output, axes=None) -> np.ndarray | None:
    """Batch item 0 of an output that is an image, as a picture: float64 [H, W, 3] for 3
    channels, [H, W] grey for 1 (or none), in [0, 1] (clipped when the values lie about
    in [0, 1], else stretched from min to max). None when the output is no image: no
    (h, w) axes, or another number of channels (draw its channel mean as a map instead:
    ``output_cell``).

    Args:
        output: the output array, e.g. [B, C, H, W], [B, H, W, C] or [B, H, W].
        axes: its (h, w) axes (``results.map_axes``); None: guessed; False: none.
    """
    out = np.asarray(output, dtype=np.float64)
    hw = _hw_axes(out.shape, axes)
    if hw is None or min(out.shape[hw[0]], out.shape[hw[1]]) < 2:
        return None
    other = [a for a in range(out.ndim) if a not in hw]
    item = np.moveaxis(out, other + list(hw), list(range(out.ndim)))
    item = item.reshape((-1,) + item.shape[-2:]) if other else item[None]
    batch = other[:1] if other and other[0] < min(hw) else []  # none when H or W is axis 0
    per_item = int(np.prod([out.shape[a] for a in other if a not in batch], dtype=np.int64))
    item = item[:per_item]  # batch item 0: its channels (1 when it has none)
    if len(item) not in (1, 3):
        return None
    img = item[0] if len(item) == 1 else np.moveaxis(item, 0, -1)
    lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
    if lo < -0.05 or hi > 1.05:  # not in [0, 1]: stretched
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.clip(img, 0, 1)


def output_cell(output, axes=None, units: str = "output units"):
    """A ``panels`` cell showing an output: an image of 3 channels as the picture
    (``output_image``); one of 1 channel as a grey map with a colour bar (its values
    readable: a probability map, a depth map); else its channel-mean map false-coloured
    with a colour bar (``units``); None when the output has no map."""
    picture = output_image(output, axes)
    if picture is not None and picture.ndim == 3:
        return ("image", picture, "")
    m = spatial_map(output, axes)
    if m is None:
        return None
    if picture is not None:
        return ("grey", m, f"output ({units})")
    return ("map", m, f"output, channel mean ({units})")


def _cell_inches(shape: tuple) -> tuple:
    """(width, height) in inches of a cell showing an H x W map: about 1 inch (100 px)
    per 100 pixels, from 3.2 to 7 inches wide and 2 to 7 high (a very wide or tall map
    is drawn squeezed rather than as a strip)."""
    h, w = shape
    width = min(max(w / 100, 3.2), 7.0)
    height = min(max(width * h / w, 2.0), 7.0)  # very wide or tall maps: squeezed to fit
    return (width + 1.2, height + 0.8)  # colour bar with its label, and titles


def map_picture(path: str, m: np.ndarray, label: str, title: str, output=None,
                vrange=None) -> None:
    """``NAME.variance.png`` / ``NAME.entropy.png``: the output (``output``: a ``panels``
    cell from ``output_cell``, or None) beside the uncertainty map ``m`` ([H, W] float)
    with a colour bar labelled ``label`` (its units), under ``title``.

    Args:
        vrange: the colour bar's (vmin, vmax), shared across a run; None: the map's own
            minimum and maximum.
    """
    cells = ([output] if output is not None else []) + [("map", m, label, vrange)]
    titles = (["output"] if output is not None else []) + [label.split(",")[0]]
    panels(path, [cells], titles, title, cell=_cell_inches(np.shape(m)))


def overlay_picture(path: str, background: np.ndarray, m: np.ndarray, label: str,
                    title: str, vrange=None) -> None:
    """``NAME.overlay.png``: the map ``m`` ([H, W]) alpha-blended (``OVERLAY_ALPHA``) over
    ``background`` (the input as a picture: [H, W, 3] or [H, W] in [0, 1], the map's
    size), with a colour bar labelled ``label``; ``vrange`` as in ``map_picture``."""
    panels(path, [[("overlay", (background, m), label, vrange)]],
           [f"{label.split(',')[0]} over the input"], title, cell=_cell_inches(np.shape(m)))
