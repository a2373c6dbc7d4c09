"""Bring an old-opset model to an opset every uncertainty graph can be built at.

Below opset 10 ONNX has no Slice with dynamic starts and steps, which the tiled
strategies (shared-prefix, batched) and the flips of infer-transformation need.
Rather than give such models only the slow loop (or nothing), tfue converts a
*copy* of the model with ``onnx.version_converter``; the runner verifies every
graph built from the copy against the ORIGINAL model's outputs, so a conversion
that changed the numbers is never used. The user's file is never written.
"""

from __future__ import annotations

import dataclasses

import onnx

from .errors import TfueError
from .model import ModelInfo, rename_tensor

MIN_OPSET = 10  # dynamic Slice (starts/ends/axes/steps as inputs)
TARGET_OPSET = 13


@dataclasses.dataclass(frozen=True)
class Conversion:
    """The outcome of converting a model with onnx.version_converter: the converted
    copy (``info``), or why it failed (``error``, one line; ``info`` None)."""

    source: int  # the model's own opset
    target: int  # the opset asked for
    info: ModelInfo | None  # the converted copy (None when the conversion failed)
    error: str | None = None  # onnx.version_converter's reason when it failed

    @property
    def ok(self) -> bool:
        """Whether a converted copy exists."""
        return self.info is not None


def needs_conversion(info: ModelInfo) -> bool:
    """Whether the model needs a converted copy for the tiled strategies and transforms.

    Args:
        info: the model.

    Returns:
        True when its default-domain opset is below MIN_OPSET.
    """
    return info.opset < MIN_OPSET


def convert(info: ModelInfo, target: int = TARGET_OPSET) -> Conversion:
    """Convert a copy of ``info``'s model to opset ``target``.

    Node and tensor names stay the model's own: onnx.version_converter keeps most,
    and the tensors it renames where it replaces a node (Upsample -> Resize makes
    ``_v_10`` of ``u``) get their original names back (``restore_names``), so every
    location of the original resolves on the copy. Dropout nodes it leaves unnamed
    get the name ``ModelInfo.dropouts`` gave them in the original, so ``--nodes``
    means the same thing.

    Args:
        info: the model as loaded (never modified).
        target: the opset to convert to.

    Returns:
        A :class:`Conversion`; its ``info`` is None and ``error`` says why when
        onnx.version_converter cannot convert the model.
    """
    from onnx import version_converter

    source = info.opset
    model = info.model
    if model.ir_version < 4:
        # IR 3 wants every initializer listed as a graph input; exporters (OnnxMLTools,
        # e.g. waifu2x's upconv_7) often left them out, which onnxruntime accepts but the
        # converter refuses ("Input ... is undefined"). From IR 4 on, they need not be.
        model = onnx.ModelProto()
        model.CopyFrom(info.model)
        model.ir_version = 4
    try:
        model = version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises RuntimeError/ValueError with C++ text
        return Conversion(source, target, None, _converter_message(exc, source, target))
    restore_names(info.model, model)
    _keep_dropout_names(info, model)
    return Conversion(source, target, ModelInfo(model, info.path))


def restore_names(original: onnx.ModelProto, converted: onnx.ModelProto) -> dict:
    """Give the tensors onnx.version_converter renamed their original names back.

    A tensor of the original that the converted graph lacks is matched through its
    consumers (a node of the copy making the same outputs, reading it at the same
    input position), else through its producer (the one node of the copy that reads
    the same inputs and makes a tensor the original does not have). Repeated until
    nothing changes, so chains of converted nodes are matched from the outputs back.

    Args:
        original: the model before conversion (never modified).
        converted: its converted copy, edited in place.

    Returns:
        The renames made, copy's name -> original name.
    """
    g, og = converted.graph, original.graph
    orig_made = [o for n in og.node for o in n.output if o]
    orig_set = set(orig_made) | {i.name for i in og.input} | {i.name for i in og.initializer}
    renames = {}
    while True:
        made = {o for n in g.node for o in n.output if o}
        lost = [t for t in orig_made if t not in made]
        strange = {o for o in made if o not in orig_set}
        found = {}
        for t in lost:
            new = _match_consumer(og, g, t, strange) or _match_producer(og, g, t, strange)
            if new is not None and new not in found and t not in found.values():
                found[new] = t
        if not found:
            return renames
        for old, new in found.items():
            rename_tensor(g, old, new)
        renames.update(found)


def _by_output(graph: onnx.GraphProto) -> dict:
    """Tensor name -> the node of ``graph`` that makes it."""
    return {o: n for n in graph.node for o in n.output if o}


def _match_consumer(og, g, t, strange):
    """The copy's name of the original's tensor ``t``, found through a consumer: the
    copy's node making the same outputs reads a ``strange`` name at ``t``'s position."""
    converted = _by_output(g)
    for node in og.node:
        for k, name in enumerate(node.input):
            if name != t:
                continue
            twin = next((converted[o] for o in node.output if o and o in converted), None)
            if twin is not None and k < len(twin.input) and twin.input[k] in strange:
                return twin.input[k]
    return None


def _match_producer(og, g, t, strange):
    """The copy's name of ``t``, found through its producer: the one node of the copy
    reading the same first input and making a ``strange`` tensor at ``t``'s position."""
    producer = _by_output(og).get(t)
    if producer is None:
        return None
    k = list(producer.output).index(t)
    reads = [i for i in producer.input if i]
    twins = [n for n in g.node if reads and [i for i in n.input if i][:1] == reads[:1]
             and len(n.output) > k and n.output[k] in strange]
    return twins[0].output[k] if len(twins) == 1 else None


def _converter_message(exc, source: int, target: int) -> str:
    """onnx.version_converter's exception as one readable line (at most 200 chars)."""
    text = str(exc).strip() or type(exc).__name__
    # "convert.cc:101: convert_graph: Assertion `...` failed: Op '%s' has no registered
    # schema; cannot convert it from version %lld to %lld.ImageScaler813": the format's
    # arguments (op, from, to) are appended unformatted.
    if "has no registered schema" in text:
        op = text.rsplit(".", 1)[-1].strip()
        versions = f"{source}{target}"
        if op.endswith(versions) and len(op) > len(versions):
            op = op[:-len(versions)]
        return (f"onnx.version_converter has no schema for op '{op}' (an experimental or "
                f"removed op), so it cannot convert it")
    text = text.splitlines()[0]
    if "failed: " in text:
        text = text.split("failed: ", 1)[1]
    return text[:200]


def _keep_dropout_names(info: ModelInfo, model: onnx.ModelProto) -> None:
    """Name the converted Dropout nodes as the original's (matched by output tensor)."""
    names = {d.output: d.name for d in info.dropouts}
    for node in model.graph.node:
        if node.op_type == "Dropout" and node.output and node.output[0] in names:
            node.name = names[node.output[0]]


def conversion_command(path: str | None, target: int = TARGET_OPSET) -> str:
    """A shell command that converts the model at ``path`` with onnx.version_converter.

    Args:
        path: the model file (None: a placeholder name).
        target: the opset to convert to.

    Returns:
        ``python -c "..."`` writing ``<name>_opset<target>.onnx`` beside the model.
    """
    src = path or "model.onnx"
    dst = (src[:-5] if src.endswith(".onnx") else src) + f"_opset{target}.onnx"
    return (f"python -c \"import onnx; from onnx import version_converter as vc; "
            f"onnx.save(vc.convert_version(onnx.load('{src}'), {target}), '{dst}')\"")


def conversion_failed(conversion: Conversion, what: str, path: str | None) -> TfueError:
    """The refusal for a method that needs MIN_OPSET on a model that cannot be converted.

    Args:
        conversion: the failed conversion.
        what: the method, as the message names it (e.g. "infer-transformation").
        path: the model file, for the command in the hint.

    Returns:
        A TfueError naming the converter's reason, with the conversion command as hint.
    """
    return TfueError(
        f"{what} needs opset >= {MIN_OPSET} and the model has opset {conversion.source}; "
        f"converting a copy to opset {conversion.target} failed: {conversion.error}",
        f"re-export the model at opset >= {MIN_OPSET}, or replace that op and convert it "
        f"with onnx.version_converter: {conversion_command(path, conversion.target)}")
