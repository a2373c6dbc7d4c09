"""An item's result does not depend on its position in a batch, nor on the batch size.

Fed draws are made for one batch item (the location without its batch axis) and
repeated over the batch axis, which the runner finds by running the model cut at the
location at two batch sizes. Where no axis follows the batch (batch merged into
another axis, a fixed batch size) the draws cover the whole tensor, and the notes and
metadata say so.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import toys
from test_reproducibility import _draws, two_dropout_net
from tfue_onnx import Dropout, Estimator, MCDropout, Noise
from tfue_onnx import graph as graphs
from tfue_onnx.graph import builder

SPECS = {
    "noise": Noise(0.3, at="r1"),
    "noise-relative": Noise(0.5, at="c1", mode="relative"),
    "dropout": Dropout(0.3, at="r1"),
    "mc-dropout": MCDropout(),
}


@pytest.fixture
def items():
    rng = np.random.default_rng(11)
    return [rng.random((1, 3, 8, 8), dtype=np.float32) * (k + 1) for k in range(2)]


def _close(batch_result, row, alone):
    for key in ("output", "mean", "variance"):
        np.testing.assert_allclose(getattr(batch_result, key)[row:row + 1],
                                   getattr(alone, key), rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("strategy", graphs.STRATEGIES)
@pytest.mark.parametrize("name", list(SPECS))
def test_items_get_their_own_result_at_any_position(tmp_path, toy, items, name, strategy):
    path = two_dropout_net(tmp_path / "dd.onnx") if name == "mc-dropout" else toy()
    a, b = items
    est = Estimator(path, SPECS[name], samples=5, seed=11, strategy=strategy)
    alone_a, alone_b = est(a), est(b)
    assert float(alone_a.variance.mean()) > 1e-5
    assert not np.allclose(alone_a.variance, alone_b.variance)
    for batch, rows in (([a, b], (alone_a, alone_b)), ([b, a], (alone_b, alone_a)),
                        ([b, a, b], (alone_b, alone_a, alone_b))):
        res = est(np.concatenate(batch))
        assert res.metadata["strategy"] == strategy
        for row, alone in enumerate(rows):
            _close(res, row, alone)
    assert all(v.startswith("per batch item (axis 0") for v in res.metadata["draws"].values())
    assert not any("whole tensor" in n for n in est.notes)


def test_batch_matches_a_numpy_reference_per_item(tmp_path, toy, items):
    """Noise at r1, batch [b, a]: sample k of item i = suffix(r1_i + sigma * eps_k), eps_k
    drawn for ONE item, [4, 8, 8], from SeedSequence([seed, 1, k])."""
    path, sigma, n = toy(), 0.4, 4
    x = np.concatenate(items[::-1])
    prefix, suffix = str(tmp_path / "pre.onnx"), str(tmp_path / "suf.onnx")
    onnx.utils.extract_model(path, prefix, ["x"], ["r1"])
    onnx.utils.extract_model(path, suffix, ["r1"], ["y"])
    r1 = ort.InferenceSession(prefix, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rest = ort.InferenceSession(suffix, providers=["CPUExecutionProvider"])
    eps = [_draws(6, 1, k, r1.shape[1:]) for k in range(n)]
    ref = np.stack([rest.run(None, {"r1": r1 + np.float32(sigma) * e[None]})[0] for e in eps])
    res = Estimator(path, Noise(sigma, at="r1"), samples=n, seed=6, keep_samples=True)(x)
    np.testing.assert_allclose(res.samples, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.variance, ref.var(axis=0), rtol=1e-4, atol=1e-9)


def test_relative_noise_scales_by_each_items_own_spread(tmp_path, toy, items):
    """Relative sigma: sample k of item i = suffix(c1_i + sigma * std(c1_i) * eps_k)."""
    path, sigma, n = toy(), 0.5, 3
    x = np.concatenate(items)
    prefix, suffix = str(tmp_path / "pre.onnx"), str(tmp_path / "suf.onnx")
    onnx.utils.extract_model(path, prefix, ["x"], ["c1"])
    onnx.utils.extract_model(path, suffix, ["c1"], ["y"])
    c1 = ort.InferenceSession(prefix, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rest = ort.InferenceSession(suffix, providers=["CPUExecutionProvider"])
    std = c1.reshape(2, -1).std(axis=1).reshape(2, 1, 1, 1)
    assert std[1, 0, 0, 0] > 1.5 * std[0, 0, 0, 0]  # the items' spreads differ
    ref = np.stack([rest.run(None, {"c1": c1 + np.float32(sigma) * std *
                                    _draws(2, 1, k, c1.shape[1:])[None]})[0]
                    for k in range(n)])
    for strategy in graphs.STRATEGIES:
        res = Estimator(path, Noise(sigma, at="c1", mode="relative"), samples=n, seed=2,
                        strategy=strategy, keep_samples=True)(x)
        np.testing.assert_allclose(res.samples, ref, rtol=1e-4, atol=1e-5, err_msg=strategy)


def test_batch_of_one_draws_what_it_drew_before():
    """For B = 1 the per-item draws are the whole tensor's draws (results unchanged)."""
    draw = builder.Draw("b", "t", "uniform", np.dtype(np.float32), 1)
    whole = builder.draw_bank(draw, 5, (1, 4, 3), 0, 3)
    np.testing.assert_array_equal(builder.draw_bank(draw, 5, (1, 4, 3), 0, 3, batch_axis=0),
                                  whole)
    three = builder.draw_bank(draw, 5, (4, 3, 3), 0, 3, batch_axis=1).reshape(3, 4, 3, 3)
    for item in range(3):
        np.testing.assert_array_equal(three[:, :, item].reshape(3, -1), whole)


def test_batch_on_axis_1_of_the_location_is_found(tmp_path, items):
    """Transpose [1, 0, 2, 3] before the location: the batch is its axis 1. The tiled
    strategies fail verification there (their slots are axis 0), the loop runs it, and
    draws repeated along axis 1 keep each item's result (absolute noise, dropout)."""
    path = toys.transposed_batch_net(tmp_path / "tb.onnx")
    a, b = items
    for spec in (Noise(0.4, at="r"), Dropout(0.3, at="r")):
        est = Estimator(path, spec, samples=5, seed=3)
        alone_a, alone_b = est(a), est(b)
        res = est(np.concatenate([b, a, b]))
        assert res.metadata["strategy"] == "loop"
        assert res.metadata["draws"] == {"r": "per batch item (axis 1 of [4, 3, 8, 8])"}
        _close(res, 0, alone_b)
        _close(res, 1, alone_a)
        _close(res, 2, alone_b)
        assert float(alone_a.variance.mean()) > 1e-5
    # Relative sigma: each item's spread, over every axis but 1 (shape inference names
    # axis 1 with the input's batch).
    est = Estimator(path, Noise(0.4, at="r", mode="relative"), samples=5, seed=3,
                    keep_samples=True)
    alone_a, alone_b, res = est(a), est(b), est(np.concatenate([b, a, b]))
    assert res.metadata["draws"]["r"] == "per batch item (axis 1 of [4, 3, 8, 8])"
    assert not any("relative noise" in n for n in est.notes)
    _close(res, 0, alone_b)
    _close(res, 1, alone_a)
    # Against numpy: sample k of item 1 = r_1 + sigma * std(r_1) * eps_k, r_1 = relu of
    # the conv output of item 1 (axis 1 of 'r'), eps_k drawn for one item [4, 8, 8].
    r1 = np.maximum(_conv(path, a), 0)
    ref = np.stack([r1 + np.float32(0.4) * r1.std() * _draws(3, 1, k, (4, 8, 8))[None]
                    for k in range(5)])
    np.testing.assert_allclose(res.samples[:, 1:2], ref, rtol=1e-5, atol=1e-5)


def _conv(path, x):
    """The model's conv output for ``x`` (its tensor c1), by onnxruntime."""
    sub = str(path) + ".c1.onnx"
    onnx.utils.extract_model(str(path), sub, ["x"], ["c1"])
    return ort.InferenceSession(sub, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_batch_merged_into_another_axis_is_said_to_be_position_dependent(tmp_path, items):
    path = toys.merged_batch_net(tmp_path / "merged.onnx")
    a, b = items
    est = Estimator(path, Dropout(0.3, at="r"), samples=5, seed=3)
    alone_a = est(a)
    res = est(np.concatenate([b, a]))
    assert res.metadata["draws"]["r"].startswith("per whole tensor [8, 64]")
    assert any("draws at 'r' are made for the whole tensor (8, 64)" in n and
               "position in the batch" in n for n in est.notes)
    _close(res, 0, est(b))  # position 0 gets the first rows of the draws
    assert not np.allclose(res.variance[1:], alone_a.variance)  # position 1 does not


def test_fixed_batch_model_draws_for_the_whole_tensor_and_says_so(toy):
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    est = Estimator(toy("fixed2", batch=2), Noise(0.3, at="r1"), samples=4, seed=1)
    res = est(x)
    assert res.metadata["strategy"] == "loop"
    assert res.metadata["draws"]["r1"].startswith("per whole tensor")
    assert any("input 'x' has a fixed batch size" in n for n in est.notes)


@pytest.mark.parametrize("opset", [9, 17])
def test_other_opsets_keep_items_apart(tmp_path, toy, items, opset):
    a, b = items
    est = Estimator(toy(f"op{opset}", opset=opset), Dropout(0.3, at="r1"), samples=4, seed=2)
    res = est(np.concatenate([b, a]))
    _close(res, 1, est(a))
    _close(res, 0, est(b))


def test_cli_batch_npy_gives_each_item_its_own_result(cli, tmp_path, toy, items):
    model = toy()
    a, b = items
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "ba.npy", np.concatenate([b, a]))
    common = ["--method", "dropout", "--at", "r1", "--rate", 0.3, "--seed", 11, "-n", 6]
    for src, out in (("a.npy", "one"), ("ba.npy", "pair")):
        r = cli("run", model, tmp_path / src, *common, "--out", tmp_path / out)
        assert r.exit_code == 0, r.output
    with np.load(tmp_path / "one" / "a.npz") as one, np.load(tmp_path / "pair" / "ba.npz") as two:
        assert two["variance"].shape[0] == 2 and float(one["variance"].mean()) > 1e-5
        np.testing.assert_allclose(two["variance"][1:], one["variance"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(two["mean"][1:], one["mean"], rtol=1e-5, atol=1e-6)
        meta = json.loads(str(two["metadata"]))
        assert meta["draws"] == {"r1": "per batch item (axis 0 of [2, 4, 8, 8])"}


def test_a_batch_of_one_needs_no_second_probe_run(toy, items, monkeypatch):
    est = Estimator(toy(), Dropout(0.3, at="r1"), samples=3, seed=0)
    runs = []
    real = est._probe_shapes
    monkeypatch.setattr(est, "_probe_shapes", lambda ug, feeds: runs.append(
        feeds["x"].shape) or real(ug, feeds))
    res = est(items[0])
    # looped-suffix: the location crosses the cut, so its shape is the prefix's output's
    # (no probe run); a batch of one needs no second run either.
    assert res.metadata["strategy"] == "looped-suffix" and runs == []
    assert res.metadata["draws"] == {"r1": "per batch item (a batch of 1, [1, 4, 8, 8])"}
    est(np.concatenate(items))
    assert runs == [(1, 3, 8, 8)]  # B = 2: item 0 alone, to find the batch axis
    shared = Estimator(toy(), Dropout(0.3, at="r1"), samples=3, seed=0, strategy="shared-prefix")
    runs.clear()
    monkeypatch.setattr(shared, "_probe_shapes", lambda ug, feeds: runs.append(
        feeds["x"].shape) or Estimator._probe_shapes(shared, ug, feeds))
    shared(items[0])
    assert runs == [(1, 3, 8, 8)]
    shared(np.concatenate(items))
    assert runs == [(1, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]  # B = 2, then item 0 alone


def test_relative_noise_at_a_rank_1_location_uses_the_whole_tensors_spread(tmp_path):
    """s = sum(relu(x), axis 1) is [B]: one value per item has no spread of its own, so
    relative sigma there scales by the spread of the whole tensor (as before)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("ReduceSum", ["r"], ["s"], keepdims=0, axes=[1]),
             helper.make_node("Mul", ["s", "two"], ["y"])]
    graph = helper.make_graph(nodes, "rank1",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b"])],
                              [onnx.numpy_helper.from_array(np.array(2, np.float32), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    path = str(tmp_path / "rank1.onnx")
    onnx.save(model, path)
    x = np.array([[1, 2, 3, 4], [0.5, 0, 1, 2]], np.float32)
    s = np.maximum(x, 0).sum(axis=1)
    for strategy in graphs.STRATEGIES:
        res = Estimator(path, Noise(0.5, at="s", mode="relative"), samples=3, seed=4,
                        strategy=strategy, keep_samples=True)(x)
        ref = np.stack([2 * (s + np.float32(0.5) * s.std() * _draws(4, 1, k, ()))
                        for k in range(3)])
        np.testing.assert_allclose(res.samples, ref, rtol=1e-5, err_msg=strategy)
    # The spread mixes the items: said in the notes and metadata.
    est = Estimator(path, Noise(0.5, at="s", mode="relative"), samples=3, seed=4)
    assert est(x).metadata["draws"]["s"] == ("per batch item (axis 0 of [2]); relative sigma "
                                             "from the whole tensor's spread, not per item")
    assert any("relative noise at 's' scales by the whole tensor's spread, but the batch is "
               "its axis 0" in n for n in est.notes)
