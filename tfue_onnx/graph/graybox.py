"""Gray-box sampling graphs: noise or dropout at a tensor, or MC-dropout.

The sampling happens inside the graph: ``RandomNormalLike`` for noise, a mask
of plain ops for dropout (onnxruntime may remove or ignore a ``Dropout`` node).
The number of samples and the levels are inputs of the graph (the runner feeds
them; ``tfue export`` freezes them to constants), so one session serves every
chunk size and level, and level 0 must give back the original model
(``verify.py`` checks it).

- ``shared-prefix``: everything upstream of the location runs once; only the
  tensors that cross into the rest (the location, skip connections) are tiled
  n+1 times along the batch axis, so only the suffix runs on the big batch.
- ``batched``: the inputs are tiled n+1 times along the batch axis.
- ``loop``: an ONNX Loop runs a perturbed copy of the model n times beside one
  unperturbed copy (fixed-shape models, opsets below 10).

In both tiled strategies slot 0 is kept unperturbed (the perturbation is
multiplied by a 0/1 slot mask) and slots 1..n are the samples.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from ..convert import MIN_OPSET
from ..errors import TfueError, closest
from ..model import ModelInfo
from ..perturb import Dropout, MCDropout, Noise
from .builder import (INT64_MAX, Builder, StrategyUnavailable, attach_stats, check_subgraphs,
                      finish, float_dtype, keep_versions, prefix_for, replace_tensor,
                      stacked_name, stats_outputs)

class _Perturber:
    """Inserts perturbations into a graph; optionally masked to spare slot 0."""

    def __init__(self, b: Builder, seed: int, slot_mask=None):
        self.b = b
        self.seed = seed
        self.slot_mask = slot_mask  # callable(delta, like) -> masked delta, or None
        self.level_inputs = []  # (gs.Variable, default value) pairs
        self._random = 0

    def _level(self, hint: str, value: float, dtype) -> gs.Variable:
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

    def delta_noise(self, t, dtype, sigma_var, relative: bool):
        b = self.b
        eps = b.op("RandomNormalLike", [t], {"mean": 0.0, "scale": 1.0, "seed": self._seed()},
                   dtype=dtype)
        delta = b.op("Mul", [eps, sigma_var], dtype=dtype)
        if relative:
            mean = b.reduce_mean(t, dtype=dtype)
            centred = b.op("Sub", [t, mean], dtype=dtype)
            var = b.reduce_mean(b.op("Mul", [centred, centred], dtype=dtype), dtype=dtype)
            delta = b.op("Mul", [delta, b.op("Sqrt", [var], dtype=dtype)], dtype=dtype)
        return delta

    def dropped(self, t, dtype, rate_var):
        """t * keep / (1 - rate), keep ~ Bernoulli(1 - rate), built from plain ops."""
        b = self.b
        u = b.op("RandomUniformLike", [t], {"low": 0.0, "high": 1.0, "seed": self._seed()},
                 dtype=dtype)
        # keep = not (u < rate): at rate 0 nothing is dropped, whatever u is.
        keep = b.op("Not", [b.op("Less", [u, rate_var], dtype=np.bool_)], dtype=np.bool_)
        one = b.const("one", np.array(1, dtype=dtype))
        scale = b.op("Div", [one, b.op("Sub", [one, rate_var], dtype=dtype)], dtype=dtype)
        kept = b.op("Cast", [keep], {"to": helper.np_dtype_to_tensor_dtype(dtype)}, dtype=dtype)
        factor = b.op("Mul", [kept, scale], dtype=dtype)
        return b.op("Mul", [t, factor], dtype=dtype)

    def apply(self, graph: gs.Graph, t: gs.Variable, kind: str, level_var, dtype,
              relative=False, out: gs.Variable | None = None) -> gs.Variable:
        """Perturb ``t``; rewire its consumers (or fill ``out``) with the result."""
        b = self.b
        consumers_before = {id(n) for n in t.outputs}
        if kind == "noise":
            delta = self.delta_noise(t, dtype, level_var, relative)
            if self.slot_mask is not None:
                delta = self.slot_mask(delta, t, dtype)
            result = b.op("Add", [t, delta], dtype=dtype, out=out)
        else:
            dropped = self.dropped(t, dtype, level_var)
            if self.slot_mask is not None:
                delta = self.slot_mask(b.op("Sub", [dropped, t], dtype=dtype), t, dtype)
                result = b.op("Add", [t, delta], dtype=dtype, out=out)
            else:
                result = b.op("Identity", [dropped], dtype=dtype, out=out)
        if out is None:
            skip = {id(n) for n in t.outputs} - consumers_before  # our own new nodes
            replace_tensor(graph, t, result, skip=skip)
        return result


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
        perturber.apply(graph, t, kind, level, dtype,
                        relative=isinstance(spec, Noise) and spec.mode == "relative")
        return [cand.name]
    if isinstance(spec, MCDropout):
        return _activate_dropouts(graph, info, spec, perturber)
    raise TfueError(f"unsupported perturbation {spec!r}", "use Noise, Dropout or MCDropout")


def _activate_dropouts(graph, info: ModelInfo, spec: MCDropout, perturber: _Perturber):
    known = {d.name: d for d in info.dropouts}
    if not known:
        raise TfueError("the model has no Dropout node, so MC-dropout has nothing to switch on",
                        "use --method dropout to apply dropout at any tensor (infer-dropout)")
    chosen = list(spec.nodes) or list(known)
    for name in chosen:
        if name not in known:
            near = closest(name, known)
            raise TfueError(f"unknown Dropout node '{name}'",
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
        perturber.apply(graph, data, "dropout", level, dtype, out=out)
    graph.cleanup()
    return chosen


def batched(info: ModelInfo, spec, samples: int, seed: int, keep_samples: bool, classes: dict):
    """Tile the inputs n+1 times along the batch axis; slot 0 stays unperturbed."""
    return _tiled(info, spec, samples, seed, keep_samples, classes, share_prefix=False)


def shared_prefix(info: ModelInfo, spec, samples: int, seed: int, keep_samples: bool,
                  classes: dict):
    """Compute everything upstream of the location once; tile only the tensors that
    cross into the rest of the graph (the location and any skip connection)."""
    return _tiled(info, spec, samples, seed, keep_samples, classes, share_prefix=True)


def _location_tensors(info: ModelInfo, spec) -> list:
    if isinstance(spec, MCDropout):
        chosen = set(spec.nodes) or {d.name for d in info.dropouts}
        return [d.input for d in info.dropouts if d.name in chosen]
    return [info.resolve_location(spec.at).name]


def _cut(graph: gs.Graph, info: ModelInfo, spec) -> list:
    """Tensors that cross from the shared prefix into the sampled suffix.

    The suffix is every node downstream of a location; what it reads from
    elsewhere (the location itself, skip connections, inputs) crosses the cut.
    Shape computations and constants cross untiled.
    """
    tensors = graph.tensors()
    starts = [tensors[name] for name in _location_tensors(info, spec)]
    suffix, frontier = set(), list(starts)
    while frontier:
        t = frontier.pop()
        for node in t.outputs:
            if id(node) not in suffix:
                suffix.add(id(node))
                frontier.extend(node.outputs)
    if not suffix:
        raise StrategyUnavailable("nothing is computed downstream of the location")
    made_in_suffix = {id(t) for n in graph.nodes if id(n) in suffix for t in n.outputs}
    for out in graph.outputs:
        if id(out) not in made_in_suffix and all(out is not t for t in starts):
            raise StrategyUnavailable(f"output '{out.name}' does not depend on the location")
    dynamic = info.dynamic_tensors
    crossing, seen = [], set()
    for node in graph.nodes:
        if id(node) not in suffix:
            continue
        for t in node.inputs:
            if isinstance(t, gs.Variable) and id(t) not in made_in_suffix and \
                    t.name in dynamic and id(t) not in seen:
                seen.add(id(t))
                crossing.append(t)
    if all(t.name in {i.name for i in info.inputs} for t in crossing):
        raise StrategyUnavailable("the location reads the model input directly: nothing to "
                                  "share (the batched strategy is the same)")
    return crossing, suffix


def _tiled(info, spec, samples, seed, keep_samples, classes, share_prefix: bool):
    if info.opset < MIN_OPSET:  # the Runner gives such models a converted copy when it can
        raise StrategyUnavailable(f"needs opset >= {MIN_OPSET} (dynamic Slice); the model has "
                                  f"opset {info.opset}")
    for inp in info.inputs:
        if inp.shape is None or len(inp.shape) == 0:
            raise StrategyUnavailable(f"input '{inp.name}' has no batch axis (rank unknown or 0)")
        if isinstance(inp.shape[0], int) and inp.shape[0] > 0:
            raise StrategyUnavailable(f"input '{inp.name}' has a fixed batch size "
                                      f"{inp.shape[0]}; tiling along the batch axis is impossible")
    graph = gs.import_onnx(info.model)
    prefix = prefix_for(info.model)
    b = Builder(graph, prefix, info.opset)
    samples_var = gs.Variable(prefix + "samples", dtype=np.int64, shape=[1])
    n1 = b.op("Add", [samples_var, b.ints("one", [1])], dtype=np.int64)  # n + 1 slots

    # Slot mask [n+1, 1]: 0 for the unperturbed slot 0, 1 for the samples.
    def slot_mask(delta, like, dtype):
        ones = b.op("Tile", [b.const("one_f", np.array([1], dtype)), samples_var], dtype=dtype)
        mask = b.op("Concat", [b.const("zero_f", np.array([0], dtype)), ones], {"axis": 0},
                    dtype=dtype)
        mask = b.op("Reshape", [mask, b.ints("col", [-1, 1])], dtype=dtype)
        flat_shape = b.op("Concat", [n1, b.ints("minus1", [-1])], {"axis": 0}, dtype=np.int64)
        flat = b.op("Reshape", [delta, flat_shape], dtype=dtype)
        masked = b.op("Mul", [flat, mask], dtype=dtype)
        return b.op("Reshape", [masked, b.op("Shape", [like], dtype=np.int64)], dtype=dtype)

    perturber = _Perturber(b, seed, slot_mask)

    # Tile n+1 times along the batch axis: every input, or only what crosses the cut.
    if share_prefix:
        crossing, suffix = _cut(graph, info, spec)
    else:
        real_inputs = {i.name for i in info.inputs}
        crossing, suffix = [i for i in graph.inputs if i.name in real_inputs], None
    tiled = {}
    for t in crossing:
        consumers = [n for n in t.outputs if suffix is None or id(n) in suffix]  # snapshot
        # Repeats [n+1, 1, ..., 1] of the tensor's rank, whatever it is.
        rank_minus_1 = b.op("Sub", [b.op("Shape", [b.op("Shape", [t], dtype=np.int64)],
                                         dtype=np.int64), b.ints("one", [1])], dtype=np.int64)
        ones = b.op("ConstantOfShape", [rank_minus_1],
                    {"value": gs.Constant(b.name("one"), np.array([1], np.int64))},
                    dtype=np.int64)
        reps = b.op("Concat", [n1, ones], {"axis": 0}, dtype=np.int64)
        x_t = b.op("Tile", [t, reps], dtype=t.dtype)
        for node in consumers:
            for i, inp in enumerate(node.inputs):
                if inp is t:
                    node.inputs[i] = x_t
        tiled[t.name] = x_t

    tensors = {**graph.tensors(), **tiled}
    # Inner copies of the graph outputs take new names: the final outputs keep them.
    for out in graph.outputs:
        out.name = b.name("tiled_out")
    locations = _insert(graph, info, spec, perturber, tensors)

    stats = {o.name for o in stats_outputs(info)}
    final = []
    for orig, y_t in zip(info.outputs, list(graph.outputs)):
        shape = list(orig.shape) if orig.shape is not None else None
        shp = b.op("Shape", [y_t], dtype=np.int64)
        total = b.op("Gather", [shp, b.ints("idx0", [0])], {"axis": 0}, dtype=np.int64)
        batch = b.op("Div", [total, n1], dtype=np.int64)
        y = b.slice(y_t, [0], batch, [0], out=gs.Variable(orig.name, dtype=y_t.dtype,
                                                            shape=shape))
        final.append(y)
        if orig.name not in stats:
            continue
        flat = b.slice(y_t, batch, [INT64_MAX], [0], dtype=y_t.dtype)
        rest = b.slice(shp, [1], [INT64_MAX], [0], dtype=np.int64)
        sshape = b.op("Concat", [samples_var, batch, rest], {"axis": 0}, dtype=np.int64)
        final.append(b.op("Reshape", [flat, sshape], out=gs.Variable(
            stacked_name(prefix, orig.name), dtype=y_t.dtype)))
    graph.outputs = final
    graph.inputs.extend(v for v, _ in perturber.level_inputs)
    graph.inputs.append(samples_var)
    model = finish(graph, info)
    model = attach_stats(model, info, prefix, keep_samples, classes)
    return model, perturber, samples_var.name, locations


def loop(info: ModelInfo, spec, samples: int, seed: int, keep_samples: bool, classes: dict):
    """An ONNX Loop samples a perturbed copy of the model beside the unperturbed one."""
    check_subgraphs(info.model, "the loop strategy")
    # 1. A perturbed copy of the model, exported on its own (no slot mask).
    graph = gs.import_onnx(info.model)
    prefix = prefix_for(info.model)
    b = Builder(graph, prefix, info.opset)
    perturber = _Perturber(b, seed)
    samples_var = gs.Variable(prefix + "samples", dtype=np.int64, shape=[1])
    locations = _insert(graph, info, spec, perturber, graph.tensors())
    graph.inputs.extend(v for v, _ in perturber.level_inputs)
    graph.inputs.append(samples_var)
    perturbed = finish(graph, info)
    pg = perturbed.graph

    # 2. The body: the perturbed nodes, every tensor they make renamed into the body
    # (graphsurgeon would copy the weights into a subgraph it exports, so this part
    # is built directly; the body reads the weights from the outer scope).
    body_prefix = prefix + "loop/"
    rename = {o: body_prefix + o for node in pg.node for o in node.output if o}
    body_nodes = []
    for node in pg.node:
        n = onnx.NodeProto()
        n.CopyFrom(node)
        n.name = body_prefix + node.name if node.name else ""
        n.input[:] = [rename.get(i, i) for i in node.input]
        n.output[:] = [rename.get(o, o) for o in node.output]
        body_nodes.append(n)
    it, cond_in, cond_out = prefix + "iter", prefix + "cond_in", prefix + "cond_out"
    body_nodes.append(helper.make_node("Identity", [cond_in], [cond_out]))
    body_outputs = [helper.make_tensor_value_info(cond_out, onnx.TensorProto.BOOL, [])]
    stats = stats_outputs(info)
    for o in stats:  # each iteration's sample becomes a scan output: the stack
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(o.dtype))
        sample = body_prefix + "sample/" + o.name
        body_nodes.append(helper.make_node("Identity", [rename.get(o.name, o.name)], [sample]))
        body_outputs.append(helper.make_tensor_value_info(sample, elem, None))
    # Loop before opset 11 needs a loop-carried value; a dummy one is harmless later too.
    carry_in, carry_out = prefix + "carry_in", prefix + "carry_out"
    body_nodes.append(helper.make_node("Identity", [carry_in], [carry_out]))
    body_outputs.insert(1, helper.make_tensor_value_info(carry_out, onnx.TensorProto.INT64, []))
    body = helper.make_graph(
        body_nodes, prefix + "body",
        [helper.make_tensor_value_info(it, onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info(cond_in, onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info(carry_in, onnx.TensorProto.INT64, [])], body_outputs)

    # 3. The outer graph: the original model (unperturbed) plus the Loop.
    g = onnx.GraphProto()
    g.CopyFrom(info.model.graph)
    original = {x.name for x in info.model.graph.initializer}
    g.initializer.extend(i for i in pg.initializer if i.name not in original)
    g.input.extend(i for i in pg.input if i.name not in {x.name for x in g.input})
    trip, true = prefix + "trip_count", prefix + "true"
    g.initializer.append(onnx.numpy_helper.from_array(np.array(True), true))
    g.initializer.append(onnx.numpy_helper.from_array(np.array([], np.int64), prefix + "scalar"))
    g.node.append(helper.make_node("Reshape", [samples_var.name, prefix + "scalar"], [trip],
                                   name=prefix + "trip_count"))
    g.initializer.append(onnx.numpy_helper.from_array(np.array(0, np.int64), prefix + "carry"))
    stacks = [stacked_name(prefix, o.name) for o in stats]
    g.node.append(helper.make_node("Loop", [trip, true, prefix + "carry"],
                                   [prefix + "carry_final"] + stacks, name=prefix + "Loop",
                                   body=body))
    g.output.extend(helper.make_tensor_value_info(
        s, helper.np_dtype_to_tensor_dtype(np.dtype(o.dtype)), None) for s, o in zip(stacks, stats))
    model = keep_versions(helper.make_model(g), info)
    model = attach_stats(model, info, prefix, keep_samples, classes)
    return model, perturber, samples_var.name, locations


BUILDERS = {"shared-prefix": shared_prefix, "batched": batched, "loop": loop}
