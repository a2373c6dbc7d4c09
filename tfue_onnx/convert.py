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
from .model import ModelInfo

MIN_OPSET = 10  # dynamic Slice (starts/ends/axes/steps as inputs)
TARGET_OPSET = 13


@dataclasses.dataclass(frozen=True)
class Conversion:
    """The outcome of converting a model: the converted copy, or why it failed."""

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

    Node and tensor names stay the model's own (onnx.version_converter keeps them;
    Dropout nodes it leaves unnamed get the name ``ModelInfo.dropouts`` gave them
    in the original, so ``--nodes`` means the same thing).

    Args:
        info: the model as loaded (never modified).
        target: the opset to convert to.

    Returns:
        A :class:`Conversion`; its ``info`` is None and ``error`` says why when
        onnx.version_converter cannot convert the model.
    """
    from onnx import version_converter

    source = info.opset
    try:
        model = version_converter.convert_version(info.model, target)
    except Exception as exc:  # the converter raises RuntimeError/ValueError with C++ text
        return Conversion(source, target, None, _converter_message(exc, source, target))
    _keep_dropout_names(info, model)
    return Conversion(source, target, ModelInfo(model, info.path))


def _converter_message(exc, source: int, target: int) -> str:
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
