"""Gray-box sampling graphs: noise or dropout at a tensor, or MC-dropout.

Noise is ``t + sigma * eps``, eps standard normal; dropout a mask of plain ops,
``keep = not (u < rate)`` with u uniform in [0, 1) (onnxruntime may remove or
ignore a ``Dropout`` node). Where eps and u come from is the ``sampling`` switch:

- ``fed`` (what the runner executes): every random node becomes a graph input,
  a *bank* ``[n, size of the location]`` of draws that ``builder.draw_bank`` makes
  from the seed, the node's index and the sample's index. Sample k gets the same
  draw whatever chunk, strategy or earlier run it falls in, so a result depends
  on (model, input, method, location, level, N, seed) only. The draws are made for
  one batch item and repeated over the location's batch axis (where the runner
  finds one), so an item's result does not depend on its position in the batch;
  relative noise scales by each item's own spread (per index of the location's
  axis 0, or of the axis shape inference names with the inputs' batch; a location
  of rank 0 or 1 by the whole tensor's). onnxruntime's seeded
  Random* ops cannot give that: their generator lives in the session and
  advances on every run.
- ``graph`` (what ``tfue export`` writes, a file that needs no tfue):
  ``RandomNormalLike`` / ``RandomUniformLike`` with fixed seeds.

The number of samples and the levels are inputs of the graph (the runner feeds
them; ``tfue export`` freezes them to constants), so one session serves every
chunk size and level, and level 0 must give back the original model
(``verify.py`` checks it).

- ``shared-prefix``: everything upstream of the location runs once; only the
  tensors that cross into the rest (the location, skip connections) are tiled
  n+1 times along the batch axis, so only the suffix runs on the big batch.
- ``batched``: the inputs are tiled n+1 times along the batch axis.
- ``loop``: an ONNX Loop runs a perturbed copy of the model n times beside one
  unperturbed copy (fixed-shape models, opsets below 10); control flow in the
  copy reads the body's tensors (``builder.prefixed_node``).

In both tiled strategies slot 0 is kept unperturbed (the perturbation is
multiplied by a 0/1 slot mask) and slots 1..n are the samples: slot k+1 reads
row k of a bank, as iteration k of the loop strategy does.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from ..convert import MIN_OPSET
from ..errors import ArgumentError, TfueError, closest
from ..model import ModelInfo
from ..perturb import Dropout, MCDropout, Noise
from .builder import (INT64_MAX, SAMPLING, Builder, Draw, StrategyUnavailable, attach_stats,
                      finish, float_dtype, keep_versions, output_names, prefix_for,
                      prefixed_node, replace_tensor, rewire, stacked_name, stats_outputs)


class _Perturber:
    """Inserts perturbations into a graph; optionally masked to spare slot 0.

    Noise ``t + sigma * eps`` and dropout ``t * keep / (1 - rate)`` (Mi et al.,
    "Training-Free Uncertainty Estimation": infer-noise, infer-dropout; MC-dropout,
    Gal & Ghahramani, switches on existing Dropout nodes the same way). Collects the
    inputs it adds: ``level_inputs`` (scalar levels and their defaults) and, with
    ``sampling="fed"``, ``bank_inputs`` (a :class:`Draw` each).

    With ``sampling="fed"``, ``read_bank(bank, like, dtype)`` turns a bank input into the
    draws for tensor ``like`` (the strategy decides how: all rows, or one row per
    Loop iteration).
    """

    def __init__(self, b: Builder, seed: int, slot_mask=None, sampling: str = "graph",
                 read_bank=None, one_slot=None):
        """Add to ``b``'s graph; Random* seeds derive from ``seed``. Raises TfueError for
        an unknown ``sampling``."""
        if sampling not in SAMPLING:
            raise RuntimeError(f"unknown sampling {sampling!r} (use one of {', '.join(SAMPLING)})")
        self.b = b
        self.seed = seed
        self.slot_mask = slot_mask  # callable(delta, like) -> masked delta, or None
        self.sampling = sampling
        self.read_bank = read_bank
        self.one_slot = one_slot  # callable(t, dtype) -> the unperturbed slot of t, or None
        self.level_inputs = []  # (gs.Variable, default value) pairs
        self.bank_inputs = []  # (gs.Variable, Draw) pairs, sampling "fed"
        self.relative_axes = {}  # location -> axis of per-index spread (None: whole tensor)
        self._random = 0

    def _level(self, hint: str, value: float, dtype) -> gs.Variable:
        """A scalar level input of ``dtype`` (sigma or rate), ``value`` its default."""
        var = gs.Variable(self.b.name(hint), dtype=dtype, shape=[])
        self.level_inputs.append((var, np.asarray(value, dtype=dtype)))
        return var

    def _seed(self) -> float:
        """A seed for the next random node, derived from the user's seed by hashing:
        onnxruntime's generator is a linear congruential one, so nearby seeds (s, s+1)
        would give correlated streams at different nodes."""
        self._random += 1
        state = np.random.SeedSequence([self.seed, self._random]).generate_state(1)[0]
        return float(int(state) % (2**31 - 1) + 1)

    def _random_like(self, t, kind: str, dtype, location: str):
        """Draws shaped like ``t``: standard normal or uniform in [0, 1)."""
        b = self.b
        if self.sampling == "graph":
            op = "RandomNormalLike" if kind == "normal" else "RandomUniformLike"
            attrs = ({"mean": 0.0, "scale": 1.0} if kind == "normal" else
                     {"low": 0.0, "high": 1.0})
            return b.op(op, [t], {**attrs, "seed": self._seed()}, dtype=dtype)
        self._random += 1
        # [n, size]: sample k's draws, flattened (the location's rank may be unknown).
        bank = gs.Variable(f"{b.prefix}bank/{self._random}", dtype=dtype,
                           shape=[f"{b.prefix}samples", f"{b.prefix}size/{self._random}"])
        self.bank_inputs.append((bank, Draw(bank.name, location, kind, np.dtype(dtype),
                                            self._random)))
        return self.read_bank(bank, t, dtype)

    def delta_noise(self, t, dtype, sigma_var, relative: bool, location: str,
                    rank: int | None = None, item_axis: int | None = None):
        """sigma * eps for ``t``; relative: times the spread of each batch item (each
        index of ``item_axis`` when it is known and not 0, else of axis 0; the whole
        tensor's for a location of rank 0 or 1). Records the axis in ``relative_axes``.

        ``t``: the location (float ``dtype``, ``rank`` when known); ``sigma_var``: the
        level input, a scalar of ``dtype`` (absolute: in the tensor's units; relative: in
        units of its standard deviation). Returns a tensor shaped like ``t``. Mi et al.,
        "Training-Free Uncertainty Estimation", infer-noise.
        """
        b = self.b
        eps = self._random_like(t, "normal", dtype, location)
        delta = b.op("Mul", [eps, sigma_var], dtype=dtype)
        if relative and rank is not None and rank >= 2 and item_axis not in (None, 0):
            # The batch is axis item_axis (found from the symbolic shapes): reduce over
            # every other axis. (The tiled strategies' slots are axis 0: such a location
            # fails their verification, and the loop runs it on one copy.)
            self.relative_axes[location] = item_axis
            var = _variance(b, t, [a for a in range(rank) if a != item_axis], dtype)
            return b.op("Mul", [delta, b.op("Sqrt", [var], dtype=dtype)], dtype=dtype)
        if not relative:
            return delta
        if rank is not None and rank <= 1:
            # No item axis to keep apart: the spread of the whole tensor (one copy).
            self.relative_axes[location] = None
            t1 = self.one_slot(t, dtype) if self.one_slot is not None else t
            var = _variance(b, t1, None, dtype)
            return b.op("Mul", [delta, b.op("Sqrt", [var], dtype=dtype)], dtype=dtype)
        self.relative_axes[location] = 0
        t1 = self.one_slot(t, dtype) if self.one_slot is not None else t
        return _per_item_scaled(b, delta, t1, dtype)

    def dropped(self, t, dtype, rate_var, location: str):
        """t * keep / (1 - rate), keep ~ Bernoulli(1 - rate), built from plain ops
        (onnxruntime may remove a Dropout node): shaped like ``t``, of ``dtype``;
        ``rate_var`` a scalar level input in [0, 1). Mi et al., infer-dropout."""
        b = self.b
        u = self._random_like(t, "uniform", dtype, location)
        # keep = not (u < rate): at rate 0 nothing is dropped, whatever u is.
        keep = b.op("Not", [b.op("Less", [u, rate_var], dtype=np.bool_)], dtype=np.bool_)
        one = b.const("one", np.array(1, dtype=dtype))
        scale = b.op("Div", [one, b.op("Sub", [one, rate_var], dtype=dtype)], dtype=dtype)
        kept = b.op("Cast", [keep], {"to": helper.np_dtype_to_tensor_dtype(dtype)}, dtype=dtype)
        factor = b.op("Mul", [kept, scale], dtype=dtype)
        return b.op("Mul", [t, factor], dtype=dtype)

    def apply(self, graph: gs.Graph, t: gs.Variable, kind: str, level_var, dtype,
              relative=False, out: gs.Variable | None = None,
              location: str | None = None, rank: int | None = None,
              item_axis: int | None = None) -> gs.Variable:
        """Perturb ``t`` and rewire its consumers (or fill ``out``) with the result.

        Args:
            graph: the graph that holds ``t``.
            t: the graph's copy of the model's tensor ``location`` (float ``dtype``).
            kind: "noise" or "dropout".
            level_var: the scalar level input: sigma (noise; in ``t``'s units, or with
                ``relative`` in units of each item's standard deviation) or the rate.
            dtype: ``t``'s numpy float dtype.
            relative: noise relative to each batch item's spread.
            out: the Variable to fill (MC-dropout keeps the Dropout's output); None:
                a new one, and ``t``'s consumers read it instead.
            location: the model's name of ``t`` (default ``t.name``), for the draws.
            rank: ``t``'s rank when known.
            item_axis: the axis holding ``t``'s batch items when known.

        Returns:
            The perturbed tensor, shaped like ``t``, of ``dtype``; slot 0 unperturbed
            when the perturber has a slot mask.
        """
        b = self.b
        location = location or t.name
        consumers_before = {id(n) for n in t.outputs}
        if kind == "noise":
            delta = self.delta_noise(t, dtype, level_var, relative, location, rank,
                                     item_axis)
            if self.slot_mask is not None:
                delta = self.slot_mask(delta, t, dtype)
            result = b.op("Add", [t, delta], dtype=dtype, out=out)
        else:
            dropped = self.dropped(t, dtype, level_var, location)
            if self.slot_mask is not None:
                delta = self.slot_mask(b.op("Sub", [dropped, t], dtype=dtype), t, dtype)
                result = b.op("Add", [t, delta], dtype=dtype, out=out)
            else:
                result = b.op("Identity", [dropped], dtype=dtype, out=out)
        if out is None:
            skip = {id(n) for n in t.outputs} - consumers_before  # our own new nodes
            replace_tensor(graph, t, result, skip=skip)
        return result


def _variance(b: Builder, x, axes, dtype):
    """The population variance of ``x`` over ``axes`` (every axis when None), dims kept:
    the spread that relative noise scales by."""
    mean = b.reduce_mean(x, axes=axes, dtype=dtype)
    centred = b.op("Sub", [x, mean], dtype=dtype)
    return b.reduce_mean(b.op("Mul", [centred, centred], dtype=dtype), axes=axes, dtype=dtype)


def _per_item_scaled(b: Builder, delta, t1, dtype):
    """``delta`` times the standard deviation of each batch item (each index of axis 0)
    of ``t1``, one copy of the batch (all slots hold the same values): an item's sigma
    does not depend on the rest of the batch, nor on the number of slots, and is what
    the loop computes per iteration."""
    rows = b.op("Flatten", [t1], {"axis": 1}, dtype=dtype)  # [B, rest]
    var = _variance(b, rows, [1], dtype)
    # delta as [slots, B, rest] times the items' std [B, 1], back to its shape.
    by_slot = b.op("Concat", [b.ints("minus1", [-1]), b.op("Shape", [rows], dtype=np.int64)],
                   {"axis": 0}, dtype=np.int64)
    scaled = b.op("Mul", [b.op("Reshape", [delta, by_slot], dtype=dtype),
                          b.op("Sqrt", [var], dtype=dtype)], dtype=dtype)
    return b.op("Reshape", [scaled, b.op("Shape", [delta], dtype=np.int64)], dtype=dtype)


def _insert(graph: gs.Graph, info: ModelInfo, spec, perturber: "_Perturber", tensors: dict):
    """Insert ``spec`` into ``graph``; return the perturbed locations' names.

    ``tensors`` maps the model's original tensor names to the graph's tensors
    (the tiled copy for an input).
    """
    if isinstance(spec, (Noise, Dropout)):
        cand = info.resolve_location(spec.at)
        dtype = float_dtype(info, cand.name)
        t = tensors[cand.name]
        kind = "noise" if isinstance(spec, Noise) else "dropout"
        level = perturber._level("sigma" if kind == "noise" else "rate", spec.level, dtype)
        known = info.tensor_infos.get(cand.name)
        rank = None if known is None or known.shape is None else len(known.shape)
        perturber.apply(graph, t, kind, level, dtype,
                        relative=isinstance(spec, Noise) and spec.mode == "relative",
                        location=cand.name, rank=rank, item_axis=symbolic_batch_axis(
                            info, cand.name))
        return [cand.name]
    if isinstance(spec, MCDropout):
        return _activate_dropouts(graph, info, spec, perturber)
    raise TfueError(f"unsupported perturbation {spec!r}", "use Noise, Dropout or MCDropout")


def symbolic_batch_axis(info: ModelInfo, name: str) -> int | None:
    """The axis of tensor ``name`` whose symbolic size is the inputs' batch (the one
    name every input has on axis 0), from shape inference; None when the inputs share
    no named batch or the tensor has it on no axis or on several."""
    batch = {i.shape[0] if i.shape else None for i in info.inputs}
    known = info.tensor_infos.get(name)
    if len(batch) != 1 or known is None or known.shape is None:
        return None
    symbol = batch.pop()
    if not isinstance(symbol, str) or symbol in ("", "?"):
        return None
    axes = [a for a, d in enumerate(known.shape) if d == symbol]
    return axes[0] if len(axes) == 1 else None


def _activate_dropouts(graph, info: ModelInfo, spec: MCDropout, perturber: _Perturber):
    """Replace the chosen Dropout nodes (all by default) by sampled dropout (MC-dropout);
    their names. TfueError: no Dropout node, an unknown name, a computed ratio without
    ``--rate``, or a node whose mask output is in use."""
    known = {d.name: d for d in info.dropouts}
    if not known:
        raise TfueError("the model has no Dropout node, so MC-dropout has nothing to switch on",
                        "use --method dropout to apply dropout at any tensor (infer-dropout)")
    chosen = list(spec.nodes) or list(known)
    for name in chosen:
        if name not in known:
            near = closest(name, known)
            raise ArgumentError(f"unknown Dropout node '{name}'",
                            f"the model's Dropout nodes are: {near or ', '.join(known)}")
    by_output = {d.output: d for d in info.dropouts if d.name in chosen}
    for node in [n for n in graph.nodes if n.op == "Dropout"]:
        out = node.outputs[0]
        d = by_output.get(out.name)
        if d is None:
            continue
        rate = spec.rate if spec.rate is not None else d.ratio
        if rate is None:
            raise TfueError(f"Dropout node '{d.name}' takes its ratio from a computed tensor",
                            "give the rate explicitly with --rate P")
        if len(node.outputs) > 1 and node.outputs[1].outputs:
            raise TfueError(f"Dropout node '{d.name}' has its mask output in use",
                            "tfue cannot switch on such a node; use --method dropout instead")
        dtype = float_dtype(info, d.input)
        data = node.inputs[0]
        node.inputs.clear()
        node.outputs.clear()
        level = perturber._level("rate", rate, dtype)
        perturber.apply(graph, data, "dropout", level, dtype, out=out, location=d.input)
    graph.cleanup()
    return chosen


def batched(info: ModelInfo, spec, samples: int, seed: int, keep_samples: bool, classes: dict,
            sampling: str = "fed"):
    """Tile the inputs n+1 times along the batch axis; slot 0 stays unperturbed.

    Args:
        info: the model (opset >= MIN_OPSET, every input with a free batch axis 0).
        spec: a perturb.Noise, Dropout or MCDropout.
        samples: the default number of samples n (an input of the graph).
        seed: seeds the draws (fed banks, or Random* seeds).
        keep_samples: also return ``y.samples`` ``[n, *shape]``.
        classes: outputs holding class probabilities -> class axis.
        sampling: "fed" or "graph" (see the module docstring).

    Returns:
        ``(model, perturber, samples input name, locations)``; the model returns ``y``
        (slot 0), ``y.mean`` and ``y.variance`` (squared units of ``y``) per float output.

    Raises:
        StrategyUnavailable: opset too old, an input with no free batch axis, a scalar
            location. TfueError: an unknown location or Dropout node.
    """
    return _tiled(info, spec, samples, seed, keep_samples, classes, share_prefix=False,
                  sampling=sampling)


def shared_prefix(info: ModelInfo, spec, samples: int, seed: int, keep_samples: bool,
                  classes: dict, sampling: str = "fed"):
    """Compute everything upstream of the location once; tile only the tensors that
    cross into the rest of the graph (the location and any skip connection).

    Args, returns and errors as :func:`batched`; also StrategyUnavailable when nothing
    is downstream of the location, an output does not depend on it, or it reads the
    model input directly (nothing to share).
    """
    return _tiled(info, spec, samples, seed, keep_samples, classes, share_prefix=True,
                  sampling=sampling)


def _location_tensors(info: ModelInfo, spec) -> list:
    """Names of the tensors ``spec`` perturbs (the chosen Dropout nodes' inputs)."""
    if isinstance(spec, MCDropout):
        chosen = set(spec.nodes) or {d.name for d in info.dropouts}
        return [d.input for d in info.dropouts if d.name in chosen]
    return [info.resolve_location(spec.at).name]


def _inner_nodes(node: gs.Node) -> list:
    """The nodes of ``node``'s subgraphs (If/Loop/Scan bodies), recursively."""
    return [n for g in node.subgraphs(recursive=True) for n in g.nodes]


def _reads(node: gs.Node) -> list:
    """Tensors ``node`` reads: its inputs, and what its subgraphs read from outside."""
    inner = _inner_nodes(node)
    if not inner:
        return list(node.inputs)
    local = {id(t) for g in node.subgraphs(recursive=True) for t in g.inputs}
    local |= {id(t) for n in inner for t in n.outputs}
    reads = list(node.inputs)
    for n in inner:
        reads.extend(t for t in n.inputs if id(t) not in local)
    return reads


def _cut(graph: gs.Graph, info: ModelInfo, spec) -> list:
    """Tensors that cross from the shared prefix into the sampled suffix.

    The suffix is every node downstream of a location; what it reads from
    elsewhere (the location itself, skip connections, inputs) crosses the cut.
    Shape computations and constants cross untiled. A node with subgraphs reads
    what they read from the enclosing graph; the returned suffix holds the ids of
    the graph's suffix nodes and of their subgraphs' nodes (all read tiled tensors).
    """
    tensors = graph.tensors()
    top = {}  # id(node or subgraph node) -> the graph's node it belongs to
    for node in graph.nodes:
        top[id(node)] = node
        for n in _inner_nodes(node):
            top[id(n)] = node
    starts = [tensors[name] for name in _location_tensors(info, spec)]
    suffix, frontier = {}, list(starts)
    while frontier:
        t = frontier.pop()
        for consumer in t.outputs:
            node = top.get(id(consumer))
            if node is not None and id(node) not in suffix:
                suffix[id(node)] = node
                frontier.extend(node.outputs)
    if not suffix:
        raise StrategyUnavailable("nothing is computed downstream of the location")
    made_in_suffix = {id(t) for n in suffix.values() for t in n.outputs}
    for out in graph.outputs:
        if id(out) not in made_in_suffix and all(out is not t for t in starts):
            name = info.output_names.get(out.name, out.name)
            raise StrategyUnavailable(f"output '{name}' does not depend on the location")
    crossing = _boundary(graph, suffix, info, tiled_only=True)
    if all(t.name in {i.name for i in info.inputs} for t in crossing):
        raise StrategyUnavailable("the location reads the model input directly: nothing to "
                                  "share (the batched strategy is the same)")
    inner = {id(n) for node in suffix.values() for n in _inner_nodes(node)}
    return crossing, set(suffix) | inner


def looped_suffix(info: ModelInfo, spec, samples: int, seed: int, keep_samples: bool,
                  classes: dict, sampling: str = "fed"):
    """The suffix of the shared-prefix strategy as a graph of its own, without slot 0.

    Its inputs are the tensors that cross the cut (computed once per input by
    :func:`cut_model`), the model inputs the suffix reads, the levels, the banks and
    the number of samples n; it tiles the crossing tensors n times (every slot a
    sample, sample k reading bank row k) and returns each output's stack of samples
    ``[n, *output shape]`` as ``y.samples`` and the first sample as ``y``. At level 0
    with n = 1 that is the unperturbed output, so the runner computes it once per
    input, and samples in chunks of any size (1 included) without re-running the
    prefix. Returns ``(model, perturber, samples input, locations, cut)``, ``cut``
    the names of the computed tensors that cross (the prefix's outputs).

    Raises:
        StrategyUnavailable: ``sampling`` is not "fed" (two graphs cannot be one export
            file), or as :func:`shared_prefix`.
    """
    if sampling != "fed":
        raise StrategyUnavailable("it runs as two graphs (prefix, then suffix per chunk); a "
                                  "file that runs alone needs one graph")
    return _tiled(info, spec, samples, seed, keep_samples, classes, share_prefix=True,
                  sampling=sampling, split=True)


def _boundary(graph: gs.Graph, suffix, info: ModelInfo, tiled_only: bool = False) -> list:
    """Every input-dependent tensor the suffix nodes (ids in ``suffix``) read but do not
    make, in graph order: the location, skip connections, shapes computed from the
    input. ``tiled_only``: only those that cross tiled, without what is one value for
    the whole batch (an If's condition, a Loop's trip count and condition, scalars: the
    same for every slot, since the prefix runs unperturbed)."""
    made = {id(t) for n in graph.nodes if id(n) in suffix for t in n.outputs}
    dynamic = info.dynamic_tensors
    found, seen = [], set()
    for node in graph.nodes:
        if id(node) not in suffix:
            continue
        reads = _reads(node)
        if tiled_only:
            reads = [t for t in reads[{"If": 1, "Loop": 2}.get(node.op, 0):]
                     if t.shape is None or len(t.shape) > 0]
        for t in reads:
            if isinstance(t, gs.Variable) and id(t) not in made and t.name in dynamic and \
                    id(t) not in seen:
                seen.add(id(t))
                found.append(t)
    return found


# Ops with multidirectional (numpy) broadcasting of every input (opset >= 7).
_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where",
                 "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or",
                 "Xor", "Mod", "BitShift"}


def _broadcasts(node: gs.Node, t: gs.Variable, top: set, made: set, locations: set,
                info: ModelInfo) -> bool:
    """Whether ``node`` (of the suffix) reads ``t`` (crossing the cut untiled) beside an
    input that holds every slot, of the same known rank: it then broadcasts ``t`` over
    the slots itself, and ``t`` need not be tiled for it."""
    if node.op not in _BROADCASTING or id(node) not in top:
        return False

    def rank(v):
        known = info.tensor_infos.get(v.name)
        return None if known is None or known.shape is None else len(known.shape)

    r = rank(t)
    return r is not None and any(
        v is not t and (id(v) in made or v.name in locations) and rank(v) == r
        for v in node.inputs)


def _check_tileable(info: ModelInfo, spec) -> None:
    """Refuse (StrategyUnavailable) a model the tiled strategies cannot serve: opset below
    MIN_OPSET, an input without a free batch axis, or a location of rank 0."""
    if info.opset < MIN_OPSET:  # the Estimator gives such models a converted copy when it can
        raise StrategyUnavailable(f"needs opset >= {MIN_OPSET} (dynamic Slice); the model has "
                                  f"opset {info.opset}")
    for inp in info.inputs:
        if inp.shape is None or len(inp.shape) == 0:
            raise StrategyUnavailable(f"input '{inp.name}' has no batch axis (rank unknown or 0)")
        if isinstance(inp.shape[0], int) and inp.shape[0] > 0:
            raise StrategyUnavailable(f"input '{inp.name}' has a fixed batch size "
                                      f"{inp.shape[0]}; tiling along the batch axis is impossible")
    for name in _location_tensors(info, spec):
        known = info.tensor_infos.get(name)
        if known is not None and known.shape is not None and len(known.shape) == 0:
            # Made from the tiled batch, a scalar mixes every slot: it has no batch axis.
            raise StrategyUnavailable(f"location '{info.output_names.get(name, name)}' is a "
                                      "scalar (rank 0): it has no batch axis to tile")


class _Slots:
    """The slot arithmetic of a tiled graph, handed to :class:`_Perturber`.

    The batch axis holds ``n1`` slots of the original batch, one after the other:
    n + 1 (slot 0 unperturbed, then the samples) or, with ``split``, n (every slot a
    sample). ``samples`` is the graph input n (int64 ``[1]``).
    """

    def __init__(self, b: Builder, samples: gs.Variable, n1, split: bool):
        """Slots of ``b``'s graph: ``samples`` the input n, ``n1`` the slot count."""
        self.b, self.samples, self.n1, self.split = b, samples, n1, split

    def mask(self, delta, like, dtype):
        """``delta`` (shaped like ``like``) times the slot mask [n+1, 1]: 0 for the
        unperturbed slot 0, 1 for the samples."""
        b = self.b
        ones = b.op("Tile", [b.const("one_f", np.array([1], dtype)), self.samples], dtype=dtype)
        mask = b.op("Concat", [b.const("zero_f", np.array([0], dtype)), ones], {"axis": 0},
                    dtype=dtype)
        mask = b.op("Reshape", [mask, b.ints("col", [-1, 1])], dtype=dtype)
        flat_shape = b.op("Concat", [self.n1, b.ints("minus1", [-1])], {"axis": 0},
                          dtype=np.int64)
        flat = b.op("Reshape", [delta, flat_shape], dtype=dtype)
        masked = b.op("Mul", [flat, mask], dtype=dtype)
        return b.op("Reshape", [masked, b.op("Shape", [like], dtype=np.int64)], dtype=dtype)

    def read_bank(self, bank, like, dtype):
        """The draws of ``bank`` ``[n, size]`` shaped like ``like``: slot k takes row k when
        split, else slot k+1 takes row k (slot 0, masked off, repeats row 0)."""
        b = self.b
        if not self.split:
            bank = b.op("Concat", [b.slice(bank, [0], [1], [0], dtype=dtype), bank],
                        {"axis": 0}, dtype=dtype)
        return b.op("Reshape", [bank, b.op("Shape", [like], dtype=np.int64)], dtype=dtype)

    def one_slot(self, t, dtype):
        """The first slot of ``t`` (the original batch, unperturbed unless split)."""
        b = self.b
        rows = b.op("Gather", [b.op("Shape", [t], dtype=np.int64), b.ints("idx0", [0])],
                    {"axis": 0}, dtype=np.int64)
        return b.slice(t, [0], b.op("Div", [rows, self.n1], dtype=np.int64), [0], dtype=dtype)


def _cut_inputs(graph: gs.Graph, info: ModelInfo, suffix, b: Builder) -> list:
    """Make the suffix a graph of its own (looped-suffix): what it reads from the prefix
    becomes an input, typed and ranked as inferred in the model; return those names."""
    inputs = {i.name for i in info.inputs}
    boundary = _boundary(graph, suffix, info)
    read = {t.name for t in boundary}
    graph.inputs = [i for i in graph.inputs if i.name in read]  # model inputs it reads
    cut = []
    for t in boundary:
        if t.name in inputs:
            continue
        known = info.tensor_infos.get(t.name)
        t.dtype = t.dtype or (np.dtype(known.dtype) if known is not None else None)
        # Its rank (and fixed sizes) as inferred in the model: onnxruntime's layout
        # optimisations (e.g. NCHWc convolutions) need the rank of what it is fed.
        t.shape = None if known is None or known.shape is None else [
            d if isinstance(d, int) and d > 0 else f"{b.prefix}cut{len(cut)}_{a}"
            for a, d in enumerate(known.shape)]
        t.inputs.clear()
        graph.inputs.append(t)
        cut.append(t.name)
    return cut


def _batch_size(b: Builder, t):
    """The size of ``t``'s axis 0, int64 ``[1]``."""
    return b.op("Gather", [b.op("Shape", [t], dtype=np.int64), b.ints("idx0", [0])],
                {"axis": 0}, dtype=np.int64)


def _tile_slots(b: Builder, t, slots):
    """``t`` tiled ``slots`` times along axis 0 (repeats [slots, 1, ..., 1] of its rank,
    whatever it is)."""
    rank_minus_1 = b.op("Sub", [b.op("Shape", [b.op("Shape", [t], dtype=np.int64)],
                                     dtype=np.int64), b.ints("one", [1])], dtype=np.int64)
    ones = b.op("ConstantOfShape", [rank_minus_1],
                {"value": gs.Constant(b.name("one"), np.array([1], np.int64))},
                dtype=np.int64)
    reps = b.op("Concat", [slots, ones], {"axis": 0}, dtype=np.int64)
    return b.op("Tile", [t, reps], dtype=t.dtype)


def _tile_crossing(graph: gs.Graph, info: ModelInfo, spec, b: Builder, n1, crossing,
                   suffix) -> dict:
    """Tile every tensor of ``crossing`` ``n1`` times for its consumers (in ``suffix``
    when it is not None); return model name -> tiled tensor."""
    tiled = {}
    locations = set(_location_tensors(info, spec))
    top = {id(n) for n in graph.nodes}
    made = set() if suffix is None else \
        {id(o) for n in graph.nodes if id(n) in suffix for o in n.outputs}
    for t in crossing:
        consumers = [n for n in t.outputs if suffix is None or id(n) in suffix]  # snapshot
        slots = n1
        if suffix is not None and t.name not in locations and all(
                _broadcasts(n, t, top, made, locations, info) for n in consumers):
            # A skip connection read only by broadcasting ops beside tensors of the suffix
            # (which hold every slot): at a batch of one, [1, ...] broadcasts over the
            # slots and needs no copy per slot; larger batches are tiled as usual.
            batch = _batch_size(b, t)
            slots = b.op("Where", [b.op("Greater", [batch, b.ints("one", [1])],
                                        dtype=np.bool_), n1, b.ints("one", [1])],
                         dtype=np.int64)
        x_t = _tile_slots(b, t, slots)
        rewire(consumers, t, x_t)
        tiled[t.name] = x_t
    return tiled


def _stacked(b: Builder, data, shp, samples_var, batch, name: str):
    """``data`` (n slots of a batch) reshaped to its stack of samples
    ``[n, batch, *rest of shp]``, named ``name``."""
    rest = b.slice(shp, [1], [INT64_MAX], [0], dtype=np.int64)
    sshape = b.op("Concat", [samples_var, batch, rest], {"axis": 0}, dtype=np.int64)
    return b.op("Reshape", [data, sshape], out=gs.Variable(name, dtype=data.dtype))


def _slot_outputs(graph: gs.Graph, info: ModelInfo, b: Builder, n1, samples_var,
                  split: bool) -> list:
    """The final outputs of a tiled graph: each output's first slot under its own name,
    and for each statistics output its stack of samples (``y.samples`` when split, the
    stacked name otherwise)."""
    stats = {o.name for o in stats_outputs(info)}
    final = []
    for orig, y_t in zip(info.outputs, list(graph.outputs)):
        shape = list(orig.shape) if orig.shape is not None else None
        shp = b.op("Shape", [y_t], dtype=np.int64)
        total = b.op("Gather", [shp, b.ints("idx0", [0])], {"axis": 0}, dtype=np.int64)
        batch = b.op("Div", [total, n1], dtype=np.int64)
        final.append(b.slice(y_t, [0], batch, [0], out=gs.Variable(orig.name, dtype=y_t.dtype,
                                                                   shape=shape)))
        if orig.name not in stats:
            continue
        if split:  # every slot a sample: the stack is the whole tiled output
            final.append(_stacked(b, y_t, shp, samples_var, batch,
                                  output_names(orig.name)["samples"]))
            continue
        flat = b.slice(y_t, batch, [INT64_MAX], [0], dtype=y_t.dtype)
        final.append(_stacked(b, flat, shp, samples_var, batch, stacked_name(b.prefix,
                                                                             orig.name)))
    return final


def _tiled(info, spec, samples, seed, keep_samples, classes, share_prefix: bool, sampling,
           split: bool = False):
    """The tiled strategies: batched (every input tiled), shared-prefix (only what crosses
    the cut tiled) and, with ``split``, looped-suffix's suffix; see their docstrings."""
    _check_tileable(info, spec)
    graph = gs.import_onnx(info.model)
    prefix = prefix_for(info.model)
    b = Builder(graph, prefix, info.opset)
    samples_var = gs.Variable(prefix + "samples", dtype=np.int64, shape=[1])
    # n + 1 slots (slot 0 unperturbed), or n when split (the suffix alone, all samples).
    n1 = samples_var if split else b.op("Add", [samples_var, b.ints("one", [1])],
                                        dtype=np.int64)
    slots = _Slots(b, samples_var, n1, split)
    perturber = _Perturber(b, seed, None if split else slots.mask, sampling, slots.read_bank,
                           slots.one_slot)
    # Tile n+1 times along the batch axis: every input, or only what crosses the cut.
    cut = []
    if share_prefix:
        crossing, suffix = _cut(graph, info, spec)
        if split:  # what the suffix reads from the prefix becomes an input of its own
            cut = _cut_inputs(graph, info, suffix, b)
    else:
        real_inputs = {i.name for i in info.inputs}
        crossing, suffix = [i for i in graph.inputs if i.name in real_inputs], None
    tiled = _tile_crossing(graph, info, spec, b, n1, crossing, suffix)
    tensors = {**graph.tensors(), **tiled}
    # Inner copies of the graph outputs take new names: the final outputs keep them.
    for out in graph.outputs:
        out.name = b.name("tiled_out")
    locations = _insert(graph, info, spec, perturber, tensors)
    graph.outputs = _slot_outputs(graph, info, b, n1, samples_var, split)
    model = finish(_with_sampling_inputs(graph, perturber, samples_var), info)
    if split:  # the runner reduces the samples itself: no statistics head
        return model, perturber, samples_var.name, locations, cut
    model = attach_stats(model, info, prefix, keep_samples, classes)
    return model, perturber, samples_var.name, locations


def _with_sampling_inputs(graph: gs.Graph, perturber: _Perturber, samples_var) -> gs.Graph:
    """``graph`` with the perturber's level and bank inputs and the number of samples
    appended to its inputs (the order the runner feeds them in)."""
    graph.inputs.extend(v for v, _ in perturber.level_inputs)
    graph.inputs.extend(v for v, _ in perturber.bank_inputs)
    graph.inputs.append(samples_var)
    return graph


def loop(info: ModelInfo, spec, samples: int, seed: int, keep_samples: bool, classes: dict,
         sampling: str = "fed"):
    """An ONNX Loop samples a perturbed copy of the model beside the unperturbed one.

    Args and returns as :func:`batched`; iteration k is sample k (it reads bank row k).
    Serves fixed batch sizes and opsets below MIN_OPSET, which the tiled strategies
    cannot.
    """
    prefix = prefix_for(info.model)
    perturbed, perturber, samples_var, locations = _perturbed_copy(info, spec, seed, sampling,
                                                                   prefix)
    stats = stats_outputs(info)
    body = _loop_body(perturbed.graph, prefix, stats)
    g = _beside_loop(info, perturbed.graph, body, prefix, samples_var.name, stats)
    model = keep_versions(helper.make_model(g), info)
    model = attach_stats(model, info, prefix, keep_samples, classes)
    return model, perturber, samples_var.name, locations


def _perturbed_copy(info: ModelInfo, spec, seed: int, sampling: str, prefix: str):
    """The loop strategy's perturbed copy of the model, exported on its own (no slot mask;
    iteration k reads bank row k): ``(model, perturber, samples input, locations)``."""
    graph = gs.import_onnx(info.model)
    b = Builder(graph, prefix, info.opset)
    iter_var = gs.Variable(prefix + "iter", dtype=np.int64, shape=[])

    def read_bank(bank, like, dtype):
        # Iteration k takes bank row k: the body reads the bank from the outer scope.
        row = b.op("Gather", [bank, iter_var], {"axis": 0}, dtype=dtype)
        return b.op("Reshape", [row, b.op("Shape", [like], dtype=np.int64)], dtype=dtype)

    perturber = _Perturber(b, seed, sampling=sampling, read_bank=read_bank)
    samples_var = gs.Variable(prefix + "samples", dtype=np.int64, shape=[1])
    locations = _insert(graph, info, spec, perturber, graph.tensors())
    _with_sampling_inputs(graph, perturber, samples_var)
    if perturber.bank_inputs:
        graph.inputs.append(iter_var)  # the body's own iteration number, not an outer input
    return finish(graph, info), perturber, samples_var, locations


def _loop_body(pg: onnx.GraphProto, prefix: str, stats: list) -> onnx.GraphProto:
    """The Loop body: the perturbed copy's nodes, every tensor they make renamed into the
    body, each iteration's sample of the ``stats`` outputs a scan output (the stack).

    graphsurgeon would copy the weights into a subgraph it exports, so the body is built
    directly: it reads the weights from the outer scope. Subgraphs (If, Loop, Scan) read
    the body's copies too.
    """
    it = prefix + "iter"
    body_prefix = prefix + "loop/"
    rename = {o: body_prefix + o for node in pg.node for o in node.output if o}
    body_nodes = [prefixed_node(node, rename, body_prefix) for node in pg.node]
    cond_in, cond_out = prefix + "cond_in", prefix + "cond_out"
    body_nodes.append(helper.make_node("Identity", [cond_in], [cond_out]))
    body_outputs = [helper.make_tensor_value_info(cond_out, onnx.TensorProto.BOOL, [])]
    for o in stats:
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(o.dtype))
        sample = body_prefix + "sample/" + o.name
        body_nodes.append(helper.make_node("Identity", [rename.get(o.name, o.name)], [sample]))
        body_outputs.append(helper.make_tensor_value_info(sample, elem, None))
    # Loop before opset 11 needs a loop-carried value; a dummy one is harmless later too.
    carry_in, carry_out = prefix + "carry_in", prefix + "carry_out"
    body_nodes.append(helper.make_node("Identity", [carry_in], [carry_out]))
    body_outputs.insert(1, helper.make_tensor_value_info(carry_out, onnx.TensorProto.INT64, []))
    return helper.make_graph(
        body_nodes, prefix + "body",
        [helper.make_tensor_value_info(it, onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info(cond_in, onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info(carry_in, onnx.TensorProto.INT64, [])], body_outputs)


def _beside_loop(info: ModelInfo, pg: onnx.GraphProto, body: onnx.GraphProto, prefix: str,
                 samples: str, stats: list) -> onnx.GraphProto:
    """The outer graph of the loop strategy: the original model (unperturbed) plus a Loop
    of ``body`` run ``samples`` times, whose scan outputs are the stacked outputs; it
    takes the new initializers and inputs of the perturbed copy ``pg``."""
    g = onnx.GraphProto()
    g.CopyFrom(info.model.graph)
    original = {x.name for x in info.model.graph.initializer}
    g.initializer.extend(i for i in pg.initializer if i.name not in original)
    g.input.extend(i for i in pg.input
                   if i.name not in {x.name for x in g.input} | {prefix + "iter"})
    trip, true = prefix + "trip_count", prefix + "true"
    g.initializer.append(onnx.numpy_helper.from_array(np.array(True), true))
    g.initializer.append(onnx.numpy_helper.from_array(np.array([], np.int64), prefix + "scalar"))
    g.node.append(helper.make_node("Reshape", [samples, prefix + "scalar"], [trip],
                                   name=prefix + "trip_count"))
    g.initializer.append(onnx.numpy_helper.from_array(np.array(0, np.int64), prefix + "carry"))
    stacks = [stacked_name(prefix, o.name) for o in stats]
    g.node.append(helper.make_node("Loop", [trip, true, prefix + "carry"],
                                   [prefix + "carry_final"] + stacks, name=prefix + "Loop",
                                   body=body))
    g.output.extend(helper.make_tensor_value_info(
        s, helper.np_dtype_to_tensor_dtype(np.dtype(o.dtype)), None) for s, o in zip(stacks, stats))
    return g


def location_probe(info: ModelInfo, draws) -> onnx.ModelProto | None:
    """The original model cut down to what computes the locations of ``draws``, which
    become its outputs: run once per input shape, it gives the banks' shapes.

    Returns None when every location is a model input (its shape is the feed's).
    """
    inputs = {i.name for i in info.inputs}
    return cut_model(info, {d.location: d.dtype for d in draws if d.location not in inputs})


def cut_model(info: ModelInfo, wanted: dict) -> onnx.ModelProto | None:
    """``info``'s model cut down to what computes the tensors ``wanted`` (name ->
    dtype), which become its outputs in that order (the looped-suffix strategy's
    prefix, the location probe); None when ``wanted`` is empty."""
    if not wanted:
        return None
    graph = gs.import_onnx(info.model)
    tensors = graph.tensors()
    outs = []
    for name, dtype in wanted.items():
        t = tensors[name]
        t.dtype = dtype or t.dtype
        outs.append(t)
    graph.outputs = outs
    graph.cleanup().toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    del model.graph.value_info[:]
    return keep_versions(model, info)


BUILDERS = {"looped-suffix": looped_suffix, "shared-prefix": shared_prefix, "batched": batched,
            "loop": loop}
