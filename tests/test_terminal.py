"""Issue 12: every command in an interactive terminal (a pseudo-terminal), where the
progress bars replace the progress lines."""

import os
import pty
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import toys

TFUE = [sys.executable, "-m", "tfue_onnx.cli"]


def _in_terminal(args, cwd, timeout=240, env=None) -> tuple:
    """(exit code, everything the command wrote) with stdin, stdout and stderr on a
    pseudo-terminal, as in an interactive shell (``env``: added to the environment)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(TFUE + [str(a) for a in args], stdin=slave, stdout=slave,
                            stderr=slave, cwd=cwd, env={**os.environ, **(env or {})})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not data:
            break
        chunks.append(data)
    code = proc.wait(timeout=timeout)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.fixture
def sr_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "hr"
    folder.mkdir()
    for k in range(2):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(
            folder / f"i{k}.png")
    model = tmp_path / "up.onnx"
    toys.upscale_net(model)
    return model, folder


@pytest.mark.parametrize("command", ["inspect", "run", "evaluate", "sweep", "export", "rank"])
def test_every_command_in_a_terminal(sr_folder, tmp_path, command):
    model, folder = sr_folder
    args = {
        "inspect": ["inspect", model],
        "run": ["run", model, folder, "--method", "noise", "--at", "c", "-n", 4,
                "-o", tmp_path / "o"],
        "evaluate": ["evaluate", model, folder, "--sr-scale", 2, "--method", "noise",
                     "--at", "c", "-n", 4, "--bootstrap", 0, "-o", tmp_path / "e"],
        "sweep": ["sweep", model, folder, "--sr-scale", 2, "--methods", "noise", "--at", "c",
                  "--sigmas", "0.1", "-n", 4, "--bootstrap", 0, "-o", tmp_path / "s"],
        "export": ["export", model, "-o", tmp_path / "x.onnx", "--method", "noise",
                   "--at", "c", "-n", 4],
        "rank": ["rank", model, folder, "--method", "noise", "--at", "c", "-n", 4,
                 "-o", tmp_path / "r"],
    }[command]
    code, text = _in_terminal(args, tmp_path)
    assert code == 0, text
    assert "Traceback" not in text and "object at 0x" not in text
    expect = {"inspect": "candidate", "run": "summary:", "evaluate": "wrote",
              "sweep": "best for", "export": "wrote", "rank": "ranked 2 input(s)"}[command]
    assert expect in text, text
    if command in ("run", "evaluate"):  # a progress bar, with the file names
        assert "i1.png" in text and "[#" in text


def test_the_terminal_bar_counts_the_samples_of_a_long_input(sr_folder, tmp_path):
    model, folder = sr_folder
    # Every redraw shown: BAR_EVERY 0 (the child reads it from this environment variable).
    code, text = _in_terminal(["run", model, folder / "i0.png", "--method", "noise", "--at", "c",
                               "-n", 40, "--chunk", 1, "--no-pictures", "-o", tmp_path / "o"],
                              tmp_path, env={"TFUE_BAR_EVERY": "0"})
    assert code == 0, text
    counts = [int(n) for n in __import__("re").findall(r"i0\.png (\d+)/40 samples", text)]
    assert counts and counts == sorted(counts) and counts[-1] == 40, text
    assert "ETA" in text
