"""Load an ONNX model and describe it: inputs, outputs, candidate locations, Dropout nodes.

This is the first stage of the pipeline. It never changes the model; it reads it
(external data too), runs shape inference, and answers questions about it.
"""

from __future__ import annotations

import dataclasses
import os
from functools import cached_property

import numpy as np
import onnx

from . import external
from .errors import ArgumentError, TfueError, closest

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
}

# Ops whose output never depends on the model input, even when wired to it.
_SHAPE_OPS = {"Shape", "Size"}

# onnxruntime's type strings ("tensor(float)") -> tfue's dtype names.
_ORT_TYPES = {"float": "float32", "double": "float64", "float16": "float16",
              "bfloat16": "bfloat16", "bool": "bool", "string": "str"}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """A named tensor with its element type and (possibly symbolic) shape.

    ``dtype`` is a numpy-style name ("float32", "int64", "bfloat16", ...); ``shape``
    holds ints for fixed sizes and strings for symbolic ones ("?" unknown), or is None
    when the rank is unknown.
    """

    name: str
    dtype: str
    shape: tuple | None  # ints for fixed dims, strings for symbolic, None for unknown rank

    def to_dict(self) -> dict:
        """Plain data for JSON: name, dtype, shape as a list (or None)."""
        return {"name": self.name, "dtype": self.dtype,
                "shape": None if self.shape is None else list(self.shape)}



@dataclasses.dataclass(frozen=True)
class Candidate:
    """A tensor where a gray-box perturbation may be injected (Mi et al., "Training-Free
    Uncertainty Estimation": infer-noise and infer-dropout act on an intermediate
    tensor): a float tensor that depends on the input and reaches an output.

    ``index`` is its position in :attr:`ModelInfo.candidates`; ``shape`` as in
    :class:`TensorInfo`; ``depth`` in [0, 1] its position among the nodes that depend
    on the input (inputs 0).
    """

    index: int
    name: str
    op: str  # producing op, or "input" for a graph input
    node: str  # producing node name ("" for a graph input)
    shape: tuple | None
    depth: float  # position along the graph, 0 = input, 1 = last node
    is_output: bool

    def to_dict(self) -> dict:
        """Plain data for JSON: every field, the shape as a list (or None)."""
        d = dataclasses.asdict(self)
        d["shape"] = None if self.shape is None else list(self.shape)
        return d


@dataclasses.dataclass(frozen=True)
class DropoutInfo:
    """An existing Dropout node of the model (MC-dropout switches it on): its name (or
    ``Dropout_K`` by position when unnamed), data input, first output and ratio in
    [0, 1) (None when computed)."""

    name: str
    input: str
    output: str
    ratio: float | None  # None when the ratio is a computed tensor


def _elem_name(elem_type: int) -> str:
    """The dtype name of an ONNX element type (TensorProto.DataType)."""
    if elem_type in FLOAT_TYPES:
        return FLOAT_TYPES[elem_type]
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except Exception:  # undefined or exotic types
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _value_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    """``vi`` as a TensorInfo (inference's "unk__N" sizes shown as "?")."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        shape = None
    else:
        # Shape inference names unknown dims "unk__N": to a user they are just unknown.
        shape = tuple(d.dim_value if d.HasField("dim_value") else
                      ("?" if not d.dim_param or d.dim_param.startswith("unk__") else d.dim_param)
                      for d in tt.shape.dim)
    return TensorInfo(vi.name, _elem_name(tt.elem_type), shape)


def _subgraphs(node: onnx.NodeProto) -> list:
    """The GraphProtos of ``node``'s attributes (If branches, Loop and Scan bodies)."""
    graphs = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` in ``graph``, in place: node inputs and outputs,
    graph inputs, outputs, value_info and initializers, and the subgraphs that read it
    from this scope (those that do not define a tensor of that name themselves)."""
    for n in graph.node:
        n.input[:] = [new if i == old else i for i in n.input]
        n.output[:] = [new if o == old else o for o in n.output]
        for sub in _subgraphs(n):
            local = {i.name for i in sub.input} | {i.name for i in sub.initializer} | \
                {o for sn in sub.node for o in sn.output}
            if old not in local:
                rename_tensor(sub, old, new)
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new
    for init in graph.initializer:
        if init.name == old:
            init.name = new


def subgraph_reads(node: onnx.NodeProto) -> list[str]:
    """Names that ``node``'s subgraphs (If/Loop/Scan bodies, recursively) read from the
    enclosing scopes: the node's implicit inputs, in order of first use.

    Args:
        node: any node; one without GRAPH attributes reads nothing implicitly.

    Returns:
        Tensor names defined outside the subgraphs (empty list when there are none).
    """
    reads = []
    for g in _subgraphs(node):
        defined = {i.name for i in g.input} | {i.name for i in g.initializer}
        defined |= {i.values.name for i in g.sparse_initializer}
        defined |= {o for n in g.node for o in n.output if o}
        for n in g.node:
            for name in [i for i in n.input if i] + subgraph_reads(n):
                if name not in defined and name not in reads:
                    reads.append(name)
        for o in g.output:
            if o.name not in defined and o.name not in reads:
                reads.append(o.name)
    return reads


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Every tensor ``node`` reads: its inputs and what its subgraphs read from outside."""
    names = [i for i in node.input if i]
    return names + [r for r in subgraph_reads(node) if r not in names]


def toposorted(nodes) -> list:
    """``nodes`` in an order where every tensor is made before it is read (counting the
    reads of subgraphs), keeping the given order where it already holds. A new list:
    the nodes themselves are not changed. Nodes in a cycle or reading tensors nobody
    makes stay, in their given order, after the rest."""
    nodes = list(nodes)
    return [nodes[k] for k in topological_order(nodes)]


def reorder_nodes(graph: onnx.GraphProto, order: list) -> None:
    """Put ``graph``'s nodes in ``order`` (positions, e.g. :func:`topological_order`),
    in place; a node reading a tensor made later confuses shape inference and
    graphsurgeon alike."""
    nodes = [onnx.NodeProto.FromString(graph.node[k].SerializeToString()) for k in order]
    del graph.node[:]
    graph.node.extend(nodes)


def topological_order(nodes) -> list[int]:
    """The positions of ``nodes`` in the order of :func:`toposorted`."""
    import heapq

    nodes = list(nodes)
    maker = {}
    for k, n in enumerate(nodes):
        for o in n.output:
            if o:
                maker.setdefault(o, k)
    waiting = [0] * len(nodes)
    readers = [[] for _ in nodes]
    for k, n in enumerate(nodes):
        deps = {maker[i] for i in node_inputs(n) if i in maker and maker[i] != k}
        waiting[k] = len(deps)
        for d in deps:
            readers[d].append(k)
    ready = [k for k in range(len(nodes)) if waiting[k] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for r in readers[k]:
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, r)
    placed = set(order)
    return order + [k for k in range(len(nodes)) if k not in placed]


def _ort_types(model: onnx.ModelProto, names) -> dict:
    """Element type and shape of ``names`` as onnxruntime infers them (it knows its own
    contrib ops, e.g. com.microsoft Gelu, which onnx's shape inference does not).
    Builds a session of a copy of the model (no optimisation, nothing runs); returns {}
    when onnxruntime cannot load the model."""
    try:
        import onnxruntime as ort

        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        known = {o.name for o in probe.graph.output}
        probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        options.add_session_config_entry("session.disable_prepacking", "1")  # nothing runs
        source = probe.SerializeToString()
        if external.has_external_data(probe):  # weights in files: tell onnxruntime where
            source, folder = external.session_source(probe)
            options.add_session_config_entry(external.FOLDER_KEY, folder)
        sess = ort.InferenceSession(source, options,
                                    providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime cannot load it: the types stay unknown
        return {}
    infos = {}
    for arg in sess.get_outputs():
        kind = arg.type or ""
        if arg.name not in names or not kind:
            continue
        if not kind.startswith("tensor("):  # sequences, maps: known, and not tensors
            infos[arg.name] = TensorInfo(arg.name, kind, None)
            continue
        elem = kind[len("tensor("):-1]
        dtype = _ORT_TYPES.get(elem, elem)
        shape = None if arg.shape is None else tuple(
            d if isinstance(d, int) else ("?" if not d or d.startswith("unk__") else d)
            for d in arg.shape)
        infos[arg.name] = TensorInfo(arg.name, dtype, shape)
    return infos


def load_model(path) -> onnx.ModelProto:
    """Read an ONNX model from ``path``, leaving weights in external data on disk.

    The returned proto never holds the external weights (a model over 2 GB stays a
    small proto); each external tensor's location is made the absolute path of its
    file (see :mod:`tfue_onnx.external`), after checking that the file is there.
    Large inline weights are left in the .onnx file the same way (their tensors point
    at their bytes in it), so sessions map them instead of each holding a copy.
    Create sessions through :func:`tfue_onnx.session.create_session`, which knows
    this convention.

    Args:
        path: the .onnx file.

    Returns:
        The ModelProto (graph, inline weights, external references).

    Raises:
        TfueError: the file is missing or is not an ONNX model, or its external data
            cannot be read.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TfueError(f"model file '{path}' does not exist", "check the path")
    if os.path.isdir(path):
        raise TfueError(f"model path '{path}' is a folder, not an .onnx file",
                        "pass the .onnx file inside it")
    # Large inline weights stay in the file (onnxruntime maps them from there).
    model = external.read_leaving_weights(path)
    try:
        model = model if model is not None else onnx.load(path, load_external_data=False)
    except Exception as exc:  # DecodeError, ...
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TfueError(f"'{path}' is not an ONNX model ({text})",
                        "pass a model exported to .onnx (e.g. by torch.onnx.export)") from exc
    if not model.HasField("graph") or not model.graph.output or not model.opset_import:
        raise TfueError(f"'{path}' is not an ONNX model (no graph, outputs or opset found)",
                        "pass a model exported to .onnx (e.g. by torch.onnx.export)")
    return external.anchor(model, os.path.dirname(os.path.abspath(path)), path)


class ModelInfo:
    """What tfue needs to know about a model: signature, candidates, Dropout nodes.

    Properties are computed once, on first use (shape inference runs on a sorted
    copy; the model is never changed). :meth:`resolve_location` turns ``--at`` into a
    :class:`Candidate`.
    """

    def __repr__(self) -> str:
        return f"ModelInfo({self.path or '<in memory>'!r}, opset {self.opset})"

    def __init__(self, model: onnx.ModelProto, path: str | None = None,
                 locations_from: "ModelInfo | None" = None, aliases: dict | None = None):
        """Describe ``model`` (read from ``path``, when known).

        Args:
            model: the model; never changed.
            path: where it was read from, for messages and results.
            locations_from: for a model tfue derived from the user's (e.g. with a
                softmax appended), the user's model: candidates, depths and ``--at``
                refer to its graph, never to what tfue added.
            aliases: names of the user's tensors in ``model`` where they differ
                (user name -> name in ``model``; e.g. the logits under an appended
                softmax, whose output took the logits' name).
        """
        self.model = model
        self.path = path
        self.graph = model.graph
        self.locations_from = locations_from
        self.aliases = dict(aliases or {})
        # Outputs tfue renamed in a working copy (temp name -> the model's output name).
        self.output_names = {}

    # --- signature -------------------------------------------------------------
    @cached_property
    def initializer_names(self) -> set:
        """Names of the graph's initializers (weights)."""
        return {i.name for i in self.graph.initializer}

    @cached_property
    def inputs(self) -> list[TensorInfo]:
        """The real inputs (graph inputs that are not initializers)."""
        return [_value_info(i) for i in self.graph.input if i.name not in self.initializer_names]

    @cached_property
    def outputs(self) -> list[TensorInfo]:
        """The graph outputs, in order (a name listed twice is listed twice)."""
        return [_value_info(o) for o in self.graph.output]

    @cached_property
    def opset(self) -> int:
        """The default ONNX domain's opset (1 when the model imports none)."""
        for imp in self.model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return imp.version
        return 1

    @property
    def ir_version(self) -> int:
        """The model's IR version."""
        return self.model.ir_version

    @cached_property
    def _inferred(self) -> onnx.ModelProto:
        """The model after onnx's shape inference, run on a copy whose nodes are
        topologically sorted: inference walks nodes in file order, and a node read
        before it is made would leave its readers untyped (or typed wrongly)."""
        model = self.model
        order = topological_order(model.graph.node)
        if order != sorted(order):
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            reorder_nodes(model.graph, order)
        try:
            return onnx.shape_inference.infer_shapes(model)
        except Exception:  # custom ops or broken models: work with what we have
            return model

    @cached_property
    def nodes(self) -> list:
        """The graph's nodes, topologically sorted (a new list; the model is unchanged).

        Exporters and graph editors sometimes leave nodes out of order; onnxruntime
        runs such graphs, so every analysis here walks this order instead."""
        return toposorted(self.graph.node)

    @cached_property
    def tensor_infos(self) -> dict[str, TensorInfo]:
        """Element type and shape of every tensor whose type is known.

        From onnx's shape inference; tensors it leaves untyped (outputs of ops it does
        not know, such as com.microsoft contrib ops, and everything after them) are
        typed by onnxruntime, which knows its own ops."""
        g = self._inferred.graph
        infos = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                infos[vi.name] = _value_info(vi)
        for init in g.initializer:
            infos.setdefault(init.name, TensorInfo(init.name, _elem_name(init.data_type),
                                                   tuple(init.dims)))
        missing = [o for n in self.graph.node for o in n.output if o and o not in infos]
        if missing:
            infos.update(_ort_types(self.model, missing))
        return infos

    @cached_property
    def untyped_tensors(self) -> list[str]:
        """Tensors depending on the input whose element type nobody could infer."""
        dynamic = self.dynamic_tensors
        return [o for n in self.nodes for o in n.output
                if o and o in dynamic and o not in self.tensor_infos]

    # --- graph structure ---------------------------------------------------------
    @cached_property
    def dynamic_tensors(self) -> set:
        """Tensors whose values depend on a model input (not constants, not shapes).

        A node's inputs include what its subgraphs (If/Loop/Scan bodies) read from
        the enclosing graph."""
        dynamic = {i.name for i in self.inputs}
        for node in self.nodes:
            if node.op_type in _SHAPE_OPS:
                continue
            if any(i in dynamic for i in node_inputs(node)):
                dynamic.update(o for o in node.output if o)
        return dynamic

    @cached_property
    def live_tensors(self) -> set:
        """Tensors whose values can reach a graph output (through node inputs and what
        subgraphs read; not through ``Shape``/``Size``, which read only the shape).

        A perturbation of any other tensor changes no output: such tensors are not
        candidates. Liveness is per node: every input of a node with a live output
        counts as live, so a Loop/Scan state that feeds only an unused output of a
        node whose other outputs are used still counts."""
        live = {o.name for o in self.graph.output}
        for node in reversed(self.nodes):
            if node.op_type in _SHAPE_OPS:
                continue
            if any(o in live for o in node.output if o):
                live.update(node_inputs(node))
        return live

    @cached_property
    def _dynamic_nodes(self) -> list:
        """Sorted nodes that read the input (not shape ops): what depths count."""
        dynamic = self.dynamic_tensors
        return [n for n in self.nodes
                if n.op_type not in _SHAPE_OPS and any(i in dynamic for i in node_inputs(n))]

    @cached_property
    def depths(self) -> dict[str, float]:
        """Depth in [0, 1] (4 decimals) of every tensor that depends on the input: its
        producer's position among the nodes that read the input (inputs 0)."""
        nodes = self._dynamic_nodes
        span = max(len(nodes) - 1, 1)
        depths = {i.name: 0.0 for i in self.inputs}
        for pos, node in enumerate(nodes):
            for out in node.output:
                if out:
                    depths.setdefault(out, round(pos / span, 4))
        return depths

    @cached_property
    def candidates(self) -> list[Candidate]:
        """Float tensors that depend on the input and reach an output, in graph order,
        with depth in [0, 1]."""
        if self.locations_from is not None:  # the user's graph, under this model's names
            return [dataclasses.replace(c, name=self.aliases.get(c.name, c.name))
                    for c in self.locations_from.candidates]
        outputs = {o.name for o in self.graph.output}
        depths = self.depths
        cands, seen = [], set()

        live = self.live_tensors

        def add(name, op, node):
            info = self.tensor_infos.get(name)
            if info is None or info.dtype not in FLOAT_TYPES.values() or name in seen \
                    or name not in live:
                return
            seen.add(name)
            cands.append(Candidate(len(cands), name, op, node, info.shape, depths[name],
                                   name in outputs))

        for inp in self.inputs:
            add(inp.name, "input", "")
        for node in self._dynamic_nodes:
            for out in node.output:
                if out:
                    add(out, node.op_type, node.name)
        return cands

    @cached_property
    def dropouts(self) -> list[DropoutInfo]:
        """Existing Dropout nodes, with their ratio where it is a constant (0.5, ONNX's
        default, when neither attribute nor input gives one; None when computed)."""
        # Only the ratio inputs are read: the other weights may be gigabytes on disk.
        wanted = {n.input[1] for n in self.graph.node
                  if n.op_type == "Dropout" and len(n.input) > 1 and n.input[1]}
        tensors = {i.name: i for i in self.graph.initializer if i.name in wanted}
        for n in self.graph.node:
            if n.op_type == "Constant" and n.attribute and n.output[0] in wanted:
                tensors[n.output[0]] = n.attribute[0].t
        consts = {}
        for name, t in tensors.items():
            try:
                if int(np.prod(t.dims, dtype=np.int64)) == 1:
                    consts[name] = external.read_tensor(t)
            except Exception:  # not a tensor attribute, unreadable: a computed ratio
                pass
        found = []
        for i, n in enumerate(self.graph.node):
            if n.op_type != "Dropout":
                continue
            ratio = 0.5
            for a in n.attribute:
                if a.name == "ratio":
                    ratio = a.f
            if len(n.input) > 1 and n.input[1]:
                r = consts.get(n.input[1])
                ratio = float(np.reshape(r, -1)[0]) if r is not None else None
            found.append(DropoutInfo(n.name or f"Dropout_{i}", n.input[0], n.output[0], ratio))
        return found

    # --- locations ---------------------------------------------------------------
    def resolve_location(self, at) -> Candidate:
        """Turn a location (name, index, 'input' or depth fraction) into a candidate.

        ``at`` may be a Candidate, a tensor name, a candidate index (int or digits),
        ``"input"`` (the model's float input) or a depth fraction in [0, 1] with a
        decimal point such as ``"0.5"`` or a float (the candidate of nearest depth,
        the lower index on a tie). A model made from another (``locations_from``)
        resolves in that model's terms, its aliases mapped.

        Raises:
            TfueError: for an unknown name, a tensor that reaches no output or is not a
                float tensor depending on the input, 'input' with no or several float
                inputs, an index out of range, a depth outside [0, 1] or one that falls
                among tensors of unknown type.
        """
        if self.locations_from is not None:
            return self._resolve_in_source(at)
        cands = self.candidates
        if not cands:
            raise TfueError("the model has no float tensor that depends on its input",
                            "tfue perturbs float tensors; check the model with 'tfue inspect'")
        by_name = {c.name: c for c in cands}
        if isinstance(at, Candidate):
            at = at.name
        if isinstance(at, str) and at in by_name:
            return by_name[at]
        if at == "input":
            return _the_float_input(cands)
        if isinstance(at, (int, np.integer)) or (isinstance(at, str) and at.strip().isdigit()):
            return _at_index(cands, int(at))
        frac = _depth_fraction(at)
        if frac is not None:
            if not 0.0 <= frac <= 1.0 or frac != frac:
                raise ArgumentError(f"location depth {at} is outside [0, 1]",
                                "give a depth fraction such as 0.5, a tensor name or an index")
            best = min(cands, key=lambda c: (abs(c.depth - frac), c.index))
            self._check_depth_known(at, frac, best)
            return best
        raise self._not_a_candidate(str(at), by_name)

    def _resolve_in_source(self, at) -> Candidate:
        """Resolve ``at`` in ``locations_from`` (the user's model), through the aliases."""
        inner = {v: k for k, v in self.aliases.items()}
        if isinstance(at, Candidate):
            at = at.name
        if isinstance(at, str) and at in inner:
            at = inner[at]
        cand = self.locations_from.resolve_location(at)
        return dataclasses.replace(cand, name=self.aliases.get(cand.name, cand.name))

    def _not_a_candidate(self, name: str, by_name: dict) -> TfueError:
        """The error for a name that is no candidate: why (dead, not float, unknown)."""
        if name in self.dynamic_tensors and name not in self.live_tensors:
            return TfueError(f"tensor '{name}' reaches no output of the model (it feeds only "
                             "unused outputs, or only the shape of a tensor): perturbing it "
                             "changes nothing",
                             "pick a candidate listed by 'tfue inspect MODEL'")
        if name in self.tensor_infos or any(name in n.output for n in self.graph.node):
            return TfueError(f"tensor '{name}' cannot be perturbed: it is not a float tensor "
                             "that depends on the model input",
                             "pick a candidate listed by 'tfue inspect MODEL'")
        near = closest(name, by_name)
        return ArgumentError(f"unknown tensor '{name}'",
                         f"closest names: {near}" if near else
                         "list the candidate locations with 'tfue inspect MODEL'")

    def _check_depth_known(self, at, frac: float, best: Candidate) -> None:
        """Refuse a depth whose neighbourhood is made of tensors of unknown type: the
        nearest known tensor would be a guess (often the model input)."""
        gap = abs(best.depth - frac)
        unknown = [n for n in self.untyped_tensors if abs(self.depths[n] - frac) < gap]
        if not unknown:
            return
        ops = sorted({f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in self.nodes
                      if n.output and any(o in unknown for o in n.output)})
        raise TfueError(f"location depth {at} falls among {len(unknown)} tensors whose element "
                        f"type is unknown (made by {', '.join(ops[:5])}); the nearest float "
                        f"tensor of known type, '{best.name}', is at depth {best.depth}",
                        "name the tensor to perturb with --at NAME (see 'tfue inspect')")

    # --- summary -----------------------------------------------------------------
    def describe(self) -> dict:
        """Everything ``tfue inspect`` shows, as plain data (JSON-ready): path, IR
        version, opset, producer, inputs, outputs, candidates, Dropout nodes, untyped
        tensors."""
        return {
            "path": self.path,
            "ir_version": self.ir_version,
            "opset": self.opset,
            "producer": f"{self.model.producer_name} {self.model.producer_version}".strip(),
            "inputs": [i.to_dict() for i in self.inputs],
            "outputs": [o.to_dict() for o in self.outputs],
            "candidates": [c.to_dict() for c in self.candidates],
            "dropouts": [dataclasses.asdict(d) for d in self.dropouts],
            "untyped_tensors": list(self.untyped_tensors),
        }


def _the_float_input(cands: list) -> Candidate:
    """The one float input among ``cands`` (location 'input'); TfueError when there is
    none or several."""
    float_inputs = [c for c in cands if c.op == "input"]
    if len(float_inputs) == 1:
        return float_inputs[0]
    if not float_inputs:
        raise TfueError("the model has no float input to perturb at 'input'",
                        "pick an intermediate tensor (see 'tfue inspect')")
    raise TfueError("the model has several float inputs, so 'input' is ambiguous",
                    "name one: " + ", ".join(repr(c.name) for c in float_inputs))


def _at_index(cands: list, idx: int) -> Candidate:
    """Candidate ``idx``; TfueError when it is out of range."""
    if 0 <= idx < len(cands):
        return cands[idx]
    raise ArgumentError(f"location index {idx} is out of range: the model has "
                    f"{len(cands)} candidate locations (0..{len(cands) - 1})",
                    "list them with 'tfue inspect MODEL'")


def _depth_fraction(at) -> float | None:
    """``at`` as a depth fraction (a float, or a string with a decimal point that parses
    as one), else None."""
    if isinstance(at, float):
        return at
    if isinstance(at, str) and "." in at:
        try:
            return float(at)
        except ValueError:
            return None
    return None


def inspect_model(path) -> ModelInfo:
    """Load the model at ``path`` (external data left on disk, see :func:`load_model`)
    and return its :class:`ModelInfo`.

    Raises:
        TfueError: as :func:`load_model` (missing file, not ONNX).
    """
    return ModelInfo(load_model(path), os.fspath(path))
