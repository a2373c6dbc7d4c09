"""Autotuning a looped-suffix run: which chunk size and intra-op thread count sample
fastest, measured on the run's own samples (issue 11; BENCHMARKS.md).

Chunks of 1, 2, 4, ... samples, two runs each, per thread count, while each size gains
``GAIN`` and stays within ``FAR_BEHIND`` of the best; the smallest chunk within ``GAIN``
of the fastest is kept. A mixin of :class:`runner.Estimator` (its ``samples``,
``threads``, ``chunk_cap``); the plan is kept per input signature and in the disk cache.
"""

from __future__ import annotations

import os
import time

import numpy as np

from .errors import ArgumentError

GAIN = 0.05  # a larger chunk (more memory) must be this much faster per sample to win
SPARE_SESSION_BYTES = 256 * 1024**2  # larger packed weights: one thread count, not measured
FAR_BEHIND = 1.5  # a thread count this much slower than the best so far is not scanned on


def cached_plan(tuning, threads, samples: int) -> dict | None:
    """The autotune plan stored in a cache entry, checked field by field (None: not
    usable, measured again): a finished one (``how`` "cached"; its chunk never above
    this run's N) or an unfinished one that goes on measuring."""
    if not isinstance(tuning, dict):
        return None
    ok_threads = {None, 1} | ({threads} if threads else set())
    trials = tuning.get("trials", [])
    if not isinstance(trials, list) or not all(_plausible_trial(t, ok_threads) for t in trials):
        return None
    chunk, how = tuning.get("chunk"), tuning.get("how")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1 or \
            tuning.get("threads") not in ok_threads:
        return None
    if how == "measuring":
        nxt, left = tuning.get("next"), tuning.get("left")
        if not trials or not isinstance(left, list) or any(t not in ok_threads for t in left) \
                or not (nxt is None or (isinstance(nxt, list) and len(nxt) == 2 and
                                        nxt[0] in ok_threads and isinstance(nxt[1], int)
                                        and not isinstance(nxt[1], bool) and nxt[1] >= 1)):
            return None
        return {"chunk": chunk, "threads": tuning["threads"], "how": "measuring",
                "trials": trials, "next": nxt, "left": list(left)}
    if how not in ("measured", "cached"):
        return None
    return {"chunk": min(chunk, samples), "threads": tuning["threads"], "how": "cached",
            "trials": trials}


def _plausible_trial(t, ok_threads) -> bool:
    """Whether a stored trial is ``{"chunk": int >= 1, "threads", "s_per_sample": >= 0}``
    (bools are not numbers here)."""
    if not isinstance(t, dict):
        return False
    chunk, seconds = t.get("chunk"), t.get("s_per_sample")
    return (isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1 and
            t.get("threads") in ok_threads and isinstance(seconds, (int, float)) and
            not isinstance(seconds, bool) and seconds >= 0)


def choose_trial(trials: list) -> dict:
    """The trial to keep: the smallest chunk within ``GAIN`` of the fastest per sample
    (memory grows with the chunk; times within a few percent are noise on a busy CPU)."""
    fastest = min(t["s_per_sample"] for t in trials)
    near = [t for t in trials if t["s_per_sample"] <= (1 + GAIN) * fastest]
    return min(near, key=lambda t: (t["chunk"], t["s_per_sample"]))


def shapes_text(feeds) -> str:
    """The inputs' names and shapes, for notes."""
    return ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())


def threads_text(threads) -> str:
    """An intra-op thread count in words (None: onnxruntime's default)."""
    return "default threads" if threads is None else f"{threads} thread" + (
        "s" if threads > 1 else "")


def check_threads(threads) -> int | None:
    """Validate an intra-op thread count (None: onnxruntime's default, or measured).

    Raises:
        ArgumentError (a ValueError): not an integer from 1 to the CPU count.
    """
    if threads is None:
        return None
    cpus = os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ArgumentError(f"threads must be an integer from 1 to {cpus} (the CPUs here), got "
                        f"{threads!r}", "give --threads 1, or leave it out to let tfue measure")
    if threads > cpus:
        raise ArgumentError(f"threads {threads} is more than the {cpus} CPUs of this machine "
                        "(more threads than CPUs only wait for each other)",
                        f"give --threads {cpus} or less, or leave it out to let tfue measure")
    return int(threads)


class Autotune:
    """The measuring half of the looped-suffix chunk loop (mixed into Estimator)."""

    def _trial(self, split, run, level, feeds, plan: dict):
        """Time real samples, in sample order, each counting toward N (yields (n, outputs)),
        and record them in ``plan`` (``trials``: ``{"chunk", "threads", "s_per_sample"}``
        per size tried; ``next``: ``[threads, chunk]`` still to try, None when done;
        ``left``: thread counts not scanned yet).

        For each intra-op thread count (the default, and 1 on a multi-core CPU when
        none was given and the weights' packed copy is at most ``SPARE_SESSION_BYTES``;
        a session made for the trial runs the unperturbed output once first, untimed):
        chunks of 1, 2, 4, ... samples (up to what fits in ``max_memory``), two runs
        each (the faster one counts: the first run at a size grows onnxruntime's arena,
        and the machine may be busy; a size two runs of which could never fit in N gets
        one), as long as each size is at least ``GAIN`` (5 %)
        faster per sample than the best before it at that thread count and within
        ``FAR_BEHIND`` (1.5x) of the best of all. When this input's samples run out
        first, the next input of the shape goes on.
        """
        cap = min(self.samples, self.chunk_cap(feeds))
        trials = plan["trials"]
        first = 0

        def timed(t, c, times):
            nonlocal first
            per = []
            for _ in range(times):
                out, seconds = self._timed_run(run, t, c, level, first)
                per.append(seconds / c)
                first += c
                yield c, out
            # The faster run: the slower one grew the arena or met another process.
            trials.append({"chunk": c, "threads": t, "s_per_sample": round(min(per), 6)})

        if plan.get("left") is None:  # a new plan: which thread counts to scan
            options = self._thread_options(split)
            plan["next"], plan["left"] = [options[0], 1], options[1:]
        while plan["next"] is not None:
            t, c = plan["next"]
            left = self.samples - first
            if 2 * c <= left:
                times = 2
            elif 2 * c > self.samples and c <= left:
                times = 1  # two runs of it never fit in N: one run decides
            else:
                return  # not enough samples left here: the next input goes on
            if t not in split.suffix:  # a fresh session: its first run is not timed
                run(t, 1, 0.0, 0)
            best = min((r["s_per_sample"] for r in trials if r["threads"] == t), default=None)
            yield from timed(t, c, times)
            now = trials[-1]["s_per_sample"]
            gained = best is None or now <= (1 - GAIN) * best
            # Another thread count is scanned on only while it can compete.
            behind = now > FAR_BEHIND * min(r["s_per_sample"] for r in trials)
            if gained and not behind and 2 * c <= cap:
                plan["next"] = [t, 2 * c]
            elif plan["left"]:  # no clear gain: larger chunks cost memory for nothing
                plan["next"] = [plan["left"].pop(0), 1]
            else:
                plan["next"] = None

    def _thread_options(self, split) -> list:
        """The intra-op thread counts to scan: the given one, or the default and, on a
        multi-core CPU whose packed weights allow a second session, 1."""
        options = [self.threads]
        if self.threads is None and (os.cpu_count() or 1) > 1 and split.spare and \
                self._provider_of(split) == "cpu":
            options.append(1)
        return options

    @staticmethod
    def _timed_run(run, threads, n, level, first):
        """``(outputs, wall seconds)`` of one run of samples first .. first+n-1."""
        start = time.perf_counter()
        out = run(threads, n, level, first)
        return out, time.perf_counter() - start

    def _provider_of(self, split) -> str:
        session = next(iter(split.suffix.values()))
        return "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
