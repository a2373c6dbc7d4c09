"""Dataset scale on Ray Data: ``tfue run|rank|evaluate --engine ray`` and ``score_dataset``.

Ray Data reads the list of inputs, and ``map_batches`` hands them to a pool of actors,
each holding ONE :class:`~tfue_onnx.runner.Estimator` (unpickled from the one the
caller built, so the spec, N and seed are the caller's): the rewrite and verification
happen once per actor and input shape (and come from tfue's disk cache when the driver
or another actor on the machine already verified that graph). A result depends only on
the input, the spec, N and the seed (runner.py), so every input's result equals the
local engine's.

Faults: an input that cannot be read or run becomes a row with its one-line reason
(``error``), and the job goes on; the job's summary lists them under ``failures`` and
the command exits with :data:`EXIT_INPUTS_FAILED`. Resuming: an input whose
``NAME.npz`` exists is skipped (``status`` "resumed") unless ``force``. Every input's
files are written into ``OUT/.tfue-ray/NAME/`` and then renamed into ``OUT``, the
``.npz`` last, so an existing ``NAME.npz`` means every file of that input is whole.

Ray is an optional extra (``pip install '.[ray]'`` in tfue's source folder), imported
only here and only when used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import time

import numpy as np

from .errors import ArgumentError, TfueError

EXIT_INPUTS_FAILED = 4  # some inputs failed (listed in summary.json["failures"])
INSTALL = ("pip install 'ray[data]>=2.51' (from tfue's source folder: pip install "
           "'.[ray]')")
STAGE = ".tfue-ray"  # per-input staging folders inside OUT, renamed into place
ROW_FIELDS = ("input", "status", "mean_variance", "score", "files", "error", "item",
              "sampling_s", "writing_s", "result")


def import_ray():
    """The ``ray`` module with Ray Data loaded.

    Raises:
        TfueError: Ray (``ray[data]``) is not installed; the hint says how to install it.
    """
    try:
        import ray
        import ray.data  # noqa: F401  (pyarrow, pandas: the [data] extra)
    except ImportError as exc:
        raise TfueError(f"--engine ray needs Ray Data, which is not installed ({exc})",
                        INSTALL) from None
    return ray


@dataclasses.dataclass(frozen=True)
class RaySettings:
    """Where and how wide a Ray job runs (``--ray-*`` options).

    Attributes:
        address: None starts a local Ray for the job (shut down after it); ``auto``
            joins the cluster this machine belongs to; else a Ray address
            (``ray://head:10001``, ``host:6379``). An already connected Ray is used
            as it is.
        actors: the actor pool's size, each actor holding one Estimator (None: as
            many as the cluster's CPUs allow at ``cpus`` each).
        cpus: CPUs each actor reserves (also its onnxruntime thread count unless
            ``--threads`` is given).
        gpus: GPUs each actor reserves (fractions share a GPU); give ``--provider cuda``
            so each actor's sessions run on its GPU.
        progress: Ray Data's own progress bars on stderr.
        threads: each actor's onnxruntime intra-op threads (None: the estimator's own),
            checked against the actor's machine, not this one.
    """

    address: str | None = None
    actors: int | None = None
    cpus: float = 1.0
    gpus: float = 0.0
    progress: bool = True
    threads: int | None = None

    def __post_init__(self):
        if self.actors is not None and self.actors < 1:
            raise ArgumentError(f"--ray-actors must be >= 1, got {self.actors}",
                                "e.g. --ray-actors 4")
        if not self.cpus > 0:
            raise ArgumentError(f"--ray-cpus must be > 0, got {self.cpus}",
                                "e.g. --ray-cpus 1")
        if not self.gpus >= 0:
            raise ArgumentError(f"--ray-gpus must be >= 0, got {self.gpus}",
                                "e.g. --ray-gpus 1, or 0.5 to put two actors on a GPU")


def settings_from(values: dict, quiet: bool = False) -> RaySettings | None:
    """The RaySettings of the CLI's engine options (``engine``, ``ray_address``,
    ``ray_actors``, ``ray_cpus``, ``ray_gpus``); None for ``--engine local``.

    Raises:
        ArgumentError: a ``--ray-*`` option without ``--engine ray``, or a bad value.
        TfueError: ``--engine ray`` without Ray installed; a ``--ray-address`` where
            nothing listens.
    """
    given = [f"--{k.replace('_', '-')}" for k in ("ray_address", "ray_actors")
             if values.get(k) is not None]
    given += [f"--{k.replace('_', '-')}" for k, default in (("ray_cpus", 1.0), ("ray_gpus", 0.0))
              if values.get(k, default) != default]
    if values.get("engine", "local") != "ray":
        if given:
            raise ArgumentError(f"{', '.join(given)} configure --engine ray",
                                "add --engine ray, or drop them")
        return None
    settings = RaySettings(values.get("ray_address"), values.get("ray_actors"),
                           float(values.get("ray_cpus", 1.0)),
                           float(values.get("ray_gpus", 0.0)), progress=not quiet)
    import_ray()
    _check_reachable(settings.address)
    return settings


def runtime_for(runtime: dict, settings: RaySettings) -> tuple:
    """(Estimator keyword arguments for the estimator built here, settings): the
    onnxruntime threads (``--threads``, else the CPUs an actor reserves, so actors
    sharing a machine do not oversubscribe it) move into ``settings.threads``, set and
    checked on each actor against its own machine's cores, not this one's."""
    threads = runtime.get("threads") or max(1, int(settings.cpus))
    return {**runtime, "threads": None}, dataclasses.replace(settings, threads=threads)


def refuse_for_ray(**given) -> None:
    """Refuse the options the Ray engine does not take (``name=value``: refused when
    truthy): ``--levels``, ``--shared-scale`` (one colour range needs every map at once).

    Raises:
        ArgumentError: naming the first such option.
    """
    for name, value in given.items():
        if value:
            option = "--" + name.replace("_", "-")
            raise ArgumentError(f"{option} is not available with --engine ray",
                                f"drop {option}, or use --engine local")


class connected:
    """Context manager: Ray connected for a job (``settings.address``), Ray Data's progress
    bars set, and Ray shut down after the job when this started it."""

    def __init__(self, settings: RaySettings):
        self.settings, self.started = settings, False

    def __enter__(self):
        ray = import_ray()
        if not self.settings.progress:  # --quiet: Ray's own lines too, errors aside
            import logging

            for name in ("ray", "ray.data"):
                logging.getLogger(name).setLevel(logging.ERROR)
        if not ray.is_initialized():
            try:  # "local": a fresh Ray even where `ray start` runs one on this machine
                ray.init(address=self.settings.address or "local", include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
            except ConnectionError as exc:
                raise TfueError(f"cannot join Ray at {self.settings.address!r}: "
                                f"{str(exc).splitlines()[0]}",
                                "start the cluster (ray start --head), or drop "
                                "--ray-address for a local Ray") from None
            self.started = True
        ray.data.DataContext.get_current().enable_progress_bars = self.settings.progress
        try:
            _check_resources(ray, self.settings)
        except BaseException:
            self.__exit__()
            raise
        return ray

    def __exit__(self, *exc):
        if self.started:
            import ray

            ray.shutdown()
        return False


def _check_resources(ray, settings: RaySettings) -> None:
    """Refuse a job whose actors the cluster can never place (Ray would wait for the
    resources for ever): CPUs or GPUs per actor beyond what any node has.

    Raises:
        TfueError: naming the resource, what an actor asks and what the cluster has.
    """
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for key, option, wanted in (("CPU", "--ray-cpus", settings.cpus),
                                ("GPU", "--ray-gpus", settings.gpus),
                                ("CPU", "--threads", settings.threads or 0)):
        most = max((n.get(key, 0.0) for n in nodes), default=0.0)
        if wanted > most:
            raise TfueError(f"{option} {wanted:g} asks more {key}s per actor than any node "
                            f"of the Ray cluster has ({most:g})",
                            f"give {option} {most:g} or less" if most else
                            f"drop {option} (the cluster has no {key})")


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Refuse at once a Ray address (``host:port`` or ``ray://host:port``) that takes no
    connection, where Ray itself would retry for minutes; None and ``auto`` pass.

    Raises:
        TfueError: nothing listens there.
    """
    import socket

    if not address or address in ("auto", "local"):
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ArgumentError(f"--ray-address must be auto, HOST:PORT or ray://HOST:PORT, got "
                            f"{address!r}", "e.g. --ray-address auto, or head-node:6379")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise TfueError(f"cannot reach Ray at {address!r} ({exc})",
                        "start the cluster there (ray start --head), or use --ray-address "
                        "auto on a cluster node, or drop --ray-address for a local Ray") from None


def portable(estimator) -> bytes:
    """``estimator`` pickled for the actors (each unpickles its own copy).

    Raises:
        TfueError: the estimator has already run (its onnxruntime sessions cannot be
            pickled): pass one that has not run yet.
    """
    try:
        return pickle.dumps(estimator)
    except TypeError as exc:
        raise TfueError(f"this Estimator cannot be sent to Ray actors ({exc})",
                        "pass an Estimator that has not run yet: its sessions stay in the "
                        "process that made them") from None


def _refuse_other_run(estimator, files, out_dir, options, calibration, weights=None) -> None:
    """Before any work: refuse an output folder whose summary.json or first existing
    NAME.npz (of ``files``) is another run's (``check_resumable``), as the local engine
    refuses to write over results without --force.

    Raises:
        TfueError: naming the file and the differences; the hint offers --force.
    """
    from .calibration import differences, run_identity

    probe = {"identity": run_identity(estimator.describe()), "calibration": calibration,
             "options": options, "weights": weights}
    found = next((f for f in files if os.path.exists(_npz(out_dir, f))), None)
    if found is not None:
        check_resumable(_npz(out_dir, found), wanted_for(probe, os.fspath(found)),
                        os.fspath(found))
    summary = os.path.join(out_dir, "summary.json")
    if os.path.exists(summary):
        try:
            with open(summary) as f:
                meta = json.load(f)
            meta["at"] = meta.get("location")
            diffs = differences(run_identity(meta), probe["identity"])
        except Exception as exc:  # noqa: BLE001 (not a summary tfue wrote)
            diffs = [f"unreadable ({type(exc).__name__})"]
        if diffs:
            raise TfueError(f"'{summary}' is the summary of another run: " + "; ".join(diffs),
                            "pass --force to write over it, or choose another --out folder")


def _npz(out_dir: str, path: str) -> str:
    return os.path.join(out_dir, _stem(path) + ".npz")


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _reason(exc: BaseException) -> str:
    """One line saying why an input failed."""
    if isinstance(exc, TfueError):
        return exc.cli_text()
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _row(path: str, status: str, **fields) -> dict:
    """One row of ROW_FIELDS; a field given as None keeps its default (NaN, "", ...)."""
    row = {"input": path, "status": status, "mean_variance": float("nan"),
           "score": float("nan"), "files": "[]", "error": "", "item": "{}",
           "sampling_s": 0.0, "writing_s": 0.0, "result": b""}
    row.update({k: v for k, v in fields.items() if v is not None})
    return row


class InputWorker:
    """The callable class of ``map_batches``: one Estimator per actor.

    Args:
        blob: the Estimator, pickled (``portable``).
        job: ``{"mode": "write" | "score" | "result", "cwd", ...}``; write: ``out_dir``,
            ``options`` (io.ImageOptions), ``force``, ``compress``, ``overlay``,
            ``pictures``, ``weights``; score: ``options``, ``by`` (rank.image_score);
            result: ``pairs`` (evaluate.Pair list; the rows' ``input`` is an index).
    """

    def __init__(self, blob: bytes, job: dict):
        from .autotune import check_threads

        self.estimator = pickle.loads(blob)
        self.job = job
        if job.get("threads"):  # checked against this actor's machine
            self.estimator.threads = check_threads(job["threads"])
        if os.path.isdir(job.get("cwd") or ""):  # relative paths as the caller reads them
            os.chdir(job["cwd"])

    def __call__(self, batch: dict) -> dict:
        """``batch["input"]`` (paths) -> one row per input (ROW_FIELDS, lists)."""
        rows = [self.one(str(path)) for path in batch["input"]]
        out = {k: [r[k] for r in rows] for k in ROW_FIELDS}
        out["result"] = np.array(out["result"], dtype=object)  # bytes kept whole
        return out

    def one(self, path: str) -> dict:
        """One input's row; any error becomes the row's one-line ``error``."""
        try:
            if self.job["mode"] == "score":
                return self._score(path)
            if self.job["mode"] == "result":
                return self._result(path)
            return self._write(path)
        except Exception as exc:  # recorded, and the job goes on
            return _row(path, "failed", error=_reason(exc))

    def _feeds(self, path: str) -> dict:
        from .io import load_input

        return self.estimator.check_feeds(load_input(path, self.estimator.info.inputs,
                                                     self.job["options"]))

    def _score(self, path: str) -> dict:
        from .rank import image_score

        t0 = time.perf_counter()
        score = image_score(self.estimator(self._feeds(path)), self.job["by"])
        return _row(path, "done", score=score, sampling_s=time.perf_counter() - t0)

    def _result(self, key: str) -> dict:
        """The pickled Result of pair number ``key`` (``evaluate_pairs``)."""
        t0 = time.perf_counter()
        feeds, _ = self.job["pairs"][int(key)].load()
        result = self.estimator(self.estimator.check_feeds(feeds))
        return _row(key, "done", result=pickle.dumps(result),
                    sampling_s=time.perf_counter() - t0)

    def _write(self, path: str) -> dict:
        job, out_dir = self.job, self.job["out_dir"]
        done = os.path.join(out_dir, _stem(path) + ".npz")
        if os.path.exists(done) and not job["force"]:
            found = check_resumable(done, wanted_for(job, path), path)
            if _complete(found, path, job):
                return _resumed_row(found, path, out_dir)
        stage = _fresh_stage(out_dir, path)
        run = _stage_run(self.estimator, stage, job)
        try:
            run.one(path, self._feeds(path), None)
        except BaseException:
            import shutil

            shutil.rmtree(stage, ignore_errors=True)  # nothing of a failed input stays
            raise
        item = run.items[-1]
        item["files"] = _move_into(item["files"], out_dir)
        _unstage(stage)
        extra = {"warnings": run.warnings, "notes": run.notes, "metadata": run.meta}
        from .files import plain_json

        return _row(path, "done", mean_variance=item.get("mean_variance"),
                    files=json.dumps(item["files"]),
                    item=json.dumps(plain_json({**item, **extra}), default=str),
                    sampling_s=run.sampling, writing_s=run.writing)


def _stage_run(estimator, stage: str, job: dict):
    """report's per-input writer (``report._Run``, the local engine's own) writing into
    ``stage``."""
    from .report import Pictures, _Run

    return _Run(estimator, stage, lambda line: None,
                Pictures(stage, False, job["overlay"], job["pictures"]), job["compress"],
                job["weights"], job.get("calibration"), job["options"])


def wanted_for(job: dict, path: str) -> dict:
    """The identity a result of ``path`` must have to be resumed in this job: the run's,
    its calibration's stamp, and for an image the image options."""
    from .io import IMAGE_EXTS
    from .report import plain_fields

    wanted = dict(job["identity"])
    cal = job.get("calibration")
    wanted["calibration"] = None if cal is None else cal.stamp()
    if path.lower().endswith(IMAGE_EXTS):
        wanted["image_options"] = plain_fields(job["options"])
    if job.get("weights") is not None:
        wanted["loss_weights"] = plain_fields(job["weights"])
    return wanted


def check_resumable(npz: str, wanted: dict, path: str | None = None):
    """The result in ``npz`` (report.read_result) when it is a whole result of the run
    ``wanted`` describes (``run_identity`` plus ``wanted_for``'s calibration and image
    options) for the input ``path``.

    Raises:
        TfueError: the file is no tfue result, lacks its uncertainty map, holds another
            input's result, or one of another run (the differences named); the hint
            offers --force.
    """
    from .calibration import differences, run_identity
    from .report import read_result

    try:
        found = read_result(npz)
        stats = found.outputs[found.primary]
        if stats.uncertainty is None or stats.uncertainty.size == 0:
            raise ValueError("no uncertainty map")
    except Exception as exc:  # noqa: BLE001 (any unreadable or partial file)
        reason = exc.message if isinstance(exc, TfueError) else f"{type(exc).__name__}: {exc}"
        raise TfueError(f"'{npz}' is not a whole result tfue wrote ({reason})",
                        "remove it, or pass --force to run its input again") from None
    recorded = found.metadata.get("input_realpath") or found.metadata.get("input")
    if path is not None and recorded is not None and \
            os.path.realpath(recorded) != os.path.realpath(path):
        raise TfueError(f"'{npz}' holds the result of another input ('{recorded}')",
                        "pass --force to run this input again, or choose another --out folder")
    have = {**run_identity(found.metadata), **{k: found.metadata.get(k) for k in (
        "calibration", "image_options", "loss_weights") if k in wanted}}
    diffs = differences(have, wanted)
    if diffs:
        raise TfueError(f"'{npz}' holds a result of another run: " + "; ".join(diffs),
                        "pass --force to run it again with these settings, or choose "
                        "another --out folder")
    return found


def _complete(found, path: str, job: dict) -> bool:
    """Whether every file this job writes for ``path`` is there beside its NAME.npz (the
    weights, the picture where the output has one, its overlay, the samples of
    --save-samples); else the input runs again (the same run: the same result)."""
    from .report import picture_of

    base = os.path.join(job["out_dir"], _stem(path))
    need = [base + ".weights.npy"] if job.get("weights") is not None else []
    if job["pictures"] and picture_of(found, _stem(path)) is not None:
        kind = "entropy" if found.variance is None else "variance"
        need.append(f"{base}.{kind}.png")
        if job["overlay"]:
            need.append(base + ".overlay.png")
    if job.get("keep_samples") and found.samples is None:  # --save-samples
        return False
    return all(os.path.exists(f) for f in need)


def _resumed_row(found, path: str, out_dir: str) -> dict:
    """The row of a resumed input: its files and means, as if it had just run."""
    from .files import plain_json
    from .report import _means

    stats = found.outputs[found.primary]
    item = {"input": path, "files": _existing(out_dir, path), **_means(stats), "resumed": True}
    return _row(path, "resumed", files=json.dumps(item["files"]),
                mean_variance=item.get("mean_variance"),
                item=json.dumps(plain_json(item), default=str))


def _fresh_stage(out_dir: str, path: str) -> str:
    """``OUT/.tfue-ray/NAME``, emptied of what a stopped job left there."""
    import shutil

    stage = os.path.join(out_dir, STAGE, _stem(path))
    if os.path.isdir(stage):
        shutil.rmtree(stage)
    for _ in range(3):  # another actor may remove the (empty) parent in between
        try:
            os.makedirs(stage)
            return stage
        except FileNotFoundError:
            continue
    os.makedirs(stage)
    return stage


def _unstage(stage: str) -> None:
    """Remove an input's emptied staging folder, and OUT/.tfue-ray when it is empty."""
    os.rmdir(stage)
    try:
        os.rmdir(os.path.dirname(stage))
    except OSError:  # other inputs are being written there
        pass


def _move_into(staged: list, out_dir: str) -> list:
    """Rename the staged files into ``out_dir``, the ``.npz`` (the first) last; return
    their new paths in the same order."""
    final = [os.path.join(out_dir, os.path.basename(f)) for f in staged]
    for src, dst in list(zip(staged, final))[1:] + list(zip(staged, final))[:1]:
        os.replace(src, dst)
    return final


def _existing(out_dir: str, path: str) -> list:
    """The result files of ``path`` already in ``out_dir`` (``report.planned_files``)."""
    from .report import planned_files

    return [f for f in planned_files(out_dir, [path])[1:] if os.path.exists(f)]


def _inputs(data) -> list:
    """The input paths (str) of ``data``: a Dataset (its ``input`` or ``path`` column),
    a ``.parquet`` file or folder (its ``path`` column), or paths (files and folders,
    expanded as ``tfue run`` does: io.collect_inputs).

    The paths are read here, before the actors start: a pool holding every CPU would
    leave none to the tasks that read them (the job would wait forever)."""
    ray = import_ray()
    if isinstance(data, ray.data.Dataset):
        columns = data.columns() or []
        if "input" not in columns and "path" not in columns:
            raise ArgumentError(f"the dataset has no 'input' or 'path' column (it has "
                                f"{', '.join(columns) or 'none'})",
                                "give a column of input file paths")
        key = "input" if "input" in columns else "path"
        return [str(r[key]) for r in data.select_columns([key]).iter_rows()]
    paths = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if len(paths) == 1 and os.fspath(paths[0]).endswith(".parquet"):
        return _inputs(ray.data.read_parquet(os.fspath(paths[0])))
    from .io import collect_inputs

    return collect_inputs(paths)


def input_files(inputs, unique_stems: bool = True) -> list:
    """The CLI's INPUTS for ``--engine ray``: one ``.parquet`` file or folder of them (its
    ``input`` or ``path`` column of file paths), else files and folders as ``tfue run``
    takes them (io.collect_inputs).

    Raises:
        TfueError: as io.collect_inputs; a Parquet dataset without such a column.
    """
    from .io import collect_inputs

    inputs = [os.fspath(p) for p in inputs]
    if len(inputs) == 1 and inputs[0].rstrip("/").endswith(".parquet"):
        return _unique_stems(_inputs(inputs[0])) if unique_stems else _inputs(inputs[0])
    return collect_inputs(inputs, unique_stems)


def _unique_stems(paths: list) -> list:
    """``paths``, refused when two share a name stem (io.check_unique_stems)."""
    from .io import check_unique_stems

    return check_unique_stems(paths)


MAX_BLOCK = 32  # inputs per block at most (a block is one Ray task on one actor)


def _blocks(keys: list, actors: int):
    """A Dataset of ``{"input": key}`` rows in blocks of about len / (4 x actors) inputs,
    1 to MAX_BLOCK: a block goes to one actor whole, so several per actor keep every
    actor busy to the end, while each block spreads Ray's cost per task (tens of ms,
    BENCHMARKS.md) over its inputs."""
    import math

    import ray

    per_block = min(MAX_BLOCK, max(1, len(keys) // (4 * actors)))
    return ray.data.from_items([{"input": k} for k in keys],
                               override_num_blocks=max(1, math.ceil(len(keys) / per_block)))


def _actors(settings: RaySettings) -> int:
    """The pool size: ``settings.actors``, else the cluster's CPUs at ``cpus`` each."""
    if settings.actors is not None:
        return settings.actors
    import ray

    cpus = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else os.cpu_count()
    return max(1, int(cpus // settings.cpus))


def map_inputs(estimator, keys: list, job: dict, settings: RaySettings | None = None):
    """``keys`` (input paths, or pair numbers for evaluate) mapped by a pool of
    ``InputWorker`` actors (never more actors than keys); a lazy Ray Dataset of
    ROW_FIELDS rows."""
    ray = import_ray()
    settings = settings or RaySettings()
    blob = portable(estimator)
    actors = min(_actors(settings), max(1, len(keys)))
    # One input per batch: each row comes back (and its files are in place) as soon as
    # its input is done.
    return _blocks(keys, actors).map_batches(
        InputWorker, batch_size=1, batch_format="numpy",
        fn_constructor_args=(blob, {**job, "threads": settings.threads}),
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=settings.cpus, num_gpus=settings.gpus or None)


def rows_of(ds):
    """The rows of a job's dataset as they come; a failure of the job itself (an actor
    that cannot start, a lost node: not an input's fault, which is a row) becomes a
    TfueError with Ray's first line.

    Raises:
        TfueError: the job failed.
    """
    import ray

    try:
        yield from ds.iter_rows()
    except ray.exceptions.RayError as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        raise TfueError(f"the Ray job failed ({type(exc).__name__}: {first.strip()})",
                        "Ray's logs (/tmp/ray/session_latest/logs) say more; results written "
                        "so far stay and a rerun resumes") from None


def score_dataset(estimator, data, out_dir, options=None, force: bool = False,
                  compress: bool = False, overlay: bool = False, pictures: bool = True,
                  weights=None, calibration=None, settings: RaySettings | None = None):
    """Write ``tfue run``'s per-input files for every input of ``data`` on Ray Data.

    Ray must be connected already (``ray.init``; Ray Data starts a local one when it is
    not). The paths of ``data`` are read at once (before the actors take the CPUs);
    no input runs until the returned dataset is consumed (``take_all``, ``iter_rows``,
    ``write_parquet``...). ``summary.json`` is not written (``run_files`` writes it).

    Args:
        estimator: a runner.Estimator that has not run yet (each actor unpickles its own
            copy: same spec, N and seed, so the same results as running it here).
        data: a ``ray.data.Dataset`` with an ``input`` (or ``path``) column of file paths,
            a ``.parquet`` file or folder with a ``path`` column, or paths (files and
            folders of images, .npy, .npz, as ``tfue run`` takes them). Relative paths
            are read from this process's working folder (on a cluster: a shared file
            system mounted at the same place on every node).
        out_dir: the folder for NAME.npz, NAME.variance.png ... (made when missing).
        options: io.ImageOptions for reading images (None: the defaults).
        force: run and overwrite inputs whose NAME.npz exists (default: skip them).
        compress, overlay, pictures, weights, calibration: as ``report.run_inputs``.
        settings: actors, CPUs and GPUs per actor (RaySettings; ``address`` is not used
            here).

    Returns:
        ray.data.Dataset with one row per input: ``input`` (str, the path as given),
        ``status`` ("done", "resumed": its NAME.npz existed, or "failed"),
        ``mean_variance`` (float, squared output units; NaN when not computed),
        ``files`` (JSON list of the paths written, or found when resumed), ``error``
        (one line, "" unless failed), ``item`` (JSON: the input's summary.json entry,
        with its ``warnings``, ``notes`` and ``metadata``), ``sampling_s``,
        ``writing_s`` (seconds), ``score`` (NaN here), ``result`` (empty bytes here:
        ``evaluate_pairs`` sends results back in it). An input whose NAME.npz exists is
        resumed only when it is a result of this run (``check_resumable``; else the row
        fails, naming the differences).

    Raises:
        TfueError: Ray is not installed; the estimator has already run; the folder
            cannot be written; a path is no input; two inputs share a name stem.
    """
    from .calibration import run_identity
    from .files import prepare_out_dir
    from .io import ImageOptions

    prepare_out_dir(out_dir)
    job = {"mode": "write", "out_dir": os.fspath(out_dir), "options": options or ImageOptions(),
           "force": force, "compress": compress, "overlay": overlay, "pictures": pictures,
           "weights": weights, "calibration": calibration, "cwd": os.getcwd(),
           "identity": run_identity(estimator.describe()),
           "keep_samples": bool(getattr(estimator, "keep_samples", False))}
    return map_inputs(estimator, _unique_stems(_inputs(data)), job, settings)


def run_files(estimator, files, out_dir, options, settings: RaySettings, force: bool = False,
              started: float | None = None, shared_scale: bool = False, **drawing) -> dict:
    """``tfue run --engine ray``: ``score_dataset`` over ``files`` on the Ray of
    ``settings``, then ``summary.json`` as the local engine writes it (report's own
    summary), plus ``engine`` (what ran where, counts) and ``failures``.

    Args:
        estimator: a runner.Estimator that has not run yet.
        files: input paths (io.collect_inputs).
        out_dir, options, force: as ``score_dataset``.
        settings: RaySettings.
        started: ``time.perf_counter()`` at the command's start (default: now).
        shared_scale: must be False (one colour range needs every map at once).
        drawing: ``compress``, ``overlay``, ``pictures``, ``weights``, ``calibration``
            (score_dataset).

    Returns:
        The summary (also in ``out_dir``/summary.json): ``inputs`` in the order of
        ``files``; ``failures`` ``[{"input", "reason"}]``; ``engine`` {"name": "ray",
        "actors", "cpus_per_actor", "gpus_per_actor", "done", "resumed", "failed"};
        ``timing`` (``sampling_s``, ``writing_s`` summed over actors; ``total_s`` wall).
    """
    refuse_for_ray(shared_scale=shared_scale)
    started = time.perf_counter() if started is None else started
    if not force:  # a folder of another run's results is refused before any work
        _refuse_other_run(estimator, files, out_dir, options, drawing.get("calibration"),
                          drawing.get("weights"))
    fresh = pickle.loads(portable(estimator))  # taken before anything runs it here
    _check_first(estimator, files, options)
    with connected(settings):
        startup = time.perf_counter() - started  # the estimator checked, Ray connected
        ds = score_dataset(fresh, list(files), out_dir, options, force,
                           settings=settings, **drawing)
        rows = {r["input"]: r for r in rows_of(ds)}
        actors = min(_actors(settings), len(rows))  # (map_inputs' pool)
    summary = _summary(estimator, [rows[os.fspath(f)] for f in files], out_dir, started,
                       startup, drawing.get("calibration"))
    summary["color_scale"] = ({"shared": False, "overlay": bool(drawing.get("overlay"))}
                              if drawing.get("pictures", True) else {"drawn": False})
    summary["engine"] = {"name": "ray", "actors": actors, "cpus_per_actor": settings.cpus,
                         "gpus_per_actor": settings.gpus,
                         **{s: sum(r["status"] == s for r in rows.values())
                            for s in ("done", "resumed", "failed")}}
    _remove_stage(out_dir)
    from .files import save_json

    save_json(os.path.join(out_dir, "summary.json"), summary)
    return summary


FIRST_TRIES = 16  # inputs the model takes, tried to prepare the estimator on


def _check_first(estimator, files, options) -> None:
    """Prepare ``estimator`` (build and verify its graph) on the first input it takes,
    so that a spec the model cannot run is refused before the job starts; inputs that
    cannot be read or do not fit the model are skipped (the job records them as
    failures), so the order of the files does not decide whether the job runs. When
    ``FIRST_TRIES`` inputs that fit all fail to prepare, the first error is raised."""
    from .io import load_input

    first, tries = None, 0
    for path in files:
        try:
            feeds = estimator.check_feeds(load_input(path, estimator.info.inputs, options))
        except TfueError:  # unreadable, or not the model's shape: the job lists it
            continue
        try:
            estimator.prepare(feeds)
            return
        except TfueError as exc:  # this input's fault, or the spec's: try the next
            first, tries = first or exc, tries + 1
            if tries >= FIRST_TRIES:
                break
    if first is not None:
        raise first


def _summary(estimator, rows: list, out_dir: str, started: float, startup: float,
             calibration=None) -> dict:
    """The run summary of ``rows`` by report's own ``_Run.summary`` (no picture is kept
    for a shared scale: that option is refused with Ray)."""
    from .report import Pictures, _Run, read_result

    run = _Run(estimator, out_dir, None, Pictures(out_dir, drawn=False), False,
               calibration=calibration)
    run.startup, failures = startup, []
    for r in rows:
        if r["status"] == "failed":
            failures.append({"input": r["input"], "reason": r["error"]})
            continue
        item = json.loads(r["item"]) if r["item"] else \
            {"input": r["input"], "files": json.loads(r["files"]), "resumed": True}
        run.warnings += item.pop("warnings", [])
        run.notes += item.pop("notes", [])
        run.meta = item.pop("metadata", None) or run.meta
        run.sampling += r["sampling_s"]
        run.writing += r["writing_s"]
        run.items.append(item)
    if run.meta is None:  # nothing ran: the settings of a resumed result, if any
        done = [i["files"][0] for i in run.items if i.get("files")]
        run.meta = read_result(done[0]).metadata if done else {}
    summary = run.summary(started)
    summary.pop("color_scale", None)  # no picture was drawn here
    summary["failures"] = failures
    return summary


def _remove_stage(out_dir: str) -> None:
    """Remove OUT/.tfue-ray when the job left nothing in it."""
    stage = os.path.join(out_dir, STAGE)
    try:
        for name in os.listdir(stage):
            os.rmdir(os.path.join(stage, name))  # empty ones only
        os.rmdir(stage)
    except OSError:
        pass


def exit_code(summary: dict) -> int:
    """The command's exit code for a Ray job: EXIT_INPUTS_FAILED (4) when inputs failed,
    3 when results hold NaN/Inf (as the local engine), else 0."""
    if summary.get("failures"):
        return EXIT_INPUTS_FAILED
    return 3 if summary.get("warnings") else 0


def totals(summary: dict) -> list:
    """tfue's lines at the end of a Ray job: each failure, then the counts and times."""
    e, t = summary["engine"], summary.get("timing", {})
    lines = [f"warning: {w}" for w in summary.get("warnings", [])]
    lines += [f"failed: {f['input']}: {f['reason']}" for f in summary.get("failures", [])]
    lines.append(f"ray: {e['done']} done, {e['resumed']} resumed (results already there), "
                 f"{e['failed']} failed, on {e['actors']} actor(s) x {e['cpus_per_actor']:g} "
                 f"CPU" + (f" x {e['gpus_per_actor']:g} GPU" if e["gpus_per_actor"] else "")
                 + f"; {t.get('total_s', 0):.2f} s in all, sampling {t.get('sampling_s', 0):.2f}"
                 f" s and writing {t.get('writing_s', 0):.2f} s summed over actors")
    return lines


def rank_files(estimator, files, by: str, options, out_dir, settings: RaySettings) -> tuple:
    """``tfue rank --engine ray``: every input not yet in ``out_dir``/scores.jsonl scored
    by actors (``rank.image_score``), each score appended to the log as it arrives (the
    local engine's log and settings line, so either engine resumes the other's), then
    ranked by ``rank.rank_inputs`` from the log.

    Args:
        estimator: a runner.Estimator that has not run yet.
        files: input paths; by: the score; options: io.ImageOptions.
        out_dir: the folder for scores.jsonl and ranking.csv.
        settings: RaySettings.

    Returns:
        (ranking, failures): ``rank_inputs``' ranking of the inputs that were scored, and
        ``[{"input", "reason"}]`` for those that failed (left out of the ranking).

    Raises:
        TfueError: ``by`` is unknown, or ``out_dir`` holds scores of other settings.
    """
    from .files import append_log, prepare_out_dir
    from .rank import check_score, logged_scores, rank_inputs, scored_by

    check_score(by)
    config = scored_by(estimator, by, options)  # the local engine's line: either resumes
    log = os.path.join(prepare_out_dir(out_dir), "scores.jsonl")
    scored = set(logged_scores(log, config))
    todo, failures = [os.fspath(f) for f in files if os.fspath(f) not in scored], []
    if todo:
        fresh = pickle.loads(portable(estimator))
        job = {"mode": "score", "options": options, "by": by, "cwd": os.getcwd()}
        with connected(settings):
            for r in rows_of(map_inputs(fresh, todo, job, settings)):
                if r["status"] == "failed":
                    failures.append({"input": r["input"], "reason": r["error"]})
                else:
                    append_log(log, config, {"input": r["input"], "score": r["score"]})
    listed = os.path.join(out_dir, "failures.json")
    if failures:  # beside ranking.csv, for scripts (stderr lists them too)
        from .files import save_json

        save_json(listed, failures)
    elif os.path.exists(listed):  # an earlier run's, no longer true
        os.remove(listed)
    failed = {f["input"] for f in failures}
    ok = [f for f in files if os.fspath(f) not in failed]
    return rank_inputs(estimator, ok, by, options, out_dir), failures


class Replay:
    """Stands in for an Estimator whose results were computed on Ray: each call returns
    the next of ``results`` (in the order the caller will ask for them); everything else
    (``pad``, ``notes``, ``info``, ``auto_choice``...) is the estimator's own."""

    def __init__(self, estimator, results: list):
        self._estimator, self._results = estimator, list(results)

    def __call__(self, feeds, level=None, progress=None):
        """The next result (``feeds`` were run on Ray already); ``level`` must be None."""
        if level is not None:
            raise ArgumentError("results computed on Ray hold one level", "drop level")
        return self._results.pop(0)

    def __getattr__(self, name):
        return getattr(self._estimator, name)


def evaluate_pairs(estimator, pairs: list, settings: RaySettings) -> tuple:
    """``tfue evaluate --engine ray``: every pair's input run by actors; the results come
    back through Ray's object store (no shared file system needed) and are held here
    until ``evaluate.evaluate`` has scored them.

    Args:
        estimator: a runner.Estimator that has not run yet.
        pairs: evaluate.Pair list (each is loaded on an actor, and again here for its
            target).
        settings: RaySettings.

    Returns:
        (replay, pairs_ok, failures): a ``Replay`` of the results for ``evaluate.evaluate``
        with ``pairs_ok`` (the pairs that ran, in order), and ``[{"input", "reason"}]``
        for the pairs that failed.
    """
    fresh = pickle.loads(portable(estimator))
    job = {"mode": "result", "pairs": list(pairs), "cwd": os.getcwd()}
    with connected(settings):
        ds = map_inputs(fresh, [str(k) for k in range(len(pairs))], job, settings)
        rows = {int(r["input"]): r for r in rows_of(ds)}
    failures = [{"input": pairs[k].source, "reason": rows[k]["error"]}
                for k in range(len(pairs)) if rows[k]["status"] == "failed"]
    ok = [k for k in range(len(pairs)) if rows[k]["status"] == "done"]
    return (Replay(estimator, [pickle.loads(rows[k]["result"]) for k in ok]),
            [pairs[k] for k in ok], failures)
