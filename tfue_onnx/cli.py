"""The ``tfue`` command line: a thin click shell over the Python API.

Every TfueError becomes one line on stderr ("error: ... Hint: ...") and exit
code 2. Heavy modules load inside the commands, so ``tfue --help`` is instant.
"""

from __future__ import annotations

import json
import os
import sys

import click

from .errors import TfueError

EXIT_USAGE = 2


def _fail(exc: TfueError):
    click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_USAGE)


class _Group(click.Group):
    """Turns TfueError into one line and exit 2, wherever it is raised."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TfueError as exc:
            _fail(exc)


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

    d = inspect_model(model).describe()
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
        click.echo(f"  {dr['name']}  ratio {dr['ratio']}  input {dr['input']}")


def _spread(items, k):
    idx = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in idx]


# --- shared perturbation options ------------------------------------------------------------
METHODS = ["noise", "dropout", "mc-dropout", "transform", "ensemble", "entropy"]


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
        click.option("--sigma", type=float, default=None, help="Noise std (default 0.1)."),
        click.option("--sigma-mode", type=click.Choice(["absolute", "relative"]),
                     default="absolute", show_default=True,
                     help="relative: sigma times the tensor's own std."),
        click.option("--rate", type=float, default=None,
                     help="Dropout rate p in [0, 1) (default 0.1; mc-dropout: each node's own)."),
        click.option("--samples", "-n", type=int, default=None,
                     help="Number of perturbed samples N (>= 2; default 8). Transforms and "
                          "ensembles take N from their list."),
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
                     help="Random seed (default: random, recorded)."),
        click.option("--strategy", type=click.Choice(["auto", "batched", "loop"]),
                     default="auto", show_default=True, help="Sampling strategy."),
        click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                     show_default=True, help="Execution provider."),
        click.option("--verbose", "-v", is_flag=True,
                     help="Say which strategies were tried and why."),
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


def _is_model(path) -> bool:
    path = os.fspath(path)
    if os.path.isdir(path):
        return any(f.lower().endswith(".onnx") for f in os.listdir(path))
    return path.lower().endswith(".onnx")


def _models(paths) -> list:
    """Expand folders of models; every path must be an .onnx file."""
    found = []
    for p in paths:
        if os.path.isdir(p):
            found += sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".onnx"))
        else:
            found.append(p)
    return found


def _estimator(models, method, at, sigma, sigma_mode, rate, samples, seed, strategy, provider,
               transforms, layout, softmax, classify, class_axis, **kw):
    """The Estimator the options describe; ``models`` are the model (and ensemble members)."""
    from .api import Estimator

    models = _models(models)
    if method != "ensemble" and len(models) > 1:
        raise TfueError(f"{len(models)} models given, but only --method ensemble takes several",
                        "give one model, or use --method ensemble")
    spec = _spec(method, at, sigma, sigma_mode, rate, transforms, layout, models[1:])
    return Estimator(models[0], spec, samples=samples, seed=seed, provider=provider,
                     strategy=strategy, softmax=softmax,
                     classify="auto" if classify is None else classify, class_axis=class_axis,
                     **kw)


def _parse_floats(name, text):
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise TfueError(f"{name} must be comma-separated numbers, got {text!r}",
                        f"e.g. {name} 0.485,0.456,0.406") from None


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


class _progress:
    """A progress bar over inputs on stderr."""

    def __init__(self, items, label="sampling"):
        self.bar = click.progressbar(items, label=label, file=sys.stderr,
                                     show_pos=True, item_show_func=lambda p: p and
                                     os.path.basename(p))

    def __iter__(self):
        with self.bar as bar:
            yield from bar


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
@click.option("--chunk", type=int, default=None, help="Samples per session run (default 8).")
@click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default="rgb",
              show_default=True, help="Channel order the model expects.")
@click.option("--scale", type=float, default=1 / 255, show_default="1/255",
              help="Pixel values are multiplied by this first.")
@click.option("--mean", "norm_mean", default=None, help="Per-channel mean to subtract, e.g. "
                                                        "0.485,0.456,0.406.")
@click.option("--std", "norm_std", default=None, help="Per-channel std to divide by.")
@click.option("--resize", default=None,
              help="Resize images to HxW (default: the model's fixed size, else unchanged).")
@click.option("--save-samples", is_flag=True, help="Also store the N samples in the .npz.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
@click.option("--force", is_flag=True, help="Overwrite existing result files.")
def run(model, inputs, out_dir, chunk, channel_order, scale, norm_mean, norm_std, resize,
        save_samples, as_json, force, verbose, **perturbation):
    """Uncertainty maps for INPUTS (images, .npy/.npz arrays, or folders) under MODEL.

    With --method ensemble, MODEL and every .onnx file (or folder of them) among
    INPUTS are the members.
    """
    from .io import ImageOptions, collect_inputs, prepare_out_dir
    from .report import planned_files, run_inputs

    models = [model]
    if perturbation["method"] == "ensemble":
        models += [p for p in inputs if _is_model(p)]
        inputs = [p for p in inputs if not _is_model(p)]
        if not inputs:
            raise TfueError("no inputs given besides the ensemble's models",
                            "add image files, .npy/.npz arrays or a folder of them")
    options = ImageOptions(layout=perturbation["layout"], channel_order=channel_order,
                           scale=scale, mean=_parse_floats("--mean", norm_mean),
                           std=_parse_floats("--std", norm_std), resize=_parse_size(resize))
    files = collect_inputs(inputs)
    # Everything that can be checked before the long work is checked first.
    if os.path.exists(out_dir) and not force:
        for path in planned_files(out_dir, files):
            if os.path.exists(path):
                raise TfueError(f"'{path}' already exists and would be overwritten",
                                "pass --force to overwrite, or choose another --out folder")
    est = _estimator(models, chunk=chunk, keep_samples=save_samples, **perturbation)
    prepare_out_dir(out_dir)
    progress = _progress if sys.stderr.isatty() else None
    try:
        summary = run_inputs(est, files, out_dir, options, progress=progress)
    finally:
        _notes(est, verbose)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    level = "" if summary.get("level") is None else f" (level {summary['level']})"
    click.echo(f"{summary['method']} at {summary['location']}{level}, "
               f"N={summary['samples']}, seed {summary['seed']}, strategy "
               f"{summary['strategy']}, provider {summary['provider']}")
    for item in summary["inputs"]:
        what = "entropy" if summary["method"] == "entropy" else "variance"
        value = item.get(f"mean_{what}")
        click.echo(f"  {item['input']}: mean {what} "
                   f"{'n/a' if value is None else format(value, '.4g')} -> "
                   + ", ".join(item["files"]))
    click.echo(f"summary: {os.path.join(out_dir, 'summary.json')}")


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
    est = _estimator(list(models), **perturbation)
    feeds = load_input(collect_inputs([example])[0], est.info.inputs) if example else None
    try:
        path = est.export(out, example=feeds, force=force)
    finally:
        _notes(est, verbose)
    ug = est.uncertainty_graph(feeds)
    outs = ", ".join(f"{n}, {n}.mean, {n}.variance" for n in ug.stats_outputs)
    click.echo(f"wrote {path}: {est.spec.method} at {est.location}, N={est.samples}, seed "
               f"{est.seed}, strategy {ug.strategy}; outputs {outs}")


def entry():  # pragma: no cover - console script shim
    main()
