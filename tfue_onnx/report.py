"""Files a person can open: per-input .npz and variance heatmap, and a run summary."""

from __future__ import annotations

import os

import numpy as np

from . import __version__
from .io import colorize, load_input, save_json, save_npz, save_png, spatial_map


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def planned_files(out_dir: str, files) -> list:
    """Every file a run over ``files`` may write (to refuse overwriting up front)."""
    planned = [os.path.join(out_dir, "summary.json")]
    for f in files:
        planned += [os.path.join(out_dir, _stem(f) + suffix) for suffix in
                    (".npz", ".variance.png", ".entropy.png")]
    return planned


ARRAY_KEYS = ("output", "mean", "variance", "samples", "entropy", "mutual_information",
              "class_variance")


def result_arrays(result) -> dict:
    """The arrays stored in NAME.npz: output/mean/variance of the first float output
    under plain keys, and every output under ``<output name>.output`` etc."""
    arrays = {}
    primary = result.primary
    for name, s in result.outputs.items():
        for key in ARRAY_KEYS:
            value = getattr(s, key)
            if value is None:
                continue
            if name == primary:
                arrays[key] = value
            arrays[f"{name}.{key}"] = value
    return arrays


def write_result(out_dir: str, stem: str, result, source: str) -> dict:
    """Write ``stem``.npz (and a heatmap when the output is a map); return a summary."""
    meta = {**result.metadata, "input": source, "tfue_version": __version__}
    npz = os.path.join(out_dir, stem + ".npz")
    save_npz(npz, result_arrays(result), meta)
    written = [npz]
    item = {"input": source, "files": written, **_means(result.outputs[result.primary]),
            "max_variance": None if result.variance is None else float(np.max(result.variance)),
            "outputs": {name: {"shape": list(s.output.shape), **_means(s)}
                        for name, s in result.outputs.items()}}
    kind = "variance" if result.variance is not None else "entropy"
    if "spatial_axes" in meta:
        item["spatial_axes"] = meta["spatial_axes"]
    m = spatial_map(result.uncertainty, map_axes(result, kind)) \
        if result.uncertainty is not None else None
    if m is not None:
        png = os.path.join(out_dir, f"{stem}.{kind}.png")
        save_png(png, colorize(m))
        written.append(png)
        item["heatmap_max"] = float(m.max())
    return item


def map_axes(result, kind: str = "variance"):
    """The (h, w) axes of the primary output's ``kind`` map (variance, entropy) from
    the result's metadata; False when it has none; None when not recorded (guess).

    The entropy map has the class axis reduced away, so the axes after it move down.
    """
    found = result.metadata.get("spatial_axes")
    if found is None:
        return None
    hw = found.get(result.primary)
    if hw is None:
        return False
    if kind == "entropy":
        c = result.metadata.get("classes", {}).get("outputs", {}).get(result.primary)
        if c is None or c in hw:
            return False
        hw = [k - (k > c) for k in hw]
    return tuple(hw)


def _means(s) -> dict:
    """Means of an output's uncertainty arrays, for summaries."""
    means = {"mean_variance": None if s.variance is None else float(np.mean(s.variance))}
    for key in ("entropy", "mutual_information", "class_variance"):
        value = getattr(s, key)
        if value is not None:
            means[f"mean_{key}"] = float(np.mean(value))
    return means


def run_inputs(estimator, files, out_dir, options, progress=None) -> dict:
    """Run ``estimator`` on every input file, write results, return the run summary.

    ``progress`` wraps the file list for display (e.g. a progress bar).
    """
    # Every input is read and checked before the long work starts, so a bad one
    # fails the run at once and no result of it is half-written.
    first = None
    for path in files:
        feeds = estimator.check_feeds(load_input(path, estimator.info.inputs, options))
        first = feeds if first is None else first
    estimator.prepare(first)  # verified on the first input before any work is reported
    items = []
    meta = None
    iterator = progress(files) if progress else files
    for path in iterator:
        feeds = load_input(path, estimator.info.inputs, options)
        result = estimator(feeds)
        meta = result.metadata
        items.append(write_result(out_dir, _stem(path), result, path))
    summary = {"tfue_version": __version__, **meta, "inputs": items}
    summary.pop("input", None)
    summary["location"] = summary.pop("at", None)
    save_json(os.path.join(out_dir, "summary.json"), summary)
    return summary
