"""Shared pieces of every uncertainty-graph builder.

A builder turns the model into a *sampling graph*: for every float output ``y``
it returns ``y`` (unperturbed) and a stack of samples ``[n, *y.shape]``. The
statistics head (``attach_stats``) is the same for every method: it reduces the
stack to ``y.mean`` and ``y.variance`` (and ``y.samples`` and, for class
probabilities, ``y.mean_entropy``) computed on the change from ``y``, so a
perturbation of 0 gives exactly ``y`` and a variance of exactly 0.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import TfueError
from ..model import (FLOAT_TYPES, ModelInfo, node_inputs, rename_tensor, reorder_nodes,
                     topological_order, toposorted)

# graphsurgeon warns on stdout about models it reads (duplicate node names, ...);
# library code never prints, and problems tfue cares about become TfueErrors.
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR

SAMPLING = ("fed", "graph")
SAMPLING_NOTE = ("fed: numpy PCG64 draws seeded by SeedSequence([seed, node, sample]), made for "
                 "one batch item and repeated over the location's batch axis (see 'draws'); "
                 "sample k is the same in any chunk, strategy, input order or batch position")
PARALLEL_DRAWS = 1 << 20  # from this many values a bank is drawn on every core
BANK_CACHE_BYTES = 256 * 1024**2  # drawn banks kept for the next input of the same shape
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min
OUTPUT_KEYS = ("mean", "variance", "samples", "mean_entropy")


class StrategyUnavailable(Exception):
    """A strategy cannot be built for this model; the message says why (one line).

    Not a TfueError: the Estimator catches it and tries the next strategy; a user
    sees it only when no strategy is left.
    """


def output_names(name: str) -> dict:
    """The uncertainty graph's output names for a model output ``name``: ``{"output":
    name, "mean": "name.mean", "variance": ..., "samples": ..., "mean_entropy": ...}``."""
    names = {"output": name}
    names.update({key: f"{name}.{key}" for key in OUTPUT_KEYS})
    return names


@dataclasses.dataclass(frozen=True)
class Draw:
    """One random node of a ``fed`` graph: the bank input the runner must feed.

    The bank has shape ``[n, size]``: row k holds sample k's draws for ``location``
    (a tensor of the original model) at the real input, flattened (``size`` elements):
    the draws of one batch item repeated over the location's batch axis, when the
    runner found one (``Estimator.batch_axes``), else draws for the whole tensor.
    """

    input: str  # the graph input that takes the bank
    location: str  # the original model's tensor the draws perturb
    kind: str  # "normal" (noise eps) or "uniform" (dropout u in [0, 1))
    dtype: np.dtype
    index: int  # the node's number, 1, 2, ... in build order (the same in every strategy)


def draw_bank(draw: Draw, seed: int, shape, first: int, count: int,
              batch_axis: int | None = None) -> np.ndarray:
    """Rows ``first .. first+count-1`` of ``draw``'s bank, shape ``[count, prod(shape)]``.

    Row k depends only on (seed, draw.index, k): a generator is seeded per sample
    with ``SeedSequence([seed, index, k])``, so any chunk of samples is drawn alike.
    With ``batch_axis``, row k holds the draws for ONE batch item (``shape`` without
    that axis), the same for every item of the batch: an item gets the draws it gets
    alone, whatever its position and the batch size.

    Args:
        draw: the random node.
        seed: the user's seed (any int; negative ones are taken modulo 2**64).
        shape: the location's shape at the real input.
        first: index of the first sample.
        count: number of samples.
        batch_axis: the location's axis that holds the batch items, or None: draws
            for the whole tensor (an item's draws then depend on its position).

    Returns:
        A C-contiguous array of ``draw.dtype``; row k is sample k's draws for a
        location of ``shape``, flattened.
    """
    shape = tuple(int(d) for d in shape)
    item = item_draws(draw, seed, _item_shape(shape, batch_axis), first, count)
    return broadcast_items(item, shape, batch_axis)


def _item_shape(shape: tuple, batch_axis: int | None) -> tuple:
    """``shape`` without ``batch_axis``: the shape of one batch item's draws."""
    if batch_axis is None:
        return shape
    return shape[:batch_axis] + shape[batch_axis + 1:]


def item_draws(draw: Draw, seed: int, shape, first: int, count: int) -> np.ndarray:
    """Samples ``first .. first+count-1`` of ``draw`` for a tensor of ``shape``:
    ``[count, *shape]`` of ``draw.dtype``, sample k from ``SeedSequence([seed, index, k])``."""
    shape = tuple(int(d) for d in shape)
    dtype = np.dtype(draw.dtype)
    gen_dtype = dtype if dtype in (np.float32, np.float64) else np.dtype(np.float32)
    out = np.empty((count, *shape), dtype)

    def fill(row):
        rng = np.random.default_rng(np.random.SeedSequence(
            [int(seed) % 2**64, draw.index, first + row]))
        if draw.kind == "normal":
            if gen_dtype == dtype and shape:  # straight into the bank, no copy
                rng.standard_normal(dtype=gen_dtype, out=out[row])
            else:
                out[row] = rng.standard_normal(shape, dtype=gen_dtype)
        else:
            u = rng.random(shape, dtype=gen_dtype)
            # float16 rounds values near 1 up to 1.0: keep u in [0, 1).
            out[row] = np.minimum(u.astype(dtype), np.nextafter(dtype.type(1), dtype.type(0)))

    workers = min(count, os.cpu_count() or 1)
    if workers > 1 and out.size >= PARALLEL_DRAWS:
        # Each sample has its own generator and numpy fills arrays without the GIL:
        # samples are drawn side by side, the same numbers as one by one.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fill, range(count)))
    else:
        for row in range(count):
            fill(row)
    return out


def broadcast_items(item: np.ndarray, shape, batch_axis: int | None) -> np.ndarray:
    """Per-item draws ``[count, *item shape]`` repeated over ``batch_axis`` of
    ``shape`` (None: ``item`` already has ``shape``), flattened to ``[count, size]``."""
    shape = tuple(int(d) for d in shape)
    count = item.shape[0]
    if batch_axis is not None:
        item = np.broadcast_to(np.expand_dims(item, batch_axis + 1), (count, *shape))
    return np.ascontiguousarray(item).reshape(count, -1)


@dataclasses.dataclass
class UncertaintyGraph:
    """A built uncertainty graph and what the runner needs to drive it.

    ``model`` returns, per float output ``y``, ``y`` (unperturbed), ``y.mean`` and
    ``y.variance`` (squared units of ``y``) over the samples, ``y.samples``
    ``[n, *shape]`` when ``keep_samples`` and ``y.mean_entropy`` (nats) for class
    probabilities (``classes``). Gray box: ``samples_input`` (int64 ``[1]``),
    ``level_inputs`` and, with ``sampling="fed"``, one bank input per ``draws``
    entry are graph inputs (see :meth:`feeds`); None / empty for transforms and
    ensembles, whose sample count is fixed (``samples``).
    """

    model: onnx.ModelProto
    strategy: str
    stats_outputs: list  # original names of the outputs that get mean/variance
    samples_input: str | None  # overridable sample count (None: fixed, = samples)
    level_inputs: dict  # input name -> default level (0-d array of the tensor's dtype)
    locations: list  # what is perturbed: tensor names, Dropout nodes, transforms, members
    samples: int
    seed: int
    keep_samples: bool
    classes: dict  # output name -> class axis, for outputs that are class probabilities
    sampling: str | None = None  # "fed": draws are inputs (``draws``); "graph": Random* ops;
    # None: nothing random (transforms, ensembles)
    draws: list = dataclasses.field(default_factory=list)  # Draw per random node ("fed")
    # Relative noise: location -> the axis whose every index gets its own spread (the
    # item axis; None: the whole tensor's spread).
    relative_axes: dict = dataclasses.field(default_factory=dict)
    # Drawn banks, kept for the next input of the same shape; graphs built for one
    # runner may share one dict (every strategy draws the same banks).
    bank_cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
    # Bytes of drawn banks kept across inputs (None: BANK_CACHE_BYTES); the runner sets
    # an eighth of its max_memory.
    bank_limit: int | None = dataclasses.field(default=None, repr=False, compare=False)
    # looped-suffix: ``model`` is the suffix; ``prefix`` (the model cut at ``cut``) runs
    # once per input and its outputs, the tensors named in ``cut``, are fed to it.
    prefix: onnx.ModelProto | None = dataclasses.field(default=None, repr=False)
    cut: list = dataclasses.field(default_factory=list)

    def feeds(self, samples: int | None = None, level: float | None = None, first: int = 0,
              shapes: dict | None = None, batch_axes: dict | None = None) -> dict:
        """The graph's own inputs: the number of samples (default N), the level of
        every perturbation (default: each one's own) and, for a ``fed`` graph, the
        banks of samples ``first .. first+samples-1``.

        Args:
            samples: samples this run makes (default N).
            level: sigma or rate for every perturbation (default: each one's own).
            first: index of the run's first sample among the N.
            shapes: location name -> its shape at the real input (every ``draw``'s
                location); needed when ``draws`` is not empty.
            batch_axes: location name -> the axis of its shape that holds the batch
                items (each item gets the same draws, those it gets alone), or None
                for draws over the whole tensor; a location left out gets None.

        Returns:
            Input name -> array.

        Raises:
            ValueError: a ``fed`` graph without ``shapes``.
        """
        feeds = {}
        n = self.samples if samples is None else samples
        if self.samples_input is not None:
            feeds[self.samples_input] = np.array([n], dtype=np.int64)
        for name, default in self.level_inputs.items():
            feeds[name] = default if level is None else np.asarray(level, dtype=default.dtype)
        if self.draws:
            if shapes is None:
                raise ValueError("this graph's draws are inputs: give the locations' shapes")
            axes = batch_axes or {}
            for d in self.draws:
                feeds[d.input] = self.bank(d, shapes[d.location], first, n,
                                           axes.get(d.location))
        return feeds

    def bank(self, draw: Draw, shape, first: int, count: int,
             batch_axis: int | None = None) -> np.ndarray:
        """Rows ``first .. first+count-1`` of ``draw``'s bank for a location of ``shape``
        (see :func:`draw_bank`; ``batch_axis``: the axis of the batch items, or None).

        The draws of all N samples for one item (or the whole tensor, without
        ``batch_axis``) are made once per shape and kept (up to ``bank_limit`` bytes,
        default BANK_CACHE_BYTES, in
        all, oldest dropped first), so inputs of one shape share the cost of drawing;
        a larger bank is drawn chunk by chunk.
        """
        shape = tuple(int(d) for d in shape)
        item = _item_shape(shape, batch_axis)
        key = (self.seed, self.samples, draw.index, draw.kind, np.dtype(draw.dtype).str, item)
        size = self.samples * int(np.prod(item, dtype=np.int64)) * np.dtype(draw.dtype).itemsize
        limit = BANK_CACHE_BYTES if self.bank_limit is None else self.bank_limit
        if first + count > self.samples or size > limit:
            return draw_bank(draw, self.seed, shape, first, count, batch_axis)
        cache = self.bank_cache
        if key not in cache:
            while cache and sum(b.nbytes for b in cache.values()) + size > limit:
                del cache[next(iter(cache))]
            cache[key] = item_draws(draw, self.seed, item, 0, self.samples)
        return broadcast_items(cache[key][first:first + count], shape, batch_axis)

    def frozen(self) -> onnx.ModelProto:
        """The graph with N and the levels fixed: only the model's own inputs remain.

        Raises:
            ValueError: for a ``fed`` graph (its draws are inputs; build one with
                ``sampling="graph"`` for a standalone file).
        """
        if self.draws:
            raise ValueError("a graph with fed draws cannot be frozen; build it with "
                             "sampling='graph'")
        return freeze_inputs(self.model, self.feeds())


class Builder:
    """Thin helper that adds prefixed nodes to a graphsurgeon graph (the style of
    onnx-graphsurgeon's examples: ``graph.layer``), as the model's ``opset`` wants.

    Every tensor and node it makes is named ``{prefix}{hint}_{k}``, k counting up, so
    the same calls in the same order give the same graph.
    """

    def __init__(self, graph: gs.Graph, prefix: str, opset: int):
        """Add to ``graph``; names under ``prefix`` (one the model does not use)."""
        self.graph = graph
        self.prefix = prefix
        self.opset = opset
        self._count = 0

    def name(self, hint: str) -> str:
        """A fresh name: ``{prefix}{hint}_{k}``."""
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, hint: str, value) -> gs.Constant:
        """A constant holding ``value`` (its own dtype and shape), freshly named."""
        return gs.Constant(self.name(hint), np.asarray(value))

    def ints(self, hint: str, values) -> gs.Constant:
        """An int64 constant holding ``values`` (a list: 1-D; an int: a scalar)."""
        return self.const(hint, np.array(values, dtype=np.int64))

    def op(self, op_type: str, inputs, attrs=None, dtype=None, shape=None, out=None):
        """Append an ``op_type`` node reading ``inputs``; return its one output: ``out``,
        or a new Variable of ``dtype`` and ``shape`` (None: unknown)."""
        out = out if out is not None else gs.Variable(self.name(op_type.lower()), dtype=dtype,
                                                      shape=shape)
        node = gs.Node(op_type, name=self.name(op_type), attrs=attrs or {},
                       inputs=list(inputs), outputs=[out])
        self.graph.nodes.append(node)
        return out

    # Ops whose axes moved from an attribute to an input at some opset.
    _AXES_INPUT_FROM = {"ReduceMean": 18, "ReduceMax": 18, "ReduceSum": 13, "Unsqueeze": 13,
                        "Squeeze": 13}

    def with_axes(self, op_type, x, axes, attrs=None, dtype=None, out=None):
        """An op taking ``axes`` (ints, or None: its default) as attribute or input,
        as the model's opset wants (ReduceMean, ReduceMax, ReduceSum, (Un)squeeze)."""
        attrs = dict(attrs or {})
        inputs = [x]
        if axes is not None:
            if self.opset >= self._AXES_INPUT_FROM[op_type]:
                inputs.append(self.ints("axes", list(axes)))
            else:
                attrs["axes"] = list(axes)
        return self.op(op_type, inputs, attrs, dtype=dtype, out=out)

    def reduce_mean(self, x, axes=None, keepdims=1, dtype=None, out=None):
        """The mean of ``x`` over ``axes`` (None: every axis), dims kept by default."""
        return self.with_axes("ReduceMean", x, axes, {"keepdims": keepdims}, dtype, out)

    def slice(self, x, starts, ends, axes, steps=None, dtype=None, out=None):
        """Slice with starts/ends as int64 tensors or int lists, axes (and steps) as
        int lists (opset >= 10: dynamic Slice)."""
        def as_tensor(v, hint):
            return v if isinstance(v, gs.Tensor) else self.ints(hint, v)
        inputs = [x, as_tensor(starts, "starts"), as_tensor(ends, "ends"),
                  self.ints("axes", axes)]
        if steps is not None:
            inputs.append(self.ints("steps", steps))
        return self.op("Slice", inputs, dtype=dtype, out=out)

    def flip(self, x, axis: int, dtype=None):
        """``x`` reversed along ``axis``: a Slice with step -1 (opset >= 10)."""
        return self.slice(x, [-1], [INT64_MIN], [axis], steps=[-1], dtype=dtype)

    def split(self, x, parts: int, dtype=None) -> list:
        """Split ``x`` into ``parts`` equal pieces along axis 0 (its size must divide);
        the pieces, of ``dtype``."""
        outs = [gs.Variable(self.name("part"), dtype=dtype) for _ in range(parts)]
        attrs = {"axis": 0}
        if self.opset >= 18:
            attrs["num_outputs"] = parts
        node = gs.Node("Split", name=self.name("Split"), attrs=attrs, inputs=[x], outputs=outs)
        self.graph.nodes.append(node)
        return outs

    def stack(self, xs, dtype=None, out=None):
        """Stack tensors of one shape along a new axis 0: ``[len(xs), *shape]``."""
        parts = [self.with_axes("Unsqueeze", x, [0], dtype=dtype) for x in xs]
        return self.op("Concat", parts, {"axis": 0}, dtype=dtype, out=out)


def prefix_for(*models: onnx.ModelProto) -> str:
    """A name prefix no tensor or node of ``models`` (top-level graphs) starts with:
    'tfue/', else 'tfue1/', 'tfue2/', ..."""
    names = set()
    for model in models:
        g = model.graph
        for n in g.node:
            names.update(n.output)
            names.add(n.name)
        names.update(i.name for i in g.input)
        names.update(i.name for i in g.initializer)
    prefix, k = "tfue/", 1
    while any(n.startswith(prefix) for n in names):
        prefix, k = f"tfue{k}/", k + 1
    return prefix


@dataclasses.dataclass
class Isolation:
    """A model as the builders see it: every graph output a tensor of its own.

    ``info`` is the model with an Identity before each output that is also a graph
    input or an initializer, or is read inside the graph; such an output is renamed
    ``temp`` (temp name -> the model's name). Outputs that do not depend on the input
    (constants, shapes) are left out (``constant``, the model's names) and so is every
    listing of a name after its first (``repeated``, the model's names, one per
    further listing): builders see each output once, so its statistics are made
    once. :func:`restore_outputs` adds them back and gives every output its model
    name again: the uncertainty graph has exactly the model's input and output names
    (an output listed twice is listed twice, its statistics once).
    """

    info: ModelInfo
    original: ModelInfo
    temp: dict
    constant: list
    prefix: str
    repeated: list = dataclasses.field(default_factory=list)

    def names(self, name: str) -> list:
        """The builders' names of the model's output ``name`` (one per listing); empty
        for an output that does not depend on the input."""
        temps = [t for t, o in self.temp.items() if o == name]
        if temps:
            return temps
        return [] if name in self.constant else [name]


def _free_prefix(base: str, *models: onnx.ModelProto) -> str:
    """``base`` or ``base`` numbered, so no name of ``models`` (outputs too) starts with it."""
    used = set()
    for model in models:
        g = model.graph
        used.update(o for n in g.node for o in n.output)
        used.update(n.name for n in g.node)
        used.update(i.name for i in list(g.input) + list(g.output) + list(g.initializer))
    prefix, k = base, 1
    while any(u.startswith(prefix) for u in used):
        prefix, k = f"{base[:-1]}{k}/", k + 1
    return prefix


def isolate_outputs(info: ModelInfo, members=(), prefix: str | None = None) -> Isolation:
    """Give every graph output of ``info``'s model a tensor of its own (see Isolation),
    in a copy whose nodes are topologically sorted (counting the reads of subgraphs).

    Args:
        info: the model as the user gave it (never changed; a copy is edited).
        members: further models treated the same way (ensemble members: same outputs).
        prefix: name prefix of the added tensors (default: a free ``tfue_io/``).

    Returns:
        The Isolation of ``info``; with ``members``, a list of them, ``info``'s first.
        A model that needs nothing isolated and is already sorted is used as it is.
    """
    prefix = prefix or _free_prefix("tfue_io/", info.model, *(m.model for m in members))
    plan, temp, constant, repeated = _output_plan(info, prefix)
    orders = [topological_order(m.model.graph.node) for m in (info, *members)]
    if all(p == "keep" for p in plan) and all(o == sorted(o) for o in orders):
        same = [Isolation(m, m, {}, [], prefix) for m in (info, *members)]
        return same if members else same[0]
    result = []
    for m, order in zip((info, *members), orders):
        isolated = ModelInfo(_isolated_copy(m.model, order, plan, prefix), m.path)
        isolated.output_names = dict(temp)
        # Same tensors (plus the copies of outputs): no second shape inference.
        infos = dict(m.tensor_infos)
        for name, orig in temp.items():
            if orig in infos:
                infos[name] = dataclasses.replace(infos[orig], name=name)
        isolated.__dict__["tensor_infos"] = infos
        result.append(Isolation(isolated, m, dict(temp), list(constant), prefix,
                                list(repeated)))
    return result if members else result[0]


def _output_plan(info: ModelInfo, prefix: str):
    """What becomes of each graph output of ``info``'s model, by position: ``"keep"``,
    ``"isolate"`` (an input, initializer or tensor read inside: an Identity copies it)
    or ``"drop"`` (listed again, or not depending on the input). Returns ``(plan, temp,
    constant, repeated)`` as in :class:`Isolation`."""
    g = info.model.graph
    fixed = {i.name for i in g.input} | {i.name for i in g.initializer}
    read = {r for n in g.node for r in node_inputs(n)}
    dynamic = info.dynamic_tensors
    seen, temp, constant, repeated = set(), {}, [], []
    plan = []
    for k, out in enumerate(g.output):
        if out.name in seen:  # listed again: the first listing stands for it
            plan.append("drop")
            repeated.append(out.name)
        elif out.name not in dynamic:
            plan.append("drop")
            constant.append(out.name)
        elif out.name in fixed or out.name in read:
            plan.append("isolate")
            temp[f"{prefix}out{k}/{out.name}"] = out.name
        else:
            plan.append("keep")
        seen.add(out.name)
    return plan, temp, constant, repeated


def _isolated_copy(model: onnx.ModelProto, order: list, plan: list,
                   prefix: str) -> onnx.ModelProto:
    """A copy of ``model`` with its nodes in ``order`` and its outputs as ``plan`` says
    (an Identity ``{prefix}isolate{k}`` before each isolated output)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if order != sorted(order):  # graphsurgeon links tensors in the order it reads nodes
        reorder_nodes(copy.graph, order)
    outputs = []
    for k, (out, how) in enumerate(zip(model.graph.output, plan)):
        if how == "drop":
            continue
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(out)
        if how == "isolate":
            vi.name = f"{prefix}out{k}/{out.name}"
            copy.graph.node.append(onnx.helper.make_node(
                "Identity", [out.name], [vi.name], name=f"{prefix}isolate{k}"))
        outputs.append(vi)
    del copy.graph.output[:]
    copy.graph.output.extend(outputs)
    return copy


def _names_in(graph: onnx.GraphProto) -> set:
    """Every tensor name ``graph`` defines or reads (subgraph reads included)."""
    names = {i.name for i in list(graph.input) + list(graph.initializer)}
    for n in graph.node:
        names.update(node_inputs(n))
        names.update(n.output)
    return names


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs is read or returned."""
    while True:
        used = {o.name for o in graph.output} | {r for n in graph.node for r in node_inputs(n)}
        live = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(live) == len(graph.node):
            return
        del graph.node[:]
        graph.node.extend(live)


def restore_outputs(model: onnx.ModelProto, iso: Isolation) -> onnx.ModelProto:
    """Give the uncertainty graph built from ``iso.info`` the model's own output names.

    An output that is a graph input is returned as that input (its unperturbed
    output is the input); a name listed twice is listed twice again, right after its
    first listing (its statistics once); outputs that do not depend on the input are
    computed beside the graph by copies of the nodes that make them. Returns
    ``model``, changed in place.
    """
    if not iso.temp and not iso.constant and not iso.repeated:
        return model
    g = model.graph
    inputs = {i.name: i for i in g.input}
    keys = [""] + [f".{k}" for k in OUTPUT_KEYS]
    originals = {o.name for o in iso.original.model.graph.output}
    done = {o.name for o in g.output if o.name in originals}  # kept as they were
    for temp, orig in iso.temp.items():
        if orig in inputs or orig in done:  # the input itself, or a name listed again
            existing = {o.name: o for o in g.output}
            for i, out in enumerate(list(g.output)):
                for key in keys:
                    if out.name != temp + key:
                        continue
                    if key == "" and orig in inputs:
                        source = inputs[orig]
                    elif orig in done:
                        source = existing.get(orig + key, out)
                    else:  # statistics of a returned input: named as the model's
                        rename_tensor(g, temp + key, orig + key)
                        break
                    vi = onnx.ValueInfoProto()
                    vi.CopyFrom(source)
                    vi.name = orig + key
                    g.output[i].CopyFrom(vi)
        else:
            if orig in _names_in(g):
                rename_tensor(g, orig, f"{iso.prefix}inner/{orig}")
            for key in keys:
                rename_tensor(g, temp + key, orig + key)
        done.add(orig)
    if iso.constant:
        _add_constant_outputs(g, iso)
    _drop_dead_nodes(g)
    outputs = _in_model_order(g, iso)
    del g.output[:]
    g.output.extend(outputs)
    return model


def _in_model_order(g: onnx.GraphProto, iso: Isolation) -> list:
    """``g``'s outputs in the model's order (statistics right after their output), a
    name the model lists twice listed twice again; fresh ValueInfoProtos."""
    order = {}  # each name at its first listing
    for k, o in enumerate(iso.original.model.graph.output):
        order.setdefault(o.name, k)
    rank = {o.name: (order.get(o.name.rsplit(".", 1)[0], len(order)) if o.name not in order
                     else order[o.name]) for o in g.output}
    outputs = sorted(g.output, key=lambda o: rank[o.name])
    outputs = [onnx.ValueInfoProto(name=o.name, type=o.type, doc_string=o.doc_string)
               for o in outputs]
    for name in iso.repeated:  # the same tensor again, after its last listing so far
        at = max(k for k, o in enumerate(outputs) if o.name == name)
        again = onnx.ValueInfoProto()
        again.CopyFrom(outputs[at])
        outputs.insert(at + 1, again)
    return outputs


def _add_constant_outputs(g: onnx.GraphProto, iso: Isolation) -> None:
    """Copy the nodes that make the outputs not depending on the input into ``g``."""
    original = iso.original.model.graph
    made = {o: n for n in original.node for o in n.output if o}
    inits = {i.name: i for i in original.initializer}
    inputs = {i.name for i in g.input}
    wanted, needed = list(iso.constant), []
    seen = set()
    while wanted:
        name = wanted.pop()
        if name in seen or name in inputs:
            continue
        seen.add(name)
        if name in made:
            needed.append(made[name])
            wanted.extend(node_inputs(made[name]))
    needed_ids = {id(n) for n in needed}
    copied = f"{iso.prefix}const/"
    taken = _names_in(g)
    for name in iso.constant:
        if name in taken:
            rename_tensor(g, name, f"{iso.prefix}inner/{name}")

    def new(name):
        return name if (not name or name in inputs) else copied + name

    for name in sorted(seen):  # a set: sorted, so an export is the same file every run
        if name in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[name])
            t.name = new(name)
            g.initializer.append(t)
    made_here = seen | {o for n in needed for o in n.output}
    rename = {name: new(name) for name in made_here if name}
    for n in toposorted([n for n in original.node if id(n) in needed_ids]):
        g.node.append(prefixed_node(n, rename, copied))
    listed = {o.name for o in g.output}
    for k, out in enumerate(original.output):
        if out.name in iso.constant and out.name not in listed:
            g.node.append(onnx.helper.make_node("Identity", [new(out.name)], [out.name],
                                                name=f"{copied}out{k}"))
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(out)
            g.output.append(vi)
            listed.add(out.name)


def float_dtype(info: ModelInfo, name: str):
    """The numpy dtype (float16, float32 or float64) of tensor ``name`` of ``info``.

    Raises:
        TfueError: the tensor is not a float tensor of known type, or is bfloat16.
    """
    dt = info.tensor_infos.get(name)
    if dt is None or dt.dtype not in FLOAT_TYPES.values():
        raise TfueError(f"tensor '{name}' is not a float tensor",
                        "perturb a float tensor listed by 'tfue inspect'")
    if dt.dtype == "bfloat16":
        raise TfueError(f"tensor '{name}' is bfloat16, which tfue cannot perturb yet",
                        "pick a float32 or float16 location")
    return np.dtype(dt.dtype)


def stats_outputs(info: ModelInfo) -> list:
    """The model outputs that get statistics: the float ones (float16/32/64; bfloat16
    and integer outputs are returned unperturbed only), as TensorInfos."""
    return [o for o in info.outputs if o.dtype in FLOAT_TYPES.values() and o.dtype != "bfloat16"]


def replace_tensor(graph: gs.Graph, old: gs.Variable, new: gs.Variable, skip=()):
    """Make every consumer of ``old`` (and the graph outputs) read ``new`` instead.

    ``skip`` holds ids of nodes that keep reading ``old``.
    """
    # A snapshot: rewiring edits old.outputs.
    rewire([n for n in old.outputs if id(n) not in skip], old, new)
    for i, t in enumerate(graph.outputs):
        if t is old:
            # Keep the graph output's name: the inner tensor takes a new one.
            new_name, old.name = old.name, new.name
            new.name = new_name
            graph.outputs[i] = new


def rewire(nodes, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make each of ``nodes`` read ``new`` wherever it reads ``old`` (in place; pass a
    list, not ``old.outputs`` itself, which the rewiring edits)."""
    for node in nodes:
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new


def clone_nodes(graph: gs.Graph, nodes, mapping: dict, prefix: str, const_prefix=None):
    """Append copies of ``nodes`` (topologically sorted) to ``graph``.

    ``mapping`` maps id(tensor) -> replacement for tensors read from outside the
    copied nodes (e.g. the input); every tensor the nodes make is copied under
    ``prefix``. Constants are shared, or copied under ``const_prefix`` when given
    (ensemble members have weights of their own).

    Control flow is copied whole: a node's subgraphs (If branches, Loop and Scan
    bodies, nested ones too) are copied as well; what they read from the enclosing
    scopes goes through ``mapping`` (so a copied branch reads the copies of outer
    tensors), and their own inputs and tensors are named under ``prefix``, so every
    name stays unique in the model.

    Args:
        graph: the graph the copies join.
        nodes: graphsurgeon nodes of a graph (or of ``graph`` itself), in order.
        mapping: id(tensor) -> tensor, for tensors the copies read instead.
        prefix: name prefix of every copied node and tensor (the model's names
            must not start with it: see :func:`prefix_for`).
        const_prefix: name prefix for copied constants; None shares them.

    Returns:
        ``mapping``, extended with id(original tensor) -> copy for every tensor the
        nodes (and their subgraphs) make.
    """
    graph.nodes.extend(_cloned(nodes, mapping, prefix, const_prefix, [0]))
    return mapping


def _cloned(nodes, mapping: dict, prefix: str, const_prefix, counter: list) -> list:
    """Copies of ``nodes`` (see :func:`clone_nodes`); ``counter`` numbers the copied
    nodes across every scope, so node names stay unique too."""
    def read(t):
        if id(t) in mapping:
            return mapping[id(t)]
        if isinstance(t, gs.Constant) and const_prefix is not None:
            mapping[id(t)] = renamed_constant(t, const_prefix + t.name)
            return mapping[id(t)]
        return t

    copies = []
    for node in nodes:
        inputs = [read(t) for t in node.inputs]
        outputs = []
        for t in node.outputs:
            if t.is_empty():  # an optional output left out
                outputs.append(gs.Variable.empty())
                continue
            copy = gs.Variable(prefix + t.name, dtype=t.dtype)
            mapping[id(t)] = copy
            outputs.append(copy)
        attrs = {}
        for key, value in node.attrs.items():
            if isinstance(value, gs.Graph):
                value = _cloned_graph(value, mapping, prefix, const_prefix, counter)
            elif isinstance(value, (list, tuple)) and value and \
                    all(isinstance(v, gs.Graph) for v in value):
                value = [_cloned_graph(v, mapping, prefix, const_prefix, counter)
                         for v in value]
            attrs[key] = value
        copies.append(gs.Node(node.op, name=f"{prefix}{node.name or node.op}#{counter[0]}",
                              attrs=attrs, inputs=inputs, outputs=outputs, domain=node.domain))
        counter[0] += 1
    return copies


def _cloned_graph(sub: gs.Graph, mapping: dict, prefix: str, const_prefix,
                  counter: list) -> gs.Graph:
    """A copy of subgraph ``sub``: its inputs and tensors under ``prefix``, its reads of
    enclosing scopes through ``mapping``."""
    inputs = []
    for t in sub.inputs:
        copy = gs.Variable(prefix + t.name, dtype=t.dtype, shape=t.shape)
        mapping[id(t)] = copy
        inputs.append(copy)
    nodes = _cloned(sub.nodes, mapping, prefix, const_prefix, counter)
    outputs = []
    for t in sub.outputs:  # a body may return an outer tensor or a constant as it is
        if id(t) not in mapping and isinstance(t, gs.Constant) and const_prefix is not None:
            mapping[id(t)] = renamed_constant(t, const_prefix + t.name)
        out = mapping.get(id(t), t)
        if isinstance(out, gs.Variable) and out.dtype is None:
            out.dtype, out.shape = t.dtype, t.shape  # subgraph outputs need their types
        outputs.append(out)
    return gs.Graph(nodes=nodes, inputs=inputs, outputs=outputs, name=prefix + (sub.name or ""),
                    doc_string=sub.doc_string, opset=sub.opset,
                    import_domains=sub.import_domains)


def prefixed_node(node: onnx.NodeProto, rename: dict, prefix: str) -> onnx.NodeProto:
    """A copy of ``node`` for a graph built at proto level (the loop strategy's body).

    Its inputs and outputs are renamed by ``rename`` (name -> new name; names not
    in it are kept), its name gets ``prefix``. Its subgraphs (GRAPH and GRAPHS
    attributes, nested too) read the renamed outer tensors, and the names they
    define themselves (inputs, initializers, node outputs) get ``prefix``, so every
    name stays unique in the model.

    Args:
        node: the node to copy (not changed).
        rename: outer tensor name -> the copy's name.
        prefix: prefix of the copy's node name and of its subgraphs' own names.

    Returns:
        The copy.
    """
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = prefix + node.name if node.name else ""
    copy.input[:] = [rename.get(i, i) if i else i for i in node.input]
    copy.output[:] = [rename.get(o, o) if o else o for o in node.output]
    _prefix_subgraphs(copy, rename, prefix)
    return copy


def _prefix_subgraphs(node: onnx.NodeProto, rename: dict, prefix: str) -> None:
    """Prefix the scopes of ``node``'s subgraphs (see :func:`_prefix_scope`), in place."""
    for attr in node.attribute:
        subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else \
            list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []
        for sub in subs:
            _prefix_scope(sub, rename, prefix)


def _prefix_scope(g: onnx.GraphProto, rename: dict, prefix: str) -> None:
    """Rename, in place, subgraph ``g``'s own names under ``prefix`` and its reads of
    enclosing scopes by ``rename`` (a local name shadows an outer one)."""
    local = {i.name for i in g.input} | {i.name for i in g.initializer}
    local |= {s.values.name for s in g.sparse_initializer}
    local |= {o for n in g.node for o in n.output if o}
    scope = dict(rename)
    scope.update({name: prefix + name for name in local})

    def new(name):
        return scope.get(name, name) if name else name

    g.name = prefix + g.name
    for n in g.node:
        n.name = prefix + n.name if n.name else ""
        n.input[:] = [new(i) for i in n.input]
        n.output[:] = [new(o) for o in n.output]
        _prefix_subgraphs(n, scope, prefix)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = new(vi.name)
    for t in g.initializer:
        t.name = new(t.name)
    for s in g.sparse_initializer:
        s.values.name = new(s.values.name)


def renamed_constant(t: gs.Constant, name: str) -> gs.Constant:
    """A copy of constant ``t`` named ``name``, made without reading its values: a
    weight in external data stays a reference to its file (graphsurgeon exports the
    TensorProto it imported, renamed, so the copy needs a TensorProto of its own)."""
    lazy = t._values
    if isinstance(lazy, gs.ir.tensor.LazyValues) and \
            not isinstance(lazy, gs.ir.tensor.SparseValues):
        proto = onnx.TensorProto()
        proto.CopyFrom(lazy.tensor)
        proto.name = name
        return gs.Constant(name, gs.ir.tensor.LazyValues(proto), data_location=t.data_location)
    return gs.Constant(name, t.values, data_location=t.data_location)


def entropy(b: Builder, p, axis, dtype):
    """-sum(p log p) in nats along ``axis`` (an int or a list of axes) of probabilities
    ``p`` (float ``dtype``), axes removed; 0 log 0 counts as 0 (p clipped at tiny)."""
    tiny = b.const("tiny", np.array(np.finfo(dtype).tiny, dtype))
    logp = b.op("Log", [b.op("Max", [p, tiny], dtype=dtype)], dtype=dtype)
    plogp = b.op("Mul", [p, logp], dtype=dtype)
    axes = [axis] if np.ndim(axis) == 0 else list(axis)
    total = b.with_axes("ReduceSum", plogp, axes, {"keepdims": 0}, dtype=dtype)
    return b.op("Neg", [total], dtype=dtype)


def stacked_name(prefix: str, name: str) -> str:
    """The sampling graph's name for the stack of samples ``[n, *shape]`` of output
    ``name``, under the builder's ``prefix`` (an inner tensor: :func:`attach_stats`
    consumes it)."""
    return f"{prefix}stacked/{name}"


def attach_stats(model: onnx.ModelProto, info: ModelInfo, prefix: str, keep_samples: bool,
                 classes: dict) -> onnx.ModelProto:
    """Turn a sampling graph (outputs ``y`` and its stack) into the uncertainty graph.

    Per statistics output ``y`` (float, the stack ``[n, *shape]`` named by
    :func:`stacked_name`): ``y.mean`` and ``y.variance`` (population, squared units of
    ``y``) over axis 0, computed on the change from ``y`` (so level 0 gives exactly
    ``y`` and 0), ``y.samples`` when ``keep_samples``, and ``y.mean_entropy`` (nats)
    for the outputs in ``classes`` (name -> class axis or axes of ``y``). The stacks
    stop being outputs. Returns ``model``, changed in place.

    The head is built with graphsurgeon as a graph of its own and spliced in, so
    it also fits the loop strategy, whose Loop body gs must not re-export.
    """
    for k, o in enumerate(stats_outputs(info)):
        dt = np.dtype(o.dtype)
        shape = list(o.shape) if o.shape is not None else None
        names = output_names(o.name)
        g = gs.Graph(opset=_opset(model))
        stacked = gs.Variable(stacked_name(prefix, o.name), dtype=dt)
        y = gs.Variable(o.name, dtype=dt, shape=shape)
        g.inputs = [stacked, y]
        b = Builder(g, f"{prefix}head{k}/", _opset(model))
        change = b.op("Sub", [stacked, y], dtype=dt)
        mean_change = b.reduce_mean(change, axes=[0], keepdims=0, dtype=dt)
        mean = b.op("Add", [y, mean_change], out=gs.Variable(names["mean"], dt, shape))
        centred = b.op("Sub", [change, mean_change], dtype=dt)
        var = b.reduce_mean(b.op("Mul", [centred, centred], dtype=dt), axes=[0], keepdims=0,
                            out=gs.Variable(names["variance"], dt, shape))
        outs = [mean, var]
        if keep_samples:
            sshape = None if shape is None else ["tfue_samples"] + shape
            outs.append(b.op("Identity", [stacked],
                             out=gs.Variable(names["samples"], dt, sshape)))
        if o.name in classes:
            axis = classes[o.name]
            ent = entropy(b, stacked, axis + 1 if np.ndim(axis) == 0 else [a + 1 for a in axis],
                          dt)
            outs.append(b.reduce_mean(ent, axes=[0], keepdims=0,
                                      out=gs.Variable(names["mean_entropy"], dt)))
        g.outputs = outs
        head = gs.export_onnx(g, do_type_check=False).graph
        model.graph.node.extend(head.node)
        model.graph.initializer.extend(head.initializer)
        model.graph.output.extend(head.output)
    # The stacks were outputs only to be found; the head consumes them now.
    stacks = {stacked_name(prefix, o.name) for o in stats_outputs(info)}
    kept = [o for o in model.graph.output if o.name not in stacks]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    return model


def _opset(model: onnx.ModelProto) -> int:
    """The default domain's opset of ``model``."""
    return next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))


def finish(graph: gs.Graph, info: ModelInfo) -> onnx.ModelProto:
    """Export ``graph`` (cleaned up, sorted, value_info dropped: tiled shapes go stale)
    with ``info``'s IR version and opset imports (:func:`keep_versions`)."""
    graph.cleanup().toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    # Shapes annotated on inner tensors go stale when the batch is tiled ("batch" is
    # now (n+1)·batch); onnxruntime infers them itself.
    del model.graph.value_info[:]
    return keep_versions(model, info)


def freeze_inputs(model: onnx.ModelProto, values: dict) -> onnx.ModelProto:
    """A copy of ``model`` with the graph inputs named in ``values`` (name -> array or
    scalar, its dtype the input's) turned into initializers: ``tfue export``'s sample
    count and levels."""
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    kept = [i for i in frozen.graph.input if i.name not in values]
    del frozen.graph.input[:]
    frozen.graph.input.extend(kept)
    for name, value in values.items():
        frozen.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
    return frozen


def keep_versions(model: onnx.ModelProto, info: ModelInfo) -> onnx.ModelProto:
    """Give ``model`` the original's opset imports and IR version (at least 4, which
    lets initializers be overridable inputs), so the installed onnxruntime reads it."""
    model.ir_version = max(info.model.ir_version, 4)
    del model.opset_import[:]
    model.opset_import.extend(info.model.opset_import)
    return model


# --- ranks for onnxruntime's control flow -----------------------------------------
# onnxruntime's Scan (and Loop / If, in places) needs a shape - a rank at least - on
# every output of its subgraphs, which it infers from what the node reads from the
# enclosing graph. A rewrite that reshapes to a computed shape (``Reshape(x,
# Shape(t))``: the draws, the slot mask) leaves onnx's shape inference without a
# rank, and everything downstream with it: a body whose outputs have a type but no
# shape then stops running ("Subgraph must have the shape set for all outputs").

def _known_shapes(g: onnx.GraphProto, outer: dict) -> dict:
    """Name -> (elem_type, TensorShapeProto or None) of the typed tensors of ``g``."""
    shapes = dict(outer)
    for init in g.initializer:
        shp = onnx.TensorShapeProto()
        for d in init.dims:
            shp.dim.add().dim_value = d
        shapes[init.name] = (init.data_type, shp)
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.elem_type:
            shapes[vi.name] = (tt.elem_type, tt.shape if tt.HasField("shape") else None)
    return shapes


def _computed_rank(node: onnx.NodeProto, shapes: dict):
    """(elem_type, rank) of ``node``'s first output when its rank follows from the
    length of a shape tensor (Reshape, Expand, ConstantOfShape), else None."""
    def length(name):  # the length of a 1-D shape tensor, if known
        shp = shapes.get(name, (0, None))[1]
        if shp is not None and len(shp.dim) == 1 and shp.dim[0].HasField("dim_value"):
            return shp.dim[0].dim_value
        return None

    if node.op_type == "ConstantOfShape" and node.input:
        k = length(node.input[0])
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        elem = value.data_type if value is not None else onnx.TensorProto.FLOAT
        return None if k is None else (elem, k)
    if node.op_type not in ("Reshape", "Expand") or len(node.input) < 2:
        return None
    elem, data = shapes.get(node.input[0], (0, None))
    k = length(node.input[1])
    if not elem or k is None:
        return None
    if node.op_type == "Expand":
        if data is None:
            return None
        k = max(k, len(data.dim))
    return elem, k


def _rank_only(name: str, elem: int, rank: int) -> onnx.ValueInfoProto:
    """A value_info of ``name`` that says its element type and rank, no sizes."""
    vi = onnx.helper.make_tensor_value_info(name, elem, [None] * rank)
    for d in vi.type.tensor_type.shape.dim:
        d.Clear()
    return vi


def _hint_ranks(g: onnx.GraphProto, ig: onnx.GraphProto, outer: dict) -> int:
    """Add rank-only value_info to ``g`` (and its subgraphs) for outputs whose rank
    ``ig`` (``g`` after shape inference) leaves unknown but a shape tensor's length
    gives; give subgraph outputs that have no shape the rank inference found.
    Returns how many hints were added."""
    shapes = _known_shapes(ig, outer)
    added = 0
    hinted = {vi.name for vi in g.value_info}
    for node, inode in zip(g.node, ig.node):
        out = node.output[0] if node.output else ""
        if out and out not in hinted and shapes.get(out, (0, None))[1] is None:
            found = _computed_rank(inode, shapes)
            if found is not None:
                g.value_info.append(_rank_only(out, *found))
                hinted.add(out)
                added += 1
        for attr, iattr in zip(node.attribute, inode.attribute):
            subs = [(attr.g, iattr.g)] if attr.type == onnx.AttributeProto.GRAPH else \
                list(zip(attr.graphs, iattr.graphs))
            for sub, isub in subs:
                added += _hint_ranks(sub, isub, shapes)
                for o, io in zip(sub.output, isub.output):
                    tt, itt = o.type.tensor_type, io.type.tensor_type
                    if o.type.HasField("tensor_type") and not tt.HasField("shape") and \
                            itt.HasField("shape") and itt.elem_type == tt.elem_type:
                        tt.shape.CopyFrom(_rank_only(o.name, tt.elem_type, len(itt.shape.dim))
                                          .type.tensor_type.shape)
                        added += 1
    return added


def keep_ranks(model: onnx.ModelProto, rounds: int = 8) -> onnx.ModelProto:
    """Give ``model``'s tensors the ranks its rewrite hid from shape inference, and
    every subgraph output (If branches, Loop and Scan bodies) a rank, so that
    onnxruntime runs the control flow of the rewritten model as it runs the
    original's. Only ranks are written (every dimension unknown): tiling changes
    the batch dimension, never a rank. Edits ``model`` in place and returns it;
    a model without subgraphs, or one onnx's shape inference cannot read, is
    returned unchanged.

    Args:
        model: an uncertainty graph (or any model).
        rounds: at most this many passes of shape inference (each finds the ranks
            the previous one's hints made known).

    Returns:
        ``model``.
    """
    if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for n in model.graph.node for a in n.attribute):
        return model
    for _ in range(rounds):
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # custom ops, protos over 2 GB: onnxruntime infers what it can
            return model
        if not _hint_ranks(model.graph, inferred.graph, {}):
            break
    return model
