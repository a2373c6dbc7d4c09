"""Which inputs to label next: inputs ranked by their uncertainty (active learning).

Mi et al. (training-free uncertainty, §5) pick the most uncertain inputs for labelling.
Each input gets one score from its run (``image_score``): the mean, maximum or 95th
percentile of its variance map (squared output units), or, for class probabilities, the
mean predictive entropy or BALD mutual information (nats). Higher is more uncertain and
ranks first. Scores are appended to ``scores.jsonl`` as they are computed, so a stopped
ranking of a large folder resumes where it stopped.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .errors import ArgumentError, TfueError
from .names import RANK_SCORES


def check_score(by: str) -> str:
    """``by`` when it names a score (names.RANK_SCORES); ArgumentError (a ValueError)
    otherwise."""
    if by not in RANK_SCORES:
        raise ArgumentError(f"unknown score {by!r}", "use --by " + ", ".join(RANK_SCORES))
    return by


def image_score(result, by: str = "mean") -> float:
    """One input's uncertainty score from its run ``result`` (a results.Result).

    Args:
        by: ``mean``, ``max`` or ``p95`` of the primary output's variance (finite values;
            squared output units); ``entropy`` or ``bald``: the mean predictive entropy or
            mutual information (nats) of an output holding class probabilities.

    Returns:
        The score (float; NaN when the map has no finite value).

    Raises:
        ArgumentError (a ValueError): an unknown ``by``.
        TfueError: the result lacks what ``by`` reads (entropy/bald without class
            probabilities, or a variance for an entropy run).
    """
    check_score(by)
    source = {"entropy": result.entropy, "bald": result.mutual_information}.get(
        by, result.variance)
    if source is None:
        raise TfueError(f"this run has no {'variance' if by in ('mean', 'max', 'p95') else by} "
                        f"to rank by", "--by entropy and --by bald need an output of class "
                        "probabilities (--classify or --softmax); --by mean needs a sampling "
                        "method")
    values = np.asarray(source, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return float("nan")
    if by == "max":
        return float(values.max())
    if by == "p95":
        return float(np.percentile(values, 95))
    return float(values.mean())


def rank_inputs(estimator, inputs, by: str = "mean", options=None, out_dir=None,
                progress=None) -> list:
    """Score every input and rank them, most uncertain first.

    Args:
        estimator: the runner.Estimator to run (its seed makes the scores reproducible).
        inputs: input files (images, .npy, .npz, as ``tfue run`` reads them) and/or
            inputs as arrays (a numpy array for a one-input model, or a dict by input
            name, as ``estimator(x)`` takes them).
        by: the score (``image_score``).
        options: io.ImageOptions for reading images (None: the defaults).
        out_dir: a folder for ``scores.jsonl`` (resumable: scores of files with the same
            settings there are kept and not computed again; arrays are always scored)
            and ``ranking.csv``; None: nothing written.
        progress: wraps the list of inputs still to score, for display.

    Returns:
        ``[{"input", "score", "rank"}]`` sorted by rank (1 = most uncertain; NaN scores
        last); ``input`` is the file's path, or an array's position in ``inputs`` (int).

    Raises:
        TfueError: an input cannot be read or run, ``out_dir`` holds scores of other
            settings, or cannot be written.
    """
    from .files import append_log, prepare_out_dir
    from .io import ImageOptions, load_input

    check_score(by)
    options = options or ImageOptions()
    config = scored_by(estimator, by, options)
    log = None if out_dir is None else os.path.join(prepare_out_dir(out_dir), "scores.jsonl")
    scores = {} if log is None else logged_scores(log, config)
    given = {_key(x, k): x for k, x in enumerate(inputs)}
    todo = [key for key in given if key not in scores]
    for key in progress(todo) if progress and todo else todo:
        path = isinstance(key, str)
        feeds = load_input(key, estimator.info.inputs, options) if path else given[key]
        scores[key] = image_score(estimator(feeds), by)
        if log is not None and path:
            append_log(log, config, {"input": key, "score": scores[key]})
    order = sorted(given, key=lambda f: (np.isnan(scores[f]), -np.nan_to_num(scores[f])))
    ranking = [{"input": f, "score": scores[f], "rank": k} for k, f in enumerate(order, 1)]
    if out_dir is not None:
        _write_csv(os.path.join(out_dir, "ranking.csv"), ranking)
    return ranking


def scored_by(estimator, by: str, options=None) -> dict:
    """What makes scores comparable (scores.jsonl's config): what the run's results depend
    on (``calibration.run_identity``: the model's and members' SHA-256, the settings that
    change the samples, the seed of methods that draw; not chunk sizes or timings, which
    change from machine to machine), an in-memory model's proto hash, how images are read
    (``options``, an io.ImageOptions) and the score."""
    import hashlib

    from .calibration import run_identity
    from .io import ImageOptions
    from .report import plain_fields

    config = run_identity(estimator.describe())
    if config["model"] is None:  # in memory: the proto it was built from
        config["model"] = "in memory " + hashlib.sha256(
            estimator.info.model.SerializeToString()).hexdigest()
    config["image_options"] = plain_fields(options or ImageOptions())
    config["by"] = by
    return config


def logged_scores(log: str, config: dict) -> dict:
    """{input: score} of the log's records of these settings; a record of another kind
    (edited) is left out, so its input is scored again."""
    from .files import read_log

    found = {}
    for r in read_log(log, config, "scores of other settings",
                      "choose another --out folder, or remove that file to start over"):
        score = r.get("score")
        if isinstance(r.get("input"), str) and isinstance(score, (int, float)) and \
                not isinstance(score, bool):
            found[r["input"]] = float(score)
    return found


def logged_seed(out_dir: str):
    """The seed of the scores already in ``out_dir``/scores.jsonl (None: no log, or one
    without a seed): a rank run without --seed resumes with it."""
    path = os.path.join(out_dir, "scores.jsonl")
    try:
        with open(path) as f:
            return (json.loads(f.readline()).get("config") or {}).get("seed")
    except (OSError, ValueError, AttributeError):
        return None


def _key(x, position: int):
    """How an input is named in a ranking: a file's path (str), an array's position."""
    return os.fspath(x) if isinstance(x, (str, os.PathLike)) else position


def contact_sheet(estimator, ranking: list, count: int, path: str, options=None) -> str:
    """``path`` (PNG): the ``count`` highest-ranked inputs, one row each (rank, file,
    score): the output and its uncertainty map with a colour bar (``plots.panels``);
    each input runs again (the same seed, so the same map). Inputs whose output is no
    image are left out. Returns ``path``.
    """
    from .io import ImageOptions, load_input
    from .plots import UNITS, panels
    from .report import picture_of

    rows, labels = [], []
    for r in ranking[:count]:
        feeds = load_input(r["input"], estimator.info.inputs, options or ImageOptions())
        shown = picture_of(estimator(feeds), os.path.basename(r["input"]))
        if shown is None:
            continue
        rows.append([shown["output"], ("map", shown["map"], UNITS[shown["kind"]])])
        labels.append(f"#{r['rank']} {os.path.basename(r['input'])}\nscore {r['score']:.3g}")
    if rows:
        panels(path, rows, ["output", "uncertainty (each on its own scale)"],
               f"the {len(rows)} most uncertain of {len(ranking)} inputs",
               row_titles=labels)
    return path


def copy_top(ranking: list, top: int, copy_to: str) -> list:
    """Copy (never move) the ``top`` highest-ranked input files into ``copy_to`` (made if
    needed); return the copies' paths. Picked files of one name (from different folders)
    are copied as NAME, NAME_2, NAME_3 ... in rank order.

    Raises:
        TfueError: a file of a copy's name already exists in ``copy_to`` (nothing is
            overwritten; checked for all before any is copied).
    """
    import shutil

    from .files import prepare_out_dir

    picked = [r["input"] for r in ranking[:top]]
    targets, seen = [], {}
    for p in picked:
        stem, ext = os.path.splitext(os.path.basename(p))
        seen[stem + ext] = seen.get(stem + ext, 0) + 1
        name = stem + ext if seen[stem + ext] == 1 else f"{stem}_{seen[stem + ext]}{ext}"
        targets.append(os.path.join(copy_to, name))
    clash = [t for t in targets if os.path.exists(t)]
    if clash:
        raise TfueError(f"'{clash[0]}' already exists ({len(clash)} of the picked files)",
                        "copy into another --copy-to folder")
    prepare_out_dir(copy_to)
    for src, dst in zip(picked, targets):
        shutil.copy2(src, dst)
    return targets


def _write_csv(path: str, ranking: list) -> None:
    """``ranking.csv``: input, score, rank (written atomically)."""
    import csv
    import io

    from .files import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["input", "score", "rank"])
    for r in ranking:
        writer.writerow([r["input"], repr(r["score"]), r["rank"]])
    atomic_write_bytes(path, buf.getvalue().encode())
