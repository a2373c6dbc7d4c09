"""calibration.json: a fitted :class:`~tfue_onnx.calibrate.Calibration` with the identity
of the run it was made for, applied to results and baked into exported graphs.

A calibration holds only for the run that made it: the model (its file's SHA-256), the
method, the location, the level, N and the method's other settings (the noise's sigma
mode, the transform set, the ensemble's members, ``--pad``), and the output it was fitted
on. :meth:`CalibrationFile.check` refuses any other, naming every difference; the seed
is recorded but not compared (another seed is another draw of the same run).

Applied to a result (:meth:`CalibrationFile.apply`), the calibrated output ``y`` gains
``expected_error`` (E|error| from the isotonic map), ``lower`` and ``upper``
(``y ∓ q * max(s, floor)``, s = sqrt(variance)), in ``y``'s units and dtype.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from .calibrate import Calibration
from .errors import TfueError
from .files import check_new_file, save_json
from .names import DRAWING_METHODS, VERSION

FORMAT = 1  # calibration.json's "tfue_calibration" version
COMPARED = ("method", "at", "level", "samples", "sigma_mode", "transforms", "pad")
ADDED = ("expected_error", "lower", "upper")  # the arrays a calibrated output gains
_DIGESTS = {}  # ((path, size, mtime_ns) of each file) -> sha256
_DATA_FILES = {}  # (path, size, mtime_ns) of a model file -> the data files it names


def _stat_key(path: str) -> tuple:
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


def model_digest(path) -> str | None:
    """SHA-256 (hex) of a model file's bytes and of the external data files it names (in
    name order): the weights are part of the model, where the files lie is not. None when
    ``path`` is None or not a file (a model given as an in-memory ModelProto). Both the
    digest and the list of data files are kept per file size and time, so a result
    written per input reads the model only once."""
    if path is None or not os.path.isfile(os.fspath(path)):
        return None
    path = os.fspath(path)
    own = _stat_key(path)
    if own not in _DATA_FILES:
        _DATA_FILES[own] = _data_files(path)
    files = [path] + _DATA_FILES[own]
    key = tuple(_stat_key(f) for f in files if os.path.isfile(f))
    if key not in _DIGESTS:
        h = hashlib.sha256()
        for f in files:  # contents only: a copy elsewhere, under another name, is the same
            if os.path.isfile(f):
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _data_files(path: str) -> list:
    """The external data files a model file names (paths beside it, sorted; not the
    file itself)."""
    import onnx

    from .external import external_tensors, read_leaving_weights, region

    try:
        model = read_leaving_weights(path) or onnx.load(path, load_external_data=False)
    except Exception:  # not a model onnx can read: its bytes alone identify it
        return []
    names = {region(t)[0] for t in external_tensors(model)} - {os.path.basename(path)}
    return [os.path.join(os.path.dirname(path), n) for n in sorted(names)]


def identity(metadata: dict, output: str) -> dict:
    """What a calibration is valid for, from a run's metadata (``Result.metadata`` or
    ``Estimator.describe()``) and the calibrated output's name: the model's SHA-256
    (``model``: as a result recorded it, else of the file now; None for an in-memory
    model), the settings in ``COMPARED`` that the run has, whether a softmax was added
    (``--softmax``) and over which class axis, for MC-dropout the nodes that run at their
    rates (in place of ``at`` and ``level``), and for ensembles the members' SHA-256s
    (member 0, whose output is the prediction, first; the others sorted: where the files
    lie and their order do not matter) in place of their paths (``at``). ``--pad 0``
    counts as no pad and a transform set as its elements in any order."""
    found = {"model": metadata.get("model_sha256") or model_digest(metadata.get("model")),
             "output": output}
    found.update({k: metadata[k] for k in COMPARED if k in metadata})
    classes = metadata.get("classes") or {}
    found["softmax"] = bool(classes.get("softmax_added"))
    if found["softmax"]:  # probabilities over which axis
        found["class_axis"] = (classes.get("outputs") or {}).get(output)
    if not found.get("pad"):
        found.pop("pad", None)
    if found.get("transforms") is not None:
        found["transforms"] = sorted(found["transforms"])
    if metadata.get("dropout_nodes") is not None:  # mc-dropout: what runs, not how it was named
        found["dropout_nodes"] = {k: metadata["dropout_nodes"][k]
                                  for k in sorted(metadata["dropout_nodes"])}
        found.pop("at", None)
        found.pop("level", None)
    if metadata.get("members"):
        digests = metadata.get("members_sha256") or [model_digest(m)
                                                     for m in metadata["members"]]
        found["members"] = digests[:1] + sorted(digests[1:])
        found.pop("at", None)
    return found


def run_identity(meta: dict) -> dict:
    """What a result depends on, from a run's metadata (``Result.metadata`` or
    ``Estimator.describe()``): :func:`identity` without the output, the seed for the
    methods that draw, and the class outputs (``--classify``). A Ray run resumes only
    results of the same identity; ``tfue rank`` keeps scores by it."""
    found = identity(meta, "")
    found.pop("output")
    if meta.get("method") in DRAWING_METHODS:
        found["seed"] = meta.get("seed")
    found["classes"] = (meta.get("classes") or {}).get("outputs")  # --classify's maps
    return found


def differences(made_for: dict, now: dict) -> list:
    """'name (made for A, here B)' for every identity field that differs, the model and
    method first."""
    found = []
    order = ("model", "members", "output") + COMPARED + ("softmax", "class_axis",
                                                          "dropout_nodes")
    for key in sorted(set(made_for) | set(now), key=lambda k: (
            order.index(k) if k in order else len(order), k)):
        a, b = made_for.get(key), now.get(key)  # (identity gives lists, as JSON does)
        if a != b:
            shown = ("another file" if key in ("model", "members") else
                     f"made for {_show(a)}, here {_show(b)}")
            found.append(f"{_NAMES.get(key, key)} ({shown})")
    return found


def check_files(ident: dict, which: str = "the run's") -> None:
    """Refuse an identity whose model (or an ensemble member) was given in memory: with no
    file to hash, a calibration could not be told apart from another model's.

    Raises:
        TfueError: the model or a member has no file.
    """
    if ident.get("model") is None or None in (ident.get("members") or ()):
        raise TfueError(f"{which} model was given in memory (an onnx.ModelProto), so a "
                        "calibration cannot be tied to it", "give the model (and every "
                        "ensemble member) as a file path")


_KINDS = {"model": (str, type(None)), "output": str, "method": str, "at": str,
          "level": (int, float, type(None)), "samples": int, "sigma_mode": str,
          "transforms": list, "pad": int, "softmax": bool, "members": list,
          "class_axis": (int, list, type(None)), "dropout_nodes": dict}


def _checked_identity(ident) -> dict:
    """A calibration file's identity, its fields of the kinds tfue writes (ValueError)."""
    if not isinstance(ident, dict) or "output" not in ident or "method" not in ident:
        raise ValueError("its identity names no output or method")
    for key, value in ident.items():
        kind = _KINDS.get(key)
        if kind is None or isinstance(value, bool) and kind is not bool or \
                not isinstance(value, kind):
            raise ValueError(f"its identity's {key!r} is {value!r}")
    return ident


_NAMES = {"at": "location", "samples": "N", "model": "model", "output": "output"}


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value)


@dataclasses.dataclass(frozen=True)
class CalibrationFile:
    """A calibration with what it was made for (what ``tfue calibrate`` writes).

    Attributes:
        fit: the fitted ``calibrate.Calibration``.
        identity: ``identity(metadata, output)`` of the calibrating run.
        about: the rest, recorded not compared: the model's path, the seed, the
            strategy, the calibration set (``pairs``, ``elements``, ``sha256`` of its
            inputs and targets), the fit's numbers on it, tfue's version.
        path: the file it was read from (None when made in memory).
    """

    fit: Calibration
    identity: dict
    about: dict
    path: str | None = None

    @property
    def output(self) -> str:
        """The calibrated output's name."""
        return self.identity["output"]

    def to_json(self) -> dict:
        """calibration.json's content."""
        return {"tfue_calibration": FORMAT, "tfue_version": VERSION,
                "identity": self.identity, **self.about, "fit": self.fit.to_json()}

    def save(self, path: str, force: bool = False) -> str:
        """Write calibration.json to ``path`` atomically; return ``path``.

        Raises:
            TfueError: ``path`` exists (without ``force``), is a folder or cannot be
                written.
        """
        check_new_file(path, force)
        save_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, path) -> "CalibrationFile":
        """Read a calibration.json.

        Raises:
            TfueError: the file is missing, not JSON, or not a calibration tfue wrote.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            raise TfueError(f"calibration file '{path}' is a folder",
                            "give the calibration.json file tfue calibrate wrote")
        if not os.path.isfile(path):
            raise TfueError(f"calibration file '{path}' does not exist",
                            "make one with tfue calibrate")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or data.get("tfue_calibration") != FORMAT:
                raise ValueError("no 'tfue_calibration': %d field" % FORMAT)
            ident, fit = _checked_identity(data["identity"]), Calibration.from_json(data["fit"])
        except (OSError, ValueError, KeyError, TypeError, TfueError) as exc:
            reason = exc.message if isinstance(exc, TfueError) else f"{type(exc).__name__}: {exc}"
            raise TfueError(f"'{path}' is not a calibration tfue wrote ({reason})",
                            "give a calibration.json made by tfue calibrate") from None
        about = {k: v for k, v in data.items()
                 if k not in ("tfue_calibration", "tfue_version", "identity", "fit")}
        return cls(fit, ident, about, path)

    def check(self, metadata: dict) -> None:
        """Refuse a run the calibration was not made for.

        Args:
            metadata: the run's (``Result.metadata`` or ``Estimator.describe()``).

        Raises:
            TfueError: the model, method, location, level, N or another compared
                setting differs (each difference named), or the output is not the
                calibrated one; either model is an in-memory ModelProto (no file to
                identify it by).
        """
        now = identity(metadata, self.output)
        for which, ident in (("the calibration's", self.identity), ("this run's", now)):
            check_files(ident, which)
        diffs = differences(self.identity, now)
        if diffs:
            where = f"'{self.path}'" if self.path else "the calibration"
            raise TfueError(f"{where} was made for another run: " + "; ".join(diffs),
                            "run with the settings it was made for, or calibrate again "
                            "with these (tfue calibrate)")

    def apply(self, result):
        """``result`` with its calibrated output's ``expected_error``, ``lower`` and
        ``upper`` filled in (a new Result; arrays in the output's shape and dtype; its
        metadata gains ``calibration``: :meth:`stamp`).

        Raises:
            TfueError: the result is from another run (:meth:`check`), or has no
                variance for the calibrated output.
        """
        from .results import Result

        self.check(result.metadata)
        stats = result.outputs.get(self.output)
        if stats is None or stats.variance is None:
            raise TfueError(f"the result has no variance for output '{self.output}'",
                            "calibrations apply to sampling methods' variance maps")
        y = stats.output
        lower, upper = self.fit.interval(y, stats.variance)
        added = {"expected_error": self.fit.expected_error(stats.variance), "lower": lower,
                 "upper": upper}
        dtype = y.dtype if np.issubdtype(y.dtype, np.floating) else np.float32
        outputs = dict(result.outputs)
        outputs[self.output] = dataclasses.replace(
            stats, **{k: v.astype(dtype, copy=False) for k, v in added.items()})
        return Result(outputs, {**result.metadata, "calibration": self.stamp()})

    def stamp(self) -> dict:
        """What a result records of the calibration applied to it: coverage, q, and the
        fit's SHA-256 (over its JSON), so a resumed result is known to carry it."""
        text = json.dumps(self.fit.to_json(), sort_keys=True)
        return {"coverage": self.fit.coverage, "q": self.fit.q,
                "fit_sha256": hashlib.sha256(text.encode()).hexdigest()}

    def add_to_graph(self, model):
        """``model`` (an exported uncertainty graph with outputs ``y`` and ``y.variance``)
        with three more outputs computed in the graph: ``y.expected_error``,
        ``y.lower`` and ``y.upper``, as :meth:`apply` computes them (float arithmetic
        in ``y``'s dtype). The model is changed in place and returned.

        Raises:
            TfueError: the graph has no ``y`` and ``y.variance`` outputs.
        """
        from .calibrate import graph_nodes

        outs = {o.name: o for o in model.graph.output}
        y = self.output
        if y not in outs or f"{y}.variance" not in outs:
            raise TfueError(f"the exported graph has no '{y}' and '{y}.variance' outputs to "
                            "calibrate", "export the run the calibration was made for")
        nodes, inits = graph_nodes(self.fit, y, f"{y}.variance",
                                   outs[y].type.tensor_type.elem_type)
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(inits)
        for name in ADDED:
            vi = model.graph.output.add()
            vi.CopyFrom(outs[y])
            vi.name = f"{y}.{name}"
        return model

    def props(self) -> dict:
        """Metadata for an exported model: the calibration's coverage, q and identity."""
        return {"tfue.calibration": json.dumps(
            {"coverage": self.fit.coverage, "q": self.fit.q, "identity": self.identity,
             "calibration_set": self.about.get("calibration_set")})}
