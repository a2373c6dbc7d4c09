"""An on-disk cache of what a run verifies and measures once per model and input shape.

A gray-box run pays fixed costs before its first sample: building the uncertainty
graph, verifying it against the original model (reference runs, probes of the
output axes and of the locations' shapes) and measuring which chunk size and thread
count sample fastest (``Estimator`` autotuning). All of it depends only on (model
bytes, method, location, input signature, provider, options, tfue's source code,
onnxruntime and CPU count), so it is kept on disk under a key made of those, and a
second process (or a later input shape already seen) starts from it.

An entry is a JSON file, plus the verified graphs as ``.onnx`` files whose SHA-256
is in the JSON, and a seal (the SHA-256 of the JSON's content). An entry is used
only when it parses, names the same key, matches its seal, holds the fields the
runner needs with the right types, and its graph files have the recorded hashes;
anything else (a corrupt, truncated, stale or edited entry) is ignored and
overwritten by the next run, never trusted. A run that still fails on an entry
verifies afresh (``Estimator``). An entry's graphs hold no weights kept in initializers
of 64 KiB or more (those stay in the model's files) but do hold weights stored in
``Constant`` nodes or small initializers (paddle2onnx exports: about twice the model
per entry); graphs over ``MAX_GRAPH_BYTES`` are not stored (rebuilt next time), and
tfue's entries are trimmed to ``MAX_CACHE_BYTES``, least recently used first; only
whole entries (a JSON that is a tfue entry naming its key, and its graph files) are
ever removed, so other files in the folder, whatever their names, stay.

The folder is ``$TFUE_CACHE_DIR`` when set, else the platform's user cache folder
(``platformdirs.user_cache_dir("tfue-onnx")``, e.g. ``~/.cache/tfue-onnx`` on Linux).
Writing is best effort: an unwritable folder costs the speed-up, not the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np

from .autotune import cached_plan
from .errors import ArgumentError
from .feeds import signature
from .perturb import SAMPLED, Dropout, Noise

ENV = "TFUE_CACHE_DIR"
FORMAT = 2  # bumped when the entry layout changes: older entries are ignored
MAX_GRAPH_BYTES = 64 * 1024**2  # larger graphs are rebuilt, not stored
MAX_CACHE_BYTES = 512 * 1024**2  # beyond it the least recently used entries are removed


def cache_dir() -> str:
    """The cache folder: ``$TFUE_CACHE_DIR``, else the user cache folder."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    import platformdirs

    return platformdirs.user_cache_dir("tfue-onnx", appauthor=False)


def model_digest(model) -> str | None:
    """SHA-256 (hex) of a ModelProto's serialized bytes (weights stored in external
    files are named, not read: their file names and sizes are hashed beside); None
    for a proto too large to serialize (such a run is not cached)."""
    try:
        if model.ByteSize() > 1_800_000_000:
            return None
        return hashlib.sha256(model.SerializeToString()).hexdigest()
    except Exception:
        return None


_CODE = []
# The files of an entry: <key>.json and <key>.<graph>.onnx (make_key: 40 hex digits).
_ENTRY_FILE = re.compile(r"([0-9a-f]{40})\.(?:json|[a-z]+\.onnx)")


def code_digest() -> str:
    """SHA-256 (hex) of tfue's own source files: an entry made by other code (a newer
    or older tfue, even at the same version number) is never read."""
    if not _CODE:
        root = os.path.dirname(os.path.abspath(__file__))
        h = hashlib.sha256()
        for folder, dirs, files in sorted(os.walk(root)):
            dirs.sort()
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
        _CODE.append(h.hexdigest())
    return _CODE[0]


def make_key(parts: dict) -> str:
    """A cache key (hex) for a JSON-able dict of everything an entry depends on."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class DiskCache:
    """Entries ``<folder>/<key>.json`` with graph files ``<key>.<name>.onnx``.

    Args:
        folder: where entries live (default :func:`cache_dir`).
        enabled: False turns every lookup into a miss and every store into a no-op
            (``--no-cache``).
    """

    def __init__(self, folder: str | None = None, enabled: bool = True):
        self.enabled = enabled
        self.folder = folder if folder is not None else (cache_dir() if enabled else None)
        self.problem = None  # why the last store failed (None when it did not)

    def _path(self, key: str, suffix: str) -> str:
        return os.path.join(self.folder, f"{key}{suffix}")

    def load(self, key: str, required: dict) -> tuple | None:
        """The entry for ``key`` as ``(fields, graphs)``, or None on a miss.

        Args:
            key: from :func:`make_key`.
            required: field name -> type the entry must hold (anything else: a miss).

        Returns:
            ``fields`` (the stored dict) and ``graphs`` (name -> serialized ONNX
            bytes whose SHA-256 matched the stored one).
        """
        if not self.enabled:
            return None
        try:
            entry = self._sealed(key)
            if entry is None:
                return None
            fields = entry["fields"]
            if any(not isinstance(fields.get(k), t) for k, t in required.items()):
                return None
            graphs = {}
            for name, digest in (entry.get("graphs") or {}).items():
                if not os.path.isfile(self._path(key, f".{name}.onnx")):
                    return None
                with open(self._path(key, f".{name}.onnx"), "rb") as f:
                    data = f.read()
                if hashlib.sha256(data).hexdigest() != digest:
                    return None
                graphs[name] = data
            try:  # used now: the last to be removed when the folder is trimmed
                os.utime(self._path(key, ".json"))
            except OSError:
                pass
            return fields, graphs
        except (OSError, ValueError, TypeError, AttributeError):
            return None

    def store(self, key: str, fields: dict, graphs: dict | None = None) -> bool:
        """Write the entry for ``key`` (graph files first, the JSON last, each
        atomically), replacing any older one. Returns False (and sets ``problem``)
        when it could not be written; never raises for that."""
        if not self.enabled:
            return False
        from .files import atomic_write_bytes

        graphs = {k: v for k, v in (graphs or {}).items() if v is not None}
        if sum(len(v) for v in graphs.values()) > MAX_GRAPH_BYTES:
            graphs = {}
        try:
            os.makedirs(self.folder, exist_ok=True)
            for name, data in graphs.items():
                atomic_write_bytes(self._path(key, f".{name}.onnx"), data)
        except OSError as exc:
            self.problem = f"{type(exc).__name__}: {exc}"
            return False
        written = self._write(key, fields, {k: hashlib.sha256(v).hexdigest()
                                            for k, v in graphs.items()})
        if written:
            self.trim(keep=key)
        return written

    def trim(self, limit: int | None = None, keep: str | None = None) -> int:
        """Remove the least recently used entries (by their JSON's time) until the
        folder holds at most ``limit`` bytes (default ``MAX_CACHE_BYTES``); entry
        ``keep`` stays. Returns the bytes removed; never raises."""
        limit = MAX_CACHE_BYTES if limit is None else limit
        try:
            files = {}
            for name in os.listdir(self.folder):
                path = os.path.join(self.folder, name)
                match = _ENTRY_FILE.fullmatch(name)
                if match and os.path.isfile(path) and not os.path.islink(path):
                    files.setdefault(match.group(1), []).append(path)
            # Only tfue's own entries go: a key whose JSON is a tfue entry naming that
            # key. Anything else is left alone, whatever its name.
            owned = {}
            for k, paths in files.items():
                kind = self._owned(k, paths)
                if kind is not None:
                    owned[k] = (kind, paths)
            total = sum(os.path.getsize(p) for _, paths in owned.values() for p in paths)
            if total <= limit:
                return 0
            removed = 0
            for k in sorted((k for k in owned if k != keep), key=lambda k: owned[k][0]):
                if total - removed <= limit:
                    break
                for p in owned[k][1]:
                    try:
                        size = os.path.getsize(p)
                        os.remove(p)
                        removed += size
                    except OSError:
                        pass
            return removed
        except OSError:
            return 0

    def _entry(self, key: str) -> dict | None:
        """The JSON of entry ``key`` when it is a tfue entry (of any format) naming that
        key; None when it is missing, not a regular file (a FIFO would block), does not
        parse, or is someone else's."""
        path = self._path(key, ".json")
        try:
            if not os.path.isfile(path):
                return None
            with open(path, encoding="utf-8") as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or \
                not isinstance(entry.get("format"), int):
            return None
        return entry

    def _sealed(self, key: str) -> dict | None:
        """The JSON of entry ``key`` when it is of this FORMAT, matches its seal and
        holds a dict of fields; else None."""
        entry = self._entry(key)
        if entry is None or entry["format"] != FORMAT or entry.get("seal") != _seal(entry) \
                or not isinstance(entry.get("fields"), dict):
            return None
        return entry

    def _owned(self, key: str, paths: list):
        """When entry ``key`` was last used (its JSON's time), or None when its files
        are not a whole tfue entry."""
        json_path = self._path(key, ".json")
        if json_path not in paths:
            # Graph files without their JSON: a store under way (it writes the graphs
            # first), the leftover of one that failed (the next store of that key
            # overwrites it), or not tfue's at all: left alone.
            return None
        return None if self._entry(key) is None else os.path.getmtime(json_path)

    def update(self, key: str, **fields) -> bool:
        """Add ``fields`` to the entry for ``key`` (its graph files and their recorded
        hashes kept as they are: ``load`` checks them); False when there is no valid
        entry (another process may have trimmed it) or it could not be written."""
        if not self.enabled:
            return False
        entry = self._sealed(key)
        if entry is None:
            return False
        return self._write(key, {**entry["fields"], **fields}, dict(entry.get("graphs") or {}))

    def _write(self, key: str, fields: dict, digests: dict) -> bool:
        from .files import atomic_write_bytes

        try:
            entry = {"format": FORMAT, "key": key, "fields": fields, "graphs": digests}
            entry = json.loads(json.dumps(entry, default=_jsonable))  # as it will be read
            entry["seal"] = _seal(entry)
            text = json.dumps(entry, indent=1).encode()
            atomic_write_bytes(self._path(key, ".json"), text)
            self.problem = None
            return True
        except (OSError, TypeError, ValueError) as exc:
            self.problem = f"{type(exc).__name__}: {exc}"
            return False


def _seal(entry: dict) -> str:
    """SHA-256 of an entry's content (format, key, fields, graph digests) in canonical
    JSON: an entry changed by hand or by a fault on disk no longer matches its seal.
    (Not a protection against someone who recomputes it: the cache is the user's.)"""
    content = {k: entry.get(k) for k in ("format", "key", "fields", "graphs")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _jsonable(value):
    import numpy as np

    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def plausible_axes(feeds, shapes: dict, axes: dict) -> bool:
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


def disk_cache(cache):
    """A cache.DiskCache from ``cache``: True (the default folder), False/None (off),
    a folder path, or a DiskCache.

    Raises:
        ArgumentError (a ValueError): any other value.
    """
    from .cache import DiskCache

    if isinstance(cache, DiskCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return DiskCache(os.fspath(cache))
    if cache is True:
        return DiskCache()
    if cache is False or cache is None:
        return DiskCache(enabled=False)
    raise ArgumentError(f"cache must be True, False or a folder, got {cache!r}",
                    "e.g. cache=False to measure and verify afresh")


class CachedSelection:
    """What an Estimator keeps in and reads from the disk cache (mixed into Estimator):
    the verified graph of an input signature, its locations' shapes and batch axes, the
    output axes and the autotune plan; an entry that does not hold up is a miss."""

    def _start_cache(self, cache) -> None:
        """``cache``: True (the default folder), False/None (off), a folder or a DiskCache."""
        self.cache = disk_cache(cache)
        self._axes_known = {}  # input signature -> axes.SpatialAxes read from the cache
        self._cache_keys = {}  # input signature -> disk cache key
        self._from_disk = set()  # input signatures whose graph came from the disk cache
        self._skip_disk = set()  # input signatures whose disk entry failed: not read again

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

        from .names import VERSION as __version__

        return make_key({
            "format": FORMAT, "tfue": __version__, "code": code_digest(),
            "onnxruntime": onnxruntime.__version__,
            "cpus": os.cpu_count(), "model": self._digest, "spec": self.spec.describe(),
            "location": self.location, "signature": repr(signature(feeds)),
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
            if not plausible_axes(feeds, shapes, axes):
                return None
        except Exception:  # anything amiss in an entry makes it a miss, never an error
            return None
        if provider != fields["provider"]:
            return None
        return self._built_from_cache(signature(feeds), ug, sess, provider, fields, spatial,
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
        plan = cached_plan(tuning, self.threads, self.samples) if self.chunk is None else None
        if plan is not None:
            self._tuned[key] = plan
        self.notes.append(f"strategy {ug.strategy}: verified by an earlier run on this model "
                          f"and input shape (max |error| at level 0 = "
                          f"{float(fields.get('max_error', 0)):.2g}; cache "
                          f"{self.cache.folder}; --no-cache to verify again)")
        return ug, sess, provider

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
