"""tools/dropout_tolerance.py on the small reference models and the bundled samples."""

import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import dropout_tolerance  # noqa: E402

MODELS = os.path.join(ROOT, "models")


def test_dropout_node_of_the_mcdropout_model():
    at, rate = dropout_tolerance.dropout_node(os.path.join(MODELS, "srresnet_x2_mcdropout.onnx"))
    assert (at, rate) == ("/body/body.1/Add_output_0", 0.1)


def test_mc_dropout_vs_infer_dropout(tmp_path):
    # The bundled 128 x 128 samples (held-out chelsea and coffee) as high-resolution crops.
    crops = tmp_path / "crops"
    crops.mkdir()
    for k in (1, 2):
        shutil.copy(os.path.join(ROOT, "tfue_onnx", "data", f"sample_{k}.png"), crops)
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "dropout_tolerance.py"),
                        "--crops", str(crops), "--samples", "8", "--json", str(out),
                        os.path.join(MODELS, "srresnet_x2.onnx"),
                        os.path.join(MODELS, "srresnet_x2_mcdropout.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    mc, infer = json.loads(out.read_text())
    assert (mc["model"], mc["spec"]["method"]) == ("srresnet_x2_mcdropout.onnx", "mc-dropout")
    assert (infer["model"], infer["spec"]["method"]) == ("srresnet_x2.onnx", "dropout")
    assert infer["spec"]["at"] == "/body/body.1/Add_output_0" and infer["spec"]["rate"] == 0.1
    assert mc["images"] == infer["images"] == 2
    # Both models are better than bicubic-level blur on these crops; dropout costs little
    # PSNR in the sample mean, and MC-dropout's variance tracks the error.
    for row in (mc, infer):
        assert 27.0 < row["psnr_output"] < 40.0
        assert abs(row["psnr_mean"] - row["psnr_output"]) < 1.0
        assert -1.0 <= row["pooled_corr"] <= 1.0 and row["mean_variance"] > 0
    assert mc["per_image_corr"] > 0.2
