"""Every kind of location of real models nobody here wrote rewrites, verifies and runs.

PP-OCRv4's text detector (331 candidate locations) and the PP-OCR angle classifier
(235), from the rapidocr-onnxruntime wheel: evenly spaced candidates from the input to
the output, for infer-noise and infer-dropout. At level 0 the uncertainty graph gives
the model's own output (up to the float rounding of a bigger batch in the same kernels),
the sample mean equals it bit for bit and the variance is exactly 0; at a level > 0 the
variance is finite and the unperturbed output is unchanged. The default run checks 8
locations per model; ``pytest -m slow`` checks 25.
"""

import numpy as np
import onnxruntime as ort
import pytest

from tfue_onnx import Dropout, Estimator, Noise
from tfue_onnx.model import inspect_model


def _spread(n, k):
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _check_locations(path, x, k):
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    cands = inspect_model(path).candidates
    assert len(cands) > 200
    checked = []
    for index in _spread(len(cands), k):
        for spec in (Noise(0.2, at=index), Dropout(0.2, at=index)):
            est = Estimator(path, spec, samples=2, seed=0, provider="cpu")
            off = est(x, level=0.0)
            where = (index, cands[index].op, spec.method, off.metadata["strategy"])
            np.testing.assert_allclose(off.output, ref, rtol=1e-5, atol=1e-6, err_msg=str(where))
            assert np.array_equal(off.mean, off.output), where
            assert float(np.max(off.variance)) == 0.0, where
            on = est(x)
            assert np.array_equal(on.output, off.output), where
            assert np.all(np.isfinite(on.variance)) and np.all(on.variance >= 0), where
            checked.append(where)
    depths = [cands[i].depth for i in _spread(len(cands), k)]
    assert depths[0] == 0.0 and depths[-1] == 1.0
    return checked


def _det_input():
    return np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)


def _cls_input():
    return np.random.default_rng(1).standard_normal((1, 3, 48, 192)).astype(np.float32)


def test_detector_locations(ppocr_det):
    checked = _check_locations(ppocr_det, _det_input(), 8)
    assert {w[3] for w in checked} >= {"looped-suffix"}
    assert len(checked) == 16


def test_classifier_locations(ppocr_cls):
    checked = _check_locations(ppocr_cls, _cls_input(), 8)
    assert len(checked) == 16


@pytest.mark.slow
@pytest.mark.parametrize("which", ["det", "cls"])
def test_25_locations(which, ppocr_det, ppocr_cls):
    path, x = (ppocr_det, _det_input()) if which == "det" else (ppocr_cls, _cls_input())
    assert len(_check_locations(path, x, 25)) == 50
