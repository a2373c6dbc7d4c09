"""Run an uncertainty graph: strategies, verification, chunks, streaming statistics.

A :class:`Runner` owns one model and one perturbation spec. It builds the
uncertainty graph for the fastest strategy that passes verification, creates
its session once, and for each input runs the samples in chunks, merging the
per-chunk mean and variance (computed in the graph) with Chan's update.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets

import numpy as np

from . import graph as graphs
from .errors import TfueError
from .model import ModelInfo, load_model
from .session import create_session
from .stats import RunningStats
from .verify import Verdict, check_identity, check_unperturbed_slot

DEFAULT_CHUNK = 8


@dataclasses.dataclass
class OutputStats:
    """Prediction and uncertainty of one model output."""

    output: np.ndarray  # the unperturbed output
    mean: np.ndarray | None = None  # sample mean (None for non-float outputs)
    variance: np.ndarray | None = None  # per-element population variance
    samples: np.ndarray | None = None  # [N, ...] when asked for


@dataclasses.dataclass
class Result:
    """What one run returns: per-output statistics and how they were made."""

    outputs: dict  # output name -> OutputStats
    metadata: dict

    @property
    def primary(self) -> str:
        """Name of the first output that has statistics."""
        for name, s in self.outputs.items():
            if s.variance is not None:
                return name
        return next(iter(self.outputs))

    @property
    def output(self) -> np.ndarray:
        return self.outputs[self.primary].output

    @property
    def mean(self) -> np.ndarray:
        return self.outputs[self.primary].mean

    @property
    def variance(self) -> np.ndarray:
        return self.outputs[self.primary].variance

    @property
    def samples(self):
        return self.outputs[self.primary].samples


def check_chunk(chunk) -> int | None:
    """Validate a chunk size (None = automatic)."""
    if chunk is None:
        return None
    try:
        c = int(chunk)
    except (TypeError, ValueError):
        raise TfueError(f"chunk must be an integer, got {chunk!r}", "give --chunk 8") from None
    if c < 1 or c != chunk:
        raise TfueError(f"chunk must be an integer >= 1, got {chunk}", "give --chunk 8")
    return c


def _onnx_dtype(info_dtype: str):
    try:
        return np.dtype(info_dtype)
    except TypeError:
        return None


class Runner:
    """Uncertainty for one model and one perturbation spec.

    ``model`` is a path or a ModelProto; ``spec`` a Noise, Dropout or MCDropout.
    ``strategy`` is ``auto`` (fastest that verifies) or a name from
    graph.STRATEGIES. ``seed`` None picks one at random; it is recorded.
    """

    def __init__(self, model, spec, samples: int = 8, chunk: int | None = None,
                 seed: int | None = None, provider: str = "auto", strategy: str = "auto",
                 keep_samples: bool = False):
        if isinstance(model, (str, os.PathLike)):
            self.path = os.fspath(model)
            self.info = ModelInfo(load_model(self.path), self.path)
        else:
            self.path = None
            self.info = ModelInfo(model)
        self.spec = spec
        self.samples = graphs._check_samples(samples)
        self.chunk = check_chunk(chunk)
        self.seed = int(seed) if seed is not None else secrets.randbelow(2**31)
        self.provider_request = provider
        if strategy != "auto" and strategy not in graphs.STRATEGIES:
            raise TfueError(f"unknown strategy {strategy!r}",
                            f"use auto or one of {', '.join(graphs.STRATEGIES)}")
        self.strategy_request = strategy
        self.keep_samples = keep_samples
        self.notes = []  # what happened on the way (strategies tried, why they failed)
        self._reference = None  # (session, provider) of the original model
        self._candidates = None  # [(UncertaintyGraph, session, provider)] still in the running
        self._verified = {}  # input signature -> index into _candidates
        self.location = self._resolve_location()

    # --- setup -------------------------------------------------------------------
    def _resolve_location(self) -> str:
        if hasattr(self.spec, "at"):
            return self.info.resolve_location(self.spec.at).name
        if not self.info.dropouts:
            raise TfueError("the model has no Dropout node, so MC-dropout has nothing to "
                            "switch on",
                            "use --method dropout to apply dropout at any tensor (infer-dropout)")
        return ",".join(self.spec.nodes) or "all Dropout nodes"

    def _strategies(self):
        if self.strategy_request != "auto":
            return [self.strategy_request]
        return list(graphs.STRATEGIES)

    def _build_all(self):
        if self._candidates is not None:
            return
        self._candidates = []
        for name in self._strategies():
            try:
                ug = graphs.build(self.info, self.spec, name, self.samples, self.seed,
                                  self.keep_samples)
            except graphs.StrategyUnavailable as exc:
                self.notes.append(f"strategy {name}: not available ({exc})")
                continue
            sess, provider = create_session(ug.model, self.provider_request)
            self._candidates.append((ug, sess, provider))
        if not self._candidates:
            raise TfueError("no sampling strategy applies to this model: " + "; ".join(self.notes),
                            "run with --verbose for details")

    def reference_session(self):
        """The original model's session (used for verification)."""
        if self._reference is None:
            self._reference = create_session(self.info.model if self.path is None else self.path,
                                             self.provider_request)
        return self._reference

    # --- inputs ------------------------------------------------------------------
    def check_feeds(self, feeds) -> dict:
        """Validate inputs against the model's signature; returns arrays to feed."""
        if not isinstance(feeds, dict):
            if len(self.info.inputs) != 1:
                raise TfueError(f"the model has {len(self.info.inputs)} inputs; pass a dict "
                                "of arrays by input name",
                                "inputs: " + ", ".join(i.name for i in self.info.inputs))
            feeds = {self.info.inputs[0].name: feeds}
        out = {}
        for inp in self.info.inputs:
            if inp.name not in feeds:
                raise TfueError(f"missing input '{inp.name}'",
                                "the model's inputs are: "
                                + ", ".join(i.name for i in self.info.inputs))
            arr = np.asarray(feeds[inp.name])
            want = _onnx_dtype(inp.dtype)
            if want is not None and arr.dtype != want:
                if arr.dtype.kind == "f" and want.kind == "f":
                    arr = arr.astype(want)
                else:
                    raise TfueError(f"input '{inp.name}' has dtype {arr.dtype}, the model "
                                    f"expects {want}",
                                    f"convert it, e.g. array.astype('{want}')")
            if inp.shape is not None:
                if arr.ndim != len(inp.shape):
                    raise TfueError(f"input '{inp.name}' has shape {tuple(arr.shape)}, the model "
                                    f"expects rank {len(inp.shape)} {_fmt_shape(inp.shape)}",
                                    "add or remove axes (a batch axis first)")
                for axis, (got, dim) in enumerate(zip(arr.shape, inp.shape)):
                    if isinstance(dim, int) and dim > 0 and got != dim:
                        raise TfueError(f"input '{inp.name}' has shape {tuple(arr.shape)}, the "
                                        f"model expects {_fmt_shape(inp.shape)} (axis {axis} "
                                        f"must be {dim})",
                                        "resize the input to the model's size")
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
                raise TfueError(f"input '{inp.name}' contains {bad} NaN or infinite values",
                                "clean the input (e.g. np.nan_to_num) before running")
            out[inp.name] = np.ascontiguousarray(arr)
        extra = set(feeds) - set(out)
        if extra:
            raise TfueError(f"unknown input(s) {', '.join(sorted(map(repr, extra)))}",
                            "the model's inputs are: " + ", ".join(out))
        return out

    # --- running -----------------------------------------------------------------
    @staticmethod
    def _run(sess, feeds):
        try:
            values = sess.run(None, feeds)
        except Exception as exc:
            shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in feeds.items()
                               if not k.startswith("tfue"))
            raise TfueError(f"the model failed on input {shapes}: {ort_message(exc)}",
                            "check the input size and layout the model expects "
                            "(for images: --resize HxW)") from exc
        return dict(zip([o.name for o in sess.get_outputs()], values))

    def reference(self, feeds) -> dict:
        """The original model's outputs on ``feeds``."""
        sess, _ = self.reference_session()
        return self._run(sess, feeds)

    def _verify(self, ug, sess, feeds, reference) -> Verdict:
        out = self._run(sess, {**feeds, **ug.feeds(samples=2, level=0.0)})
        verdict = check_identity(out, reference, ug.stats_outputs)
        if verdict.ok and ug.strategy == "batched":
            on = self._run(sess, {**feeds, **ug.feeds(samples=2)})
            verdict = check_unperturbed_slot(on, reference)
        return verdict

    def _select(self, feeds):
        """The verified (graph, session, provider) for this input signature."""
        key = tuple((k, v.shape, v.dtype.str) for k, v in sorted(feeds.items()))
        if key in self._verified:
            return self._candidates[self._verified[key]]
        self._build_all()
        reference = self.reference(feeds)
        failures = []
        for idx, (ug, sess, provider) in enumerate(self._candidates):
            try:
                verdict = self._verify(ug, sess, feeds, reference)
            except TfueError as exc:
                verdict = Verdict(False, exc.message)
            if verdict.ok:
                self.notes.append(f"strategy {ug.strategy}: verified (max |error| at level 0 = "
                                  f"{verdict.max_error:.2g}) on {provider}")
                self._verified[key] = idx
                return ug, sess, provider
            failures.append(f"{ug.strategy}: {verdict.reason}")
            self.notes.append(f"strategy {ug.strategy}: failed verification ({verdict.reason})")
        raise TfueError("no uncertainty graph passed verification against the original model ("
                        + "; ".join(failures) + ")",
                        "try another location (--at) or --strategy loop; --verbose shows details")

    def chunk_sizes(self) -> list:
        """How the samples are split into runs."""
        chunk = self.chunk or min(self.samples, DEFAULT_CHUNK)
        sizes = [chunk] * (self.samples // chunk)
        if self.samples % chunk:
            sizes.append(self.samples % chunk)
        return sizes

    def run(self, feeds, level: float | None = None) -> Result:
        """Sample the perturbed model on ``feeds`` (an array or dict of arrays).

        ``level`` overrides the spec's sigma or rate for this run (every
        perturbed location at once), without rebuilding the graph.
        """
        feeds = self.check_feeds(feeds)
        ug, sess, provider = self._select(feeds)
        stats = {name: RunningStats() for name in ug.stats_outputs}
        kept = {name: [] for name in ug.stats_outputs}
        first = None
        if level is not None:
            level = float(self.spec.with_level(level).level)  # validates the level
        for n in self.chunk_sizes():
            out = self._run(sess, {**feeds, **ug.feeds(samples=n, level=level)})
            if first is None:
                first = out
            for name in ug.stats_outputs:
                names = graphs.output_names(name)
                stats[name].add_chunk(n, out[names["mean"]], out[names["variance"]])
                if self.keep_samples:
                    kept[name].append(out[names["samples"]])
        results = {}
        for o in self.info.outputs:
            y = first[o.name]
            if o.name in stats:
                s = stats[o.name]
                results[o.name] = OutputStats(
                    output=y, mean=s.mean.astype(y.dtype), variance=s.variance.astype(y.dtype),
                    samples=np.concatenate(kept[o.name]) if self.keep_samples else None)
            else:
                results[o.name] = OutputStats(output=y)
        meta = {**self.describe(), "strategy": ug.strategy, "provider": provider}
        if level is not None:
            meta["level"] = level
        return Result(results, meta)

    def describe(self) -> dict:
        """The run's settings, as recorded in every result."""
        spec = self.spec.describe()
        spec["at"] = self.location
        return {"model": self.path, **spec, "samples": self.samples,
                "chunks": self.chunk_sizes(), "seed": self.seed}

    def uncertainty_graph(self, feeds=None):
        """The verified uncertainty graph (verified on ``feeds`` or a synthetic input)."""
        feeds = self.check_feeds(feeds if feeds is not None else self.example_input())
        ug, _, _ = self._select(feeds)
        return ug

    def example_input(self, size: int = 64) -> dict:
        """A synthetic input: free dims become 1 (batch) or ``size``; values N(0, 1)."""
        rng = np.random.default_rng(0)
        feeds = {}
        for inp in self.info.inputs:
            if inp.shape is None:
                raise TfueError(f"input '{inp.name}' has no known shape to make an example from",
                                "pass an example input (--example FILE)")
            shape = [d if isinstance(d, int) and d > 0 else (1 if axis == 0 else size)
                     for axis, d in enumerate(inp.shape)]
            dtype = _onnx_dtype(inp.dtype) or np.float32
            if dtype.kind == "f":
                feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
            else:
                feeds[inp.name] = np.zeros(shape, dtype)
        return feeds


def ort_message(exc) -> str:
    """onnxruntime's error, without its source paths and C++ signatures."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"/onnxruntime_src/\S+:\d+ ", "", text)
    text = re.sub(r"(?:[\w:]+ )?onnxruntime::[\w:<>]+\([^)]*\)\s*", "", text)
    text = re.sub(r"(Status Message: ).*? was false\.\s*", r"\1", text)
    return text[:240]


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in shape) + "]"
