import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tfue_onnx.stats import RunningStats


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.integers(0, 2**16),
       st.floats(-1e4, 1e4))
def test_chunk_merge_equals_one_pass(chunks, seed, offset):
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal((sum(chunks), 3, 2)) + offset
    rs = RunningStats()
    start = 0
    for n in chunks:
        part = samples[start:start + n]
        rs.add_chunk(n, part.mean(axis=0), part.var(axis=0))
        start += n
    assert rs.count == len(samples)
    np.testing.assert_allclose(rs.mean, samples.mean(axis=0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(rs.variance, samples.var(axis=0), rtol=1e-9, atol=1e-9)


def test_stable_with_large_offset():
    # Naive E[x^2] - E[x]^2 loses everything here; the merge must not.
    x = 1e8 + np.arange(10.0)
    rs = RunningStats()
    for k in range(0, 10, 3):
        rs.add_samples(x[k:k + 3])
    assert rs.variance == np.var(np.arange(10.0))


def test_add_each_is_welford_exactly_however_split():
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((9, 3, 5)).astype(np.float32)
    count, mean, m2 = 0, None, None
    for x in xs:  # the textbook update, in float64
        x = x.astype(np.float64)
        if count == 0:
            count, mean, m2 = 1, x.copy(), np.zeros_like(x)
            continue
        count += 1
        d = x - mean
        mean += d / count
        m2 += d * (x - mean)
    for split in (1, 4, 9):
        r = RunningStats()
        for k in range(0, 9, split):
            r.add_each(xs[k:k + split])
        np.testing.assert_array_equal(r.mean, mean)
        np.testing.assert_array_equal(r.variance, m2 / count)
    np.testing.assert_allclose(r.variance, xs.astype(np.float64).var(axis=0), rtol=1e-12)
