"""autotune.py: the measured chunk size and thread count (issue 11), the plan kept in the
cache, the thread-count check."""

import os

import numpy as np
import pytest

from tfue_onnx import Estimator, Noise, TfueError


def test_trial_samples_count_and_never_exceed_the_memory_cap(toy, x8):
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=40, seed=4)
    cap_bytes = est.sample_bytes({"x": x8})
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=40, seed=4, max_memory=3 * cap_bytes)
    res = est(x8)
    tune = res.metadata["autotune"]
    assert tune["chunk_cap"] == 3 and sum(res.metadata["chunks"]) == 40
    assert max(res.metadata["chunks"]) <= 3 and max(t["chunk"] for t in tune["trials"]) <= 2
    # The same numbers as any fixed chunking: the trial's samples are real samples.
    fixed = Estimator(toy(), Noise(0.2, at="r1"), samples=40, seed=4, chunk=7)(x8)
    np.testing.assert_array_equal(res.variance, fixed.variance)
    np.testing.assert_array_equal(res.mean, fixed.mean)
    # The second input of the same shape runs at the chosen chunk, without a trial.
    again = est(x8[:, :, ::-1].copy())
    assert set(again.metadata["chunks"][:-1]) == {tune["chunk"]}
    assert any(n.startswith("autotune: chunk ") for n in est.notes)


def test_given_chunk_and_threads_skip_the_trial(toy, x8):
    res = Estimator(toy(), Noise(0.2, at="r1"), samples=9, seed=4, chunk=4, threads=1)(x8)
    assert res.metadata["chunks"] == [4, 4, 1]
    assert res.metadata["autotune"]["how"] == "given" and res.metadata["autotune"]["threads"] == 1
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(TfueError, match="threads must be an integer from 1 to"):
            Estimator(toy(), Noise(0.2, at="r1"), threads=bad)
    with pytest.raises(TfueError, match=f"threads 512 is more than the {os.cpu_count()} CPUs"):
        Estimator(toy(), Noise(0.2, at="r1"), threads=512)
    with pytest.raises(TfueError, match="cache must be True, False or a folder"):
        Estimator(toy(), Noise(0.2, at="r1"), cache=3)


def test_the_smallest_chunk_within_five_percent_of_the_fastest_wins():
    from tfue_onnx.autotune import choose_trial as _choose

    trials = [{"chunk": 1, "threads": None, "s_per_sample": 0.0100},
              {"chunk": 1, "threads": 1, "s_per_sample": 0.0130},
              {"chunk": 2, "threads": None, "s_per_sample": 0.0098},
              {"chunk": 4, "threads": None, "s_per_sample": 0.0097}]
    assert _choose(trials) == trials[0]  # 3 % slower than chunk 4, a quarter of its memory
    trials[3]["s_per_sample"] = 0.0080  # clearly faster: worth its memory
    assert _choose(trials) == trials[3]
    trials[1]["s_per_sample"] = 0.0060  # one thread wins outright
    assert _choose(trials) == trials[1]


def test_the_trial_follows_the_measured_times(toy, x8, sample_cost, own_cache):
    """A device where batches pay (per-sample cost falling with the chunk): the trial
    doubles the chunk across inputs while it gains 5 %, keeps the smallest chunk within
    5 % of the fastest, and stops scanning one thread once it is far behind."""
    per_sample = {1: 10, 2: 6, 4: 4, 8: 3, 16: 2.5, 32: 2.4}
    sample_cost(lambda threads, n: per_sample[n] * (2 if threads == 1 else 1) * 1e-3)
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=32, seed=0)
    first = est(x8).metadata
    assert first["chunks"] == [1, 1, 2, 2, 4, 4, 8, 8, 2]  # 2 left over: at the best so far
    assert first["autotune"]["how"] == "measuring" and first["autotune"]["next"] == [None, 16]
    assert est(x8).metadata["chunks"] == [16, 16]
    third = est(x8).metadata  # 2 x 32 > N: one run of 32 decides (it gains only 4 %)
    assert third["chunks"] == [32] and third["autotune"]["next"] == [1, 1]
    fourth = est(x8).metadata  # one thread: twice as slow, far behind: not scanned on
    assert fourth["chunks"] == [1, 1, 16, 14] and fourth["autotune"]["how"] == "measured"
    tune = fourth["autotune"]
    assert [(t["chunk"], t["threads"], t["s_per_sample"]) for t in tune["trials"]] == [
        (1, None, 0.01), (2, None, 0.006), (4, None, 0.004), (8, None, 0.003),
        (16, None, 0.0025), (32, None, 0.0024), (1, 1, 0.02)]
    assert (tune["chunk"], tune["threads"]) == (16, None)  # 32 is within 5 %: 16 wins
    assert est(x8).metadata["chunks"] == [16, 16]
    # A new process reads the finished choice from the cache.
    cached = Estimator(toy(), Noise(0.2, at="r1"), samples=32, seed=0)(x8).metadata
    assert cached["autotune"]["how"] == "cached" and cached["chunks"] == [16, 16]


def test_a_busy_cpu_picks_one_thread(toy, x8, sample_cost):
    sample_cost(lambda threads, n: (4e-3 if threads == 1 else 9e-3) * (1 + 0.3 * (n > 1)))
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=10, seed=0)
    first = est(x8).metadata
    assert first["chunks"] == [1, 1, 2, 2, 1, 1, 1, 1]  # the last two at the best so far
    second = est(x8).metadata
    tune = second["autotune"]
    assert tune["how"] == "measured" and (tune["chunk"], tune["threads"]) == (1, 1)
    assert [(t["chunk"], t["threads"]) for t in tune["trials"]] == [(1, None), (2, None),
                                                                    (1, 1), (2, 1)]
    assert second["chunks"] == [2, 2] + [1] * 6


def test_large_weights_get_no_second_session(toy, x8, monkeypatch):
    import tfue_onnx.selection as runner_module

    monkeypatch.setattr(runner_module, "SPARE_SESSION_BYTES", 0)  # every model is "large"
    est = Estimator(toy(), Noise(0.2, at="r1"), samples=8, seed=0)
    tune = est(x8).metadata["autotune"]
    assert {t["threads"] for t in tune["trials"]} == {None}
    [(ug, split, _)] = [b for b in est._built.values() if b is not None]
    assert list(split.suffix) == [None]  # one suffix session only


# --- the plan in a cache entry, the thread check, the choice: focused -------------------
def test_choose_trial_matches_a_plain_reading_of_the_rule():
    from tfue_onnx.autotune import GAIN, choose_trial

    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(1, 7))
        trials = [{"chunk": int(2 ** rng.integers(0, 6)), "threads": [None, 1][int(rng.integers(2))],
                   "s_per_sample": float(rng.uniform(1e-3, 2e-3))} for _ in range(n)]
        times = np.array([t["s_per_sample"] for t in trials])
        near = np.flatnonzero(times <= (1 + GAIN) * times.min())
        chunks = np.array([trials[k]["chunk"] for k in near])
        best = near[chunks == chunks.min()]
        want = best[np.argmin(times[best])]
        assert choose_trial(trials) is trials[want]


_TRIALS = [{"chunk": 1, "threads": None, "s_per_sample": 0.01},
           {"chunk": 2, "threads": 1, "s_per_sample": 0.008}]


def test_a_finished_plan_is_read_back_as_cached_within_n():
    from tfue_onnx.autotune import cached_plan

    plan = {"chunk": 8, "threads": 1, "how": "measured", "trials": _TRIALS}
    assert cached_plan(plan, None, 20) == {"chunk": 8, "threads": 1, "how": "cached",
                                           "trials": _TRIALS}
    assert cached_plan({**plan, "how": "cached"}, None, 5)["chunk"] == 5  # never above N
    assert cached_plan({**plan, "threads": 4}, 4, 20)["threads"] == 4  # the given count
    going = {"chunk": 1, "threads": None, "how": "measuring", "trials": _TRIALS,
             "next": [None, 4], "left": [1]}
    back = cached_plan(going, None, 20)
    assert back == going and back["left"] is not going["left"]
    assert cached_plan({**going, "next": None, "left": []}, None, 20)["next"] is None


@pytest.mark.parametrize("edit", [
    "not-a-dict", {"trials": "x"}, {"trials": [3]}, {"trials": [{"chunk": "1"}]},
    {"trials": [{**_TRIALS[0], "chunk": 0}]}, {"trials": [{**_TRIALS[0], "threads": 3}]},
    {"trials": [{**_TRIALS[0], "s_per_sample": "fast"}]}, {"trials": [{"threads": None}]},
    {"chunk": "8"}, {"chunk": True}, {"chunk": 0}, {"chunk": 2.0}, {"threads": 2},
    {"threads": "1"}, {"how": "guessed"}, {"how": None}, {"how": "given"},
    {"how": "measuring", "next": [None, 2], "left": []} | {"trials": []},
    {"how": "measuring", "next": [None, 2], "left": "1"},
    {"how": "measuring", "next": [None, 2], "left": [7]},
    {"how": "measuring", "next": [None, 2]},
    {"how": "measuring", "next": [None, 2, 3], "left": []},
    {"how": "measuring", "next": [None], "left": []},
    {"how": "measuring", "next": [5, 2], "left": []},
    {"how": "measuring", "next": [None, 0], "left": []},
    {"how": "measuring", "next": [None, True], "left": []},
    {"how": "measuring", "next": [None, "2"], "left": []},
    {"how": "measuring", "next": (None, 2), "left": []},
    {"how": "measuring", "next": 2, "left": []}])
def test_every_malformed_plan_is_refused(edit):
    from tfue_onnx.autotune import cached_plan

    plan = {"chunk": 8, "threads": None, "how": "measured", "trials": list(_TRIALS)}
    plan = edit if edit == "not-a-dict" else {**plan, **edit}
    assert cached_plan(plan, None, 20) is None


@pytest.mark.parametrize("trial", [{"chunk": True}, {"s_per_sample": True},
                                   {"s_per_sample": -1.0}])
def test_a_trial_with_a_bool_or_negative_field_is_refused(trial):
    from tfue_onnx.autotune import cached_plan

    plan = {"chunk": 8, "threads": None, "how": "measured",
            "trials": [{**_TRIALS[0], **trial}]}
    assert cached_plan(plan, None, 20) is None


def test_check_threads(monkeypatch):
    from tfue_onnx import autotune

    monkeypatch.setattr(autotune.os, "cpu_count", lambda: 4)
    assert autotune.check_threads(None) is None
    for good in (1, 4, np.int64(3)):
        got = autotune.check_threads(good)
        assert got == int(good) and type(got) is int
    for bad in (0, -2, 2.0, "2", True, False, np.float32(2)):
        with pytest.raises(TfueError, match=r"threads must be an integer from 1 to 4 \(the "
                                            r"CPUs here\), got ") as err:
            autotune.check_threads(bad)
        assert "--threads 1" in err.value.hint
    with pytest.raises(TfueError, match="threads 5 is more than the 4 CPUs of this machine") \
            as err:
        autotune.check_threads(5)
    assert err.value.hint.startswith("give --threads 4 or less")
    monkeypatch.setattr(autotune.os, "cpu_count", lambda: None)  # unknown: one CPU
    with pytest.raises(TfueError, match="threads 2 is more than the 1 CPUs"):
        autotune.check_threads(2)
