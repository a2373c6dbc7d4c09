"""The demo: uncertainty maps for the bundled super-resolution model, with no arguments.

The bundled model is ``srresnet_x2`` (built by ``models/build_srresnet.py``,
a small SRResNet trained for x2 super-resolution with an L2 loss); the sample
images are held-out low-resolution crops. The demo runs infer-transformation
(d4) and infer-dropout on them and writes the maps, an overview picture and a
summary.
"""

from __future__ import annotations

import os

import numpy as np

from .io import ImageOptions, colorize, save_json, save_png, spatial_map
from .report import run_inputs

# Where infer-dropout goes in the bundled model, and how strongly (see README).
DEMO_DROPOUT = {"at": "0.5", "rate": 0.05}


def data_dir() -> str:
    """The folder of the bundled model and images."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def bundled_model() -> str:
    """Path of the bundled default model."""
    return os.path.join(data_dir(), "srresnet_x2.onnx")


def sample_images() -> list:
    """Paths of the bundled sample images."""
    return sorted(os.path.join(data_dir(), f) for f in os.listdir(data_dir())
                  if f.startswith("sample") and f.endswith(".png"))


def planned(out_dir: str) -> list:
    """Every file the demo writes."""
    from .report import planned_files

    files = sample_images()
    return ([os.path.join(out_dir, "overview.png"), os.path.join(out_dir, "summary.json")]
            + planned_files(os.path.join(out_dir, "transform"), files)
            + planned_files(os.path.join(out_dir, "dropout"), files))


def run_demo(out_dir: str, samples: int = 8, seed: int = 0, provider: str = "auto",
             progress=None) -> dict:
    """Run the demo into ``out_dir`` (which must be writable); return its summary."""
    from .api import Estimator
    from .io import prepare_out_dir
    from .perturb import Dropout, Transform

    model, images = bundled_model(), sample_images()
    runs = {
        "transform": Estimator(model, Transform("d4"), provider=provider, seed=seed),
        "dropout": Estimator(model, Dropout(DEMO_DROPOUT["rate"], at=DEMO_DROPOUT["at"]),
                             samples=samples, seed=seed, provider=provider),
    }
    summaries = {}
    for name, est in runs.items():
        folder = prepare_out_dir(os.path.join(out_dir, name))
        summaries[name] = run_inputs(est, images, folder, ImageOptions(), progress=progress)
    overview = os.path.join(out_dir, "overview.png")
    save_png(overview, _overview(out_dir, images))
    summary = {"model": model, "images": images, "overview": overview,
               "runs": {name: {k: s[k] for k in ("method", "location", "level", "samples",
                                                  "seed", "strategy", "provider")} |
                        {"mean_variance": [i["mean_variance"] for i in s["inputs"]]}
                        for name, s in summaries.items()}}
    save_json(os.path.join(out_dir, "summary.json"), summary)
    return summary


def _overview(out_dir: str, images: list) -> np.ndarray:
    """One row per image: input (x2, nearest) | output | d4 variance | dropout variance."""
    from PIL import Image

    rows = []
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        with np.load(os.path.join(out_dir, "transform", stem + ".npz")) as z:
            out, var_t = z["output"][0], z["variance"]
        with np.load(os.path.join(out_dir, "dropout", stem + ".npz")) as z:
            var_d = z["variance"]
        h, w = out.shape[1:]
        with Image.open(path) as im:
            lr = np.asarray(im.convert("RGB").resize((w, h), Image.NEAREST))
        sr = np.clip(out.transpose(1, 2, 0) * 255, 0, 255).astype(np.uint8)
        gap = np.full((h, 4, 3), 255, np.uint8)
        rows.append(np.concatenate([lr, gap, sr, gap, colorize(spatial_map(var_t)), gap,
                                    colorize(spatial_map(var_d))], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255)
            for r in rows]
    return np.concatenate(rows, axis=0)
