"""The benchmark's own tools: the naive script it compares against, and the GPU check."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = os.path.join(ROOT, "models", "srresnet_x2.onnx")


def _cuda_really_works() -> bool:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    sess = ort.InferenceSession(SR, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    return sess.get_providers()[0] == "CUDAExecutionProvider"


def test_naive_noise_writes_mean_and_variance(tmp_path):
    img = (np.random.default_rng(0).random((12, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "tiny.png")
    out = tmp_path / "out"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "naive_noise.py"), SR,
                    "/body/body.2/Add_output_0", str(tmp_path / "tiny.png"), "-n", "2",
                    "-o", str(out)], check=True, capture_output=True, timeout=60)
    with np.load(out / "tiny.npz") as z:
        assert set(z.files) == {"mean", "variance"}
        assert z["mean"].shape == z["variance"].shape == (1, 3, 24, 32)
        assert z["variance"].max() > 0


def test_gpu_check_fails_without_cuda():
    if _cuda_really_works():
        pytest.skip("CUDA works here: gpu_check.sh would run the whole benchmark")
    r = subprocess.run(["bash", os.path.join(ROOT, "tools", "gpu_check.sh")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 1
    assert "CUDA" in r.stderr and "bench_run" not in r.stdout
