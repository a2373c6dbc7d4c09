"""Evaluation: run a method on (input, target) pairs and measure its uncertainty.

Pairs come from inputs and a folder of targets matched by file name, from .npz
files holding both (``target`` beside the model's input arrays), or for
super-resolution from high-resolution images alone (the input is the image
downscaled by S with Pillow's bicubic filter, the target the image cropped to a
multiple of S).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from . import metrics
from .errors import ArgumentError, TfueError
from .files import atomic_write_bytes, save_json
from .io import (IMAGE_EXTS, ImageOptions, check_image_options, collect_inputs, image_to_input,
                 load_input, npz_feeds, open_image, read_npy, read_npz, spatial_map)
from .layout import declared_layout, with_batch
from .plots import UNITS, method_words, output_image  # output_image: public here too

SR_FILTER = "bicubic"  # Pillow's Image.BICUBIC, for the low-resolution input


@dataclasses.dataclass
class Pair:
    """One (input, target) example; arrays are read on demand."""

    name: str
    source: str
    _load: object  # () -> (feeds, target)

    def load(self):
        """(feeds: input name -> array, target: array laid out like the output)."""
        return self._load()


def _target_array(arr: np.ndarray, output) -> np.ndarray:
    """Lay out a target (H x W or H x W x C image, or an array) like ``output``."""
    return with_batch(arr, output.shape)


def _image_target(im, output, scale: float) -> np.ndarray:
    """A Pillow image as a target shaped like ``output``: [1, C, H, W], [1, H, W, C] or
    [1, H, W]."""
    shape = output.shape
    if shape is None:  # undeclared: NCHW, the image's own channels
        shape = [1, 1 if im.mode in ("L", "I", "I;16", "F") else 3, None, None]
    rank = len(shape)
    nhwc = declared_layout(shape) == "NHWC"
    channels = (shape[-1] if nhwc else shape[1]) if rank == 4 else 1
    arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), np.float32) * np.float32(scale)
    if arr.ndim == 2:
        arr = arr[..., None]
    if rank == 3:
        return arr[None, ..., 0]
    return arr[None] if nhwc else arr.transpose(2, 0, 1)[None]


def _read_target(path: str, output, scale: float) -> np.ndarray:
    if path.lower().endswith(".npy"):
        return _target_array(read_npy(path), output)
    return _image_target(open_image(path), output, scale)


def make_pairs(info, inputs, targets=None, sr_scale=None, options=ImageOptions(),
               target_scale: float = 1 / 255, unique_names: bool = True) -> list:
    """(input, target) pairs for ``info``'s model from one of the three sources.

    Args:
        info: the model's ModelInfo (``model.inspect_model``).
        inputs: files or folders (images, .npy, or .npz holding ``target``).
        targets: a folder of targets named after the inputs (.npy, or images scaled
            by ``target_scale``), or None.
        sr_scale: super-resolution scale S: the input is each image downscaled by S
            (bicubic), the target the image itself; or None.
        options: ImageOptions for reading the inputs.
        target_scale: image targets are multiplied by this (default 1/255: [0, 1]).
        unique_names: refuse two inputs with one name stem (their pictures would collide).

    Returns:
        list of ``Pair``; ``pair.load()`` gives (feeds: input name -> array, target:
        float32 array laid out like the first float output, e.g. [1, C, H, W]).

    Raises:
        TfueError: an input has no target, a bad scale or option.
    """
    files = collect_inputs(inputs, unique_names)
    if sr_scale is None:  # with --sr-scale the inputs are images by construction
        check_image_options(files, options)
    output = next((o for o in info.outputs if o.dtype.startswith("float")), info.outputs[0])
    pairs = []
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        if sr_scale is not None:
            pairs.append(Pair(stem, path, _sr_loader(path, info, int(sr_scale), options,
                                                      output, target_scale)))
        elif targets is not None:
            match = [os.path.join(targets, stem + ext) for ext in (".npy",) + IMAGE_EXTS
                     if os.path.exists(os.path.join(targets, stem + ext))]
            if not match:
                raise TfueError(f"no target for '{path}' in '{targets}' (looked for {stem}.npy, "
                                f"{stem}.png, ...)", "name each target after its input")
            pairs.append(Pair(stem, path, (lambda p=path, t=match[0]: (
                load_input(p, info.inputs, options), _read_target(t, output, target_scale)))))
        else:
            if not path.lower().endswith(".npz"):
                raise TfueError(f"'{path}' has no target",
                                "give --targets DIR, --sr-scale S, or .npz files holding "
                                "'target' beside the input arrays")
            pairs.append(Pair(stem, path, _npz_loader(path, info, output)))
    return pairs


def _npz_loader(path, info, output):
    def load():
        arrays = read_npz(path)
        if "target" not in arrays:
            raise TfueError(f"'{path}' holds no 'target' array", "save it beside the inputs")
        target = arrays.pop("target")
        return npz_feeds(arrays, info.inputs, path), _target_array(target, output)
    return load


def _sr_loader(path, info, scale, options, output, target_scale):
    if scale < 1:
        raise ArgumentError(f"--sr-scale must be >= 1, got {scale}", "e.g. --sr-scale 2")
    if not path.lower().endswith(IMAGE_EXTS):
        raise TfueError(f"'{path}' is not an image; --sr-scale needs high-resolution images",
                        "give PNG/JPEG files")

    def load():
        from PIL import Image

        hr = open_image(path).convert("RGB")
        w, h = (hr.width // scale) * scale, (hr.height // scale) * scale
        if w == 0 or h == 0:
            raise TfueError(f"'{path}' is smaller than the scale {scale}", "use larger images")
        hr = hr.crop((0, 0, w, h))
        lr = hr.resize((w // scale, h // scale), Image.BICUBIC)
        opts = dataclasses.replace(options, resize=None)
        return ({info.inputs[0].name: image_to_input(lr, info.inputs[0], opts)},
                _image_target(hr, output, target_scale))
    return load


def evaluate(estimator, pairs, out_dir=None, sigma=metrics.DEFAULT_SIGMA, grid=None,
             level=None, progress=None, pictures=True, loaded=None,
             bootstrap: int = metrics.BOOTSTRAP, bootstrap_seed: int | None = None,
             baseline: bool = True, calibration=None) -> dict:
    """Run ``estimator`` on ``pairs``; return the metrics table and per-image numbers.

    Per-image statistics are computed as each result arrives (nothing but numbers
    is kept), then summarised by ``metrics.summarize``: per-image correlations
    averaged over images (primary), pooled ones beside, AUSE/AURG as Poggi et al.,
    bootstrap intervals over images, and the sampling-free baseline row.

    Args:
        estimator: an Estimator (called as ``estimator(feeds[, level=])``).
        pairs: ``Pair`` list (``make_pairs``).
        out_dir: with ``pictures``, ``NAME.eval.png`` (output | error | uncertainty)
            is written there.
        sigma, grid: block scale (local center of mass) or grid size.
        level: a level for the estimator's call (sweeps), or None.
        progress: wraps the pair list for display.
        loaded: the pairs' (feeds, target) already read (a sweep reads them once).
        bootstrap: resamples for the 95 % intervals (0: none); bootstrap_seed seeds
            them (None: the run's own seed from its metadata, so a run repeated with
            that --seed repeats its intervals too; 0 when it has none).
        baseline: also score the gradient-energy baseline map.
        calibration: a ``calibration.CalibrationFile`` to assess on these (held-out)
            pairs: its intervals' coverage and width, ENCE and the reliability bins
            (``calibrate.Assessment``); checked against the estimator's run first.

    Returns:
        {"metadata", "table" (``metrics.summarize``, plus "tolerability"), "images":
        per-image numbers, "notes" when any, "calibration" with a calibration:
        ``Assessment.result()`` plus "file"}.

    Raises:
        TfueError: a target's shape does not match the output; bad bootstrap; a
            calibration made for another run.
    """
    written = []
    if calibration is not None:
        calibration.check(estimator.describe())
    try:
        return _evaluate(estimator, pairs, out_dir, sigma, grid, level, progress, pictures,
                         loaded, bootstrap, bootstrap_seed, baseline, written,
                         _Assessing(calibration))
    except BaseException:
        for path in written:  # a failed evaluation leaves none of its pictures
            if os.path.exists(path):
                os.remove(path)
        raise


def _evaluate(estimator, pairs, out_dir, sigma, grid, level, progress, pictures, loaded,
              bootstrap, bootstrap_seed, baseline, written, assessing) -> dict:
    stats, tol, per_image = [], [], []
    meta, notes = None, {}
    iterator = progress(pairs) if progress else pairs
    for k, pair in enumerate(iterator):
        feeds, target = loaded[k] if loaded is not None else pair.load()
        res = estimator(feeds, level=level) if level is not None else estimator(feeds)
        meta = res.metadata
        target = _crop_for_pad(estimator, target, res.output, notes)
        try:
            err = metrics.error_map(res.output, target, "l1")  # checks the shapes too
        except TfueError as exc:  # which pair it is
            raise exc.about(f"'{pair.source}'") from exc
        if not np.all(np.isfinite(target)):
            raise TfueError(f"the target of '{pair.source}' holds "
                            f"{int(np.size(target) - np.count_nonzero(np.isfinite(target)))} "
                            "NaN/Inf value(s)", "give finite targets (crop or fill the "
                            "invalid pixels)")
        found = _result_stats(res, target, sigma, grid, baseline)
        if found is None:  # the run says why (warnings); the metrics leave the image out
            notes.setdefault("non_finite", []).append(pair.name)
            found = _nan_stats(res, target)
        else:
            stats += found
        tol.append(metrics.tolerability(res.mean if res.mean is not None else res.output,
                                        res.output))
        items = _image_items(pair, found, notes)
        assessing.add(res, target, items)
        per_image += items
        if out_dir is not None and pictures:
            _eval_picture(out_dir, pair, res, err, items, written)
    if bootstrap_seed is None:
        bootstrap_seed = (meta or {}).get("seed")
        bootstrap_seed = 0 if bootstrap_seed is None else int(bootstrap_seed)
    table = metrics.summarize(stats, sigma, grid, bootstrap, bootstrap_seed)
    table["tolerability"] = {key: float(np.mean([t[key] for t in tol])) if tol else
                             float("nan") for key in ("mean_abs_change", "relative_change")}
    result = {"metadata": meta, "table": table, "images": per_image}
    if getattr(estimator, "auto_choice", None):
        result["at_auto"] = estimator.auto_choice  # how --at auto chose the location
    assessing.finish(result)
    return _with_notes(result, notes)


class _Assessing:
    """A calibration's assessment during an evaluation (nothing without one)."""

    def __init__(self, calibration):
        from .calibrate import Assessment

        self.calibration = calibration
        self.found = Assessment(calibration.fit) if calibration is not None else None

    def add(self, res, target, items: list) -> None:
        """Add one result (its calibrated output) and note its coverage in ``items``."""
        if self.found is None:
            return
        stats = res.outputs[self.calibration.output]
        covered = self.found.add(stats.output, stats.variance, target)
        for item in items:
            item["interval_coverage"] = covered

    def finish(self, result: dict) -> None:
        """Put the totals in ``result["calibration"]``."""
        if self.found is not None:
            result["calibration"] = {"file": self.calibration.path, **self.found.result()}


def calibrate_pairs(estimator, pairs, coverage: float = 0.9, progress=None):
    """Fit a calibration for ``estimator``'s run on (input, target) pairs (``tfue
    calibrate``): the expected-error maps and the split-conformal quantile of
    ``calibrate.fit`` on every finite element of the calibrated output (the first float
    output, as the targets are laid out), with the run's identity.

    Args:
        estimator: an Estimator of a sampling method (its variance map is calibrated).
        pairs: the calibration set: ``Pair`` list (``make_pairs``), or ``(input,
            target)`` tuples of arrays (the input as ``estimator(x)`` takes it, the
            target laid out like the output).
        coverage: the intervals' target coverage, in (0, 1).
        progress: wraps the pair list for display.

    Returns:
        calibration.CalibrationFile (``about``: the model's path, the seed, the set's size
        and SHA-256 over its inputs and targets, the fit's numbers on the set). Beyond
        ``MAX_CALIBRATION_ELEMENTS`` elements in all, a seeded random fraction of each
        image's is used (``calibration_set["elements_kept"]``).

    Raises:
        ArgumentError (a ValueError): ``coverage`` not in (0, 1).
        TfueError: no pairs; an in-memory model; an entropy run (no variance); a target
            of the wrong shape; too few elements for the coverage.
    """
    import hashlib

    from .calibrate import Assessment, check_coverage, elements, fit_elements
    from .calibration import CalibrationFile, check_files, identity

    check_coverage(coverage)
    check_files(identity(estimator.describe(), ""), "the Estimator's")
    if not len(pairs):
        raise TfueError("no calibration pairs", "give inputs with targets")
    pairs = [_as_pair(p, k) for k, p in enumerate(pairs)]
    digest, ss, es, meta, name, thin = hashlib.sha256(), [], [], None, None, {}
    for pair in (progress(pairs) if progress else pairs):
        feeds, target = pair.load()
        res = estimator(feeds)
        meta, name = res.metadata, _calibrated_output(res, pair)
        target = _crop_for_pad(estimator, target, res.outputs[name].output, {})
        try:
            s, e = elements(res.outputs[name].output, res.outputs[name].variance, target)
        except TfueError as exc:
            raise exc.about(f"'{pair.source}'") from exc
        s, e = _thin(s, e, thin, len(pairs))
        ss.append(s)
        es.append(e)
        _hash_pair(digest, pair.name, feeds, target)
    fitted = fit_elements(np.concatenate(ss), np.concatenate(es), coverage)
    on_set = Assessment(fitted)
    for s, e in zip(ss, es):
        on_set.add_elements(s, e)
    return CalibrationFile(fitted, identity(meta, name), {
        "model_path": meta.get("model"), "seed": meta.get("seed"),
        "strategy": meta.get("strategy"),
        "calibration_set": {"pairs": len(pairs), "elements": fitted.count,
                            "elements_kept": thin["rate"], "sha256": digest.hexdigest()},
        "on_calibration_set": on_set.result()})


def _as_pair(pair, k: int) -> Pair:
    """A ``Pair``, or an ``(input, target)`` tuple made one (named '[k]')."""
    if isinstance(pair, Pair):
        return pair
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise ArgumentError(f"calibration pair {k} is a {type(pair).__name__}, not a Pair or "
                            "an (input, target) tuple", "e.g. [(x, target), ...]")
    return Pair(f"[{k}]", f"pair {k}", lambda: (pair[0], np.asarray(pair[1])))


MAX_CALIBRATION_ELEMENTS = 20_000_000  # kept for the fit (about 160 MB as float32 s, e)


def _thin(s, e, state: dict, pairs: int) -> tuple:
    """(s, e) as float32, thinned so that about ``MAX_CALIBRATION_ELEMENTS`` are kept in
    all: one fraction for every image (set by the first, in ``state["rate"]``), each
    element kept at random (seeded): a random subset of exchangeable elements keeps the
    conformal guarantee."""
    if "rate" not in state:
        state["rate"] = min(1.0, MAX_CALIBRATION_ELEMENTS / max(1, s.size * pairs))
        state["rng"] = np.random.default_rng(0)
    if state["rate"] < 1:
        pick = state["rng"].random(s.size) < state["rate"]
        s, e = s[pick], e[pick]
    return s.astype(np.float32), e.astype(np.float32)


def _calibrated_output(res, pair) -> str:
    """The output a calibration is fitted on: the first with a variance map."""
    for name, stats in res.outputs.items():
        if stats.variance is not None:
            return name
    raise TfueError(f"the run on '{pair.source}' gives no variance map to calibrate",
                    "use a sampling method (noise, dropout, transform, mc-dropout, ensemble)")


def _hash_pair(digest, name: str, feeds: dict, target) -> None:
    """Add one pair (its name, input arrays and target) to the calibration set's hash."""
    digest.update(name.encode())
    feeds = feeds if isinstance(feeds, dict) else {"": np.asarray(feeds)}
    for key in sorted(feeds):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(feeds[key]).tobytes())
    digest.update(np.ascontiguousarray(target).tobytes())


def _crop_for_pad(estimator, target, output, notes: dict):
    """The target cropped to the output under ``--pad`` (``crop_target``), with a note."""
    if getattr(estimator, "pad", None) is None:
        return target
    target, cropped = crop_target(target, output)
    if cropped:
        notes.setdefault("target_cropped", (
            f"--pad {estimator.pad} is smaller than the model's border: its output "
            f"{tuple(output.shape)} is smaller than the target {tuple(cropped)}; the "
            "target's border was cropped (centered) to the output"))
    return target


def _result_stats(res, target, sigma, grid, baseline):
    """``metrics.image_stats`` of one result, or None when its output or uncertainty
    holds NaN/Inf."""
    unc = res.uncertainty
    if not (np.all(np.isfinite(res.output)) and np.all(np.isfinite(unc))):
        return None
    return metrics.image_stats(unc, res.output, target, sigma, grid, baseline,
                               res.image_axes, res.uncertainty_axes)


def _nan_stats(res, target) -> list:
    """The per-image entry of a result left out of the metrics: NaN columns, its means."""
    return [{"method": {kind: {**{col: float("nan") for col in metrics.PER_IMAGE},
                               "mean_u": float(np.mean(res.uncertainty)),
                               "mean_e": float(np.mean(metrics.error_map(res.output, target,
                                                                         kind)))}
                        for kind in metrics.ERRORS}}]


def _image_items(pair, found: list, notes: dict) -> list:
    """One entry of ``images`` per image of the result (its batch)."""
    items = []
    for i, stats_i in enumerate(found):
        item = {"name": pair.name if len(found) == 1 else f"{pair.name}[{i}]",
                "input": pair.source}
        # The means of its channel-mean maps are the image's means.
        item.update(mean_uncertainty=stats_i["method"]["l1"]["mean_u"],
                    mean_l1=stats_i["method"]["l1"]["mean_e"],
                    mean_l2=stats_i["method"]["l2"]["mean_e"])
        for kind in metrics.ERRORS:
            for col in metrics.PER_IMAGE:
                item[f"{col}_{kind}"] = stats_i["method"][kind][col]
        if stats_i.get("flat_output"):
            notes.setdefault("flat_output", (
                "the output's channel mean is constant over the image (e.g. class "
                "probabilities summing to 1): no local-centre-of-mass blocks and no "
                "baseline row for it (use --block-grid for blocks)"))
        items.append(item)
    return items


def _eval_picture(out_dir, pair, res, err, items, written) -> None:
    """Write ``NAME.eval.png`` of one result; note it in its ``items`` and ``written``."""
    meta = res.metadata or {}
    path = os.path.join(out_dir, f"{pair.name}.eval.png")
    what = UNITS["entropy" if res.variance is None else "variance"]
    shape = eval_picture(path, res.output, err, res.uncertainty, res.image_axes,
                         res.uncertainty_axes, what, f"{pair.name}: {method_words(meta)}")
    if shape is not None:
        written.append(path)
        for item in items:
            item["picture"] = path
            item["picture_map"] = list(shape)  # [H, W] of the maps drawn


def _with_notes(result: dict, notes: dict) -> dict:
    """``result`` with its ``notes`` (a list of lines) when there are any."""
    if "non_finite" in notes:
        names = notes.pop("non_finite")
        notes["non_finite"] = (
            f"{len(names)} image(s) have NaN/Inf in the output or the uncertainty and are "
            f"left out of the metrics: {', '.join(names[:5])}"
            f"{' ...' if len(names) > 5 else ''} (the model or the perturbation overflows "
            "there: lower the level or perturb elsewhere)")
    if notes:
        result["notes"] = list(notes.values())
    return result


def crop_target(target: np.ndarray, output: np.ndarray):
    """``target`` cropped (centered) to ``output``'s shape where it is larger.

    With ``--pad P`` below a valid-convolution model's border the output lacks
    part of the border; the target's matching border is cut away (an odd excess
    loses one more row or column at the end).

    Args:
        target: the target array, shaped like the output or larger on some axes.
        output: the model's output.

    Returns:
        (target, original target shape or None when nothing was cropped).
    """
    target = np.asarray(target)
    if target.shape == np.shape(output) or target.ndim != np.ndim(output) or \
            any(t < o for t, o in zip(target.shape, np.shape(output))):
        return target, None  # equal, or not a crop: error_map names the mismatch
    index = tuple(slice((t - o) // 2, (t - o) // 2 + o) for t, o in
                  zip(target.shape, np.shape(output)))
    return target[index], target.shape


def eval_picture(path, output, error, uncertainty, axes=None, u_axes="same",
                 what: str = UNITS["variance"],
                 title: str | None = None) -> tuple | None:
    """``NAME.eval.png``: the output drawn as an image (1 or 3 channels; other outputs as
    their channel-mean map with a colour bar), the L1 error map and the uncertainty
    map, each with a title and a colour bar with its units. Returns the
    maps' (H, W), or None (nothing written) when the output has no image axes or the
    maps differ in size.

    Args:
        path: the .png file.
        output, error, uncertainty: arrays shaped like the output (the uncertainty
            without the class axis for an entropy map).
        axes, u_axes: the (h, w) axes as ``results.map_axes`` gives them (None:
            guessed; ``u_axes`` "same": the output's).
        what: the uncertainty's name and units, for its colour bar.
        title: the figure's title.
    """
    from .plots import output_cell, panels

    maps = [spatial_map(error, axes),
            spatial_map(uncertainty, axes if u_axes == "same" else u_axes)]
    shown = output_cell(output, axes)
    if shown is None or any(m is None for m in maps) or \
            len({np.shape(shown[1])[:2], maps[0].shape, maps[1].shape}) > 1:
        return None
    panels(path, [[shown, ("map", maps[0], "|output - target| (output units)"),
                   ("map", maps[1], what)]],
           ["output", "error (L1, channel mean)",
            what.split(",")[0] + ("" if what.startswith("entropy") else " (channel mean)")],
           title)
    return maps[0].shape


SHOWN = ("pixel", "block", "mean", "ause", "aurg")  # the text table's columns
POOLED = ("pixel_pooled", "block_pooled")  # printed below it


def _cell(value, iv=None) -> str:
    text = "n/a" if value is None or value != value else f"{value:.4f}"
    if iv and None not in iv:
        text += f" [{iv[0]:.3f}, {iv[1]:.3f}]"
    return text


def format_table(table: dict) -> str:
    """The metrics table as aligned text: per-image columns with their intervals, a
    baseline row per error kind, pooled numbers below, the block scale and what
    the baseline is."""
    width = 27 if "intervals" in table else 11  # "-0.1811 [-0.255, -0.104]" fits
    lines = [f"{'error':<13}" + "".join(f"{c:>{width}}" for c in SHOWN)]
    for kind in metrics.ERRORS:
        rows = [("", table)] + ([("baseline", table["baseline"])] if "baseline" in table
                                else [])
        for label, src in rows:
            ivs = src.get("intervals", {}).get(kind, {})
            lines.append(f"{(kind.upper() + ' ' + label):<13}" + "".join(
                f"{_cell(src[kind][c], ivs.get(c)):>{width}}" for c in SHOWN))
    n = table["images"]
    head = (f"({n} image{'' if n == 1 else 's'}; pixel, block, AUSE, AURG: per image, then "
            "averaged; mean: over the images' means")
    if "bootstrap" in table:
        b = table["bootstrap"]
        head += (f"; [{100 * b['level']:g}% bootstrap interval over images, {b['resamples']} "
                 f"resamples, seed {b['seed']}]")
    lines.append(head + ")")
    for kind in metrics.ERRORS:
        lines.append(f"{kind.upper()} pooled over all pixels of all images: " + ", ".join(
            f"{c} {_cell(table[kind][c], metrics.interval(table, c, kind))}" for c in POOLED))
    spearman = [f"{kind.upper()} " + _cell(table[kind]["pixel_spearman"],
                                            metrics.interval(table, "pixel_spearman", kind))
                for kind in metrics.ERRORS]
    lines.append("Spearman rank correlation per image, averaged: " + ", ".join(spearman))
    skipped = {k: v for k, v in table.get("skipped", {}).items() if v}
    if skipped:
        lines.append("images left out of the per-image means (their error is constant): " +
                     ", ".join(f"{k.upper()} {v}" for k, v in skipped.items()))
    scale = (f"squares {table['block_grid']} px on a side (--block-grid)"
             if table.get("block_grid") is not None else
             f"local centre of mass at --block-sigma {table['block_sigma']:g}")
    lines.append(f"blocks: {scale} (block correlation depends on the block scale: compare "
                 "at one scale)")
    if "baseline" in table:
        lines.append("baseline: " + table["baseline"]["map"])
        lines += _versus_baseline(table)
    if "tolerability" in table:
        lines.append(tolerability_line(table["tolerability"]))
    return "\n".join(lines)


def tolerability_line(t: dict) -> str:
    """One line for ``metrics.tolerability``'s dict: the mean absolute change of the mean
    output and its share of the output's mean magnitude (in words when the output is 0
    everywhere, where that share is undefined)."""
    rel = t["relative_change"]
    share = (f"{100 * rel:.2f}% of mean |output|" if np.isfinite(rel) else
             "the output is 0 everywhere: no relative change")
    return f"tolerability: mean |mean - output| = {t['mean_abs_change']:.4g} ({share})"


def _versus_baseline(table: dict) -> list:
    """One line: does the method beat the baseline on the primary number, separated?"""
    kind, col = "l1", "pixel"
    ours, base = table[kind][col], table["baseline"][kind][col]
    if ours != ours or base != base:
        return []
    apart = metrics.separated(metrics.interval(table, col, kind),
                              metrics.interval(table, col, kind, baseline=True))
    verdict = "above" if ours > base else "below"
    how = "" if apart is None else (" (intervals apart: separated)" if apart else
                                    " (intervals overlap: not separated)")
    return [f"pixel L1: {ours:.4f} vs baseline {base:.4f}: {verdict} the baseline{how}"]


def table_csv(table: dict) -> str:
    """The metrics table as CSV: one row per (error kind, map), every column with its
    interval's low and high (empty without bootstrap)."""
    cols = metrics.COLUMNS
    head = ["error", "map"] + [x for c in cols for x in (c, c + "_low", c + "_high")]
    rows = [",".join(head)]

    def fmt(v):
        return "" if v is None or v != v else f"{v:.6g}"

    for kind in metrics.ERRORS:
        maps = [("method", table)] + ([("baseline", table["baseline"])]
                                      if "baseline" in table else [])
        for label, src in maps:
            ivs = src.get("intervals", {}).get(kind, {})
            cells = [kind, label]
            for c in cols:
                iv = ivs.get(c) or [None, None]
                cells += [fmt(src[kind][c]), fmt(iv[0]), fmt(iv[1])]
            rows.append(",".join(cells))
    return "\n".join(rows) + "\n"


def write_evaluation(out_dir: str, result: dict, pictures: bool = True) -> list:
    """Write metrics.json (``result``, as ``evaluate`` returns it), metrics.csv
    (``table_csv``) and, when ``result`` assesses a calibration and ``pictures``,
    reliability.png (``plots.reliability_picture``) into ``out_dir``, each atomically;
    return their paths (an OSError when the folder cannot be written)."""
    js, csv = os.path.join(out_dir, "metrics.json"), os.path.join(out_dir, "metrics.csv")
    written = [js, csv]
    if result.get("calibration") and pictures:
        from .plots import reliability_picture

        written.append(os.path.join(out_dir, "reliability.png"))
        reliability_picture(written[-1], result["calibration"],
                            f"calibration {result['calibration']['file']} on "
                            f"{len(result['images'])} held-out image(s): "
                            f"{method_words(result['metadata'] or {})}")
    save_json(js, result)
    atomic_write_bytes(csv, table_csv(result["table"]).encode())
    return written


__all__ = ["Pair", "make_pairs", "evaluate", "calibrate_pairs", "crop_target", "format_table", "table_csv",
           "write_evaluation",
           "eval_picture", "output_image"]
