"""Files a person can open: per-input .npz and variance heatmap, and a run summary."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from .errors import TfueError
from .files import save_json, save_npz
from .io import IMAGE_EXTS, load_input, spatial_map
from .names import VERSION as __version__
from .plots import UNITS
from .results import map_axes


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def write_weights(out_dir: str, stem: str, result, weights) -> str:
    """Write ``stem``.weights.npy: ``weights`` (a ``weights.LossWeights``) of the primary
    output's variance map (float32, the output's shape); return its path.

    Raises:
        TfueError: the result has no variance (``--method entropy``).
    """
    from .files import atomic_write

    if result.variance is None:
        raise TfueError("loss weights come from a variance map; --method entropy has none",
                        "drop --weights, or use a sampling method")
    w = weights(result.variance)
    path = os.path.join(out_dir, stem + ".weights.npy")
    atomic_write(path, lambda f: np.save(f, w))
    return path


def plain_fields(settings) -> dict:
    """A settings dataclass (io.ImageOptions, weights.LossWeights) as plain JSON data:
    what a result records of how it was made, compared when a run resumes."""
    return json.loads(json.dumps(dataclasses.asdict(settings)))


def planned_files(out_dir: str, files) -> list:
    """Every file a run over ``files`` may write (to refuse overwriting up front)."""
    planned = [os.path.join(out_dir, "summary.json")]
    for f in files:
        planned += [os.path.join(out_dir, _stem(f) + suffix) for suffix in
                    (".npz", ".variance.png", ".entropy.png", ".overlay.png", ".weights.npy")]
    return planned


ARRAY_KEYS = ("output", "mean", "variance", "samples", "entropy", "mutual_information",
              "class_variance", "expected_error", "lower", "upper")


def result_arrays(result) -> dict:
    """The arrays stored in NAME.npz, each once: output/mean/variance (and entropy...) of
    the primary output (the first with statistics, ``metadata["primary"]``) under plain
    keys, every other output under ``<output name>.output`` etc."""
    arrays = {}
    primary = result.primary
    for name, s in result.outputs.items():
        for key in ARRAY_KEYS:
            value = getattr(s, key)
            if value is not None:
                arrays[key if name == primary else f"{name}.{key}"] = value
    return arrays


def read_result(path):
    """A result written by ``tfue run`` (``NAME.npz``) read back as a ``Result``.

    Args:
        path: the .npz file.

    Returns:
        results.Result: ``.outputs`` (output name -> OutputStats: ``output``, ``mean``,
        ``variance`` ... as stored, float arrays shaped like the model's output,
        variance in squared output units) and ``.metadata`` (the run's settings: method,
        location, level, N, seed, strategy, provider, ``primary``, ``input``, ...), so
        ``.variance`` and ``.image_axes`` work as on the result of a run.

    Raises:
        TfueError: the file cannot be read or is not a tfue result.
    """
    from .results import OutputStats, Result

    if not os.path.isfile(path):
        raise TfueError(f"result file '{path}' does not exist", "check the path")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("metadata")))
        primary = meta["primary"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TfueError(f"'{path}' is not a result tfue wrote ({type(exc).__name__}: {exc})",
                        "give a NAME.npz from 'tfue run'") from None
    fields = {}
    for key, value in arrays.items():
        name, _, part = key.rpartition(".")
        if not name or part not in ARRAY_KEYS:  # a plain key: the primary output's
            name, part = primary, key
        fields.setdefault(name, {})[part] = value
    if primary not in fields or any("output" not in f for f in fields.values()):
        raise TfueError(f"'{path}' is not a result tfue wrote (an output is missing)",
                        "give a NAME.npz from 'tfue run'")
    outputs = {primary: OutputStats(**fields.pop(primary))}  # first, as in the run
    outputs.update({name: OutputStats(**f) for name, f in fields.items()})
    return Result(outputs, meta)


def write_result(out_dir: str, stem: str, result, source: str, compress: bool = False,
                 pictures=None, feeds=None) -> dict:
    """Write ``stem``.npz and its uncertainty picture; return the input's summary (its
    ``files``, mean variance ..., and when the output has a map ``heatmap_shape``
    [H, W], ``heatmap_range`` [min, max] and ``heatmap_max``).

    Args:
        out_dir, stem: where, and the input's name.
        result: the run's Result; source: the input file.
        compress: deflate the .npz (smaller, much slower to write).
        pictures: a ``Pictures`` (a run's colour scale and overlay); None: the picture
            is drawn now on its own scale, without overlay.
        feeds: the model inputs, for an overlay when ``source`` is not an image.
    """
    meta = {**result.metadata, "input": source, "primary": result.primary,
            "tfue_version": __version__}
    npz = os.path.join(out_dir, stem + ".npz")
    save_npz(npz, result_arrays(result), meta, compress)
    item = {"input": source, "files": [npz], **_means(result.outputs[result.primary]),
            "max_variance": None if result.variance is None else float(np.max(result.variance)),
            "outputs": {name: {"shape": list(s.output.shape), **_means(s)}
                        for name, s in result.outputs.items()}}
    if "spatial_axes" in meta:
        item["spatial_axes"] = meta["spatial_axes"]
    overlay = pictures is not None and pictures.overlay
    shown = picture_of(result, stem, feeds if overlay else None, source if overlay else None)
    if shown is not None:
        m = shown["map"]
        item.update(heatmap_max=float(np.nanmax(m)) if np.isfinite(m).any() else None,
                    heatmap_shape=list(m.shape), heatmap_range=shown["extent"])
        if pictures is None:
            item["files"] += draw(out_dir, shown)
        else:
            pictures.add(item, shown)
    return item


class Pictures:
    """How a run draws its pictures (``tfue run --shared-scale``, ``--overlay``).

    With ``shared_scale`` every map of the run is drawn on one colour range, from the
    lowest of their display ranges to the highest (``plots.display_range``: minimum to
    99.5th percentile of each), so the pictures are drawn when the run ends
    (``finish``): each map is read back from its NAME.npz then, and only the overlay's
    background (uint8 [H, W, 3]) is held meanwhile. Otherwise each is drawn at once on
    its own range.
    """

    def __init__(self, out_dir: str, shared_scale: bool = False, overlay: bool = False,
                 drawn: bool = True):
        self.out_dir, self.shared_scale, self.overlay = out_dir, shared_scale, overlay
        self.drawn = drawn  # False (--no-pictures): only the .npz files are written
        self.kept = []

    def add(self, item: dict, shown: dict) -> None:
        """Draw ``shown`` (``picture_of``) now, or keep what ``finish`` needs to draw it;
        its files go into ``item["files"]`` (the first being its NAME.npz)."""
        if not self.drawn:
            return
        if not self.shared_scale:
            item["files"] += draw(self.out_dir, shown, overlay=self.overlay)
            return
        bg = shown["background"]
        self.kept.append((item, shown["stem"], shown["range"], None if bg is None else
                          np.round(bg * 255).astype(np.uint8)))

    def finish(self) -> dict:
        """Draw the kept pictures on the shared range; return the summary's
        ``color_scale``: {"shared": bool, "range": [vmin, vmax] (shared only, None
        when no map had a finite value), "overlay": bool}."""
        if not self.drawn:
            return {"drawn": False}
        if not self.shared_scale:
            return {"shared": False, "overlay": self.overlay}
        ranges = [r for _, _, r, _ in self.kept if r is not None]
        vrange = [min(r[0] for r in ranges), max(r[1] for r in ranges)] if ranges else None
        for item, stem, _, bg in self.kept:
            shown = picture_of(read_result(item["files"][0]), stem)
            shown["background"] = None if bg is None else bg / 255.0
            item["files"] += draw(self.out_dir, shown, vrange, self.overlay)
        self.kept = []
        return {"shared": True, "range": vrange, "overlay": self.overlay}




def picture_of(result, stem: str, feeds=None, source: str | None = None) -> dict | None:
    """What ``stem``.variance.png (or .entropy.png) shows of ``result``: None when the
    primary output has no uncertainty map (no image axes, or a vector).

    Args:
        result: a run's Result.
        stem: the input's name.
        feeds: the model's inputs (name -> array), for the overlay's background when
            ``source`` is not an image file; None: no overlay from them.
        source: the input file.

    Returns:
        {"stem", "kind" ("variance" or "entropy"), "map" ([H, W] float64, the channel
        mean of the uncertainty: squared output units, or nats), "range" (the colours'
        [min, 99.5th percentile]: ``plots.display_range``), "extent" ([min, max] of its
        finite values; both None when none is finite), "label" (name and units), "title" (output name,
        method, location, level, N), "output" (a ``plots.panels`` cell, or None),
        "background" ([H, W, 3] in [0, 1]: the input at the map's size, or None)}.
    """
    from .plots import display_range, method_words, output_cell

    kind = "variance" if result.variance is not None else "entropy"
    if result.uncertainty is None:
        return None
    m = spatial_map(result.uncertainty, map_axes(result, kind))
    if m is None:
        return None
    finite = m[np.isfinite(m)]
    out_axes = map_axes(result, "variance")
    shown = output_cell(result.output, out_axes)
    if shown is not None and np.shape(shown[1])[:2] != m.shape:
        shown = None
    return {"stem": stem, "kind": kind, "map": m, "label": UNITS[kind],
            "range": display_range(m),
            "extent": [float(finite.min()), float(finite.max())] if finite.size else None,
            "title": f"{stem}: {kind} of output '{result.primary}', "
                     f"{method_words(result.metadata)}",
            "output": shown,
            "background": None if feeds is None and source is None else
            _background(source, feeds, m.shape)}


def _background(source, feeds, shape) -> np.ndarray | None:
    """The input as a picture of ``shape`` (H, W): the image file itself, else the first
    model input when it is an image of 1 or 3 channels (``plots.output_image``);
    [H, W, 3] float64 in [0, 1], or None."""
    from PIL import Image

    from .io import open_image
    from .plots import output_image

    if source is not None and source.lower().endswith(IMAGE_EXTS):
        im = open_image(source).convert("RGB")
    else:
        arr = next(iter(feeds.values()), None) if feeds else None
        pic = None if arr is None or np.asarray(arr).dtype.kind not in "fiu" else \
            output_image(arr)
        if pic is None:
            return None
        im = Image.fromarray(np.round(pic * 255).astype(np.uint8)).convert("RGB")
    if im.size != (shape[1], shape[0]):
        im = im.resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(im, dtype=np.float64) / 255.0


def draw(out_dir: str, shown: dict, vrange=None, overlay: bool = False) -> list:
    """Write ``NAME.<kind>.png`` (output | map with its colour bar; ``plots.map_picture``)
    and, with ``overlay`` and a background, ``NAME.overlay.png``; return their paths.

    Args:
        out_dir: the folder.
        shown: ``picture_of``'s dict.
        vrange: the colour range shared by a run's pictures (vmin, vmax); None: the
            map's own (the title says which).
        overlay: also draw the map over the input.
    """
    from .plots import map_picture, overlay_picture

    scale = "one colour scale for every picture in this folder" if vrange is not None else \
        "colour scale of this image"
    title = f"{shown['title']}\n{scale}"
    rng = tuple(vrange) if vrange is not None else shown["range"]
    png = os.path.join(out_dir, f"{shown['stem']}.{shown['kind']}.png")
    map_picture(png, shown["map"], shown["label"], title, shown["output"], rng)
    written = [png]
    if overlay and shown["background"] is not None:
        over = os.path.join(out_dir, f"{shown['stem']}.overlay.png")
        overlay_picture(over, shown["background"], shown["map"], shown["label"], title, rng)
        written.append(over)
    return written


def _means(s) -> dict:
    """Means of an output's uncertainty arrays, for summaries."""
    means = {"mean_variance": None if s.variance is None else float(np.mean(s.variance))}
    for key in ("entropy", "mutual_information", "class_variance", "expected_error"):
        value = getattr(s, key)
        if value is not None:
            means[f"mean_{key}"] = float(np.mean(value))
    if s.lower is not None:
        means["mean_interval_width"] = float(np.mean(s.upper.astype(np.float64) - s.lower))
    return means


def _unchanged(result) -> bool:
    """Whether a gray-box result at a level above 0 has a variance of exactly 0 in every
    output: the perturbation reached no output value."""
    from .perturb import SAMPLED

    meta = result.metadata
    if meta.get("method") not in {spec.method for spec in SAMPLED} or meta.get("level") == 0:
        return False
    variances = [s.variance for s in result.outputs.values() if s.variance is not None]
    return bool(variances) and all(not np.any(v) for v in variances)


def non_finite(result) -> dict:
    """Counts of NaN/Inf values per output and array, only where there are some, and
    where they come from.

    ``output`` is the unperturbed output (the plain model's own): its NaN/Inf come
    from the model on this input, and carry into the mean and variance. Elements
    whose unperturbed value is finite but whose mean or variance is not were made
    non-finite by the perturbation.

    Returns:
        ``{output name: {"output": n, "mean": n, "variance": n, ..., "from_model": n,
        "from_perturbation": m}}``: per array (only those with NaN/Inf), then
        ``from_model`` (elements already NaN/Inf in the unperturbed output) and
        ``from_perturbation`` (elements finite there, NaN/Inf in mean or variance).
    """
    found = {}
    for name, s in result.outputs.items():
        counts = {}
        for key in ("output", "mean", "variance", "entropy", "mutual_information"):
            value = getattr(s, key)
            if value is None or np.asarray(value).dtype.kind not in "fc":
                continue
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            if bad:
                counts[key] = bad
        if counts:
            counts["from_model"] = counts.get("output", 0)
            counts["from_perturbation"] = _made_non_finite(s, counts)
            found[name] = counts
    return found


def _made_non_finite(s, counts: dict) -> int:
    """Elements finite in the unperturbed output and NaN/Inf in its mean or variance."""
    out = np.asarray(s.output)
    clean = np.isfinite(out) if out.dtype.kind in "fc" else np.ones(out.shape, bool)
    made = np.zeros(out.shape, bool)
    compared = False
    for key in ("mean", "variance"):
        value = getattr(s, key)
        if value is not None and np.shape(value) == out.shape:
            made |= clean & ~np.isfinite(value)
            compared = True
    if compared:
        return int(np.count_nonzero(made))
    # No array of the output's shape (entropy maps): non-finite values beside a clean
    # output were made by the perturbation (or the statistics of its samples).
    others = [n for k, n in counts.items() if k != "output"]
    return 0 if counts.get("output") else max(others, default=0)


def _non_finite_warning(path: str, found: dict, result) -> str:
    parts, model, perturbed = [], 0, 0
    for name, counts in found.items():
        size = int(np.size(result.outputs[name].output))
        arrays = {k: n for k, n in counts.items() if k not in ("from_model", "from_perturbation")}
        causes = []
        if counts["from_model"]:
            causes.append(f"{counts['from_model']} already in the unperturbed output")
        if counts["from_perturbation"]:
            causes.append(f"{counts['from_perturbation']} made by the perturbation")
        parts.append(f"output '{name}': " + ", ".join(f"{n} of {size} {key} values"
                                                      for key, n in arrays.items())
                     + (f" ({', '.join(causes)})" if causes else ""))
        model += counts["from_model"]
        perturbed += counts["from_perturbation"]
    text = f"{path}: NaN or Inf in the results ({'; '.join(parts)}); "
    if model and not perturbed:
        return text + ("the model's own (unperturbed) output on this input already holds "
                       "them, so its mean and variance do too: the input or the model makes "
                       "them (plain onnxruntime gives the same), not the perturbation")
    method = (result.metadata or {}).get("method")
    why = "(the model overflows, or a Log/Sqrt/division leaves its domain): " + (
        "use another --transforms set" if method == "transform" else
        "check each member on this input" if method == "ensemble" else
        "lower --rate or choose other Dropout nodes (--at)" if method == "mc-dropout" else
        "lower --sigma/--rate or perturb elsewhere (--at)")
    if model:
        return text + (f"{model} come from the model's own (unperturbed) output on this "
                       f"input; the perturbation makes {perturbed} more {why}")
    return text + f"the perturbation makes them {why}"


LARGE_N = 1000  # from this N on, a run is timed up front and the estimate said


# Inputs read for the up-front check are kept for the run up to this many bytes in all
# (beyond it they are read again when their turn comes).
KEEP_READ_BYTES = 512 * 1024**2


def _estimate(estimator, feeds, inputs: int) -> str | None:
    """For large N, how long the run will take: one plain model run, timed, times N."""
    import time

    n = getattr(estimator, "samples", 0) or 0
    if n < LARGE_N:
        return None
    t0 = time.perf_counter()
    estimator.reference(feeds)
    one = time.perf_counter() - t0
    total = one * n * inputs
    when = ("under a second" if total < 1 else f"{total:.0f} s" if total < 120 else
            f"{total / 60:.0f} min" if total < 7200 else f"{total / 3600:.1f} h")
    return (f"N = {n} samples x {inputs} input(s): one plain model run takes {one * 1e3:.3g} ms, "
            f"so expect roughly {when} of sampling (N runs per input; --samples 64 is "
            "usually enough)")


def _check_kept_samples(estimator, feeds) -> None:
    """Refuse to keep N samples of every output in memory when they exceed max_memory."""
    if not getattr(estimator, "keep_samples", False):
        return

    per_sample = sum(int(np.asarray(v).nbytes) for v in estimator.reference(feeds).values())
    total = per_sample * estimator.samples
    if total > estimator.max_memory:
        raise TfueError(f"keeping the samples (--save-samples) would hold N = "
                        f"{estimator.samples} x {per_sample / 2**20:.3g} MiB = "
                        f"{total / 2**30:.3g} GiB in memory, above --max-memory "
                        f"({estimator.max_memory / 2**30:.3g} GiB)",
                        "use fewer --samples, drop --save-samples, or raise --max-memory")


def run_inputs(estimator, files, out_dir, options, progress=None, note=None,
               compress: bool = False, started: float | None = None,
               sample_progress=None, shared_scale: bool = False,
               overlay: bool = False, pictures: bool = True, weights=None,
               calibration=None) -> dict:
    """Run ``estimator`` on every input file, write results, return the run summary.

    The output folder is created only when the first result is written, so a run
    refused on the way leaves nothing behind. A result with NaN or Inf values is
    still written; it is counted in the input's ``non_finite`` and in the summary's
    ``warnings`` (one line per input, also passed to ``note``). A gray-box result whose
    variance is exactly 0 everywhere at a level above 0 gets a line in ``notes``.

    Args:
        estimator, files: the Estimator to run; input files (images, .npy, .npz).
        out_dir, options: the output folder (made when needed); ImageOptions for images.
        progress: wraps the file list for display (e.g. a progress bar).
        note: called with a line for the user (large-N time estimate, warnings).
        compress: deflate the .npz files (``--compress``).
        started: ``time.perf_counter()`` at the caller's start (default: now).
        sample_progress: ``sample_progress(path)`` gives the ``progress(done, total)``
            callback for that input's samples (or None), for long inputs.
        shared_scale: one colour range for every NAME.variance.png (``--shared-scale``).
        overlay: also write NAME.overlay.png, the map over the input (``--overlay``).
        pictures: False writes the .npz files only (``--no-pictures``; BENCHMARKS.md).
        weights: a ``weights.LossWeights``: also NAME.weights.npy (``--weights``).
        calibration: a ``calibration.CalibrationFile``: each result gains expected_error,
            lower and upper (``--calibration``; checked against the run first).

    Returns:
        The run summary (also written to ``out_dir``/summary.json); ``timing``: wall
        seconds, ``startup_s`` (from ``started`` to the first sample: loading, building
        and verifying the graph, or reading it from the cache), ``sampling_s``
        (the estimator's runs, the unperturbed output and any autotune trial
        included), ``writing_s`` (result files and pictures) and ``total_s``;
        ``color_scale`` says how the pictures were scaled (``Pictures.finish``).

    Raises:
        TfueError: an input cannot be read or run, or the folder cannot be written.
    """
    import time

    from .files import cleanup_out_dir

    started = time.perf_counter() if started is None else started
    note = note or (lambda line: None)
    kept = _read_inputs(estimator, files, options, note)
    run = _Run(estimator, out_dir, note, Pictures(out_dir, shared_scale, overlay, pictures),
               compress, weights, calibration, options)
    with cleanup_out_dir(out_dir):
        for k, path in enumerate(progress(files) if progress else files):
            feeds = kept[k] if kept[k] is not None else \
                load_input(path, estimator.info.inputs, options)
            kept[k] = None
            run.startup = time.perf_counter() - started if run.startup is None else run.startup
            run.one(path, feeds, sample_progress(path) if sample_progress else None)
        summary = run.summary(started)
    save_json(os.path.join(out_dir, "summary.json"), summary)
    return summary


def _read_inputs(estimator, files, options, note) -> list:
    """Read and check every input before the long work starts, so a bad one fails the
    run at once and no result of it is half-written; prepare the estimator on the first
    and say the time a large N takes. Returns the feeds of each file, kept for the run
    up to KEEP_READ_BYTES in all (None beyond: read again when their turn comes)."""
    first, kept, held = None, [], 0
    for path in files:
        feeds = load_input(path, estimator.info.inputs, options)
        try:
            feeds = estimator.check_feeds(feeds)
        except TfueError as exc:  # which of the inputs it is
            raise exc.about(path) from exc
        first = feeds if first is None else first
        held += sum(int(np.asarray(v).nbytes) for v in feeds.values())
        kept.append(feeds if held <= KEEP_READ_BYTES else None)
    estimator.prepare(first)  # verified on the first input before any work is reported
    _check_kept_samples(estimator, first)
    estimate = _estimate(estimator, first, len(files))
    if estimate:
        note(estimate)
    return kept


class _Run:
    """The state of one ``run_inputs``: per-input items, warnings, notes and timing."""

    def __init__(self, estimator, out_dir, note, pictures, compress, weights=None,
                 calibration=None, options=None):
        self.estimator, self.out_dir, self.note = estimator, out_dir, note
        self.pictures, self.compress, self.weights = pictures, compress, weights
        self.calibration, self.options = calibration, options
        self.items, self.warnings, self.notes, self.meta = [], [], [], None
        self.startup, self.sampling, self.writing = None, 0.0, 0.0

    def one(self, path: str, feeds: dict, progress_of) -> None:
        """Run one input, write its files, and record what it says."""
        import time

        from .files import prepare_out_dir

        t0 = time.perf_counter()
        result = self.estimator(feeds, progress=progress_of)
        if self.calibration is not None:
            result = self.calibration.apply(result)
        result.metadata = {**result.metadata, **self._recorded(path, result.metadata)}
        t1 = time.perf_counter()
        self.meta = meta = result.metadata
        prepare_out_dir(self.out_dir)
        item = write_result(self.out_dir, _stem(path), result, path, self.compress,
                            self.pictures, feeds)
        if self.weights is not None:
            item["files"].append(write_weights(self.out_dir, _stem(path), result,
                                               self.weights))
        # How this input ran (the run's top-level fields are the last input's).
        item["chunks"] = meta.get("chunks")
        tune = meta.get("autotune")
        if tune:
            item["autotune"] = {k: tune.get(k) for k in ("chunk", "threads", "how")}
        self.sampling += t1 - t0
        self.writing += time.perf_counter() - t1
        found = non_finite(result)
        if found:
            item["non_finite"] = found
            self.warnings.append(_non_finite_warning(path, found, result))
            self.note("warning: " + self.warnings[-1])
        elif _unchanged(result):
            self.notes.append(f"{path}: the variance is exactly 0 everywhere: the "
                              f"perturbation at {meta.get('at')} changes no output here (it "
                              "may feed only a branch or state the outputs do not use); "
                              "pick another location (--at)")
            self.note("note: " + self.notes[-1])
        self.items.append(item)

    def _recorded(self, path: str, meta: dict) -> dict:
        """What a result file records beside the run's settings, so that a later run can
        tell whether it may resume from it: the input's real path, the model's (and
        members') SHA-256 at the time, how an image was read, the loss-weight settings."""
        from .calibration import model_digest

        found = {"input_realpath": os.path.realpath(path),
                 "model_sha256": model_digest(meta.get("model"))}
        if meta.get("members"):
            found["members_sha256"] = [model_digest(m) for m in meta["members"]]
        if self.options is not None and path.lower().endswith(IMAGE_EXTS):
            found["image_options"] = plain_fields(self.options)
        if self.weights is not None:
            found["loss_weights"] = plain_fields(self.weights)
        return found

    def summary(self, started: float) -> dict:
        """Draw the pictures kept for a shared scale; return the run summary: the last
        input's settings, the inputs, how ``--at auto`` chose, warnings and notes, the
        colour scale and the timing (wall seconds since ``started``)."""
        import time

        t0 = time.perf_counter()
        color_scale = self.pictures.finish()
        self.writing += time.perf_counter() - t0
        summary = {"tfue_version": __version__, **self.meta, "inputs": self.items,
                   "color_scale": color_scale}
        summary.pop("input", None)
        summary["location"] = summary.pop("at", None)
        if getattr(self.estimator, "auto_choice", None):
            summary["at_auto"] = self.estimator.auto_choice  # how --at auto chose
        if self.warnings:
            summary["warnings"] = self.warnings
        if self.notes:
            summary["notes"] = self.notes
        if self.calibration is not None:
            c = self.calibration
            summary["calibration"] = {"file": c.path, "coverage": c.fit.coverage, "q": c.fit.q,
                                      "output": c.output}
        summary["timing"] = {"startup_s": round(self.startup, 4),
                             "sampling_s": round(self.sampling, 4),
                             "writing_s": round(self.writing, 4),
                             "total_s": round(time.perf_counter() - started, 4)}
        return summary
