"""Regenerate the paper's Table 1 on our reference SR models, with tfue's own commands.

    pip install torch==2.13.0 scikit-image scikit-learn   # build-time only: image data
    python tools/table1.py [--work /tmp/tfue-table1] [--out docs]

1. Writes high-resolution crops of the training images (calibration) and of the
   held-out images (evaluation), from the split in models/build_srresnet.py.
2. ``tfue sweep`` on the training crops (--sr-scale 2) finds the best location
   and level for infer-noise and infer-dropout (metric: pixel-wise L1 correlation).
3. ``tfue evaluate --json`` on the held-out crops for each method:
   infer-transformation (4, 8), infer-dropout (8, 32), infer-noise (8, 32) at the
   sweep's best points, MC-dropout (8, 32), deep ensemble (4).
4. Writes ``docs/table1.md`` (and the sweep plots) with the command that made it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "models"))
MODELS = os.path.join(ROOT, "models")
CROP = 96  # high-resolution crop size (low-resolution input 48 x 48)


def write_crops(names, folder, per_image, seed):
    from build_srresnet import load_image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        img = load_image(name)
        h, w = img.shape[:2]
        for k in range(per_image):
            top, left = rng.integers(0, h - CROP), rng.integers(0, w - CROP)
            stem = name.split(":")[1].split(".")[0]
            Image.fromarray(img[top:top + CROP, left:left + CROP]).save(
                os.path.join(folder, f"{stem}_{k}.png"))


def tfue(*args):
    cmd = [sys.executable, "-m", "tfue_onnx.cli", *map(str, args)]
    print("$ tfue " + " ".join(map(str, args)), file=sys.stderr)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return r.stdout


def best_per_method(sweep_json, metric):
    from tfue_onnx.sweep import better, metric_value

    with open(sweep_json) as f:
        points = json.load(f)["points"]
    best = {}
    for p in points:
        m = p["method"]
        if m not in best or better(metric, metric_value(p["table"], metric),
                                   metric_value(best[m]["table"], metric)):
            best[m] = p
    return best


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/tfue-table1")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--metric", default="pixel_l1")
    ap.add_argument("--train-crops", type=int, default=2, help="crops per training image")
    ap.add_argument("--heldout-crops", type=int, default=6, help="crops per held-out image")
    args = ap.parse_args(argv)
    from build_srresnet import HELDOUT_IMAGES, TRAIN_IMAGES

    # The crops are the same every time (seeded), so a sweep left in --work resumes.
    train, held = os.path.join(args.work, "train"), os.path.join(args.work, "heldout")
    write_crops(TRAIN_IMAGES, train, args.train_crops, seed=1)
    write_crops(HELDOUT_IMAGES, held, args.heldout_crops, seed=2)
    plain = os.path.join(MODELS, "srresnet_x2.onnx")
    sweep_dir = os.path.join(args.work, "sweep")
    tfue("sweep", plain, train, "--sr-scale", 2, "--at-count", 8, "--metric", args.metric,
         "--seed", 0, "--out", sweep_dir)
    best = best_per_method(os.path.join(sweep_dir, "sweep.json"), args.metric)
    members = [os.path.join(MODELS, f"srresnet_x2_ensemble_{k}.onnx") for k in range(4)]
    mc = os.path.join(MODELS, "srresnet_x2_mcdropout.onnx")
    runs = [("infer-transformation", 4, [plain, "--method", "transform", "--transforms", "rot"]),
            ("infer-transformation", 8, [plain, "--method", "transform", "--transforms", "d4"])]
    for method, flag in (("dropout", "--rate"), ("noise", "--sigma")):
        b = best[method]
        for n in (8, 32):
            runs.append((f"infer-{method} ({flag[2:]} {b['level']:g} at depth {b['depth']:.2f})",
                         n, [plain, "--method", method, "--at", b["at"], flag, b["level"],
                             "-n", n, "--seed", 0]))
    for n in (8, 32):
        runs.append(("MC-dropout (trained with dropout p=0.1)", n,
                     [mc, "--method", "mc-dropout", "-n", n, "--seed", 0]))
    runs.append(("deep ensemble", 4, [members[0], *members[1:], "--method", "ensemble"]))
    rows = []
    for k, (label, n, run_args) in enumerate(runs):
        model, rest = run_args[0], run_args[1:]
        extra = [a for a in rest if str(a).endswith(".onnx")]
        rest = [a for a in rest if not str(a).endswith(".onnx")]
        out = os.path.join(args.work, f"eval{k}")
        shutil.rmtree(out, ignore_errors=True)
        if extra:  # ensemble members go with the model
            result = json.loads(tfue("evaluate", model, *extra, held, "--sr-scale", 2, *rest,
                                     "--out", out, "--json"))
        else:
            result = json.loads(tfue("evaluate", model, held, "--sr-scale", 2, *rest,
                                     "--out", out, "--json"))
        rows.append((label, n, result["table"]))
    os.makedirs(args.out, exist_ok=True)
    for method in best:
        shutil.copy(os.path.join(sweep_dir, f"sweep_{method}.png"),
                    os.path.join(args.out, f"table1_sweep_{method}.png"))
    write_report(os.path.join(args.out, "table1.md"), rows, best, args)


def write_report(path, rows, best, args):
    def f(v):
        return "n/a" if v is None or v != v else f"{v:.3f}"

    lines = ["# Table 1 on our reference models", "",
             "Made by `python tools/table1.py` (see its docstring; the command is the whole "
             "recipe). Evaluation: " + f"{args.heldout_crops} random {CROP}x{CROP} crops of each "
             "held-out image (x2 super-resolution: the input is the crop downscaled by 2 with "
             "Pillow's bicubic filter). Locations and levels of infer-noise and infer-dropout: "
             f"the best by `{args.metric}` in `tfue sweep` over 8 locations x 6 levels on "
             f"{args.train_crops} crops of each training image.", "",
             "| method | N | mean L1 | block L1 | pixel L1 | mean L2 | block L2 | pixel L2 | "
             "AUSE L1 | AUSE L2 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, n, t in rows:
        lines.append(f"| {label} | {n} | {f(t['l1']['mean'])} | {f(t['l1']['block'])} | "
                     f"{f(t['l1']['pixel'])} | {f(t['l2']['mean'])} | {f(t['l2']['block'])} | "
                     f"{f(t['l2']['pixel'])} | {f(t['l1']['ause'])} | {f(t['l2']['ause'])} |")
    lines += ["", "Correlations: higher is better; AUSE: lower is better.", "",
              "Best sweep points (training crops):", ""]
    for method, b in best.items():
        lines.append(f"- {method}: `{b['at']}` (depth {b['depth']:.2f}), level {b['level']:g}")
    lines += ["", "![noise sweep](table1_sweep_noise.png)",
              "![dropout sweep](table1_sweep_dropout.png)", ""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
