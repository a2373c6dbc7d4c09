"""Run an uncertainty graph: strategies, verification, chunks, streaming statistics.

An :class:`Estimator` owns one model and one perturbation spec. It builds the
uncertainty graph for the fastest strategy that passes verification, creates
its session once, and for each input runs the samples in chunks, merging the
per-chunk mean and variance (computed in the graph) with Chan's update.
"""

from __future__ import annotations

import dataclasses
import os
import secrets

import numpy as np
import onnx

from . import graph as graphs
from .errors import ArgumentError, TfueError
from .external import save_model, writes_data_file
from .files import check_new_file
from .model import ModelInfo, load_model
from .layout import check_layout
from .perturb import (SAMPLED, SPECS, Dropout, Ensemble, Entropy, MCDropout, Noise, Transform,
                      check_level, check_max_memory, check_samples, check_seed)
from .autotune import Autotune, check_threads, choose_trial, shapes_text, threads_text
from .cache import CachedSelection
from .classes import find_classes
from .feeds import check_feeds, check_inputs_fit, signature, synthetic_input
from .memory import (DEFAULT_CHUNK, DEFAULT_MAX_MEMORY, MAX_AUTO_CHUNK, check_chunk, peak_bytes,
                     split_sizes)
from .results import OutputStats, Result
from .selection import StrategySelection, spread_text
from .session import check_provider, device_feeds, run_bound, run_session
from .stats import RunningStats, entropy, winning_class_variance

EXPORT_SAMPLING_NOTE = ("in-graph: onnxruntime's seeded RandomNormalLike/RandomUniformLike; each "
                        "run of a session draws anew, a fresh session repeats the same sequence")


# Ops that pass a tensor's values through with the same axes.


class Estimator(StrategySelection, CachedSelection, Autotune):
    """Training-free uncertainty for one ONNX model and one perturbation.

    Args:
        model: path to an .onnx file (external data is read too) or a ModelProto.
        spec: ``Noise(sigma, at, mode)``, ``Dropout(rate, at)`` or ``MCDropout(rate, nodes)``.
        samples: N, the number of perturbed samples (>= 2).
        chunk: samples per session run (None: automatic); statistics merge across chunks.
            Automatic with looped-suffix: the first input of each shape times real samples
            at chunks 1, 4, 16, ... (up to ``max_memory``) and two thread counts, and the
            rest run at the fastest (``metadata["autotune"]``); with the other strategies,
            as many samples as fit in ``max_memory``.
        seed: makes runs reproducible (None: a random seed, recorded in results). A
            result depends on the input, spec, N and seed only: sample k's draws come
            from (seed, k), whatever the chunks, the strategy or the inputs run before.
        provider: ``auto`` (CUDA when it really loads, else CPU), ``cpu`` or ``cuda``.
        strategy: ``auto`` (the first that passes verification, in the order
            ``looped-suffix``, ``shared-prefix``, ``batched``, ``loop``) or one of them.
            looped-suffix (gray box) runs the model up to the location once per input and
            the rest once more for the unperturbed output, then per chunk of samples.
        keep_samples: also return the samples, shape [N, ...].
        softmax, classify, class_axis: class probabilities (below).
        max_memory: bytes the samples of one run may take; sets the chunk size when
            ``chunk`` is None (estimated from the model's tensor sizes at the input).
        io_binding: keep the inputs on the device across chunks (default: on CUDA).
        pad: reflect-pad the image input by this many pixels on each side of H and W
            before the model (valid-convolution models, whose output loses a border),
            or ``"auto"`` to find the border from the output size (``metadata["pad"]``,
            ``metadata["pad_found"]``). The Pad is part of the model every graph is
            built from and verified against, so an export pads its input too.
            None: no padding.
        layout: auto, NCHW or NHWC: where H and W are in a 4-D input (for ``pad``).
        cache: keep verified graphs and measured chunk choices on disk (tfue_onnx/cache.py)
            so that a later process starts without verifying or measuring again: True
            (``$TFUE_CACHE_DIR``, else the user cache folder), a folder, or False.
        threads: onnxruntime intra-op threads (None: measured with the chunk size).

    Calling the estimator on an array (or a dict of arrays by input name) returns
    a :class:`Result` with ``.output``, ``.mean``, ``.variance`` and ``.metadata``.

    ``model`` is a path or a ModelProto; ``spec`` a Noise, Dropout, MCDropout,
    Transform, Ensemble or Entropy. ``strategy`` is ``auto`` (fastest that
    verifies) or a name from graph.STRATEGIES. ``seed`` None picks one at random;
    it is recorded.

    Class probabilities: outputs made by a Softmax are found (``classify="auto"``);
    ``softmax=True`` appends a softmax over ``class_axis`` to outputs that are
    logits; ``classify=True`` treats every float output as probabilities over
    ``class_axis``, ``False`` none. They also get entropy, mutual information
    and the variance of the winning class.

    ``pad`` (pixels, or ``"auto"``) reflect-pads the image input (found from
    ``layout``) inside the model before anything else (graph/pad.py): the padded
    model is the "original" every graph is verified against, that is, the user's
    model run on the padded input.

    Models below opset 10 run on a copy converted with onnx.version_converter when
    the method needs newer ops (the tiled strategies, transforms); ensemble members
    of different opsets are brought to the newest. Every graph is still verified
    against the user's own model; ``notes`` and ``metadata["converted_opset"]``
    say what was converted.
    """

    def __init__(self, model, spec, samples: int | None = None, chunk: int | None = None,
                 seed: int | None = None, provider: str = "auto", strategy: str = "auto",
                 keep_samples: bool = False, softmax: bool = False, classify="auto",
                 class_axis: int = 1, max_memory: int = DEFAULT_MAX_MEMORY,
                 io_binding: bool | None = None, pad=None, layout: str = "auto",
                 cache=True, threads: int | None = None):
        _check_arguments(model, spec)
        _check_options(layout=layout, class_axis=class_axis, classify=classify,
                       io_binding=io_binding, provider=provider, softmax=softmax,
                       keep_samples=keep_samples)
        if isinstance(model, (str, os.PathLike)):
            self.path = os.fspath(model)
            self.info = ModelInfo(load_model(self.path), self.path)
        else:
            self.path = None
            self.info = ModelInfo(model)
        self.spec = spec
        self._pad_model(pad, layout)
        self.classes, self._class_notes = find_classes(self.info, softmax, classify, class_axis)
        if softmax:
            self.info = graphs.with_softmax(self.info, self.classes)
        self.softmax = softmax
        self.samples = _sample_count(spec, samples)
        self.chunk = check_chunk(chunk)
        self.max_memory = check_max_memory(max_memory)
        self.io_binding = io_binding
        self.threads = check_threads(threads)
        self._sample_bytes = {}  # input signature -> memory.peak_bytes of one sample
        self._tuned = {}  # input signature -> {"chunk", "threads", "trials"} (looped-suffix)
        self._start_cache(cache)
        seed = check_seed(seed)
        self.seed = seed if seed is not None else secrets.randbelow(2**31)
        self.provider_request = provider
        if strategy != "auto" and strategy not in graphs.STRATEGIES:
            raise ArgumentError(f"unknown strategy {strategy!r}",
                            f"use auto or one of {', '.join(graphs.STRATEGIES)}")
        self.strategy_request = strategy
        self.keep_samples = keep_samples
        # What happened on the way (classes left out, strategies tried, why they failed).
        self.notes = list(self._class_notes)
        self._start_selection()
        self.original = self.info  # the user's model: what every graph is verified against
        self.conversion = None  # (from, to) opsets when a converted copy is used
        self._unconverted = None  # why an old-opset model runs without its converted copy
        check_inputs_fit(self.info, spec)
        self._convert_old_opset()
        self.location = self._resolve_location()
        if isinstance(spec, Ensemble):
            self._align_member_opsets()

    # --- setup -------------------------------------------------------------------
    def _pad_model(self, pad, layout: str) -> None:
        """``--pad``: reflect-pad the image input inside the model itself (graph/pad.py),
        so every graph built from it, the reference it is verified against and the
        exported file all see the padded image."""
        self.pad, self.pad_found = None, None
        self._pad_input = None
        if pad is None:
            return
        from .border import resolve_pad
        from .graph.pad import pad_axes, with_pad

        if isinstance(self.spec, Ensemble):
            raise TfueError("--pad is not supported with --method ensemble",
                            "pad the inputs yourself, or drop --pad")
        self.pad, self.pad_found = resolve_pad(self.info, pad, layout)
        self._pad_input = pad_axes(self.info, layout)
        if self.pad:
            self.info = with_pad(self.info, self.pad, layout)

    def _resolve_location(self) -> str:
        if hasattr(self.spec, "at"):  # named as in the user's graph (not the softmaxed one)
            return (self.info.locations_from or self.info).resolve_location(self.spec.at).name
        if isinstance(self.spec, Transform):
            return "input"
        if isinstance(self.spec, Ensemble):
            from .graph.blackbox import resolve_members

            self.spec, self._members, notes = resolve_members(self.info, self.spec)
            self.notes += notes
            self.samples = len(self._members) + 1  # folders among the members expanded
            return ", ".join([self.path or "member 0"] +
                             [m.path or f"member {k}" for k, m in enumerate(self._members, 1)])
        if isinstance(self.spec, Entropy):
            if not self.classes and self._class_notes:
                raise TfueError("no output of the model holds per-position class "
                                "probabilities: " + "; ".join(self._class_notes).split(
                                    " (use --classify")[0],
                                "pass --classify --class-axis K if the classes are on axis K "
                                "(the entropy is then over that axis alone)")
            if not self.classes:
                raise TfueError("no output of the model holds class probabilities (none is "
                                "made by a Softmax)",
                                "pass --softmax if the model outputs logits, or --classify")
            return "output"
        if not self.info.dropouts:
            raise TfueError("the model has no Dropout node, so MC-dropout has nothing to "
                            "switch on",
                            "use --method dropout to apply dropout at any tensor (infer-dropout)")
        return ",".join(self.spec.nodes) or "all Dropout nodes"

    def _convert_old_opset(self) -> None:
        """Below opset 10 the tiled strategies and the flips have no dynamic Slice: use a
        converted copy of the model (verified against the original like every graph)."""
        from . import convert

        spec = self.spec
        if not convert.needs_conversion(self.info):
            return
        if isinstance(spec, Transform):
            what = "infer-transformation"
        elif isinstance(spec, SAMPLED) and self.strategy_request != "loop":
            what = "the shared-prefix and batched strategies"
        else:  # the loop, ensembles and entropy use no op newer than the model's own
            return
        conversion = convert.convert(self.info)
        if not conversion.ok:
            if isinstance(spec, Transform):
                raise convert.conversion_failed(conversion, what, self.path)
            self.notes.append(f"model: opset {conversion.source} could not be converted to "
                              f"{conversion.target} ({conversion.error}); {what} need opset >= "
                              f"{convert.MIN_OPSET}, so only the loop strategy applies")
            self._unconverted = (f"converting a copy to opset {conversion.target} failed: "
                                 f"{conversion.error}")
            return
        if isinstance(spec, (Noise, Dropout)):
            # Locations (a depth, an index) mean the user's graph, not the converted one.
            name = self.original.resolve_location(spec.at).name
            if name not in {c.name for c in conversion.info.candidates}:
                self.notes.append(f"model: opset {conversion.source} converted to "
                                  f"{conversion.target}, but the copy has no tensor '{name}'; "
                                  "only the loop strategy applies")
                self._unconverted = (f"the copy converted to opset {conversion.target} has no "
                                     f"tensor '{name}' (onnx.version_converter replaced it)")
                return
            self.spec = dataclasses.replace(spec, at=name)
        self.info = conversion.info
        self.conversion = (conversion.source, conversion.target)
        self.notes.append(f"model: opset {conversion.source} converted to {conversion.target} "
                          f"with onnx.version_converter for {what} (a copy; every graph is "
                          "verified against the original model)")

    def _align_member_opsets(self) -> None:
        """Ensemble members join one graph, which has one opset: members exported at
        different opsets are brought to the newest among them (converted copies; the
        graph is verified against the original model like every other)."""
        from .graph.blackbox import at_opset, ensemble_opset

        infos = [self.info] + list(self._members)
        target = ensemble_opset(self.info, self._members)

        aligned = [at_opset(info, target, info.path or f"member {k}")
                   for k, info in enumerate(infos)]
        for k, (info, done) in enumerate(zip(infos, aligned)):
            if done is not info:
                self.notes.append(f"model: ensemble member '{info.path or f'member {k}'}' "
                                  f"converted from opset {info.opset} to {target} (the newest "
                                  "member's) with onnx.version_converter (a copy)")
        if aligned[0] is not self.info:
            self.conversion = (self.info.opset, target)
            self.info = aligned[0]
        self._members = aligned[1:]


    # --- inputs ------------------------------------------------------------------

    # --- running -----------------------------------------------------------------


    # --- the disk cache ------------------------------------------------------------

    def sample_bytes(self, feeds) -> int:
        """Peak bytes of the model's live tensors for one sample of ``feeds`` (see
        :func:`_peak_bytes`: shape inference at the real input shape, each tensor alive
        from its producer to its last reader). A chunk of c samples is planned as c
        times this (onnxruntime's own arena comes on top: see BENCHMARKS.md)."""
        key = signature(feeds)
        if key not in self._sample_bytes:
            self._sample_bytes[key] = peak_bytes(self.info.model, feeds)
        return self._sample_bytes[key]

    def chunk_cap(self, feeds) -> int:
        """The largest chunk whose samples fit in ``max_memory`` at ``feeds``' shape
        (at least 1, at most N)."""
        per_sample = max(self.sample_bytes(feeds), 1)
        return int(max(1, min(self.samples, self.max_memory // per_sample)))

    def chunk_sizes(self, feeds=None) -> list:
        """How the samples are split into runs: ``chunk``, else as many as fit in
        ``max_memory`` for this input (at most 64), else 8 without an input."""
        if not isinstance(self.spec, SAMPLED):
            return [self.samples]  # one run: every transform / member at once
        chunk = self.chunk
        if chunk is None and feeds is not None:
            chunk = min(MAX_AUTO_CHUNK, self.chunk_cap(feeds))
        chunk = chunk or min(self.samples, DEFAULT_CHUNK)
        return split_sizes(self.samples, chunk)

    def run(self, feeds, level: float | None = None, progress=None) -> Result:
        """Sample the perturbed model N times on ``feeds`` and reduce the samples.

        The first call for an input shape builds and verifies the graph (or reads it
        from the disk cache) and, for looped-suffix, measures the chunk size; later
        calls of that shape only sample. ``est(x)`` is the same call.

        Args:
            feeds: an array (a model with one input) or a dict input name -> array, in
                the model's dtypes and shapes (a batch axis included; float arrays of
                another float dtype are cast).
            level: the sigma (noise) or rate (dropout) for this call, instead of the
                spec's, at every perturbed location, without rebuilding the graph
                (``metadata["level"]``); None: the spec's.
            progress: called as ``progress(done, total)`` after each run of samples
                (``total`` = N), for long inputs.

        Returns:
            A :class:`Result`: per output the unperturbed output, the sample mean and
            the variance (squared output units), each of the output's shape and dtype.

        Raises:
            ArgumentError (a ValueError): inputs that do not fit the model (missing,
                unknown, wrong rank, size or dtype, NaN/Inf), a level out of range or
                given to a method without one.
            TfueError: the model fails on the input, or no strategy passes
                verification (the reasons are in the message; ``notes`` has detail).
        """
        if progress is not None and not callable(progress):
            raise ArgumentError(f"progress must be a function progress(done, total), got "
                                f"{progress!r}", "e.g. progress=lambda done, total: None")
        feeds = self.check_feeds(feeds)
        if isinstance(self.spec, Entropy):
            return self._run_entropy(feeds)
        if level is not None:
            if not isinstance(self.spec, SAMPLED):
                raise ArgumentError(f"--method {self.spec.method} has no level",
                                    "levels are for noise and dropout")
            level = check_level(self.spec.method, level)
        key = signature(feeds)
        try:
            return self._sampled(feeds, level, progress)
        except Exception as exc:
            if key not in self._from_disk:
                raise
            # What the cache held for this shape failed: forget it, verify afresh.
            self._forget(key)
            self.notes.append(f"cache: the entry for this input shape failed "
                              f"({type(exc).__name__}: {str(exc)[:120]}); verified afresh")
            return self._sampled(feeds, level, progress)

    def _sampled(self, feeds, level, progress=None) -> Result:
        ug, sess, provider = self._select(feeds)
        shapes, axes = self.location_shapes(ug, feeds), self.batch_axes(ug, feeds)
        tuning = None
        if ug.prefix is not None:
            chunks, tuning = [], {}
            runs = self._split_outputs(ug, sess, feeds, provider, level, chunks, tuning)
        else:
            chunks = self.chunk_sizes(feeds)
            runs = self._chunk_outputs(ug, sess, feeds, provider, level, chunks)
        results = self._statistics(ug, _counted(runs, self.samples, progress))
        meta = {**self.describe(), "chunks": chunks, "strategy": ug.strategy,
                "provider": provider, "spatial_axes": self.spatial_axes(feeds).metadata()}
        if tuning:
            meta["autotune"] = tuning
        if isinstance(self.spec, Transform):
            meta["inverted_axes"] = self._graph_axes.metadata()
        if axes:
            one = next(iter(feeds.values())).shape[:1] == (1,)
            meta["draws"] = {loc: f"per batch item (axis {a} of {list(shapes[loc])})" + (
                             f"; relative sigma from {spread_text(ug, loc)}, not per item"
                             if self._relative() and a != ug.relative_axes.get(loc, 0)
                             else "")
                             if a is not None else f"per batch item (a batch of 1, "
                             f"{list(shapes[loc])})" if one else
                             f"per whole tensor {list(shapes[loc])} (an item's draws "
                             "depend on its position in the batch)"
                             for loc, a in axes.items()}
        if level is not None:
            meta["level"] = level
        return Result(results, meta)

    def _chunk_outputs(self, ug, sess, feeds, provider, level, chunks):
        """One graph per chunk (shared-prefix, batched, loop): (n, outputs) per chunk."""
        on_device = device_feeds(feeds, provider, self.io_binding)
        shapes, axes = self.location_shapes(ug, feeds), self.batch_axes(ug, feeds)
        first_sample = 0
        for n in chunks:
            # Samples first_sample .. +n-1: their draws depend on their index only.
            extra = ug.feeds(samples=n, level=level, first=first_sample, shapes=shapes,
                             batch_axes=axes)
            first_sample += n
            yield n, (run_session(sess, {**feeds, **extra}) if on_device is None else
                      run_bound(sess, on_device, extra))

    def _split_outputs(self, ug, split, feeds, provider, level, chunks: list, tuning: dict):
        """looped-suffix: the prefix once, the unperturbed output once (0, outputs), then
        the samples in chunks (n, outputs). The chunk size and thread count come from
        ``chunk``/``threads`` when given, else from measurements for this input
        signature (this process or the disk cache), made on these very samples while
        they last (:meth:`_trial`; unfinished, it goes on with the next input of the
        shape). Fills ``chunks`` with the runs made and ``tuning`` with what was chosen
        and measured."""
        run = self._suffix_runner(ug, split, feeds, provider)
        key = signature(feeds)
        plan = self._tuned.get(key)
        if plan is None and self.chunk is not None:
            plan = {"chunk": self.chunk, "threads": self.threads, "how": "given"}
        if plan is None:
            plan = {"chunk": 1, "threads": self.threads, "how": "measuring", "trials": []}
        yield 0, run(plan["threads"], 1, 0.0, 0)
        first = 0
        if plan["how"] == "measuring":
            before = len(plan["trials"])
            for n, out in self._trial(split, run, level, feeds, plan):
                chunks.append(n)
                first += n
                yield n, out
            best = choose_trial(plan["trials"])
            plan.update(chunk=best["chunk"], threads=best["threads"])
            if plan["next"] is None:
                plan["how"] = "measured"
                split.drop(plan["threads"])
                self.notes.append(
                    f"autotune: chunk {plan['chunk']}, {threads_text(plan['threads'])} "
                    f"({best['s_per_sample'] * 1e3:.3g} ms per sample; tried " + ", ".join(
                        f"{t['chunk']} x {threads_text(t['threads'])}: "
                        f"{t['s_per_sample'] * 1e3:.3g} ms" for t in plan["trials"]) + ")")
            if plan["next"] is not None:
                self.notes.append(
                    "autotune: still measuring for input shape " + shapes_text(feeds)
                    + " (tried " + ", ".join(
                        f"{t['chunk']} x {threads_text(t['threads'])}: "
                        f"{t['s_per_sample'] * 1e3:.3g} ms" for t in plan["trials"][before:])
                    + f"; chunk {plan['next'][1]} x {threads_text(plan['next'][0])} next); the "
                    "next input of this shape goes on")
            self._tuned[key] = plan
            if key in self._cache_keys and len(plan["trials"]) > before:
                self.cache.update(self._cache_keys[key], tuning=plan)
        tuning.update(plan)
        tuning["chunk_cap"] = self.chunk_cap(feeds)
        for n in split_sizes(self.samples - first, plan["chunk"]) if first < self.samples \
                else []:
            chunks.append(n)
            yield n, run(plan["threads"], n, level, first)
            first += n

    def _statistics(self, ug, chunk_outputs) -> dict:
        """Merge the runs of ``ug`` into each output's statistics.

        The one reduction of a run: ``run`` feeds it every chunk, verification the
        run at level 0 (so a fault here fails verification, not the user's result).

        Args:
            ug: the uncertainty graph that ran.
            chunk_outputs: (samples in the chunk, output name -> array) per chunk.

        Returns:
            Output name -> OutputStats, each output once (however often it is listed).
        """
        stats = {name: RunningStats() for name in ug.stats_outputs}
        kept = {name: [] for name in ug.stats_outputs}
        mean_entropy = {name: 0.0 for name in self.classes}
        first = None
        # NaN/Inf (a model that overflows under the perturbation) are the user's to
        # see: they are counted and warned about (report.non_finite), not numpy's.
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            for n, out in chunk_outputs:
                if first is None:
                    first = out
                if n == 0:  # the unperturbed run alone (looped-suffix): no samples
                    continue
                for name in ug.stats_outputs:
                    self._add_run(stats[name], kept[name], mean_entropy, name, n, out, first)
            results = {}
            for o in self.info.outputs:
                if o.name not in results:  # listed again: the same tensor, the same statistics
                    results[o.name] = self._output_stats(o.name, first[o.name], stats.get(o.name),
                                                         kept.get(o.name), mean_entropy)
        return results

    def _add_run(self, stats, kept: list, mean_entropy: dict, name: str, n: int, out: dict,
                 first: dict) -> None:
        """Merge one run's ``n`` samples of output ``name`` into ``stats`` (and ``kept``,
        ``mean_entropy``)."""
        names = graphs.output_names(name)
        if isinstance(self.spec, SAMPLED):
            # Sample by sample, in sample order: the same floats whatever the chunks.
            # Statistics of the change from y, as the graph's head does.
            samples = out[names["samples"]]
            stats.add_each(samples - first[name][None])
            if name in self.classes:
                for p in samples:
                    mean_entropy[name] += entropy(p, self.classes[name])
        else:
            stats.add_chunk(n, out[names["mean"]], out[names["variance"]])
            if name in self.classes:
                mean_entropy[name] += out[names["mean_entropy"]].astype(np.float64) * n
        if self.keep_samples:
            kept.append(out[names["samples"]])

    def _output_stats(self, name: str, y, s, kept, mean_entropy: dict) -> OutputStats:
        """Output ``name``'s statistics from its unperturbed value ``y`` and merged runs
        ``s`` (None: no statistics), in ``y``'s dtype."""
        if s is None:
            return OutputStats(output=y)
        mean = s.mean + y if isinstance(self.spec, SAMPLED) else s.mean  # back from the change
        r = OutputStats(output=y, mean=mean.astype(y.dtype), variance=s.variance.astype(y.dtype),
                        samples=np.concatenate(kept) if self.keep_samples else None)
        if name in self.classes:
            axis = self.classes[name]
            h = entropy(mean, axis)
            r.entropy = h.astype(y.dtype)
            r.mutual_information = np.maximum(h - mean_entropy[name] / s.count,
                                              0).astype(y.dtype)
            r.class_variance = winning_class_variance(mean, s.variance, axis).astype(y.dtype)
        return r

    def _run_entropy(self, feeds) -> Result:
        sess, provider = self.reference_session()
        out = run_session(sess, feeds)
        results = {}
        for o in self.info.outputs:
            y = out[o.name]
            r = OutputStats(output=y)
            if o.name in self.classes:
                r.entropy = entropy(y, self.classes[o.name]).astype(y.dtype)
            results[o.name] = r
        return Result(results, {**self.describe(), "strategy": "single run",
                                "provider": provider,
                                "spatial_axes": self.spatial_axes(feeds, out).metadata()})

    def __call__(self, inputs, level: float | None = None, progress=None) -> Result:
        """``est(x)`` is ``est.run(x)``: see :meth:`run`."""
        return self.run(inputs, level=level, progress=progress)

    def export(self, path, example=None, force: bool = False, calibration=None) -> str:
        """Write the verified uncertainty graph with N fixed to ``path``.

        The file runs in plain onnxruntime (no tfue needed) and returns, for each
        float output ``y``: ``y``, ``y.mean`` and ``y.variance``. ``example`` is
        the input verification runs on (default: a synthetic one). Gray-box draws
        happen in the graph (a file has no bank to be fed): each session run draws
        new samples, and a fresh session repeats the same sequence of runs; the
        estimator's own results (fed draws) are not reproduced sample for sample.

        A model whose weights are in external data is written with its weights
        copied into ``path + '.data'`` beside it (never serialised into one proto);
        both files appear only when complete.

        ``calibration`` (a calibration.json path or a ``calibration.CalibrationFile``,
        checked against this run first) adds ``y.expected_error``, ``y.lower`` and
        ``y.upper`` for its output.

        After it, ``exported_files`` lists the paths written (``[path]``, or ``[path,
        path + '.data']``) and ``exported_outputs`` the file's output names.

        Raises:
            TfueError: ``path`` (or its .data) exists without ``force``, or is the
                input model or one of its data files; the model fails on the
                synthetic example (the hint asks for ``example``).
        """
        path = os.fspath(path)
        if self.path and os.path.abspath(path) == os.path.abspath(self.path):
            raise TfueError(f"refusing to overwrite the input model '{path}'",
                            "give another output path with -o")
        check_new_file(path, force)
        if calibration is not None:
            calibration = _calibration_file(calibration)
            calibration.check(self.describe())
        if writes_data_file(self.info.model):  # fail before the graph is built
            check_new_file(path + ".data", force)
        # A file has no bank to be fed: its draws are made in the graph (seeded
        # RandomNormalLike / RandomUniformLike).
        try:
            ug = self.standalone_graph(example)
        except TfueError as exc:
            if example is None and exc.message.startswith("the model failed on input"):
                # The synthetic input (free sizes 64) is what the model refused.
                raise TfueError(exc.message + " (a synthetic example input)",
                                "verify on a real input of the size the model takes: give "
                                "--example") from exc
            raise
        # N and the levels become plain constants: the file has the model's own inputs.
        model = ug.frozen()
        if calibration is not None:
            model = calibration.add_to_graph(model)
        onnx.helper.set_model_props(model, self._export_props(ug, calibration))
        self.exported_files = save_model(model, path, force=force)
        self.exported_outputs = [o.name for o in model.graph.output]
        return path

    def _export_props(self, ug, calibration) -> dict:
        """The exported file's metadata_props: the run's settings (tfue.*)."""
        props = {"tfue.method": self.spec.method, "tfue.location": self.location,
                 "tfue.level": str(self.spec.level), "tfue.samples": str(self.samples),
                 "tfue.seed": str(self.seed), "tfue.strategy": ug.strategy}
        if ug.sampling is not None:
            props["tfue.sampling"] = EXPORT_SAMPLING_NOTE
        if self.conversion:
            props["tfue.converted_opset"] = "%d->%d" % tuple(self.conversion)
        if self.pad:  # the file reflect-pads its input itself
            props["tfue.pad"] = str(self.pad)
        props.update(calibration.props() if calibration is not None else {})
        return props

    def describe(self) -> dict:
        """The run's settings, as recorded in every result."""
        spec = self.spec.describe()
        spec["at"] = self.location
        if isinstance(self.spec, Ensemble):  # every member, this model (member 0) first
            spec["members"] = [Ensemble.label(self.path or self.info.model, 0)] + spec["members"]
        if isinstance(self.spec, MCDropout):  # the nodes switched on, at their rates
            spec["dropout_nodes"] = self._dropout_nodes()
        meta = {"model": self.path, **spec, "samples": self.samples,
                "chunks": self.chunk_sizes(), "seed": self.seed}
        if isinstance(self.spec, SAMPLED):
            meta["sampling"] = graphs.SAMPLING_NOTE
        if self.classes:
            meta["classes"] = {"outputs": self.classes, "softmax_added": self.softmax}
        if self._class_notes:
            meta["classes_left_out"] = list(self._class_notes)
        if self.conversion:
            meta["converted_opset"] = list(self.conversion)
        if self.pad is not None:
            meta["pad"] = self.pad
            if self.pad_found is not None:
                meta["pad_found"] = self.pad_found
        return meta

    def _dropout_nodes(self) -> dict:
        """MC-dropout: {node: rate} of the Dropout nodes switched on (the rates as float32
        values print, so the model's 0.1 and --rate 0.1 are one rate; None: computed)."""
        chosen = self.spec.nodes or [d.name for d in self.info.dropouts]
        rates = {d.name: self.spec.rate if self.spec.rate is not None else d.ratio
                 for d in self.info.dropouts if d.name in chosen}
        return {k: None if r is None else float(str(np.float32(r))) for k, r in rates.items()}

    def check_feeds(self, feeds) -> dict:
        """``feeds`` validated for this model (feeds.check_feeds, with the ``pad`` check)."""
        return check_feeds(self.info, feeds, self.pad, self._pad_input)

    synthetic_input = staticmethod(synthetic_input)

    def example_input(self, size: int = 64) -> dict:
        """A synthetic input: free dims become 1 (batch) or ``size``; values N(0, 1)."""
        return self.synthetic_input(self.info, size)


def _calibration_file(calibration):
    """A ``calibration.CalibrationFile`` from one or from a calibration.json path."""
    from .calibration import CalibrationFile

    if isinstance(calibration, (str, os.PathLike)):
        return CalibrationFile.load(calibration)
    if not isinstance(calibration, CalibrationFile):
        raise ArgumentError(f"calibration must be a calibration.json path or a "
                            f"CalibrationFile, got {type(calibration).__name__}",
                            "e.g. calibration='calibration.json'")
    return calibration


def _counted(runs, total: int, progress):
    """``runs`` ((samples, outputs) pairs) passed on, calling ``progress(done, total)``
    after each run that made samples (the samples merged so far)."""
    done = 0
    for n, out in runs:
        yield n, out
        done += n
        if progress is not None and n:
            progress(done, total)


def _sample_count(spec, samples) -> int:
    """N: ``samples`` for the sampled methods (default 8); the transforms or members
    for the others, which take no ``samples``."""
    if isinstance(spec, SAMPLED):
        return check_samples(8 if samples is None else samples)
    if samples is not None:
        raise TfueError(f"--samples does not apply to --method {spec.method}",
                        "N is the number of transforms or members" if not
                        isinstance(spec, Entropy) else "entropy needs one run")
    return (len(spec.elements) if isinstance(spec, Transform) else
            len(spec.members) + 1 if isinstance(spec, Ensemble) else 1)


def _check_options(layout, class_axis, classify, io_binding, provider, softmax,
                   keep_samples) -> None:
    """Refuse option values of the wrong kind up front (ArgumentError), naming each."""
    for name, flag in (("softmax", softmax), ("keep_samples", keep_samples)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ArgumentError(f"{name} must be True or False, got {flag!r}",
                                f"e.g. {name}=True")
    check_layout(layout)
    check_provider(provider)
    if isinstance(class_axis, bool) or not isinstance(class_axis, (int, np.integer)):
        raise ArgumentError(f"class axis must be a whole number, got {class_axis!r}",
                            "e.g. --class-axis 1")
    if classify not in ("auto", True, False):
        raise ArgumentError(f"classify must be 'auto', True or False, got {classify!r}",
                            "e.g. --classify")
    if io_binding not in (None, True, False):
        raise ArgumentError(f"io_binding must be None (auto), True or False, got "
                            f"{io_binding!r}", "e.g. --io-binding")


def _check_arguments(model, spec) -> None:
    """Refuse a model or spec of the wrong type early, naming the argument."""
    import onnx

    if not isinstance(model, (str, os.PathLike, onnx.ModelProto)):
        raise ArgumentError(f"model must be a path to an .onnx file or an onnx.ModelProto, got "
                        f"{type(model).__name__}", "e.g. Estimator('model.onnx', Noise(0.1))")
    if not isinstance(spec, SPECS):
        raise ArgumentError(f"spec must be one of {', '.join(c.__name__ for c in SPECS)}, got "
                        f"{type(spec).__name__}", "e.g. Estimator('model.onnx', Noise(0.1))")


