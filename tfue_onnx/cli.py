"""The ``tfue`` command line: a thin click shell over the Python API.

Every TfueError becomes one line on stderr ("error: ... Hint: ...") and exit
code 2. Heavy modules load inside the commands, so ``tfue --help`` is instant.

Exit codes: 0 done; 2 refused (bad input or model; nothing written, an output
folder tfue would have made is not left behind); 3 ``run`` finished and wrote
every result, but some results hold NaN or Inf (the model overflows under the
perturbation, or its own unperturbed output already holds them: the warning says
which): a warning line per input on stderr, counts in summary.json; 4 (``--engine ray``)
some inputs failed: each listed on stderr (and in summary.json's ``failures``), the
others done.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from .errors import ArgumentError, TfueError
from .names import (CHANNEL_ORDERS, LAYOUTS, METHODS, RANK_SCORES, SIGMA_MODES, STRATEGIES,
                    WEIGHT_FORMULAS)
from .session import PROVIDERS

EXIT_USAGE = 2
EXIT_NON_FINITE = 3


def _fail(exc: TfueError):
    click.echo(f"error: {exc.cli_text()}", err=True)
    sys.exit(EXIT_USAGE)


_STARTED = time.perf_counter()  # the CLI's start, for the start-up time in summary.json


class _Group(click.Group):
    """Turns TfueError into one line and exit 2, wherever it is raised."""

    def invoke(self, ctx):
        _warn_about_onnxruntimes()  # (--help and --version exit before this)
        try:
            return super().invoke(ctx)
        except TfueError as exc:
            _fail(exc)
        except KeyboardInterrupt:  # Ctrl-C: files are whole or absent (atomic writes)
            click.echo("tfue: interrupted; every file written so far is complete", err=True)
            sys.exit(130)


def _warn_about_onnxruntimes() -> None:
    """One line on stderr when several onnxruntime builds share one install (they
    overwrite each other's files), with the commands that fix it."""
    from .session import conflicting_onnxruntimes

    both = conflicting_onnxruntimes()
    if both:
        names = " ".join(b.split()[0] for b in both)
        keep = "onnxruntime-gpu" if any(b.startswith("onnxruntime-gpu") for b in both) \
            else both[0].split()[0]
        click.echo(f"warning: {' and '.join(both)} are installed together and overwrite "
                   f"each other's files (onnxruntime may fail or lose its providers); fix: "
                   f"pip uninstall -y {names} && pip install {keep}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tfue-onnx", prog_name="tfue")
def main():
    """Training-free uncertainty for any ONNX model (Mi et al., AAAI 2022)."""


# --- inspect ------------------------------------------------------------------------------
def _shape(shape):
    return "?" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


@main.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@click.option("--all", "show_all", is_flag=True, help="List every candidate (default: a sample).")
def inspect(model, as_json, show_all):
    """Describe MODEL: inputs, outputs, opset, candidate locations, Dropout nodes."""
    from .model import inspect_model

    d = inspect_model(_models([model], "inspect")[0]).describe()
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"model   {d['path']}")
    click.echo(f"ir      {d['ir_version']}   opset {d['opset']}   producer {d['producer'] or '?'}")
    for kind in ("inputs", "outputs"):
        for t in d[kind]:
            click.echo(f"{kind[:-1]:<7} {t['name']}  {t['dtype']}  {_shape(t['shape'])}")
    cands = d["candidates"]
    click.echo(f"\n{len(cands)} candidate locations (use --at NAME, --at INDEX, --at input "
               "or --at 0.5 for a depth):")
    shown = cands if show_all or len(cands) <= 40 else _spread(cands, 30)
    click.echo(f"  {'index':>5}  {'depth':>5}  {'op':<18} {'shape':<26} name")
    last = -1
    for c in shown:
        if c["index"] != last + 1 and last >= 0:
            click.echo(f"  {'...':>5}")
        last = c["index"]
        mark = "  (graph output)" if c["is_output"] else ""
        click.echo(f"  {c['index']:>5}  {c['depth']:>5.2f}  {c['op']:<18} "
                   f"{_shape(c['shape']):<26} {c['name']}{mark}")
    if len(shown) < len(cands):
        click.echo(f"  ({len(cands) - len(shown)} more: --all lists every one)")
    click.echo(f"\n{len(d['dropouts'])} Dropout node(s)" + (":" if d["dropouts"] else
                                                           " (MC-dropout needs some; "
                                                           "infer-dropout does not)"))
    for dr in d["dropouts"]:
        ratio = "computed" if dr["ratio"] is None else f"{dr['ratio']:.6g}"  # float32 as read
        click.echo(f"  {dr['name']}  ratio {ratio}  input {dr['input']}")


def _spread(items, k):
    from .layout import evenly_spaced

    return evenly_spaced(items, k)


def _item_name(item) -> str:
    """What progress shows for an input: its file name (a path, or a pair's source)."""
    return os.path.basename(str(getattr(item, "source", item)))


class _progress:
    """A progress bar over inputs on stderr; within a long input it also shows the
    samples so far and an ETA (``samples``)."""

    made = []  # the bars made, last one current (the samples callback updates it)

    def __init__(self, items, label="sampling"):
        self.detail, self.shown = "", None
        self.bar = click.progressbar(items, label=label, file=sys.stderr,
                                     show_pos=True, item_show_func=self._show)
        _progress.made[:] = [self]

    def _show(self, item):
        if not item:
            return None
        if item is not self.shown:  # a new input: the last one's sample count goes
            self.shown, self.detail = item, ""
        return f"{_item_name(item)} {self.detail}".rstrip()

    def samples(self, path):
        """``progress(done, total)`` for ``path``'s samples, redrawing the bar."""
        def show(text):
            self.detail = text
            self.bar.render_progress()
        return _sample_counter(BAR_EVERY, show, last_too=True)

    def __iter__(self):
        with self.bar as bar:  # _show drops the last input's count when the item changes
            yield from bar


def _bar_samples(path):
    """The samples callback of the current terminal bar (see _progress.samples)."""
    return _progress.made[-1].samples(path) if _progress.made else None


def _lines(items, label="sampling"):
    """Progress where there is no terminal (logs, CI): one line per item on stderr."""
    items = list(items)
    for k, item in enumerate(items, 1):
        _say(f"tfue: {label} [{k}/{len(items)}] {_item_name(item)}", err=True)
        yield item


_QUIET = [False]  # --quiet of the command running (set by its option's callback)


def _say(text: str, err: bool = True, warning: bool = False) -> None:
    """A progress or information line on stderr; --quiet keeps only warnings."""
    if warning or not _QUIET[0]:
        click.echo(text, err=err)


def _set_quiet(ctx, param, value):
    _QUIET[0] = bool(value)
    return value


def _eta(elapsed: float, done: int, left: int) -> str:
    """" (ETA 1m05s)": the time ``left`` more steps take at the pace of the ``done`` ones
    (empty when nothing is left or nothing was timed)."""
    if left <= 0 or done <= 0:
        return ""
    rest = int(round(elapsed / done * left))
    text = f"{rest // 3600}h{rest % 3600 // 60:02d}m" if rest >= 3600 else \
        f"{rest // 60}m{rest % 60:02d}s" if rest >= 60 else f"{rest}s"
    return f" (ETA {text})"


SAMPLES_EVERY = 10.0  # seconds between the progress lines of one input's samples
# seconds between redraws of the terminal bar's sample count ($TFUE_BAR_EVERY: tests)
BAR_EVERY = float(os.environ.get("TFUE_BAR_EVERY", 0.25))


def _samples_said(path):
    """A ``progress(done, total)`` for one input's samples: a line on stderr at most
    every SAMPLES_EVERY seconds (long inputs show they are alive), with an ETA."""
    return _sample_counter(SAMPLES_EVERY, lambda text: _say(
        f"tfue: sampling {_item_name(path)}: {text}"), last_too=False)


def _sample_counter(every: float, show, last_too: bool):
    """``progress(done, total)`` calling ``show("{done}/{total} samples (ETA ..)")`` at
    most every ``every`` seconds from the first call's time; the last call (done ==
    total) too when ``last_too``, else never."""
    start = last = time.perf_counter()

    def count(done, total):
        nonlocal last
        now = time.perf_counter()
        if done >= total and not last_too:
            return
        if now - last < every and done < total:
            return
        last = now
        show(f"{done}/{total} samples" + _eta(now - start, done, total - done))
    return count


def _progress_for_stderr():
    if _QUIET[0]:
        return None
    return _progress if sys.stderr.isatty() else _lines


def _notes(est, verbose):
    if verbose:
        for note in est.notes:
            click.echo(f"tfue: {note}", err=True)


# --- option groups: declared once, shared by run, export, evaluate and sweep ----------------
def _pad_value(ctx, param, value):
    if value is None or value.strip().lower() == "auto":
        return None if value is None else "auto"
    try:
        return int(value)
    except ValueError:
        raise ArgumentError(f"--pad must be a number of pixels or auto, got {value!r}",
                            "e.g. --pad 7, or --pad auto to detect the border") from None


def _opt(*decls, **attrs) -> tuple:
    """One option's click declaration, kept as data so groups can share it."""
    return decls, attrs


class OptionGroup:
    """Options declared once and shared by commands, in the style of Polygraphy's
    ``tools/args`` groups: the group adds its options to a command (as a decorator), and
    ``take`` hands the parsed values to the function that builds the library object."""

    def __init__(self, *options):
        self.options = options

    def __call__(self, f):
        for decls, attrs in reversed(self.options):
            f = click.option(*decls, **attrs)(f)
        return f

    @property
    def names(self) -> list:
        """The keyword names click gives this group's values."""
        return [click.Option(list(decls), **attrs).name for decls, attrs in self.options]

    def take(self, values: dict) -> dict:
        """Pop this group's parsed values out of a command's keyword arguments."""
        return {n: values.pop(n) for n in self.names if n in values}


SEED = _opt("--seed", type=int, default=None,
            help="Random seed, an integer from 0 to 2**63-1 (default: random, recorded; "
                 "sweep: the seed of the sweep it resumes).")
SIGMA_MODE = _opt("--sigma-mode", type=click.Choice(SIGMA_MODES), default="absolute",
                  show_default=True, help="relative: sigma times the tensor's own std.")
QUIET = _opt("--quiet", "-q", is_flag=True, expose_value=False, is_eager=True,
             callback=_set_quiet,
             help="No progress or information lines on stderr (warnings and errors still).")
quiet_option = click.option(*QUIET[0], **QUIET[1])

MODEL_OPTIONS = OptionGroup(
    _opt("--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True,
         help="Layout of the image input (spatial axes)."),
    _opt("--pad", default=None, callback=_pad_value,
         help="Reflect-pad the image input by P pixels on each side of H and W first (inside "
              "the model, so export bakes it in), for valid-convolution models whose output "
              "loses a border; 'auto' finds the border from the output size."))

PERTURBATION_OPTIONS = OptionGroup(
    _opt("--method", type=click.Choice(METHODS), required=True,
         help="noise / dropout (gray box), transform (black box), mc-dropout, "
              "ensemble (baselines), entropy (classification baseline)."),
    _opt("--at", "at", default=None,
         help="Location: tensor name, candidate index, 'input', a depth like 0.5 (default "
              "0.5), or auto. For mc-dropout: comma-separated Dropout node names (default "
              "all)."),
    _opt("--sweep-result", type=click.Path(), default=None,
         help="With --at auto: a 'tfue sweep' folder (or its best.json) to take the "
              "location and level of the method's best point from."),
    _opt("--tolerance", type=float, default=0.05, show_default=True,
         help="With --at auto and no sweep: how far (relative) the mean output may move."),
    _opt("--sigma", type=float, default=None, help="Noise std (default 0.1)."),
    SIGMA_MODE,
    _opt("--rate", type=float, default=None,
         help="Dropout rate p in [0, 1) (default 0.1; mc-dropout: each node's own)."),
    _opt("--samples", "-n", type=int, default=None,
         help="Number of perturbed samples N (2 to 100000; default 8). Transforms and "
              "ensembles take N from their list."),
    _opt("--transforms", default=None,
         help="For transform: d4 (the default), rot, flips, hflip, rot180, or a list such "
              "as identity,hflip,rot90."),
    _opt("--softmax", is_flag=True,
         help="The outputs are logits: apply a softmax over --class-axis first."),
    _opt("--classify/--no-classify", default=None,
         help="Treat every float output as class probabilities (default: those made by a "
              "Softmax)."),
    _opt("--class-axis", type=int, default=1, show_default=True,
         help="The class axis of probability outputs."),
    SEED)

RUNTIME_OPTIONS = OptionGroup(
    _opt("--strategy", type=click.Choice(("auto",) + STRATEGIES), default="auto",
         show_default=True, help="Sampling strategy."),
    _opt("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
         help="Execution provider."),
    _opt("--chunk", type=int, default=None,
         help="Samples per session run (default: measured on the first input, within "
              "--max-memory)."),
    _opt("--max-memory", default="2G", show_default=True,
         help="Memory the samples of one run may take (e.g. 512M, 2G); sets the chunk."),
    _opt("--threads", type=int, default=None,
         help="onnxruntime intra-op threads (default: measured, the default count or 1, "
              "whichever samples faster)."),
    _opt("--no-cache", is_flag=True,
         help="Verify the graph and measure the chunk size afresh, ignoring and not writing "
              "tfue's cache ($TFUE_CACHE_DIR, else the user cache folder); export always "
              "verifies and never uses it."),
    _opt("--io-binding/--no-io-binding", default=None,
         help="Keep the inputs on the device across chunks (default: on with CUDA)."),
    _opt("--verbose", "-v", is_flag=True, help="Say which strategies were tried and why."))

IMAGE_OPTIONS = OptionGroup(
    _opt("--channel-order", type=click.Choice(CHANNEL_ORDERS), default="rgb",
         show_default=True, help="Channel order the model expects."),
    _opt("--scale", type=float, default=1 / 255, show_default="1/255",
         help="Pixel values are multiplied by this first (16-bit images: the default "
              "becomes 1/65535)."),
    _opt("--mean", "norm_mean", default=None,
         help="Per-channel mean to subtract, e.g. 0.485,0.456,0.406."),
    _opt("--std", "norm_std", default=None, help="Per-channel std to divide by."),
    _opt("--resize", default=None,
         help="Resize images to HxW (default: the model's fixed size, else unchanged)."))

PAIR_OPTIONS = OptionGroup(
    _opt("--targets", type=click.Path(), default=None,
         help="Folder of targets named after the inputs (.npy or images)."),
    _opt("--sr-scale", type=int, default=None,
         help="Super-resolution: INPUTS are high-resolution images; the input is each "
              "downscaled by S (bicubic), the target the image."),
    _opt("--target-scale", type=float, default=1 / 255, show_default="1/255",
         help="Target images' pixel values are multiplied by this."))

METRIC_OPTIONS = OptionGroup(
    _opt("--block-sigma", type=float, default=2.0, show_default=True,
         help="Smoothing scale of the local-center-of-mass blocks (pixels); block "
              "correlation depends on it: compare at one scale."),
    _opt("--bootstrap", type=int, default=1000, show_default=True,
         help="Resamples of the images for the 95% intervals of every metric (seeded by the "
              "run's seed); 0 for none, else at least 100."))

CALIBRATION = _opt("--calibration", type=click.Path(), default=None,
                   help="A calibration.json from 'tfue calibrate' for this run (model, "
                        "method, location, level, N): adds expected_error, lower and upper.")
calibration_option = click.option(*CALIBRATION[0], **CALIBRATION[1])

OUTPUT_OPTIONS = OptionGroup(
    _opt("--force", is_flag=True,
         help="Overwrite existing result files (sweep: start over in a folder holding "
              "another sweep)."),
    QUIET)

ENGINE_OPTIONS = OptionGroup(
    _opt("--engine", type=click.Choice(("local", "ray")), default="local", show_default=True,
         help="local: this process; ray: Ray Data actors, one estimator each (pip install "
              "'.[ray]' in tfue's source folder); results of the same run are skipped "
              "(resumed), failed inputs listed (exit 4)."),
    _opt("--ray-address", default=None,
         help="With --engine ray: 'auto' joins this machine's cluster, or the head's "
              "HOST:PORT (default: a local Ray started for the run)."),
    _opt("--ray-actors", type=int, default=None,
         help="With --engine ray: actors (default: the cluster's CPUs / --ray-cpus)."),
    _opt("--ray-cpus", type=float, default=1.0, show_default=True,
         help="With --engine ray: CPUs per actor (also its onnxruntime threads unless "
              "--threads)."),
    _opt("--ray-gpus", type=float, default=0.0, show_default=True,
         help="With --engine ray: GPUs per actor (with --provider cuda)."))


def _engine(values: dict, runtime: dict, levels=None, shared_scale=False) -> tuple:
    """(ray_engine.RaySettings, runtime) for --engine ray (onnxruntime threads default to
    --ray-cpus: ray_engine.runtime_for; --levels and --shared-scale refused); (None,
    runtime) for the local engine."""
    from .ray_engine import refuse_for_ray, runtime_for, settings_from

    ray = settings_from(values, quiet=_QUIET[0])
    if ray is None:
        return None, runtime
    refuse_for_ray(levels=levels, shared_scale=shared_scale)
    runtime, ray = runtime_for(runtime, ray)
    return ray, runtime


def _ray_run(est, files, out_dir, options, ray, force, drawing: dict, as_json) -> None:
    """``tfue run --engine ray`` (ray_engine.run_files), then what it did (as ``_say_run``,
    then tfue's totals); exit 4 when inputs failed, 3 for NaN/Inf (ray_engine.exit_code)."""
    from .ray_engine import exit_code, run_files, totals

    summary = run_files(est, files, out_dir, options, ray, force, _STARTED, **drawing)
    if as_json:
        from .files import plain_json
        click.echo(json.dumps(plain_json(summary), indent=2, default=str))
    elif summary.get("method"):
        _say_run(summary, out_dir)
    for line in totals(summary):
        _say(f"tfue: {line}", warning=not line.startswith("ray:"))
    if exit_code(summary):
        sys.exit(exit_code(summary))


def _input_files(inputs, ray, unique: bool = True) -> list:
    """INPUTS as files (io.collect_inputs); with --engine ray also a .parquet dataset of
    paths (ray_engine.input_files)."""
    from .io import collect_inputs

    if ray is None:
        if len(inputs) == 1 and os.fspath(inputs[0]).rstrip("/").endswith(".parquet"):
            raise ArgumentError("a .parquet dataset of input paths is read by --engine ray",
                                "add --engine ray, or give the files or their folder")
        return collect_inputs(inputs, unique)
    from .ray_engine import input_files

    return input_files(inputs, unique)


def _ray_pairs(est, pairs, ray) -> tuple:
    """``ray_engine.evaluate_pairs``; when every pair failed, they are listed and the
    command exits 4 (nothing to evaluate, nothing written)."""
    from .ray_engine import evaluate_pairs

    est, ok, failed = evaluate_pairs(est, pairs, ray)
    if not ok:
        _ray_failed(failed)
    return est, ok, failed


def _ray_failed(failed: list) -> None:
    """--engine ray: each input that failed (``{"input", "reason"}``) on stderr, then exit
    4 (ray_engine.EXIT_INPUTS_FAILED: the job went on without them); nothing without."""
    for f in failed:
        _say(f"tfue: failed: {f['input']}: {f['reason']}", warning=True)
    if failed:
        from .ray_engine import EXIT_INPUTS_FAILED
        sys.exit(EXIT_INPUTS_FAILED)


# --- building the library objects from the groups' values -----------------------------------
def _runtime(values: dict) -> tuple:
    """(Estimator keyword arguments, --verbose) from RUNTIME_OPTIONS' values, each checked
    up front."""
    from .perturb import check_count, parse_bytes

    return {"provider": values["provider"], "strategy": values["strategy"],
            "chunk": check_count("chunk", values["chunk"]),
            "threads": check_count("threads", values["threads"]),
            "max_memory": parse_bytes(values["max_memory"], "max_memory"),
            "cache": not values["no_cache"], "io_binding": values["io_binding"]}, values["verbose"]


def _image_options(layout: str, values: dict):
    """The io.ImageOptions that IMAGE_OPTIONS' values (and --layout) describe."""
    from .io import ImageOptions

    return ImageOptions(layout=layout, channel_order=values["channel_order"],
                        scale=values["scale"], mean=_parse_floats("--mean", values["norm_mean"]),
                        std=_parse_floats("--std", values["norm_std"]),
                        resize=values["resize"])


def _check_perturbation(p: dict) -> None:
    """Every perturbation value checked before any work (--at auto may take minutes)."""
    from .perturb import check_samples, check_seed, make_spec

    check_seed(p["seed"])
    if p["samples"] is not None:
        check_samples(p["samples"])
    if p["at"] != "auto" and p["sweep_result"] is not None:
        raise ArgumentError("--sweep-result is used with --at auto", "add --at auto")
    if p["at"] == "auto" and not p["tolerance"] > 0:
        raise ArgumentError(f"tolerance must be > 0, got {p['tolerance']}",
                            "e.g. --tolerance 0.05")
    make_spec(p["method"], at=None if p["at"] == "auto" else p["at"], sigma=p["sigma"],
              rate=p["rate"], sigma_mode=p["sigma_mode"], transforms=p["transforms"],
              members=("member",) if p["method"] == "ensemble" else ())


def _auto_location(model, p: dict, pad, layout, provider, auto_feeds) -> tuple:
    """(at, level, report) for --at auto (``choose.choose_location``), said on stderr."""
    from .choose import choose_location

    started = time.perf_counter()

    def progress(done, total, text):  # the choice takes minutes on large models
        _say(f"tfue: --at auto [{done}/{total}] {text}"
             + _eta(time.perf_counter() - started, done, total - done))

    inputs = None if p["sweep_result"] is not None else auto_feeds(model)
    at, level, report = choose_location(
        model, p["method"], inputs, sweep_result=p["sweep_result"], tolerance=p["tolerance"],
        seed=p["seed"], sigma_mode=p["sigma_mode"], provider=provider, pad=pad, layout=layout,
        progress=progress)
    where = "" if report["from"] == "sweep" else \
        f" (index {report['index']}, depth {report['depth']:.2f})"
    _say(f"tfue: --at auto picked {at}{where} at level {level:g}: {report['reason']}")
    return at, level, report


def _models(paths, method) -> tuple:
    """(model, members, notes): the model file, the ensemble's other members (ModelInfos)
    and what was counted once or skipped (``api.ensemble_from_paths``), said on stderr."""
    from .graph.blackbox import model_files

    if method == "ensemble":
        from .api import ensemble_from_paths

        model, spec = ensemble_from_paths(paths)
        for note in spec.notes:
            click.echo(f"tfue: {note}", err=True)
        _say(f"tfue: ensemble of {len(spec.members) + 1} member(s): "
             + ", ".join([model] + [m.path for m in spec.members]))
        return model, spec.members, list(spec.notes)
    files = [f for f, _ in model_files(paths)]
    if len(files) > 1:
        raise ArgumentError(f"{len(files)} models given ({', '.join(files)}), but only "
                            "--method ensemble takes several",
                            "give one model, or use --method ensemble")
    return files[0], [], []


def _estimator(models, p: dict, where: dict, runtime: dict, auto_feeds=None, **kw):
    """The Estimator the option groups describe; ``models`` the model (and ensemble members),
    ``p`` PERTURBATION_OPTIONS' values, ``where`` MODEL_OPTIONS', ``runtime`` ``_runtime``'s.

    ``--at auto`` is resolved by ``choose.choose_location`` (from a sweep result, or on
    ``auto_feeds(model)``), ``--pad auto`` by ``border.resolve_pad``; both are said on stderr.
    """
    import dataclasses

    from .perturb import make_spec
    from .runner import Estimator

    _check_perturbation(p)
    model, members, member_notes = _models(models, p["method"])
    pad, layout = where["pad"], where["layout"]
    if pad == "auto":  # detected once, said once
        pad = _auto_pad(model, layout)
    at, sigma, rate, auto = p["at"], p["sigma"], p["rate"], None
    if at == "auto":
        at, level, auto = _auto_location(model, p, pad, layout, runtime["provider"], auto_feeds)
        sigma = level if p["method"] == "noise" and sigma is None else sigma
        rate = level if p["method"] == "dropout" and rate is None else rate
    spec = make_spec(p["method"], at=at, sigma=sigma, rate=rate, sigma_mode=p["sigma_mode"],
                     transforms=p["transforms"], layout=layout, members=members)
    if member_notes:
        spec = dataclasses.replace(spec, notes=tuple(member_notes))
    est = Estimator(model, spec, samples=p["samples"], seed=p["seed"], softmax=p["softmax"],
                    classify="auto" if p["classify"] is None else p["classify"],
                    class_axis=p["class_axis"], pad=pad, layout=layout, **runtime, **kw)
    est.auto_choice = auto  # what --at auto measured, for summary.json / metrics.json
    return est


def _auto_pad(model, layout) -> int:
    """--pad auto: the border found from the output size, said on stderr."""
    from .border import resolve_pad
    from .model import inspect_model

    pad, how = resolve_pad(inspect_model(model), "auto", layout)
    _say(f"tfue: --pad auto chose {pad}: {how}", err=True)
    return pad


def _parse_floats(name, text):
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        example = {"--levels": "0.05,0.1,0.2", "--sigmas": "0.05,0.1,0.2", "--rates": "0.05,0.1",
                   "--std": "0.229,0.224,0.225"}.get(name, "0.485,0.456,0.406")
        raise ArgumentError(f"{name} must be comma-separated numbers, got {text!r}",
                            f"e.g. {name} {example}") from None


def inputs_command(f):
    """MODEL and INPUTS with the perturbation, model, runtime and image option groups:
    the commands that run a model on input files (run, evaluate, rank)."""
    for group in (IMAGE_OPTIONS, RUNTIME_OPTIONS, MODEL_OPTIONS, PERTURBATION_OPTIONS):
        f = group(f)
    f = click.argument("inputs", nargs=-1, required=True, type=click.Path())(f)
    return click.argument("model", type=click.Path())(f)


# --- run --------------------------------------------------------------------------------
@main.command()
@inputs_command
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(),
              help="Folder for NAME.npz, NAME.variance.png and summary.json.")
@click.option("--save-samples", is_flag=True, help="Also store the N samples in the .npz.")
@click.option("--compress", is_flag=True,
              help="Deflate the .npz files: smaller, but far slower to write.")
@click.option("--shared-scale", is_flag=True, help="One colour range for every NAME.variance.png.")
@click.option("--overlay", is_flag=True, help="Also write NAME.overlay.png (map over the input).")
@click.option("--pictures/--no-pictures", default=True, show_default=True,
              help="Draw NAME.variance.png (matplotlib); --no-pictures writes the .npz only.")
@click.option("--weights", "weights", is_flag=False, flag_value="linear", default=None,
              type=click.Choice(WEIGHT_FORMULAS),
              help="Also write NAME.weights.npy, per-element loss weights from the map: "
                   "linear (the default: 1 + λ·σ/mean σ) or normalized (σ/mean σ).")
@click.option("--weight-strength", type=float, default=1.0, show_default=True,
              help="λ of --weights linear.")
@click.option("--max-weight", type=float, default=10.0, show_default=True,
              help="The largest loss weight (clipped).")
@calibration_option
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
@OUTPUT_OPTIONS
@click.option("--levels", default=None,
              help="Several levels (noise sigmas, dropout rates), comma-separated: every "
                   "input runs at each with one graph; results go to OUT/level-L/ per level.")
@ENGINE_OPTIONS
def run(model, inputs, out_dir, save_samples, compress, shared_scale, overlay, pictures,
        weights, weight_strength, max_weight, calibration, as_json, force, levels, **values):
    """Uncertainty maps for INPUTS (images, .npy/.npz arrays, or folders) under MODEL.

    With --method ensemble, MODEL and every .onnx file (or folder of them) among
    INPUTS are the members.
    """
    from .files import check_out_dir
    from .io import check_image_options
    from .report import planned_files

    p, where = PERTURBATION_OPTIONS.take(values), MODEL_OPTIONS.take(values)
    runtime, verbose = _runtime(RUNTIME_OPTIONS.take(values))
    options = _image_options(where["layout"], IMAGE_OPTIONS.take(values))
    ray, runtime = _engine(ENGINE_OPTIONS.take(values), runtime, levels, shared_scale)
    levels = _run_levels(p, levels)
    _check_drawing(pictures, shared_scale, overlay)
    loss = _loss_weights(weights, weight_strength, max_weight, p["method"])
    cal = _calibration(calibration, p, levels)
    check_out_dir(out_dir)
    models, inputs = _split_members(model, inputs, p["method"])
    files = _input_files(inputs, ray)
    check_image_options(files, options)
    for folder in _level_folders(out_dir, levels).values() if ray is None else ():
        _refuse_existing(planned_files(folder, files), force)  # before the long work

    def auto_feeds(model):
        from .io import load_input
        from .model import inspect_model

        inputs_of = inspect_model(model).inputs
        return [load_input(f, inputs_of, options) for f in files[:4]]

    est = _estimator(models, p, where, runtime, auto_feeds=auto_feeds,
                     keep_samples=save_samples)
    if cal is not None:
        cal.check(est.describe())
    drawing = {"compress": compress, "shared_scale": shared_scale, "overlay": overlay,
               "pictures": pictures, "weights": loss, "calibration": cal}
    if ray is not None:
        return _ray_run(est, files, out_dir, options, ray, force, drawing, as_json)
    try:
        summaries = {level: _run_one_level(est, level, files, folder, options, drawing,
                                           started=_STARTED if k == 0 else None)
                     for k, (level, folder) in enumerate(_level_folders(out_dir,
                                                                        levels).items())}
    finally:
        _notes(est, verbose)
    if as_json:
        from .files import plain_json

        shown = summaries[None] if levels is None else {"levels": list(summaries.values())}
        click.echo(json.dumps(plain_json(shown), indent=2, default=str))
    else:
        for level, summary in summaries.items():
            _say_run(summary, _level_folders(out_dir, levels)[level])
    for summary in summaries.values():
        _exit_for(summary)


def _check_drawing(pictures: bool, shared_scale: bool, overlay: bool) -> None:
    """--shared-scale and --overlay draw pictures: refused with --no-pictures."""
    if not pictures and (shared_scale or overlay):
        given = " and ".join(o for o, on in (("--shared-scale", shared_scale),
                                             ("--overlay", overlay)) if on)
        raise ArgumentError(f"{given} draw{'s' if ' and ' not in given else ''} pictures, "
                            "which --no-pictures turns off", f"drop --no-pictures or {given}")


def _run_levels(p: dict, text):
    """--levels as a tuple of floats (None without it), each checked as the method's level
    before any work."""
    from .perturb import check_level

    if text is None:
        return None
    if p["method"] not in ("noise", "dropout", "mc-dropout"):
        raise ArgumentError(f"--levels applies to noise, dropout and mc-dropout, not "
                            f"{p['method']}", "drop --levels")
    if p["sigma"] is not None or p["rate"] is not None:
        raise ArgumentError("give --levels or one --sigma/--rate, not both",
                            "list every level in --levels")
    levels = tuple(check_level(p["method"], v) for v in _parse_floats("--levels", text))
    if len(set(levels)) < len(levels):
        raise ArgumentError(f"--levels {text} repeats a level", "list each level once")
    return levels


def _level_folders(out_dir: str, levels) -> dict:
    """{level: folder}: OUT itself without --levels ({None: OUT}), else OUT/level-L each
    (L as written by %g, so 0.05 -> level-0.05)."""
    if levels is None:
        return {None: out_dir}
    return {level: os.path.join(out_dir, f"level-{level:g}") for level in levels}


class _AtLevel:
    """The estimator called at one level (``est(x, level=L)``): every level runs on the one
    graph the estimator built; everything else is the estimator's."""

    def __init__(self, est, level):
        self._est, self._level = est, level

    def __call__(self, feeds, **kw):
        return self._est(feeds, level=self._level, **kw)

    def __getattr__(self, name):
        return getattr(self._est, name)


def _run_one_level(est, level, files, out_dir, options, pictures: dict, started=None) -> dict:
    """``report.run_inputs`` at ``level`` (None: the spec's own) into ``out_dir``; the
    start-up time counts from ``started`` (None: now, for the levels after the first)."""
    from .report import run_inputs

    progress = _progress_for_stderr()
    if level is not None:
        _say(f"tfue: level {level:g} -> {out_dir}")
    return run_inputs(est if level is None else _AtLevel(est, level), files, out_dir, options,
                      progress=progress,
                      note=lambda line: _say(f"tfue: {line}", warning=line.startswith(
                          "warning")),
                      started=started,
                      sample_progress={_lines: _samples_said, _progress: _bar_samples}.get(
                          progress),
                      **pictures)


def _split_members(model, inputs, method):
    """(models, inputs): with --method ensemble, model files among INPUTS are members
    (``api.split_models``)."""
    if method != "ensemble":
        return [model], list(inputs)
    from .api import split_models

    models, inputs = split_models(inputs)
    return [model] + models, inputs


def _what_ran(meta: dict, where) -> str:
    """'noise at r1, level 0.2, N = 8, seed 3' (``plots.method_words``, the pictures'
    wording) with the location ``where`` (summaries call it ``location``)."""
    from .plots import method_words

    return method_words({**meta, "at": where}, seed=True)


def _say_run(summary: dict, out_dir: str) -> None:
    """What ``tfue run`` did, on stdout: the method, one line per input, the time taken."""
    click.echo(f"{_what_ran(summary, summary['location'])}, strategy "
               f"{summary['strategy']}, provider {summary['provider']}")
    for item in summary["inputs"]:
        what = "entropy" if summary["method"] == "entropy" else "variance"
        value = item.get(f"mean_{what}")
        flag = " (NaN/Inf: see the warning)" if item.get("non_finite") else ""
        if item.get("mean_interval_width") is not None:
            flag += (f", interval width {item['mean_interval_width']:.4g}, expected "
                     f"|error| {item['mean_expected_error']:.4g}")
        click.echo(f"  {item['input']}: mean {what} "
                   f"{'n/a' if value is None else format(value, '.4g')}{flag} -> "
                   + ", ".join(item["files"]))
    t = summary.get("timing")
    if t:
        tune = summary.get("autotune") or {}
        chunk = (f", chunk {tune['chunk']} ({tune['how']})" if tune.get("chunk") else "")
        click.echo(f"time: start-up {t['startup_s']:.2f} s, sampling {t['sampling_s']:.2f} s"
                   f"{chunk}, writing {t['writing_s']:.2f} s")
    click.echo(f"summary: {os.path.join(out_dir, 'summary.json')}")


def _exit_for(summary):
    """Exit 3 when results hold NaN or Inf (written and warned about), else return."""
    if summary.get("warnings"):
        sys.exit(EXIT_NON_FINITE)


# --- rank ---------------------------------------------------------------------------------
@main.command()
@inputs_command
@click.option("--by", type=click.Choice(RANK_SCORES), default="mean", show_default=True,
              help="The score: mean, max or p95 of the variance map; entropy or bald "
                   "(mutual information) for class probabilities.")
@click.option("--top", type=int, default=None, help="How many to pick (with --copy-to).")
@click.option("--copy-to", default=None, type=click.Path(),
              help="Copy (never move) the top --top input files into this folder.")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(),
              help="Where ranking.csv and scores.jsonl (resumable) go.")
@quiet_option
@ENGINE_OPTIONS
def rank(model, inputs, by, top, copy_to, out_dir, **values):
    """Rank INPUTS by MODEL's uncertainty, most uncertain first (which to label next).

    Run it again after a stop: the scores in OUT/scores.jsonl are kept (without --seed,
    the seed they were drawn with is used again).
    """
    from .files import check_out_dir
    from .io import check_image_options
    from .rank import contact_sheet, copy_top, logged_seed, rank_inputs

    p, where = PERTURBATION_OPTIONS.take(values), MODEL_OPTIONS.take(values)
    if p["seed"] is None:  # resuming: the seed of the scores already there
        p["seed"] = logged_seed(out_dir)
    runtime, verbose = _runtime(RUNTIME_OPTIONS.take(values))
    options = _image_options(where["layout"], IMAGE_OPTIONS.take(values))
    ray, runtime = _engine(ENGINE_OPTIONS.take(values), runtime)
    if top is not None and top < 1:
        raise ArgumentError(f"--top must be >= 1, got {top}", "e.g. --top 10")
    if (top is None) != (copy_to is None):
        raise ArgumentError("--top and --copy-to go together", "give both, or neither")
    check_out_dir(out_dir)
    models, inputs = _split_members(model, inputs, p["method"])
    files = _input_files(inputs, ray, unique=False)  # rank writes no file per input
    check_image_options(files, options)
    est = _estimator(models, p, where, runtime)
    failed = []
    try:
        if ray is None:
            ranking = rank_inputs(est, files, by, options, out_dir,
                                  progress=_progress_for_stderr())
        else:
            from .ray_engine import rank_files
            ranking, failed = rank_files(est, files, by, options, out_dir, ray)
    finally:
        _notes(est, verbose)
    for r in ranking[:10]:
        click.echo(f"{r['rank']:4d}  {r['score']:.4g}  {r['input']}")
    sheet = contact_sheet(est, ranking, top or 8, os.path.join(out_dir, "top.png"), options)
    copied = copy_top(ranking, top, copy_to) if top else []
    click.echo(f"ranked {len(ranking)} input(s) by {by}: {os.path.join(out_dir, 'ranking.csv')}"
               + (f", {sheet}" if os.path.exists(sheet) else "")
               + (f"; copied the top {len(copied)} to {copy_to}" if copied else ""))
    _ray_failed(failed)


# --- calibrate ------------------------------------------------------------------------------
@main.command()
@inputs_command
@PAIR_OPTIONS
@click.option("--coverage", type=float, default=0.9, show_default=True,
              help="The intervals' target coverage 1 - alpha, in (0, 1).")
@click.option("--out", "-o", "out", default="calibration.json", show_default=True,
              type=click.Path(dir_okay=False),
              help="The calibration file; its reliability diagram goes beside it (.png).")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration as JSON on stdout.")
@OUTPUT_OPTIONS
def calibrate(model, inputs, coverage, out, as_json, force, **values):
    """Fit MODEL's expected error and conformal intervals on (input, target) pairs.

    Writes FILE (calibration.json) for run/export/evaluate --calibration, and FILE's
    reliability diagram on the calibration set (.png beside it).
    """
    from .calibrate import check_coverage
    from .evaluate import calibrate_pairs
    from .files import check_new_file
    from .plots import reliability_picture

    p, where = PERTURBATION_OPTIONS.take(values), MODEL_OPTIONS.take(values)
    runtime, verbose = _runtime(RUNTIME_OPTIONS.take(values))
    options = _image_options(where["layout"], IMAGE_OPTIONS.take(values))
    pair_values = PAIR_OPTIONS.take(values)
    check_coverage(coverage)
    _check_pairs(pair_values)
    _needs_variance(p["method"], "tfue calibrate calibrates a variance map",
                    "use a sampling method (e.g. --method transform)")
    picture = _calibration_picture(out)
    for path in (out, picture):
        check_new_file(path, force)
    models, inputs = _split_members(model, inputs, p["method"])
    est = _estimator(models, p, where, runtime,
                     auto_feeds=_pair_feeds(inputs, pair_values, options))
    pairs = _pairs(est.info, inputs, pair_values, options, unique=False)
    try:
        cal = calibrate_pairs(est, pairs, coverage, progress=_progress_for_stderr())
    finally:
        _notes(est, verbose)
    on_set = cal.about["on_calibration_set"]
    reliability_picture(picture, on_set, f"calibration set ({len(pairs)} pairs): "
                        + _what_ran(est.describe(), est.location))
    cal.save(out, force)
    _say_calibration(cal, out, picture, as_json)


def _calibration_picture(out: str) -> str:
    """Where the reliability diagram of calibration file ``out`` goes: ``out`` with .png
    for its extension; refused when that is ``out`` itself."""
    picture = os.path.splitext(out)[0] + ".png"
    if os.path.abspath(picture) == os.path.abspath(out):
        raise ArgumentError(f"-o {out} would be the reliability diagram's name too (it goes "
                            "beside the calibration, as .png)", "give a .json file, e.g. "
                            "-o calibration.json")
    return picture


def _needs_variance(method: str, what: str, hint: str) -> None:
    """Refuse --method entropy (no variance map) for ``what`` needs one, up front."""
    if method == "entropy":
        raise ArgumentError(f"{what}; --method entropy has none", hint)


def _calibration_notes(cal) -> list:
    """What a user should know about a fit: intervals of width 0, a map mostly 0."""
    notes, f = [], cal.fit
    low = cal.about["on_calibration_set"]["bins"][0]
    if f.q == 0:
        notes.append(f"q is 0: at coverage {f.coverage:g} at least that share of the errors "
                     "is 0, so the intervals have width 0; ask for a higher coverage")
    if low["count"] > 0.5 * f.count:
        notes.append(f"{low['count'] / f.count:.0%} of the elements share the smallest "
                     "standard deviation (often 0: the perturbation does not reach them), so "
                     "the map cannot tell their errors apart")
    return notes


def _say_calibration(cal, out: str, picture: str, as_json: bool) -> None:
    """What ``tfue calibrate`` fitted, on stdout."""
    if as_json:
        from .files import plain_json

        click.echo(json.dumps(plain_json({**cal.to_json(), "file": out, "picture": picture}),
                              indent=2, default=str))
        return
    f, n, on = cal.fit, cal.about["calibration_set"], cal.about["on_calibration_set"]
    for line in _calibration_notes(cal):
        _say(f"tfue: note: {line}")
    click.echo(f"calibrated output '{cal.output}' on {n['pairs']} pair(s), {f.count} "
               f"elements: {f.coverage:.0%} intervals are output ± {f.q:.4g}·σ "
               f"(mean width {on['mean_width']:.4g} on the set)")
    click.echo(f"expected |error| {f.knots_e[0]:.4g} .. {f.knots_e[-1]:.4g} for σ "
               f"{f.knots_s[0]:.4g} .. {f.knots_s[-1]:.4g} (isotonic, {len(f.knots_s)} "
               f"knots; scale fit {f.scale:.4g}·σ); ENCE on the set {on['ence']:.3f} "
               f"(raw σ: {on['ence_raw']:.3f})")
    click.echo(f"wrote {out} and {picture}")


# --- export -------------------------------------------------------------------------------
@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--output", "-o", "out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the uncertainty model (.onnx).")
@PERTURBATION_OPTIONS
@MODEL_OPTIONS
@RUNTIME_OPTIONS
@click.option("--example", type=click.Path(exists=False), default=None,
              help="An input (.npy/.npz) to verify on (default: a synthetic one).")
@calibration_option
@OUTPUT_OPTIONS
def export(models, out, example, force, calibration, **values):
    """Write MODEL's uncertainty graph (N fixed) as a standalone ONNX model.

    With --method ensemble, give every member model.
    """
    from .files import check_new_file
    from .io import collect_inputs, load_input

    p, where = PERTURBATION_OPTIONS.take(values), MODEL_OPTIONS.take(values)
    runtime, verbose = _runtime(RUNTIME_OPTIONS.take(values))
    if p["method"] == "entropy":
        raise ArgumentError("--method entropy has nothing to export: it is one plain run",
                            "compute the entropy of the model's output directly")
    cal = _calibration(calibration, p)
    check_new_file(out, force)

    def auto_feeds(model):
        from .model import inspect_model
        from .runner import Estimator

        info = inspect_model(model)
        if example:
            return [load_input(collect_inputs([example])[0], info.inputs)]
        return [Estimator.synthetic_input(info)]

    est = _estimator(list(models), p, where, runtime, auto_feeds=auto_feeds)
    feeds = load_input(collect_inputs([example])[0], est.info.inputs) if example else None
    try:
        path = est.export(out, example=feeds, force=force, calibration=cal)
    finally:
        _notes(est, verbose)
    ug = est.standalone_graph(feeds)  # the graph export wrote (cached)
    written = est.exported_files
    data = f" (weights in {written[1]} beside it)" if len(written) > 1 else ""
    click.echo(f"wrote {path}{data}: {_what_ran(est.describe(), est.location)}, strategy "
               f"{ug.strategy}; outputs " + ", ".join(est.exported_outputs))


# --- evaluate and sweep ----------------------------------------------------------------------
def _pairs(info, inputs, pairs: dict, options, unique: bool = True):
    """The (input, target) pairs PAIR_OPTIONS' values name (``evaluate.make_pairs``);
    ``unique``: refuse inputs of one name (for commands writing a file per input)."""
    from .evaluate import make_pairs

    return make_pairs(info, inputs, targets=pairs["targets"], sr_scale=pairs["sr_scale"],
                      options=options, target_scale=pairs["target_scale"],
                      unique_names=unique)


def _check_metrics(values: dict, grid=None) -> None:
    """METRIC_OPTIONS' values checked before any work."""
    from .metrics import check_blocks, check_bootstrap

    check_bootstrap(values["bootstrap"])
    check_blocks(values["block_sigma"], grid)


def _check_pairs(pairs: dict) -> None:
    """PAIR_OPTIONS' values checked before any work."""
    import math

    if not (math.isfinite(pairs["target_scale"]) and pairs["target_scale"] != 0):
        raise ArgumentError(f"--target-scale must be a finite, non-zero number, got "
                            f"{pairs['target_scale']}", "e.g. --target-scale 0.00392156 (1/255)")


def _refuse_existing(paths, force):
    """Refuse, before any work, to overwrite result files without --force."""
    if force:
        return
    for path in paths:
        if os.path.exists(path):
            raise TfueError(f"'{path}' already exists and would be overwritten",
                            "pass --force to overwrite, or choose another --out folder")


@main.command()
@inputs_command
@PAIR_OPTIONS
@METRIC_OPTIONS
@click.option("--block-grid", type=int, default=None,
              help="Use square blocks N px on a side instead of the local center of mass.")
@calibration_option
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(),
              help="Folder for metrics.json, metrics.csv and NAME.eval.png pictures.")
@click.option("--pictures/--no-pictures", default=True, show_default=True,
              help="Draw NAME.eval.png (and reliability.png with --calibration).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout.")
@OUTPUT_OPTIONS
@ENGINE_OPTIONS
def evaluate(model, inputs, out_dir, as_json, force, block_grid, calibration, pictures,
             **values):
    """How well MODEL's uncertainty tracks its error on (input, target) pairs.

    With --calibration, also how its calibrated intervals hold on them (coverage, width,
    ENCE, reliability.png).
    """
    from .evaluate import evaluate as run_evaluation
    from .evaluate import write_evaluation
    from .files import cleanup_out_dir, prepare_out_dir

    p, where = PERTURBATION_OPTIONS.take(values), MODEL_OPTIONS.take(values)
    runtime, verbose = _runtime(RUNTIME_OPTIONS.take(values))
    options = _image_options(where["layout"], IMAGE_OPTIONS.take(values))
    ray, runtime = _engine(ENGINE_OPTIONS.take(values), runtime)
    pair_values, metric_values = PAIR_OPTIONS.take(values), METRIC_OPTIONS.take(values)
    cal = _calibration(calibration, p)
    _refuse_existing([os.path.join(out_dir, n) for n in ("metrics.json", "metrics.csv")]
                     + ([os.path.join(out_dir, "reliability.png")] if cal else []), force)
    _check_metrics(metric_values, block_grid)
    _check_pairs(pair_values)
    models, inputs = _split_members(model, inputs, p["method"])
    est = _estimator(models, p, where, runtime,
                     auto_feeds=_pair_feeds(inputs, pair_values, options))
    if cal is not None:
        cal.check(est.describe())
    pairs = _pairs(est.info, inputs, pair_values, options, unique=pictures)
    _refuse_existing([os.path.join(out_dir, f"{q.name}.eval.png") for q in pairs], force)
    failed = []
    if ray is not None:  # run on Ray; the evaluation below scores the results it returns
        est, pairs, failed = _ray_pairs(est, pairs, ray)
    if pairs:  # image options and the graph checked on the first pair before any work
        est.prepare(pairs[0].load()[0])
    with cleanup_out_dir(out_dir):
        prepare_out_dir(out_dir)
        try:
            result = run_evaluation(est, pairs, out_dir=out_dir,
                                    sigma=metric_values["block_sigma"], grid=block_grid,
                                    progress=_progress_for_stderr(), pictures=pictures,
                                    bootstrap=metric_values["bootstrap"], calibration=cal)
        finally:
            _notes(est, verbose)
        if ray is not None:
            result["failures"] = failed
        files = write_evaluation(out_dir, result, pictures)
    _say_evaluation(result, files, out_dir, as_json)
    _ray_failed(failed)


def _pair_feeds(inputs, pair_values: dict, options):
    """``auto_feeds`` for --at auto without a sweep: the first pairs' inputs."""
    def auto_feeds(first):
        from .model import inspect_model

        return [q.load()[0] for q in _pairs(inspect_model(first), inputs, pair_values,
                                            options, unique=False)[:4]]
    return auto_feeds


def _calibration(path, p: dict, levels=None):
    """The calibration.CalibrationFile --calibration names (None without it), refused up
    front for runs that have no variance map or several levels."""
    if path is None:
        return None
    _needs_variance(p["method"], "--calibration calibrates a variance map",
                    "drop --calibration, or use a sampling method")
    if levels is not None:
        raise ArgumentError("a calibration holds for one level; --levels runs several",
                            "give the calibration's level with --sigma/--rate")
    from .calibration import CalibrationFile

    return CalibrationFile.load(path)


def _say_evaluation(result: dict, files: list, out_dir: str, as_json: bool) -> None:
    """What ``tfue evaluate`` found: notes on stderr; the table (or JSON) on stdout."""
    from .evaluate import format_table

    for note in result.get("notes", ()):
        click.echo(f"tfue: {note}", err=True)
    if as_json:
        from .files import plain_json
        click.echo(json.dumps(plain_json(result), indent=2, default=str))
        return
    m = result["metadata"]
    click.echo(f"{_what_ran(m, m['at'])}, provider {m['provider']}: correlation of "
               "uncertainty with error")
    click.echo(format_table(result["table"]))
    cal = result.get("calibration")
    if cal:
        click.echo(f"calibration: coverage {cal['coverage']:.3f} of {cal['count']} elements "
                   f"(target {cal['target_coverage']:g}; per image {cal['image_coverage']['min']:.3f}"
                   f" to {cal['image_coverage']['max']:.3f}), mean width {cal['mean_width']:.4g}, "
                   f"mean |error| {cal['mean_error']:.4g} (expected {cal['mean_expected_error']:.4g}),"
                   f" ENCE {cal['ence']:.3f} (raw s: {cal['ence_raw']:.3f})")
    pictures = sum(1 for item in result["images"] if item.get("picture"))
    click.echo("wrote " + ", ".join(files) + (f" and {pictures} picture(s)" if pictures else "")
               + f" in {out_dir}")


@main.command()
@click.argument("model", type=click.Path())
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--methods", default="noise,dropout", show_default=True,
              help="Which of noise, dropout to sweep.")
@click.option("--at", "at", default=None,
              help="'all', or comma-separated locations (default: 8 evenly spaced).")
@click.option("--at-count", type=int, default=None, help="K evenly spaced locations.")
@click.option("--sigmas", default=None, help="Noise levels (default 0.01,0.02,0.05,0.1,0.2,0.5).")
@click.option("--rates", default=None, help="Dropout rates (default 0.01,0.02,0.05,0.1,0.2,0.5).")
@click.option(*SIGMA_MODE[0], **SIGMA_MODE[1])
@click.option("--samples", "-n", type=int, default=8, show_default=True)
@click.option(*SEED[0], **SEED[1])
@click.option("--metric", default="pixel_l1", show_default=True,
              help="What 'best' means: {pixel,block,mean,pixel_pooled,block_pooled,"
                   "pixel_spearman,ause,aurg}_{l1,l2}.")
@MODEL_OPTIONS
@RUNTIME_OPTIONS
@IMAGE_OPTIONS
@PAIR_OPTIONS
@METRIC_OPTIONS
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(),
              help="Folder for sweep.jsonl (resumable), sweep.csv/json, best.json, plots.")
@OUTPUT_OPTIONS
def sweep(model, inputs, methods, at, at_count, sigmas, rates, sigma_mode, samples, seed,
          metric, out_dir, force, **values):
    """Where and how strongly to perturb: evaluate locations x levels on (input, target) pairs.

    Stopped sweeps resume: run the same command again.
    """
    from .files import cleanup_out_dir, prepare_out_dir
    from .model import inspect_model
    from .perturb import check_samples, check_seed
    from .sweep import check_metric, format_best, sweep as run_sweep

    where, (runtime, _) = MODEL_OPTIONS.take(values), _runtime(RUNTIME_OPTIONS.take(values))
    options = _image_options(where["layout"], IMAGE_OPTIONS.take(values))
    pair_values, metric_values = PAIR_OPTIONS.take(values), METRIC_OPTIONS.take(values)
    check_metric(metric)
    check_seed(seed)
    check_samples(samples)
    _check_metrics(metric_values)
    _check_pairs(pair_values)
    sigmas, rates = _parse_floats("--sigmas", sigmas), _parse_floats("--rates", rates)
    _check_sweep_levels(methods, sigmas, rates)
    model = _models([model], "sweep")[0]
    pad = _auto_pad(model, where["layout"]) if where["pad"] == "auto" else where["pad"]
    pairs = _pairs(inspect_model(model), inputs, pair_values, options, unique=False)
    with cleanup_out_dir(out_dir):
        prepare_out_dir(out_dir)
        result = run_sweep(model, pairs, methods=[m.strip() for m in methods.split(",")],
                           at=at, at_count=at_count, sigmas=sigmas, rates=rates,
                           samples=samples, seed=seed, metric=metric, out_dir=out_dir,
                           sigma_mode=sigma_mode, progress=_sweep_progress(metric),
                           block_sigma=metric_values["block_sigma"], force=force, pad=pad,
                           layout=where["layout"], bootstrap=metric_values["bootstrap"],
                           **runtime)
    click.echo(format_best(result))
    if result.get("points_of_other_grids"):
        click.echo(f"({result['points_of_other_grids']} finished point(s) of another grid in "
                   f"{out_dir}/sweep.jsonl are kept apart: not in this summary or its best)")
    click.echo(f"wrote sweep.jsonl, sweep.csv, sweep.json, best.json and plots in {out_dir}")


def _loss_weights(formula, strength, max_weight, method):
    """The weights.LossWeights --weights asks for (None without it), checked up front;
    --weight-strength/--max-weight without --weights are refused, not ignored."""
    if formula is None:
        given = [o for o, v, d in (("--weight-strength", strength, 1.0),
                                   ("--max-weight", max_weight, 10.0)) if v != d]
        if given:
            raise ArgumentError(f"{' and '.join(given)} set the loss weights of --weights, "
                                "which is not given", "add --weights, or drop "
                                + " and ".join(given))
        return None
    _needs_variance(method, "--weights come from a variance map",
                    "drop --weights, or use a sampling method")
    from .weights import LossWeights

    return LossWeights(formula, strength, max_weight)


def _check_sweep_levels(methods: str, sigmas, rates) -> None:
    """--sigmas/--rates given for a method --methods leaves out: refused, not ignored."""
    chosen = [m.strip() for m in methods.split(",")]
    for given, option, method in ((sigmas, "--sigmas", "noise"), (rates, "--rates", "dropout")):
        if given and method not in chosen:
            raise ArgumentError(f"{option} are levels of {method}, which --methods {methods} "
                                f"leaves out", f"drop {option}, or add {method} to --methods")


def _sweep_progress(metric: str):
    """A sweep's ``progress(done, total, point)``: a line per point with its metric, its
    interval and an ETA (points resumed from an earlier run are not timed)."""
    started, clock = time.perf_counter(), {}

    def progress(done, total, point):
        from .sweep import metric_interval, metric_value

        now = time.perf_counter()
        clock.setdefault("start", (started, done - 1))
        t0, before = clock["start"]
        iv = metric_interval(point["table"], metric)
        band = f" [{iv[0]:.4f}, {iv[1]:.4f}]" if iv and None not in iv else ""
        _say(f"[{done}/{total}] {point['method']} at {point['at']} (depth "
             f"{point['depth']:.2f}) level {point['level']:g}: {metric} = "
             f"{metric_value(point['table'], metric):.4f}{band}"
             + _eta(now - t0, done - before, total - done), err=True)
    return progress


# --- demo ---------------------------------------------------------------------------------
@main.command()
@click.option("--out", "-o", "out_dir", default="tfue-demo", show_default=True,
              type=click.Path(), help="Folder for the demo's maps and summary.")
@click.option("--samples", "-n", type=int, default=8, show_default=True,
              help="Samples for infer-dropout.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an earlier demo's files.")
@quiet_option
def demo(out_dir, samples, seed, provider, force):
    """Uncertainty maps for the bundled super-resolution model and sample images."""
    from .demo import DEMO_DROPOUT, bundled_model, planned, run_demo, sample_images

    if not os.path.exists(bundled_model()) or not sample_images():
        raise TfueError("the bundled model or sample images are missing from the install",
                        "reinstall tfue-onnx (pip install .) from a full checkout")
    _refuse_existing(planned(out_dir), force)
    click.echo(f"tfue demo: bundled x2 super-resolution model "
               f"({os.path.basename(bundled_model())}) "
               f"on {len(sample_images())} held-out image(s)", err=True)
    s = run_demo(out_dir, samples=samples, seed=seed, provider=provider,
                 progress=_progress_for_stderr())
    t, d = s["runs"]["transform"], s["runs"]["dropout"]
    click.echo(f"infer-transformation (d4, N={t['samples']}): mean variance per image "
               + ", ".join(f"{v:.3g}" for v in t["mean_variance"]))
    click.echo(f"infer-dropout (p={DEMO_DROPOUT['rate']} at {d['location']}, N={d['samples']}): "
               "mean variance per image " + ", ".join(f"{v:.3g}" for v in d["mean_variance"]))
    click.echo(f"provider {t['provider']}; maps in {os.path.join(out_dir, 'transform')} and "
               f"{os.path.join(out_dir, 'dropout')}")
    click.echo(f"overview (input | output | d4 variance | dropout variance): {s['overview']}")


if __name__ == "__main__":  # python -m tfue_onnx.cli
    main()
