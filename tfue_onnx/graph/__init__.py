"""Build the uncertainty graph: the one place that rewrites models.

An uncertainty graph takes the model's original inputs and returns, for every
float output ``y``: ``y`` itself (unperturbed), ``y.mean`` and ``y.variance``
over the samples (and ``y.samples`` on request; ``y.mean_entropy`` for class
probabilities). Sampling happens inside the graph, so the graph the runner
executes is the graph ``tfue export`` writes.

- gray box (``graybox.py``): noise or dropout at a tensor, MC-dropout; strategies
  ``shared-prefix``, ``batched`` and ``loop``.
- black box (``blackbox.py``): input transforms (strategies ``batched``: the
  transforms that share a shape in one batch; ``loop``: one run each) and deep
  ensembles.

``build`` raises StrategyUnavailable when a strategy cannot apply to a model;
verification (``verify.py``) decides about the rest.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import TfueError
from ..model import ModelInfo
from ..perturb import Ensemble, Transform
from . import blackbox, graybox
from .builder import (OUTPUT_KEYS, Builder, StrategyUnavailable, UncertaintyGraph,
                      keep_versions, output_names, prefix_for, stats_outputs)

STRATEGIES = ("shared-prefix", "batched", "loop")

__all__ = ["build", "add_softmax", "check_samples", "output_names", "STRATEGIES",
           "StrategyUnavailable", "UncertaintyGraph"]


def check_samples(samples) -> int:
    """Validate N: an integer >= 2."""
    try:
        n = int(samples)
    except (TypeError, ValueError):
        raise TfueError(f"samples must be an integer, got {samples!r}",
                        "give --samples N with N >= 2, e.g. 8") from None
    if n != samples or n < 2:
        raise TfueError(f"samples must be an integer >= 2, got {samples}",
                        "variance needs at least 2 samples; give --samples 8")
    return n


def build(info: ModelInfo, spec, strategy: str = "batched", samples: int = 8, seed: int = 0,
          keep_samples: bool = False, classes: dict | None = None,
          axes=None) -> UncertaintyGraph:
    """Build the uncertainty graph of ``info``'s model for ``spec`` with ``strategy``.

    ``classes`` maps outputs holding class probabilities to their class axis; they
    also get ``.mean_entropy``. ``axes`` (an axes.SpatialAxes) says on which output
    axes transforms are undone (None: probed on a synthetic input). Raises StrategyUnavailable when the strategy
    cannot apply to this model, and TfueError for bad arguments.
    """
    if strategy not in STRATEGIES:
        raise TfueError(f"unknown strategy {strategy!r}", f"use one of {', '.join(STRATEGIES)}")
    names = {o.name for o in info.outputs}
    for o in info.outputs:
        for key in OUTPUT_KEYS:
            if f"{o.name}.{key}" in names:
                raise TfueError(f"the model already has an output named '{o.name}.{key}'",
                                "rename that output before using tfue")
    classes = dict(classes or {})
    if strategy == "shared-prefix" and isinstance(spec, (Transform, Ensemble)):
        raise StrategyUnavailable("black-box methods perturb the input: no prefix to share")
    if isinstance(spec, Transform):
        model, locations = blackbox.transforms(info, spec, strategy, keep_samples, classes,
                                                axes)
        samples_input, levels, samples = None, {}, len(spec.elements)
    elif isinstance(spec, Ensemble):
        if strategy != "batched":
            raise StrategyUnavailable("an ensemble runs every member once, in one graph")
        model, locations = blackbox.ensemble(info, spec, keep_samples, classes)
        samples_input, levels, samples = None, {}, len(spec.members)
    else:
        samples = check_samples(samples)
        model, perturber, samples_input, locations = graybox.BUILDERS[strategy](
            info, spec, samples, int(seed), keep_samples, classes)
        levels = {v.name: val for v, val in perturber.level_inputs}
    return UncertaintyGraph(
        model=model, strategy=strategy, stats_outputs=[o.name for o in stats_outputs(info)],
        samples_input=samples_input, level_inputs=levels, locations=locations,
        samples=samples, seed=int(seed), keep_samples=keep_samples, classes=classes)


def add_softmax(info: ModelInfo, outputs: dict) -> onnx.ModelProto:
    """The model with a softmax over the class axis appended to each output in
    ``outputs`` (name -> axis), for models that output logits. Names stay."""
    graph = gs.import_onnx(info.model)
    prefix = prefix_for(info.model)
    b = Builder(graph, prefix + "softmax/", info.opset)
    for i, out in enumerate(list(graph.outputs)):
        if out.name not in outputs:
            continue
        axis, dt = outputs[out.name], np.dtype(out.dtype)
        probs = gs.Variable(out.name, dtype=out.dtype, shape=out.shape)
        out.name = b.name("logits")
        # Built from plain ops: Softmax before opset 13 flattens the trailing axes.
        peak = b.with_axes("ReduceMax", out, [axis], {"keepdims": 1}, dtype=dt)
        e = b.op("Exp", [b.op("Sub", [out, peak], dtype=dt)], dtype=dt)
        total = b.with_axes("ReduceSum", e, [axis], {"keepdims": 1}, dtype=dt)
        b.op("Div", [e, total], out=probs)
        graph.outputs[i] = probs
    graph.cleanup().toposort()
    return keep_versions(gs.export_onnx(graph, do_type_check=False), info)
