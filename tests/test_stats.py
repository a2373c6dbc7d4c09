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
