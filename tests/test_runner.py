import numpy as np
import onnxruntime as ort
import pytest

import toys
from tfue_onnx import Dropout, Estimator, MCDropout, Noise, TfueError


def test_result_shapes_and_metadata(toy, x8):
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=6, seed=7)
    res = est(x8)
    assert res.output.shape == res.mean.shape == res.variance.shape == (1, 2, 8, 8)
    assert res.variance.dtype == np.float32 and float(res.variance.min()) >= 0
    m = res.metadata
    assert (m["method"], m["at"], m["sigma"], m["samples"], m["seed"]) == ("noise", "r1", 0.2, 6, 7)
    assert m["strategy"] == "looped-suffix" and m["provider"] in ("cpu", "cuda")
    # The first input measured chunks of 1 and 2 (two runs each) on its own samples at
    # the default thread count; one thread is the next input's to measure.
    tune = m["autotune"]
    assert tune["how"] == "measuring" and tune["next"] == [1, 1] and m["chunks"] == [1, 1, 2, 2]
    assert [(t["chunk"], t["threads"]) for t in tune["trials"]] == [(1, None), (2, None)]
    assert tune["chunk"] == 1 and all(t["s_per_sample"] > 0 for t in tune["trials"])
    again = est(x8).metadata
    assert again["autotune"]["how"] == "measured" and again["autotune"]["next"] is None
    assert [(t["chunk"], t["threads"]) for t in again["autotune"]["trials"]] == [
        (1, None), (2, None), (1, 1), (2, 1)]
    assert again["chunks"] == [1, 1, 2, 2]
    plain = ort.InferenceSession(toy("plain"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(res.output, plain.run(None, {"x": x8})[0], rtol=1e-5, atol=1e-6)


def test_seed_makes_runs_reproducible(toy, x8):
    path = toy()
    a = Estimator(path, Dropout(0.2, at="c1"), samples=8, seed=11)(x8)
    b = Estimator(path, Dropout(0.2, at="c1"), samples=8, seed=11)(x8)
    c = Estimator(path, Dropout(0.2, at="c1"), samples=8, seed=12)(x8)
    np.testing.assert_array_equal(a.variance, b.variance)
    assert not np.array_equal(a.variance, c.variance)
    assert Estimator(path, Noise(0.1, at="r1")).seed != Estimator(path, Noise(0.1, at="r1")).seed


@pytest.mark.parametrize("strategy", ["batched", "loop"])
def test_chunks_merge_exactly(toy, x8, strategy):
    est = Estimator(toy(), Noise(0.3, at="r1"), samples=10, chunk=3, seed=0,
                    strategy=strategy, keep_samples=True)
    assert est.chunk_sizes() == [3, 3, 3, 1]
    res = est(x8)
    assert res.samples.shape == (10, 1, 2, 8, 8)
    np.testing.assert_allclose(res.mean, res.samples.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.variance, res.samples.var(axis=0), rtol=1e-4, atol=1e-8)
    assert res.metadata["chunks"] == [3, 3, 3, 1]


def test_variance_grows_with_level_override(toy, x8):
    est = Estimator(toy(), Noise(0.1, at="r1"), samples=16, seed=0)
    v = [float(est(x8, level=s).variance.mean()) for s in (0.0, 0.05, 0.2, 0.8)]
    assert v[0] == 0.0 and v[1] < v[2] < v[3]  # exactly 0: statistics of the change
    with pytest.raises(TfueError, match=r"level \(sigma\) must be >= 0"):
        est(x8, level=-1)


def test_verification_rejects_batched_when_batch_is_not_outermost(tmp_path, x8):
    path = toys.transposed_batch_net(tmp_path / "tb.onnx")
    est = Estimator(path, Noise(0.5, at="r"), samples=4, seed=0)
    res = est(x8)
    assert res.metadata["strategy"] == "loop"
    assert any("batched: failed verification" in n and "unperturbed output" in n
               for n in est.notes)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x8})[0]
    np.testing.assert_allclose(res.output, ref, rtol=1e-5, atol=1e-6)
    assert float(res.variance.mean()) > 0
    with pytest.raises(TfueError, match="no uncertainty graph passed verification"):
        Estimator(path, Noise(0.5, at="r"), strategy="batched")(x8)


def test_fixed_batch_model_uses_loop(toy, x8):
    est = Estimator(toy(batch=1), Dropout(0.2, at="r1"), samples=4, seed=0)
    assert est(x8).metadata["strategy"] == "loop"
    assert "fixed batch size 1" in est.notes[0]


def test_batch_of_several_inputs(toy):
    x = np.random.default_rng(1).random((3, 3, 8, 8), dtype=np.float32)
    res = Estimator(toy(), Noise(0.2, at="r1"), samples=4, seed=0)(x)
    assert res.variance.shape == (3, 2, 8, 8)
    single = Estimator(toy("one"), Noise(0.2, at="r1"), samples=4, seed=0)(x[1:2])
    np.testing.assert_allclose(res.output[1:2], single.output, rtol=1e-5, atol=1e-6)


def test_provider_is_reported_honestly(toy, x8):
    res = Estimator(toy(), Noise(0.1, at="r1"), samples=2, provider="auto")(x8)
    cuda_loads = res.metadata["provider"] == "cuda"
    try:
        res = Estimator(toy(), Noise(0.1, at="r1"), samples=2, provider="cuda")(x8)
        assert cuda_loads and res.metadata["provider"] == "cuda"
    except TfueError as exc:
        assert not cuda_loads
        assert "provider='cuda' was asked for" in str(exc) and "Hint:" in str(exc)
    res = Estimator(toy(), Noise(0.1, at="r1"), samples=2, provider="cpu")(x8)
    assert res.metadata["provider"] == "cpu"


@pytest.mark.parametrize("bad,message", [
    (np.zeros((1, 3, 8, 8), np.int64), "has dtype int64, the model expects float32"),
    (np.zeros((3, 8, 8), np.float32), "expects rank 4"),
    (np.full((1, 3, 8, 8), np.nan, np.float32), "contains 192 NaN or infinite values"),
])
def test_bad_arrays(toy, bad, message):
    est = Estimator(toy(), Noise(0.1, at="r1"), samples=2)
    with pytest.raises(TfueError, match=message):
        est(bad)


def test_wrong_fixed_dim_and_names(toy, x8):
    est = Estimator(toy(channels=1), Noise(0.1, at="r1"), samples=2)
    with pytest.raises(TfueError, match=r"axis 1 must be 1"):
        est(x8)
    with pytest.raises(TfueError, match="missing input 'x'"):
        est({"image": x8})


def test_mc_dropout_on_estimator(toy, x8):
    est = Estimator(toy(opset=10, dropout_ratio=0.3), MCDropout(), samples=8, seed=0)
    res = est(x8)
    assert res.metadata["method"] == "mc-dropout" and float(res.variance.mean()) > 0
    with pytest.raises(TfueError, match="no Dropout node"):
        Estimator(toy("plain"), MCDropout())


def test_chunk_size_from_the_memory_budget(toy, x8):
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=20, seed=0)
    per_sample = est.sample_bytes({"x": x8})
    # Live at once at most: relu1's input c1 and output r1 (4 + 4 channels of 8x8
    # float32); x (3) is gone once conv1 ran, c2 and y (2 + 2) come later.
    assert per_sample == (4 + 4) * 64 * 4
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=20, seed=0, strategy="shared-prefix",
                    max_memory=6 * per_sample + 1)
    assert est.chunk_sizes({"x": x8}) == [6, 6, 6, 2]
    res = est(x8)
    assert res.metadata["chunks"] == [6, 6, 6, 2]
    assert Estimator(toy(), Noise(0.2, at="r1"), samples=20, chunk=5).chunk_sizes(
        {"x": x8}) == [5, 5, 5, 5]
    with pytest.raises(TfueError, match="max_memory must be a size like 512M or 2G"):
        Estimator(toy(), Noise(0.2, at="r1"), max_memory=0)


def test_io_binding_gives_the_same_statistics(toy, x8):
    plain = Estimator(toy(), Dropout(0.3, at="c1"), samples=12, chunk=4, seed=5)(x8)
    bound = Estimator(toy(), Dropout(0.3, at="c1"), samples=12, chunk=4, seed=5,
                      io_binding=True)(x8)
    np.testing.assert_array_equal(plain.variance, bound.variance)
    np.testing.assert_array_equal(plain.output, bound.output)
