"""Check every candidate location of a model: rewrite, verify and run noise and dropout.

    python tools/check_locations.py MODEL.onnx --shape 1,3,64,64 [--every K] [--methods noise,dropout]

For each location (or every K-th) and method: level 0 must give the original output
(within rtol 1e-5 / atol 1e-6), a mean equal to it and a variance of exactly 0; level 0.2
must give a finite variance. Prints one line per location and a closing count; exits 1
when any location fails. Used for the issue notes on the PP-OCR models (see README).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv=None) -> int:
    import onnxruntime as ort

    from tfue_onnx import Dropout, Estimator, Noise
    from tfue_onnx.model import inspect_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--shape", required=True, help="input shape, e.g. 1,3,64,64")
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--methods", default="noise,dropout")
    args = ap.parse_args(argv)
    info = inspect_model(args.model)
    name = info.inputs[0].name
    shape = tuple(int(v) for v in args.shape.split(","))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"]).run(
        None, {name: x})
    specs = {"noise": Noise, "dropout": Dropout}
    cands = info.candidates[::args.every]
    failed, strategies, start = [], {}, time.time()
    for k, cand in enumerate(cands, 1):
        for method in args.methods.split(","):
            try:
                est = Estimator(args.model, specs[method](0.2, at=cand.index), samples=2,
                                seed=0, provider="cpu")
                off, on = est({name: x}, level=0.0), est({name: x})
                for o, r in zip(info.outputs, ref):
                    s = off.outputs[o.name]
                    if s.mean is None:
                        continue
                    np.testing.assert_allclose(s.output, r, rtol=1e-5, atol=1e-6)
                    assert np.array_equal(s.mean, s.output), "mean != output at level 0"
                    assert float(np.max(s.variance)) == 0.0, "variance != 0 at level 0"
                    assert np.all(np.isfinite(on.outputs[o.name].variance)), "non-finite"
                strategy = off.metadata["strategy"]
                strategies[strategy] = strategies.get(strategy, 0) + 1
                status = f"ok ({strategy})"
            except Exception as exc:  # report every failure, keep going
                failed.append((cand.index, method, str(exc).splitlines()[0][:200]))
                status = "FAILED " + failed[-1][2]
            print(f"[{k}/{len(cands)}] {cand.index} {cand.op} depth {cand.depth:.2f} "
                  f"{method}: {status}", flush=True)
    print(f"{len(cands)} locations x {len(args.methods.split(','))} methods in "
          f"{time.time() - start:.0f} s: {len(failed)} failed; strategies {strategies}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
