import math

import pytest

from tfue_onnx import Dropout, MCDropout, Noise, TfueError
from tfue_onnx.perturb import make_spec


@pytest.mark.parametrize("sigma", [-0.1, -1e-9, math.nan, math.inf, "abc"])
def test_bad_sigma(sigma):
    with pytest.raises(TfueError, match="sigma must be"):
        Noise(sigma)


@pytest.mark.parametrize("rate", [-0.01, 1.0, 1.5, math.nan])
def test_bad_rate(rate):
    with pytest.raises(TfueError, match=r"rate must be|finite"):
        Dropout(rate)
    with pytest.raises(TfueError, match=r"rate must be|finite"):
        MCDropout(rate)


def test_good_specs():
    assert Noise(0).level == 0.0 and Dropout(0).level == 0.0 and Dropout(0.999).rate == 0.999
    assert Noise(0.1).with_level(0.5).sigma == 0.5
    assert make_spec("dropout", at="3", rate=0.2) == Dropout(0.2, at="3")
    assert make_spec("mc-dropout", nodes=("a",)).nodes == ("a",)
    with pytest.raises(TfueError, match="sigma does not apply to Dropout"):
        make_spec("dropout", sigma=0.1)
    with pytest.raises(TfueError, match="unknown sigma mode"):
        Noise(0.1, mode="percent")
