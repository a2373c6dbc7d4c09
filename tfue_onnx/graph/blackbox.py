"""Black-box sampling graphs: input transforms (infer-transformation) and ensembles.

Transforms: the model runs on D4-transformed copies of its input and the
inverse transform is applied to each output on the axes that carry the image's
height and width (found by running the model: ``axes.py``); outputs without
such axes are left as they are. Transforms
whose inputs share a shape (all of them for a square input; the 90° family
apart for a non-square one) run as one batch through one copy of the model
(``batched``), or each through a copy of its own when the batch size is fixed
(``loop``). Copies share the weights, and carry the model's control flow: a
copied If / Loop / Scan reads the copy's tensors inside its subgraphs
(``builder.clone_nodes``).

Ensembles: every member's nodes and weights join one graph that reads the same
input; member 0's output is the unperturbed output. Members exported by other
tools may name their inputs and outputs differently: they are wired by position
then (count, dtypes, ranks and fixed sizes must agree), and members at an older
opset are converted up to the newest member's, since ops change meaning across
opsets.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..convert import MIN_OPSET, conversion_command
from ..errors import ArgumentError, TfueError
from ..layout import image_axes
from ..model import ModelInfo, load_model
from ..names import FLOAT_DTYPES
from ..transforms import ELEMENTS, usable_sets
from .builder import (Builder, StrategyUnavailable, attach_stats, clone_nodes,
                      finish, prefix_for, rewire, stacked_name, stats_outputs)


def spatial_axes(info: ModelInfo, layout: str):
    """The input's spatial axes (h, w) and their sizes (ints, or strings when symbolic).

    ``layout`` ("auto", "NCHW", "NHWC") decides a 4-D input (io.image_layout); a 3-D
    input is [N, H, W].

    Raises:
        TfueError: the model has not exactly one input, or it is not of rank 3 or 4.
    """
    if len(info.inputs) != 1:
        raise TfueError(f"infer-transformation needs a model with one image input; this one has "
                        f"{len(info.inputs)}", "use a gray-box method (noise, dropout)")
    inp = info.inputs[0]
    if inp.shape is None or len(inp.shape) not in (3, 4):
        raise TfueError(f"input '{inp.name}' has shape {inp.shape}: infer-transformation needs "
                        "an image batch [N, C, H, W], [N, H, W, C] or [N, H, W]",
                        "use a gray-box method (noise, dropout)")
    axes = image_axes(inp, layout)
    return axes, (inp.shape[axes[0]], inp.shape[axes[1]])


def _swap_hw(b: Builder, x, axes, rank: int, dtype):
    """``x`` with its axes ``axes`` (h, w) swapped: a transpose of the image."""
    h, w = axes
    perm = list(range(rank))
    perm[h], perm[w] = w, h
    return b.op("Transpose", [x], {"perm": perm}, dtype=dtype)


def _forward(b: Builder, x, element, axes, rank, dtype):
    """``x`` transformed by the D4 ``element`` on its image axes (transpose, then flips)."""
    h, w = axes
    if element.transpose:
        x = _swap_hw(b, x, axes, rank, dtype)
    if element.flip_h:
        x = b.flip(x, h, dtype)
    if element.flip_w:
        x = b.flip(x, w, dtype)
    return x


def _inverse(b: Builder, y, element, axes, rank, dtype):
    """``y`` with ``element`` undone on its image ``axes`` (flips, then transpose);
    ``y`` as it is when ``axes`` is None."""
    if axes is None:  # no identified image axes (class scores, sequences): nothing to undo
        return y
    h, w = axes
    if element.flip_w:
        y = b.flip(y, w, dtype)
    if element.flip_h:
        y = b.flip(y, h, dtype)
    if element.transpose:
        y = _swap_hw(b, y, axes, rank, dtype)
    return y


def transforms(info: ModelInfo, spec, strategy: str, keep_samples: bool, classes: dict,
               out_axes=None):
    """The sampling graph of infer-transformation (Mi et al., "Training-Free Uncertainty
    Estimation"; see the module docstring).

    Args:
        info: the model (one image input [N, C, H, W], [N, H, W, C] or [N, H, W]).
        spec: a perturb.Transform.
        strategy: batched or loop.
        keep_samples: also return the stacked samples.
        classes: outputs holding class probabilities -> class axis.
        out_axes: an axes.SpatialAxes saying which axes of each output carry the
            image (``axes.find_axes`` or the runner's probe); each transform is undone
            on those axes only, and not at all on outputs without them. Required: the
            rewrite stage runs no model.

    Returns:
        (ModelProto, the transform names). The graph returns each output unperturbed
        under its own name and, per statistics output, the stack ``[T, *shape]`` of
        its T transformed-and-undone samples (same dtype and units as the output).

    Raises:
        TfueError: the model's opset is below MIN_OPSET, it has no image input, its
            fixed non-square input cannot take 90° rotations, or rotations cannot be
            undone on one of its outputs. StrategyUnavailable: batched on a fixed batch.
        ValueError: ``out_axes`` is None.
    """
    axes, rank = _check_transformable(info, spec)
    if out_axes is None:
        raise ValueError("transforms() needs the outputs' image axes: pass "
                         "out_axes=tfue_onnx.axes.find_axes(info, layout)")
    out_axes.check_rotations(spec.elements, [o.name for o in stats_outputs(info)])
    groups = _transform_groups(info, spec, strategy)
    graph = gs.import_onnx(info.model)
    prefix = prefix_for(info.model)
    b = Builder(graph, prefix, info.opset)
    inp = info.inputs[0]
    x = next(t for t in graph.inputs if t.name == inp.name)
    consumers = list(x.outputs)
    outputs = list(graph.outputs)
    x_first, firsts, samples = _transformed_copies(graph, info, b, groups, x, axes, rank,
                                                   out_axes)
    rewire(consumers, x, x_first)
    # Graph outputs: the unperturbed output under its own name, and the stacks.
    for o in outputs:
        o.name = b.name("copy0_out")
    graph.outputs = _transform_outputs(info, spec, b, firsts, samples)
    model = finish(graph, info)
    model = attach_stats(model, info, prefix, keep_samples, classes)
    return model, spec.names


def _check_transformable(info: ModelInfo, spec):
    """The input's image axes (h, w) and rank, or the TfueError that refuses the model
    (opset below MIN_OPSET, no image input, 90° rotations of a fixed non-square input)."""
    if info.opset < MIN_OPSET:  # the Estimator converts a copy first; this is for direct callers
        raise TfueError(f"infer-transformation needs opset >= {MIN_OPSET} (flips are Slices "
                        f"with steps); the model has opset {info.opset}",
                        "convert it with onnx.version_converter: " + conversion_command(info.path))
    axes, (h, w) = spatial_axes(info, spec.layout)
    fixed = isinstance(h, int) and h > 0 and isinstance(w, int) and w > 0
    if fixed and h != w and any(e.swaps_axes for e in spec.elements):
        raise TfueError(f"the model's input is fixed at {h}x{w}, so 90° rotations (which swap "
                        f"height and width) cannot run: {', '.join(spec.names)}",
                        "use one of the sets " + ", ".join(usable_sets(square=False)))
    return axes, len(info.inputs[0].shape)


def _transform_groups(info: ModelInfo, spec, strategy: str) -> list:
    """The transforms that run together, identity's group first: batched, those that
    keep the input's shape and those that swap its axes (two batches); loop, one each.
    Raises StrategyUnavailable for batched on a fixed batch size."""
    inp = info.inputs[0]
    identity = ELEMENTS["identity"]
    others = [e for e in spec.elements if e is not identity]
    if strategy != "batched":
        return [[identity]] + [[e] for e in others]
    if isinstance(inp.shape[0], int) and inp.shape[0] > 0:
        raise StrategyUnavailable(f"input '{inp.name}' has a fixed batch size "
                                  f"{inp.shape[0]}; transforms cannot share a batch")
    groups = [[identity] + [e for e in others if not e.swaps_axes],
              [e for e in others if e.swaps_axes]]
    return [g for g in groups if g]


def _transformed_copies(graph: gs.Graph, info: ModelInfo, b: Builder, groups, x, axes,
                        rank: int, out_axes):
    """Run each group of transforms through a copy of the model (the model's own nodes
    for the first group) and undo them on the outputs.

    Returns ``(x_first, firsts, samples)``: the first group's input (to rewire the
    model's own consumers of ``x`` to), output name -> identity's output, and
    transform name -> {output name: its sample}.
    """
    dtype = np.dtype(info.inputs[0].dtype)
    original_nodes = list(graph.nodes)
    outputs = list(graph.outputs)
    identity = ELEMENTS["identity"]
    samples, firsts, x_first = {}, {}, None
    for gi, group in enumerate(groups):
        xs = [_forward(b, x, e, axes, rank, dtype) for e in group]
        x_g = b.op("Concat", xs, {"axis": 0}, dtype=dtype) if len(xs) > 1 else \
            b.op("Identity", xs, dtype=dtype)
        if gi == 0:  # the model's own nodes serve the first group (rewired by the caller)
            x_first = x_g
            ys = outputs
        else:  # copies are made from the nodes as they still read x
            mapping = clone_nodes(graph, original_nodes, {id(x): x_g}, f"{b.prefix}copy{gi}/")
            ys = [mapping[id(o)] for o in outputs]
        for o, y_g in zip(info.outputs, ys):
            odt = np.dtype(o.dtype) if o.dtype in FLOAT_DTYPES else None
            parts = b.split(y_g, len(group), odt) if len(group) > 1 else [y_g]
            oaxes = out_axes.outputs.get(o.name)
            for e, part in zip(group, parts):
                if e is identity:
                    firsts[o.name] = part
                samples.setdefault(e.name, {})[o.name] = _inverse(
                    b, part, e, oaxes, out_axes.ranks.get(o.name, 0), odt)
    return x_first, firsts, samples


def _transform_outputs(info: ModelInfo, spec, b: Builder, firsts: dict,
                       samples: dict) -> list:
    """The graph outputs: each output unperturbed under its own name and, for each
    statistics output, the stack of its samples in ``spec``'s order."""
    final = []
    stats = {o.name for o in stats_outputs(info)}
    for o in info.outputs:
        final.append(b.op("Identity", [firsts[o.name]],
                          out=gs.Variable(o.name, dtype=firsts[o.name].dtype,
                                          shape=list(o.shape) if o.shape else None)))
        if o.name in stats:
            final.append(b.stack([samples[e.name][o.name] for e in spec.elements],
                                 out=gs.Variable(stacked_name(b.prefix, o.name),
                                                 dtype=np.dtype(o.dtype))))
    return final


def _tensor_difference(kind: str, k: int, ta, tc) -> str | None:
    """How member tensor ``tc`` differs from the main model's ``ta`` at position ``k``."""
    where = f"{kind[:-1]} {k} ('{tc.name}')"
    if ta.dtype != tc.dtype:
        return f"{where} has dtype {tc.dtype}, not {ta.dtype}"
    if ta.shape is not None and tc.shape is not None:
        if len(ta.shape) != len(tc.shape):
            return (f"{where} has rank {len(tc.shape)} {list(tc.shape)}, not {len(ta.shape)} "
                    f"{list(ta.shape)}")
        for d_a, d_c in zip(ta.shape, tc.shape):
            if isinstance(d_a, int) and isinstance(d_c, int) and d_a > 0 and d_c > 0 \
                    and d_a != d_c:
                return f"{where} has shape {list(tc.shape)}, not {list(ta.shape)}"
    return None


def _match(kind: str, a: list, c: list):
    """Pair the member's tensors ``c`` with the main model's ``a``.

    By name when both name the same set of tensors, else by position. Returns
    (pairs as (main tensor, member tensor), by_position), or a string saying
    exactly what differs.
    """
    names_a, names_c = [t.name for t in a], [t.name for t in c]
    if len(a) != len(c):
        return (f"it has {len(c)} {kind} {names_c}, the first model {len(a)} {names_a}")
    if sorted(names_a) == sorted(names_c):
        by_name = {t.name: t for t in c}
        pairs, by_position = [(t, by_name[t.name]) for t in a], False
    else:
        pairs, by_position = list(zip(a, c)), True
    for ta, tc in pairs:
        k = names_c.index(tc.name)
        diff = _tensor_difference(kind, k, ta, tc)
        if diff:
            return diff + (f" (matched by position to '{ta.name}')" if by_position else "")
    return pairs, by_position


def _signature_difference(main: ModelInfo, other: ModelInfo) -> str | None:
    """What keeps ``other`` from being an ensemble member beside ``main``, or None."""
    for kind in ("inputs", "outputs"):
        found = _match(kind, getattr(main, kind), getattr(other, kind))
        if isinstance(found, str):
            return found
    return None


def member_names(main: ModelInfo, other: ModelInfo) -> dict:
    """How a matching member's tensor names map to the main model's.

    Returns ``{"inputs": {member name: main name}, "outputs": {...}}``, listing
    only the names that differ (empty dicts when the member uses the same names).
    Raises TfueError when the signatures do not match.
    """
    found = {}
    for kind in ("inputs", "outputs"):
        pairs = _match(kind, getattr(main, kind), getattr(other, kind))
        if isinstance(pairs, str):
            raise TfueError(f"ensemble member does not match: {pairs}",
                            "every member needs the first model's inputs and outputs")
        found[kind] = {tc.name: ta.name for ta, tc in pairs[0] if ta.name != tc.name}
    return found


def _as_info(m, k: int) -> ModelInfo:
    """Member ``k`` (a path, ModelProto or ModelInfo) as a ModelInfo; TfueError else."""
    if isinstance(m, ModelInfo):
        return m
    if isinstance(m, (str, bytes)) or hasattr(m, "__fspath__"):
        return ModelInfo(load_model(m), str(m))
    if isinstance(m, onnx.ModelProto):
        return ModelInfo(m)
    raise TfueError(f"ensemble member {k} is a {type(m).__name__}, not a model",
                    "give members as .onnx paths or onnx.ModelProto objects")


def _check_member(info: ModelInfo, m, k: int) -> ModelInfo:
    """Member ``k`` loaded and checked against member 0 (``info``)."""
    other = _as_info(m, k)
    diff = _signature_difference(info, other)
    if diff:
        raise TfueError(f"ensemble member '{other.path or f'member {k}'}' does not match "
                        f"'{info.path or 'member 0'}': {diff}",
                        "every member must have the same number of inputs and outputs, "
                        "with the same dtypes and shapes (names may differ)")
    return other


def at_opset(m: ModelInfo, opset: int, label: str) -> ModelInfo:
    """``m`` converted up to ``opset`` (``convert.convert``), or ``m`` itself.

    Raises:
        TfueError: onnx.version_converter cannot convert ``m``; the hint gives the
            command that converts it by hand.
    """
    if m.opset >= opset:
        return m
    from .. import convert

    conversion = convert.convert(m, opset)
    if not conversion.ok:
        raise TfueError(
            f"ensemble member '{label}' has opset {m.opset} and another member "
            f"{opset}; converting a copy to {opset} failed: {conversion.error}",
            "export every member at the same opset, or convert this one with "
            f"onnx.version_converter: {convert.conversion_command(m.path, opset)}")
    return conversion.info


def ensemble_opset(info: ModelInfo, others) -> int:
    """The opset the members run at together: the newest among them.

    Ops change meaning across opsets (Softmax before and after 13), and the
    members run in one graph, so older members are converted up to it; converting
    down is not safe (onnx.version_converter drops such changes).
    """
    return max([info.opset] + [m.opset for m in others])


def member_infos(info: ModelInfo, members) -> list:
    """Load the other members and check each has the main model's signature.

    Inputs and outputs are matched by name when a member uses the main model's
    names, else by position (count, dtypes, ranks and fixed sizes must agree).

    Args:
        info: member 0, the model the estimator is built on.
        members: the other members (paths, ModelProtos or ModelInfos).

    Returns:
        The members' ModelInfos, in order.

    Raises:
        TfueError: a member cannot be read, or which of its inputs/outputs differs how.

    Members keep their own opsets here; ``ensemble`` (and the Estimator, once, with
    a note) bring them to the newest (see :func:`ensemble_opset`).
    """
    return [_check_member(info, m, k) for k, m in enumerate(members, start=1)]


def member_notes(info: ModelInfo, others: list) -> list:
    """One line per member of ``others`` whose tensor names differ from member 0's
    (``info``; matched by position), naming each renamed input and output."""
    notes = []
    for k, m in enumerate(others, start=1):
        names = member_names(info, m)
        renamed = [f"{kind[:-1]} '{a}' -> '{b}'" for kind in ("inputs", "outputs")
                   for a, b in names[kind].items()]
        if renamed:
            notes.append(f"ensemble member {k} ('{m.path or f'member {k}'}') names its tensors "
                         f"differently; matched by position: " + ", ".join(renamed))
    return notes


def ensemble(info: ModelInfo, spec, keep_samples: bool, classes: dict):
    """One graph holding every member; the samples are the members' outputs (deep
    ensembles, Lakshminarayanan et al.; member 0, ``info``, gives the unperturbed
    output).

    Members whose inputs and outputs are named differently are wired by position
    (see :func:`member_infos`); older opsets are converted up to the newest member's
    (onnx.version_converter, :func:`at_opset`).

    Args:
        info: member 0.
        spec: a perturb.Ensemble (its ``members``: the other models).
        keep_samples: also return ``y.samples`` ``[members, *shape]``.
        classes: outputs holding class probabilities -> class axis.

    Returns:
        (ModelProto, the members' labels, member 0's first).

    Raises:
        TfueError: a member cannot be read, does not match, or cannot be converted.
    """
    others = member_infos(info, spec.members)
    opset = ensemble_opset(info, others)
    base = at_opset(info, opset, info.path or "member 0")
    others = [at_opset(m, opset, m.path or f"member {k}") for k, m in enumerate(others, 1)]
    graph = gs.import_onnx(base.model)
    prefix = prefix_for(info.model, *(m.model for m in others))
    b = Builder(graph, prefix, base.opset)
    inputs = {t.name: t for t in graph.inputs}
    outs = {o.name: [o] for o in graph.outputs}
    for k, m in enumerate(others, start=1):
        names = member_names(info, m)
        rename_in = {n: names["inputs"].get(n, n) for n in (t.name for t in m.inputs)}
        mg = gs.import_onnx(m.model)
        mapping = {id(t): inputs[rename_in[t.name]] for t in mg.inputs if t.name in rename_in}
        mapping = clone_nodes(graph, mg.nodes, mapping, f"{prefix}m{k}/",
                              const_prefix=f"{prefix}m{k}/")
        for o in mg.outputs:
            # A member output that is its input (or a constant) is not made by a node.
            outs[names["outputs"].get(o.name, o.name)].append(mapping.get(id(o), o))
    stats = {o.name for o in stats_outputs(info)}
    final = list(graph.outputs)
    for o in info.outputs:
        if o.name in stats:
            final.append(b.stack(outs[o.name], dtype=np.dtype(o.dtype),
                                 out=gs.Variable(stacked_name(prefix, o.name),
                                                 dtype=np.dtype(o.dtype))))
    graph.outputs = final
    model = _with_member_domains(finish(graph, base), others)
    model = attach_stats(model, info, prefix, keep_samples, classes)
    return model, member_labels(info, others)


def _with_member_domains(model: onnx.ModelProto, others) -> onnx.ModelProto:
    """``model`` importing the op domains (e.g. com.microsoft) that members use and
    member 0 does not, in place."""
    domains = {imp.domain for imp in model.opset_import}
    for m in others:
        for imp in m.model.opset_import:
            if imp.domain not in domains:
                model.opset_import.append(imp)
                domains.add(imp.domain)
    return model


def member_labels(info: ModelInfo, others) -> list:
    """The members' names in results: their paths, or ``member k`` for a model given
    in memory (member 0, ``info``, first)."""
    return [info.path or "member 0"] + [m.path or f"member {k}"
                                        for k, m in enumerate(others, start=1)]


def model_files(paths) -> list:
    """Expand folders among ``paths`` into the .onnx files they hold (sorted), in order.

    Raises:
        TfueError: a path does not exist, or a folder holds no .onnx file.
    """
    import os

    found = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            inside = sorted(os.path.join(p, f) for f in os.listdir(p)
                            if f.lower().endswith(".onnx") and
                            os.path.isfile(os.path.join(p, f)))
            if not inside:
                raise TfueError(f"folder '{p}' holds no .onnx model",
                                "give an .onnx file, or a folder with .onnx files in it")
            found += [(f, True) for f in inside]
        elif os.path.exists(p):
            found.append((p, False))
        else:
            raise TfueError(f"model file '{p}' does not exist", "check the path")
    return found


def collect_members(paths):
    """The ensemble members that ``paths`` (files or folders of .onnx files) name.

    The first model found is member 0. A file named twice (e.g. given as the
    model and inside a folder also given) counts once. A model found in a folder
    whose inputs or outputs do not match member 0's (e.g. an ``_mcdropout``
    twin with more outputs) is skipped, and why is said in the notes; a model
    named explicitly must match (``member_infos`` refuses it otherwise).

    Args:
        paths: the model paths as the user gave them, member 0's first.

    Returns:
        (members, notes): the member ModelInfos in order (member 0 first), and
        one line per file counted once or skipped.

    Raises:
        TfueError: a path is missing, a folder holds no model, or a file is not ONNX.
    """
    import os

    members, notes, seen = [], [], {}
    for path, from_folder in model_files(paths):
        key = os.path.realpath(path)
        if key in seen:
            notes.append(f"'{path}' is the same file as member '{seen[key]}': counted once")
            continue
        info = ModelInfo(load_model(path), path)
        if members and from_folder:
            diff = _signature_difference(members[0], info)
            if diff:
                notes.append(f"skipped '{path}': not a member like '{members[0].path}' ({diff})")
                continue
        seen[key] = path
        members.append(info)
    return members, notes


def _expand_folders(info: ModelInfo, members) -> tuple:
    """(members, notes): folders among ``members`` replaced by the models they hold."""
    import os

    paths = all(isinstance(m, (str, os.PathLike)) for m in members)
    if paths and info.path is not None:  # folders expanded, a file named twice counted once
        infos, notes = collect_members([info.path] + list(members))
        if len(infos) < 2:
            raise ArgumentError(f"an ensemble needs at least 2 models, got {len(infos)} ("
                                f"the members name the model itself)",
                                "pass other .onnx files (or a folder of them) as members")
        return infos[1:], notes
    if not any(isinstance(m, (str, os.PathLike)) and os.path.isdir(m) for m in members):
        return list(members), []
    if not all(isinstance(m, (str, os.PathLike)) for m in members):
        found = []
        for m in members:
            is_dir = isinstance(m, (str, os.PathLike)) and os.path.isdir(m)
            found += [f for f, _ in model_files([m])] if is_dir else [m]
        return found, []
    return [f for f, _ in model_files(members)], []  # no file to compare with: every model


def resolve_members(info: ModelInfo, spec):
    """Load and check ``spec``'s members against member 0 (``info``).

    Returns:
        (spec, members, notes): the spec with ``renamed`` filled in (recorded in
        results), the members' ModelInfos, and one line per member matched by
        position (for --verbose).

    Members given as folders are expanded into the .onnx files they hold, as on the
    command line (:func:`collect_members`: a file of member 0 counted once, a folder's
    model that does not match member 0 skipped, each said in the notes).

    Raises:
        TfueError: a member does not match (see :func:`member_infos`), a folder holds
            no model.
    """
    import dataclasses

    members, expanded = _expand_folders(info, spec.members)
    others = member_infos(info, members)
    notes, renamed = list(expanded), []
    for k, m in enumerate(others, start=1):
        names = member_names(info, m)
        if names["inputs"] or names["outputs"]:
            renamed.append((spec.label(m, k), names))
    notes += member_notes(info, others)
    if len(others) != len(spec.members):  # folders expanded: the spec lists every member
        spec = dataclasses.replace(spec, members=tuple(others),
                                   notes=tuple(spec.notes) + tuple(expanded))
    elif expanded:
        spec = dataclasses.replace(spec, notes=tuple(spec.notes) + tuple(expanded))
    return dataclasses.replace(spec, renamed=tuple(renamed)), others, notes
