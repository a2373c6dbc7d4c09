"""Plots people look at (matplotlib, loaded only when a plot is drawn)."""

from __future__ import annotations

import io

from .files import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def sweep_plot(path: str, points: list, metric: str, method: str, baseline=None) -> None:
    """Metric against location depth, one line per level (the paper's Figure 4), with
    the 95 % bootstrap band of each line where the points carry intervals, and the
    sampling-free baseline's value (``baseline``: its table) as a dashed line."""
    from .sweep import metric_interval, metric_value

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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def panels(path: str, rows: list, titles: list, title: str | None = None) -> None:
    """A labelled grid of pictures written to ``path`` (PNG, atomically).

    Args:
        path: the .png file.
        rows: one list per row of ``(kind, array, label)``: kind ``"image"`` (an
            [H, W, 3] array in [0, 1], or [H, W] grey, drawn as it is) or ``"map"`` (an
            [H, W] float map, false-coloured with a colour bar whose label is
            ``label``, e.g. the map's units); ``None`` leaves a cell empty.
        titles: the column titles.
        title: the figure's title.
    """
    import numpy as np

    plt = _pyplot()
    ncols = len(titles)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(3.2 * ncols, 3.0 * len(rows)),
                             dpi=100, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
            cell = row[c] if c < len(row) else None
            if cell is None:
                ax.axis("off")
                continue
            kind, arr, label = cell
            if kind == "image":
                arr = np.clip(np.asarray(arr, dtype=np.float64), 0, 1)
                ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1,
                          interpolation="nearest")
            else:
                im = ax.imshow(np.asarray(arr, dtype=np.float64), cmap="magma",
                               interpolation="nearest")
                bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
                bar.set_label(label, fontsize=8)
                bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
