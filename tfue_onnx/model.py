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
from .errors import TfueError, closest

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
}

# Ops whose output never depends on the model input, even when wired to it.
_SHAPE_OPS = {"Shape", "Size"}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """A named tensor with its element type and (possibly symbolic) shape."""

    name: str
    dtype: str
    shape: tuple | None  # ints for fixed dims, strings for symbolic, None for unknown rank

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype,
                "shape": None if self.shape is None else list(self.shape)}



@dataclasses.dataclass(frozen=True)
class Candidate:
    """A tensor where a gray-box perturbation may be injected."""

    index: int
    name: str
    op: str  # producing op, or "input" for a graph input
    node: str  # producing node name ("" for a graph input)
    shape: tuple | None
    depth: float  # position along the graph, 0 = input, 1 = last node
    is_output: bool

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = None if self.shape is None else list(self.shape)
        return d


@dataclasses.dataclass(frozen=True)
class DropoutInfo:
    """An existing Dropout node of the model."""

    name: str
    input: str
    output: str
    ratio: float | None  # None when the ratio is a computed tensor


def _elem_name(elem_type: int) -> str:
    if elem_type in FLOAT_TYPES:
        return FLOAT_TYPES[elem_type]
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except Exception:  # undefined or exotic types
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _value_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        shape = None
    else:
        # Shape inference names unknown dims "unk__N": to a user they are just unknown.
        shape = tuple(d.dim_value if d.HasField("dim_value") else
                      ("?" if not d.dim_param or d.dim_param.startswith("unk__") else d.dim_param)
                      for d in tt.shape.dim)
    return TensorInfo(vi.name, _elem_name(tt.elem_type), shape)


def load_model(path) -> onnx.ModelProto:
    """Read an ONNX model from ``path``, leaving weights in external data on disk.

    The returned proto never holds the external weights (a model over 2 GB stays a
    small proto); each external tensor's location is made the absolute path of its
    file (see :mod:`tfue_onnx.external`), after checking that the file is there.
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
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # DecodeError, ...
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TfueError(f"'{path}' is not an ONNX model ({text})",
                        "pass a model exported to .onnx (e.g. by torch.onnx.export)") from exc
    if not model.HasField("graph") or not model.graph.output or not model.opset_import:
        raise TfueError(f"'{path}' is not an ONNX model (no graph, outputs or opset found)",
                        "pass a model exported to .onnx (e.g. by torch.onnx.export)")
    return external.anchor(model, os.path.dirname(os.path.abspath(path)), path)


class ModelInfo:
    """What tfue needs to know about a model: signature, candidates, Dropout nodes."""

    def __init__(self, model: onnx.ModelProto, path: str | None = None):
        self.model = model
        self.path = path
        self.graph = model.graph

    # --- signature -------------------------------------------------------------
    @cached_property
    def initializer_names(self) -> set:
        return {i.name for i in self.graph.initializer}

    @cached_property
    def inputs(self) -> list[TensorInfo]:
        """The real inputs (graph inputs that are not initializers)."""
        return [_value_info(i) for i in self.graph.input if i.name not in self.initializer_names]

    @cached_property
    def outputs(self) -> list[TensorInfo]:
        return [_value_info(o) for o in self.graph.output]

    @cached_property
    def opset(self) -> int:
        for imp in self.model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return imp.version
        return 1

    @property
    def ir_version(self) -> int:
        return self.model.ir_version

    @cached_property
    def _inferred(self) -> onnx.ModelProto:
        try:
            return onnx.shape_inference.infer_shapes(self.model)
        except Exception:  # custom ops or broken models: work with what we have
            return self.model

    @cached_property
    def tensor_infos(self) -> dict[str, TensorInfo]:
        """Element type and shape of every tensor whose type is known."""
        g = self._inferred.graph
        infos = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            if vi.type.HasField("tensor_type"):
                infos[vi.name] = _value_info(vi)
        for init in g.initializer:
            infos.setdefault(init.name, TensorInfo(init.name, _elem_name(init.data_type),
                                                   tuple(init.dims)))
        return infos

    # --- graph structure ---------------------------------------------------------
    @cached_property
    def dynamic_tensors(self) -> set:
        """Tensors whose values depend on a model input (not constants, not shapes)."""
        dynamic = {i.name for i in self.inputs}
        for node in self.graph.node:  # nodes of a valid model are topologically sorted
            if node.op_type in _SHAPE_OPS:
                continue
            if any(i in dynamic for i in node.input if i):
                dynamic.update(o for o in node.output if o)
        return dynamic

    @cached_property
    def candidates(self) -> list[Candidate]:
        """Float tensors that depend on the input, in graph order, with depth in [0, 1]."""
        dynamic = self.dynamic_tensors
        outputs = {o.name for o in self.graph.output}
        dyn_nodes = [n for n in self.graph.node
                     if n.op_type not in _SHAPE_OPS and any(i in dynamic for i in n.input if i)]
        span = max(len(dyn_nodes) - 1, 1)
        cands = []

        def add(name, op, node, depth):
            info = self.tensor_infos.get(name)
            if info is None or info.dtype not in FLOAT_TYPES.values():
                return
            cands.append(Candidate(len(cands), name, op, node, info.shape, round(depth, 4),
                                   name in outputs))

        for inp in self.inputs:
            add(inp.name, "input", "", 0.0)
        for pos, node in enumerate(dyn_nodes):
            for out in node.output:
                if out:
                    add(out, node.op_type, node.name, pos / span)
        return cands

    @cached_property
    def dropouts(self) -> list[DropoutInfo]:
        """Existing Dropout nodes, with their ratio where it is a constant."""
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

        ``at`` may be a tensor name, a candidate index (int or digits), ``"input"``
        (the model's float input) or a depth fraction with a decimal point such as
        ``"0.5"`` (the candidate of nearest depth).
        """
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
            float_inputs = [c for c in cands if c.op == "input"]
            if len(float_inputs) == 1:
                return float_inputs[0]
            if not float_inputs:
                raise TfueError("the model has no float input to perturb at 'input'",
                                "pick an intermediate tensor (see 'tfue inspect')")
            raise TfueError("the model has several float inputs, so 'input' is ambiguous",
                            "name one: " + ", ".join(repr(c.name) for c in float_inputs))
        if isinstance(at, (int, np.integer)) or (isinstance(at, str) and at.strip().isdigit()):
            idx = int(at)
            if 0 <= idx < len(cands):
                return cands[idx]
            raise TfueError(f"location index {idx} is out of range: the model has "
                            f"{len(cands)} candidate locations (0..{len(cands) - 1})",
                            "list them with 'tfue inspect MODEL'")
        frac = None
        if isinstance(at, float):
            frac = at
        elif isinstance(at, str):
            try:
                frac = float(at) if "." in at else None
            except ValueError:
                frac = None
        if frac is not None:
            if not 0.0 <= frac <= 1.0 or frac != frac:
                raise TfueError(f"location depth {at} is outside [0, 1]",
                                "give a depth fraction such as 0.5, a tensor name or an index")
            return min(cands, key=lambda c: (abs(c.depth - frac), c.index))
        name = str(at)
        if name in self.tensor_infos or any(name in n.output for n in self.graph.node):
            raise TfueError(f"tensor '{name}' cannot be perturbed: it is not a float tensor "
                            "that depends on the model input",
                            "pick a candidate listed by 'tfue inspect MODEL'")
        near = closest(name, by_name)
        raise TfueError(f"unknown tensor '{name}'",
                        f"closest names: {near}" if near else
                        "list the candidate locations with 'tfue inspect MODEL'")

    # --- summary -----------------------------------------------------------------
    def describe(self) -> dict:
        """Everything ``tfue inspect`` shows, as plain data."""
        return {
            "path": self.path,
            "ir_version": self.ir_version,
            "opset": self.opset,
            "producer": f"{self.model.producer_name} {self.model.producer_version}".strip(),
            "inputs": [i.to_dict() for i in self.inputs],
            "outputs": [o.to_dict() for o in self.outputs],
            "candidates": [c.to_dict() for c in self.candidates],
            "dropouts": [dataclasses.asdict(d) for d in self.dropouts],
        }


def inspect_model(path) -> ModelInfo:
    """Load the model at ``path`` and return its :class:`ModelInfo`."""
    return ModelInfo(load_model(path), os.fspath(path))
