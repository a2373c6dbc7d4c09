"""Does a reference SR model tolerate dropout?  MC-dropout vs infer-dropout, same tensor and rate.

    # 1. held-out crops (needs the build venv: torch, scikit-image, scikit-learn)
    /work/models-venv/bin/python tools/dropout_tolerance.py --write-crops /tmp/tfue-dt
    # 2. the check (the project's .venv: tfue, onnxruntime)
    python tools/dropout_tolerance.py --crops /tmp/tfue-dt \\
        models/srresnet_x2.onnx models/srresnet_x2_mcdropout.onnx \\
        models/srresnet64_x2.onnx models/srresnet64_x2_mcdropout.onnx

Models come in pairs (PLAIN MCDROPOUT). For each pair, on the held-out crops
(``tools/table1.py``'s crop writer: 6 random 96 x 96 crops of each held-out image,
seed 2; x2 super-resolution: the input is the crop downscaled by 2 with PIL bicubic
on uint8, the target is the crop):

(a) MC-dropout on MCDROPOUT (its own ``dropout`` node and rate);
(b) infer-dropout on PLAIN at the input tensor of MCDROPOUT's Dropout node, same rate.

Printed per method: the per-image pixel correlation (for each image, Pearson of the
channel-averaged variance map with the channel-averaged L1 error map; mean over
images, constant maps skipped), the pooled pixel correlation (all pixels at once), and
the PSNR of the unperturbed output and of the sample mean against the target.
One onnxruntime thread (``--threads``).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def write_crops(folder: str) -> None:
    """The held-out crops of tools/table1.py (6 per image, seed 2)."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    sys.path.insert(0, os.path.join(ROOT, "models"))
    from sr_data import HELDOUT_IMAGES
    from table1 import write_crops as table1_crops

    table1_crops(HELDOUT_IMAGES, folder, 6, seed=2)


def _nchw(im) -> np.ndarray:
    """PIL RGB image -> float32 [1, 3, H, W] in [0, 1]."""
    return (np.asarray(im, np.float32) / 255.0).transpose(2, 0, 1)[None].copy()


def load_pairs(folder: str):
    """[(name, lr float32 [1, 3, h, w], hr float32 [1, 3, 2h, 2w])], all in [0, 1]."""
    pairs = []
    for path in sorted(glob.glob(os.path.join(folder, "*.png"))):
        hr = Image.open(path).convert("RGB")
        w, h = hr.size
        lr = hr.resize((w // 2, h // 2), Image.BICUBIC)
        pairs.append((os.path.basename(path), _nchw(lr), _nchw(hr)))
    if not pairs:
        raise SystemExit(f"no .png crops in {folder}: write them with --write-crops")
    return pairs


def one_thread(threads: int) -> None:
    """Make every onnxruntime session tfue creates use ``threads`` intra-op threads."""
    import onnxruntime as ort

    orig = ort.SessionOptions

    def options():
        so = orig()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        return so

    ort.SessionOptions = options


def psnr(a, b) -> float:
    return 10.0 * math.log10(1.0 / float(np.mean((np.asarray(a, np.float64) - b) ** 2)))


def measure(model: str, spec, pairs, samples: int, seed: int) -> dict:
    from tfue_onnx import Estimator
    from tfue_onnx.metrics import error_map, image_maps, pearson

    est = Estimator(model, spec, samples=samples, seed=seed, provider="cpu")
    per, vs, es, p_out, p_mean = [], [], [], [], []
    for _, lr, hr in pairs:
        r = est(lr)
        out, mean, var = r.output, r.mean, r.variance
        v = image_maps(var)[0]
        e = image_maps(error_map(out, hr, "l1"))[0]
        c = pearson(v, e)
        if not math.isnan(c):
            per.append(c)
        vs.append(v.ravel())
        es.append(e.ravel())
        p_out.append(psnr(out, hr))
        p_mean.append(psnr(mean, hr))
    return {"model": os.path.basename(model), "spec": spec.describe(), "samples": samples,
            "per_image_corr": float(np.mean(per)), "images": len(per),
            "pooled_corr": pearson(np.concatenate(vs), np.concatenate(es)),
            "psnr_output": float(np.mean(p_out)), "psnr_mean": float(np.mean(p_mean)),
            "mean_variance": float(np.mean(np.concatenate(vs)))}


def dropout_node(path: str):
    """(input tensor name, ratio) of the single Dropout node of an mcdropout model."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(path)
    drops = [n for n in m.graph.node if n.op_type == "Dropout"]
    if len(drops) != 1:
        raise SystemExit(f"{path}: expected one Dropout node, found {len(drops)}")
    d = drops[0]
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant" and n.output[0] == d.input[1]:
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return d.input[0], float(f"{float(consts[d.input[1]]):.7g}")  # 0.1, not float32's 0.10000000149


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="PLAIN MCDROPOUT [PLAIN MCDROPOUT ...]")
    ap.add_argument("--crops", help="folder of high-resolution .png crops")
    ap.add_argument("--write-crops", metavar="DIR", help="write the held-out crops and stop")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args(argv)
    if a.write_crops:
        write_crops(a.write_crops)
        return 0
    if not a.crops or not a.models or len(a.models) % 2:
        ap.error("give --crops and pairs of models (PLAIN MCDROPOUT)")
    one_thread(a.threads)
    from tfue_onnx import Dropout, MCDropout

    pairs = load_pairs(a.crops)
    rows = []
    for plain, mcd in zip(a.models[::2], a.models[1::2]):
        at, rate = dropout_node(mcd)
        for model, spec in ((mcd, MCDropout()), (plain, Dropout(rate=rate, at=at))):
            row = measure(model, spec, pairs, a.samples, a.seed)
            rows.append(row)
            print(f"{row['model']:32s} {row['spec']['method']:10s} at {at} rate {rate:g} "
                  f"N={a.samples}: per-image corr {row['per_image_corr']:.3f} "
                  f"({row['images']} images), pooled {row['pooled_corr']:.3f}, "
                  f"PSNR output {row['psnr_output']:.2f} mean {row['psnr_mean']:.2f} dB",
                  flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
