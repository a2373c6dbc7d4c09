"""End to end: `tfue run` as a user calls it, against a naive script and a lower bound.

    python tools/bench_run.py [--repeat 3] [--only det,sr,start,memory] [--quick]
                              [--tfue-args "--no-cache"] [--provider cpu|cuda]
                              [--md FILE] [--json FILE]

All ratios come from one run; within a row the contenders are interleaved
(repeat r: naive, tfue, bound, naive, tfue, bound, ...), and the table gives medians
and the per-repeat ratios.

- inputs: 6 scikit-image pictures (astronaut, coffee, chelsea, rocket, page, text;
  grey ones stacked to RGB), resized with PIL to 640 x 640 (PP-OCRv4 det) and
  128 x 128 (models/srresnet_x2.onnx), written as PNG into a temporary folder;
- rows: det at depths 0.3, 0.6, 0.85; SR at 0.5 (middle) and /up/Conv_output_0 (late: the
  wide 128-channel tensor before the pixel shuffle), N = 32 (``--sr-at`` for others);
- tfue: ``tfue run MODEL DIR --method noise --at D -n N --seed 1 -o OUT --json``
  (+ ``--tfue-args``) in a subprocess, process start included, fresh OUT each time;
  what its JSON summary says it chose (strategy, chunks, autotune ...) is reported;
- naive: ``tools/naive_noise.py`` in a subprocess (process start included), sigma 0.1;
- bound: in this process, T(prefix) + N * T(suffix) per image, each piece at its best
  per-sample time over batch sizes 1, 4, 8, 32 (no process start, no I/O);
- start: ``tfue run`` on one 640 x 640 image twice with one fresh cache
  (TFUE_CACHE_DIR and XDG_CACHE_HOME point at new temporary folders), and on one
  128 x 128 image (SR, N = 8) against the model alone (N plain session runs);
- memory: peak RSS of the ``tfue run`` process (``/usr/bin/time -f %M``, else VmHWM
  read from /proc while it runs) on one 640 x 640 image, depth 0.6, N = 16 and 256.

Rows and memory share one fresh tfue cache (TFUE_CACHE_DIR / XDG_CACHE_HOME in a
temporary folder) unless --user-cache: results do not depend on earlier runs, and the
per-repeat ratios show the cold first repeat.

Exit code 2 when scikit-image (the pictures) is missing.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)

import bench  # noqa: E402  (split_models, session, timed, SIGMA)

from tfue_onnx import Noise  # noqa: E402
from tfue_onnx.model import inspect_model  # noqa: E402

PICTURES = ("astronaut", "coffee", "chelsea", "rocket", "page", "text")
DET_DEPTHS = ("0.3", "0.6", "0.85")
# The SR rows of BENCHMARKS.md: middle, and the late 128-channel tensor before the pixel
# shuffle (depth 0.9 is /Resize_output_0, the upsampled input on the global skip: a suffix
# of one Add and a Clip, which says little about sampling).
SR_AT = "middle=0.5,late=/up/Conv_output_0"
BATCHES = (1, 4, 8, 32)
SR_PATH = os.path.join(ROOT, "models", "srresnet_x2.onnx")
NAIVE = os.path.join(TOOLS, "naive_noise.py")
# Summary keys that say what tfue chose (shown per row); every key is listed anyway.
CHOICE_HINTS = ("strateg", "chunk", "tune", "thread", "cache", "provider", "verif")


def log(msg: str) -> None:
    """Progress on stderr (stdout carries the table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def det_path() -> str | None:
    """PP-OCRv4's detector from rapidocr-onnxruntime, or None when it is not installed."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "models",
                        "ch_PP-OCRv4_det_infer.onnx")
    return path if os.path.exists(path) else None


def write_pictures(folder: str, size: int, count: int) -> list[np.ndarray]:
    """Write ``count`` scikit-image pictures as size x size RGB PNGs into ``folder``.

    Returns:
        The same pictures as the model sees them: float32 1x3xHxW in [0, 1].
    """
    from PIL import Image
    from skimage import data

    os.makedirs(folder, exist_ok=True)
    arrays = []
    for name in PICTURES[:count]:
        a = getattr(data, name)()
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        img = Image.fromarray(a[..., :3].astype(np.uint8)).resize((size, size),
                                                                    Image.BILINEAR)
        img.save(os.path.join(folder, name + ".png"))
        x = np.asarray(img, dtype=np.float32) / 255.0
        arrays.append(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
    return arrays


def tfue_exe() -> list[str]:
    """The `tfue` console script a user would call (the one next to this Python first)."""
    here = os.path.join(os.path.dirname(sys.executable), "tfue")
    found = here if os.path.exists(here) else shutil.which("tfue")
    if found is None:
        raise SystemExit("bench_run: the 'tfue' command is not installed (pip install -e .)")
    return [found]


def run_child(cmd: list[str], env: dict | None = None, peak: bool = False):
    """Run ``cmd``; return (wall seconds, stdout, peak RSS in MiB or None).

    Raises:
        RuntimeError: when the command fails (with the end of its stderr).
    """
    kib_file = None
    if peak and os.path.exists("/usr/bin/time"):
        fd, kib_file = tempfile.mkstemp(suffix=".rss")
        os.close(fd)
        cmd = ["/usr/bin/time", "-f", "%M", "-o", kib_file] + cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    hwm = None
    if peak and kib_file is None:
        # Read the child's own high-water mark while it lives (not the parent's ru_maxrss).
        while proc.poll() is None:
            hwm = _vmhwm(proc.pid) or hwm
            time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}:\n{err[-2000:]}")
    mib = None
    if kib_file is not None:
        with open(kib_file) as f:
            mib = int(f.read().split()[-1]) / 1024
        os.unlink(kib_file)
    elif hwm is not None:
        mib = hwm / 1024
    return wall, out, mib


def _vmhwm(pid: int) -> int | None:
    """VmHWM of ``pid`` in KiB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def parse_summary(stdout: str, out_dir: str) -> dict:
    """The JSON summary `tfue run --json` printed (else its summary.json), less per-input data."""
    try:
        summary = json.loads(stdout[stdout.index("{"):])
    except ValueError:
        try:
            with open(os.path.join(out_dir, "summary.json")) as f:
                summary = json.load(f)
        except (OSError, ValueError):
            return {}
    summary.pop("inputs", None)
    return summary


def fmt_chunks(chunks) -> str:
    """[32, 32, 32] -> '3x32'; [3]*10 + [2] -> '10x3+1x2'."""
    if not isinstance(chunks, list) or not all(isinstance(c, int) for c in chunks):
        return json.dumps(chunks)
    return "+".join(f"{k}x{v}" for v, k in collections.Counter(chunks).items())


def chosen(summary: dict) -> str:
    """Strategy (and chunks) as the summary states them."""
    if not summary:
        return "?"
    text = str(summary.get("strategy", "?"))
    if "chunks" in summary:
        text += f", chunks {fmt_chunks(summary['chunks'])}"
    return text


def choice_details(summary: dict) -> dict:
    """The summary entries that describe what tfue decided."""
    return {k: v for k, v in summary.items() if any(h in k.lower() for h in CHOICE_HINTS)}


class Bound:
    """T(prefix) + N * T(suffix) per image, each piece at its best per-sample batch size."""

    def __init__(self, path: str, depth: str, images: list, provider: str, batches, tmp: str):
        pre_path, suf_path, crossing = bench.split_models(path, Noise(bench.SIGMA, at=depth),
                                                          tmp)
        self.pre = bench.session(pre_path, provider)
        self.suf = bench.session(suf_path, provider)
        in_name = self.pre.get_inputs()[0].name
        suf_names = [i.name for i in self.suf.get_inputs()]
        self.feeds, self.skipped = {}, {}
        for b in batches:
            x = np.concatenate([images[i % len(images)] for i in range(b)])
            try:
                cut = dict(zip(crossing, self.pre.run(crossing, {in_name: x})))
                suf_feed = {k: cut[k] for k in suf_names}
                self.suf.run(None, suf_feed)  # warm-up at this shape
            except Exception as e:  # noqa: BLE001 - out of memory at a big batch: skip it
                self.skipped[b] = str(e).splitlines()[0][:120]
                continue
            self.feeds[b] = ({in_name: x}, suf_feed)
        if not self.feeds:
            raise RuntimeError(f"lower bound: no batch size ran: {self.skipped}")

    def measure(self) -> dict:
        """Best per-sample seconds of each piece over the batch sizes, and at which size."""
        pre, suf = {}, {}
        for b, (pf, sf) in self.feeds.items():
            # Best of two runs: a bound should not carry the noise of a single timing.
            pre[b] = min(bench.timed(lambda: self.pre.run(None, pf)) for _ in range(2)) / b
            suf[b] = min(bench.timed(lambda: self.suf.run(None, sf)) for _ in range(2)) / b
        bp, bs = min(pre, key=pre.get), min(suf, key=suf.get)
        return {"prefix_s": pre[bp], "prefix_batch": bp, "suffix_s": suf[bs], "suffix_batch": bs}


def bench_row(label, path, depth, folder, images, n, args, tmp) -> dict:
    """One row: naive, tfue and bound interleaved ``args.repeat`` times."""
    tensor = inspect_model(path).resolve_location(depth).name
    log(f"{label}: depth {depth} -> {tensor}; preparing the lower bound")
    bound = Bound(path, depth, images, args.provider, args.batches,
                  tempfile.mkdtemp(dir=tmp))
    tfue_cmd = tfue_exe() + ["run", path, folder, "--method", "noise", "--at", depth,
                             "-n", str(n), "--seed", "1", "--json"] + args.tfue_extra
    naive_cmd = [sys.executable, NAIVE, path, tensor, folder, "-n", str(n),
                 "--sigma", str(bench.SIGMA), "--provider", args.provider]
    times = {"naive": [], "tfue": [], "bound": []}
    summaries, bound_details = [], []
    for r in range(args.repeat):
        t, _, _ = run_child(naive_cmd + ["-o", tempfile.mkdtemp(dir=tmp)])
        times["naive"].append(t)
        out_dir = os.path.join(tempfile.mkdtemp(dir=tmp), "out")
        t, stdout, _ = run_child(tfue_cmd + ["-o", out_dir], env=args.env)
        times["tfue"].append(t)
        summaries.append(parse_summary(stdout, out_dir))
        d = bound.measure()
        bound_details.append(d)
        times["bound"].append(len(images) * (d["prefix_s"] + n * d["suffix_s"]))
        log(f"{label} repeat {r + 1}: naive {times['naive'][-1]:.2f} s, tfue "
            f"{times['tfue'][-1]:.2f} s, bound {times['bound'][-1]:.2f} s")
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"row": label, "depth": depth, "tensor": tensor, "N": n, "images": len(images),
            "times": times, "median": med, "summaries": summaries,
            "summary_keys": sorted(set().union(*summaries)), "bound": bound_details,
            "bound_skipped": bound.skipped,
            "speedup": med["naive"] / med["tfue"], "to_bound": med["tfue"] / med["bound"],
            "speedups": [a / b for a, b in zip(times["naive"], times["tfue"])],
            "to_bounds": [a / b for a, b in zip(times["tfue"], times["bound"])]}


def cache_env(tmp: str) -> dict:
    """The environment with a fresh, empty tfue cache (and user cache dir)."""
    env = dict(os.environ)
    env["TFUE_CACHE_DIR"] = tempfile.mkdtemp(prefix="tfue-cache-", dir=tmp)
    env["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="xdg-cache-", dir=tmp)
    return env


def bench_start(det, det_one, sr_one, sr_x, n_det, args, tmp) -> dict:
    """Second process vs first on one cache; one small input against the model alone."""
    extra = [a for a in args.tfue_extra if a != "--no-cache"]  # the cache is the point
    res = {"det": None, "sr": None, "dropped": len(extra) != len(args.tfue_extra)}
    sr_n = 8
    plain = bench.session(SR_PATH, args.provider)
    in_name = plain.get_inputs()[0].name
    plain.run(None, {in_name: sr_x})
    pairs = {"det": [], "sr": []}
    model_alone = []
    for r in range(args.repeat):
        for key, path, one, at, n in (("det", det, det_one, "0.6", n_det),
                                      ("sr", SR_PATH, sr_one, "0.5", sr_n)):
            if path is None:
                continue
            env = cache_env(tmp)
            cmd = tfue_exe() + ["run", path, one, "--method", "noise", "--at", at, "-n", str(n),
                                "--seed", "1", "--json"] + extra
            walls, starts = [], []
            for _ in range(2):
                out_dir = os.path.join(tempfile.mkdtemp(dir=tmp), "out")
                wall, stdout, _ = run_child(cmd + ["-o", out_dir], env=env)
                walls.append(wall)
                timing = (parse_summary(stdout, out_dir) or {}).get("timing") or {}
                starts.append(timing.get("startup_s"))
            pairs[key].append(walls + starts)
            log(f"start {key} repeat {r + 1}: first {walls[0]:.2f} s, second {walls[1]:.2f} s; "
                f"start-up {starts[0]} s, {starts[1]} s")
        model_alone.append(sr_n * statistics.median(
            bench.timed(lambda: plain.run(None, {in_name: sr_x})) for _ in range(5)))
    for key, n in (("det", n_det), ("sr", sr_n)):
        if pairs[key]:
            first = statistics.median(p[0] for p in pairs[key])
            second = statistics.median(p[1] for p in pairs[key])
            res[key] = {"N": n, "first_s": first, "second_s": second, "ratio": first / second,
                        "ratios": [p[0] / p[1] for p in pairs[key]]}
            if all(p[2] is not None and p[3] for p in pairs[key]):
                # tfue's own start-up time (summary.json timing.startup_s): from the CLI's
                # start to the first sample.
                res[key].update(
                    startup_first_s=statistics.median(p[2] for p in pairs[key]),
                    startup_second_s=statistics.median(p[3] for p in pairs[key]),
                    startup_ratios=[p[2] / p[3] for p in pairs[key]])
    m = statistics.median(model_alone)
    res["sr"].update(model_s=m, overhead_first_s=res["sr"]["first_s"] - m,
                     overhead_second_s=res["sr"]["second_s"] - m)
    return res


def bench_memory(det, det_one, ns, args, tmp) -> dict:
    """Peak RSS of the `tfue run` process at depth 0.6 for each N: each N on a fresh cache
    of its own, run twice (the first process verifies and measures, the second reads the
    cache); ``peak_mib`` is the larger of the two."""
    out = {}
    for n in ns:
        env = cache_env(tmp) if not args.user_cache else args.env
        runs = []
        for _ in range(2):
            out_dir = os.path.join(tempfile.mkdtemp(dir=tmp), "out")
            cmd = tfue_exe() + ["run", det, det_one, "--method", "noise", "--at", "0.6", "-n",
                                str(n), "--seed", "1", "--json", "-o", out_dir] + args.tfue_extra
            wall, stdout, mib = run_child(cmd, env=env, peak=True)
            runs.append((mib, wall, parse_summary(stdout, out_dir)))
        out[n] = {"peak_mib": max(r[0] for r in runs), "first_mib": runs[0][0],
                  "second_mib": runs[1][0], "wall_s": runs[1][1], "summary": runs[1][2]}
        log(f"memory N={n}: {runs[0][0]:.0f} MiB (first process), {runs[1][0]:.0f} MiB (second)")
    return out


def markdown(info: dict, rows: list, start: dict | None, memory: dict | None) -> str:
    """The report: one table per part, then what tfue said it chose."""
    lines = [f"tfue end-to-end benchmark, {info['when']}; {info['cpus']} CPUs, load average "
             f"{info['load_before']} before / {info['load_after']} after; onnxruntime "
             f"{info['ort']}; provider {info['provider']}; tfue cache: {info['cache']}; tfue args "
             f"`{info['tfue_args'] or '(none)'}`; median of {info['repeat']} interleaved "
             "repeat(s); times are wall seconds for all images", ""]
    if rows:
        lines += ["| row | tensor | N | strategy chosen (chunks: count x size) | tfue (s) | naive (s) | "
                  "speed-up (naive/tfue) | bound (s) | tfue/bound | per-repeat speed-up | "
                  "per-repeat tfue/bound |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            m = r["median"]
            lines.append(
                f"| {r['row']} (`--at {r['depth']}`, {r['images']} img) | `{r['tensor']}` | "
                f"{r['N']} | {chosen(r['summaries'][-1])} | {m['tfue']:.2f} | {m['naive']:.2f} | "
                f"{r['speedup']:.2f}x | {m['bound']:.2f} | {r['to_bound']:.2f} | "
                f"{', '.join(f'{v:.2f}' for v in r['speedups'])} | "
                f"{', '.join(f'{v:.2f}' for v in r['to_bounds'])} |")
        lines += ["", "What tfue's summary said (last repeat), and the bound's pieces:", ""]
        for r in rows:
            s = r["summaries"][-1]
            b = r["bound"][-1]
            lines.append(f"- {r['row']} `--at {r['depth']}`: {json.dumps(choice_details(s), sort_keys=True)}; "
                         f"bound per image: prefix {b['prefix_s'] * 1e3:.1f} ms (batch "
                         f"{b['prefix_batch']}) + N x suffix {b['suffix_s'] * 1e3:.1f} ms (batch "
                         f"{b['suffix_batch']})"
                         + (f"; batch sizes skipped: {r['bound_skipped']}"
                            if r["bound_skipped"] else ""))
        keys = sorted(set().union(*(r["summary_keys"] for r in rows)))
        lines += ["", "Summary keys found: " + ", ".join(f"`{k}`" for k in keys)]
    if start:
        lines += ["", "| second process, one fresh cache | N | first (s) | second (s) | "
                  "first/second | start-up first (s) | start-up second (s) | start-up "
                  "first/second | per repeat (start-up) |", "|---|---|---|---|---|---|---|---|---|"]
        for key, label in (("det", "PP-OCRv4 det, 1 image 640x640, `--at 0.6`"),
                           ("sr", "SR, 1 image 128x128, `--at 0.5`")):
            s = start.get(key)
            if s:
                up = (f"{s['startup_first_s']:.2f} | {s['startup_second_s']:.2f} | "
                      f"{s['startup_first_s'] / s['startup_second_s']:.2f}x | "
                      + ", ".join(f"{v:.2f}" for v in s["startup_ratios"])
                      if "startup_first_s" in s else "- | - | - | -")
                lines.append(f"| {label} | {s['N']} | {s['first_s']:.2f} | {s['second_s']:.2f} | "
                             f"{s['ratio']:.2f}x | {up} |")
        s = start["sr"]
        lines += ["", "| 1 small input (SR 128x128, N=8) | wall (s) | model alone, N plain runs "
                  "(s) | start-up overhead (s) | wall/model |", "|---|---|---|---|---|"]
        for which in ("first", "second"):
            lines.append(f"| tfue run, {which} process on the cache | {s[which + '_s']:.2f} | "
                         f"{s['model_s']:.3f} | {s['overhead_' + which + '_s']:.2f} | "
                         f"{s[which + '_s'] / s['model_s']:.1f}x |")
        if start["dropped"]:
            lines.append("\n(`--no-cache` was dropped from the tfue args for this part.)")
    if memory:
        ns = sorted(memory)
        lines += ["", "| peak RSS of `tfue run` (det 640x640, 1 image, `--at 0.6`) | "
                  + " | ".join(f"N={n} (MiB)" for n in ns) + f" | N={ns[-1]} / N={ns[0]} | "
                  "chunks |", "|---|" + "---|" * (len(ns) + 2)]
        for which, label in (("first_mib", "first process (verifies, measures)"),
                             ("second_mib", "second process (from the cache)")):
            peaks = [memory[n][which] for n in ns]
            lines.append(f"| tfue run, {label} | " + " | ".join(f"{p:.0f}" for p in peaks)
                         + f" | {peaks[-1] / peaks[0]:.2f} | "
                         + "; ".join(f"N={n}: {chosen(memory[n]['summary'])}" for n in ns)
                         + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command line entry point; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="det,sr,start,memory",
                    help="comma-separated parts: det, sr, start, memory")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 image, N=8, repeat 1")
    ap.add_argument("--tfue-args", default="", help="appended to every `tfue run`")
    ap.add_argument("--provider", choices=("cpu", "cuda"), default="cpu",
                    help="for the naive script and the in-process lower bound")
    ap.add_argument("--batches", help="batch sizes at which the bound's pieces are timed "
                    "(default 1,4,8,32; with --quick 1,4)")
    ap.add_argument("--sr-at", default=SR_AT,
                    help=f"SR rows as label=location pairs (default {SR_AT})")
    ap.add_argument("--user-cache", action="store_true",
                    help="rows and memory use the user's own tfue cache (default: one fresh "
                    "cache for this whole run, so repeat 1 of the first row is cold)")
    ap.add_argument("--md", help="also write the markdown table here")
    ap.add_argument("--json", dest="json_out", help="write every measurement here")
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - {"det", "sr", "start", "memory"}
    if unknown:
        ap.error(f"unknown part(s) in --only: {', '.join(sorted(unknown))}")
    if importlib.util.find_spec("skimage") is None:
        print("bench_run: scikit-image is missing (it supplies the test pictures): "
              "pip install scikit-image", file=sys.stderr)
        return 2
    args.tfue_extra = shlex.split(args.tfue_args)
    args.batches = ([int(b) for b in args.batches.split(",")] if args.batches
                    else [1, 4] if args.quick else list(BATCHES))
    count, n = (1, 8) if args.quick else (len(PICTURES), 32)
    if args.quick:
        args.repeat = 1
    mem_ns = (8, 32) if args.quick else (16, 256)
    det = det_path()
    if det is None and parts & {"det", "start", "memory"}:
        print("bench_run: rapidocr-onnxruntime (PP-OCRv4 det) is not installed: det, and the "
              "det halves of start and memory, are skipped", file=sys.stderr)

    import onnxruntime as ort
    info = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "load_before": "%.1f" % os.getloadavg()[0], "ort": ort.__version__,
            "provider": args.provider, "cache": "the user's" if args.user_cache else
            "one fresh cache for the run", "tfue_args": args.tfue_args, "repeat": args.repeat,
            "python": platform.python_version()}
    rows, start, memory = [], None, None
    with tempfile.TemporaryDirectory(prefix="tfue-bench-") as tmp:
        args.env = None if args.user_cache else cache_env(tmp)
        det_dir, sr_dir = os.path.join(tmp, "det640"), os.path.join(tmp, "sr128")
        det_images = write_pictures(det_dir, 640, count)
        sr_images = write_pictures(sr_dir, 128, count)
        det_one = os.path.join(det_dir, PICTURES[0] + ".png")
        sr_one = os.path.join(sr_dir, PICTURES[0] + ".png")
        if "det" in parts and det is not None:
            for depth in DET_DEPTHS:
                rows.append(bench_row("PP-OCRv4 det 640", det, depth, det_dir, det_images, n,
                                      args, tmp))
        if "sr" in parts:
            for where, depth in (kv.split("=", 1) for kv in args.sr_at.split(",")):
                rows.append(bench_row(f"SR 128 {where}", SR_PATH, depth, sr_dir, sr_images, n,
                                      args, tmp))
        if "start" in parts:
            start = bench_start(det, det_one, sr_one, sr_images[0], n, args, tmp)
        if "memory" in parts and det is not None:
            memory = bench_memory(det, det_one, mem_ns, args, tmp)
    info["load_after"] = "%.1f" % os.getloadavg()[0]
    text = markdown(info, rows, start, memory)
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"info": info, "rows": rows, "start": start, "memory": memory}, f,
                      indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
