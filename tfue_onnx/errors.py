"""The one exception type of tfue-onnx.

Every problem a user can fix is raised as a :class:`TfueError` that names the
problem and, in ``hint``, the fix. The CLI prints it as one line and exits 2;
library code never prints and never exits.
"""

from __future__ import annotations


class TfueError(Exception):
    """A problem with the user's input or environment, with a hint to fix it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}. Hint: {self.hint}"
        return self.message


def closest(name: str, choices, n: int = 3) -> str:
    """Return a ', '-joined list of the names in ``choices`` closest to ``name``."""
    import difflib

    choices = list(choices)
    found = difflib.get_close_matches(name, choices, n=n, cutoff=0.3)
    if not found:
        found = [c for c in choices if name.lower() in c.lower()][:n]
    return ", ".join(repr(f) for f in found)
