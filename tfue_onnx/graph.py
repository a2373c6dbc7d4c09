"""Build the uncertainty graph: the one place that rewrites models.

An uncertainty graph takes the model's original inputs and returns, for every
float output ``y``: ``y`` itself (unperturbed), ``y.mean`` and ``y.variance``
over the samples (and ``y.samples`` on request). Sampling happens inside the
graph, so the graph the runner executes is the graph ``tfue export`` writes.

Two extra inputs carry defaults (initializers that are also graph inputs), so a
plain onnxruntime session can ignore them and the runner can override them:
``<prefix>samples`` (int64[1], the number of samples) and one level input per
perturbation (sigma or rate). Setting every level to 0 must reproduce the
original model exactly; ``verify.py`` checks that.

Strategies (fastest first; ``build`` raises StrategyUnavailable when one cannot
apply to a model, and verification decides about the rest):

- ``batched``: the inputs are tiled n+1 times along the batch axis; slot 0 is
  kept unperturbed (the perturbation is multiplied by a 0/1 slot mask), slots
  1..n are the samples.
- ``loop``: an ONNX Loop runs a perturbed copy of the model n times beside one
  unperturbed copy, merging samples with Welford's update; works for
  fixed-shape models.

A ``shared-prefix`` strategy (compute the part before the location once) slots
in as a third builder.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from .errors import TfueError
from .model import FLOAT_TYPES, ModelInfo
from .perturb import Dropout, MCDropout, Noise

STRATEGIES = ("batched", "loop")
INT64_MAX = np.iinfo(np.int64).max
OUTPUT_SUFFIXES = (".mean", ".variance", ".samples")


class StrategyUnavailable(Exception):
    """A strategy cannot be built for this model; the message says why."""


@dataclasses.dataclass
class UncertaintyGraph:
    """A built uncertainty graph and what the runner needs to drive it."""

    model: onnx.ModelProto
    strategy: str
    stats_outputs: list  # original names of the outputs that get mean/variance
    samples_input: str
    level_inputs: dict  # input name -> default level (0-d array of the tensor's dtype)
    locations: list  # tensor names (or Dropout node names) perturbed
    samples: int
    seed: int
    keep_samples: bool

    def feeds(self, samples: int | None = None, level: float | None = None) -> dict:
        """Extra feeds: the number of samples, and one level for every perturbation."""
        feeds = {}
        if samples is not None:
            feeds[self.samples_input] = np.array([samples], dtype=np.int64)
        if level is not None:
            for name, default in self.level_inputs.items():
                feeds[name] = np.asarray(level, dtype=default.dtype)
        return feeds


def output_names(name: str) -> dict:
    """The uncertainty graph's output names for a model output ``name``."""
    return {"output": name, "mean": name + ".mean", "variance": name + ".variance",
            "samples": name + ".samples"}


class _Builder:
    """Thin helper that adds prefixed nodes to a graphsurgeon graph."""

    def __init__(self, graph: gs.Graph, prefix: str, opset: int):
        self.graph = graph
        self.prefix = prefix
        self.opset = opset
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, hint: str, value) -> gs.Constant:
        return gs.Constant(self.name(hint), np.asarray(value))

    def op(self, op_type: str, inputs, attrs=None, dtype=None, shape=None, out=None):
        out = out or gs.Variable(self.name(op_type.lower()), dtype=dtype, shape=shape)
        node = gs.Node(op_type, name=self.name(op_type), attrs=attrs or {},
                       inputs=list(inputs), outputs=[out])
        self.graph.nodes.append(node)
        return out

    def reduce_mean(self, x, axes=None, keepdims=1, dtype=None, out=None):
        attrs = {"keepdims": keepdims}
        inputs = [x]
        if axes is not None:
            if self.opset >= 18:
                inputs.append(self.const("axes", np.array(axes, dtype=np.int64)))
            else:
                attrs["axes"] = list(axes)
        return self.op("ReduceMean", inputs, attrs, dtype=dtype, out=out)

    def slice0(self, x, start, end, dtype=None):
        """x[start:end] along axis 0, with start/end int64[1] tensors."""
        return self.op("Slice", [x, start, end, self.const("axis0", np.array([0], np.int64))],
                       dtype=dtype)


def _prefix_for(model: onnx.ModelProto) -> str:
    names = set()
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


def _np_dtype(info: ModelInfo, name: str):
    dt = info.tensor_infos.get(name)
    if dt is None or dt.dtype not in FLOAT_TYPES.values():
        raise TfueError(f"tensor '{name}' is not a float tensor",
                        "perturb a float tensor listed by 'tfue inspect'")
    if dt.dtype == "bfloat16":
        raise TfueError(f"tensor '{name}' is bfloat16, which tfue cannot perturb yet",
                        "pick a float32 or float16 location")
    return np.dtype(dt.dtype)


def _replace_tensor(graph: gs.Graph, old: gs.Variable, new: gs.Variable, skip=()):
    """Make every consumer of ``old`` (and the graph outputs) read ``new`` instead.

    ``skip`` holds ids of nodes that keep reading ``old`` (the perturbation's own).
    """
    for node in list(old.outputs):  # snapshot: rewiring edits old.outputs
        if id(node) in skip:
            continue
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
    for i, t in enumerate(graph.outputs):
        if t is old:
            # Keep the graph output's name: the inner tensor takes a new one.
            new_name, old.name = old.name, new.name
            new.name = new_name
            graph.outputs[i] = new


class _Perturber:
    """Inserts perturbations into a graph; optionally masked to spare slot 0."""

    def __init__(self, b: _Builder, seed: int, slot_mask=None):
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
        self._random += 1
        return float(self.seed * 1009 + self._random)

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
        factor = b.op("Mul", [b.op("Cast", [keep], {"to": onnx.helper.np_dtype_to_tensor_dtype(dtype)},
                                   dtype=dtype), scale], dtype=dtype)
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
            _replace_tensor(graph, t, result, skip=skip)
        return result


def _check_samples(samples) -> int:
    try:
        n = int(samples)
    except (TypeError, ValueError):
        raise TfueError(f"samples must be an integer, got {samples!r}",
                        "give --samples N with N >= 2, e.g. 8") from None
    if n != samples or n < 2:
        raise TfueError(f"samples must be an integer >= 2, got {samples}",
                        "variance needs at least 2 samples; give --samples 8")
    return n


def _insert(graph: gs.Graph, info: ModelInfo, spec, perturber: _Perturber, tensors: dict):
    """Insert ``spec`` into ``graph``; return the perturbed locations' names.

    ``tensors`` maps the model's original tensor names to the graph's tensors
    (the tiled copy for an input).
    """
    if isinstance(spec, (Noise, Dropout)):
        cand = info.resolve_location(spec.at)
        dtype = _np_dtype(info, cand.name)
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
            from .errors import closest
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
        dtype = _np_dtype(info, d.input)
        data = node.inputs[0]
        node.inputs.clear()
        node.outputs.clear()
        level = perturber._level("rate", rate, dtype)
        perturber.apply(graph, data, "dropout", level, dtype, out=out)
    graph.cleanup()
    return chosen


def _stats_outputs(info: ModelInfo):
    return [o for o in info.outputs if o.dtype in FLOAT_TYPES.values() and o.dtype != "bfloat16"]


def _finish(graph: gs.Graph, info: ModelInfo, b: _Builder, perturber: _Perturber,
            samples_var: gs.Variable, samples: int) -> onnx.ModelProto:
    """Export, make the level and samples inputs overridable, keep IR and opset."""
    graph.inputs.extend(v for v, _ in perturber.level_inputs)
    graph.inputs.append(samples_var)
    graph.cleanup().toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    # Shapes annotated on inner tensors go stale when the batch is tiled ("batch" is
    # now (n+1)·batch); onnxruntime infers them itself.
    del model.graph.value_info[:]
    defaults = {v.name: val for v, val in perturber.level_inputs}
    defaults[samples_var.name] = np.array([samples], dtype=np.int64)
    for name, value in defaults.items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
    model.ir_version = max(info.model.ir_version, 4)
    del model.opset_import[:]
    model.opset_import.extend(info.model.opset_import)
    return model


def _batched(info: ModelInfo, spec, samples: int, seed: int, keep_samples: bool):
    if info.opset < 10:
        raise StrategyUnavailable(f"needs opset >= 10 (dynamic Slice); the model has opset "
                                  f"{info.opset}")
    for inp in info.inputs:
        if inp.shape is None or len(inp.shape) == 0:
            raise StrategyUnavailable(f"input '{inp.name}' has no batch axis (rank unknown or 0)")
        if isinstance(inp.shape[0], int) and inp.shape[0] > 0:
            raise StrategyUnavailable(f"input '{inp.name}' has a fixed batch size "
                                      f"{inp.shape[0]}; tiling along the batch axis is impossible")
    graph = gs.import_onnx(info.model)
    prefix = _prefix_for(info.model)
    b = _Builder(graph, prefix, info.opset)
    samples_var = gs.Variable(prefix + "samples", dtype=np.int64, shape=[1])
    one = b.const("one", np.array([1], np.int64))
    n1 = b.op("Add", [samples_var, one], dtype=np.int64)  # n + 1 slots

    # Slot mask [n+1, 1]: 0 for the unperturbed slot 0, 1 for the samples.
    def slot_mask(delta, like, dtype):
        ones = b.op("Tile", [b.const("one_f", np.array([1], dtype)), samples_var], dtype=dtype)
        mask = b.op("Concat", [b.const("zero_f", np.array([0], dtype)), ones], {"axis": 0},
                    dtype=dtype)
        mask = b.op("Reshape", [mask, b.const("col", np.array([-1, 1], np.int64))], dtype=dtype)
        flat_shape = b.op("Concat", [n1, b.const("minus1", np.array([-1], np.int64))],
                          {"axis": 0}, dtype=np.int64)
        flat = b.op("Reshape", [delta, flat_shape], dtype=dtype)
        masked = b.op("Mul", [flat, mask], dtype=dtype)
        return b.op("Reshape", [masked, b.op("Shape", [like], dtype=np.int64)], dtype=dtype)

    perturber = _Perturber(b, seed, slot_mask)

    # Tile every input n+1 times along the batch axis.
    tiled = {}
    real_inputs = {i.name for i in info.inputs}
    for inp in [i for i in graph.inputs if i.name in real_inputs]:
        rank = len(inp.shape)
        reps = b.op("Concat", [n1, b.const("ones", np.ones(rank - 1, np.int64))], {"axis": 0},
                    dtype=np.int64)
        x_t = gs.Variable(b.name("tiled"), dtype=inp.dtype)
        consumers = list(inp.outputs)
        b.op("Tile", [inp, reps], out=x_t)
        for node in consumers:
            for i, t in enumerate(node.inputs):
                if t is inp:
                    node.inputs[i] = x_t
        tiled[inp.name] = x_t

    tensors = {**graph.tensors(), **tiled}
    # Inner copies of the graph outputs take new names: the final outputs keep them.
    stats = {o.name for o in _stats_outputs(info)}
    for out in graph.outputs:
        out.name = b.name("tiled_out")
    originals = list(info.outputs)
    locations = _insert(graph, info, spec, perturber, tensors)

    final = []
    for orig, y_t in zip(originals, list(graph.outputs)):
        dt = np.dtype(orig.dtype) if orig.dtype in FLOAT_TYPES.values() else None
        shape = list(orig.shape) if orig.shape is not None else None
        shp = b.op("Shape", [y_t], dtype=np.int64)
        total = b.op("Gather", [shp, b.const("idx0", np.array([0], np.int64))], {"axis": 0},
                     dtype=np.int64)
        batch = b.op("Div", [total, n1], dtype=np.int64)
        names = output_names(orig.name)
        y = gs.Variable(names["output"], dtype=y_t.dtype or dt, shape=shape)
        b.op("Slice", [y_t, b.const("zero", np.array([0], np.int64)), batch,
                       b.const("axis0", np.array([0], np.int64))], out=y)
        final.append(y)
        if orig.name not in stats:
            continue
        flat = b.slice0(y_t, batch, b.const("end", np.array([INT64_MAX], np.int64)), dtype=dt)
        rest = b.slice0(shp, b.const("one", np.array([1], np.int64)),
                        b.const("end", np.array([INT64_MAX], np.int64)), dtype=np.int64)
        sshape = b.op("Concat", [samples_var, batch, rest], {"axis": 0}, dtype=np.int64)
        stacked_shape = None if shape is None else ["tfue_samples"] + shape
        stacked = b.op("Reshape", [flat, sshape], dtype=dt, shape=stacked_shape,
                       out=gs.Variable(names["samples"], dtype=dt, shape=stacked_shape)
                       if keep_samples else None)
        # Statistics of the change from the unperturbed output: at level 0 they are
        # exactly 0 (no rounding), and small changes keep their precision.
        change = b.op("Sub", [stacked, y], dtype=dt)
        mean_change = b.reduce_mean(change, axes=[0], keepdims=0, dtype=dt)
        mean = b.op("Add", [y, mean_change],
                    out=gs.Variable(names["mean"], dtype=dt, shape=shape))
        centred = b.op("Sub", [change, mean_change], dtype=dt)
        var = b.reduce_mean(b.op("Mul", [centred, centred], dtype=dt), axes=[0], keepdims=0,
                            out=gs.Variable(names["variance"], dtype=dt, shape=shape))
        final += [mean, var] + ([stacked] if keep_samples else [])
    graph.outputs = final
    model = _finish(graph, info, b, perturber, samples_var, samples)
    return model, perturber, samples_var, locations


def _loop(info: ModelInfo, spec, samples: int, seed: int, keep_samples: bool):
    for node in info.model.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute):
            raise StrategyUnavailable("the model has control-flow subgraphs (If/Loop/Scan)")
    # 1. A perturbed copy of the model, exported on its own (no slot mask).
    graph = gs.import_onnx(info.model)
    prefix = _prefix_for(info.model)
    b = _Builder(graph, prefix, info.opset)
    perturber = _Perturber(b, seed)
    samples_var = gs.Variable(prefix + "samples", dtype=np.int64, shape=[1])
    locations = _insert(graph, info, spec, perturber, graph.tensors())
    perturbed = _finish(graph, info, b, perturber, samples_var, samples)
    pg = perturbed.graph

    # 2. The body: the perturbed nodes, every tensor they make renamed into the body.
    outer = {i.name for i in pg.input} | {i.name for i in pg.initializer}
    body_prefix = prefix + "loop/"
    rename = {}
    for node in pg.node:
        for o in node.output:
            if o:
                rename[o] = body_prefix + o
    body_nodes = []
    for node in pg.node:
        n = onnx.NodeProto()
        n.CopyFrom(node)
        n.name = body_prefix + node.name if node.name else ""
        n.input[:] = [rename.get(i, i) for i in node.input]
        n.output[:] = [rename.get(o, o) for o in node.output]
        body_nodes.append(n)
    stats = _stats_outputs(info)
    it, cond_in, cond_out = prefix + "iter", prefix + "cond_in", prefix + "cond_out"
    body_inputs = [helper.make_tensor_value_info(it, onnx.TensorProto.INT64, []),
                   helper.make_tensor_value_info(cond_in, onnx.TensorProto.BOOL, [])]
    body_outputs = [helper.make_tensor_value_info(cond_out, onnx.TensorProto.BOOL, [])]
    body_nodes.append(helper.make_node("Identity", [cond_in], [cond_out]))
    scan_outputs = []
    inits = []
    for k, o in enumerate(stats):
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(o.dtype))
        y = rename.get(o.name, o.name)
        p = f"{prefix}welford{k}/"
        mean_in, m2_in, mean_out, m2_out = p + "mean_in", p + "m2_in", p + "mean_out", p + "m2_out"
        body_inputs += [helper.make_tensor_value_info(mean_in, elem, None),
                        helper.make_tensor_value_info(m2_in, elem, None)]
        body_outputs += [helper.make_tensor_value_info(mean_out, elem, None),
                         helper.make_tensor_value_info(m2_out, elem, None)]
        one_name = p + "one"
        inits.append(onnx.numpy_helper.from_array(np.array(1, np.int64), one_name))
        # Welford's update on the change from the unperturbed output (outer scope).
        body_nodes += [
            helper.make_node("Sub", [y, o.name], [p + "change"]),
            helper.make_node("Add", [it, one_name], [p + "k_int"]),
            helper.make_node("Cast", [p + "k_int"], [p + "k"], to=elem),
            helper.make_node("Sub", [p + "change", mean_in], [p + "delta"]),
            helper.make_node("Div", [p + "delta", p + "k"], [p + "step"]),
            helper.make_node("Add", [mean_in, p + "step"], [mean_out]),
            helper.make_node("Sub", [p + "change", mean_out], [p + "delta2"]),
            helper.make_node("Mul", [p + "delta", p + "delta2"], [p + "m2_step"]),
            helper.make_node("Add", [m2_in, p + "m2_step"], [m2_out]),
        ]
        if keep_samples:
            sample = p + "sample"
            body_nodes.append(helper.make_node("Identity", [y], [sample]))
            body_outputs.append(helper.make_tensor_value_info(sample, elem, None))
            scan_outputs.append(o)
    body = helper.make_graph(body_nodes, prefix + "body", body_inputs, body_outputs)

    # 3. The outer graph: the original model (unperturbed) plus the Loop.
    g = onnx.GraphProto()
    g.CopyFrom(info.model.graph)
    g.initializer.extend([i for i in pg.initializer if i.name not in
                          {x.name for x in info.model.graph.initializer}])
    g.initializer.extend(inits)
    g.input.extend([i for i in pg.input if i.name not in {x.name for x in g.input}])
    samples_name = samples_var.name
    m_name, true_name = prefix + "trip_count", prefix + "true"
    g.initializer.append(onnx.numpy_helper.from_array(np.array(True), true_name))
    g.initializer.append(onnx.numpy_helper.from_array(np.array([], np.int64), prefix + "scalar"))
    g.node.append(helper.make_node("Reshape", [samples_name, prefix + "scalar"], [m_name]))
    loop_in, loop_out = [m_name, true_name], []
    for k, o in enumerate(stats):
        p = f"{prefix}welford{k}/"
        zero = p + "zero"
        g.initializer.append(onnx.numpy_helper.from_array(np.array(0, np.dtype(o.dtype)), zero))
        g.node.append(helper.make_node("Mul", [o.name, zero], [p + "init"]))
        loop_in += [p + "init", p + "init"]
        loop_out += [p + "mean_final", p + "m2_final"]
    samples_outs = [output_names(o.name)["samples"] for o in scan_outputs]
    g.node.append(helper.make_node("Loop", loop_in, loop_out + samples_outs,
                                   name=prefix + "Loop", body=body))
    del g.output[:]
    g.output.extend(info.model.graph.output)
    for k, o in enumerate(stats):
        p = f"{prefix}welford{k}/"
        names = output_names(o.name)
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(o.dtype))
        g.node.append(helper.make_node("Cast", [samples_name], [p + "n"], to=elem))
        g.node.append(helper.make_node("Add", [o.name, p + "mean_final"], [names["mean"]]))
        g.node.append(helper.make_node("Div", [p + "m2_final", p + "n"], [names["variance"]]))
        shape = list(o.shape) if o.shape is not None else None
        g.output.extend([helper.make_tensor_value_info(names["mean"], elem, shape),
                         helper.make_tensor_value_info(names["variance"], elem, shape)])
        if keep_samples:
            g.output.append(helper.make_tensor_value_info(
                names["samples"], elem, None if shape is None else ["tfue_samples"] + shape))
    model = helper.make_model(g, opset_imports=list(info.model.opset_import))
    model.ir_version = max(info.model.ir_version, 4)
    return model, perturber, samples_var, locations


def build(info: ModelInfo, spec, strategy: str = "batched", samples: int = 8, seed: int = 0,
          keep_samples: bool = False) -> UncertaintyGraph:
    """Build the uncertainty graph of ``info``'s model for ``spec`` with ``strategy``.

    Raises StrategyUnavailable when the strategy cannot apply to this model, and
    TfueError for bad arguments (unknown location, no Dropout nodes, ...).
    """
    samples = _check_samples(samples)
    if strategy not in STRATEGIES:
        raise TfueError(f"unknown strategy {strategy!r}", f"use one of {', '.join(STRATEGIES)}")
    for o in info.outputs:
        for suffix in OUTPUT_SUFFIXES:
            if any(x.name == o.name + suffix for x in info.outputs):
                raise TfueError(f"the model already has an output named '{o.name + suffix}'",
                                "rename that output before using tfue")
    maker = _batched if strategy == "batched" else _loop
    model, perturber, samples_var, locations = maker(info, spec, samples, int(seed), keep_samples)
    return UncertaintyGraph(
        model=model, strategy=strategy,
        stats_outputs=[o.name for o in _stats_outputs(info)],
        samples_input=samples_var.name,
        level_inputs={v.name: val for v, val in perturber.level_inputs},
        locations=locations, samples=samples, seed=int(seed), keep_samples=keep_samples)
