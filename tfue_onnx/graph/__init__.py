"""Build the uncertainty graph: the one place that rewrites models.

An uncertainty graph takes the model's original inputs and returns, for every
float output ``y``: ``y`` itself (unperturbed), ``y.mean`` and ``y.variance``
over the samples (and ``y.samples`` on request; ``y.mean_entropy`` for class
probabilities). One builder makes both graphs that use it: the runner's, whose
gray-box draws are inputs fed from the seed and the sample index
(``sampling="fed"``: results do not depend on chunks, strategy or earlier runs),
and the one ``tfue export`` writes, which draws inside the graph
(``sampling="graph"``: a file needs no tfue to run).

- gray box (``graybox.py``): noise or dropout at a tensor, MC-dropout; strategies
  ``shared-prefix``, ``batched`` and ``loop``.
- black box (``blackbox.py``): input transforms (strategies ``batched``: the
  transforms that share a shape in one batch; ``loop``: one run each) and deep
  ensembles.

``build`` raises StrategyUnavailable when a strategy cannot apply to a model;
verification (``verify.py``) decides about the rest.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import ArgumentError, TfueError
from ..model import ModelInfo
from ..perturb import Ensemble, Transform, check_samples
from . import blackbox, graybox
from .builder import (OUTPUT_KEYS, SAMPLING, SAMPLING_NOTE, Builder, Draw, StrategyUnavailable,
                      UncertaintyGraph, isolate_outputs, keep_ranks, keep_versions, output_names,
                      prefix_for, restore_outputs, stats_outputs)

from ..names import GRAPH_STRATEGIES, STRATEGIES  # noqa: E402 (defined once, there)

__all__ = ["build", "add_softmax", "with_softmax", "check_samples", "output_names",
           "location_probe", "STRATEGIES", "GRAPH_STRATEGIES", "SAMPLING", "SAMPLING_NOTE", "Draw",
           "StrategyUnavailable", "UncertaintyGraph"]

location_probe = graybox.location_probe


def build(info: ModelInfo, spec, strategy: str = "batched", samples: int = 8, seed: int = 0,
          keep_samples: bool = False, classes: dict | None = None,
          sampling: str = "fed", axes=None) -> UncertaintyGraph:
    """Build the uncertainty graph of ``info``'s model for ``spec`` with ``strategy``.

    Args:
        info: the model (never changed).
        spec: a perturb.Noise / Dropout / MCDropout (gray box: Mi et al., "Training-Free
            Uncertainty Estimation", infer-noise and infer-dropout; MC-dropout, Gal &
            Ghahramani), a Transform (infer-transformation) or an Ensemble.
        strategy: one of STRATEGIES.
        samples: the default number of gray-box samples (int >= 1); transforms and
            ensembles have one per transform or member.
        seed: seeds the gray-box draws.
        keep_samples: also return ``y.samples`` ``[n, *shape]``.
        classes: outputs holding class probabilities -> class axis; they also get
            ``y.mean_entropy`` (nats).
        sampling: where gray-box draws come from: ``fed`` (graph inputs the runner
            fills from the seed and the sample index, see ``UncertaintyGraph.feeds``:
            reproducible across chunks, strategies and inputs) or ``graph`` (seeded
            RandomNormalLike / RandomUniformLike, for a standalone export).
        axes: an axes.SpatialAxes of the model's own outputs (e.g. from
            ``axes.find_axes``): where transforms are undone; required for a Transform
            (this stage runs no model).

    Returns:
        The UncertaintyGraph: its model has the model's inputs (plus levels, banks and
        the sample count for gray box) and, per float output ``y``, ``y``, ``y.mean``
        and ``y.variance`` (squared output units), ``y.samples`` when asked.

    Raises:
        StrategyUnavailable: the strategy cannot apply to this model.
        ValueError: a Transform without ``axes``.
        TfueError: an unknown strategy or sampling, an output already named like a
            statistic (``y.mean``), an unknown location or Dropout node.
    """
    _check_arguments(info, strategy, sampling)
    classes = dict(classes or {})
    if strategy in ("shared-prefix", "looped-suffix") and isinstance(spec, (Transform, Ensemble)):
        raise StrategyUnavailable("black-box methods perturb the input: no prefix to share")
    if getattr(spec, "at", None) is not None:  # locations refer to the user's graph
        spec = dataclasses.replace(spec, at=info.resolve_location(spec.at).name)
    spec, iso, members = _isolated(info, spec)
    inner_classes = {t: axis for name, axis in classes.items() for t in iso.names(name)}
    if isinstance(spec, (Transform, Ensemble)):
        parts = _blackbox_parts(info, iso, spec, strategy, keep_samples, inner_classes, axes,
                                members)
    else:
        parts = _graybox_parts(iso, spec, strategy, samples, seed, keep_samples,
                               inner_classes, sampling)
    parts["model"] = keep_ranks(restore_outputs(parts["model"], iso))
    stats = list(dict.fromkeys(o.name for o in stats_outputs(info) if o.name not in iso.constant))
    return UncertaintyGraph(strategy=strategy, stats_outputs=stats, seed=int(seed),
                            keep_samples=keep_samples,
                            classes={k: v for k, v in classes.items() if k in stats}, **parts)


def _check_arguments(info: ModelInfo, strategy: str, sampling: str) -> None:
    """Refuse (TfueError) an unknown strategy or sampling, and a model whose outputs
    already use the names the statistics take."""
    if strategy not in STRATEGIES:
        raise ArgumentError(f"unknown strategy {strategy!r}", f"use one of {', '.join(STRATEGIES)}")
    if sampling not in SAMPLING:
        raise RuntimeError(f"tfue internal: unknown sampling {sampling!r} (not {SAMPLING})")
    names = {o.name for o in info.outputs}
    for o in info.outputs:
        for key in OUTPUT_KEYS:
            if f"{o.name}.{key}" in names:
                raise TfueError(f"the model already has an output named '{o.name}.{key}'",
                                "rename that output before using tfue")


def _isolated(info: ModelInfo, spec):
    """``(spec, isolation, members)``: the model (and an ensemble's members, checked and
    put in ``spec``) with every output a tensor of its own (builder.isolate_outputs)."""
    if not isinstance(spec, Ensemble):
        return spec, isolate_outputs(info), []
    members = blackbox.member_infos(info, spec.members)  # checks the signatures
    iso, *isolated = isolate_outputs(info, members)
    return Ensemble(tuple(m.info for m in isolated)), iso, members


def _blackbox_parts(info, iso, spec, strategy, keep_samples, classes, axes, members) -> dict:
    """The UncertaintyGraph fields of a transform or ensemble graph (nothing random)."""
    if isinstance(spec, Transform):
        if axes is not None:
            axes = axes.renamed({t: name for name in axes.outputs for t in iso.names(name)})
        model, locations = blackbox.transforms(iso.info, spec, strategy, keep_samples,
                                               classes, axes)
        count = len(spec.elements)
    else:
        if strategy != "batched":
            raise StrategyUnavailable("an ensemble runs every member once, in one graph")
        model, _ = blackbox.ensemble(iso.info, spec, keep_samples, classes)
        locations, count = blackbox.member_labels(info, members), len(spec.members)
    return dict(model=model, samples_input=None, level_inputs={}, locations=locations,
                samples=count)


def _graybox_parts(iso, spec, strategy, samples, seed, keep_samples, classes,
                   sampling) -> dict:
    """The UncertaintyGraph fields of a gray-box graph (noise, dropout, MC-dropout):
    its levels, draws and, for looped-suffix, the prefix that computes the cut."""
    samples = check_samples(samples)
    model, perturber, samples_input, locations, *cut = graybox.BUILDERS[strategy](
        iso.info, spec, samples, int(seed), keep_samples, classes, sampling=sampling)
    prefix_model = None
    if cut:  # looped-suffix: the prefix computes what crosses into the suffix
        cut = cut[0]
        prefix_model = graybox.cut_model(iso.info, {n: None for n in cut})
    return dict(model=model, samples_input=samples_input,
                level_inputs={v.name: val for v, val in perturber.level_inputs},
                locations=locations, samples=samples,
                draws=[d for _, d in perturber.bank_inputs], sampling=sampling,
                relative_axes=dict(perturber.relative_axes), prefix=prefix_model,
                cut=list(cut))


def add_softmax(info: ModelInfo, outputs: dict) -> onnx.ModelProto:
    """The model with a softmax over the class axis appended to each output in
    ``outputs`` (name -> axis), for models that output logits. Names stay: each such
    output becomes probabilities (same shape and dtype) under its own name; an output
    that is a graph input or a constant is left as it is."""
    return _append_softmax(info, outputs)[0]


def with_softmax(info: ModelInfo, outputs: dict) -> ModelInfo:
    """``info`` with a softmax appended to ``outputs`` (see ``add_softmax``), whose
    locations still refer to the user's graph: ``--at NAME`` of a softmaxed output
    perturbs the logits before the softmax, and depths and indices are unchanged.

    Args:
        info: the user's model.
        outputs: output name -> class axis.

    Returns:
        The ModelInfo of the new model (``locations_from`` is ``info``).
    """
    model, aliases = _append_softmax(info, outputs)
    return ModelInfo(model, info.path, locations_from=info, aliases=aliases)


def _append_softmax(info: ModelInfo, outputs: dict):
    """``(model, aliases)``: the softmaxed model (plain ops: Softmax before opset 13
    flattens the trailing axes) and user output name -> the logits' new name."""
    graph = gs.import_onnx(info.model)
    prefix = prefix_for(info.model)
    b = Builder(graph, prefix + "softmax/", info.opset)
    aliases = {}
    for i, out in enumerate(list(graph.outputs)):
        if out.name not in outputs or out.name in aliases or isinstance(out, gs.Constant) or \
                any(out is t for t in graph.inputs):  # a returned input keeps its name
            continue
        axis, dt = outputs[out.name], np.dtype(out.dtype)
        probs = gs.Variable(out.name, dtype=out.dtype, shape=out.shape)
        user_name, out.name = out.name, b.name("logits")
        aliases[user_name] = out.name
        # Built from plain ops: Softmax before opset 13 flattens the trailing axes.
        peak = b.with_axes("ReduceMax", out, [axis], {"keepdims": 1}, dtype=dt)
        e = b.op("Exp", [b.op("Sub", [out, peak], dtype=dt)], dtype=dt)
        total = b.with_axes("ReduceSum", e, [axis], {"keepdims": 1}, dtype=dt)
        b.op("Div", [e, total], out=probs)
        for k, other in enumerate(graph.outputs):  # the same output listed again
            if other is out:
                graph.outputs[k] = probs
    graph.cleanup().toposort()
    return keep_versions(gs.export_onnx(graph, do_type_check=False), info), aliases
