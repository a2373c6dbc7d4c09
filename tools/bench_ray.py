"""`tfue run` on 200 images: the local engine against `--engine ray` with 1 and 2 actors.

    python tools/bench_ray.py [--count 200] [--size 48] [--samples 8] [--repeat 1]
                              [--md FILE] [--json FILE]

- inputs: ``--count`` crops of ``--size`` x ``--size`` pixels cut at seeded random places
  from the bundled sample images (tfue_onnx/data/sample_*.png), written as PNG into a
  temporary folder;
- model: the bundled x2 super-resolution model (tfue_onnx/data/srresnet_x2.onnx),
  infer-noise sigma 0.1 at depth 0.5, ``--samples`` N, seed 0, ``--no-pictures`` (the
  engines are compared, not matplotlib);
- contenders, each ``tfue run ... --json`` in a subprocess (process start and, for Ray,
  starting the local Ray included, as a user pays them), into a fresh folder, one
  fresh tfue cache (TFUE_CACHE_DIR) shared by all of them (the first run verifies and
  measures; repeats show the warm case): local; ray with 1 actor of 2 CPUs (2
  onnxruntime threads); ray with 2 actors of 1 CPU each;
- reported: wall seconds (median over repeats), images per second, throughput against
  the local engine, overhead per image ((T_ray - T_local) / count), the start-up the
  summary reports (process start to the first sample; for Ray: to the job's start,
  the graph verified and Ray connected) and the time it says was spent sampling
  (summed over actors for Ray); every result of every
  Ray run is checked equal to the local engine's, byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tfue_onnx", "data")
ENGINES = {"local": [],
           "ray, 1 actor x 2 CPUs": ["--engine", "ray", "--ray-actors", "1", "--ray-cpus", "2"],
           "ray, 2 actors x 1 CPU": ["--engine", "ray", "--ray-actors", "2", "--ray-cpus", "1"]}


def make_inputs(folder: str, count: int, size: int, seed: int = 0) -> str:
    """``count`` PNG crops (size x size, RGB) of the bundled sample images in ``folder``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pictures = [np.asarray(Image.open(os.path.join(DATA, f)).convert("RGB"))
                for f in sorted(os.listdir(DATA)) if f.startswith("sample_")]
    os.makedirs(folder, exist_ok=True)
    for k in range(count):
        pic = pictures[k % len(pictures)]
        y = int(rng.integers(0, pic.shape[0] - size))
        x = int(rng.integers(0, pic.shape[1] - size))
        Image.fromarray(pic[y:y + size, x:x + size]).save(os.path.join(folder, f"c{k:04d}.png"))
    return folder


def run_once(inputs: str, out: str, engine: list, samples: int, env: dict) -> dict:
    """One ``tfue run`` in a subprocess: {"wall_s", "summary"}."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "tfue"), "run",
           os.path.join(DATA, "srresnet_x2.onnx"), inputs, "--method", "noise", "--at", "0.5",
           "--sigma", "0.1", "-n", str(samples), "--seed", "0", "--no-pictures", "--quiet",
           "--json", "--out", out, *engine]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return {"wall_s": wall, "summary": json.loads(r.stdout)}


def same_results(a: str, b: str) -> bool:
    """Whether every NAME.npz in ``a`` holds the same arrays, byte for byte, in ``b``."""
    names = sorted(f for f in os.listdir(a) if f.endswith(".npz"))
    for name in names:
        with np.load(os.path.join(a, name)) as x, np.load(os.path.join(b, name)) as y:
            if any(x[k].tobytes() != y[k].tobytes() for k in x.files if k != "metadata"):
                return False
    return bool(names)


def measure(count: int, size: int, samples: int, repeat: int) -> dict:
    """Every engine ``repeat`` times, interleaved; the medians and the checks."""
    work = tempfile.mkdtemp(prefix="tfue-bench-ray-")
    try:
        inputs = make_inputs(os.path.join(work, "in"), count, size)
        env = {**os.environ, "TFUE_CACHE_DIR": os.path.join(work, "cache")}
        runs = {name: [] for name in ENGINES}
        for r in range(repeat):
            for k, (name, engine) in enumerate(ENGINES.items()):
                out = os.path.join(work, f"out-{r}-{k}")  # fresh: nothing to resume
                runs[name].append({**run_once(inputs, out, engine, samples, env), "out": out})
        local_out = runs["local"][0]["out"]
        same = {name: all(same_results(local_out, x["out"]) for x in xs)
                for name, xs in runs.items() if name != "local"}
        return {"runs": {n: [{k: v for k, v in x.items() if k != "out"} for x in xs]
                         for n, xs in runs.items()}, "same": same}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(found: dict, count: int) -> str:
    """The markdown table of ``measure``'s result."""
    wall = {n: statistics.median(x["wall_s"] for x in xs) for n, xs in found["runs"].items()}
    lines = ["| engine | wall s | start-up s | images/s | throughput vs local | "
             "overhead per image | sampling s (summed) | same results |",
             "|---|---|---|---|---|---|---|---|"]
    for name, xs in found["runs"].items():
        sampling = statistics.median(x["summary"]["timing"]["sampling_s"] for x in xs)
        startup = statistics.median(x["summary"]["timing"]["startup_s"] for x in xs)
        over = "" if name == "local" else \
            f"{(wall[name] - wall['local']) / count * 1e3:+.1f} ms"
        same = "" if name == "local" else ("yes" if found["same"][name] else "NO")
        lines.append(f"| {name} | {wall[name]:.2f} | {startup:.2f} | {count / wall[name]:.1f} | "
                     f"{wall['local'] / wall[name]:.2f} | {over} | {sampling:.2f} | {same} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--md", default=None, help="Also write the table to this file.")
    ap.add_argument("--json", default=None, help="Also write every measurement as JSON.")
    args = ap.parse_args(argv)
    found = measure(args.count, args.size, args.samples, args.repeat)
    text = (f"{args.count} images {args.size}x{args.size}, srresnet_x2, noise at 0.5, "
            f"N = {args.samples}, --no-pictures; {os.cpu_count()} CPUs, "
            f"{platform.processor() or platform.machine()}; median of {args.repeat}\n\n"
            + table(found, args.count))
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(found, f, indent=2, default=str)
    return 0 if all(found["same"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
