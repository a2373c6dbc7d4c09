"""Time writing one result file (NAME.npz), stored vs deflated (``--compress``).

    python tools/bench_write.py [--size 640] [--repeat 5]

A PP-OCR-detector-sized result: output, mean and variance float32 [1, 1, S, S]
(smooth maps, as a detector's), written with tfue's own ``io.save_npz`` into a
temporary folder. Prints the best and median of ``--repeat`` writes and the sizes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfue_onnx.files import save_npz  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    s = args.size
    out = ndimage.gaussian_filter(rng.random((s, s)), 3).astype(np.float32)[None, None]
    arrays = {"output": out, "mean": out + np.float32(1e-3),
              "variance": (rng.random(out.shape) * 1e-3).astype(np.float32)}
    print(f"| write of output + mean + variance, {s}x{s} float32 | best (s) | median (s) "
          "| size (MB) |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, compress in (("stored (default)", False), ("deflated (--compress)", True)):
            path = os.path.join(tmp, f"r{int(compress)}.npz")
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                save_npz(path, arrays, {"method": "noise"}, compress)
                times.append(time.perf_counter() - t)
            print(f"| {label} | {min(times):.4f} | {float(np.median(times)):.4f} | "
                  f"{os.path.getsize(path) / 1e6:.2f} |")


if __name__ == "__main__":
    main()
