"""Loss weights from an uncertainty map (weights.py; issue 13, the paper's §5)."""

import json

import numpy as np
import pytest

from tfue_onnx import read_result
from tfue_onnx.weights import LossWeights, loss_weights


def test_linear_and_normalized_weights_of_a_hand_computed_map():
    # sigma = 0, 1, 2, 5 -> mean 2: s / mean = 0, 0.5, 1, 2.5
    var = np.array([[0.0, 1.0], [4.0, 25.0]])
    np.testing.assert_allclose(loss_weights(var), [[1.0, 1.5], [2.0, 3.5]])
    np.testing.assert_allclose(loss_weights(var, strength=2.0, max_weight=4.0),
                               [[1.0, 2.0], [3.0, 4.0]])  # 1 + 2 * 2.5 = 6 clipped to 4
    np.testing.assert_allclose(loss_weights(var, "normalized"), [[0.0, 0.5], [1.0, 2.5]])
    np.testing.assert_allclose(loss_weights(var, "normalized", max_weight=2.0),
                               [[0.0, 0.5], [1.0, 2.0]])
    assert loss_weights(var).dtype == np.float32 and loss_weights(var).shape == (2, 2)
    np.testing.assert_allclose(loss_weights(var, strength=0.0), np.ones((2, 2)))


def test_the_mean_is_taken_per_batch_item_and_flat_maps_weigh_evenly():
    item = np.array([[[0.0, 1.0], [4.0, 25.0]]])  # [1, 2, 2]: one channel
    batch = np.stack([item, 100.0 * item, np.zeros_like(item)])  # [3, 1, 2, 2]
    w = loss_weights(batch)
    np.testing.assert_allclose(w[0], w[1])  # the scale of the map does not matter
    np.testing.assert_allclose(w[0, 0], [[1.0, 1.5], [2.0, 3.5]])
    np.testing.assert_allclose(w[2], np.ones((1, 2, 2)))  # nothing more uncertain
    np.testing.assert_allclose(loss_weights(batch, "normalized")[2], np.zeros((1, 2, 2)))
    assert np.isnan(loss_weights(np.array([[1.0, np.nan], [1.0, 1.0]])))[0, 1]
    np.testing.assert_allclose(loss_weights(np.array([[-1e-12, 4.0]])), [[1.0, 3.0]])  # s 0, 2


@pytest.mark.parametrize("kwargs, words", [
    ({"formula": "cubic"}, "unknown loss-weight formula 'cubic'"),
    ({"strength": -1.0}, "weight strength must be a finite number >= 0"),
    ({"max_weight": 0.5}, "max weight must be >= 1 for the linear formula"),
    ({"max_weight": float("inf")}, "max weight must be a finite number"),
    ({"strength": True}, "weight strength must be a finite number")])
def test_bad_settings_are_value_errors(kwargs, words):
    with pytest.raises(ValueError, match=words):
        LossWeights(**kwargs)


def test_run_writes_the_weights_of_its_own_map(cli, toy, tmp_path, x8):
    np.save(tmp_path / "x.npy", x8)
    out = tmp_path / "o"
    r = cli("run", toy(), tmp_path / "x.npy", "--method", "noise", "--sigma", "0.2", "-n", 4,
            "--seed", 1, "--weights", "--weight-strength", 2, "--max-weight", 5,
            "--no-pictures", "--json", "-o", out)
    assert r.exit_code == 0, r.output
    files = json.loads(r.stdout)["inputs"][0]["files"]
    assert files == [str(out / "x.npz"), str(out / "x.weights.npy")]
    w = np.load(out / "x.weights.npy")
    var = read_result(out / "x.npz").variance
    np.testing.assert_allclose(w, loss_weights(var, "linear", 2.0, 5.0))
    assert w.shape == var.shape and w.min() >= 1 and w.max() <= 5 and w.max() > 1
    r = cli("run", toy(), tmp_path / "x.npy", "--method", "noise", "--weights", "normalized",
            "--no-pictures", "-o", tmp_path / "n")
    assert r.exit_code == 0 and (tmp_path / "n" / "x.weights.npy").exists()


def test_run_refuses_weights_it_cannot_make(cli, toy, tmp_path, x8):
    np.save(tmp_path / "x.npy", x8)
    for args, words in ((["--method", "entropy", "--classify", "--weights"],
                         "--method entropy has none"),
                        (["--method", "noise", "--weights", "--max-weight", "0.5"],
                         "max weight must be >= 1"),
                        (["--method", "noise", "--weights", "cubic"], "Invalid value")):
        r = cli("run", toy(), tmp_path / "x.npy", *args, "-o", tmp_path / "o")
        assert r.exit_code == 2 and words in r.output, r.output
        assert not (tmp_path / "o").exists()


def test_numpy_scalars_are_taken_and_normalized_has_no_strength():
    var = np.array([[0.0, 1.0], [4.0, 25.0]])
    np.testing.assert_allclose(loss_weights(var, strength=np.float32(2), max_weight=np.int64(4)),
                               [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match="the normalized formula .* has no strength"):
        loss_weights(var, "normalized", strength=2.0)
