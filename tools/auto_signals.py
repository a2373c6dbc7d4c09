"""Which label-free signal picks a good (location, level)? The study behind choose.py.

    python tools/auto_vs_sweep.py --work W      # first: the data, the sweep picks
    python tools/auto_signals.py --work W [--models srresnet,upconv7,ppocr]

At the 8 interior locations of ``choose.interior_locations`` and the 6 levels of
the sweep grid, each method runs N=8 samples on the first 4 calibration inputs
(no targets). Every rule below picks one point from those runs; each pick is then
evaluated on the held-out split (per-image pixel correlation, N=8, seed 0) and
divided by the sweep's pick (from W/NAME.json) evaluated the same way.

- tolerability: the strongest level whose mean output moves <= 5% at each location,
  then the largest mean variance (the previous ``--at auto``, here at N=8);
- agreement: per-image Pearson correlation of the variance map with the d4
  infer-transformation variance map (``choose.choose_by_agreement``), levels
  within 5%; also without the 5% bound, and with Spearman instead of Pearson;
- consensus: correlation with the mean of every tolerable point's rank-normalised
  variance map (agreement with the other candidates instead of the transforms).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from auto_vs_sweep import (CHOICE_INPUTS, per_image_correlation, setups,  # noqa: E402
                           study_arguments)

TOLERANCE = 0.05


def rank_map(m):
    from scipy.stats import rankdata

    return rankdata(np.ravel(m)).reshape(np.shape(m)) / np.size(m)


def signals(model, pad, method, feeds, refs) -> list:
    """Every interior (location, level) with what it measured on ``feeds``."""
    from tfue_onnx import Dropout, Estimator, Noise, metrics
    from tfue_onnx.choose import LEVELS, interior_locations, per_image_agreement
    from tfue_onnx.model import inspect_model

    points = []
    for cand in interior_locations(inspect_model(model), 8):
        spec = Noise(LEVELS[0], at=cand.name) if method == "noise" else \
            Dropout(LEVELS[0], at=cand.name)
        est = Estimator(model, spec, samples=8, seed=0, provider="cpu", pad=pad)
        for level in LEVELS:
            res = [est(f, level=level) for f in feeds]
            maps = [metrics.image_maps(r.variance)[0] for r in res]
            points.append({
                "at": cand.name, "index": cand.index, "depth": cand.depth, "level": level,
                "maps": maps,
                "rel": float(np.mean([metrics.tolerability(r.mean, r.output)["relative_change"]
                                      for r in res])),
                "mean_variance": float(np.mean([m.mean() for m in maps])),
                "pearson": float(np.nanmean([per_image_agreement(r.variance, ref)
                                             for r, ref in zip(res, refs)])),
                "spearman": float(np.nanmean([metrics.spearman(m, metrics.image_maps(ref)[0])
                                              for m, ref in zip(maps, refs)]))})
    pool = [p for p in points if p["rel"] <= TOLERANCE]
    for k in range(len(feeds)):
        consensus = np.mean([rank_map(p["maps"][k]) for p in pool if np.ptp(p["maps"][k]) > 0],
                            axis=0)
        for p in points:
            p.setdefault("consensus", []).append(metrics.pearson(p["maps"][k], consensus))
    for p in points:
        p["consensus"] = float(np.nanmean(p["consensus"]))
    return points


def rules(points) -> dict:
    def best(key, bound=TOLERANCE):
        ok = [p for p in points if p["rel"] <= bound and p[key] == p[key]]
        return max(ok, key=lambda p: p[key]) if ok else None

    strongest = {}
    for p in sorted(points, key=lambda p: p["level"]):
        if p["rel"] <= TOLERANCE:
            strongest[p["at"]] = p
    return {"tolerability": max(strongest.values(), key=lambda p: p["mean_variance"])
            if strongest else None,
            "agreement": best("pearson"), "agreement, no bound": best("pearson", np.inf),
            "agreement (Spearman)": best("spearman"), "consensus": best("consensus")}


def main(argv=None):
    args = study_arguments(argv, __doc__.splitlines()[0])
    from tfue_onnx import Dropout, Estimator, Noise
    from tfue_onnx.choose import reference_maps
    from tfue_onnx.model import inspect_model

    makers = setups(args.work)
    lines = ["| model | method | " + " | ".join(
        ["tolerability", "agreement", "agreement, no bound", "agreement (Spearman)",
         "consensus"]) + " |", "|" + "---|" * 7]
    print("\n".join(lines))
    for name in args.models.split(","):
        with open(os.path.join(args.work, f"{name}.json")) as f:
            sweep_picks = {m: r["sweep"] for m, r in json.load(f)["methods"].items()}
        model, pad, cal, held = makers[name]()
        info = inspect_model(model)
        cal_loaded = [p.load() for p in cal(info)]
        held_loaded = [p.load() for p in held(info)]
        feeds = [f for f, _ in cal_loaded[:CHOICE_INPUTS]]
        refs, _ = reference_maps(model, feeds, provider="cpu", pad=pad)
        for method in ("noise", "dropout"):
            picks = rules(signals(model, pad, method, feeds, refs))
            cache = {}

            def held_out(p):
                key = (p["at"], p["level"])
                if key not in cache:
                    spec = Noise(p["level"], at=p["at"]) if method == "noise" else \
                        Dropout(p["level"], at=p["at"])
                    est = Estimator(model, spec, samples=8, seed=0, provider="cpu", pad=pad)
                    cache[key] = per_image_correlation(est, held_loaded)
                return cache[key]

            base = held_out(sweep_picks[method])
            cells = []
            for rule in picks:
                p = picks[rule]
                cells.append("none" if p is None else
                             f"{p['index']}@{p['level']:g}: {held_out(p) / base:.2f}")
            lines.append(f"| {name} | {method} (sweep {base:.3f}) | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Label-free signals for --at auto\n\nMade by `python tools/auto_signals.py` "
                    "(its docstring says how). Each cell: the rule's pick (candidate index @ "
                    "level) and its held-out per-image pixel correlation (N=8) divided by the "
                    "sweep pick's (N=8, in the method column).\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
