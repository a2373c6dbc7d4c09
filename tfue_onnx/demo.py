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

from .files import save_json
from .io import ImageOptions, spatial_map
from .plots import UNITS
from .report import read_result, run_inputs

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
    """Run the demo into ``out_dir`` (which must be writable): infer-transformation (d4)
    and infer-dropout on the bundled model and images, each run's files in
    ``out_dir``/transform and ``out_dir``/dropout (``report.run_inputs``),
    ``overview.png`` and ``summary.json``.

    Args:
        out_dir: the folder.
        samples: N for infer-dropout (d4 has its own 8).
        seed: the dropout masks' seed.
        provider: "auto", "cpu" or "cuda".
        progress: wraps each run's file list for display.

    Returns:
        The summary: {"model", "images", "overview" (paths), "runs": {"transform",
        "dropout": method, location, level, samples, seed, strategy, provider, and
        "mean_variance" (one float per image, squared output units)}}.

    Raises:
        TfueError: the folder cannot be written, or a run fails.
    """
    from .runner import Estimator
    from .files import prepare_out_dir
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
    _overview(overview, out_dir, images)
    summary = {"model": model, "images": images, "overview": overview,
               "runs": {name: {k: s[k] for k in ("method", "location", "level", "samples",
                                                  "seed", "strategy", "provider")} |
                        {"mean_variance": [i["mean_variance"] for i in s["inputs"]]}
                        for name, s in summaries.items()}}
    save_json(os.path.join(out_dir, "summary.json"), summary)
    return summary


def _overview(path: str, out_dir: str, images: list) -> None:
    """``overview.png``: one row per image: the input (enlarged x2, nearest) | the
    output | the d4 variance | the dropout variance, titled, the variances with colour
    bars (output units², each map on its own scale)."""
    from PIL import Image

    from .plots import panels

    rows = []
    for p in images:
        stem = os.path.splitext(os.path.basename(p))[0]
        d4 = read_result(os.path.join(out_dir, "transform", stem + ".npz"))
        drop = read_result(os.path.join(out_dir, "dropout", stem + ".npz"))
        out, var_t, var_d = d4.output[0], d4.variance, drop.variance
        h, w = out.shape[1:]
        with Image.open(p) as im:
            lr = np.asarray(im.convert("RGB").resize((w, h), Image.NEAREST)) / 255.0
        rows.append([("image", lr, ""), ("image", out.transpose(1, 2, 0), ""),
                     ("map", spatial_map(var_t), UNITS["variance"]),
                     ("map", spatial_map(var_d), UNITS["variance"])])
    panels(path, rows, ["input (x2, nearest)", "output (x2 SR)", "infer-transformation (d4)",
                        f"infer-dropout (p = {DEMO_DROPOUT['rate']:g})"],
           "tfue demo: uncertainty maps of the bundled x2 SR model (each map on its own "
           "colour scale: compare where, not how much)")
