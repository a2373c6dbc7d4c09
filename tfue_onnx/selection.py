"""Choosing how to sample an input: the first strategy whose graph passes verification.

For each input signature (names, shapes, dtypes) the strategies are tried fastest
first (graph.STRATEGIES); a strategy's graph and session are made when reached, checked
against the original model at perturbation level 0 (verify.py), and the first that
passes is kept (ARCHITECTURE "verify": a strategy that fails is never used; the reason
is noted). Also here: the original model's session, the shapes and batch axes of the
perturbed locations (for the banks of draws), the output axes transforms are undone on,
and the graph with its sampling inside that ``tfue export`` writes.

A mixin of :class:`runner.Estimator`, which sets what it reads (``info``, ``original``,
``spec``, ``samples``, ``seed``, ``classes``, ``provider_request``, ``strategy_request``,
``threads``, ``notes`` and the per-signature dicts made in ``Estimator.__init__``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import graph as graphs
from .autotune import SPARE_SESSION_BYTES
from .errors import TfueError
from .feeds import signature
from .perturb import SAMPLED, Ensemble, Entropy, Noise, Transform
from .session import create_session, device_feeds, ort_message, run_bound, run_session
from .verify import (Verdict, check_chunk_independence, check_identity, check_statistics,
                     check_unperturbed_slot, result_outputs)


@dataclasses.dataclass
class _Split:
    """The looped-suffix strategy's sessions: the prefix, and the suffix per intra-op
    thread count (None: onnxruntime's default), made when first asked for."""

    prefix: object
    make_suffix: object  # callable(threads) -> session
    suffix: dict = dataclasses.field(default_factory=dict)
    spare: bool = True  # whether a second suffix session (another thread count) may be made

    def suffix_for(self, threads=None):
        if threads not in self.suffix:
            self.suffix[threads] = self.make_suffix(threads)
        return self.suffix[threads]

    def drop(self, keep) -> None:
        """Let go of the suffix sessions of other thread counts than ``keep``."""
        for t in [t for t in self.suffix if t != keep]:
            del self.suffix[t]


def spread_text(ug, location: str) -> str:
    """What relative noise at ``location`` scales by, in words."""
    axis = ug.relative_axes.get(location, 0)
    return "the whole tensor's spread" if axis is None else \
        f"the spread of each index of its axis {axis}"


def _batch_axis(shape: tuple, alt: tuple, batch: int, other: int) -> int | None:
    """The one axis where a tensor of ``shape`` at batch ``batch`` has ``alt`` at batch
    ``other`` (sizes ``batch`` and ``other``), every other axis the same; else None."""
    if len(shape) != len(alt):
        return None
    moved = [a for a, (s, t) in enumerate(zip(shape, alt)) if s != t]
    if len(moved) == 1 and shape[moved[0]] == batch and alt[moved[0]] == other:
        return moved[0]
    return None


class StrategySelection:
    """Build, verify and keep the strategy for each input signature (mixed into Estimator)."""

    def _start_selection(self) -> None:
        """The state kept across inputs (made empty by Estimator.__init__)."""
        self._reference = None  # (session, provider) of the original model
        # strategy -> (UncertaintyGraph, session, provider), or None; session and provider
        # None after the strategy failed (made again when reached)
        self._built = {}
        self._rejected = {}  # strategy -> onnxruntime's reason for refusing its graph
        self._unavailable = {}  # strategy -> why it cannot be built for this model
        self._verified = {}  # input signature -> strategy that passed verification
        self._probe = None  # session of graph.location_probe: the banks' shapes
        self._shapes = {}  # input signature -> {location: shape at that input}
        self._batch_axes = {}  # input signature -> {location: its batch axis or None}
        self._banks = {}  # drawn banks, shared by every strategy's graph
        self._standalone = {}  # input signature -> verified graph with in-graph sampling
        self._axes_probe = None  # axes.AxesProbe, made on first use
        self._graph_axes = None  # the axes.SpatialAxes the transform graphs undo on

    def _strategies(self):
        if isinstance(self.spec, Ensemble):
            return ["batched"]
        if self.strategy_request != "auto":
            return [self.strategy_request]
        return list(graphs.STRATEGIES)

    def _candidate(self, name):
        """(graph, session, provider) of strategy ``name``, built on first use; None when
        the strategy cannot apply or onnxruntime rejects its graph (noted)."""
        if name not in self._built:
            self._built[name] = None
            spec = self.spec
            if isinstance(spec, Ensemble):  # members already loaded and checked
                spec = Ensemble(tuple(self._members))
            # A TfueError from building is tfue's own judgement (a bad argument, a model
            # the method does not fit): it propagates unchanged, with its hint.
            try:
                # Gray-box samples come back to be merged one by one in sample order
                # (run()): the result must not depend on the chunk size.
                ug = graphs.build(self.info, spec, name, self.samples, self.seed,
                                  self.keep_samples or isinstance(spec, SAMPLED), self.classes,
                                  axes=self._graph_axes)
                self._share_banks(ug)
            except graphs.StrategyUnavailable as exc:
                reason = str(exc)
                if self._unconverted and name != "loop" and self.info is self.original:
                    reason += f", and {self._unconverted}"  # why the copy does not help
                self._unavailable[name] = reason
                self.notes.append(f"strategy {name}: not available ({reason})")
                return None
            try:
                self._built[name] = (ug, *self._sessions(ug))
            except TfueError as exc:
                if self.provider_request == "cuda" and "--provider cuda" in exc.message:
                    raise
                reason = ort_message(exc.__cause__) if exc.__cause__ is not None else exc.message
                self._rejected[name] = reason
                self.notes.append(f"strategy {name}: onnxruntime rejects its graph ({reason})")
        built = self._built[name]
        if built is not None and built[1] is None:  # session dropped after a failed check
            built = self._built[name] = (built[0], *self._sessions(built[0]))
        return built

    def _share_banks(self, ug) -> None:
        """Let ``ug`` draw from the banks every graph of this runner shares, kept up to
        an eighth of ``max_memory``."""
        ug.bank_cache, ug.bank_limit = self._banks, self.max_memory // 8

    def _sessions(self, ug):
        """``(session, provider)`` for ``ug``; for looped-suffix a :class:`_Split`
        (the prefix's session and the suffix's, made per thread count when asked)."""
        if ug.prefix is None:
            return create_session(ug.model, self.provider_request, threads=self.threads)
        suffix, provider = create_session(ug.model, self.provider_request, threads=self.threads)
        prefix, _ = create_session(ug.prefix, self.provider_request, threads=self.threads)
        split = _Split(prefix, lambda threads: create_session(
            ug.model, self.provider_request, threads=threads)[0], {self.threads: suffix})
        # A second suffix session (another thread count, tried by the autotuner) holds
        # its own packed copy of the weights: only for models whose copy is small.
        from .session import packed_bytes

        split.spare = packed_bytes(ug.model) <= SPARE_SESSION_BYTES
        return split, provider

    def _drop_session(self, name) -> None:
        """Let go of a strategy's session (its packed weights) after it failed on an
        input signature; it is made again if another signature reaches it."""
        if self._built.get(name) is not None:
            self._built[name] = (self._built[name][0], None, None)

    def _rotates(self) -> bool:
        return isinstance(self.spec, Transform) and any(e.swaps_axes for e in self.spec.elements)

    def _rotation_failure(self, feeds):
        """The error for a model that cannot run the input rotated by 90°, or None when
        that is not what went wrong: the input is square, or the original model runs
        the rotated input (then the failure lies elsewhere)."""
        from .graph.blackbox import spatial_axes
        from .transforms import usable_sets

        if not self._rotates():
            return None
        (h, w), _ = spatial_axes(self.info, self.spec.layout)
        name, x = next(iter(feeds.items()))
        if x.shape[h] == x.shape[w]:
            return None
        try:
            self.reference({name: np.ascontiguousarray(np.swapaxes(x, h, w))})
        except TfueError as exc:
            return TfueError(f"the model does not accept the input rotated by 90° "
                             f"({x.shape[h]}x{x.shape[w]} becomes {x.shape[w]}x{x.shape[h]}): "
                             f"{exc.message}",
                             "use one of the sets " + ", ".join(usable_sets(square=False)) +
                             ", or a square input")
        return None

    def reference_session(self):
        """The original model's session (used for verification)."""
        if self._reference is None:
            from .external import keeps_inline_weights_in_file

            # A session of the path would copy the inline weights; the loaded proto
            # points at them in the file, and onnxruntime maps them from there.
            model = self.original.model
            source = model if (self.softmax or self.pad or not self.path or
                               keeps_inline_weights_in_file(model)) else self.path
            # Runs once per input signature: no packed copy of the weights.
            self._reference = create_session(source, self.provider_request, prepack=False)
        return self._reference

    def reference(self, feeds) -> dict:
        """The original model's outputs on ``feeds``."""
        sess, _ = self.reference_session()
        return run_session(sess, feeds)

    def location_shapes(self, ug, feeds) -> dict | None:
        """Location name -> its shape at ``feeds`` for the banks of ``ug`` (a ``fed``
        graph), from one run of the model cut down to its locations per input
        signature; None when ``ug`` has no draws."""
        if not ug.draws:
            return None
        key = signature(feeds)
        if key not in self._shapes:
            self._shapes[key] = self._probe_shapes(ug, feeds)
        return self._shapes[key]

    def _probe_shapes(self, ug, feeds) -> dict:
        """Location name -> shape at ``feeds`` (the inputs' own, else the probe's)."""
        shapes = {d.location: feeds[d.location].shape for d in ug.draws if d.location in feeds}
        if len(shapes) < len({d.location for d in ug.draws}):
            if self._probe is None:
                self._probe = create_session(graphs.location_probe(self.info, ug.draws),
                                             self.provider_request, prepack=False)[0]
            shapes.update({k: v.shape for k, v in run_session(self._probe, feeds).items()})
        return shapes

    def batch_axes(self, ug, feeds) -> dict | None:
        """Location name -> the axis of its tensor that holds the batch items (each item
        then gets the draws it gets alone), or None where none was found (draws for the
        whole tensor: an item's draws depend on its position in the batch).

        The batch B is the inputs' common axis-0 size; a location's batch axis is the
        one axis of size B that becomes 1 when the model runs on the batch's first item
        alone, every other axis staying the same. At B = 1 no axis is needed (None): the
        whole tensor's draws are then the one item's, whatever its batch axis. Cached
        per input signature; None when ``ug`` has no draws.
        """
        if not ug.draws:
            return None
        key = signature(feeds)
        if key not in self._batch_axes:
            shapes = self.location_shapes(ug, feeds)
            axes, why = self._find_batch_axes(ug, feeds, shapes)
            self._batch_axes[key] = axes
            batch = next(iter(feeds.values())).shape[:1]
            for loc, axis in axes.items():
                if axis is None and batch != (1,):
                    self.notes.append(f"draws at '{loc}' are made for the whole tensor "
                                      f"{tuple(shapes[loc])}: {why.get(loc)}, so a result "
                                      "depends on the input's position in the batch")
                elif axis is not None and self._relative() and \
                        axis != ug.relative_axes.get(loc, 0):
                    self.notes.append(f"relative noise at '{loc}' scales by "
                                      f"{spread_text(ug, loc)}, but the batch is its axis "
                                      f"{axis}: an item's sigma depends on the other items")
        return self._batch_axes[key]

    def _relative(self) -> bool:
        return isinstance(self.spec, Noise) and self.spec.mode == "relative"

    def _find_batch_axes(self, ug, feeds, shapes) -> tuple:
        """(location -> batch axis or None, location -> why None); see batch_axes."""
        locations = list(dict.fromkeys(d.location for d in ug.draws))
        sizes = {v.shape[0] if v.ndim else None for v in feeds.values()}
        if len(sizes) != 1 or None in sizes:
            return ({loc: None for loc in locations},
                    {loc: "the inputs have no common batch axis 0" for loc in locations})
        batch = sizes.pop()
        if batch == 1:  # one item: its draws are the whole tensor's, on any axis
            return {loc: None for loc in locations}, {}
        fixed = [i.name for i in self.info.inputs
                 if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0]
        if fixed:
            return ({loc: None for loc in locations},
                    {loc: f"input '{fixed[0]}' has a fixed batch size" for loc in locations})
        try:
            alt_shapes = self._probe_shapes(ug, {k: v[:1] for k, v in feeds.items()})
        except TfueError:
            return ({loc: None for loc in locations},
                    {loc: "the model does not run at batch size 1" for loc in locations})
        axes, why = {}, {}
        for loc in locations:
            axes[loc] = _batch_axis(tuple(shapes[loc]), tuple(alt_shapes[loc]), batch, 1)
            if axes[loc] is None:
                why[loc] = (f"no axis of it follows the batch size (shape "
                            f"{tuple(alt_shapes[loc])} at batch 1)")
        return axes, why

    def _cut_values(self, split, feeds) -> dict:
        """looped-suffix: what the suffix reads, from one run of the prefix on ``feeds``
        (the tensors crossing the cut, and the model inputs the suffix reads itself)."""
        values = run_session(split.prefix, feeds)
        wanted = {i.name for i in split.suffix_for(self.threads).get_inputs()}
        return {k: v for k, v in {**feeds, **values}.items() if k in wanted}

    def _suffix_runner(self, ug, split, feeds, provider):
        """looped-suffix: the prefix run once on ``feeds``; returns
        ``run(threads, n, level, first) -> outputs`` for samples first .. first+n-1
        (level None: the spec's; 0.0: the unperturbed output)."""
        base = self._cut_values(split, feeds)
        key = signature(feeds)
        if ug.draws and key not in self._shapes and all(d.location in base for d in ug.draws):
            # The locations cross the cut: their shapes are the prefix's (no probe run).
            self._shapes[key] = {d.location: base[d.location].shape for d in ug.draws}
        device = device_feeds(base, provider, self.io_binding)
        shapes, axes = self.location_shapes(ug, feeds), self.batch_axes(ug, feeds)

        def run(threads, n, level, first):
            extra = ug.feeds(samples=n, level=level, first=first, shapes=shapes,
                             batch_axes=axes)
            session = split.suffix_for(threads)
            return (run_session(session, {**base, **extra}) if device is None else
                    run_bound(session, device, extra))
        return run

    def _verify_split(self, ug, split, feeds, reference) -> Verdict:
        """looped-suffix: level 0 gives the original (the unperturbed run and two
        samples, reduced as run() reduces them), and with the perturbation on a
        sample does not depend on the chunk it runs in (sample 1 in a chunk of 2 equals
        sample 1 alone: the slots do not mix, so the batch axis is outermost)."""
        run = self._suffix_runner(ug, split, feeds, "cpu")
        zero, two = run(self.threads, 1, 0.0, 0), run(self.threads, 2, 0.0, 0)
        verdict = check_identity(result_outputs(self._statistics(ug, [(0, zero), (2, two)])),
                                 reference, ug.stats_outputs)
        if not verdict.ok:
            return verdict
        together, alone = run(self.threads, 2, None, 0), run(self.threads, 1, None, 1)
        return check_chunk_independence(together, alone, ug.stats_outputs)

    def _verify(self, ug, sess, feeds, reference) -> Verdict:
        if ug.prefix is not None:
            return self._verify_split(ug, sess, feeds, reference)
        if not ug.level_inputs:  # transforms, ensembles: the unperturbed output must hold
            out = run_session(sess, {**feeds, **ug.feeds()})
            verdict = check_unperturbed_slot(out, reference)
            if verdict.ok and isinstance(self.spec, Transform):
                expected = self._transform_statistics(feeds, ug.stats_outputs)
                verdict = check_statistics(out, expected, "transformed runs of the original")
            return verdict
        shapes, axes = self.location_shapes(ug, feeds), self.batch_axes(ug, feeds)
        out = run_session(sess, {**feeds, **ug.feeds(samples=2, level=0.0, shapes=shapes,
                                                   batch_axes=axes)})
        verdict = check_identity(out, reference, ug.stats_outputs)
        if verdict.ok and ug.keep_samples:
            # What run() gives the user is its own reduction of the samples, not the
            # graph's head (which a file exported without samples returns): check it
            # too, on the same run.
            verdict = check_identity(result_outputs(self._statistics(ug, [(2, out)])),
                                     reference, ug.stats_outputs)
        if verdict.ok and ug.strategy in ("shared-prefix", "batched"):
            on = run_session(sess, {**feeds, **ug.feeds(samples=2, shapes=shapes,
                                                      batch_axes=axes)})
            verdict = check_unperturbed_slot(on, reference)
        return verdict

    def _transform_statistics(self, feeds, outputs) -> dict:
        """What infer-transformation must give on ``feeds``, from the original model
        alone: per output with statistics, (mean, variance) over the transforms of
        the model run on each transformed input, turned back on the output's image
        axes (as found for the graph; outputs without them are taken as they come).
        ``outputs``: the names of the outputs with statistics.
        """
        from .graph.blackbox import spatial_axes

        in_axes, _ = spatial_axes(self.info, self.spec.layout)
        name = self.info.inputs[0].name
        axes = self._graph_axes
        runs = []
        for e in self.spec.elements:
            x = np.ascontiguousarray(e.forward(feeds[name], in_axes))
            runs.append(self.reference({**feeds, name: x}))
        expected = {}
        for out in outputs:
            oaxes = axes.outputs.get(out) if axes is not None else None
            ys = [r[out] if oaxes is None else e.inverse(r[out], oaxes)
                  for e, r in zip(self.spec.elements, runs)]
            if len({y.shape for y in ys}) != 1:
                continue  # samples that cannot be stacked: the graph failed already
            stack = np.stack(ys).astype(np.float64)
            expected[out] = (stack.mean(axis=0), stack.var(axis=0))
        return expected

    def _select(self, feeds):
        """The verified (graph, session, provider) for this input signature: from this
        run, from the disk cache, or the first strategy, fastest first, that passes."""
        key = signature(feeds)
        if key in self._verified:
            return self._built[self._verified[key]]
        cache_key = self._cache_key(feeds)
        if cache_key is not None:
            self._cache_keys[key] = cache_key
            hit = None if key in self._skip_disk else self._from_cache(cache_key, feeds)
            if hit is not None:
                self._from_disk.add(key)
                return hit
        reference = self.reference(feeds)
        if isinstance(self.spec, Transform):
            self._transforms_axes(self.spatial_axes(feeds, reference))
        else:
            self.spatial_axes(feeds, reference)
        failures = []  # "strategy: why": onnxruntime's refusals and failed verifications
        verified_wrong = False
        # Fastest first; a strategy's graph and session are made only when reached.
        for name in self._strategies():
            found, verdict = self._try(name, feeds, reference, failures)
            verified_wrong = verified_wrong or (verdict is not None and not verdict.ok)
            if found is not None:
                self._verified[key] = name
                if cache_key is not None:
                    self._to_cache(cache_key, feeds, found[0], found[2], verdict)
                return found
        if self.conversion and isinstance(self.spec, SAMPLED):
            return self._back_to_original(feeds, failures)
        raise self._no_strategy(feeds, failures, verified_wrong)

    def _transforms_axes(self, found) -> None:
        """Infer-transformation undoes the transforms on the output axes ``found``
        (axes.SpatialAxes): graphs built for other axes are dropped and built again."""
        from .graph.builder import stats_outputs

        found.check_rotations(self.spec.elements, [o.name for o in stats_outputs(self.info)])
        built = self._graph_axes
        if built is None or (found.outputs, found.ranks) != (built.outputs, built.ranks):
            # Graphs built for other axes would undo the transforms on the wrong ones.
            self._built, self._rejected, self._verified = {}, {}, {}
            self._unavailable = {}
            self._graph_axes = found
            self.notes.append(f"transforms undone on output axes {found.metadata()} "
                              f"(found by {found.how})" + "".join(
                                  f"; output '{n}' follows the image on axes that are not "
                                  "a certain (height, width) pair: left as it comes"
                                  for n in sorted(found.unresolved)))

    def _try(self, name: str, feeds, reference, failures: list):
        """Build and verify strategy ``name`` on ``feeds``: ``((graph, session,
        provider), verdict)`` when it passes; ``(None, verdict)`` when not (None: no
        verdict, onnxruntime refused or failed; the reason appended to ``failures`` and
        the notes; its session let go)."""
        candidate = self._candidate(name)
        if candidate is None:
            if name in self._rejected:
                failures.append(f"{name}: onnxruntime rejects the graph: {self._rejected[name]}")
            return None, None
        ug, sess, provider = candidate
        try:
            verdict = self._verify(ug, sess, feeds, reference)
        except TfueError as exc:  # onnxruntime failed running it: no verdict on numbers
            reason = ort_message(exc.__cause__) if exc.__cause__ is not None else exc.message
            failures.append(f"{name}: onnxruntime fails running the graph: {reason}")
            self.notes.append(f"strategy {name}: onnxruntime fails running its graph ({reason})")
            self._drop_session(name)
            return None, None
        if verdict.ok:
            what = "at level 0" if ug.level_inputs else "of the unperturbed output"
            self.notes.append(f"strategy {ug.strategy}: verified (max |error| {what} = "
                              f"{verdict.max_error:.2g}) on {provider}")
            return (ug, sess, provider), verdict
        failures.append(f"{ug.strategy}: {verdict.reason}")
        self._drop_session(name)
        self.notes.append(f"strategy {ug.strategy}: failed verification ({verdict.reason})")
        return None, verdict

    def _back_to_original(self, feeds, failures: list):
        """No graph of the converted copy passed: a converter fault must not cost the
        user the model, so select again on the model at its own opset (the loop)."""
        self.notes.append(f"model: no graph of the copy converted to opset "
                          f"{self.conversion[1]} passed; back to the original model")
        self._unconverted = (f"no graph of the copy converted to opset "
                             f"{self.conversion[1]} passed" +
                             (f" ({'; '.join(failures)})" if failures else ""))
        self.info, self.conversion = self.original, None
        self._built, self._rejected, self._verified = {}, {}, {}
        self._unavailable = {}
        return self._select(feeds)

    def _no_strategy(self, feeds, failures: list, verified_wrong: bool) -> TfueError:
        """The error when no strategy passed: why each failed, and what to try."""
        rotation = self._rotation_failure(feeds)
        if rotation is not None:
            return rotation
        if not failures:  # no strategy applies at all: each one's reason, nothing else
            return TfueError("no sampling strategy applies to this model: " + "; ".join(
                f"{name}: {self._unavailable[name]}" for name in self._strategies()
                if name in self._unavailable),
                "try --strategy auto (the strategies in turn); --verbose shows details"
                if self._strategies() != list(graphs.STRATEGIES) and
                not isinstance(self.spec, Ensemble) else "run with --verbose for details")
        hint = ("try another location (--at) or --strategy loop; --verbose shows details"
                if isinstance(self.spec, SAMPLED) else
                "check that the model gives the same output when run twice on this input; "
                "--verbose shows details" if verified_wrong else
                "the original model runs this input, so this is tfue's limit for the model; "
                "--verbose shows details")
        built = ""
        if self.conversion:
            built = f" (built from the copy converted from opset {self.conversion[0]} to " \
                    f"{self.conversion[1]})"
            hint = "re-export the model at opset >= 10; " + hint
        what = (f"no uncertainty graph{built} passed verification against the original model"
                if verified_wrong else f"onnxruntime cannot run the uncertainty graph{built}")
        return TfueError(f"{what} (" + "; ".join(failures) + ")", hint)

    def spatial_axes(self, feeds, outputs=None):
        """Which axes of each output carry the image's height and width at ``feeds``'
        shapes (an axes.SpatialAxes, cached per input shape); ``outputs`` are the
        original model's outputs on ``feeds`` when already computed."""
        known = self._axes_known.get(signature(feeds))
        if known is not None:
            return known
        if self._axes_probe is None:
            from .axes import AxesProbe

            self._axes_probe = AxesProbe(self.info, self.reference,
                                         getattr(self.spec, "layout", "auto"))
        return self._axes_probe(feeds, outputs)

    def uncertainty_graph(self, feeds=None):
        """The verified uncertainty graph (verified on ``feeds`` or a synthetic input)."""
        feeds = self.check_feeds(feeds if feeds is not None else self.example_input())
        ug, _, _ = self._select(feeds)
        return ug

    def standalone_graph(self, feeds=None):
        """The verified uncertainty graph with its sampling inside (seeded
        RandomNormalLike / RandomUniformLike), for a file that runs without tfue.

        Gray-box graphs with in-graph sampling are built and verified at level 0 here,
        fastest strategy first (the one already verified for ``feeds``' shapes, if
        any), one session at a time: no graph with fed draws and no location probe is
        made, so a model with large external weights holds at most two sessions.
        Black-box graphs have nothing random: the verified one is returned. The result
        is cached per input signature. Its draws come from onnxruntime's generator,
        whose state lives in the session: each run of a session draws anew, and a
        fresh session repeats the same sequence of runs.

        Args:
            feeds: the input to verify on (default: a synthetic one).

        Returns:
            A graph.UncertaintyGraph with ``sampling == "graph"`` (gray box).

        Raises:
            TfueError: no strategy's in-graph variant passes verification.
        """
        feeds = self.check_feeds(feeds if feeds is not None else self.example_input())
        if not isinstance(self.spec, SAMPLED):
            ug, _, _ = self._select(feeds)
            return ug
        key = signature(feeds)
        if key in self._standalone:
            return self._standalone[key]
        reference = self.reference(feeds)
        failures = []
        for name in self._standalone_order(key):
            ug, verdict = self._standalone_candidate(name, feeds, reference)
            if verdict is None:
                continue
            if verdict.ok:
                self.notes.append(f"export: strategy {name} with in-graph sampling verified "
                                  f"(max |error| at level 0 = {verdict.max_error:.2g})")
                self._standalone[key] = ug
                return ug
            failures.append(f"{name}: {verdict.reason}")
            self.notes.append(f"export, strategy {name}: failed verification ({verdict.reason})")
        raise TfueError("no uncertainty graph with in-graph sampling passed verification "
                        "against the original model (" + "; ".join(failures) + ")",
                        "export with another location (--at) or --strategy loop")

    def _standalone_order(self, key) -> list:
        """The one-graph strategies to export, the one verified for ``key`` first (a run
        asked to use looped-suffix, which runs as two graphs, exports the others)."""
        names = [n for n in self._strategies() if n in graphs.GRAPH_STRATEGIES] or \
            list(graphs.GRAPH_STRATEGIES)
        if self._strategies() == ["looped-suffix"]:
            self.notes.append("export: looped-suffix runs as two graphs; the file holds one "
                              "(the first of " + ", ".join(names) + " that verifies)")
        if self._verified.get(key) in names:
            names = [self._verified[key]] + [n for n in names if n != self._verified[key]]
        return names

    def _standalone_candidate(self, name: str, feeds, reference):
        """(graph with in-graph sampling, its verdict at level 0) for strategy ``name``;
        verdict None when the strategy is not available (noted)."""
        try:
            ug = graphs.build(self.info, self.spec, name, self.samples, self.seed,
                              self.keep_samples, self.classes, sampling="graph")
        except graphs.StrategyUnavailable as exc:
            self.notes.append(f"export, strategy {name}: not available ({exc})")
            return None, None
        try:
            # Only verified here, never sampled: no packed copy of the weights.
            sess, _ = create_session(ug.model, self.provider_request, prepack=False)
            verdict = self._verify(ug, sess, feeds, reference)
        except TfueError as exc:
            verdict = Verdict(False, ort_message(exc.__cause__) if exc.__cause__ is not None
                              else exc.message)
        finally:
            sess = None  # one session at a time (large external weights)
        return ug, verdict

    def prepare(self, feeds) -> None:
        """Build and verify the graph for ``feeds``' shapes now (a no-op for entropy), so
        a model that cannot run them fails before any work is reported."""
        if not isinstance(self.spec, Entropy):
            self._select(self.check_feeds(feeds))
