"""Issue 13's must-show numbers on the bundled SR reference model, with tfue's own commands.

    pip install scikit-image scikit-learn   # study-time only: the photos
    python tools/calibration_study.py [--work /tmp/tfue-calibration] [--out docs]

1. Writes 96 x 96 high-resolution crops of the training photos (the calibration set)
   and of the held-out photos (the test set), from the split in models/sr_data.py
   (tools/table1.py's crop writer: 4 per training photo, seed 1; 8 per held-out photo,
   seed 2, Table 1's held-out crops), and the held-out crops' x2 low-resolution inputs
   (Pillow bicubic, as ``--sr-scale 2`` makes them) for ``tfue rank``.
2. For infer-transformation (d4) and infer-dropout (Table 1's best sweep point for this
   model: rate 0.05 at ``/body/body.0/Relu_output_0``, N = 32), at 90 % and 80 %:
   ``tfue calibrate`` on the training crops, ``tfue evaluate --calibration`` on the
   held-out crops: empirical coverage, mean width, ENCE, reliability diagram.
3. ``tfue rank --by mean`` on the held-out inputs: the mean true L1 error (from the
   evaluation's per-image numbers) of the top quarter picked by uncertainty, against
   a random quarter (its expectation: the mean over all crops) and the oracle quarter
   (the largest errors).
4. ``tfue export --calibration`` (d4): the exported model's lower/upper against
   ``tfue run --calibration``'s on the held-out inputs (max abs difference).

Writes ``docs/calibration.md`` and the reliability diagrams beside it.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "models"))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, ROOT)
MODEL = os.path.join(ROOT, "tfue_onnx", "data", "srresnet_x2.onnx")  # the bundled model
METHODS = {
    "d4": ["--method", "transform", "--transforms", "d4"],
    "dropout": ["--method", "dropout", "--at", "/body/body.0/Relu_output_0", "--rate", "0.05",
                "--samples", "32"],
}
COVERAGES = (0.9, 0.8)
SEED = ["--seed", "0"]


def tfue(*args) -> str:
    """Run the tfue CLI (this interpreter's), return stdout; stop on failure."""
    cmd = [sys.executable, "-m", "tfue_onnx.cli", *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return r.stdout


def write_inputs(held: str, folder: str) -> None:
    """The held-out crops' low-resolution inputs, made as --sr-scale 2 makes them."""
    os.makedirs(folder, exist_ok=True)
    for path in sorted(glob.glob(os.path.join(held, "*.png"))):
        hr = Image.open(path).convert("RGB")
        hr.resize((hr.width // 2, hr.height // 2), Image.BICUBIC).save(
            os.path.join(folder, os.path.basename(path)))


def calibrate_and_evaluate(work: str, key: str, coverage: float, train: str, held: str) -> dict:
    """tfue calibrate on the training crops, tfue evaluate --calibration on the held-out."""
    tag = f"{key}_{int(coverage * 100)}"
    cal = os.path.join(work, f"{tag}.json")
    if not os.path.exists(cal):
        tfue("calibrate", MODEL, train, "--sr-scale", "2", *METHODS[key], *SEED,
             "--coverage", str(coverage), "-o", cal, "-q")
    ev = os.path.join(work, f"eval_{tag}")
    if not os.path.exists(os.path.join(ev, "metrics.json")):
        tfue("evaluate", MODEL, held, "--sr-scale", "2", *METHODS[key], *SEED,
             "--calibration", cal, "--bootstrap", "0", "-o", ev, "-q", "--force")
    with open(cal) as f:
        fitted = json.load(f)
    with open(os.path.join(ev, "metrics.json")) as f:
        found = json.load(f)
    return {"calibration": fitted, "held": found["calibration"], "images": found["images"],
            "reliability": os.path.join(ev, "reliability.png"),
            "calibration_picture": os.path.splitext(cal)[0] + ".png"}


def rank_numbers(work: str, key: str, inputs: str, images: list) -> dict:
    """tfue rank on the held-out inputs: the top quarter's mean true error vs random/oracle."""
    out = os.path.join(work, f"rank_{key}")
    tfue("rank", MODEL, inputs, *METHODS[key], *SEED, "--by", "mean", "-o", out, "-q")
    with open(os.path.join(out, "ranking.csv")) as f:
        ranking = [row for row in csv.DictReader(f)]
    error = {item["name"]: item["mean_l1"] for item in images}
    errors = np.array(list(error.values()))
    k = len(ranking) // 4
    picked = [error[os.path.splitext(os.path.basename(r["input"]))[0]] for r in ranking[:k]]
    top, oracle, rand = float(np.mean(picked)), float(np.mean(np.sort(errors)[-k:])), \
        float(errors.mean())
    return {"count": len(ranking), "quarter": k, "top": top, "random": rand, "oracle": oracle,
            "vs_random": top / rand, "of_oracle": top / oracle, "sheet": os.path.join(out,
                                                                                      "top.png")}


def export_check(work: str, inputs: str) -> float:
    """max |exported lower/upper - tfue run's| over the held-out inputs (d4, 90 %)."""
    import onnxruntime as ort

    from tfue_onnx import read_result

    cal = os.path.join(work, "d4_90.json")
    onnx_path, run_dir = os.path.join(work, "d4_90.onnx"), os.path.join(work, "run_d4_90")
    tfue("export", MODEL, *METHODS["d4"], *SEED, "--calibration", cal, "-o", onnx_path,
         "--force", "-q")
    tfue("run", MODEL, inputs, *METHODS["d4"], *SEED, "--calibration", cal, "-o", run_dir,
         "--no-pictures", "--force", "-q")
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for path in sorted(glob.glob(os.path.join(inputs, "*.png"))):
        stem = os.path.splitext(os.path.basename(path))[0]
        res = read_result(os.path.join(run_dir, stem + ".npz"))
        x = np.asarray(Image.open(path).convert("RGB"), np.float32).transpose(2, 0, 1)[None] / 255
        got = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {session.get_inputs()[0].name: x})))
        for part in ("lower", "upper"):
            worst = max(worst, float(np.abs(got[f"output.{part}"]
                                            - getattr(res.outputs["output"], part)).max()))
    return worst


def report(path: str, results: dict, ranks: dict, export_diff: float, out: str) -> None:
    """docs/calibration.md."""
    lines = ["# Calibrated intervals, ranking and export on the bundled SR model (issue 13)", "",
             "Written by `python tools/calibration_study.py`: the bundled "
             "`srresnet_x2.onnx`, calibrated on 40 training crops (96 x 96, 4 per training "
             "photo) and assessed on Table 1's 24 held-out crops (8 per held-out photo), "
             "seed 0.", "",
             "| method | target | q | coverage (held-out) | per-image coverage | mean width | "
             "mean abs error / expected | ENCE raw s -> calibrated |",
             "|---|---|---|---|---|---|---|---|"]
    for (key, cov), r in results.items():
        h, f = r["held"], r["calibration"]["fit"]
        ic = h["image_coverage"]
        lines.append(f"| {key} | {cov:.0%} | {f['q']:.3g} | **{h['coverage']:.3f}** | "
                     f"{ic['min']:.2f} - {ic['max']:.2f} | {h['mean_width']:.4f} | "
                     f"{h['mean_error']:.4f} / {h['mean_expected_error']:.4f} | "
                     f"{h['ence_raw']:.2f} -> {h['ence']:.3f} |")
    lines += ["", "`tfue rank --by mean` on the 24 held-out inputs (mean true L1 error per "
              "crop, from `tfue evaluate`):", "",
              "| method | top quarter (by uncertainty) | random quarter (expected) | oracle "
              "quarter | top / random | top / oracle |", "|---|---|---|---|---|---|"]
    for key, r in ranks.items():
        lines.append(f"| {key} | {r['top']:.5f} | {r['random']:.5f} | {r['oracle']:.5f} | "
                     f"{r['vs_random']:.2f}x | {r['of_oracle']:.2f} |")
    lines += ["", f"Exported calibrated model (d4, 90 %): max |lower/upper - `tfue run "
              f"--calibration`'s| over the 24 inputs = {export_diff:.2e}.", ""]
    for (key, cov), r in results.items():
        name = f"calibration_{key}_{int(cov * 100)}.png"
        shutil.copy(r["reliability"], os.path.join(out, name))
        lines.append(f"![{key} {cov:.0%}]({name})")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/tfue-calibration")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    args = ap.parse_args(argv)
    from sr_data import HELDOUT_IMAGES, TRAIN_IMAGES
    from table1 import write_crops

    train, held = os.path.join(args.work, "train"), os.path.join(args.work, "heldout")
    inputs = os.path.join(args.work, "heldout_lr")
    write_crops(TRAIN_IMAGES, train, 4, seed=1)
    write_crops(HELDOUT_IMAGES, held, 8, seed=2)
    write_inputs(held, inputs)
    results = {(key, cov): calibrate_and_evaluate(args.work, key, cov, train, held)
               for key in METHODS for cov in COVERAGES}
    ranks = {key: rank_numbers(args.work, key, inputs, results[(key, 0.9)]["images"])
             for key in METHODS}
    diff = export_check(args.work, inputs)
    os.makedirs(args.out, exist_ok=True)
    report(os.path.join(args.out, "calibration.md"), results, ranks, diff, args.out)
    print(open(os.path.join(args.out, "calibration.md")).read())


if __name__ == "__main__":
    main()
