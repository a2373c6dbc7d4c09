#!/usr/bin/env python3
"""Check the exported SRResNet ONNX files with onnxruntime (CPU).

Run with the project's environment (onnx + onnxruntime + numpy only):

    .venv/bin/python models/check_onnx.py models/srresnet_x2*.onnx [--refs DIR]

For each file: size < 5 MB, opset, input ``input`` [batch, 3, height, width]
and output ``output`` [batch, 3, 2*height, 2*width] float32, dynamic batch and
spatial size (batch 2, odd non-square size), output in [0, 1], repeated runs
identical (any Dropout is off at inference), and Dropout nodes: exactly one
(named ``dropout``, constant ratio, no training_mode input) in ``*mcdropout*``
files, none elsewhere. With ``--refs DIR``, ``DIR/<stem>.ref.npz`` (written by
``build_srresnet.py --ref``) must match onnxruntime's output (max abs diff <
1e-4) and its held-out PSNR is printed.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort


def check(path: str, refs: str | None) -> list[str]:
    errs = []
    size = os.path.getsize(path)
    if size > 5 * 2**20:
        errs.append(f"{size} bytes > 5 MB")
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    opset = [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")][0]
    drops = [n for n in m.graph.node if n.op_type == "Dropout"]
    if "mcdropout" in os.path.basename(path):
        if len(drops) != 1 or drops[0].name != "dropout" or len(drops[0].input) != 2:
            errs.append(f"expected one Dropout 'dropout' with (data, ratio) inputs: {drops}")
    elif drops:
        errs.append(f"unexpected Dropout nodes {[d.name for d in drops]}")
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (i,), (o,) = s.get_inputs(), s.get_outputs()
    if (i.name, i.type, i.shape) != ("input", "tensor(float)", ["batch", 3, "height", "width"]):
        errs.append(f"input {i.name} {i.type} {i.shape}")
    if (o.name, o.type, o.shape) != ("output", "tensor(float)", ["batch", 3, "height2x", "width2x"]):
        errs.append(f"output {o.name} {o.type} {o.shape}")
    x = np.random.default_rng(0).random((2, 3, 37, 50), dtype=np.float32)
    y1 = s.run(None, {"input": x})[0]
    y2 = s.run(None, {"input": x})[0]
    if y1.shape != (2, 3, 74, 100):
        errs.append(f"output shape {y1.shape}")
    if not np.array_equal(y1, y2):
        errs.append("repeated runs differ")
    if y1.min() < 0 or y1.max() > 1:
        errs.append(f"output range [{y1.min()}, {y1.max()}]")
    line = f"{os.path.basename(path)}: {size / 1024:.0f} KiB, opset {opset}, dropouts {[d.name for d in drops]}"
    if refs:
        stem = os.path.basename(path)[: -len(".onnx")]
        ref = np.load(os.path.join(refs, stem + ".ref.npz"))
        y = s.run(None, {"input": ref["input"]})[0]
        d = float(np.abs(y - ref["output"]).max())
        if d > 1e-4:
            errs.append(f"onnxruntime vs torch max abs diff {d}")
        p = 10 * math.log10(1 / float(np.mean((y.astype(np.float64) - ref["hr"]) ** 2)))
        line += f", ort-vs-torch {d:.1e}, held-out[0] PSNR {p:.3f} dB"
    print(line + (" FAIL " + "; ".join(errs) if errs else " OK"))
    return errs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--refs", default=None)
    a = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}")
    bad = [p for p in a.models if check(p, a.refs)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
