"""The ``tfue`` command line: a thin click shell over the Python API.

Every TfueError becomes one line on stderr ("error: ... Hint: ...") and exit
code 2. Heavy modules load inside the commands, so ``tfue --help`` is instant.

Exit codes: 0 done; 2 refused (bad input or model; nothing written, an output
folder tfue would have made is not left behind); 3 ``run`` finished and wrote
every result, but some results hold NaN or Inf (the model overflows under the
perturbation, or its own unperturbed output already holds them: the warning says
which): a warning line per input on stderr, counts in summary.json.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from .errors import TfueError

EXIT_USAGE = 2
EXIT_NON_FINITE = 3


def _fail(exc: TfueError):
    click.echo(f"error: {exc}", err=True)
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
    idx = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in idx]


# --- shared perturbation options ------------------------------------------------------------
METHODS = ["noise", "dropout", "mc-dropout", "transform", "ensemble", "entropy"]


def _pad_value(ctx, param, value):
    if value is None or value.strip().lower() == "auto":
        return None if value is None else "auto"
    try:
        return int(value)
    except ValueError:
        raise TfueError(f"--pad must be a number of pixels or auto, got {value!r}",
                        "e.g. --pad 7, or --pad auto to detect the border") from None


# Declared once; run, export and evaluate take it with the perturbation options, sweep
# with its own.
pad_option = click.option(
    "--pad", default=None, callback=_pad_value,
    help="Reflect-pad the image input by P pixels on each side of H and W first (inside "
         "the model, so export bakes it in), for valid-convolution models whose output "
         "loses a border; 'auto' finds the border from the output size.")


def perturbation_options(f):
    """Options that choose the perturbation, shared by run and export."""
    opts = [
        click.option("--method", type=click.Choice(METHODS), required=True,
                     help="noise / dropout (gray box), transform (black box), mc-dropout, "
                          "ensemble (baselines), entropy (classification baseline)."),
        click.option("--layout", type=click.Choice(["auto", "NCHW", "NHWC"]), default="auto",
                     show_default=True, help="Layout of the image input (spatial axes)."),
        click.option("--at", "at", default=None,
                     help="Location: tensor name, candidate index, 'input', or a depth like 0.5 "
                          "(default 0.5). For mc-dropout: comma-separated Dropout node names "
                          "(default all)."),
        click.option("--sweep-result", type=click.Path(), default=None,
                     help="With --at auto: a 'tfue sweep' folder (or its best.json) to take "
                          "the location and level from."),
        click.option("--tolerance", type=float, default=0.05, show_default=True,
                     help="With --at auto and no sweep: how far (relative) the mean output "
                          "may move."),
        click.option("--sigma", type=float, default=None, help="Noise std (default 0.1)."),
        click.option("--sigma-mode", type=click.Choice(["absolute", "relative"]),
                     default="absolute", show_default=True,
                     help="relative: sigma times the tensor's own std."),
        click.option("--rate", type=float, default=None,
                     help="Dropout rate p in [0, 1) (default 0.1; mc-dropout: each node's own)."),
        click.option("--samples", "-n", type=int, default=None,
                     help="Number of perturbed samples N (2 to 100000; default 8). Transforms "
                          "and ensembles take N from their list."),
        click.option("--transforms", default="d4", show_default=True,
                     help="For transform: d4, rot, flips, hflip, rot180, or a list such as "
                          "identity,hflip,rot90."),
        click.option("--softmax", is_flag=True,
                     help="The outputs are logits: apply a softmax over --class-axis first."),
        click.option("--classify/--no-classify", default=None,
                     help="Treat every float output as class probabilities (default: those "
                          "made by a Softmax)."),
        click.option("--class-axis", type=int, default=1, show_default=True,
                     help="The class axis of probability outputs."),
        click.option("--seed", type=int, default=None,
                     help="Random seed, an integer from 0 to 2**63-1 (default: random, "
                          "recorded)."),
        click.option("--strategy", type=click.Choice(["auto", "looped-suffix", "shared-prefix",
                                                      "batched", "loop"]),
                     default="auto", show_default=True, help="Sampling strategy."),
        click.option("--no-cache", is_flag=True,
                     help="Verify the graph and measure the chunk size afresh, ignoring and "
                          "not writing tfue's cache ($TFUE_CACHE_DIR, else the user cache "
                          "folder); export always verifies and never uses it."),
        click.option("--threads", type=int, default=None,
                     help="onnxruntime intra-op threads (default: measured, the default "
                          "count or 1, whichever samples faster)."),
        click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                     show_default=True, help="Execution provider."),
        click.option("--verbose", "-v", is_flag=True,
                     help="Say which strategies were tried and why."),
        pad_option,
        quiet_option,
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _spec(method, at, sigma, sigma_mode, rate, transforms="d4", layout="auto", members=()):
    from .perturb import make_spec

    nodes = ()
    if method == "mc-dropout" and at:
        nodes = tuple(n.strip() for n in at.split(",") if n.strip())
        at = None
    return make_spec(method, at=at, sigma=sigma, rate=rate, sigma_mode=sigma_mode, nodes=nodes,
                     transforms=transforms, layout=layout, members=members)


def _rounded(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _band(interval) -> str:
    return f", 95% interval {interval[0]:.4f} to {interval[1]:.4f}" \
        if interval and None not in interval else ""


def _auto_location(model, method, sigma_mode, sweep_result, tolerance, auto_feeds, seed,
                   pad=None, layout="auto"):
    """(location, level) for --at auto, said on stderr with the reason."""
    from .choose import choose_by_agreement
    from .sweep import load_best

    if method not in ("noise", "dropout"):
        raise TfueError(f"--at auto chooses a location for noise or dropout, not {method}",
                        "drop --at auto")
    if sweep_result is not None:
        best = load_best(sweep_result, method)
        _say(f"tfue: --at auto picked {best['at']} at level {best['level']:g} from "
                   f"{sweep_result}: the best {method} {best.get('metric')} "
                   f"({_rounded(best.get('value'))}"
                   f"{_band(best.get('interval'))}) of that sweep", err=True)
        return best["at"], best["level"], {
            "from": "sweep", "sweep_result": os.path.abspath(sweep_result),
            **{k: best.get(k) for k in ("at", "level", "metric", "value", "interval")}}
    started = time.perf_counter()

    def progress(done, total, text):  # the choice takes minutes on large models
        _say(f"tfue: --at auto [{done}/{total}] {text}"
                   + _eta(time.perf_counter() - started, done, total - done), err=True)

    pick = choose_by_agreement(model, method, auto_feeds(model), tolerance=tolerance,
                               sigma_mode=sigma_mode, seed=0 if seed is None else seed,
                               pad=pad, layout=layout, progress=progress)
    _say(f"tfue: --at auto picked {pick['at']} (index {pick['index']}, depth "
               f"{pick['depth']:.2f}) at level {pick['level']:g}: {pick['reason']}", err=True)
    return pick["at"], pick["level"], {"from": "agreement" if "agreement" in pick else
                                       "tolerability", **{k: v for k, v in pick.items()
                                                          if k != "points"}}


def _split_members(model, inputs, method):
    """(models, inputs): with --method ensemble, .onnx files among INPUTS are members."""
    if method != "ensemble":
        return [model], list(inputs)
    models = [model] + [p for p in inputs if _is_model(p)]
    inputs = [p for p in inputs if not _is_model(p)]
    if not inputs:
        raise TfueError("no inputs given besides the ensemble's models",
                        "add image files, .npy/.npz arrays or a folder of them")
    return models, inputs


def _is_model(path) -> bool:
    """An .onnx file, or a folder of models (holding .onnx files and no input files)."""
    from .io import ARRAY_EXTS, IMAGE_EXTS

    path = os.fspath(path)
    if os.path.isdir(path):
        names = [f.lower() for f in os.listdir(path)]
        return any(f.endswith(".onnx") for f in names) and \
            not any(f.endswith(IMAGE_EXTS + ARRAY_EXTS) for f in names)
    return path.lower().endswith(".onnx")


def _models(paths, method) -> tuple:
    """(model, members, notes): the model file, the other ensemble members (ModelInfos) and
    what was counted once or skipped; folders are expanded, the member list said on stderr."""
    from .graph.blackbox import collect_members, model_files

    if method == "ensemble":
        infos, notes = collect_members(paths)
        for note in notes:
            click.echo(f"tfue: {note}", err=True)
        _say(f"tfue: ensemble of {len(infos)} member(s): "
                   + ", ".join(m.path for m in infos), err=True)
        return infos[0].path, infos[1:], notes
    files = [f for f, _ in model_files(paths)]
    if len(files) > 1:
        raise TfueError(f"{len(files)} models given ({', '.join(files)}), but only "
                        "--method ensemble takes several",
                        "give one model, or use --method ensemble")
    return files[0], [], []


def _estimator(models, method, at, sigma, sigma_mode, rate, samples, seed, strategy, provider,
               transforms, layout, softmax, classify, class_axis, sweep_result=None,
               tolerance=0.05, auto_feeds=None, pad=None, no_cache=False, threads=None, **kw):
    """The Estimator the options describe; ``models`` are the model (and ensemble members).

    ``--at auto`` is resolved here, from a sweep result or without targets on
    ``auto_feeds(model)`` (``choose.choose_by_agreement``: the point whose variance agrees
    best with infer-transformation's), and what was picked and why goes to stderr. With
    ``--method ensemble`` folders are expanded into members (each file once,
    non-members skipped) and the member list goes to stderr.
    """
    import dataclasses

    from .runner import Estimator
    from .perturb import check_seed

    check_seed(seed)
    model, members, member_notes = _models(models, method)
    if pad == "auto":  # detected once, said once
        pad = _auto_pad(model, layout)
    auto = None
    if at == "auto":
        at, level, auto = _auto_location(model, method, sigma_mode, sweep_result, tolerance,
                                         auto_feeds, seed, pad, layout)
        if method == "noise" and sigma is None:
            sigma = level
        if method == "dropout" and rate is None:
            rate = level
    elif sweep_result is not None:
        raise TfueError("--sweep-result is used with --at auto", "add --at auto")
    spec = _spec(method, at, sigma, sigma_mode, rate, transforms, layout, members)
    if member_notes:
        spec = dataclasses.replace(spec, notes=tuple(member_notes))
    est = Estimator(model, spec, samples=samples, seed=seed, provider=provider,
                    strategy=strategy, softmax=softmax,
                    classify="auto" if classify is None else classify, class_axis=class_axis,
                    pad=pad, layout=layout, cache=not no_cache, threads=threads, **kw)
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
        raise TfueError(f"{name} must be comma-separated numbers, got {text!r}",
                        f"e.g. {name} 0.485,0.456,0.406") from None


def _parse_bytes(text) -> int:
    """'512M', '2G', '1.5G' or a plain number of bytes (finite, at least 1 byte)."""
    import math

    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    t = str(text).strip().upper().rstrip("B")
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        value = -1
    if not (math.isfinite(value) and value >= 1):
        raise TfueError(f"--max-memory must be a size like 512M or 2G, got {text!r}",
                        "e.g. --max-memory 2G")
    return int(value)


def _parse_size(text):
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
    except ValueError:
        raise TfueError(f"--resize must look like HxW, got {text!r}", "e.g. --resize 640x640") \
            from None
    return (h, w)


def _item_name(item) -> str:
    """What progress shows for an input: its file name (a path, or a pair's source)."""
    return os.path.basename(str(getattr(item, "source", item)))


class _progress:
    """A progress bar over inputs on stderr."""

    def __init__(self, items, label="sampling"):
        self.bar = click.progressbar(items, label=label, file=sys.stderr,
                                     show_pos=True,
                                     item_show_func=lambda p: p and _item_name(p))

    def __iter__(self):
        with self.bar as bar:
            yield from bar


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


quiet_option = click.option(
    "--quiet", "-q", is_flag=True, expose_value=False, is_eager=True, callback=_set_quiet,
    help="No progress or information lines on stderr (warnings and errors still).")


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


def _samples_said(path):
    """A ``progress(done, total)`` for one input's samples: a line on stderr at most
    every SAMPLES_EVERY seconds (long inputs show they are alive), with an ETA."""
    start = time.perf_counter()
    last = [start]

    def say(done, total):
        now = time.perf_counter()
        if done < total and now - last[0] >= SAMPLES_EVERY:
            last[0] = now
            _say(f"tfue: sampling {_item_name(path)}: {done}/{total} samples"
                 + _eta(now - start, done, total - done))
    return say


def _progress_for_stderr():
    if _QUIET[0]:
        return None
    return _progress if sys.stderr.isatty() else _lines


def _notes(est, verbose):
    if verbose:
        for note in est.notes:
            click.echo(f"tfue: {note}", err=True)


# --- run --------------------------------------------------------------------------------
@main.command()
@click.argument("model", type=click.Path())
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@perturbation_options
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(),
              help="Folder for NAME.npz, NAME.variance.png and summary.json.")
@click.option("--chunk", type=int, default=None,
              help="Samples per session run (default: measured on the first input, within "
                   "--max-memory).")
@click.option("--max-memory", default="2G", show_default=True,
              help="Memory the samples of one run may take (e.g. 512M, 2G); sets the chunk.")
@click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default="rgb",
              show_default=True, help="Channel order the model expects.")
@click.option("--scale", type=float, default=1 / 255, show_default="1/255",
              help="Pixel values are multiplied by this first (16-bit images: the default "
                   "becomes 1/65535).")
@click.option("--mean", "norm_mean", default=None, help="Per-channel mean to subtract, e.g. "
                                                        "0.485,0.456,0.406.")
@click.option("--std", "norm_std", default=None, help="Per-channel std to divide by.")
@click.option("--resize", default=None,
              help="Resize images to HxW (default: the model's fixed size, else unchanged).")
@click.option("--save-samples", is_flag=True, help="Also store the N samples in the .npz.")
@click.option("--compress", is_flag=True,
              help="Deflate the .npz files: smaller, but far slower to write.")
@click.option("--shared-scale", is_flag=True, help="One colour range for every NAME.variance.png.")
@click.option("--overlay", is_flag=True, help="Also write NAME.overlay.png (map over the input).")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
@click.option("--force", is_flag=True, help="Overwrite existing result files.")
def run(model, inputs, out_dir, chunk, max_memory, channel_order, scale, norm_mean, norm_std,
        resize, save_samples, compress, shared_scale, overlay, as_json, force, verbose,
        **perturbation):
    """Uncertainty maps for INPUTS (images, .npy/.npz arrays, or folders) under MODEL.

    With --method ensemble, MODEL and every .onnx file (or folder of them) among
    INPUTS are the members.
    """
    from .io import ImageOptions, check_image_options, check_out_dir, collect_inputs
    from .report import planned_files, run_inputs

    max_memory = _parse_bytes(max_memory)
    check_out_dir(out_dir)
    models, inputs = _split_members(model, inputs, perturbation["method"])
    options = ImageOptions(layout=perturbation["layout"], channel_order=channel_order,
                           scale=scale, mean=_parse_floats("--mean", norm_mean),
                           std=_parse_floats("--std", norm_std), resize=_parse_size(resize))
    files = collect_inputs(inputs)
    check_image_options(files, options)
    # Everything that can be checked before the long work is checked first.
    _refuse_existing(planned_files(out_dir, files), force)
    def auto_feeds(model):
        from .io import load_input
        from .model import inspect_model

        inputs_of = inspect_model(model).inputs
        return [load_input(f, inputs_of, options) for f in files[:4]]

    est = _estimator(models, chunk=chunk, keep_samples=save_samples, auto_feeds=auto_feeds,
                     max_memory=max_memory, **perturbation)
    progress = _progress_for_stderr()
    try:
        summary = run_inputs(est, files, out_dir, options, progress=progress,
                             note=lambda line: _say(f"tfue: {line}", warning=line.startswith(
                                 "warning")),
                             compress=compress, started=_STARTED,
                             sample_progress=None if progress is not _lines else _samples_said,
                             shared_scale=shared_scale, overlay=overlay)
    finally:
        _notes(est, verbose)
    if as_json:
        from .io import plain_json

        click.echo(json.dumps(plain_json(summary), indent=2, default=str))
        _exit_for(summary)
        return
    level = "" if summary.get("level") is None else f" (level {summary['level']})"
    click.echo(f"{summary['method']} at {summary['location']}{level}, "
               f"N={summary['samples']}, seed {summary['seed']}, strategy "
               f"{summary['strategy']}, provider {summary['provider']}")
    for item in summary["inputs"]:
        what = "entropy" if summary["method"] == "entropy" else "variance"
        value = item.get(f"mean_{what}")
        flag = " (NaN/Inf: see the warning)" if item.get("non_finite") else ""
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
    _exit_for(summary)


def _exit_for(summary):
    """Exit 3 when results hold NaN or Inf (written and warned about), else return."""
    if summary.get("warnings"):
        sys.exit(EXIT_NON_FINITE)


# --- export -------------------------------------------------------------------------------
@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--output", "-o", "out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the uncertainty model (.onnx).")
@perturbation_options
@click.option("--example", type=click.Path(exists=False), default=None,
              help="An input (.npy/.npz) to verify on (default: a synthetic one).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def export(models, out, verbose, example, force, **perturbation):
    """Write MODEL's uncertainty graph (N fixed) as a standalone ONNX model.

    With --method ensemble, give every member model.
    """
    from .io import check_new_file, collect_inputs, load_input

    if perturbation["method"] == "entropy":
        raise TfueError("--method entropy has nothing to export: it is one plain run",
                        "compute the entropy of the model's output directly")
    check_new_file(out, force)

    def auto_feeds(model):
        from .model import inspect_model
        from .runner import Estimator

        info = inspect_model(model)
        if example:
            return [load_input(collect_inputs([example])[0], info.inputs)]
        return [Estimator.synthetic_input(info)]

    est = _estimator(list(models), auto_feeds=auto_feeds, **perturbation)
    feeds = load_input(collect_inputs([example])[0], est.info.inputs) if example else None
    try:
        path = est.export(out, example=feeds, force=force)
    finally:
        _notes(est, verbose)
    ug = est.standalone_graph(feeds)  # the graph export wrote (cached)
    written = est.exported_files
    data = f" (weights in {written[1]} beside it)" if len(written) > 1 else ""
    seed = f"seed {est.seed}, " if ug.sampling else ""  # transforms, ensembles draw nothing
    click.echo(f"wrote {path}{data}: {est.spec.method} at {est.location}, N={est.samples}, "
               f"{seed}strategy {ug.strategy}; outputs " + ", ".join(est.exported_outputs))


# --- evaluate and sweep ----------------------------------------------------------------------
def pair_options(f):
    """Where the (input, target) pairs come from, and how images are read."""
    opts = [
        click.option("--targets", type=click.Path(), default=None,
                     help="Folder of targets named after the inputs (.npy or images)."),
        click.option("--sr-scale", type=int, default=None,
                     help="Super-resolution: INPUTS are high-resolution images; the input is "
                          "each downscaled by S (bicubic), the target the image."),
        click.option("--target-scale", type=float, default=1 / 255, show_default="1/255",
                     help="Target images' pixel values are multiplied by this."),
        click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default="rgb",
                     show_default=True),
        click.option("--scale", type=float, default=1 / 255, show_default="1/255",
                     help="Input pixel values are multiplied by this first."),
        click.option("--mean", "norm_mean", default=None, help="Per-channel input mean."),
        click.option("--std", "norm_std", default=None, help="Per-channel input std."),
        click.option("--resize", default=None, help="Resize input images to HxW."),
        click.option("--block-sigma", type=float, default=2.0, show_default=True,
                     help="Smoothing scale of the local-center-of-mass blocks (pixels); "
                          "block correlation depends on it: compare at one scale."),
        click.option("--bootstrap", type=int, default=1000, show_default=True,
                     help="Resamples of the images for the 95% intervals of every metric "
                          "(seeded by the run's seed); 0 for none, else at least 100."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _pairs(info, inputs, targets, sr_scale, target_scale, layout, channel_order, scale,
           norm_mean, norm_std, resize):
    from .evaluate import make_pairs
    from .io import ImageOptions

    options = ImageOptions(layout=layout, channel_order=channel_order, scale=scale,
                           mean=_parse_floats("--mean", norm_mean),
                           std=_parse_floats("--std", norm_std), resize=_parse_size(resize))
    return make_pairs(info, inputs, targets=targets, sr_scale=sr_scale, options=options,
                      target_scale=target_scale)


def _refuse_existing(paths, force):
    """Refuse, before any work, to overwrite result files without --force."""
    if force:
        return
    for path in paths:
        if os.path.exists(path):
            raise TfueError(f"'{path}' already exists and would be overwritten",
                            "pass --force to overwrite, or choose another --out folder")


@main.command()
@click.argument("model", type=click.Path())
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@perturbation_options
@pair_options
@click.option("--block-grid", type=int, default=None,
              help="Use square blocks N px on a side instead of the local center of mass.")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(),
              help="Folder for metrics.json, metrics.csv and NAME.eval.png pictures.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout.")
@click.option("--force", is_flag=True, help="Overwrite existing result files.")
def evaluate(model, inputs, out_dir, as_json, force, verbose, targets, sr_scale, target_scale,
             channel_order, scale, norm_mean, norm_std, resize, block_sigma, block_grid,
             bootstrap, **perturbation):
    """How well MODEL's uncertainty tracks its error on (input, target) pairs."""
    from .evaluate import evaluate as run_evaluation
    from .evaluate import format_table, write_evaluation
    from .io import cleanup_out_dir, prepare_out_dir

    _refuse_existing([os.path.join(out_dir, n) for n in ("metrics.json", "metrics.csv")], force)
    from .metrics import check_blocks, check_bootstrap

    check_bootstrap(bootstrap)
    check_blocks(block_sigma, block_grid)
    models, inputs = _split_members(model, inputs, perturbation["method"])

    def pairs_for(info):
        return _pairs(info, inputs, targets, sr_scale, target_scale, perturbation["layout"],
                      channel_order, scale, norm_mean, norm_std, resize)

    def auto_feeds(first):  # --at auto without a sweep: the first pairs' inputs
        from .model import inspect_model

        return [p.load()[0] for p in pairs_for(inspect_model(first))[:4]]

    est = _estimator(models, auto_feeds=auto_feeds, **perturbation)
    pairs = pairs_for(est.info)
    _refuse_existing([os.path.join(out_dir, f"{p.name}.eval.png") for p in pairs], force)
    if pairs:  # image options and the graph checked on the first pair before any work
        est.prepare(pairs[0].load()[0])
    with cleanup_out_dir(out_dir):
        prepare_out_dir(out_dir)
        try:
            result = run_evaluation(est, pairs, out_dir=out_dir, sigma=block_sigma,
                                    grid=block_grid, progress=_progress_for_stderr(),
                                    bootstrap=bootstrap)
        finally:
            _notes(est, verbose)
        files = write_evaluation(out_dir, result)
    for note in result.get("notes", ()):
        click.echo(f"tfue: {note}", err=True)
    if as_json:
        from .io import plain_json
        click.echo(json.dumps(plain_json(result), indent=2, default=str))
        return
    m = result["metadata"]
    click.echo(f"{m['method']} at {m['at']}, N={m['samples']}, seed {m['seed']}, "
               f"provider {m['provider']}: correlation of uncertainty with error")
    click.echo(format_table(result["table"]))
    pictures = sum(1 for item in result["images"] if item.get("picture"))
    click.echo("wrote " + ", ".join(files) + (f" and {pictures} picture(s)" if pictures else "")
               + f" in {out_dir}")


@main.command()
@quiet_option
@click.argument("model", type=click.Path())
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--methods", default="noise,dropout", show_default=True,
              help="Which of noise, dropout to sweep.")
@click.option("--at", "at", default=None,
              help="'all', or comma-separated locations (default: 8 evenly spaced).")
@click.option("--at-count", type=int, default=None, help="K evenly spaced locations.")
@click.option("--sigmas", default=None, help="Noise levels (default 0.01,0.02,0.05,0.1,0.2,0.5).")
@click.option("--rates", default=None, help="Dropout rates (default 0.01,0.02,0.05,0.1,0.2,0.5).")
@click.option("--sigma-mode", type=click.Choice(["absolute", "relative"]), default="absolute",
              show_default=True)
@click.option("--samples", "-n", type=int, default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--metric", default="pixel_l1", show_default=True,
              help="What 'best' means: {pixel,block,mean,pixel_pooled,block_pooled,"
                   "pixel_spearman,ause,aurg}_{l1,l2}.")
@click.option("--layout", type=click.Choice(["auto", "NCHW", "NHWC"]), default="auto")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@pad_option
@pair_options
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(),
              help="Folder for sweep.jsonl (resumable), sweep.csv/json, best.json, plots.")
@click.option("--force", is_flag=True, help="Start over in a folder holding another sweep.")
@click.option("--no-cache", is_flag=True,
              help="Verify every graph and measure afresh, ignoring and not writing tfue's "
                   "cache.")
def sweep(model, inputs, methods, at, at_count, sigmas, rates, sigma_mode, samples, seed,
          metric, layout, provider, pad, targets, sr_scale, target_scale, channel_order, scale,
          norm_mean, norm_std, resize, block_sigma, bootstrap, out_dir, force, no_cache):
    """Where and how strongly to perturb: evaluate locations x levels on (input, target) pairs.

    Stopped sweeps resume: run the same command again.
    """
    from .io import cleanup_out_dir, prepare_out_dir
    from .model import inspect_model
    from .sweep import check_metric, sweep as run_sweep

    from .perturb import check_seed

    check_metric(metric)
    check_seed(seed)
    from .metrics import check_blocks, check_bootstrap

    check_bootstrap(bootstrap)
    check_blocks(block_sigma, None)
    model = _models([model], "sweep")[0]
    info = inspect_model(model)
    if pad == "auto":
        pad = _auto_pad(model, layout)
    pairs = _pairs(info, inputs, targets, sr_scale, target_scale, layout, channel_order, scale,
                   norm_mean, norm_std, resize)
    clock = {}

    def progress(done, total, point):
        from .sweep import metric_interval, metric_value
        now = time.perf_counter()
        clock.setdefault("start", (started, done - 1))  # points resumed are not timed
        t0, before = clock["start"]
        iv = metric_interval(point["table"], metric)
        band = f" [{iv[0]:.4f}, {iv[1]:.4f}]" if iv and None not in iv else ""
        _say(f"[{done}/{total}] {point['method']} at {point['at']} (depth "
                   f"{point['depth']:.2f}) level {point['level']:g}: {metric} = "
                   f"{metric_value(point['table'], metric):.4f}{band}"
                   + _eta(now - t0, done - before, total - done), err=True)

    started = time.perf_counter()

    with cleanup_out_dir(out_dir):
        prepare_out_dir(out_dir)
        result = run_sweep(model, pairs, methods=[m.strip() for m in methods.split(",")],
                           at=at, at_count=at_count, sigmas=_parse_floats("--sigmas", sigmas),
                           rates=_parse_floats("--rates", rates), samples=samples, seed=seed,
                           metric=metric, out_dir=out_dir, sigma_mode=sigma_mode,
                           provider=provider, progress=progress, block_sigma=block_sigma,
                           force=force, pad=pad, layout=layout, bootstrap=bootstrap,
                           cache=not no_cache)
    from .sweep import format_best

    click.echo(format_best(result))
    if result.get("points_of_other_grids"):
        click.echo(f"({result['points_of_other_grids']} finished point(s) of another grid in "
                   f"{out_dir}/sweep.jsonl are kept apart: not in this summary or its best)")
    click.echo(f"wrote sweep.jsonl, sweep.csv, sweep.json, best.json and plots in {out_dir}")


# --- demo ---------------------------------------------------------------------------------
@main.command()
@click.option("--out", "-o", "out_dir", default="tfue-demo", show_default=True,
              type=click.Path(), help="Folder for the demo's maps and summary.")
@click.option("--samples", "-n", type=int, default=8, show_default=True,
              help="Samples for infer-dropout.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--force", is_flag=True, help="Overwrite an earlier demo's files.")
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
