"""Time the block-wise metric on a 2048 x 2048 map (issue: "about a second").

    python tools/bench_metrics.py [--size 2048] [--repeat 3]

Prints a Markdown table row per step; the numbers go into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from scipy import ndimage

from tfue_onnx import metrics
from tfue_onnx.segment import grid_blocks, lcm_blocks


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    n = args.size
    output = ndimage.gaussian_filter(rng.random((n, n)), 4)  # smooth, image-like
    var = rng.random((n, n))
    err = rng.random((n, n))
    small = metrics.image_stats(var[None, None, :64, :64], output[None, None, :64, :64],
                                (output + err)[None, None, :64, :64])
    stats100 = small * 100
    rows = [
        ("local-center-of-mass blocks (sigma 2)", lambda: lcm_blocks(output)),
        ("all per-image statistics, LCM blocks, with baseline",
         lambda: metrics.image_stats(var[None, None], output[None, None],
                                     (output + err)[None, None])),
        ("all per-image statistics, 16x16 grid, no baseline",
         lambda: metrics.image_stats(var[None, None], output[None, None],
                                     (output + err)[None, None], grid=16, baseline=False)),
        ("pixel-wise Pearson + Spearman (one image)",
         lambda: (metrics.image_correlation(var, err),
                  metrics.image_correlation(var, err, rank=True))),
        ("AUSE/AURG, Poggi et al. (50 steps)", lambda: metrics.sparsification(var, err)),
        ("bootstrap, 1000 resamples of 100 images", lambda: metrics.summarize(
            stats100, bootstrap=1000)),
    ]
    print(f"{n}x{n} map, {platform.processor() or platform.machine()}, numpy {np.__version__}")
    print("| step | best (s) | median (s) |\n|---|---|---|")
    for name, fn in rows:
        best, med = best_of(fn, args.repeat)
        print(f"| {name} | {best:.3f} | {med:.3f} |")
    print(f"blocks in the LCM segmentation: {lcm_blocks(output).max() + 1}")
    print(f"grid blocks: {grid_blocks((n, n), 16).max() + 1}")


if __name__ == "__main__":
    main()
