"""files.py: atomic writes, output folders that are never overwritten without --force,
JSON and npz."""

import json
import os

import numpy as np
import pytest

from tfue_onnx import TfueError
from tfue_onnx.files import (atomic_write, atomic_write_bytes, check_new_file, check_out_dir,
                             cleanup_out_dir, plain_json, prepare_out_dir, save_json, save_npz)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_atomic_write_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "r.bin"
    path.write_bytes(b"old")

    def half(f):
        f.write(b"new but unfinis")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        atomic_write(str(path), half)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["r.bin"]  # the temporary file is gone


def test_atomic_write_failure_on_a_new_path_leaves_nothing(tmp_path):
    def fail(f):
        f.write(b"x" * 1000)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(tmp_path / "new.bin"), fail)
    assert os.listdir(tmp_path) == []


def test_atomic_write_bytes_writes_an_ordinary_file(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_bytes(str(path), b"hello")
    assert path.read_bytes() == b"hello"
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_check_new_file(tmp_path):
    path = tmp_path / "x.npz"
    check_new_file(str(path), force=False)  # free: fine
    path.write_bytes(b"")
    with pytest.raises(TfueError, match="already exists") as err:
        check_new_file(str(path), force=False)
    assert "--force" in err.value.hint
    check_new_file(str(path), force=True)
    with pytest.raises(TfueError, match="is a folder"):
        check_new_file(str(tmp_path), force=True)
    with pytest.raises(TfueError, match="does not exist"):
        check_new_file(str(tmp_path / "no" / "x.npz"), force=False)


def test_out_dir_checks_prepares_and_cleans_up(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(TfueError, match="is a file"):
        check_out_dir(str(tmp_path / "f"))
    with pytest.raises(TfueError, match="cannot be created"):
        check_out_dir(str(tmp_path / "f" / "below"))
    deep = tmp_path / "a" / "b"
    assert check_out_dir(str(deep)) == str(deep) and not deep.exists()  # nothing made
    with pytest.raises(ValueError):
        with cleanup_out_dir(str(deep)):
            prepare_out_dir(str(deep))
            assert deep.is_dir() and os.listdir(deep) == []  # the probe file is gone
            raise ValueError("refused")
    assert not (tmp_path / "a").exists()  # both empty folders made were removed
    with cleanup_out_dir(str(deep)):
        prepare_out_dir(str(deep))
        (deep / "r.npz").write_bytes(b"")
    assert (deep / "r.npz").exists()


def test_plain_json_and_save_json(tmp_path):
    obj = {"a": float("nan"), "b": [np.float32(1.5), float("inf")], "c": np.arange(2)}
    assert plain_json(obj) == {"a": None, "b": [1.5, None], "c": [0, 1]}
    save_json(str(tmp_path / "s.json"), obj)
    text = (tmp_path / "s.json").read_text()
    assert "NaN" not in text and json.loads(text) == {"a": None, "b": [1.5, None], "c": [0, 1]}


@pytest.mark.parametrize("compress", [False, True])
def test_save_npz_round_trip(tmp_path, compress):
    path = str(tmp_path / "r.npz")
    save_npz(path, {"y": np.arange(6.0).reshape(2, 3)}, {"method": "noise", "n": 4}, compress)
    with np.load(path) as z:
        assert sorted(z.files) == ["metadata", "y"]
        np.testing.assert_array_equal(z["y"], np.arange(6.0).reshape(2, 3))
        assert json.loads(str(z["metadata"])) == {"method": "noise", "n": 4}


def test_files_imports_only_errors():
    import ast

    tree = ast.parse(open(os.path.join(ROOT, "tfue_onnx", "files.py")).read())
    local = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert local == {"errors"}


def test_check_out_dir_proves_the_folder_writable_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    import tempfile

    from tfue_onnx import files

    target = tmp_path / "a" / "b"
    assert files.check_out_dir(str(target)) == str(target)
    assert not (tmp_path / "a").exists()  # made to prove it, removed again

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(TfueError, match="is not writable \\(Read-only file system\\)"):
        files.check_out_dir(str(target))
    assert not (tmp_path / "a").exists()


def test_an_output_folder_the_system_refuses_stops_the_run_before_any_work(cli, toy, tmp_path,
                                                                          x8):
    np.save(tmp_path / "x.npy", x8)
    r = cli("run", toy(), tmp_path / "x.npy", "--method", "noise", "-n", "2",
            "-o", "/proc/tfue-cannot-be-made/out")
    assert r.exit_code == 2 and "is not writable" in r.output
    assert "mean variance" not in r.output and "sampling" not in r.output


def test_check_new_file_refuses_what_cannot_be_written(tmp_path, monkeypatch):
    import errno
    import tempfile

    from tfue_onnx import files

    with pytest.raises(TfueError, match="empty name"):
        files.check_new_file("", False)
    (tmp_path / "f").write_text("x")
    with pytest.raises(TfueError, match="is a file, not a folder"):
        files.check_new_file(str(tmp_path / "f" / "x.onnx"), False)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(TfueError, match="not writable \\(Read-only file system\\)") as err:
        files.check_new_file(str(tmp_path / "x.onnx"), False)
    assert err.value.hint == "choose an output path in a folder you can write to"


def test_export_to_a_folder_the_system_refuses_is_one_line_before_any_work(cli, toy, tmp_path):
    r = cli("export", toy(), "-o", "/proc/x.onnx", "--method", "noise")
    assert r.exit_code == 2 and "not writable" in r.output and "Traceback" not in r.output


def test_resumable_logs_keep_records_of_the_same_settings_only(tmp_path):
    from tfue_onnx.files import append_log, read_log

    log = str(tmp_path / "x.jsonl")
    assert read_log(log, {"a": 1}, "x", "h") == []
    append_log(log, {"a": 1, "b": (2, 3)}, {"k": 1})
    append_log(log, {"a": 1, "b": (2, 3)}, {"k": 2})
    lines = open(log).read().splitlines()
    assert len(lines) == 3 and json.loads(lines[0]) == {"config": {"a": 1, "b": [2, 3]}}
    assert read_log(log, {"a": 1, "b": (2, 3)}, "x", "h") == [{"k": 1}, {"k": 2}]
    with pytest.raises(TfueError, match=r"holds runs of others \(a differ\)") as err:
        read_log(log, {"a": 5, "b": (2, 3)}, "runs of others", "start over")
    assert err.value.hint == "start over"
    assert read_log(log, {"a": 5}, "runs of others", "start over", force=True) == []
    assert not os.path.exists(log)


def test_a_log_cut_while_writing_keeps_its_whole_lines_and_an_edited_one_is_refused(tmp_path):
    from tfue_onnx.files import append_log, read_log

    log = str(tmp_path / "scores.jsonl")
    for k in range(3):
        append_log(log, {"a": 1}, {"k": k})
    whole = open(log).read()
    with open(log, "a") as f:
        f.write('{"k": 3, "sc')  # stopped in the middle of a record
    assert read_log(log, {"a": 1}, "x", "h") == [{"k": 0}, {"k": 1}, {"k": 2}]
    assert open(log).read() == whole  # the broken tail is gone
    append_log(log, {"a": 1}, {"k": 3})
    assert read_log(log, {"a": 1}, "x", "h")[-1] == {"k": 3}
    with open(log, "a") as f:
        f.write('{"k": 4}')  # whole, but without its newline
    assert read_log(log, {"a": 1}, "x", "h")[-1] == {"k": 4}  # kept, its newline added
    append_log(log, {"a": 1}, {"k": 5})
    assert [r["k"] for r in read_log(log, {"a": 1}, "x", "h")] == [0, 1, 2, 3, 4, 5]
    lines = open(log).read().splitlines()
    lines[2] = "garbage"
    open(log, "w").write("\n".join(lines) + "\n")
    with pytest.raises(TfueError, match="line 3 of .* is not a record tfue wrote"):
        read_log(log, {"a": 1}, "x", "h")
