"""Run an uncertainty graph: strategies, verification, chunks, streaming statistics.

An :class:`Estimator` owns one model and one perturbation spec. It builds the
uncertainty graph for the fastest strategy that passes verification, creates
its session once, and for each input runs the samples in chunks, merging the
per-chunk mean and variance (computed in the graph) with Chan's update.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets

import numpy as np
import onnx

from . import graph as graphs
from .errors import TfueError
from .external import save_model, writes_data_file
from .files import check_new_file
from .model import ModelInfo, load_model
from .perturb import (SAMPLED, SPECS, Dropout, Ensemble, Entropy, Noise, Transform,
                      check_max_memory, check_samples, check_seed)
from .session import create_session
from .stats import RunningStats, entropy, winning_class_variance
from .results import OutputStats, Result
from .verify import (Verdict, check_chunk_independence, check_identity, check_statistics,
                     check_unperturbed_slot, result_outputs)

EXPORT_SAMPLING_NOTE = ("in-graph: onnxruntime's seeded RandomNormalLike/RandomUniformLike; each "
                        "run of a session draws anew, a fresh session repeats the same sequence")

DEFAULT_CHUNK = 8
MAX_AUTO_CHUNK = 64
DEFAULT_MAX_MEMORY = 2 * 1024**3


def _peak_bytes(model, feeds) -> int:
    """Peak bytes of the tensors alive at once while ``model`` runs on ``feeds``.

    Shape inference sizes every tensor at the real input shape; walking the nodes in
    order, a tensor lives from the node that makes it to the last node that reads it
    (graph outputs to the end), and the peak of the live total is the estimate
    (weights are not counted: they do not grow with the samples). Tensors shape
    inference cannot size count as nothing, so this is an estimate, not a bound.
    Without shape inference, the inputs' bytes.
    """
    import onnx

    from .model import node_inputs

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in feeds:
            dims = vi.type.tensor_type.shape.dim
            for d, size in zip(dims, feeds[vi.name].shape):
                d.Clear()
                d.dim_value = int(size)
    fed = sum(int(v.nbytes) for v in feeds.values())
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:
        return fed
    size = {k: int(v.nbytes) for k, v in feeds.items()}
    for vi in list(m.graph.value_info) + list(m.graph.output):
        tt = vi.type.tensor_type
        dims = [d.dim_value for d in tt.shape.dim]
        if not tt.HasField("shape") or any(d <= 0 for d in dims):
            continue
        try:
            item = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).itemsize
        except Exception:
            item = 4
        size[vi.name] = int(np.prod(dims, dtype=np.int64)) * item
    nodes = list(m.graph.node)
    last = {}
    for k, node in enumerate(nodes):
        for name in node_inputs(node):
            last[name] = k
    for o in m.graph.output:
        last[o.name] = len(nodes)
    live = dict((k, v) for k, v in size.items() if k in feeds)
    total = peak = sum(live.values())
    for k, node in enumerate(nodes):
        for o in node.output:
            if o in size and o not in live:
                live[o] = size[o]
                total += size[o]
        peak = max(peak, total)
        for name in set(node_inputs(node)) | set(node.output):
            if name in live and last.get(name, -1) <= k:
                total -= live.pop(name)
    return max(peak, fed)


@dataclasses.dataclass
class _Split:
    """The looped-suffix strategy's sessions: the prefix, and the suffix per intra-op
    thread count (None: onnxruntime's default), made when first asked for."""

    prefix: object
    make_suffix: object  # callable(threads) -> session
    suffix: dict = dataclasses.field(default_factory=dict)
    spare: bool = True  # whether a second suffix session (another thread count) may be made

    def suffix_for(self, threads=None):
        if threads not in self.suffix:
            self.suffix[threads] = self.make_suffix(threads)
        return self.suffix[threads]

    def drop(self, keep) -> None:
        """Let go of the suffix sessions of other thread counts than ``keep``."""
        for t in [t for t in self.suffix if t != keep]:
            del self.suffix[t]


def check_chunk(chunk) -> int | None:
    """Validate a chunk size (None = automatic)."""
    if chunk is None:
        return None
    try:
        c = int(chunk)
    except (TypeError, ValueError):
        raise TfueError(f"chunk must be an integer, got {chunk!r}", "give --chunk 8") from None
    if c < 1 or c != chunk:
        raise TfueError(f"chunk must be an integer >= 1, got {chunk}", "give --chunk 8")
    return c


def _onnx_dtype(info_dtype: str):
    try:
        return np.dtype(info_dtype)
    except TypeError:
        return None


# Ops that pass a tensor's values through with the same axes.
_SAME_AXES = ("Identity", "Cast", "Dropout")


def _softmax_axis(info: ModelInfo, name: str):
    """The class axis of output ``name`` when it holds per-position class probabilities.

    Follows the output back through ops that keep or move axes (Identity, Cast,
    Transpose, Squeeze/Unsqueeze/Reshape/Flatten where the axis can be traced) to a
    Softmax. Before opset 13 ``Softmax(axis=k)`` normalises over all axes from k on
    (the input is coerced to 2-D): the classes are per position only when that is
    one axis (k is the last axis, or the axes after k have size 1); otherwise the
    output is ONE distribution over the flattened axes k.. (a tuple of axes), whose
    entropy has one value per batch item, not a map.

    Returns:
        (axis, note): the class axis in the output (an int; a tuple of axes for a
        pre-13 Softmax over several axes; None when it is not class probabilities),
        and a note saying why a Softmax output was not taken as probabilities (None
        otherwise).
    """
    producers = {o: n for n in info.graph.node for o in n.output}
    shapes = info.tensor_infos
    path = []  # ops between the Softmax and the output, output side first
    node = producers.get(name)
    while node is not None and node.op_type in _SAME_AXES + (
            "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        path.append(node)
        node = producers.get(node.input[0])
    if node is None or node.op_type != "Softmax":  # LogSoftmax outputs are not probabilities
        return None, None
    # The Softmax's shape: its input's, its output's, or the model output's when only
    # shape-keeping ops lie between them.
    known = [shapes.get(node.input[0]), shapes.get(node.output[0])]
    if all(step.op_type in _SAME_AXES for step in path):
        known.append(shapes.get(name))
    src_shape = next((t.shape for t in known if t is not None and t.shape is not None), None)
    rank = len(src_shape) if src_shape is not None else None
    axis = next((a.i for a in node.attribute if a.name == "axis"),
                1 if info.opset < 13 else -1)
    if axis < 0:
        if rank is None:
            return None, None
        axis += rank
    if info.opset < 13:
        trailing = None if rank is None else src_shape[axis + 1:]
        if trailing is None:
            return None, (f"output '{name}' comes from Softmax(axis={axis}) at opset "
                          f"{info.opset}, which normalises over all axes from {axis} on, "
                          "and its rank is unknown: it is not treated as class probabilities "
                          "(use --classify --class-axis K to override)")
        if any(d != 1 for d in trailing):
            # One distribution over all the flattened axes (opset < 13 semantics): the
            # classes are those axes together, as long as nothing moves them after.
            if any(step.op_type not in _SAME_AXES for step in path):
                return None, (f"output '{name}' comes from Softmax(axis={axis}) at opset "
                              f"{info.opset}, which normalises over all axes from {axis} on, "
                              "and is reshaped after: it is not treated as class "
                              "probabilities (use --classify --class-axis K to override)")
            return tuple(range(axis, rank)), None
    tensor = node.output[0]
    for step in reversed(path):
        axis = _moved_axis(step, axis, shapes.get(tensor), shapes.get(step.output[0]))
        if axis is None:
            return None, None
        tensor = step.output[0]
    return axis, None


def _moved_axis(node, axis: int, before, after):
    """Where axis ``axis`` of ``node``'s input is in its output; None when unknown."""
    op = node.op_type
    if op in _SAME_AXES:
        return axis
    if op == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if perm is None:
            rank = len(before.shape) if before is not None and before.shape is not None else None
            return None if rank is None else rank - 1 - axis
        return perm.index(axis) if axis in perm else None
    if before is None or after is None or before.shape is None or after.shape is None:
        # Shapes unknown: a reshape is taken to keep the class axis where it is, as long
        # as the output (when its rank is known) has that axis.
        rank = None if after is None or after.shape is None else len(after.shape)
        return axis if rank is None or axis < rank else None
    src, dst = list(before.shape), list(after.shape)
    if src == dst:
        return axis
    # Axes dropped or added around the class axis: the class axis is the one with the
    # same size whose leading dims (size-1 ones aside) are the same.
    def lead(shape, k):
        return [d for d in shape[:k] if d != 1]

    size = src[axis]
    if not isinstance(size, int) or size == 1:
        return None
    hits = [k for k, d in enumerate(dst) if d == size and lead(dst, k) == lead(src, axis)]
    return hits[0] if len(hits) == 1 else None


class Estimator:
    """Training-free uncertainty for one ONNX model and one perturbation.

    Args:
        model: path to an .onnx file (external data is read too) or a ModelProto.
        spec: ``Noise(sigma, at, mode)``, ``Dropout(rate, at)`` or ``MCDropout(rate, nodes)``.
        samples: N, the number of perturbed samples (>= 2).
        chunk: samples per session run (None: automatic); statistics merge across chunks.
            Automatic with looped-suffix: the first input of each shape times real samples
            at chunks 1, 4, 16, ... (up to ``max_memory``) and two thread counts, and the
            rest run at the fastest (``metadata["autotune"]``); with the other strategies,
            as many samples as fit in ``max_memory``.
        seed: makes runs reproducible (None: a random seed, recorded in results). A
            result depends on the input, spec, N and seed only: sample k's draws come
            from (seed, k), whatever the chunks, the strategy or the inputs run before.
        provider: ``auto`` (CUDA when it really loads, else CPU), ``cpu`` or ``cuda``.
        strategy: ``auto`` (the first that passes verification, in the order
            ``looped-suffix``, ``shared-prefix``, ``batched``, ``loop``) or one of them.
            looped-suffix (gray box) runs the model up to the location once per input and
            the rest once more for the unperturbed output, then per chunk of samples.
        keep_samples: also return the samples, shape [N, ...].
        softmax, classify, class_axis: class probabilities (below).
        max_memory: bytes the samples of one run may take; sets the chunk size when
            ``chunk`` is None (estimated from the model's tensor sizes at the input).
        io_binding: keep the inputs on the device across chunks (default: on CUDA).
        pad: reflect-pad the image input by this many pixels on each side of H and W
            before the model (valid-convolution models, whose output loses a border),
            or ``"auto"`` to find the border from the output size (``metadata["pad"]``,
            ``metadata["pad_found"]``). The Pad is part of the model every graph is
            built from and verified against, so an export pads its input too.
            None: no padding.
        layout: auto, NCHW or NHWC: where H and W are in a 4-D input (for ``pad``).
        cache: keep verified graphs and measured chunk choices on disk (tfue_onnx/cache.py)
            so that a later process starts without verifying or measuring again: True
            (``$TFUE_CACHE_DIR``, else the user cache folder), a folder, or False.
        threads: onnxruntime intra-op threads (None: measured with the chunk size).

    Calling the estimator on an array (or a dict of arrays by input name) returns
    a :class:`Result` with ``.output``, ``.mean``, ``.variance`` and ``.metadata``.

    ``model`` is a path or a ModelProto; ``spec`` a Noise, Dropout, MCDropout,
    Transform, Ensemble or Entropy. ``strategy`` is ``auto`` (fastest that
    verifies) or a name from graph.STRATEGIES. ``seed`` None picks one at random;
    it is recorded.

    Class probabilities: outputs made by a Softmax are found (``classify="auto"``);
    ``softmax=True`` appends a softmax over ``class_axis`` to outputs that are
    logits; ``classify=True`` treats every float output as probabilities over
    ``class_axis``, ``False`` none. They also get entropy, mutual information
    and the variance of the winning class.

    ``pad`` (pixels, or ``"auto"``) reflect-pads the image input (found from
    ``layout``) inside the model before anything else (graph/pad.py): the padded
    model is the "original" every graph is verified against, that is, the user's
    model run on the padded input.

    Models below opset 10 run on a copy converted with onnx.version_converter when
    the method needs newer ops (the tiled strategies, transforms); ensemble members
    of different opsets are brought to the newest. Every graph is still verified
    against the user's own model; ``notes`` and ``metadata["converted_opset"]``
    say what was converted.
    """

    def __init__(self, model, spec, samples: int | None = None, chunk: int | None = None,
                 seed: int | None = None, provider: str = "auto", strategy: str = "auto",
                 keep_samples: bool = False, softmax: bool = False, classify="auto",
                 class_axis: int = 1, max_memory: int = DEFAULT_MAX_MEMORY,
                 io_binding: bool | None = None, pad=None, layout: str = "auto",
                 cache=True, threads: int | None = None):
        _check_arguments(model, spec)
        if isinstance(model, (str, os.PathLike)):
            self.path = os.fspath(model)
            self.info = ModelInfo(load_model(self.path), self.path)
        else:
            self.path = None
            self.info = ModelInfo(model)
        self.spec = spec
        self._pad_model(pad, layout)
        self.classes = self._find_classes(softmax, classify, class_axis)
        if softmax:
            self.info = graphs.with_softmax(self.info, self.classes)
        self.softmax = softmax
        if isinstance(spec, SAMPLED):
            self.samples = check_samples(8 if samples is None else samples)
        else:
            if samples is not None:
                raise TfueError(f"--samples does not apply to --method {spec.method}",
                                "N is the number of transforms or members" if not
                                isinstance(spec, Entropy) else "entropy needs one run")
            self.samples = (len(spec.elements) if isinstance(spec, Transform) else
                            len(spec.members) + 1 if isinstance(spec, Ensemble) else 1)
        self.chunk = check_chunk(chunk)
        self.max_memory = check_max_memory(max_memory)
        self.io_binding = io_binding
        self.threads = _check_threads(threads)
        self.cache = _disk_cache(cache)
        self._sample_bytes = {}
        self._tuned = {}  # input signature -> {"chunk", "threads", "trials"} (looped-suffix)
        self._axes_known = {}  # input signature -> axes.SpatialAxes read from the cache
        self._cache_keys = {}  # input signature -> disk cache key
        self._from_disk = set()  # input signatures whose graph came from the disk cache
        self._skip_disk = set()  # input signatures whose disk entry failed: not read again
        seed = check_seed(seed)
        self.seed = seed if seed is not None else secrets.randbelow(2**31)
        self.provider_request = provider
        if strategy != "auto" and strategy not in graphs.STRATEGIES:
            raise TfueError(f"unknown strategy {strategy!r}",
                            f"use auto or one of {', '.join(graphs.STRATEGIES)}")
        self.strategy_request = strategy
        self.keep_samples = keep_samples
        # What happened on the way (classes left out, strategies tried, why they failed).
        self.notes = list(self._class_notes)
        self._reference = None  # (session, provider) of the original model
        # strategy -> (UncertaintyGraph, session, provider), or None; session and provider
        # None after the strategy failed (made again when reached)
        self._built = {}
        self._rejected = {}  # strategy -> onnxruntime's reason for refusing its graph
        self._unavailable = {}  # strategy -> why it cannot be built for this model
        self._verified = {}  # input signature -> strategy that passed verification
        self._probe = None  # session of graph.location_probe: the banks' shapes
        self._shapes = {}  # input signature -> {location: shape at that input}
        self._batch_axes = {}  # input signature -> {location: its batch axis or None}
        self._banks = {}  # drawn banks, shared by every strategy's graph
        self._standalone = {}  # input signature -> verified graph with in-graph sampling
        self._axes_probe = None  # axes.AxesProbe, made on first use
        self._graph_axes = None  # the axes.SpatialAxes the transform graphs undo on
        self.original = self.info  # the user's model: what every graph is verified against
        self.conversion = None  # (from, to) opsets when a converted copy is used
        self._unconverted = None  # why an old-opset model runs without its converted copy
        _check_inputs_fit(self.info, spec)
        self._convert_old_opset()
        self.location = self._resolve_location()
        if isinstance(spec, Ensemble):
            self._align_member_opsets()

    # --- setup -------------------------------------------------------------------
    def _pad_model(self, pad, layout: str) -> None:
        """``--pad``: reflect-pad the image input inside the model itself (graph/pad.py),
        so every graph built from it, the reference it is verified against and the
        exported file all see the padded image."""
        self.pad, self.pad_found = None, None
        self._pad_input = None
        if pad is None:
            return
        from .border import resolve_pad
        from .graph.pad import pad_axes, with_pad

        if isinstance(self.spec, Ensemble):
            raise TfueError("--pad is not supported with --method ensemble",
                            "pad the inputs yourself, or drop --pad")
        self.pad, self.pad_found = resolve_pad(self.info, pad, layout)
        self._pad_input = pad_axes(self.info, layout)
        if self.pad:
            self.info = with_pad(self.info, self.pad, layout)

    def _find_classes(self, softmax: bool, classify, class_axis: int) -> dict:
        """Outputs holding class probabilities (name -> class axis); see the class
        docstring. Auto-detection follows the opset's Softmax semantics and notes the
        outputs it leaves out (``self._class_notes``)."""
        self._class_notes = []
        floats = [o for o in self.info.outputs if o.dtype in ("float32", "float64", "float16")]

        def axis_of(o):
            rank = len(o.shape) if o.shape is not None else None
            axis = class_axis + rank if (class_axis < 0 and rank) else class_axis
            if rank is not None and not 0 <= axis < rank:
                raise TfueError(f"class axis {class_axis} does not exist in output '{o.name}' "
                                f"of rank {rank}", "give --class-axis within the output's rank")
            return axis

        if softmax or classify is True:
            return {o.name: axis_of(o) for o in floats}
        if classify is False:
            return {}
        found = {}
        for o in floats:
            axis, note = _softmax_axis(self.info, o.name)
            if axis is not None:
                found[o.name] = axis
            elif note:
                self._class_notes.append(note)
        return found

    def _resolve_location(self) -> str:
        if hasattr(self.spec, "at"):  # named as in the user's graph (not the softmaxed one)
            return (self.info.locations_from or self.info).resolve_location(self.spec.at).name
        if isinstance(self.spec, Transform):
            return "input"
        if isinstance(self.spec, Ensemble):
            from .graph.blackbox import resolve_members

            self.spec, self._members, notes = resolve_members(self.info, self.spec)
            self.notes += notes
            return ", ".join([self.path or "member 0"] +
                             [m.path or f"member {k}" for k, m in enumerate(self._members, 1)])
        if isinstance(self.spec, Entropy):
            if not self.classes and self._class_notes:
                raise TfueError("no output of the model holds per-position class "
                                "probabilities: " + "; ".join(self._class_notes).split(
                                    " (use --classify")[0],
                                "pass --classify --class-axis K if the classes are on axis K "
                                "(the entropy is then over that axis alone)")
            if not self.classes:
                raise TfueError("no output of the model holds class probabilities (none is "
                                "made by a Softmax)",
                                "pass --softmax if the model outputs logits, or --classify")
            return "output"
        if not self.info.dropouts:
            raise TfueError("the model has no Dropout node, so MC-dropout has nothing to "
                            "switch on",
                            "use --method dropout to apply dropout at any tensor (infer-dropout)")
        return ",".join(self.spec.nodes) or "all Dropout nodes"

    def _convert_old_opset(self) -> None:
        """Below opset 10 the tiled strategies and the flips have no dynamic Slice: use a
        converted copy of the model (verified against the original like every graph)."""
        from . import convert

        spec = self.spec
        if not convert.needs_conversion(self.info):
            return
        if isinstance(spec, Transform):
            what = "infer-transformation"
        elif isinstance(spec, SAMPLED) and self.strategy_request != "loop":
            what = "the shared-prefix and batched strategies"
        else:  # the loop, ensembles and entropy use no op newer than the model's own
            return
        conversion = convert.convert(self.info)
        if not conversion.ok:
            if isinstance(spec, Transform):
                raise convert.conversion_failed(conversion, what, self.path)
            self.notes.append(f"model: opset {conversion.source} could not be converted to "
                              f"{conversion.target} ({conversion.error}); {what} need opset >= "
                              f"{convert.MIN_OPSET}, so only the loop strategy applies")
            self._unconverted = (f"converting a copy to opset {conversion.target} failed: "
                                 f"{conversion.error}")
            return
        if isinstance(spec, (Noise, Dropout)):
            # Locations (a depth, an index) mean the user's graph, not the converted one.
            name = self.original.resolve_location(spec.at).name
            if name not in {c.name for c in conversion.info.candidates}:
                self.notes.append(f"model: opset {conversion.source} converted to "
                                  f"{conversion.target}, but the copy has no tensor '{name}'; "
                                  "only the loop strategy applies")
                self._unconverted = (f"the copy converted to opset {conversion.target} has no "
                                     f"tensor '{name}' (onnx.version_converter replaced it)")
                return
            self.spec = dataclasses.replace(spec, at=name)
        self.info = conversion.info
        self.conversion = (conversion.source, conversion.target)
        self.notes.append(f"model: opset {conversion.source} converted to {conversion.target} "
                          f"with onnx.version_converter for {what} (a copy; every graph is "
                          "verified against the original model)")

    def _align_member_opsets(self) -> None:
        """Ensemble members join one graph, which has one opset: members exported at
        different opsets are brought to the newest among them (converted copies; the
        graph is verified against the original model like every other)."""
        from .graph.blackbox import at_opset, ensemble_opset

        infos = [self.info] + list(self._members)
        target = ensemble_opset(self.info, self._members)

        aligned = [at_opset(info, target, info.path or f"member {k}")
                   for k, info in enumerate(infos)]
        for k, (info, done) in enumerate(zip(infos, aligned)):
            if done is not info:
                self.notes.append(f"model: ensemble member '{info.path or f'member {k}'}' "
                                  f"converted from opset {info.opset} to {target} (the newest "
                                  "member's) with onnx.version_converter (a copy)")
        if aligned[0] is not self.info:
            self.conversion = (self.info.opset, target)
            self.info = aligned[0]
        self._members = aligned[1:]

    def _strategies(self):
        if isinstance(self.spec, Ensemble):
            return ["batched"]
        if self.strategy_request != "auto":
            return [self.strategy_request]
        return list(graphs.STRATEGIES)

    def _candidate(self, name):
        """(graph, session, provider) of strategy ``name``, built on first use; None when
        the strategy cannot apply or onnxruntime rejects its graph (noted)."""
        if name not in self._built:
            self._built[name] = None
            spec = self.spec
            if isinstance(spec, Ensemble):  # members already loaded and checked
                spec = Ensemble(tuple(self._members))
            # A TfueError from building is tfue's own judgement (a bad argument, a model
            # the method does not fit): it propagates unchanged, with its hint.
            try:
                # Gray-box samples come back to be merged one by one in sample order
                # (run()): the result must not depend on the chunk size.
                ug = graphs.build(self.info, spec, name, self.samples, self.seed,
                                  self.keep_samples or isinstance(spec, SAMPLED), self.classes,
                                  axes=self._graph_axes)
                self._share_banks(ug)
            except graphs.StrategyUnavailable as exc:
                reason = str(exc)
                if self._unconverted and name != "loop" and self.info is self.original:
                    reason += f", and {self._unconverted}"  # why the copy does not help
                self._unavailable[name] = reason
                self.notes.append(f"strategy {name}: not available ({reason})")
                return None
            try:
                self._built[name] = (ug, *self._sessions(ug))
            except TfueError as exc:
                if self.provider_request == "cuda" and "--provider cuda" in exc.message:
                    raise
                reason = ort_message(exc.__cause__) if exc.__cause__ is not None else exc.message
                self._rejected[name] = reason
                self.notes.append(f"strategy {name}: onnxruntime rejects its graph ({reason})")
        built = self._built[name]
        if built is not None and built[1] is None:  # session dropped after a failed check
            built = self._built[name] = (built[0], *self._sessions(built[0]))
        return built

    def _share_banks(self, ug) -> None:
        """Let ``ug`` draw from the banks every graph of this runner shares, kept up to
        an eighth of ``max_memory``."""
        ug.bank_cache, ug.bank_limit = self._banks, self.max_memory // 8

    def _sessions(self, ug):
        """``(session, provider)`` for ``ug``; for looped-suffix a :class:`_Split`
        (the prefix's session and the suffix's, made per thread count when asked)."""
        if ug.prefix is None:
            return create_session(ug.model, self.provider_request, threads=self.threads)
        suffix, provider = create_session(ug.model, self.provider_request, threads=self.threads)
        prefix, _ = create_session(ug.prefix, self.provider_request, threads=self.threads)
        split = _Split(prefix, lambda threads: create_session(
            ug.model, self.provider_request, threads=threads)[0], {self.threads: suffix})
        # A second suffix session (another thread count, tried by the autotuner) holds
        # its own packed copy of the weights: only for models whose copy is small.
        from .session import packed_bytes

        split.spare = packed_bytes(ug.model) <= SPARE_SESSION_BYTES
        return split, provider

    def _drop_session(self, name) -> None:
        """Let go of a strategy's session (its packed weights) after it failed on an
        input signature; it is made again if another signature reaches it."""
        if self._built.get(name) is not None:
            self._built[name] = (self._built[name][0], None, None)

    def _rotates(self) -> bool:
        return isinstance(self.spec, Transform) and any(e.swaps_axes for e in self.spec.elements)

    def _rotation_failure(self, feeds):
        """The error for a model that cannot run the input rotated by 90°, or None when
        that is not what went wrong: the input is square, or the original model runs
        the rotated input (then the failure lies elsewhere)."""
        from .graph.blackbox import spatial_axes
        from .transforms import usable_sets

        if not self._rotates():
            return None
        (h, w), _ = spatial_axes(self.info, self.spec.layout)
        name, x = next(iter(feeds.items()))
        if x.shape[h] == x.shape[w]:
            return None
        try:
            self.reference({name: np.ascontiguousarray(np.swapaxes(x, h, w))})
        except TfueError as exc:
            return TfueError(f"the model does not accept the input rotated by 90° "
                             f"({x.shape[h]}x{x.shape[w]} becomes {x.shape[w]}x{x.shape[h]}): "
                             f"{exc.message}",
                             "use one of the sets " + ", ".join(usable_sets(square=False)) +
                             ", or a square input")
        return None

    def reference_session(self):
        """The original model's session (used for verification)."""
        if self._reference is None:
            from .external import keeps_inline_weights_in_file

            # A session of the path would copy the inline weights; the loaded proto
            # points at them in the file, and onnxruntime maps them from there.
            model = self.original.model
            source = model if (self.softmax or self.pad or not self.path or
                               keeps_inline_weights_in_file(model)) else self.path
            # Runs once per input signature: no packed copy of the weights.
            self._reference = create_session(source, self.provider_request, prepack=False)
        return self._reference

    # --- inputs ------------------------------------------------------------------
    def check_feeds(self, feeds) -> dict:
        """Validate inputs against the model's signature; returns arrays to feed."""
        if not isinstance(feeds, dict):
            if len(self.info.inputs) != 1:
                raise TfueError(f"the model has {len(self.info.inputs)} inputs; pass a dict "
                                "of arrays by input name",
                                "inputs: " + ", ".join(i.name for i in self.info.inputs))
            feeds = {self.info.inputs[0].name: feeds}
        out = {}
        for inp in self.info.inputs:
            if inp.name not in feeds:
                raise TfueError(f"missing input '{inp.name}'",
                                "the model's inputs are: "
                                + ", ".join(i.name for i in self.info.inputs))
            arr = np.asarray(feeds[inp.name])
            want = _onnx_dtype(inp.dtype)
            if want is not None and arr.dtype != want:
                if arr.dtype.kind == "f" and want.kind == "f":
                    arr = arr.astype(want)
                else:
                    raise TfueError(f"input '{inp.name}' has dtype {arr.dtype}, the model "
                                    f"expects {want}",
                                    f"convert it, e.g. array.astype('{want}')")
            if inp.shape is not None:
                if arr.ndim != len(inp.shape):
                    raise TfueError(f"input '{inp.name}' has shape {tuple(arr.shape)}, the model "
                                    f"expects rank {len(inp.shape)} {_fmt_shape(inp.shape)}",
                                    "add or remove axes (a batch axis first)")
                for axis, (got, dim) in enumerate(zip(arr.shape, inp.shape)):
                    if isinstance(dim, int) and dim > 0 and got != dim:
                        raise TfueError(f"input '{inp.name}' has shape {tuple(arr.shape)}, the "
                                        f"model expects {_fmt_shape(inp.shape)} (axis {axis} "
                                        f"must be {dim})",
                                        "resize the input to the model's size")
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
                raise TfueError(f"input '{inp.name}' contains {bad} NaN or infinite values",
                                "clean the input (e.g. np.nan_to_num) before running")
            if self.pad and self._pad_input[0] == inp.name:
                for axis in self._pad_input[1]:
                    if 2 * self.pad >= arr.shape[axis]:
                        raise TfueError(f"--pad {self.pad} needs an image more than twice as "
                                        f"large: input '{inp.name}' has size {arr.shape[axis]} "
                                        f"on axis {axis}",
                                        "use a smaller --pad (reflect padding mirrors the "
                                        "image's own pixels)")
            out[inp.name] = np.ascontiguousarray(arr)
        extra = set(feeds) - set(out)
        if extra:
            raise TfueError(f"unknown input(s) {', '.join(sorted(map(repr, extra)))}",
                            "the model's inputs are: " + ", ".join(out))
        return out

    # --- running -----------------------------------------------------------------
    @staticmethod
    def _run(sess, feeds):
        try:
            values = sess.run(None, feeds)
        except Exception as exc:
            raise _model_failed({k: v.shape for k, v in feeds.items()
                                 if not k.startswith("tfue")}, exc) from exc
        return dict(zip([o.name for o in sess.get_outputs()], values))

    @staticmethod
    def _run_bound(sess, device_feeds: dict, extra: dict) -> dict:
        """Run with IO binding: the model inputs are OrtValues already on the device
        (bound once for every chunk); the small extra feeds and the statistics go
        through the host."""
        binding = sess.io_binding()
        for name, value in device_feeds.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in extra.items():
            binding.bind_cpu_input(name, value)
        names = [o.name for o in sess.get_outputs()]
        for name in names:
            binding.bind_output(name, "cpu")
        try:
            sess.run_with_iobinding(binding)
        except Exception as exc:
            raise _model_failed({k: v.shape() for k, v in device_feeds.items()}, exc) from exc
        return dict(zip(names, binding.copy_outputs_to_cpu()))

    def _device_feeds(self, feeds, provider):
        """The inputs as device OrtValues when IO binding is on (default: on CUDA)."""
        use = self.io_binding if self.io_binding is not None else provider == "cuda"
        if not use:
            return None
        import onnxruntime as ort

        device = "cuda" if provider == "cuda" else "cpu"
        return {k: ort.OrtValue.ortvalue_from_numpy(v, device, 0) for k, v in feeds.items()}

    def reference(self, feeds) -> dict:
        """The original model's outputs on ``feeds``."""
        sess, _ = self.reference_session()
        return self._run(sess, feeds)

    def location_shapes(self, ug, feeds) -> dict | None:
        """Location name -> its shape at ``feeds`` for the banks of ``ug`` (a ``fed``
        graph), from one run of the model cut down to its locations per input
        signature; None when ``ug`` has no draws."""
        if not ug.draws:
            return None
        key = _signature(feeds)
        if key not in self._shapes:
            self._shapes[key] = self._probe_shapes(ug, feeds)
        return self._shapes[key]

    def _probe_shapes(self, ug, feeds) -> dict:
        """Location name -> shape at ``feeds`` (the inputs' own, else the probe's)."""
        shapes = {d.location: feeds[d.location].shape for d in ug.draws if d.location in feeds}
        if len(shapes) < len({d.location for d in ug.draws}):
            if self._probe is None:
                self._probe = create_session(graphs.location_probe(self.info, ug.draws),
                                             self.provider_request, prepack=False)[0]
            shapes.update({k: v.shape for k, v in self._run(self._probe, feeds).items()})
        return shapes

    def batch_axes(self, ug, feeds) -> dict | None:
        """Location name -> the axis of its tensor that holds the batch items (each item
        then gets the draws it gets alone), or None where none was found (draws for the
        whole tensor: an item's draws depend on its position in the batch).

        The batch B is the inputs' common axis-0 size; a location's batch axis is the
        one axis of size B that becomes 1 when the model runs on the batch's first item
        alone, every other axis staying the same. At B = 1 no axis is needed (None): the
        whole tensor's draws are then the one item's, whatever its batch axis. Cached
        per input signature; None when ``ug`` has no draws.
        """
        if not ug.draws:
            return None
        key = _signature(feeds)
        if key not in self._batch_axes:
            shapes = self.location_shapes(ug, feeds)
            axes, why = self._find_batch_axes(ug, feeds, shapes)
            self._batch_axes[key] = axes
            batch = next(iter(feeds.values())).shape[:1]
            for loc, axis in axes.items():
                if axis is None and batch != (1,):
                    self.notes.append(f"draws at '{loc}' are made for the whole tensor "
                                      f"{tuple(shapes[loc])}: {why.get(loc)}, so a result "
                                      "depends on the input's position in the batch")
                elif axis is not None and self._relative() and \
                        axis != ug.relative_axes.get(loc, 0):
                    self.notes.append(f"relative noise at '{loc}' scales by "
                                      f"{_spread(ug, loc)}, but the batch is its axis "
                                      f"{axis}: an item's sigma depends on the other items")
        return self._batch_axes[key]

    def _relative(self) -> bool:
        return isinstance(self.spec, Noise) and self.spec.mode == "relative"

    def _find_batch_axes(self, ug, feeds, shapes) -> tuple:
        """(location -> batch axis or None, location -> why None); see batch_axes."""
        locations = list(dict.fromkeys(d.location for d in ug.draws))
        sizes = {v.shape[0] if v.ndim else None for v in feeds.values()}
        if len(sizes) != 1 or None in sizes:
            return ({loc: None for loc in locations},
                    {loc: "the inputs have no common batch axis 0" for loc in locations})
        batch = sizes.pop()
        if batch == 1:  # one item: its draws are the whole tensor's, on any axis
            return {loc: None for loc in locations}, {}
        fixed = [i.name for i in self.info.inputs
                 if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0]
        if fixed:
            return ({loc: None for loc in locations},
                    {loc: f"input '{fixed[0]}' has a fixed batch size" for loc in locations})
        try:
            alt_shapes = self._probe_shapes(ug, {k: v[:1] for k, v in feeds.items()})
        except TfueError:
            return ({loc: None for loc in locations},
                    {loc: "the model does not run at batch size 1" for loc in locations})
        axes, why = {}, {}
        for loc in locations:
            axes[loc] = _batch_axis(tuple(shapes[loc]), tuple(alt_shapes[loc]), batch, 1)
            if axes[loc] is None:
                why[loc] = (f"no axis of it follows the batch size (shape "
                            f"{tuple(alt_shapes[loc])} at batch 1)")
        return axes, why


    def _cut_values(self, split, feeds) -> dict:
        """looped-suffix: what the suffix reads, from one run of the prefix on ``feeds``
        (the tensors crossing the cut, and the model inputs the suffix reads itself)."""
        values = self._run(split.prefix, feeds)
        wanted = {i.name for i in split.suffix_for(self.threads).get_inputs()}
        return {k: v for k, v in {**feeds, **values}.items() if k in wanted}

    def _suffix_runner(self, ug, split, feeds, provider):
        """looped-suffix: the prefix run once on ``feeds``; returns
        ``run(threads, n, level, first) -> outputs`` for samples first .. first+n-1
        (level None: the spec's; 0.0: the unperturbed output)."""
        base = self._cut_values(split, feeds)
        key = _signature(feeds)
        if ug.draws and key not in self._shapes and all(d.location in base for d in ug.draws):
            # The locations cross the cut: their shapes are the prefix's (no probe run).
            self._shapes[key] = {d.location: base[d.location].shape for d in ug.draws}
        device = self._device_feeds(base, provider)
        shapes, axes = self.location_shapes(ug, feeds), self.batch_axes(ug, feeds)

        def run(threads, n, level, first):
            extra = ug.feeds(samples=n, level=level, first=first, shapes=shapes,
                             batch_axes=axes)
            session = split.suffix_for(threads)
            return (self._run(session, {**base, **extra}) if device is None else
                    self._run_bound(session, device, extra))
        return run

    def _verify_split(self, ug, split, feeds, reference) -> Verdict:
        """looped-suffix: level 0 gives the original (the unperturbed run and two
        samples, reduced as run() reduces them), and with the perturbation on a
        sample does not depend on the chunk it runs in (sample 1 in a chunk of 2 equals
        sample 1 alone: the slots do not mix, so the batch axis is outermost)."""
        run = self._suffix_runner(ug, split, feeds, "cpu")
        zero, two = run(self.threads, 1, 0.0, 0), run(self.threads, 2, 0.0, 0)
        verdict = check_identity(result_outputs(self._statistics(ug, [(0, zero), (2, two)])),
                                 reference, ug.stats_outputs)
        if not verdict.ok:
            return verdict
        together, alone = run(self.threads, 2, None, 0), run(self.threads, 1, None, 1)
        return check_chunk_independence(together, alone, ug.stats_outputs)

    def _verify(self, ug, sess, feeds, reference) -> Verdict:
        if ug.prefix is not None:
            return self._verify_split(ug, sess, feeds, reference)
        if not ug.level_inputs:  # transforms, ensembles: the unperturbed output must hold
            out = self._run(sess, {**feeds, **ug.feeds()})
            verdict = check_unperturbed_slot(out, reference)
            if verdict.ok and isinstance(self.spec, Transform):
                expected = self._transform_statistics(feeds, ug.stats_outputs)
                verdict = check_statistics(out, expected, "transformed runs of the original")
            return verdict
        shapes, axes = self.location_shapes(ug, feeds), self.batch_axes(ug, feeds)
        out = self._run(sess, {**feeds, **ug.feeds(samples=2, level=0.0, shapes=shapes,
                                                   batch_axes=axes)})
        verdict = check_identity(out, reference, ug.stats_outputs)
        if verdict.ok and ug.keep_samples:
            # What run() gives the user is its own reduction of the samples, not the
            # graph's head (which a file exported without samples returns): check it
            # too, on the same run.
            verdict = check_identity(result_outputs(self._statistics(ug, [(2, out)])),
                                     reference, ug.stats_outputs)
        if verdict.ok and ug.strategy in ("shared-prefix", "batched"):
            on = self._run(sess, {**feeds, **ug.feeds(samples=2, shapes=shapes,
                                                      batch_axes=axes)})
            verdict = check_unperturbed_slot(on, reference)
        return verdict

    def _transform_statistics(self, feeds, outputs) -> dict:
        """What infer-transformation must give on ``feeds``, from the original model
        alone: per output with statistics, (mean, variance) over the transforms of
        the model run on each transformed input, turned back on the output's image
        axes (as found for the graph; outputs without them are taken as they come).
        ``outputs``: the names of the outputs with statistics.
        """
        from .graph.blackbox import spatial_axes

        in_axes, _ = spatial_axes(self.info, self.spec.layout)
        name = self.info.inputs[0].name
        axes = self._graph_axes
        runs = []
        for e in self.spec.elements:
            x = np.ascontiguousarray(e.forward(feeds[name], in_axes))
            runs.append(self.reference({**feeds, name: x}))
        expected = {}
        for out in outputs:
            oaxes = axes.outputs.get(out) if axes is not None else None
            ys = [r[out] if oaxes is None else e.inverse(r[out], oaxes)
                  for e, r in zip(self.spec.elements, runs)]
            if len({y.shape for y in ys}) != 1:
                continue  # samples that cannot be stacked: the graph failed already
            stack = np.stack(ys).astype(np.float64)
            expected[out] = (stack.mean(axis=0), stack.var(axis=0))
        return expected

    def _select(self, feeds):
        """The verified (graph, session, provider) for this input signature."""
        key = _signature(feeds)
        if key in self._verified:
            return self._built[self._verified[key]]
        cache_key = self._cache_key(feeds)
        if cache_key is not None:
            self._cache_keys[key] = cache_key
            hit = None if key in self._skip_disk else self._from_cache(cache_key, feeds)
            if hit is not None:
                self._from_disk.add(key)
                return hit
        reference = self.reference(feeds)
        found = self.spatial_axes(feeds, reference)
        if isinstance(self.spec, Transform):
            from .graph.builder import stats_outputs

            found.check_rotations(self.spec.elements, [o.name for o in stats_outputs(self.info)])
            built = self._graph_axes
            if built is None or (found.outputs, found.ranks) != (built.outputs, built.ranks):
                # Graphs built for other axes would undo the transforms on the wrong ones.
                self._built, self._rejected, self._verified = {}, {}, {}
                self._unavailable = {}
                self._graph_axes = found
                self.notes.append(f"transforms undone on output axes {found.metadata()} "
                                  f"(found by {found.how})" + "".join(
                                      f"; output '{n}' follows the image on axes that are not "
                                      "a certain (height, width) pair: left as it comes"
                                      for n in sorted(found.unresolved)))
        failures = []  # (strategy, why): onnxruntime's refusals and failed verifications
        verified_wrong = False
        # Fastest first; a strategy's graph and session are made only when reached.
        for name in self._strategies():
            candidate = self._candidate(name)
            if candidate is None:
                if name in self._rejected:
                    failures.append(f"{name}: onnxruntime rejects the graph: "
                                    f"{self._rejected[name]}")
                continue
            ug, sess, provider = candidate
            try:
                verdict = self._verify(ug, sess, feeds, reference)
            except TfueError as exc:  # onnxruntime failed running it: no verdict on numbers
                reason = ort_message(exc.__cause__) if exc.__cause__ is not None else exc.message
                failures.append(f"{name}: onnxruntime fails running the graph: {reason}")
                self.notes.append(f"strategy {name}: onnxruntime fails running its graph "
                                  f"({reason})")
                self._drop_session(name)
                candidate = sess = None  # gone before the next strategy's session is made
                continue
            if verdict.ok:
                what = "at level 0" if ug.level_inputs else "of the unperturbed output"
                self.notes.append(f"strategy {ug.strategy}: verified (max |error| {what} = "
                                  f"{verdict.max_error:.2g}) on {provider}")
                self._verified[key] = name
                if cache_key is not None:
                    self._to_cache(cache_key, feeds, ug, provider, verdict)
                return ug, sess, provider
            failures.append(f"{ug.strategy}: {verdict.reason}")
            verified_wrong = True
            self._drop_session(name)
            candidate = sess = None
            self.notes.append(f"strategy {ug.strategy}: failed verification ({verdict.reason})")
        if self.conversion and isinstance(self.spec, SAMPLED):
            # A converter fault must not cost the user the model: the loop strategy
            # runs at the model's own opset.
            self.notes.append(f"model: no graph of the copy converted to opset "
                              f"{self.conversion[1]} passed; back to the original model")
            self._unconverted = (f"no graph of the copy converted to opset "
                                 f"{self.conversion[1]} passed" +
                                 (f" ({'; '.join(failures)})" if failures else ""))
            self.info, self.conversion = self.original, None
            self._built, self._rejected, self._verified = {}, {}, {}
            self._unavailable = {}
            return self._select(feeds)
        rotation = self._rotation_failure(feeds)
        if rotation is not None:
            raise rotation
        if not failures:  # no strategy applies at all: each one's reason, nothing else
            raise TfueError("no sampling strategy applies to this model: " + "; ".join(
                f"{name}: {self._unavailable[name]}" for name in self._strategies()
                if name in self._unavailable),
                "try --strategy auto (the strategies in turn); --verbose shows details"
                if self._strategies() != list(graphs.STRATEGIES) and
                not isinstance(self.spec, Ensemble) else "run with --verbose for details")
        hint = ("try another location (--at) or --strategy loop; --verbose shows details"
                if isinstance(self.spec, SAMPLED) else
                "check that the model gives the same output when run twice on this input; "
                "--verbose shows details" if verified_wrong else
                "the original model runs this input, so this is tfue's limit for the model; "
                "--verbose shows details")
        built = ""
        if self.conversion:
            built = f" (built from the copy converted from opset {self.conversion[0]} to " \
                    f"{self.conversion[1]})"
            hint = "re-export the model at opset >= 10; " + hint
        what = (f"no uncertainty graph{built} passed verification against the original model"
                if verified_wrong else f"onnxruntime cannot run the uncertainty graph{built}")
        raise TfueError(f"{what} (" + "; ".join(failures) + ")", hint)

    # --- the disk cache ------------------------------------------------------------
    def _cache_key(self, feeds) -> str | None:
        """The disk-cache key of a gray-box run on ``feeds``' signature (None: not
        cached: black-box methods, a cache turned off, a model too large to hash)."""
        if not self.cache.enabled or not isinstance(self.spec, SAMPLED):
            return None
        from .cache import FORMAT, code_digest, make_key, model_digest
        from .external import data_files

        if not hasattr(self, "_digest"):
            digest = model_digest(self.original.model)
            files = []
            for path in sorted(data_files(self.original.model)):
                try:
                    st = os.stat(path)
                except OSError:
                    digest = None
                    break
                files.append([path, st.st_size, st.st_mtime_ns])
            self._digest = None if digest is None else [digest, files]
        if self._digest is None:
            return None
        import onnxruntime

        from . import __version__

        return make_key({
            "format": FORMAT, "tfue": __version__, "code": code_digest(),
            "onnxruntime": onnxruntime.__version__,
            "cpus": os.cpu_count(), "model": self._digest, "spec": self.spec.describe(),
            "location": self.location, "signature": repr(_signature(feeds)),
            "provider": self.provider_request,
            "strategy": self.strategy_request, "keep_samples": self.keep_samples,
            "classes": self.classes, "softmax": self.softmax, "pad": self.pad,
            "threads": self.threads, "max_memory": self.max_memory, "chunk": self.chunk,
            "io_binding": self.io_binding})

    def _to_cache(self, cache_key, feeds, ug, provider, verdict) -> None:
        """Keep the verified graph of ``feeds``' signature and what its runs need."""
        shapes = self.location_shapes(ug, feeds) or {}
        axes = self.batch_axes(ug, feeds) or {}
        fields = {
            "strategy": ug.strategy, "provider": provider, "max_error": verdict.max_error,
            "graph": {
                "stats_outputs": ug.stats_outputs, "samples_input": ug.samples_input,
                "level_inputs": {k: [float(v), np.asarray(v).dtype.str]
                                 for k, v in ug.level_inputs.items()},
                "locations": list(ug.locations), "samples": ug.samples,
                "keep_samples": ug.keep_samples,
                "classes": [[k, v] for k, v in ug.classes.items()], "sampling": ug.sampling,
                "draws": [[d.input, d.location, d.kind, np.dtype(d.dtype).str, d.index]
                          for d in ug.draws],
                "relative_axes": ug.relative_axes, "cut": ug.cut},
            "shapes": {k: [int(d) for d in v] for k, v in shapes.items()},
            "batch_axes": axes, "spatial_axes": self.spatial_axes(feeds).to_json()}
        graphs = {"model": ug.model.SerializeToString()}
        if ug.prefix is not None:
            graphs["prefix"] = ug.prefix.SerializeToString()
        if not self.cache.store(cache_key, fields, graphs):
            self.notes.append(f"cache: not written ({self.cache.problem})")

    def _from_cache(self, cache_key, feeds):
        """The verified (graph, session, provider) kept on disk for ``feeds``'
        signature, or None (no entry, or one that does not hold up: see cache.py)."""
        from .axes import SpatialAxes

        found = self.cache.load(cache_key, {"strategy": str, "provider": str, "graph": dict,
                                            "shapes": dict, "batch_axes": dict,
                                            "spatial_axes": dict})
        if found is None:
            return None
        fields, stored = found
        try:
            g = fields["graph"]
            if fields["strategy"] not in self._strategies():
                return None
            if "model" not in stored:  # too large to store: built again, not verified again
                built = self._candidate(fields["strategy"])
                if built is None:
                    return None
                ug, sess, provider = built
            elif (fields["strategy"] == "looped-suffix") != ("prefix" in stored):
                return None
            else:
                ug, sess, provider = self._stored_graph(fields["strategy"], g, stored)
            if not self._plausible(ug):
                return None
            spatial = SpatialAxes.from_json(fields["spatial_axes"])
            shapes = {k: tuple(int(d) for d in v) for k, v in fields["shapes"].items()}
            axes = {k: (None if v is None else int(v)) for k, v in fields["batch_axes"].items()}
            if not _plausible_axes(feeds, shapes, axes):
                return None
        except Exception:  # anything amiss in an entry makes it a miss, never an error
            return None
        if provider != fields["provider"]:
            return None
        return self._built_from_cache(_signature(feeds), ug, sess, provider, fields, spatial,
                                      shapes, axes)

    def _stored_graph(self, strategy: str, g: dict, stored: dict):
        """(graph, session, provider) of the graphs an entry stored, its fields ``g``."""
        import onnx

        from .graph.builder import Draw, UncertaintyGraph

        ug = UncertaintyGraph(
            model=onnx.ModelProto.FromString(stored["model"]), strategy=strategy,
            stats_outputs=list(g["stats_outputs"]), samples_input=g["samples_input"],
            level_inputs={k: np.asarray(v, dtype=np.dtype(t))
                          for k, (v, t) in g["level_inputs"].items()},
            locations=list(g["locations"]), samples=int(g["samples"]), seed=self.seed,
            keep_samples=bool(g["keep_samples"]),
            classes={k: (tuple(v) if isinstance(v, list) else int(v))
                     for k, v in g["classes"]},
            sampling=g["sampling"],
            draws=[Draw(a, b, c, np.dtype(d), int(e)) for a, b, c, d, e in g["draws"]],
            relative_axes=dict(g["relative_axes"]), cut=list(g["cut"]),
            prefix=(onnx.ModelProto.FromString(stored["prefix"])
                    if "prefix" in stored else None))
        ug.samples = self.samples  # N is an input of the graph, not part of it
        self._share_banks(ug)
        return (ug, *self._sessions(ug))

    def _plausible(self, ug) -> bool:
        """Cheap checks of a graph read from the cache against this run's own spec: the
        levels, the kind and place of the draws, the outputs (a defence against a fault
        the seal cannot see; the seal guards against edits)."""
        names = {o.name for o in self.info.outputs}
        if not ug.stats_outputs or not set(ug.stats_outputs) <= names:
            return False
        if isinstance(self.spec, (Noise, Dropout)):
            want = "normal" if isinstance(self.spec, Noise) else "uniform"
            if any(d.kind != want or d.location != self.location or d.index != 1
                   for d in ug.draws) or len(ug.draws) != 1:
                return False
            if any(float(v) != float(np.asarray(self.spec.level, dtype=v.dtype))
                   for v in ug.level_inputs.values()) or len(ug.level_inputs) != 1:
                return False
        return True

    def _built_from_cache(self, key, ug, sess, provider, fields, spatial, shapes, axes):
        """Record a graph read from the cache for input signature ``key``."""
        self._built[ug.strategy] = (ug, sess, provider)
        self._verified[key] = ug.strategy
        if ug.draws:
            self._shapes[key], self._batch_axes[key] = shapes, axes
        self._axes_known[key] = spatial
        tuning = fields.get("tuning")
        plan = _cached_plan(tuning, self.threads, self.samples) if self.chunk is None else None
        if plan is not None:
            self._tuned[key] = plan
        self.notes.append(f"strategy {ug.strategy}: verified by an earlier run on this model "
                          f"and input shape (max |error| at level 0 = "
                          f"{float(fields.get('max_error', 0)):.2g}; cache "
                          f"{self.cache.folder}; --no-cache to verify again)")
        return ug, sess, provider

    def spatial_axes(self, feeds, outputs=None):
        """Which axes of each output carry the image's height and width at ``feeds``'
        shapes (an axes.SpatialAxes, cached per input shape); ``outputs`` are the
        original model's outputs on ``feeds`` when already computed."""
        known = self._axes_known.get(_signature(feeds))
        if known is not None:
            return known
        if self._axes_probe is None:
            from .axes import AxesProbe

            self._axes_probe = AxesProbe(self.info, self.reference,
                                         getattr(self.spec, "layout", "auto"))
        return self._axes_probe(feeds, outputs)

    def sample_bytes(self, feeds) -> int:
        """Peak bytes of the model's live tensors for one sample of ``feeds`` (see
        :func:`_peak_bytes`: shape inference at the real input shape, each tensor alive
        from its producer to its last reader). A chunk of c samples is planned as c
        times this (onnxruntime's own arena comes on top: see BENCHMARKS.md)."""
        key = _signature(feeds)
        if key not in self._sample_bytes:
            self._sample_bytes[key] = _peak_bytes(self.info.model, feeds)
        return self._sample_bytes[key]

    def chunk_cap(self, feeds) -> int:
        """The largest chunk whose samples fit in ``max_memory`` at ``feeds``' shape
        (at least 1, at most N)."""
        per_sample = max(self.sample_bytes(feeds), 1)
        return int(max(1, min(self.samples, self.max_memory // per_sample)))

    def chunk_sizes(self, feeds=None) -> list:
        """How the samples are split into runs: ``chunk``, else as many as fit in
        ``max_memory`` for this input (at most 64), else 8 without an input."""
        if not isinstance(self.spec, SAMPLED):
            return [self.samples]  # one run: every transform / member at once
        chunk = self.chunk
        if chunk is None and feeds is not None:
            chunk = min(MAX_AUTO_CHUNK, self.chunk_cap(feeds))
        chunk = chunk or min(self.samples, DEFAULT_CHUNK)
        return _split_sizes(self.samples, chunk)

    def run(self, feeds, level: float | None = None, progress=None) -> Result:
        """Sample the perturbed model on ``feeds`` (an array or dict of arrays).

        ``level`` overrides the spec's sigma or rate for this run (every
        perturbed location at once), without rebuilding the graph. ``progress`` is
        called as ``progress(done, total)`` after each run of samples (``total`` = N),
        for long inputs.
        """
        feeds = self.check_feeds(feeds)
        if isinstance(self.spec, Entropy):
            return self._run_entropy(feeds)
        if level is not None:
            if not isinstance(self.spec, SAMPLED):
                raise TfueError(f"--method {self.spec.method} has no level",
                                "levels are for noise and dropout")
            level = float(self.spec.with_level(level).level)  # validates the level
        key = _signature(feeds)
        try:
            return self._sampled(feeds, level, progress)
        except Exception as exc:
            if key not in self._from_disk:
                raise
            # What the cache held for this shape failed: forget it, verify afresh.
            self._forget(key)
            self.notes.append(f"cache: the entry for this input shape failed "
                              f"({type(exc).__name__}: {str(exc)[:120]}); verified afresh")
            return self._sampled(feeds, level, progress)

    def _forget(self, key) -> None:
        """Drop what the disk cache gave for input signature ``key``; it is not read
        again in this run (the fresh verification overwrites it)."""
        strategy = self._verified.pop(key, None)
        if strategy is not None:
            self._built.pop(strategy, None)
        for d in (self._shapes, self._batch_axes, self._axes_known, self._tuned):
            d.pop(key, None)
        self._from_disk.discard(key)
        self._skip_disk.add(key)

    def _sampled(self, feeds, level, progress=None) -> Result:
        ug, sess, provider = self._select(feeds)
        shapes, axes = self.location_shapes(ug, feeds), self.batch_axes(ug, feeds)
        tuning = None
        if ug.prefix is not None:
            chunks, tuning = [], {}
            runs = self._split_outputs(ug, sess, feeds, provider, level, chunks, tuning)
        else:
            chunks = self.chunk_sizes(feeds)
            runs = self._chunk_outputs(ug, sess, feeds, provider, level, chunks)
        results = self._statistics(ug, _counted(runs, self.samples, progress))
        meta = {**self.describe(), "chunks": chunks, "strategy": ug.strategy,
                "provider": provider, "spatial_axes": self.spatial_axes(feeds).metadata()}
        if tuning:
            meta["autotune"] = tuning
        if isinstance(self.spec, Transform):
            meta["inverted_axes"] = self._graph_axes.metadata()
        if axes:
            one = next(iter(feeds.values())).shape[:1] == (1,)
            meta["draws"] = {loc: f"per batch item (axis {a} of {list(shapes[loc])})" + (
                             f"; relative sigma from {_spread(ug, loc)}, not per item"
                             if self._relative() and a != ug.relative_axes.get(loc, 0)
                             else "")
                             if a is not None else f"per batch item (a batch of 1, "
                             f"{list(shapes[loc])})" if one else
                             f"per whole tensor {list(shapes[loc])} (an item's draws "
                             "depend on its position in the batch)"
                             for loc, a in axes.items()}
        if level is not None:
            meta["level"] = level
        return Result(results, meta)

    def _chunk_outputs(self, ug, sess, feeds, provider, level, chunks):
        """One graph per chunk (shared-prefix, batched, loop): (n, outputs) per chunk."""
        device_feeds = self._device_feeds(feeds, provider)
        shapes, axes = self.location_shapes(ug, feeds), self.batch_axes(ug, feeds)
        first_sample = 0
        for n in chunks:
            # Samples first_sample .. +n-1: their draws depend on their index only.
            extra = ug.feeds(samples=n, level=level, first=first_sample, shapes=shapes,
                             batch_axes=axes)
            first_sample += n
            yield n, (self._run(sess, {**feeds, **extra}) if device_feeds is None else
                      self._run_bound(sess, device_feeds, extra))

    def _split_outputs(self, ug, split, feeds, provider, level, chunks: list, tuning: dict):
        """looped-suffix: the prefix once, the unperturbed output once (0, outputs), then
        the samples in chunks (n, outputs). The chunk size and thread count come from
        ``chunk``/``threads`` when given, else from measurements for this input
        signature (this process or the disk cache), made on these very samples while
        they last (:meth:`_trial`; unfinished, it goes on with the next input of the
        shape). Fills ``chunks`` with the runs made and ``tuning`` with what was chosen
        and measured."""
        run = self._suffix_runner(ug, split, feeds, provider)
        key = _signature(feeds)
        plan = self._tuned.get(key)
        if plan is None and self.chunk is not None:
            plan = {"chunk": self.chunk, "threads": self.threads, "how": "given"}
        if plan is None:
            plan = {"chunk": 1, "threads": self.threads, "how": "measuring", "trials": []}
        yield 0, run(plan["threads"], 1, 0.0, 0)
        first = 0
        if plan["how"] == "measuring":
            before = len(plan["trials"])
            for n, out in self._trial(split, run, level, feeds, plan):
                chunks.append(n)
                first += n
                yield n, out
            best = _choose(plan["trials"])
            plan.update(chunk=best["chunk"], threads=best["threads"])
            if plan["next"] is None:
                plan["how"] = "measured"
                split.drop(plan["threads"])
                self.notes.append(
                    f"autotune: chunk {plan['chunk']}, {_threads(plan['threads'])} "
                    f"({best['s_per_sample'] * 1e3:.3g} ms per sample; tried " + ", ".join(
                        f"{t['chunk']} x {_threads(t['threads'])}: "
                        f"{t['s_per_sample'] * 1e3:.3g} ms" for t in plan["trials"]) + ")")
            if plan["next"] is not None:
                self.notes.append(
                    "autotune: still measuring for input shape " + _shapes_text(feeds)
                    + " (tried " + ", ".join(
                        f"{t['chunk']} x {_threads(t['threads'])}: "
                        f"{t['s_per_sample'] * 1e3:.3g} ms" for t in plan["trials"][before:])
                    + f"; chunk {plan['next'][1]} x {_threads(plan['next'][0])} next); the "
                    "next input of this shape goes on")
            self._tuned[key] = plan
            if key in self._cache_keys and len(plan["trials"]) > before:
                self.cache.update(self._cache_keys[key], tuning=plan)
        tuning.update(plan)
        tuning["chunk_cap"] = self.chunk_cap(feeds)
        for n in _split_sizes(self.samples - first, plan["chunk"]) if first < self.samples \
                else []:
            chunks.append(n)
            yield n, run(plan["threads"], n, level, first)
            first += n

    def _trial(self, split, run, level, feeds, plan: dict):
        """Time real samples, in sample order, each counting toward N (yields (n, outputs)),
        and record them in ``plan`` (``trials``: ``{"chunk", "threads", "s_per_sample"}``
        per size tried; ``next``: ``[threads, chunk]`` still to try, None when done;
        ``left``: thread counts not scanned yet).

        For each intra-op thread count (the default, and 1 on a multi-core CPU when
        none was given and the weights' packed copy is at most ``SPARE_SESSION_BYTES``;
        a session made for the trial runs the unperturbed output once first, untimed):
        chunks of 1, 2, 4, ... samples (up to what fits in ``max_memory``), two runs
        each (the faster one counts: the first run at a size grows onnxruntime's arena,
        and the machine may be busy; a size two runs of which could never fit in N gets
        one), as long as each size is at least ``GAIN`` (5 %)
        faster per sample than the best before it at that thread count and within
        ``FAR_BEHIND`` (1.5x) of the best of all. When this input's samples run out
        first, the next input of the shape goes on.
        """
        cap = min(self.samples, self.chunk_cap(feeds))
        trials = plan["trials"]
        first = 0

        def timed(t, c, times):
            nonlocal first
            per = []
            for _ in range(times):
                out, seconds = self._timed_run(run, t, c, level, first)
                per.append(seconds / c)
                first += c
                yield c, out
            # The faster run: the slower one grew the arena or met another process.
            trials.append({"chunk": c, "threads": t, "s_per_sample": round(min(per), 6)})

        if plan.get("left") is None:  # a new plan: which thread counts to scan
            options = [self.threads]
            if self.threads is None and (os.cpu_count() or 1) > 1 and split.spare and \
                    self._provider_of(split) == "cpu":
                options.append(1)
            plan["next"], plan["left"] = [options[0], 1], options[1:]
        while plan["next"] is not None:
            t, c = plan["next"]
            left = self.samples - first
            if 2 * c <= left:
                times = 2
            elif 2 * c > self.samples and c <= left:
                times = 1  # two runs of it never fit in N: one run decides
            else:
                return  # not enough samples left here: the next input goes on
            if t not in split.suffix:  # a fresh session: its first run is not timed
                run(t, 1, 0.0, 0)
            best = min((r["s_per_sample"] for r in trials if r["threads"] == t), default=None)
            yield from timed(t, c, times)
            now = trials[-1]["s_per_sample"]
            gained = best is None or now <= (1 - GAIN) * best
            # Another thread count is scanned on only while it can compete.
            behind = now > FAR_BEHIND * min(r["s_per_sample"] for r in trials)
            if gained and not behind and 2 * c <= cap:
                plan["next"] = [t, 2 * c]
            elif plan["left"]:  # no clear gain: larger chunks cost memory for nothing
                plan["next"] = [plan["left"].pop(0), 1]
            else:
                plan["next"] = None

    @staticmethod
    def _timed_run(run, threads, n, level, first):
        """``(outputs, wall seconds)`` of one run of samples first .. first+n-1."""
        import time

        start = time.perf_counter()
        out = run(threads, n, level, first)
        return out, time.perf_counter() - start

    def _provider_of(self, split) -> str:
        session = next(iter(split.suffix.values()))
        return "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def _statistics(self, ug, chunk_outputs) -> dict:
        """Merge the runs of ``ug`` into each output's statistics.

        The one reduction of a run: ``run`` feeds it every chunk, verification the
        run at level 0 (so a fault here fails verification, not the user's result).

        Args:
            ug: the uncertainty graph that ran.
            chunk_outputs: (samples in the chunk, output name -> array) per chunk.

        Returns:
            Output name -> OutputStats, each output once (however often it is listed).
        """
        stats = {name: RunningStats() for name in ug.stats_outputs}
        kept = {name: [] for name in ug.stats_outputs}
        mean_entropy = {name: 0.0 for name in self.classes}
        first = None
        sampled = isinstance(self.spec, SAMPLED)
        # NaN/Inf (a model that overflows under the perturbation) are the user's to
        # see: they are counted and warned about (report.non_finite), not numpy's.
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            for n, out in chunk_outputs:
                if first is None:
                    first = out
                if n == 0:  # the unperturbed run alone (looped-suffix): no samples
                    continue
                for name in ug.stats_outputs:
                    names = graphs.output_names(name)
                    if sampled:
                        # Sample by sample, in sample order: the same floats whatever the
                        # chunks. Statistics of the change from y, as the graph's head does.
                        samples = out[names["samples"]]
                        stats[name].add_each(samples - first[name][None])
                        if name in self.classes:
                            for p in samples:
                                mean_entropy[name] += entropy(p, self.classes[name])
                    else:
                        stats[name].add_chunk(n, out[names["mean"]], out[names["variance"]])
                        if name in self.classes:
                            mean_entropy[name] += out[names["mean_entropy"]].astype(np.float64) * n
                    if self.keep_samples:
                        kept[name].append(out[names["samples"]])
            results = {}
            for o in self.info.outputs:
                if o.name in results:  # listed again: the same tensor, the same statistics
                    continue
                y = first[o.name]
                if o.name not in stats:
                    results[o.name] = OutputStats(output=y)
                    continue
                s = stats[o.name]
                mean = s.mean + y if sampled else s.mean  # back from the change to the output
                r = OutputStats(output=y, mean=mean.astype(y.dtype),
                                variance=s.variance.astype(y.dtype),
                                samples=np.concatenate(kept[o.name]) if self.keep_samples else None)
                if o.name in self.classes:
                    axis = self.classes[o.name]
                    h = entropy(mean, axis)
                    r.entropy = h.astype(y.dtype)
                    r.mutual_information = np.maximum(h - mean_entropy[o.name] / s.count,
                                                      0).astype(y.dtype)
                    r.class_variance = winning_class_variance(mean, s.variance,
                                                              axis).astype(y.dtype)
                results[o.name] = r
        return results

    def _run_entropy(self, feeds) -> Result:
        sess, provider = self.reference_session()
        out = self._run(sess, feeds)
        results = {}
        for o in self.info.outputs:
            y = out[o.name]
            r = OutputStats(output=y)
            if o.name in self.classes:
                r.entropy = entropy(y, self.classes[o.name]).astype(y.dtype)
            results[o.name] = r
        return Result(results, {**self.describe(), "strategy": "single run",
                                "provider": provider,
                                "spatial_axes": self.spatial_axes(feeds, out).metadata()})

    def __call__(self, inputs, level: float | None = None, progress=None) -> Result:
        return self.run(inputs, level=level, progress=progress)

    def export(self, path, example=None, force: bool = False) -> str:
        """Write the verified uncertainty graph with N fixed to ``path``.

        The file runs in plain onnxruntime (no tfue needed) and returns, for each
        float output ``y``: ``y``, ``y.mean`` and ``y.variance``. ``example`` is
        the input verification runs on (default: a synthetic one). Gray-box draws
        happen in the graph (a file has no bank to be fed): each session run draws
        new samples, and a fresh session repeats the same sequence of runs; the
        estimator's own results (fed draws) are not reproduced sample for sample.

        A model whose weights are in external data is written with its weights
        copied into ``path + '.data'`` beside it (never serialised into one proto);
        both files appear only when complete.

        After it, ``exported_files`` lists the paths written (``[path]``, or ``[path,
        path + '.data']``) and ``exported_outputs`` the file's output names.

        Raises:
            TfueError: ``path`` (or its .data) exists without ``force``, or is the
                input model or one of its data files; the model fails on the
                synthetic example (the hint asks for ``example``).
        """
        path = os.fspath(path)
        if self.path and os.path.abspath(path) == os.path.abspath(self.path):
            raise TfueError(f"refusing to overwrite the input model '{path}'",
                            "give another output path with -o")
        check_new_file(path, force)
        if writes_data_file(self.info.model):  # fail before the graph is built
            check_new_file(path + ".data", force)
        # A file has no bank to be fed: its draws are made in the graph (seeded
        # RandomNormalLike / RandomUniformLike).
        try:
            ug = self.standalone_graph(example)
        except TfueError as exc:
            if example is None and exc.message.startswith("the model failed on input"):
                # The synthetic input (free sizes 64) is what the model refused.
                raise TfueError(exc.message + " (a synthetic example input)",
                                "verify on a real input: --example FILE on the command line, "
                                "example= in Python") from exc
            raise
        # N and the levels become plain constants: the file has the model's own inputs.
        model = ug.frozen()
        props = {"tfue.method": self.spec.method, "tfue.location": self.location,
                 "tfue.level": str(self.spec.level), "tfue.samples": str(self.samples),
                 "tfue.seed": str(self.seed), "tfue.strategy": ug.strategy}
        if ug.sampling is not None:
            props["tfue.sampling"] = EXPORT_SAMPLING_NOTE
        if self.conversion:
            props["tfue.converted_opset"] = "%d->%d" % tuple(self.conversion)
        if self.pad:  # the file reflect-pads its input itself
            props["tfue.pad"] = str(self.pad)
        onnx.helper.set_model_props(model, props)
        self.exported_files = save_model(model, path, force=force)
        self.exported_outputs = [o.name for o in model.graph.output]
        return path


    def describe(self) -> dict:
        """The run's settings, as recorded in every result."""
        spec = self.spec.describe()
        spec["at"] = self.location
        if isinstance(self.spec, Ensemble):  # every member, this model (member 0) first
            spec["members"] = [Ensemble.label(self.path or self.info.model, 0)] + spec["members"]
        meta = {"model": self.path, **spec, "samples": self.samples,
                "chunks": self.chunk_sizes(), "seed": self.seed}
        if isinstance(self.spec, SAMPLED):
            meta["sampling"] = graphs.SAMPLING_NOTE
        if self.classes:
            meta["classes"] = {"outputs": self.classes, "softmax_added": self.softmax}
        if self._class_notes:
            meta["classes_left_out"] = list(self._class_notes)
        if self.conversion:
            meta["converted_opset"] = list(self.conversion)
        if self.pad is not None:
            meta["pad"] = self.pad
            if self.pad_found is not None:
                meta["pad_found"] = self.pad_found
        return meta

    def prepare(self, feeds) -> None:
        """Build and verify the graph for ``feeds``' shapes now (a no-op for entropy), so
        a model that cannot run them fails before any work is reported."""
        if not isinstance(self.spec, Entropy):
            self._select(self.check_feeds(feeds))

    def uncertainty_graph(self, feeds=None):
        """The verified uncertainty graph (verified on ``feeds`` or a synthetic input)."""
        feeds = self.check_feeds(feeds if feeds is not None else self.example_input())
        ug, _, _ = self._select(feeds)
        return ug

    def standalone_graph(self, feeds=None):
        """The verified uncertainty graph with its sampling inside (seeded
        RandomNormalLike / RandomUniformLike), for a file that runs without tfue.

        Gray-box graphs with in-graph sampling are built and verified at level 0 here,
        fastest strategy first (the one already verified for ``feeds``' shapes, if
        any), one session at a time: no graph with fed draws and no location probe is
        made, so a model with large external weights holds at most two sessions.
        Black-box graphs have nothing random: the verified one is returned. The result
        is cached per input signature. Its draws come from onnxruntime's generator,
        whose state lives in the session: each run of a session draws anew, and a
        fresh session repeats the same sequence of runs.

        Args:
            feeds: the input to verify on (default: a synthetic one).

        Returns:
            A graph.UncertaintyGraph with ``sampling == "graph"`` (gray box).

        Raises:
            TfueError: no strategy's in-graph variant passes verification.
        """
        feeds = self.check_feeds(feeds if feeds is not None else self.example_input())
        if not isinstance(self.spec, SAMPLED):
            ug, _, _ = self._select(feeds)
            return ug
        key = _signature(feeds)
        if key in self._standalone:
            return self._standalone[key]
        reference = self.reference(feeds)
        # One graph only: looped-suffix runs as two; a run asked to use it exports the
        # one-graph strategies in their order instead.
        names = [n for n in self._strategies() if n in graphs.GRAPH_STRATEGIES] or \
            list(graphs.GRAPH_STRATEGIES)
        if self._strategies() == ["looped-suffix"]:
            self.notes.append("export: looped-suffix runs as two graphs; the file holds one "
                              "(the first of " + ", ".join(names) + " that verifies)")
        if self._verified.get(key) in names:  # the strategy the fed graph verified goes first
            names = [self._verified[key]] + [n for n in names if n != self._verified[key]]
        failures = []
        for name in names:
            try:
                ug = graphs.build(self.info, self.spec, name, self.samples, self.seed,
                                  self.keep_samples, self.classes, sampling="graph")
            except graphs.StrategyUnavailable as exc:
                self.notes.append(f"export, strategy {name}: not available ({exc})")
                continue
            try:
                # Only verified here, never sampled: no packed copy of the weights.
                sess, _ = create_session(ug.model, self.provider_request, prepack=False)
                verdict = self._verify(ug, sess, feeds, reference)
            except TfueError as exc:
                verdict = Verdict(False, ort_message(exc.__cause__) if exc.__cause__ is not None
                                  else exc.message)
            finally:
                sess = None  # one session at a time (large external weights)
            if verdict.ok:
                self.notes.append(f"export: strategy {name} with in-graph sampling verified "
                                  f"(max |error| at level 0 = {verdict.max_error:.2g})")
                self._standalone[key] = ug
                return ug
            failures.append(f"{name}: {verdict.reason}")
            self.notes.append(f"export, strategy {name}: failed verification ({verdict.reason})")
        raise TfueError("no uncertainty graph with in-graph sampling passed verification "
                        "against the original model (" + "; ".join(failures) + ")",
                        "export with another location (--at) or --strategy loop")

    def example_input(self, size: int = 64) -> dict:
        """A synthetic input: free dims become 1 (batch) or ``size``; values N(0, 1)."""
        return self.synthetic_input(self.info, size)

    @staticmethod
    def synthetic_input(info: ModelInfo, size: int = 64) -> dict:
        """A synthetic input for ``info``'s model (see example_input)."""
        rng = np.random.default_rng(0)
        feeds = {}
        for inp in info.inputs:
            if inp.shape is None:
                raise TfueError(f"input '{inp.name}' has no known shape to make an example from",
                                "pass an example input (--example FILE)")
            shape = [d if isinstance(d, int) and d > 0 else (1 if axis == 0 else size)
                     for axis, d in enumerate(inp.shape)]
            dtype = _onnx_dtype(inp.dtype) or np.float32
            if dtype.kind == "f":
                feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
            else:
                feeds[inp.name] = np.zeros(shape, dtype)
        return feeds


_FLOATS = ("float32", "float64", "float16")


def _spread(ug, location: str) -> str:
    """What relative noise at ``location`` scales by, in words."""
    axis = ug.relative_axes.get(location, 0)
    return "the whole tensor's spread" if axis is None else \
        f"the spread of each index of its axis {axis}"


def _batch_axis(shape: tuple, alt: tuple, batch: int, other: int) -> int | None:
    """The one axis where a tensor of ``shape`` at batch ``batch`` has ``alt`` at batch
    ``other`` (sizes ``batch`` and ``other``), every other axis the same; else None."""
    if len(shape) != len(alt):
        return None
    moved = [a for a, (s, t) in enumerate(zip(shape, alt)) if s != t]
    if len(moved) == 1 and shape[moved[0]] == batch and alt[moved[0]] == other:
        return moved[0]
    return None


GAIN = 0.05  # a larger chunk (more memory) must be this much faster per sample to win
SPARE_SESSION_BYTES = 256 * 1024**2  # larger packed weights: one thread count, not measured
FAR_BEHIND = 1.5  # a thread count this much slower than the best so far is not scanned on


def _cached_plan(tuning, threads, samples: int) -> dict | None:
    """The autotune plan stored in a cache entry, checked field by field (None: not
    usable, measured again): a finished one (``how`` "cached"; its chunk never above
    this run's N) or an unfinished one that goes on measuring."""
    if not isinstance(tuning, dict):
        return None
    ok_threads = {None, 1} | ({threads} if threads else set())
    trials = tuning.get("trials", [])
    if not isinstance(trials, list) or not all(
            isinstance(t, dict) and isinstance(t.get("chunk"), int) and t["chunk"] >= 1 and
            t.get("threads") in ok_threads and isinstance(t.get("s_per_sample"), (int, float))
            for t in trials):
        return None
    chunk, how = tuning.get("chunk"), tuning.get("how")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1 or \
            tuning.get("threads") not in ok_threads:
        return None
    if how == "measuring":
        nxt, left = tuning.get("next"), tuning.get("left")
        if not trials or not isinstance(left, list) or any(t not in ok_threads for t in left) \
                or not (nxt is None or (isinstance(nxt, list) and len(nxt) == 2 and
                                        nxt[0] in ok_threads and isinstance(nxt[1], int)
                                        and not isinstance(nxt[1], bool) and nxt[1] >= 1)):
            return None
        return {"chunk": chunk, "threads": tuning["threads"], "how": "measuring",
                "trials": trials, "next": nxt, "left": list(left)}
    if how not in ("measured", "cached"):
        return None
    return {"chunk": min(chunk, samples), "threads": tuning["threads"], "how": "cached",
            "trials": trials}


def _choose(trials: list) -> dict:
    """The trial to keep: the smallest chunk within ``GAIN`` of the fastest per sample
    (memory grows with the chunk; times within a few percent are noise on a busy CPU)."""
    fastest = min(t["s_per_sample"] for t in trials)
    near = [t for t in trials if t["s_per_sample"] <= (1 + GAIN) * fastest]
    return min(near, key=lambda t: (t["chunk"], t["s_per_sample"]))


def _counted(runs, total: int, progress):
    """``runs`` ((samples, outputs) pairs) passed on, calling ``progress(done, total)``
    after each run that made samples (the samples merged so far)."""
    done = 0
    for n, out in runs:
        yield n, out
        done += n
        if progress is not None and n:
            progress(done, total)


def _plausible_axes(feeds, shapes: dict, axes: dict) -> bool:
    """Whether cached batch axes fit ``feeds``: none at a batch of one (the whole
    tensor's draws are the item's), else an axis of the location of the batch's size."""
    batch = {v.shape[0] for v in feeds.values() if v.ndim}
    for loc, axis in axes.items():
        if axis is None:
            continue
        shape = shapes.get(loc)
        if batch == {1} or shape is None or not 0 <= axis < len(shape) or \
                shape[axis] not in batch:
            return False
    return True


def _shapes_text(feeds) -> str:
    return ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())


def _threads(threads) -> str:
    return "default threads" if threads is None else f"{threads} thread" + (
        "s" if threads > 1 else "")


def _check_threads(threads) -> int | None:
    """Validate an intra-op thread count (None: onnxruntime's default, or measured)."""
    if threads is None:
        return None
    cpus = os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise TfueError(f"threads must be an integer from 1 to {cpus} (the CPUs here), got "
                        f"{threads!r}", "give --threads 1, or leave it out to let tfue measure")
    if threads > cpus:
        raise TfueError(f"threads {threads} is more than the {cpus} CPUs of this machine "
                        "(more threads than CPUs only wait for each other)",
                        f"give --threads {cpus} or less, or leave it out to let tfue measure")
    return int(threads)


def _disk_cache(cache):
    """A cache.DiskCache from ``cache``: True (the default folder), False/None (off),
    a folder path, or a DiskCache."""
    from .cache import DiskCache

    if isinstance(cache, DiskCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return DiskCache(os.fspath(cache))
    if cache is True:
        return DiskCache()
    if cache is False or cache is None:
        return DiskCache(enabled=False)
    raise TfueError(f"cache must be True, False or a folder, got {cache!r}",
                    "e.g. cache=False to measure and verify afresh")


def _split_sizes(total: int, chunk: int) -> list:
    """``total`` samples in runs of ``chunk`` (the last one smaller)."""
    sizes = [chunk] * (total // chunk)
    if total % chunk:
        sizes.append(total % chunk)
    return sizes


def _signature(feeds: dict) -> tuple:
    """An input signature (names, shapes, dtypes): what graphs, probes, draws and
    verifications are cached by."""
    return tuple((k, v.shape, v.dtype.str) for k, v in sorted(feeds.items()))


def _check_inputs_fit(info: ModelInfo, spec) -> None:
    """Refuse up front a method the model's inputs do not fit (before any work)."""
    if not isinstance(spec, Transform):
        return
    inputs = info.inputs
    if len(inputs) == 1 and inputs[0].dtype in _FLOATS and inputs[0].shape is not None \
            and len(inputs[0].shape) in (3, 4):
        return
    listed = ", ".join(f"{i.name} {i.dtype} " + ("[rank unknown]" if i.shape is None else
                                                 "[" + ", ".join(map(str, i.shape)) + "]")
                       for i in inputs)
    raise TfueError("infer-transformation needs one image input (float, [N,C,H,W]/[N,H,W,C]/"
                    f"[N,H,W]); this model has {len(inputs)} input"
                    f"{'' if len(inputs) == 1 else 's'}: {listed}",
                    "use a gray-box method instead: --method noise or --method dropout "
                    "(perturbs an inner tensor, any input type)")


def _check_arguments(model, spec) -> None:
    """Refuse a model or spec of the wrong type early, naming the argument."""
    import onnx

    if not isinstance(model, (str, os.PathLike, onnx.ModelProto)):
        raise TfueError(f"model must be a path to an .onnx file or an onnx.ModelProto, got "
                        f"{type(model).__name__}", "e.g. Estimator('model.onnx', Noise(0.1))")
    if not isinstance(spec, SPECS):
        raise TfueError(f"spec must be one of {', '.join(c.__name__ for c in SPECS)}, got "
                        f"{type(spec).__name__}", "e.g. Estimator('model.onnx', Noise(0.1))")


def _model_failed(shapes: dict, exc) -> TfueError:
    """The error for onnxruntime failing on inputs of ``shapes`` (name -> shape)."""
    named = ", ".join(f"{k}{tuple(v)}" for k, v in shapes.items())
    return TfueError(f"the model failed on input {named}: {ort_message(exc)}",
                     "check the input size and layout the model expects "
                     "(for images: --resize HxW)")


def ort_message(exc) -> str:
    """onnxruntime's error, without its source paths and C++ signatures."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"/onnxruntime_src/\S+:\d+ ", "", text)
    text = re.sub(r"(?:[\w:]+ )?onnxruntime::[\w:<>]+\([^)]*\)\s*", "", text)
    text = re.sub(r"(Status Message: ).*? was false\.\s*", r"\1", text)
    return text[:240]


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in shape) + "]"
