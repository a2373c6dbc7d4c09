"""The location study (the paper's Figure 4), and choosing where and how hard to perturb.

``sweep`` evaluates noise and/or dropout over locations and levels on a
calibration set. Every finished point is appended to ``sweep.jsonl`` at once,
so a stopped sweep resumes where it was. One session per (method, location)
serves every level: the level is an input of the uncertainty graph.

``load_best`` gives ``--at auto`` the best point of a saved sweep; without
targets, ``choose.choose_by_agreement`` picks (and falls back to
``choose_by_tolerability`` here: the strongest perturbation whose mean output
stays within a tolerance).
"""

from __future__ import annotations

import json
import os

import numpy as np

from . import metrics
from .errors import ArgumentError, TfueError
from .evaluate import evaluate
from .files import append_log, atomic_write_bytes, prepare_out_dir, read_log, save_json
from .layout import evenly_spaced
from .metrics import metric_interval, metric_value

NOISE_LEVELS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
DROPOUT_LEVELS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
METRICS = tuple(f"{col}_{kind}" for kind in metrics.ERRORS for col in metrics.COLUMNS)
METRICS_VERSION = 3  # per-image correlations, Poggi AUSE, L2 own order: older sweeps do not mix


def check_metric(metric: str) -> str:
    """Validate a metric name such as pixel_l1 or ause_l2.

    Raises:
        ArgumentError (a ValueError): an unknown metric (the hint lists them).
    """
    if metric not in METRICS:
        raise ArgumentError(f"unknown metric {metric!r}", "use one of " + ", ".join(METRICS))
    return metric


def better(metric: str, a: float, b: float) -> bool:
    """Whether value ``a`` beats ``b`` for ``metric`` (NaN never wins)."""
    if a != a:
        return False
    if b != b:
        return True
    return a > b if metrics.higher_is_better(metric.rsplit("_", 1)[0]) else a < b


def sweep_locations(info, at=None, at_count=None) -> list:
    """Candidates to sweep: ``at`` 'all' or a list of locations, or ``at_count`` evenly
    spaced ones (default 8).

    Raises:
        ArgumentError (a ValueError): ``at_count`` < 1; TfueError: an unknown location.
    """
    cands = info.candidates
    if at_count is not None and at is not None:
        raise ArgumentError("give --at or --at-count, not both",
                        "--at lists the locations; --at-count K spaces K of them evenly")
    if at_count is not None:
        if int(at_count) < 1:
            raise ArgumentError(f"--at-count must be >= 1, got {at_count}", "e.g. --at-count 8")
        return evenly_spaced(cands, int(at_count))
    if at in (None, "all"):
        return list(cands) if at == "all" else sweep_locations(info, at_count=8)
    items = at if isinstance(at, (list, tuple)) else [a.strip() for a in str(at).split(",")]
    return [info.resolve_location(a) for a in items if a != ""]


def _point_key(p: dict) -> tuple:
    return (p["method"], p["at"], float(p["level"]))


def sweep(model, pairs, methods=("noise", "dropout"), at=None, at_count=None, sigmas=None,
          rates=None, samples: int = 8, seed: int | None = None, metric: str = "pixel_l1",
          out_dir: str | None = None, sigma_mode: str = "absolute", provider: str = "auto",
          progress=None, block_sigma=metrics.DEFAULT_SIGMA, force: bool = False,
          pad=None, layout: str = "auto", bootstrap: int = metrics.BOOTSTRAP,
          cache=True, **runtime) -> dict:
    """Evaluate every (method, location, level) on (input, target) pairs (the paper's Fig. 4).

    Args:
        model: the model's path.
        pairs: ``evaluate.Pair`` objects (``evaluate.make_pairs``).
        methods: some of ``noise``, ``dropout``; at, at_count: see ``sweep_locations``.
        sigmas, rates: the levels (default NOISE_LEVELS, DROPOUT_LEVELS); samples: N.
        seed: the sampling and bootstrap seed; None: that of the sweep resumed in
            ``out_dir``, else a random one (recorded in the config).
        metric: what "best" means (``METRICS``); progress: ``progress(done, total, point)``.
        out_dir: the folder of sweep.jsonl (resumable), sweep.csv/json, best.json, or None.
        pad (pixels per side, or ``"auto"``), layout, provider, cache and ``runtime``
            (threads, chunk, max_memory, io_binding, strategy): the Estimator's.

    Points carry bootstrap intervals (``bootstrap`` resamples, seeded by ``seed``); the best
    lists the points its interval overlaps; the baseline (``metrics.gradient_energy``) once.

    Returns:
        A dict: ``config``, ``metric``, ``points`` (each with ``method``, ``at``, ``index``,
        ``depth``, ``level``, ``table``), ``best`` (None without points), and
        ``points_of_other_grids`` / ``baseline`` when there are any.

    Raises:
        ArgumentError (a ValueError): a bad metric, method, level, bootstrap or block scale.
        TfueError: ``out_dir`` holds a sweep with other settings (without ``force``).
    """
    from .model import inspect_model

    check_metric(metric)
    metrics.check_blocks(block_sigma, None)
    bootstrap, info = metrics.check_bootstrap(bootstrap), inspect_model(model)
    locations = sweep_locations(info, at, at_count)
    grids = _grids(methods, sigmas, rates, sigma_mode)
    if pad == "auto":  # detected once for every point
        pad = _auto_pad(info, layout)
    config = _config(model, pairs, samples, _sweep_seed(seed, out_dir), sigma_mode,
                     block_sigma, bootstrap, pad)
    done = _resume(out_dir, config, force)
    # Points of this grid only: those of another grid run into the same folder stay in
    # sweep.jsonl, apart (neither counted nor candidates for the best).
    wanted = {(m, c.name, float(lv)) for m in methods for c in locations for lv in grids[m]}
    points = [p for k, p in done.items() if k in wanted]
    plan = {"model": model, "pairs": pairs, "loaded": [p.load() for p in pairs],
            "config": config, "out_dir": out_dir, "block_sigma": block_sigma,
            "bootstrap": bootstrap, "progress": progress, "total": len(wanted),
            "estimator": dict(provider=provider, pad=pad, layout=layout, cache=cache, **runtime)}
    baseline = next((p["baseline"] for p in done.values() if p.get("baseline")), None)
    for method, cand in ((m, c) for m in methods for c in locations):
        todo = [lv for lv in grids[method] if (method, cand.name, float(lv)) not in done]
        if todo:
            baseline = _sweep_location(plan, method, cand, todo, points, baseline)
    apart = sum(1 for k in done if k not in wanted)
    return _summary(plan, points, metric, sigma_mode, apart, baseline)


def _strongest_per_location(tried: list) -> dict:
    """Location name -> its entry of ``tried`` with the strongest level."""
    best = {}
    for t in tried:
        if t["at"] not in best or t["level"] > best[t["at"]]["level"]:
            best[t["at"]] = t
    return best


def _auto_pad(info, layout) -> int:
    from .border import resolve_pad

    return resolve_pad(info, "auto", layout)[0]


def _config(model, pairs, samples, seed, sigma_mode, block_sigma, bootstrap, pad) -> dict:
    """What a sweep's points depend on: a folder resumes only a sweep with the same."""
    config = {"model": os.path.abspath(model), "inputs": [p.source for p in pairs],
              "samples": samples, "seed": seed, "sigma_mode": sigma_mode,
              "block_sigma": float(block_sigma), "bootstrap": int(bootstrap),
              "metrics_version": METRICS_VERSION}
    if pad is not None:
        config["pad"] = pad
    return config


def _grids(methods, sigmas, rates, sigma_mode) -> dict:
    """The levels per method, each checked (as a spec) before any sampling."""
    from .perturb import Noise, check_level

    Noise(0.0, mode=sigma_mode)  # checks the mode
    grids = {"noise": tuple(sigmas or NOISE_LEVELS), "dropout": tuple(rates or DROPOUT_LEVELS)}
    for m in methods:
        if m not in grids:
            raise ArgumentError(f"sweep covers noise and dropout, not {m!r}",
                                "use --methods noise,dropout")
        grids[m] = tuple(check_level(m, lv, "--sigmas" if m == "noise" else "--rates")
                         for lv in grids[m])
    return grids


def _sweep_seed(seed, out_dir) -> int:
    """``seed`` checked; None: the seed of the sweep in ``out_dir`` (so running the same
    command again resumes it), else a random one."""
    import secrets

    from .perturb import check_seed

    seed = check_seed(seed)
    if seed is not None:
        return seed
    path = None if out_dir is None else os.path.join(out_dir, "sweep.jsonl")
    if path and os.path.exists(path):
        try:
            with open(path) as f:
                old = json.loads(f.readline()).get("config", {}).get("seed")
        except (OSError, ValueError, AttributeError):
            old = None
        if isinstance(old, int):
            return old
    return secrets.randbelow(2**31)


def _sweep_location(plan, method, cand, todo, points, baseline):
    """Evaluate ``todo`` levels of ``method`` at ``cand`` with one session; append the
    points (and to sweep.jsonl); return the baseline (scored with the first point)."""
    from .perturb import Dropout, Noise
    from .runner import Estimator

    config, out_dir = plan["config"], plan["out_dir"]
    spec = Noise(todo[0], at=cand.name, mode=config["sigma_mode"]) if method == "noise" else \
        Dropout(todo[0], at=cand.name)
    est = Estimator(plan["model"], spec, samples=config["samples"], seed=config["seed"],
                    **plan["estimator"])
    for level in todo:
        result = evaluate(est, plan["pairs"], level=level, loaded=plan["loaded"],
                          sigma=plan["block_sigma"], bootstrap=plan["bootstrap"],
                          bootstrap_seed=config["seed"], baseline=baseline is None)
        table = result["table"]
        if baseline is None and "baseline" in table:
            baseline = table.pop("baseline")
        else:
            table.pop("baseline", None)
        point = {"method": method, "at": cand.name, "index": cand.index,
                 "depth": cand.depth, "op": cand.op, "level": float(level), "table": table,
                 "mean_uncertainty": float(np.mean([i["mean_uncertainty"]
                                                    for i in result["images"]]))}
        if baseline is not None and not any(p.get("baseline") for p in points):
            point["baseline"] = baseline  # stored once, for a resumed sweep
        points.append(point)
        if out_dir is not None:  # the config line comes with the first finished point
            append_log(os.path.join(out_dir, "sweep.jsonl"), config, point, _jsonable)
        if plan["progress"]:
            plan["progress"](len(points), plan["total"], point)
    return baseline


def _summary(plan, points, metric, sigma_mode, apart, baseline) -> dict:
    """The sweep's summary (best point, kept-apart count, baseline), written when asked."""
    best = None
    for p in points:
        if best is None or better(metric, metric_value(p["table"], metric),
                                  metric_value(best["table"], metric)):
            best = p
    summary = {"config": plan["config"], "metric": metric, "points": points,
               "best": None if best is None else _best(best, points, metric, sigma_mode)}
    if apart:
        summary["points_of_other_grids"] = apart
    if baseline is not None:
        summary["baseline"] = baseline
    if plan["out_dir"] is not None:
        write_sweep(plan["out_dir"], summary)
    return summary


def _best(best: dict, points: list, metric: str, sigma_mode: str) -> dict:
    """The best point's summary, with the points its interval does not separate it from."""
    iv = metric_interval(best["table"], metric)
    close = []
    for p in points:
        if p is best:
            continue
        other = metric_interval(p["table"], metric)
        if metrics.separated(iv, other) is False:
            close.append({"method": p["method"], "at": p["at"], "depth": p["depth"],
                          "level": p["level"], "value": metric_value(p["table"], metric),
                          "interval": other})
    close.sort(key=lambda c: -c["value"] if c["value"] == c["value"] else float("inf"))
    if not metrics.higher_is_better(metric.rsplit("_", 1)[0]):
        close.reverse()
    return {"method": best["method"], "at": best["at"], "index": best["index"],
            "depth": best["depth"], "level": best["level"], "metric": metric,
            "value": metric_value(best["table"], metric), "interval": iv,
            "sigma_mode": sigma_mode, "not_separated": close}


def format_best(summary: dict) -> str:
    """The sweep's best point as text, with its interval and how many points it is not
    separated from (their intervals overlap its own)."""
    b, metric = summary["best"], summary["metric"]
    if b is None:
        return "no point was evaluated"
    iv = b.get("interval")
    text = (f"best for {metric}: {b['method']} at {b['at']} (index {b['index']}, depth "
            f"{b['depth']:.2f}), level {b['level']:g}: {b['value']:.4f}")
    if iv and None not in iv:
        text += f" [95% interval {iv[0]:.4f}, {iv[1]:.4f}]"
        close = b.get("not_separated", [])
        if close:
            top = ", ".join(f"{c['method']} at depth {c['depth']:.2f} level {c['level']:g} "
                            f"({c['value']:.4f})" for c in close[:3])
            text += (f"\nnot separated from {len(close)} other point(s) whose intervals "
                     f"overlap it, e.g. {top}: the data do not single out one best point")
        elif len(summary.get("points", ())) > 1:
            text += "\nseparated from every other point (no interval overlaps it)"
    base = summary.get("baseline")
    if base:
        col, kind = metric.rsplit("_", 1)
        biv = base.get("intervals", {}).get(kind, {}).get(col)
        text += (f"\nsampling-free baseline ({base['map'].split(':')[0]}): {metric} = "
                 f"{base[kind][col]:.4f}" + (f" [{biv[0]:.4f}, {biv[1]:.4f}]"
                                             if biv and None not in biv else ""))
    return text


def _resume(out_dir, config, force) -> dict:
    """Points already finished in ``out_dir``/sweep.jsonl for the same settings (the
    folder made, and proved writable, first)."""
    if out_dir is None:
        return {}
    records = read_log(os.path.join(prepare_out_dir(out_dir), "sweep.jsonl"), config,
                       "a sweep with other settings",
                       "choose another --out folder, or pass --force to start over", force,
                       default=_jsonable)
    return {_point_key(p): p for p in records if "method" in p}


def _jsonable(value):
    return None if isinstance(value, float) and value != value else str(value)


def write_sweep(out_dir: str, summary: dict) -> list:
    """sweep.json, sweep.csv, best.json and one plot per method into ``out_dir``."""
    written = []
    save_json(os.path.join(out_dir, "sweep.json"), summary)
    save_json(os.path.join(out_dir, "best.json"), summary["best"])
    metric = summary["metric"]
    rows = ["method,at,index,depth,level,mean_uncertainty," + ",".join(METRICS) +
            f",{metric}_low,{metric}_high"]
    for p in summary["points"]:
        iv = metric_interval(p["table"], metric) or [None, None]
        rows.append(f"{p['method']},{p['at']},{p['index']},{p['depth']},{p['level']},"
                    f"{p['mean_uncertainty']:.6g}," +
                    ",".join(f"{metric_value(p['table'], m):.6g}" for m in METRICS) + "," +
                    ",".join("" if v is None else f"{v:.6g}" for v in iv))
    atomic_write_bytes(os.path.join(out_dir, "sweep.csv"), ("\n".join(rows) + "\n").encode())
    written += [os.path.join(out_dir, n) for n in ("sweep.json", "best.json", "sweep.csv")]
    from .plots import sweep_plot

    for method in sorted({p["method"] for p in summary["points"]}):
        path = os.path.join(out_dir, f"sweep_{method}.png")
        sweep_plot(path, [p for p in summary["points"] if p["method"] == method],
                   summary["metric"], method, summary.get("baseline"))
        written.append(path)
    return written


def load_best(path: str, method: str | None = None) -> dict:
    """The best point of a saved sweep (a sweep folder or its best.json).

    Args:
        path: the folder ``tfue sweep`` wrote, or its best.json.
        method: the best point of this method (``noise`` or ``dropout``), when the
            sweep's overall best is of the other one: read from sweep.json beside it,
            by the sweep's own metric.

    Raises:
        TfueError: the file is not a sweep result, or the sweep has no point of
            ``method``.
    """
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        path = os.path.join(path, "best.json")
    try:
        with open(path) as f:
            best = json.load(f)
    except (OSError, ValueError) as exc:
        raise TfueError(f"cannot read a sweep result from '{path}' ({exc})",
                        "pass the folder 'tfue sweep' wrote, or its best.json") from None
    if not isinstance(best, dict) or not {"method", "at", "level"} <= set(best):
        raise TfueError(f"'{path}' is not a sweep result", "pass best.json from 'tfue sweep'")
    if method is None or best["method"] == method:
        return best
    full = os.path.join(folder, "sweep.json")
    try:
        with open(full) as f:
            summary = json.load(f)
        points, metric = summary["points"], summary["metric"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TfueError(f"the sweep's best point is for {best['method']}, and its other "
                        f"points cannot be read from '{full}' ({exc})",
                        f"use --method {best['method']}, or the whole sweep folder") from None
    mine = [p for p in points if p.get("method") == method]
    if not mine:
        raise TfueError(f"the sweep in '{folder}' has no point for {method}",
                        f"use --method {best['method']}, or sweep --methods {method}")
    top = mine[0]
    for p in mine[1:]:
        if better(metric, metric_value(p["table"], metric), metric_value(top["table"], metric)):
            top = p
    return _best(top, mine, metric, best.get("sigma_mode", "absolute"))


def choose_by_tolerability(model, method: str, feeds_list, tolerance: float = 0.05,
                           at_count: int = 8, levels=None, samples: int = 4, seed: int = 0,
                           sigma_mode: str = "absolute", provider: str = "auto",
                           pad=None, layout: str = "auto") -> dict:
    """Pick (location, level) without targets: at each of ``at_count`` evenly spaced
    locations, the strongest level whose mean output moves by at most ``tolerance``
    (relative); of those, the one with the largest mean variance. ``pad`` and
    ``layout`` are the Estimator's (``--pad``).

    Follows Mi et al.'s tolerable perturbation: the level is the strongest that leaves
    the prediction within ``tolerance`` of the original.

    Returns:
        The pick: ``{"at", "index", "depth", "level", "relative_change",
        "mean_variance" (squared output units), "reason"}``.

    Raises:
        ArgumentError (a ValueError): ``tolerance`` <= 0 or ``at_count`` < 1.
        TfueError: no location tolerates even the smallest level (the hint says to
            raise ``--tolerance``).
    """
    from .runner import Estimator
    from .model import inspect_model
    from .perturb import Dropout, Noise

    if not tolerance > 0:
        raise ArgumentError(f"tolerance must be > 0, got {tolerance}", "e.g. --tolerance 0.05")
    info = inspect_model(model)
    levels = tuple(levels or (NOISE_LEVELS if method == "noise" else DROPOUT_LEVELS))
    tried = []
    # Intermediate locations only: the paper finds them usually best, and noise at
    # the input or the output is not what --at auto is for.
    interior = [c for c in info.candidates if 0.0 < c.depth < 1.0] or info.candidates
    for cand in evenly_spaced(interior, int(at_count), ends=False):
        spec = Noise(levels[0], at=cand.name, mode=sigma_mode) if method == "noise" else \
            Dropout(levels[0], at=cand.name)
        est = Estimator(model, spec, samples=samples, seed=seed, provider=provider, pad=pad,
                        layout=layout)
        for level in sorted(levels):
            results = [est(f, level=level) for f in feeds_list]
            rel = float(np.mean([metrics.tolerability(r.mean, r.output)["relative_change"]
                                 for r in results]))
            if rel > tolerance:
                break
            tried.append({"at": cand.name, "index": cand.index, "depth": cand.depth,
                          "level": float(level), "relative_change": rel,
                          "mean_variance": float(np.mean([np.mean(r.variance)
                                                          for r in results]))})
    if not tried:
        raise TfueError(f"no location and level keeps the mean output within {tolerance:.0%} "
                        f"of the unperturbed output", "raise --tolerance or give --at and a level")
    best = _strongest_per_location(tried)
    pick = max(best.values(), key=lambda t: t["mean_variance"])
    pick["reason"] = (f"strongest tolerable {method} level at each of {len(best)} intermediate "
                      f"locations (mean output moves <= {tolerance:.0%}); this one has the "
                      f"largest variance (mean output moves {pick['relative_change']:.2%})")
    return pick
