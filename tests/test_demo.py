"""tfue demo: the README's first command, on the bundled model and images."""

import json
import os

import numpy as np
from PIL import Image

from tfue_onnx.demo import bundled_model, sample_images


def test_bundled_data_is_installed():
    assert os.path.getsize(bundled_model()) < 5 * 1024**2
    assert [os.path.basename(p) for p in sample_images()] == ["sample_1.png", "sample_2.png"]


def test_demo_writes_maps_and_summary(cli, tmp_path):
    out = tmp_path / "demo"
    r = cli("demo", "--out", out)
    assert r.exit_code == 0, r.output
    assert "infer-transformation (d4, N=8)" in r.stdout and "infer-dropout (p=0.05" in r.stdout
    assert f"overview (input | output | d4 variance | dropout variance): {out}" in r.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["runs"]["transform"]["samples"] == 8 and s["runs"]["dropout"]["samples"] == 8
    for run in ("transform", "dropout"):
        assert all(v > 0 for v in s["runs"][run]["mean_variance"])
        for k in (1, 2):
            with np.load(out / run / f"sample_{k}.npz") as z:
                assert z["output"].shape == (1, 3, 256, 256)  # x2 of the 128x128 sample
                assert z["variance"].shape == (1, 3, 256, 256)
            assert (out / run / f"sample_{k}.variance.png").exists()
    with Image.open(out / "overview.png") as im:  # 4 titled columns, one row per image
        assert im.size == (1280, 600)
    # Another demo into the same folder needs --force.
    r = cli("demo", "--out", out)
    assert r.exit_code == 2 and "already exists" in r.stderr and "--force" in r.stderr
    assert cli("demo", "--out", out, "--force").exit_code == 0
