"""Speed and memory of tfue's sampling, as ratios measured side by side in one run.

    python tools/bench.py [--repeat 5] [--size 128] [--models sr,det] [--skip-torch]

For the reference SR model (models/srresnet_x2.onnx) and PP-OCRv4's detector
(from rapidocr-onnxruntime, if installed), N in {8, 32}, locations early /
middle / late, infer-noise:

- ours: ``Estimator(..., samples=N, chunk=N)`` (strategy auto: shared prefix);
- naive loop: N calls of the model with a noise node at the location, batch 1,
  mean and variance in numpy (the way a user would script it);
- lower bound: the prefix (input -> tensors crossing the cut) once plus N times
  the suffix (crossing tensors -> output), each timed on its own at batch 1;
- PyTorch (SR only, when torch is installed): a forward hook adding noise, N
  forward passes;

plus infer-transformation (8 transforms vs 8 plain runs) and peak memory at
N = 16 and N = 256 with the same chunk. Times are medians of interleaved repeats.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import naive_noise  # noqa: E402

from tfue_onnx import Estimator, Noise, Transform  # noqa: E402
from tfue_onnx.graph.graybox import _cut  # noqa: E402
from tfue_onnx.model import inspect_model  # noqa: E402

SIGMA = 0.1
SR_LOCATIONS = {"early": "/body/body.0/conv1/Conv_output_0",
                "middle": "/body/body.2/conv1/Conv_output_0",
                "late": "/up/Conv_output_0"}
SR_MODULES = {"early": "body.0.conv1", "middle": "body.2.conv1", "late": "up"}
DEPTHS = {"early": "0.25", "middle": "0.5", "late": "0.9"}


def session(model, provider="cpu"):
    """An onnxruntime session on ``provider`` (cpu or cuda) for a path or a ModelProto."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=naive_noise.PROVIDERS[provider])


def noisy_model(path, location):
    """The model with x + N(0, SIGMA^2) at ``location``, written by hand with graphsurgeon."""
    return naive_noise.noisy_model(onnx.load(path), location, SIGMA)


def split_models(path, spec, tmp=None):
    """(prefix, suffix) models around the cut of ``spec`` (the lower-bound pieces),
    written into ``tmp`` (a new temporary folder by default)."""
    info = inspect_model(path)
    graph = gs.import_onnx(info.model)
    crossing, _ = _cut(graph, info, spec)
    names = [t.name for t in crossing]
    tmp = tempfile.mkdtemp() if tmp is None else tmp
    pre, suf = os.path.join(tmp, "prefix.onnx"), os.path.join(tmp, "suffix.onnx")
    outputs = [o.name for o in info.outputs]
    onnx.utils.extract_model(path, pre, [i.name for i in info.inputs], names)
    onnx.utils.extract_model(path, suf, names, outputs)
    return pre, suf, names


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(contenders: dict, repeat: int) -> dict:
    """Median seconds of each contender, repeats interleaved (noise hits all alike)."""
    for fn in contenders.values():
        fn()  # warm up
    times = {k: [] for k in contenders}
    for _ in range(repeat):
        for k, fn in contenders.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def torch_hooked(path, module_name, n):
    """PyTorch: the SR network with a forward hook adding noise, N forward passes."""
    import torch

    spec = importlib.util.spec_from_file_location("build_srresnet",
                                                  os.path.join(ROOT, "models",
                                                               "build_srresnet.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    weights = {i.name: torch.from_numpy(onnx.numpy_helper.to_array(i).copy())
               for i in onnx.load(path).graph.initializer}
    net = mod.SRResNet()
    net.load_state_dict({k: v for k, v in weights.items() if k in net.state_dict()})
    net.eval()
    target = dict(net.named_modules())[module_name]
    target.register_forward_hook(lambda m, i, o: o + SIGMA * torch.randn_like(o))

    def run(x):
        with torch.no_grad():
            xt = torch.from_numpy(x)
            outs = np.stack([net(xt).numpy() for _ in range(n)])
        return outs.mean(0), outs.var(0)
    return run


def bench_model(name, path, x, locations, repeat, use_torch):
    rows = []
    in_name = inspect_model(path).inputs[0].name
    plain = session(path)
    for where, loc in locations.items():
        naive_sess = session(noisy_model(path, inspect_model(path).resolve_location(loc).name))
        pre_path, suf_path, crossing = split_models(path, Noise(SIGMA, at=loc))
        pre, suf = session(pre_path), session(suf_path)
        cut = dict(zip(crossing, pre.run(None, {in_name: x})))
        suf_feeds = {k: v for k, v in cut.items() if k in [i.name for i in suf.get_inputs()]}
        for n in (8, 32):
            est = Estimator(path, Noise(SIGMA, at=loc), samples=n, chunk=n, seed=0)

            def naive():
                outs = np.stack([naive_sess.run(None, {in_name: x})[0] for _ in range(n)])
                return outs.mean(0), outs.var(0)

            contenders = {"ours": lambda: est(x), "naive": naive,
                          "prefix": lambda: pre.run(None, {in_name: x}),
                          "suffix": lambda: suf.run(None, suf_feeds)}
            if use_torch:
                contenders["torch"] = (lambda run=torch_hooked(path, SR_MODULES[where], n):
                                       run(x))
            t = measure(contenders, repeat)
            bound = t["prefix"] + n * t["suffix"]
            row = {"model": name, "where": where, "location": est.location, "N": n,
                   "strategy": est(x).metadata["strategy"], "ours_s": t["ours"],
                   "naive_s": t["naive"], "bound_s": bound,
                   "speedup_vs_naive": t["naive"] / t["ours"], "ratio_to_bound": t["ours"] / bound}
            if use_torch:
                row["torch_s"] = t["torch"]
                row["speedup_vs_torch"] = t["torch"] / t["ours"]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    est = Estimator(path, Transform("d4"))
    t = measure({"d4": lambda: est(x),
                 "plain8": lambda: [plain.run(None, {in_name: x}) for _ in range(8)]}, repeat)
    transform = {"model": name, "d4_s": t["d4"], "plain8_s": t["plain8"],
                 "overhead": t["d4"] / t["plain8"] - 1}
    print(json.dumps(transform), file=sys.stderr)
    return rows, transform


# Peak RSS from /proc (VmHWM): getrusage's ru_maxrss survives exec, so a child started
# by a big parent would report the parent's peak.
MEMORY_SCRIPT = """
import sys, numpy as np
from tfue_onnx import Estimator, Noise
path, n, size, loc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
est = Estimator(path, Noise(0.1, at=loc), samples=n, chunk=16, seed=0)
est(x)
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def peak_memory(path, size, loc):
    out = {}
    for n in (16, 256):
        r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, path, str(n), str(size), loc],
                           capture_output=True, text=True, check=True, cwd=ROOT)
        out[n] = int(r.stdout.split()[-1]) / 1024  # MiB
    return out


def markdown(rows, transforms, memory, use_torch):
    lines = ["| model | location | N | strategy | ours (s) | naive loop (s) | speed-up | "
             "bound (s) | ours / bound |" + (" PyTorch hook (s) | speed-up vs torch |"
                                            if use_torch else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if use_torch else "")]
    for r in rows:
        torch_cols = (f" {r['torch_s']:.3f} | {r['speedup_vs_torch']:.2f}x |"
                      if use_torch and "torch_s" in r else (" - | - |" if use_torch else ""))
        lines.append(f"| {r['model']} | {r['where']} (`{r['location']}`) | {r['N']} | "
                     f"{r['strategy']} | {r['ours_s']:.3f} | {r['naive_s']:.3f} | "
                     f"{r['speedup_vs_naive']:.2f}x | {r['bound_s']:.3f} | "
                     f"{r['ratio_to_bound']:.2f} |" + torch_cols)
    lines += ["", "| model | d4 (8 transforms) (s) | 8 plain runs (s) | overhead |",
              "|---|---|---|---|"]
    for t in transforms:
        lines.append(f"| {t['model']} | {t['d4_s']:.3f} | {t['plain8_s']:.3f} | "
                     f"{100 * t['overhead']:+.1f}% |")
    lines += ["", "| model | peak RSS N=16 (MiB) | peak RSS N=256 (MiB) | ratio |",
              "|---|---|---|---|"]
    for name, m in memory.items():
        lines.append(f"| {name} | {m[16]:.0f} | {m[256]:.0f} | {m[256] / m[16]:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--size", type=int, default=128, help="SR input size (det: 2x)")
    ap.add_argument("--models", default="sr,det")
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args(argv)
    use_torch = not args.skip_torch and importlib.util.find_spec("torch") is not None
    if use_torch:
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    rows, transforms, memory = [], [], {}
    if "sr" in args.models:
        sr = os.path.join(ROOT, "models", "srresnet_x2.onnx")
        x = rng.random((1, 3, args.size, args.size), dtype=np.float32)
        r, t = bench_model("srresnet_x2", sr, x, SR_LOCATIONS, args.repeat, use_torch)
        rows += r
        transforms.append(t)
        memory["srresnet_x2"] = peak_memory(sr, args.size, SR_LOCATIONS["middle"])
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if "det" in args.models and spec is not None:
        det = os.path.join(list(spec.submodule_search_locations)[0], "models",
                           "ch_PP-OCRv4_det_infer.onnx")
        x = rng.standard_normal((1, 3, 2 * args.size, 2 * args.size)).astype(np.float32)
        r, t = bench_model("PP-OCRv4 det", det, x, DEPTHS, args.repeat, False)
        rows += r
        transforms.append(t)
        memory["PP-OCRv4 det"] = peak_memory(det, 2 * args.size, DEPTHS["middle"])
    print(f"CPU: {os.cpu_count()} cores; onnxruntime {ort.__version__}; SR input "
          f"{args.size}x{args.size}, det input {2 * args.size}x{2 * args.size}; "
          f"median of {args.repeat} interleaved repeats\n")
    print(markdown(rows, transforms, memory, use_torch))


if __name__ == "__main__":
    main()
