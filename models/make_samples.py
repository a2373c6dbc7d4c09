#!/usr/bin/env python3
"""Write the demo's low-resolution sample inputs into tfue_onnx/data/.

Each sample is a 256x256 crop of a held-out scikit-image image (never used in
training), downscaled by 2 with PIL bicubic (the degradation the models were
trained on) to a 128x128 RGB PNG.

    python models/make_samples.py [--dest tfue_onnx/data]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_srresnet import HELDOUT_IMAGES, downscale_x2, load_image  # noqa: E402

# file name -> (held-out image, top, left) of a 256x256 high-resolution crop
SAMPLES = {
    "sample_1.png": ("skimage:chelsea", 40, 100),   # cat's eyes and nose
    "sample_2.png": ("skimage:coffee", 60, 180),    # cup rim, coffee, spoon
}


def main() -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--dest", default=os.path.join(root, "tfue_onnx", "data"))
    a = ap.parse_args()
    os.makedirs(a.dest, exist_ok=True)
    for fn, (name, top, left) in SAMPLES.items():
        assert name in HELDOUT_IMAGES, name
        hr = load_image(name)[top:top + 256, left:left + 256]
        assert hr.shape == (256, 256, 3)
        lr = downscale_x2(np.ascontiguousarray(hr))
        path = os.path.join(a.dest, fn)
        Image.fromarray(lr).save(path, optimize=True)
        print(f"{path}: {name} HR crop [{top}:{top + 256}, {left}:{left + 256}] -> "
              f"{lr.shape[1]}x{lr.shape[0]}, {os.path.getsize(path)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
