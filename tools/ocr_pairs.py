"""Make (degraded input, target) pairs for PP-OCR's text detector, honestly.

Text is rendered onto procedurally textured backgrounds; the target is the
detector's own output on the clean image, and the input is the same image
degraded (blur, noise, lower contrast, at a strength that varies by image). The
error of the detector on the degraded input against its clean output is then a
real error that uncertainty should track.

    python tools/ocr_pairs.py DET_MODEL OUT_DIR [--count 12] [--size 96x256] [--seed 0]

writes OUT_DIR/inputs/NAME.png and OUT_DIR/targets/NAME.npy.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

WORDS = ["tfue", "ONNX", "uncertainty", "variance", "Hello", "2026", "model", "noise",
         "dropout", "entropy", "MAP", "pixel", "block", "text", "OCR", "sample"]
DET_MEAN, DET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def background(rng, h, w) -> np.ndarray:
    """A smooth random texture: a colour gradient plus low-frequency blobs."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = rng.uniform(150, 255, 3)
    tilt = rng.uniform(-60, 60, (2, 3))
    img = base + yy[..., None] * tilt[0] + xx[..., None] * tilt[1]
    for _ in range(4):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, w / h), rng.uniform(0.1, 0.4)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-50, 50, 3)
    return np.clip(img, 0, 255)


def clean_image(rng, h, w) -> Image.Image:
    im = Image.fromarray(background(rng, h, w).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(rng.integers(1, 4)):
        size = int(rng.integers(14, 30))
        font = ImageFont.load_default(size=size)
        text = " ".join(rng.choice(WORDS, size=rng.integers(1, 3)))
        x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, max(h - size - 4, 1)))
        draw.text((x, y), text, fill=tuple(int(c) for c in rng.integers(0, 90, 3)), font=font)
    return im


def degrade(rng, im: Image.Image, strength: float) -> Image.Image:
    """Blur, lower the contrast and add noise, more with ``strength`` in [0, 1]."""
    im = im.filter(ImageFilter.GaussianBlur(radius=0.3 + 1.7 * strength))
    arr = np.asarray(im, np.float64)
    arr = arr.mean() + (arr - arr.mean()) * (1 - 0.6 * strength)
    arr += rng.normal(0, 4 + 30 * strength, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def detector_input(im: Image.Image) -> np.ndarray:
    arr = (np.asarray(im, np.float32) / 255 - np.array(DET_MEAN, np.float32)) / \
        np.array(DET_STD, np.float32)
    return arr.transpose(2, 0, 1)[None].astype(np.float32)


def make_pairs(model: str, out_dir: str, count: int = 12, size=(96, 256), seed: int = 0):
    """Write ``count`` pairs into ``out_dir``/inputs and ``out_dir``/targets."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "inputs"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "targets"), exist_ok=True)
    h, w = size
    names = []
    for k in range(count):
        clean = clean_image(rng, h, w)
        target = sess.run(None, {"x": detector_input(clean)})[0]
        strength = 0.6 * (k + 0.5) / count  # text stays legible, detections degrade
        name = f"text{k:02d}"
        degrade(rng, clean, strength).save(os.path.join(out_dir, "inputs", name + ".png"))
        np.save(os.path.join(out_dir, "targets", name + ".npy"), target[0])
        names.append(name)
    return names


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("out_dir")
    ap.add_argument("--count", type=int, default=12)
    ap.add_argument("--size", default="96x256")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    names = make_pairs(args.model, args.out_dir, args.count, (h, w), args.seed)
    print(f"wrote {len(names)} pairs to {args.out_dir}/inputs and {args.out_dir}/targets")


if __name__ == "__main__":
    sys.exit(main())
