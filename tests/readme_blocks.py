"""The fenced blocks of a README, and running them as a reader would (tests/test_readme.py,
tests/test_models_readme.py).

Every block of a README is handled by exactly one test, named in that test file's
``HANDLED`` table by the start of the block's first line; ``check_all_handled`` fails when a block is
added or its first line changes without a test for it. Blocks are run as written, except
for substitutions listed in the test (``substitute``): each must match the block, so a
substitution that no longer applies fails too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)  # the test's venv: its `tfue` entry point, its python


def blocks(path) -> list:
    """``[(language, text)]`` of every fenced block in the file at ``path`` (language ""
    for a bare block), in order."""
    with open(path) as f:
        text = f.read()
    return re.findall(r"^```(\w*)\n(.*?)^```[ \t]*$", text, re.M | re.S)


def first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip()


def check_all_handled(path, handled: dict) -> None:
    """Every block of ``path`` has exactly one handler in ``handled`` (start of its first
    line -> the test that runs or checks it) and every handler exactly one block."""
    found = [first_line(t) for _, t in blocks(path)]
    name = os.path.basename(path)
    for line in found:
        keys = [k for k in handled if line.startswith(k)]
        assert keys, (f"{name}: a block that no test runs or lists (add it to HANDLED with "
                      f"a test): {line!r}")
        assert len(keys) == 1, f"{name}: block {line!r} matches the handlers {keys}"
    for key in handled:
        n = sum(line.startswith(key) for line in found)
        assert n == 1, f"{name}: handler {key!r} ({handled[key]}) matches {n} blocks"


def block(path, first: str, language: str | None = None) -> str:
    """The text of the one block of ``path`` whose first line starts with ``first``."""
    hits = [(lang, t) for lang, t in blocks(path) if first_line(t).startswith(first)]
    assert len(hits) == 1, f"{len(hits)} blocks starting {first!r} in {path}"
    lang, text = hits[0]
    assert language is None or lang == language, (first, lang)
    return text


def substitute(text: str, substitutions) -> str:
    """Apply ``(old, new)`` pairs in order; each must occur in the text."""
    for old, new in substitutions:
        assert old in text, f"substitution {old!r} no longer matches the block"
        text = text.replace(old, new)
    return text


def run_shell(text: str, cwd, env: dict | None = None, timeout: float = 300):
    """Run a shell block with bash (``set -euo pipefail``) in ``cwd``, the test's venv
    first on PATH; return the finished process after checking its exit code."""
    full = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": "", **(env or {})}
    r = subprocess.run(["bash", "-c", "set -euo pipefail\n" + text], cwd=str(cwd), env=full,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode}\n--- block:\n{text}\n--- stdout:\n" \
                              f"{r.stdout[-3000:]}\n--- stderr:\n{r.stderr[-3000:]}"
    return r
