"""Infer-noise the way a user would script it: the yardstick ``tools/bench_run.py`` beats.

    python tools/naive_noise.py MODEL TENSOR IMAGES_OR_DIR... -o OUT [-n 32] [--sigma 0.1]
                                [--provider cpu|cuda]

onnx-graphsurgeon inserts ``RandomNormalLike(scale=sigma)`` + ``Add`` at TENSOR; one
InferenceSession with default options; for each image: PIL load, /255, NCHW, N batch-1
runs, numpy mean and variance, ``np.savez(OUT/NAME.npz, mean=..., variance=...)``.
Nothing here is tuned: it is deliberately the plain loop.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from PIL import Image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def noisy_model(model: onnx.ModelProto, tensor: str, sigma: float) -> onnx.ModelProto:
    """``model`` with ``tensor + N(0, sigma^2)`` feeding every consumer of ``tensor``.

    Args:
        model: the model (left unchanged).
        tensor: name of the tensor to perturb.
        sigma: standard deviation of the noise.

    Returns:
        The rewritten model.
    """
    graph = gs.import_onnx(model)
    t = graph.tensors()[tensor]
    consumers = list(t.outputs)  # snapshot before rewiring
    eps = gs.Variable("naive/eps", dtype=np.float32)
    noisy = gs.Variable("naive/noisy", dtype=np.float32)
    graph.nodes.append(gs.Node("RandomNormalLike", inputs=[t], outputs=[eps],
                               attrs={"scale": float(sigma)}))
    graph.nodes.append(gs.Node("Add", inputs=[t, eps], outputs=[noisy]))
    for node in consumers:
        for i, inp in enumerate(node.inputs):
            if inp is t:
                node.inputs[i] = noisy
    graph.cleanup().toposort()
    return gs.export_onnx(graph)


def image_paths(items) -> list[str]:
    """Image files named in ``items`` (files, or folders of images), sorted per folder."""
    paths = []
    for item in items:
        if os.path.isdir(item):
            paths += sorted(os.path.join(item, f) for f in os.listdir(item)
                            if f.lower().endswith(IMAGE_EXTS))
        else:
            paths.append(item)
    return paths


def main(argv=None) -> int:
    """Command line entry point; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("tensor")
    ap.add_argument("images", nargs="+")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("-n", "--samples", type=int, default=32)
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu")
    args = ap.parse_args(argv)

    model = noisy_model(onnx.load(args.model), args.tensor, args.sigma)
    sess = ort.InferenceSession(model.SerializeToString(), providers=PROVIDERS[args.provider])
    used = sess.get_providers()[0]
    print(f"naive_noise: provider {used}", file=sys.stderr)
    if args.provider == "cuda" and used != "CUDAExecutionProvider":
        print("naive_noise: CUDA was asked for but the session runs on " + used, file=sys.stderr)
        return 1
    in_name = sess.get_inputs()[0].name
    os.makedirs(args.out, exist_ok=True)
    for path in image_paths(args.images):
        img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        x = np.ascontiguousarray(img.transpose(2, 0, 1)[None])
        outs = np.stack([sess.run(None, {in_name: x})[0] for _ in range(args.samples)])
        name = os.path.splitext(os.path.basename(path))[0]
        np.savez(os.path.join(args.out, name + ".npz"), mean=outs.mean(0), variance=outs.var(0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
