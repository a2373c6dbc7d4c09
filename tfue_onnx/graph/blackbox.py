"""Black-box sampling graphs: input transforms (infer-transformation) and ensembles.

Transforms: the model runs on D4-transformed copies of its input and the
inverse transform is applied to each output on the axes that carry the image's
height and width (found by running the model: ``axes.py``); outputs without
such axes are left as they are. Transforms
whose inputs share a shape (all of them for a square input; the 90° family
apart for a non-square one) run as one batch through one copy of the model
(``batched``), or each through a copy of its own when the batch size is fixed
(``loop``). Copies share the weights.

Ensembles: every member's nodes and weights join one graph that reads the same
input; member 0's output is the unperturbed output.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import TfueError
from ..io import image_layout
from ..model import ModelInfo, load_model
from ..transforms import ELEMENTS, usable_sets
from .builder import (Builder, StrategyUnavailable, attach_stats, check_subgraphs, clone_nodes,
                      finish, prefix_for, stacked_name, stats_outputs)


def spatial_axes(info: ModelInfo, layout: str):
    """The input's spatial axes (h, w) and their sizes."""
    if len(info.inputs) != 1:
        raise TfueError(f"infer-transformation needs a model with one image input; this one has "
                        f"{len(info.inputs)}", "use a gray-box method (noise, dropout)")
    inp = info.inputs[0]
    if inp.shape is None or len(inp.shape) not in (3, 4):
        raise TfueError(f"input '{inp.name}' has shape {inp.shape}: infer-transformation needs "
                        "an image batch [N, C, H, W], [N, H, W, C] or [N, H, W]",
                        "use a gray-box method (noise, dropout)")
    if len(inp.shape) == 3:
        axes = (1, 2)
    else:
        axes = (2, 3) if image_layout(inp, layout) == "NCHW" else (1, 2)
    return axes, (inp.shape[axes[0]], inp.shape[axes[1]])


def _forward(b: Builder, x, element, axes, rank, dtype):
    h, w = axes
    if element.transpose:
        perm = list(range(rank))
        perm[h], perm[w] = w, h
        x = b.op("Transpose", [x], {"perm": perm}, dtype=dtype)
    if element.flip_h:
        x = b.flip(x, h, dtype)
    if element.flip_w:
        x = b.flip(x, w, dtype)
    return x


def _inverse(b: Builder, y, element, axes, rank, dtype):
    if axes is None:  # no identified image axes (class scores, sequences): nothing to undo
        return y
    h, w = axes
    if element.flip_w:
        y = b.flip(y, w, dtype)
    if element.flip_h:
        y = b.flip(y, h, dtype)
    if element.transpose:
        perm = list(range(rank))
        perm[h], perm[w] = w, h
        y = b.op("Transpose", [y], {"perm": perm}, dtype=dtype)
    return y


def find_axes(info: ModelInfo, layout: str = "auto"):
    """The outputs' image axes (axes.SpatialAxes), probed on a synthetic input: the
    input's fixed sizes, 64 for free height and width, 1 for a free batch."""
    from ..axes import AxesProbe
    from ..session import create_session

    sess, _ = create_session(info.model, "cpu")
    names = [o.name for o in info.outputs]

    def run(feeds):
        return dict(zip(names, sess.run(names, feeds)))

    inp = info.inputs[0]
    shape = [d if isinstance(d, int) and d > 0 else (1 if k == 0 else 64)
             for k, d in enumerate(inp.shape)]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.dtype(inp.dtype))
    return AxesProbe(info, run, layout)({inp.name: x})


def transforms(info: ModelInfo, spec, strategy: str, keep_samples: bool, classes: dict,
               out_axes=None):
    """The sampling graph of infer-transformation (see the module docstring).

    Args:
        info: the model.
        spec: a perturb.Transform.
        strategy: batched or loop.
        keep_samples: also return the stacked samples.
        classes: outputs holding class probabilities -> class axis.
        out_axes: an axes.SpatialAxes saying which axes of each output carry the
            image; each transform is undone on those axes only, and not at all on
            outputs without them. None: probed here on a synthetic input.

    Returns:
        (ModelProto, the transform names).

    Raises:
        TfueError: the model has no image input, or rotations cannot be undone on
            one of its outputs. StrategyUnavailable: the strategy cannot apply.
    """
    if info.opset < 10:
        raise TfueError(f"infer-transformation needs opset >= 10 (flips are Slices with steps); "
                        f"the model has opset {info.opset}",
                        "convert the model with onnx.version_converter")
    axes, (h, w) = spatial_axes(info, spec.layout)
    inp = info.inputs[0]
    rank = len(inp.shape)
    fixed = isinstance(h, int) and h > 0 and isinstance(w, int) and w > 0
    if fixed and h != w and any(e.swaps_axes for e in spec.elements):
        raise TfueError(f"the model's input is fixed at {h}x{w}, so 90° rotations (which swap "
                        f"height and width) cannot run: {', '.join(spec.names)}",
                        "use one of the sets " + ", ".join(usable_sets(square=False)))
    if out_axes is None:
        out_axes = find_axes(info, spec.layout)
    out_axes.check_rotations(spec.elements, [o.name for o in stats_outputs(info)])
    batch_fixed = isinstance(inp.shape[0], int) and inp.shape[0] > 0
    identity = ELEMENTS["identity"]
    others = [e for e in spec.elements if e is not identity]
    if strategy == "batched":
        if batch_fixed:
            raise StrategyUnavailable(f"input '{inp.name}' has a fixed batch size "
                                      f"{inp.shape[0]}; transforms cannot share a batch")
        groups = [[identity] + [e for e in others if not e.swaps_axes],
                  [e for e in others if e.swaps_axes]]
        groups = [g for g in groups if g]
    else:
        groups = [[identity]] + [[e] for e in others]
    if len(groups) > 1:
        check_subgraphs(info.model, "infer-transformation")

    graph = gs.import_onnx(info.model)
    prefix = prefix_for(info.model)
    b = Builder(graph, prefix, info.opset)
    x = next(t for t in graph.inputs if t.name == inp.name)
    dtype = np.dtype(inp.dtype)
    original_nodes = list(graph.nodes)
    consumers = list(x.outputs)
    outputs = list(graph.outputs)

    samples = {}  # element name -> {output name: sample tensor}
    firsts = {}
    for gi, group in enumerate(groups):
        xs = [_forward(b, x, e, axes, rank, dtype) for e in group]
        x_g = b.op("Concat", xs, {"axis": 0}, dtype=dtype) if len(xs) > 1 else \
            b.op("Identity", xs, dtype=dtype)
        if gi == 0:  # the model's own nodes serve the first group (rewired below)
            x_first = x_g
            ys = outputs
        else:  # copies are made from the nodes as they still read x
            mapping = clone_nodes(graph, original_nodes, {id(x): x_g}, f"{prefix}copy{gi}/")
            ys = [mapping[id(o)] for o in outputs]
        for o, y_g in zip(info.outputs, ys):
            odt = np.dtype(o.dtype) if o.dtype in ("float32", "float64", "float16") else None
            parts = b.split(y_g, len(group), odt) if len(group) > 1 else [y_g]
            oaxes = out_axes.outputs.get(o.name)
            for e, part in zip(group, parts):
                if e is identity:
                    firsts[o.name] = part
                samples.setdefault(e.name, {})[o.name] = _inverse(
                    b, part, e, oaxes, out_axes.ranks.get(o.name, 0), odt)

    for node in consumers:
        for i, t in enumerate(node.inputs):
            if t is x:
                node.inputs[i] = x_first
    # Graph outputs: the unperturbed output under its own name, and the stacks.
    for o in outputs:
        o.name = b.name("copy0_out")
    final = []
    stats = {o.name for o in stats_outputs(info)}
    for o in info.outputs:
        final.append(b.op("Identity", [firsts[o.name]],
                          out=gs.Variable(o.name, dtype=firsts[o.name].dtype,
                                          shape=list(o.shape) if o.shape else None)))
        if o.name in stats:
            final.append(b.stack([samples[e.name][o.name] for e in spec.elements],
                                 out=gs.Variable(stacked_name(prefix, o.name),
                                                 dtype=np.dtype(o.dtype))))
    graph.outputs = final
    model = finish(graph, info)
    model = attach_stats(model, info, prefix, keep_samples, classes)
    return model, spec.names


def _signature_difference(main: ModelInfo, other: ModelInfo) -> str | None:
    for kind in ("inputs", "outputs"):
        a, c = getattr(main, kind), getattr(other, kind)
        if [t.name for t in a] != [t.name for t in c]:
            return f"its {kind} are {[t.name for t in c]}, not {[t.name for t in a]}"
        for ta, tc in zip(a, c):
            if ta.dtype != tc.dtype:
                return f"{kind[:-1]} '{ta.name}' has dtype {tc.dtype}, not {ta.dtype}"
            if ta.shape is not None and tc.shape is not None:
                if len(ta.shape) != len(tc.shape):
                    return (f"{kind[:-1]} '{ta.name}' has rank {len(tc.shape)}, not "
                            f"{len(ta.shape)}")
                for d_a, d_c in zip(ta.shape, tc.shape):
                    if isinstance(d_a, int) and isinstance(d_c, int) and d_a > 0 and d_c > 0 \
                            and d_a != d_c:
                        return f"{kind[:-1]} '{ta.name}' has shape {list(tc.shape)}, not " \
                               f"{list(ta.shape)}"
    return None


def member_infos(info: ModelInfo, members) -> list:
    """Load the other members and check each has the main model's signature."""
    infos = []
    for k, m in enumerate(members, start=1):
        if isinstance(m, ModelInfo):
            other = m
        elif isinstance(m, (str, bytes)) or hasattr(m, "__fspath__"):
            other = ModelInfo(load_model(m), str(m))
        else:
            other = ModelInfo(m)
        diff = _signature_difference(info, other)
        if diff:
            label = other.path or f"member {k}"
            raise TfueError(f"ensemble member '{label}' does not match "
                            f"'{info.path or 'member 0'}': {diff}",
                            "every member must have the same inputs and outputs (names, dtypes, "
                            "shapes)")
        infos.append(other)
    return infos


def ensemble(info: ModelInfo, spec, keep_samples: bool, classes: dict):
    """One graph holding every member; the samples are the members' outputs."""
    others = member_infos(info, spec.members)
    for m in [info] + others:
        check_subgraphs(m.model, "an ensemble")
    graph = gs.import_onnx(info.model)
    prefix = prefix_for(info.model, *(m.model for m in others))
    b = Builder(graph, prefix, info.opset)
    inputs = {t.name: t for t in graph.inputs}
    outs = {o.name: [o] for o in graph.outputs}
    for k, m in enumerate(others, start=1):
        mg = gs.import_onnx(m.model)
        mapping = {id(t): inputs[t.name] for t in mg.inputs if t.name in inputs}
        mapping = clone_nodes(graph, mg.nodes, mapping, f"{prefix}m{k}/",
                              const_prefix=f"{prefix}m{k}/")
        for o in mg.outputs:
            outs[o.name].append(mapping[id(o)])
    stats = {o.name for o in stats_outputs(info)}
    final = list(graph.outputs)
    for o in info.outputs:
        if o.name in stats:
            final.append(b.stack(outs[o.name], dtype=np.dtype(o.dtype),
                                 out=gs.Variable(stacked_name(prefix, o.name),
                                                 dtype=np.dtype(o.dtype))))
    graph.outputs = final
    model = finish(graph, info)
    model = attach_stats(model, info, prefix, keep_samples, classes)
    return model, [info.path or "member 0"] + [m.path or f"member {k}"
                                               for k, m in enumerate(others, start=1)]
