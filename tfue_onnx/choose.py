"""Choosing where and how hard to perturb without targets (``--at auto`` without a sweep).

A gray-box perturbation (infer-noise, infer-dropout) is useful where its variance
map tracks the model's error. Without targets the error is unknown, but the
black-box infer-transformation gives a label-free picture of where the model is
unsure: the variance of the model's outputs over the D4 rotations and flips of the
input (undone on the outputs). ``choose_by_agreement`` runs each candidate
(location, level) on a few inputs and keeps the one whose variance map agrees best
(per-image Pearson correlation) with that reference map, among the levels whose
sample mean stays within ``tolerance`` of the unperturbed output.

Measured (tools/auto_vs_sweep.py, docs/auto_vs_sweep.md; held-out per-image pixel
correlation at N=32): on the reference SR model, waifu2x upconv_7 and the PP-OCR
detector the agreement pick reaches 0.83-1.16 of what a full sweep's pick (with
targets, on a calibration split) reaches, where picking the strongest tolerable
level (``sweep.choose_by_tolerability``) reached 0.28-1.16. Agreement with the
other candidates (consensus) and rank (Spearman) agreement did worse on one model
each (tools/auto_signals.py). The tolerance still matters: on the detector the
agreement keeps rising with dropout rates that wreck the output. With targets,
``tfue sweep`` and ``--sweep-result`` remain the surer choice.
"""

from __future__ import annotations

import os

import numpy as np

from . import metrics
from .errors import ArgumentError, TfueError
from .layout import evenly_spaced

REFERENCE = "d4"  # the infer-transformation set whose variance map is the reference
LEVELS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)  # the sweep's grid (sweep.NOISE_LEVELS)
# Below this the reason says the pick is weak (the picks measured agree 0.4-0.6).
WEAK_AGREEMENT = 0.1


def interior_locations(info, at_count: int = 8) -> list:
    """Up to ``at_count`` evenly spaced candidates strictly inside the graph (0 < depth < 1);
    all of them when there are no more than ``at_count``.

    The ends are left out: noise at the input is a black-box perturbation, at the
    output it only adds the noise. All candidates when none is interior.

    Raises:
        ArgumentError (a ValueError): ``at_count`` < 1.
    """
    if int(at_count) < 1:
        raise ArgumentError(f"at_count must be >= 1, got {at_count}", "e.g. --at-count 8")
    interior = [c for c in info.candidates if 0.0 < c.depth < 1.0] or list(info.candidates)
    # Evenly spaced, keeping off both ends of the interior (as choose_by_tolerability).
    return evenly_spaced(interior, int(at_count), ends=False)


def per_image_agreement(variance, reference, hw_axes=None) -> float:
    """Mean over images of the Pearson correlation of two output-shaped maps.

    Both are split into per-image H x W maps with channels averaged
    (``metrics.image_maps``); images where either map is constant are skipped.

    Args:
        variance: a candidate's variance, output-shaped (e.g. [B, C, H, W]).
        reference: the reference variance, the same shape.
        hw_axes: the output's (height, width) axes as the run found them
            (``Result.image_axes``); None: guessed from the shape.

    Returns:
        The mean correlation in [-1, 1], or NaN when every image was skipped.
    """
    vals = [metrics.pearson(v, r) for v, r in zip(metrics.image_maps(variance, hw_axes),
                                                  metrics.image_maps(reference, hw_axes))]
    vals = [v for v in vals if v == v]
    return float(np.mean(vals)) if vals else float("nan")


def reference_maps(model, feeds_list, transforms: str = REFERENCE, provider: str = "auto",
                   pad=None, layout: str = "auto") -> tuple:
    """The infer-transformation variance of the model's output for each of ``feeds_list``.

    Returns:
        (maps, runs): one output-shaped variance array per input, and the model runs spent.

    Raises:
        TfueError: the model cannot run the transformed inputs (the caller falls back).
    """
    from .runner import Estimator
    from .perturb import Transform

    est = Estimator(model, Transform(transforms), provider=provider, pad=pad, layout=layout)
    return [est(f).variance for f in feeds_list], est.samples * len(feeds_list)


def choose_by_agreement(model, method: str, feeds_list, tolerance: float = 0.05,
                        at_count: int = 8, levels=None, samples: int = 8, seed: int = 0,
                        sigma_mode: str = "absolute", provider: str = "auto", pad=None,
                        layout: str = "auto", transforms: str = REFERENCE,
                        progress=None) -> dict:
    """Pick (location, level) for ``method`` without targets, by agreement with
    infer-transformation.

    For each of ``at_count`` interior locations (``interior_locations``) and each
    level (ascending; a location's higher levels are skipped once its sample mean
    moves by more than ``tolerance``, relative to the mean |output|), run ``samples``
    perturbed samples on every input and score the point by the per-image Pearson
    correlation of its variance map with the ``transforms`` variance map, averaged
    over the inputs. The best score wins; the lowest level wins ties.

    Cost: one infer-transformation run per input (8 model runs for d4), then at most
    ``len(levels) * samples`` sample runs per location and input.

    Args:
        model: path or ModelProto.
        method: ``noise`` or ``dropout``.
        feeds_list: a few inputs (dicts by input name, or arrays), e.g. 4.
        tolerance: the largest relative move of the sample mean a level may cause (> 0).
        at_count: how many interior locations to try.
        levels: noise sigmas or dropout rates to try (default ``LEVELS``).
        samples: N per point (>= 2).
        seed: the sampling seed (the choice is deterministic for it).
        sigma_mode, provider, pad, layout: as for ``Estimator`` / ``Noise``.
        transforms: the infer-transformation set of the reference map.
        progress: called as ``progress(done, total, text)`` after each location (``total``
            locations; ``text`` says what it measured), for a progress line.

    Returns:
        A dict with ``at``, ``index``, ``depth``, ``level`` and ``reason`` (what was
        measured), ``agreement`` (its score), ``relative_change``, ``mean_variance``,
        ``reference`` (the transform set), ``sample_runs`` (model runs spent) and
        ``points`` (every point measured, with the same keys). When the model cannot
        run transformed inputs, or their variance is zero everywhere, the choice
        falls back to ``sweep.choose_by_tolerability`` and says so in ``reason``.

    Raises:
        TfueError: a bad ``method`` or ``tolerance``, no inputs, or no location and
            level within ``tolerance``.
    """
    feeds_list = _checked(method, tolerance, feeds_list)
    refs, runs, transforms, why_not = _reference(model, feeds_list, transforms, provider, pad,
                                                 layout)
    run = dict(model=model, method=method, feeds_list=feeds_list, seed=seed, pad=pad,
               sigma_mode=sigma_mode, provider=provider, layout=layout, tolerance=tolerance)
    if why_not:
        from .sweep import choose_by_tolerability

        pick = choose_by_tolerability(at_count=at_count, levels=levels, **run)
        pick["reason"] = f"no reference map ({why_not}); fell back to: {pick['reason']}"
        return pick
    levels = sorted(float(lv) for lv in (levels or LEVELS))
    points, runs = _measure_all(run, refs, levels, samples, at_count, progress, runs)
    return _pick(points, method, transforms, runs, tolerance, samples, len(feeds_list))


def _checked(method: str, tolerance, feeds_list) -> list:
    """``feeds_list`` as a list, after checking the method, tolerance and inputs."""
    if method not in ("noise", "dropout"):
        raise ArgumentError(f"--at auto chooses a location for noise or dropout, not {method!r}",
                            "use --method noise or --method dropout")
    if not tolerance > 0:
        raise ArgumentError(f"tolerance must be > 0, got {tolerance}", "e.g. --tolerance 0.05")
    feeds_list = list(feeds_list)
    if not feeds_list:
        raise ArgumentError("--at auto needs at least one input to choose on", "give inputs")
    return feeds_list


def _measure_all(run: dict, refs, levels, samples, at_count, progress, runs) -> tuple:
    """(points, runs): every interior location's points (``_measure_location``), with the
    model runs spent added to ``runs``; ``progress`` told after each location."""
    from .model import ModelInfo, inspect_model

    model = run["model"]
    info = inspect_model(model) if isinstance(model, (str, os.PathLike)) else ModelInfo(model)
    points, where = [], interior_locations(info, at_count)
    n_inputs = len(run["feeds_list"])
    for k, cand in enumerate(where, 1):
        mine = _measure_location(cand, refs=refs, levels=levels, samples=samples, **run)
        points += mine
        runs += samples * n_inputs * (len(mine) + (len(mine) < len(levels)))
        if progress is not None:
            progress(k, len(where), f"{cand.name} (depth {cand.depth:.2f}): " + (
                f"{len(mine)} level(s) up to {mine[-1]['level']:g} within the tolerance"
                if mine else "no level within the tolerance"))
    return points, runs


def _reference(model, feeds_list, transforms, provider, pad, layout) -> tuple:
    """(maps, runs, transforms, why_not): the reference variance maps, trying ``transforms``
    then flips then hflip (a fixed non-square input cannot be rotated by 90 degrees, but
    flips run); ``why_not`` says why there is none (then the maps are None)."""
    refs, runs, why_not = None, 0, ""
    for tried in dict.fromkeys((transforms, "flips", "hflip")):
        try:
            refs, runs = reference_maps(model, feeds_list, tried, provider, pad, layout)
        except TfueError as exc:
            refs, why_not = None, f"infer-transformation ({tried}) failed: {exc.message}"
            continue
        usable = any(float(np.max(r)) > 0 for r in refs)
        why_not = "" if usable else f"its {tried} variance is zero everywhere"
        return refs, runs, tried, why_not
    return refs, runs, transforms, why_not


def _measure_location(cand, model, method, feeds_list, refs, levels, samples, seed,
                      sigma_mode, provider, pad, layout, tolerance) -> list:
    """The points of one candidate location: its levels in ascending order, until one moves
    the mean output by more than ``tolerance`` (that one is not a point)."""
    from .perturb import Dropout, Noise
    from .runner import Estimator

    spec = Noise(levels[0], at=cand.name, mode=sigma_mode) if method == "noise" else \
        Dropout(levels[0], at=cand.name)
    est = Estimator(model, spec, samples=samples, seed=seed, provider=provider, pad=pad,
                    layout=layout)
    points = []
    for level in levels:
        results = [est(f, level=level) for f in feeds_list]
        rel = float(np.mean([metrics.tolerability(r.mean, r.output)["relative_change"]
                             for r in results]))
        if rel > tolerance:
            break
        scores = [per_image_agreement(r.variance, ref, r.image_axes)
                  for r, ref in zip(results, refs)]
        scores = [s for s in scores if s == s]
        points.append({"at": cand.name, "index": cand.index, "depth": cand.depth,
                       "level": level, "relative_change": rel,
                       "agreement": float(np.mean(scores)) if scores else float("nan"),
                       "mean_variance": float(np.mean([np.mean(r.variance)
                                                       for r in results]))})
    return points


def _pick(points, method, transforms, runs, tolerance, samples, n_inputs) -> dict:
    """The best-agreeing point (the lowest level on ties), with the reason said."""
    scored = [p for p in points if p["agreement"] == p["agreement"]]
    if not scored:
        raise TfueError(f"no location and level keeps the mean output within {tolerance:.0%} "
                        "of the unperturbed output with a variance that varies over the image",
                        "raise --tolerance, or give --at and a level")
    best = max(scored, key=lambda p: (round(p["agreement"], 6), -p["level"]))
    pick = dict(best, method=method, reference=transforms, sample_runs=runs, points=points)
    pick["reason"] = (
        f"of {len(scored)} (location, level) points at {len({p['at'] for p in points})} "
        f"interior locations (N={samples} on {n_inputs} input(s), mean output moving "
        f"<= {tolerance:.0%}), its variance map agrees best with infer-transformation's "
        f"({transforms}): per-image correlation {best['agreement']:.3f} (mean output moves "
        f"{best['relative_change']:.2%})")
    if best["agreement"] < WEAK_AGREEMENT:
        pick["reason"] += ("; that agreement is weak, so the choice is little better than a "
                           "guess: with targets, 'tfue sweep' and --sweep-result choose better")
    return pick


def _said(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _from_sweep(sweep_result, method: str) -> tuple:
    """(at, level, report) of the best ``method`` point of a saved sweep."""
    from .sweep import load_best

    best = load_best(sweep_result, method)
    iv = best.get("interval")
    band = f", 95% interval {iv[0]:.4f} to {iv[1]:.4f}" if iv and None not in iv else ""
    report = {"from": "sweep", "sweep_result": os.path.abspath(sweep_result),
              **{k: best.get(k) for k in ("at", "level", "metric", "value", "interval")}}
    report["reason"] = (f"the best {method} {best.get('metric')} ({_said(best.get('value'))}"
                        f"{band}) of the sweep in {sweep_result}")
    return best["at"], best["level"], report


def choose_location(model, method: str, inputs=None, sweep_result=None,
                    tolerance: float = 0.05, seed: int = 0, sigma_mode: str = "absolute",
                    provider: str = "auto", pad=None, layout: str = "auto",
                    progress=None) -> tuple:
    """Where and how strongly to perturb ``model`` for ``method`` (what ``--at auto`` does).

    With ``sweep_result`` (a ``tfue sweep`` folder or its best.json): the best point of the
    *requested* method in that sweep (``sweep.load_best``). Without: chosen on ``inputs``
    without targets by agreement with infer-transformation (``choose_by_agreement``, which
    falls back to the strongest tolerable level, ``sweep.choose_by_tolerability``, when the
    model cannot run transformed inputs).

    Args:
        model: path or ModelProto.
        method: ``noise`` or ``dropout`` (``names.AUTO_METHODS``).
        inputs: a few inputs (dicts by input name, or arrays), e.g. 4; unused with
            ``sweep_result``.
        sweep_result: a sweep folder or best.json path, or None.
        tolerance: the largest relative move of the mean output a level may cause (> 0).
        seed: the sampling seed (None: 0; the choice is deterministic for it).
        sigma_mode, provider, pad, layout: as for ``Estimator`` / ``Noise``.
        progress: ``progress(done, total, text)`` after each location tried (without a
            sweep), for a progress line with an ETA; None: silent.

    Returns:
        (at, level, report): the location (tensor name), the level (noise sigma or
        dropout rate; a float) and a dict saying what was measured: ``from``
        ("sweep", "agreement" or "tolerability"), ``reason`` (one sentence), and the
        measured numbers (``choose_by_agreement``'s keys without ``points``, or the
        sweep's ``metric``, ``value``, ``interval``, ``sweep_result``).

    Raises:
        ArgumentError (a ValueError): a method other than noise or dropout, a bad
            tolerance, no inputs without a sweep result.
        TfueError: the sweep result cannot be read or has no point of ``method``; no
            location and level is within ``tolerance``.
    """
    from .names import AUTO_METHODS

    if method not in AUTO_METHODS:
        raise ArgumentError(f"--at auto chooses a location for noise or dropout, not {method}",
                            "choose for noise or dropout (the methods with a location)")
    if sweep_result is not None:
        return _from_sweep(sweep_result, method)
    if not inputs:
        raise ArgumentError("--at auto without --sweep-result needs inputs to choose on",
                            "give a few inputs, or a --sweep-result")
    pick = choose_by_agreement(model, method, list(inputs), tolerance=tolerance,
                               sigma_mode=sigma_mode, seed=0 if seed is None else seed,
                               provider=provider, pad=pad, layout=layout, progress=progress)
    report = {"from": "agreement" if "agreement" in pick else "tolerability",
              **{k: v for k, v in pick.items() if k != "points"}}
    return pick["at"], pick["level"], report


__all__ = ["choose_location", "choose_by_agreement", "interior_locations",
           "per_image_agreement", "reference_maps", "REFERENCE", "LEVELS"]
