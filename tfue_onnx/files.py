"""Writing files atomically, and checking where they go (a foundation module).

Every file is written to a temporary name in its folder and renamed into place,
so a crash never leaves a half-written file, and nothing that exists is
overwritten unless the caller says ``force``. Resumable JSON-lines logs (a sweep's
points, a ranking's scores) are the exception: appended and flushed line by line, so a
stopped run keeps what it finished (``read_log``, ``append_log``). Imports only
``errors``: every stage (the cache, external data, reports, sweeps) writes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import numpy as np

from .errors import TfueError

__all__ = ["check_new_file", "check_out_dir", "prepare_out_dir", "cleanup_out_dir",
           "atomic_write", "atomic_write_bytes", "save_npz", "plain_json", "save_json"]


def check_new_file(path: str, force: bool) -> None:
    """Raise unless ``path`` can be written: it must not exist (or ``force``).

    Args:
        path: the file to be written.
        force: an existing file may be overwritten.

    Raises:
        TfueError: ``path`` is a folder; it exists and ``force`` is False (the hint
            names ``--force``); its folder does not exist or is not writable.
    """
    path = os.fspath(path)
    if not path.strip():
        raise TfueError("the output file is an empty name", "give a file path with -o")
    if os.path.isdir(path):
        raise TfueError(f"'{path}' is a folder", "give a file path")
    if os.path.exists(path) and not force:
        raise TfueError(f"'{path}' already exists and would be overwritten",
                        "pass --force to overwrite it, or choose another output path")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise TfueError(f"'{parent}' is a file, not a folder", "give a path in a folder with -o")
    if not os.path.isdir(parent):
        raise TfueError(f"the folder '{parent}' does not exist", "create it first")
    if not os.access(parent, os.W_OK):
        raise TfueError(f"the folder '{parent}' is not writable",
                        "choose an output path in a folder you can write to")
    # access() says yes to root on read-only or virtual file systems: try it
    _make_and_probe(parent, "choose an output path in a folder you can write to")


def check_out_dir(path: str) -> str:
    """Check that ``path`` can become the output folder, leaving nothing behind.

    The folder must be a folder if it exists; otherwise the nearest existing
    folder above it must be writable (and no file may sit on the way). Then the
    folder and a file in it are made and removed again (folders made for it too).

    Returns:
        ``path`` (as a str).

    Raises:
        TfueError: ``path`` is a file, lies under a file, or cannot be created.
    """
    path = os.fspath(path)
    if not path.strip():
        raise TfueError("the output folder is an empty name", "give a folder with --out")
    if os.path.exists(path) and not os.path.isdir(path):
        raise TfueError(f"output path '{path}' is a file, not a folder",
                        "give a folder with --out")
    above = os.path.abspath(path)
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise TfueError(f"output folder '{path}' cannot be created: '{above}' is a file",
                        "give a folder with --out")
    if not os.access(above, os.W_OK | os.X_OK):
        raise TfueError(f"output folder '{path}' is not writable ('{above}' is read-only)",
                        "choose a folder you can write to with --out")
    _probe(path)
    return path


def _probe(path: str) -> None:
    """Prove ``path`` writable by making it (and the folders above it that are missing)
    and a file in it, then removing all that again: access() alone says yes to root on
    a read-only or virtual file system (/proc)."""
    made = _missing_folders(path)
    try:
        _make_and_probe(path)
    finally:
        for folder in made:  # deepest first; nothing is left behind
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)


def _missing_folders(path: str) -> list:
    """The folders of ``path`` that do not exist yet, deepest first."""
    made, above = [], os.path.abspath(os.fspath(path))
    while not os.path.exists(above):
        made.append(above)
        above = os.path.dirname(above)
    return made


def _make_and_probe(path: str, hint: str = "choose a folder you can write to with --out") -> None:
    """Make the folder ``path`` and a file in it (removed again); TfueError if refused."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tfue-probe-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise TfueError(f"output folder '{path}' is not writable ({exc.strerror or exc})",
                        hint) from None


def prepare_out_dir(path: str) -> str:
    """Create the output folder if needed and prove it is writable (a probe file is
    made and removed again).

    Returns:
        ``path`` (as a str).

    Raises:
        TfueError: ``path`` is a file or cannot be written.
    """
    path = check_out_dir(path)
    _make_and_probe(path)
    return path


@contextlib.contextmanager
def cleanup_out_dir(path: str):
    """Within this block, folders made for ``path`` are removed again on an error if
    nothing was written in them, so a refused run leaves no empty output folder.

    Yields ``path``; the error is raised again after the clean-up.
    """
    made = _missing_folders(path)
    try:
        yield path
    except BaseException:
        for folder in made:  # deepest first
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` (bytes) to ``path`` via a temporary file and a rename
    (:func:`atomic_write`); raises OSError as the file system does."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: str, write) -> None:
    """Call ``write(file)`` on a temporary binary file beside ``path``, then rename it
    to ``path``: a reader never sees a half-written file, and a failure leaves none.

    The file gets the ordinary permissions (0666 less the umask). Whatever ``write``
    raises (or OSError from the file system) is raised again after the temporary
    file is removed; an existing ``path`` is then left as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tfue-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_npz(path: str, arrays: dict, metadata: dict, compress: bool = False) -> None:
    """Write arrays and a JSON metadata string to ``path`` (.npz) atomically.

    Args:
        path: the .npz file.
        arrays: name -> array, each stored once as it is.
        metadata: JSON-able dict, stored as a 0-d string array ``metadata``.
        compress: zip-deflate the arrays (``numpy.savez_compressed``): smaller files,
            about 50x slower to write for float maps; off by default (``--compress``).

    Raises:
        OSError: the file cannot be written (nothing is left half-written).
    """
    save = np.savez_compressed if compress else np.savez
    meta = np.array(json.dumps(metadata, default=str))
    atomic_write(path, lambda f: save(f, **arrays, metadata=meta))


def plain_json(obj):
    """``obj`` with NaN and infinities as None, so the JSON is standard: dicts, lists
    and tuples are walked (tuples become lists), numpy scalars and arrays become
    Python numbers and lists; anything else is returned as it is."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return plain_json(obj.item())
    if isinstance(obj, np.ndarray):
        return plain_json(obj.tolist())
    return obj


def save_json(path: str, obj) -> None:
    """Write ``obj`` as indented, standard JSON (NaN as null, see :func:`plain_json`;
    what JSON cannot hold as ``str``) atomically, with a final newline."""
    atomic_write_bytes(path, (json.dumps(plain_json(obj), indent=2, default=str) + "\n")
                       .encode())


def read_log(path: str, config: dict, what: str, hint: str, force: bool = False,
             default=str) -> list:
    """The records of a resumable JSON-lines log (sweep.jsonl, scores.jsonl): a first
    line ``{"config": ...}``, then one record per finished piece of work.

    Args:
        path: the log file; missing: no records.
        config: this run's settings (JSON-able through ``default``), which the log's
            must equal for its records to count.
        what: how the refusal names the log's content ("a sweep with other settings").
        hint: the refusal's hint.
        force: a log of other settings is removed instead of refused.

    Returns:
        The records after the config line ([] for a new or removed log).

    A last line cut short (a run stopped while writing it) is dropped from the file, so
    the next record starts on a line of its own.

    Raises:
        TfueError: the log holds other settings (the differing ones named), without
            ``force``; a line before the last is not JSON (the file was edited).
    """
    if not os.path.exists(path):
        return []
    lines = _log_lines(path)
    if not lines:  # nothing whole was written (stopped at once): start afresh
        os.remove(path)
        return []
    wanted = json.loads(json.dumps(config, default=default))
    if lines[0].get("config") == wanted:
        return lines[1:]
    if not force:
        theirs = lines[0].get("config")
        theirs = theirs if isinstance(theirs, dict) else {}
        differ = sorted(k for k in set(theirs) | set(wanted) if theirs.get(k) != wanted.get(k))
        raise TfueError(f"'{path}' holds {what} ({', '.join(differ) or 'unreadable'} differ)",
                        hint)
    os.remove(path)
    return []


def _log_lines(path: str) -> list:
    """The JSON objects of a log's lines; a broken last line is cut off the file."""
    with open(path, "rb") as f:
        raw = f.read()
    found, end = [], 0
    for k, line in enumerate(raw.splitlines(keepends=True)):
        try:
            value = json.loads(line) if line.strip() else None
            if value is not None and not isinstance(value, dict):
                raise ValueError("not an object")
        except ValueError:
            if end + len(line) < len(raw):  # not the last line: the file was edited
                raise TfueError(f"line {k + 1} of '{path}' is not a record tfue wrote",
                                "remove that line (its work is done again) or the file") from None
            with open(path, "r+b") as f:
                f.truncate(end)
            break
        if not line.endswith(b"\n"):  # complete JSON but cut before its newline
            with open(path, "ab") as f:
                f.write(b"\n")
        end += len(line)
        if value is not None:
            found.append(value)
    return found


def append_log(path: str, config: dict, record: dict, default=str) -> None:
    """Append ``record`` to the log at ``path`` (its config line first when the log is
    new), flushed to disk at once: a stopped run loses nothing it finished."""
    new = not os.path.exists(path)
    with open(path, "a") as f:
        if new:
            f.write(json.dumps({"config": config}, default=default) + "\n")
        f.write(json.dumps(record, default=default) + "\n")
        f.flush()
        os.fsync(f.fileno())
