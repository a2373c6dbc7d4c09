"""Run an uncertainty graph: strategies, verification, chunks, streaming statistics.

A :class:`Runner` owns one model and one perturbation spec. It builds the
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

from . import graph as graphs
from .errors import TfueError
from .model import ModelInfo, load_model
from .perturb import SAMPLED, Ensemble, Entropy, Transform
from .session import create_session
from .stats import RunningStats, entropy, winning_class_variance
from .verify import Verdict, check_identity, check_unperturbed_slot

DEFAULT_CHUNK = 8
MAX_AUTO_CHUNK = 64
DEFAULT_MAX_MEMORY = 2 * 1024**3


def _tensor_bytes(model, feeds) -> int:
    """Sum of the bytes of every tensor shape inference can size for ``feeds``."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in feeds:
            dims = vi.type.tensor_type.shape.dim
            for d, size in zip(dims, feeds[vi.name].shape):
                d.Clear()
                d.dim_value = int(size)
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:
        return sum(int(v.nbytes) for v in feeds.values())
    total = 0
    for vi in list(m.graph.value_info) + list(m.graph.output):
        tt = vi.type.tensor_type
        dims = [d.dim_value for d in tt.shape.dim]
        if not tt.HasField("shape") or any(d <= 0 for d in dims):
            continue
        try:
            item = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).itemsize
        except Exception:
            item = 4
        total += int(np.prod(dims, dtype=np.int64)) * item
    return total + sum(int(v.nbytes) for v in feeds.values())


@dataclasses.dataclass
class OutputStats:
    """Prediction and uncertainty of one model output."""

    output: np.ndarray  # the unperturbed output
    mean: np.ndarray | None = None  # sample mean (None for non-float outputs)
    variance: np.ndarray | None = None  # per-element population variance
    samples: np.ndarray | None = None  # [N, ...] when asked for
    # Class probabilities only (maps over pixels for dense outputs):
    entropy: np.ndarray | None = None  # predictive entropy of the mean (nats)
    mutual_information: np.ndarray | None = None  # BALD: entropy - mean sample entropy
    class_variance: np.ndarray | None = None  # variance of the winning class

    @property
    def uncertainty(self):
        """The map to look at: the variance, or the entropy for --method entropy."""
        return self.variance if self.variance is not None else self.entropy


@dataclasses.dataclass
class Result:
    """What one run returns: per-output statistics and how they were made."""

    outputs: dict  # output name -> OutputStats
    metadata: dict

    @property
    def primary(self) -> str:
        """Name of the first output that has statistics."""
        for name, s in self.outputs.items():
            if s.uncertainty is not None:
                return name
        return next(iter(self.outputs))

    @property
    def output(self) -> np.ndarray:
        return self.outputs[self.primary].output

    @property
    def mean(self) -> np.ndarray:
        return self.outputs[self.primary].mean

    @property
    def variance(self) -> np.ndarray:
        return self.outputs[self.primary].variance

    @property
    def samples(self):
        return self.outputs[self.primary].samples

    @property
    def entropy(self):
        return self.outputs[self.primary].entropy

    @property
    def mutual_information(self):
        return self.outputs[self.primary].mutual_information

    @property
    def uncertainty(self):
        return self.outputs[self.primary].uncertainty


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


def _softmax_axis(info: ModelInfo, name: str):
    """The class axis of an output made by a Softmax (through Identity/Reshape), else None."""
    producers = {o: n for n in info.graph.node for o in n.output}
    node = producers.get(name)
    while node is not None and node.op_type in ("Identity", "Reshape", "Flatten", "Squeeze"):
        node = producers.get(node.input[0])
    if node is None or node.op_type != "Softmax":  # LogSoftmax outputs are not probabilities
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"),
                1 if info.opset < 13 else -1)
    out = next(o for o in info.outputs if o.name == name)
    rank = len(out.shape) if out.shape is not None else None
    if axis < 0:
        if rank is None:
            return None
        axis += rank
    return axis


class Runner:
    """Uncertainty for one model and one perturbation spec.

    ``model`` is a path or a ModelProto; ``spec`` a Noise, Dropout, MCDropout,
    Transform, Ensemble or Entropy. ``strategy`` is ``auto`` (fastest that
    verifies) or a name from graph.STRATEGIES. ``seed`` None picks one at random;
    it is recorded.

    Class probabilities: outputs made by a Softmax are found (``classify="auto"``);
    ``softmax=True`` appends a softmax over ``class_axis`` to outputs that are
    logits; ``classify=True`` treats every float output as probabilities over
    ``class_axis``, ``False`` none. They also get entropy, mutual information
    and the variance of the winning class.
    """

    def __init__(self, model, spec, samples: int | None = None, chunk: int | None = None,
                 seed: int | None = None, provider: str = "auto", strategy: str = "auto",
                 keep_samples: bool = False, softmax: bool = False, classify="auto",
                 class_axis: int = 1, max_memory: int = DEFAULT_MAX_MEMORY,
                 io_binding: bool | None = None):
        if isinstance(model, (str, os.PathLike)):
            self.path = os.fspath(model)
            self.info = ModelInfo(load_model(self.path), self.path)
        else:
            self.path = None
            self.info = ModelInfo(model)
        self.spec = spec
        self.classes = self._find_classes(softmax, classify, class_axis)
        if softmax:
            self.info = ModelInfo(graphs.add_softmax(self.info, self.classes), self.path)
        self.softmax = softmax
        if isinstance(spec, SAMPLED):
            self.samples = graphs.check_samples(8 if samples is None else samples)
        else:
            if samples is not None:
                raise TfueError(f"--samples does not apply to --method {spec.method}",
                                "N is the number of transforms or members" if not
                                isinstance(spec, Entropy) else "entropy needs one run")
            self.samples = (len(spec.elements) if isinstance(spec, Transform) else
                            len(spec.members) + 1 if isinstance(spec, Ensemble) else 1)
        self.chunk = check_chunk(chunk)
        if not (isinstance(max_memory, (int, float)) and max_memory > 0):
            raise TfueError(f"max_memory must be a positive number of bytes, got {max_memory!r}",
                            "e.g. --max-memory 2G")
        self.max_memory = int(max_memory)
        self.io_binding = io_binding
        self._sample_bytes = {}
        self.seed = int(seed) if seed is not None else secrets.randbelow(2**31)
        self.provider_request = provider
        if strategy != "auto" and strategy not in graphs.STRATEGIES:
            raise TfueError(f"unknown strategy {strategy!r}",
                            f"use auto or one of {', '.join(graphs.STRATEGIES)}")
        self.strategy_request = strategy
        self.keep_samples = keep_samples
        self.notes = []  # what happened on the way (strategies tried, why they failed)
        self._reference = None  # (session, provider) of the original model
        self._built = {}  # strategy -> (UncertaintyGraph, session, provider), or None
        self._verified = {}  # input signature -> strategy that passed verification
        self._axes_probe = None  # axes.AxesProbe, made on first use
        self._graph_axes = None  # the axes.SpatialAxes the transform graphs undo on
        self.location = self._resolve_location()

    # --- setup -------------------------------------------------------------------
    def _find_classes(self, softmax: bool, classify, class_axis: int) -> dict:
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
        found = {o.name: _softmax_axis(self.info, o.name) for o in floats}
        return {k: v for k, v in found.items() if v is not None}

    def _resolve_location(self) -> str:
        if hasattr(self.spec, "at"):
            return self.info.resolve_location(self.spec.at).name
        if isinstance(self.spec, Transform):
            return "input"
        if isinstance(self.spec, Ensemble):
            from .graph.blackbox import member_infos

            self._members = member_infos(self.info, self.spec.members)  # checks signatures
            return ", ".join([self.path or "member 0"] +
                             [m.path or f"member {k}" for k, m in enumerate(self._members, 1)])
        if isinstance(self.spec, Entropy):
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
            try:
                ug = graphs.build(self.info, spec, name, self.samples, self.seed,
                                  self.keep_samples, self.classes, axes=self._graph_axes)
                self._built[name] = (ug, *create_session(ug.model, self.provider_request))
            except graphs.StrategyUnavailable as exc:
                self.notes.append(f"strategy {name}: not available ({exc})")
            except TfueError as exc:
                if self.provider_request == "cuda" and "--provider cuda" in exc.message:
                    raise
                self.notes.append(f"strategy {name}: onnxruntime rejects its graph ({exc.message})")
        return self._built[name]

    def _rotates(self) -> bool:
        return isinstance(self.spec, Transform) and any(e.swaps_axes for e in self.spec.elements)

    @staticmethod
    def _rotation_hint() -> str:
        from .transforms import usable_sets

        return "use one of the sets " + ", ".join(usable_sets(square=False)) + \
            ", or a square input"

    def reference_session(self):
        """The original model's session (used for verification)."""
        if self._reference is None:
            source = self.path if (self.path and not self.softmax) else self.info.model
            self._reference = create_session(source, self.provider_request)
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

    def _verify(self, ug, sess, feeds, reference) -> Verdict:
        if not ug.level_inputs:  # transforms, ensembles: the unperturbed output must hold
            return check_unperturbed_slot(self._run(sess, {**feeds, **ug.feeds()}), reference)
        out = self._run(sess, {**feeds, **ug.feeds(samples=2, level=0.0)})
        verdict = check_identity(out, reference, ug.stats_outputs)
        if verdict.ok and ug.strategy in ("shared-prefix", "batched"):
            on = self._run(sess, {**feeds, **ug.feeds(samples=2)})
            verdict = check_unperturbed_slot(on, reference)
        return verdict

    def _select(self, feeds):
        """The verified (graph, session, provider) for this input signature."""
        key = tuple((k, v.shape, v.dtype.str) for k, v in sorted(feeds.items()))
        if key in self._verified:
            return self._built[self._verified[key]]
        reference = self.reference(feeds)
        found = self.spatial_axes(feeds, reference)
        if isinstance(self.spec, Transform):
            from .graph.builder import stats_outputs

            found.check_rotations(self.spec.elements, [o.name for o in stats_outputs(self.info)])
            built = self._graph_axes
            if built is None or (found.outputs, found.ranks) != (built.outputs, built.ranks):
                # Graphs built for other axes would undo the transforms on the wrong ones.
                self._built, self._verified, self._graph_axes = {}, {}, found
                self.notes.append(f"transforms undone on output axes {found.metadata()} "
                                  f"(found by {found.how})" + "".join(
                                      f"; output '{n}' follows the image on axes that are not "
                                      "a certain (height, width) pair: left as it comes"
                                      for n in sorted(found.unresolved)))
        failures = []
        # Fastest first; a strategy's graph and session are made only when reached.
        for name in self._strategies():
            candidate = self._candidate(name)
            if candidate is None:
                continue
            ug, sess, provider = candidate
            try:
                verdict = self._verify(ug, sess, feeds, reference)
            except TfueError as exc:
                verdict = Verdict(False, exc.message)
            if verdict.ok:
                what = "at level 0" if ug.level_inputs else "of the unperturbed output"
                self.notes.append(f"strategy {ug.strategy}: verified (max |error| {what} = "
                                  f"{verdict.max_error:.2g}) on {provider}")
                self._verified[key] = name
                return ug, sess, provider
            failures.append(f"{ug.strategy}: {verdict.reason}")
            self.notes.append(f"strategy {ug.strategy}: failed verification ({verdict.reason})")
        if not failures:  # no strategy could even be built
            if self._rotates() and any("rejects its graph" in n for n in self.notes):
                raise TfueError("the model does not accept the input rotated by 90° "
                                "(onnxruntime rejects the graph: " + self.notes[-1].split(
                                    "(", 1)[1], self._rotation_hint())
            raise TfueError("no sampling strategy applies to this model: " + "; ".join(self.notes),
                            "run with --verbose for details")
        if self._rotates():
            from .graph.blackbox import spatial_axes

            (h, w), x = spatial_axes(self.info, self.spec.layout)[0], next(iter(feeds.values()))
            if x.shape[h] != x.shape[w] and all("the model failed" in f for f in failures):
                raise TfueError(f"the model does not accept the input rotated by 90° "
                                f"({x.shape[h]}x{x.shape[w]} becomes {x.shape[w]}x{x.shape[h]}): "
                                + failures[0].split(": ", 1)[1], self._rotation_hint())
        raise TfueError("no uncertainty graph passed verification against the original model ("
                        + "; ".join(failures) + ")",
                        "try another location (--at) or --strategy loop; --verbose shows details")

    def spatial_axes(self, feeds, outputs=None):
        """Which axes of each output carry the image's height and width at ``feeds``'
        shapes (an axes.SpatialAxes, cached per input shape); ``outputs`` are the
        original model's outputs on ``feeds`` when already computed."""
        if self._axes_probe is None:
            from .axes import AxesProbe

            self._axes_probe = AxesProbe(self.info, self.reference,
                                         getattr(self.spec, "layout", "auto"))
        return self._axes_probe(feeds, outputs)

    def sample_bytes(self, feeds) -> int:
        """Bytes of the model's tensors for one sample of ``feeds`` (all intermediates
        alive at once: an upper bound), from shape inference at the real input shape."""
        key = tuple((k, v.shape) for k, v in sorted(feeds.items()))
        if key not in self._sample_bytes:
            self._sample_bytes[key] = _tensor_bytes(self.info.model, feeds)
        return self._sample_bytes[key]

    def chunk_sizes(self, feeds=None) -> list:
        """How the samples are split into runs: ``chunk``, else as many as fit in
        ``max_memory`` for this input (at most 64), else 8 without an input."""
        if not isinstance(self.spec, SAMPLED):
            return [self.samples]  # one run: every transform / member at once
        chunk = self.chunk
        if chunk is None and feeds is not None:
            per_sample = max(self.sample_bytes(feeds), 1)
            chunk = int(max(1, min(self.samples, MAX_AUTO_CHUNK,
                                   self.max_memory // per_sample)))
        chunk = chunk or min(self.samples, DEFAULT_CHUNK)
        sizes = [chunk] * (self.samples // chunk)
        if self.samples % chunk:
            sizes.append(self.samples % chunk)
        return sizes

    def run(self, feeds, level: float | None = None) -> Result:
        """Sample the perturbed model on ``feeds`` (an array or dict of arrays).

        ``level`` overrides the spec's sigma or rate for this run (every
        perturbed location at once), without rebuilding the graph.
        """
        feeds = self.check_feeds(feeds)
        if isinstance(self.spec, Entropy):
            return self._run_entropy(feeds)
        if level is not None:
            if not isinstance(self.spec, SAMPLED):
                raise TfueError(f"--method {self.spec.method} has no level",
                                "levels are for noise and dropout")
            level = float(self.spec.with_level(level).level)  # validates the level
        ug, sess, provider = self._select(feeds)
        stats = {name: RunningStats() for name in ug.stats_outputs}
        kept = {name: [] for name in ug.stats_outputs}
        mean_entropy = {name: 0.0 for name in self.classes}
        first = None
        chunks = self.chunk_sizes(feeds)
        device_feeds = self._device_feeds(feeds, provider)
        for n in chunks:
            extra = ug.feeds(samples=n, level=level)
            out = self._run(sess, {**feeds, **extra}) if device_feeds is None else \
                self._run_bound(sess, device_feeds, extra)
            if first is None:
                first = out
            for name in ug.stats_outputs:
                names = graphs.output_names(name)
                stats[name].add_chunk(n, out[names["mean"]], out[names["variance"]])
                if self.keep_samples:
                    kept[name].append(out[names["samples"]])
                if name in self.classes:
                    mean_entropy[name] += out[names["mean_entropy"]].astype(np.float64) * n
        results = {}
        for o in self.info.outputs:
            y = first[o.name]
            if o.name not in stats:
                results[o.name] = OutputStats(output=y)
                continue
            s = stats[o.name]
            r = OutputStats(output=y, mean=s.mean.astype(y.dtype),
                            variance=s.variance.astype(y.dtype),
                            samples=np.concatenate(kept[o.name]) if self.keep_samples else None)
            if o.name in self.classes:
                axis = self.classes[o.name]
                h = entropy(s.mean, axis)
                r.entropy = h.astype(y.dtype)
                r.mutual_information = np.maximum(h - mean_entropy[o.name] / s.count,
                                                  0).astype(y.dtype)
                r.class_variance = winning_class_variance(s.mean, s.variance, axis).astype(y.dtype)
            results[o.name] = r
        meta = {**self.describe(), "chunks": chunks, "strategy": ug.strategy,
                "provider": provider, "spatial_axes": self.spatial_axes(feeds).metadata()}
        if isinstance(self.spec, Transform):
            meta["inverted_axes"] = self._graph_axes.metadata()
        if level is not None:
            meta["level"] = level
        return Result(results, meta)

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

    def describe(self) -> dict:
        """The run's settings, as recorded in every result."""
        spec = self.spec.describe()
        spec["at"] = self.location
        meta = {"model": self.path, **spec, "samples": self.samples,
                "chunks": self.chunk_sizes(), "seed": self.seed}
        if self.classes:
            meta["classes"] = {"outputs": self.classes, "softmax_added": self.softmax}
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
