"""The exception types of tfue-onnx, and the two faces their hints are read on.

Every problem a user can fix is raised as a :class:`TfueError` that names the
problem and, in ``hint``, the fix. A bad argument value (sigma < 0, N < 2, an
unknown strategy, a memory size that is not one) is an :class:`ArgumentError`,
which is also a ``ValueError``, so ``except ValueError`` works in Python. Faults
of tfue itself ("should not happen") are not TfueErrors: they are RuntimeErrors
or AssertionErrors and keep their traceback.

Messages and hints are written once, naming options as the command line spells
them (``--force``, ``--samples 8``). ``str(exc)`` is the Python face: those
spellings are translated through one table, :data:`PYTHON_NAMES` (``--force`` reads
``force=True``, ``--samples 8`` reads ``samples=8``); :meth:`TfueError.cli_text`
is the command line's face, as written. The CLI prints ``cli_text()`` as one line
and exits 2; library code never prints and never exits.
"""

from __future__ import annotations

import re

from . import names

# CLI option -> (Python argument, kind). kind "flag": a switch, read ``name=True``
# (or the value given, for a negated switch); "value": followed by a value, read
# ``name=VALUE`` when a value follows, else the bare name.
PYTHON_NAMES = {
    "--force": ("force=True", "flag"),
    "--no-cache": ("cache=False", "flag"),
    "--io-binding": ("io_binding=True", "flag"),
    "--no-io-binding": ("io_binding=False", "flag"),
    "--softmax": ("softmax=True", "flag"),
    "--classify": ("classify=True", "flag"),
    "--save-samples": ("keep_samples=True", "flag"),
    "--samples": ("samples", "value"), "-n": ("samples", "value"),
    "--seed": ("seed", "value"),
    "--sigma": ("sigma", "value"),
    "--sigma-mode": ("mode", "value"),
    "--rate": ("rate", "value"),
    "--at": ("at", "value"),
    "--at-count": ("at_count", "value"),
    "--example": ("example", "value"),
    "--output": ("path", "value"), "-o": ("path", "value"),
    "--out": ("out_dir", "value"),
    "--max-memory": ("max_memory", "value"),
    "--chunk": ("chunk", "value"),
    "--threads": ("threads", "value"),
    "--tolerance": ("tolerance", "value"),
    "--sweep-result": ("sweep_result", "value"),
    "--layout": ("layout", "value"),
    "--strategy": ("strategy", "value"),
    "--provider": ("provider", "value"),
    "--pad": ("pad", "value"),
    "--transforms": ("transforms", "value"),
    "--class-axis": ("class_axis", "value"),
    "--mean": ("mean", "value"),
    "--std": ("std", "value"),
    "--resize": ("resize", "value"),
    "--scale": ("scale", "value"),
    "--channel-order": ("channel_order", "value"),
    "--targets": ("targets", "value"),
    "--sr-scale": ("sr_scale", "value"),
    "--target-scale": ("target_scale", "value"),
    "--block-sigma": ("block_sigma", "value"),
    "--block-grid": ("block_grid", "value"),
    "--bootstrap": ("bootstrap", "value"),
    "--metric": ("metric", "value"),
    "--sigmas": ("sigmas", "value"),
    "--rates": ("rates", "value"),
    "--levels": ("level", "value"),
    "--methods": ("methods", "value"),
    "--method": ("method", "value"),
    "--by": ("by", "value"),
    "--top": ("top", "value"),
    "--copy-to": ("copy_to", "value"),
    "--weights": ("formula", "value"),
    "--weight-strength": ("strength", "value"),
    "--max-weight": ("max_weight", "value"),
    "--coverage": ("coverage", "value"),
    "--calibration": ("calibration", "value"),
}
# --method VALUE reads as the spec class that Python takes instead.
METHOD_CLASSES = {"noise": "Noise", "dropout": "Dropout", "mc-dropout": "MCDropout",
                  "transform": "Transform", "ensemble": "Ensemble", "entropy": "Entropy"}

_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[on])(?![\w-])(?: (\S+))?")
# A following word that is a value: a number, a size (2G), a list (0.1,0.2), HxW, or one
# of the keyword values options take; any other word is prose ("--sigma as a number").
_NUMBER = re.compile(r"^-?[\d.]+(e-?\d+)?([KMGT]B?)?$|^[\d.,-]+$|^\d+x\d+$", re.IGNORECASE)
_KEYWORDS = {"auto", "all", "input"}.union(
    names.LAYOUTS, names.SIGMA_MODES, names.CHANNEL_ORDERS, names.PROVIDERS,
    names.TRANSFORM_SETS, names.STRATEGIES, names.WEIGHT_FORMULAS, names.RANK_SCORES)


def _python_value(value: str) -> str:
    if re.match(r"^-?[\d.]+(e-?\d+)?$", value, re.IGNORECASE):
        return value
    if re.match(r"^[\d.,-]+$", value) and "," in value:
        return "(" + ", ".join(value.split(",")) + ")"
    return repr(value)


def _translate(match) -> str:
    option, following = match.group(1), match.group(2)
    name, kind = PYTHON_NAMES.get(option, (None, None))
    if name is None:
        return match.group(0)
    if kind == "flag" or following is None:
        return name + ("" if following is None else " " + following)
    word = following.rstrip(".,;:)")
    tail = following[len(word):]
    if option == "--method" and word in METHOD_CLASSES:
        return METHOD_CLASSES[word] + "(...)" + tail
    if _NUMBER.match(word) or word in _KEYWORDS:
        return f"{name}={_python_value(word)}{tail}"
    return f"{name} {following}"


def python_face(text: str) -> str:
    """``text`` with every command-line option in it spelled as the Python argument
    (``--force`` -> ``force=True``, ``--samples 8`` -> ``samples=8``, ``--sigma`` ->
    ``sigma``), through :data:`PYTHON_NAMES`; options not in the table stay."""
    return _OPTION.sub(_translate, text) if text else text


class TfueError(Exception):
    """A problem with the user's input or environment, with a hint to fix it.

    Args:
        message: what is wrong, one line, options spelled as on the command line.
        hint: how to fix it (None: no hint), spelled the same way.

    ``str(exc)`` reads on the Python face (``python_face``); ``exc.cli_text()`` on the
    command line's. ``exc.message`` and ``exc.hint`` keep the text as written.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def about(self, what: str) -> "TfueError":
        """The same error (type and hint) about ``what``: "WHAT: MESSAGE", to name which
        of several inputs it concerns."""
        return type(self)(f"{what}: {self.message}", self.hint)

    def cli_text(self) -> str:
        """The error as the command line says it: "MESSAGE. Hint: HINT"."""
        if self.hint:
            return f"{self.message}. Hint: {self.hint}"
        return self.message

    def __str__(self) -> str:
        return python_face(self.cli_text())


class ArgumentError(TfueError, ValueError):
    """A bad argument value (out of range, of the wrong kind, an unknown name): a
    TfueError (one line, exit 2 on the CLI) and a ``ValueError`` in Python."""


def closest(name: str, choices, n: int = 3) -> str:
    """Return a ', '-joined list of the names in ``choices`` closest to ``name``."""
    import difflib

    choices = list(choices)
    found = difflib.get_close_matches(name, choices, n=n, cutoff=0.3)
    if not found:
        found = [c for c in choices if name.lower() in c.lower()][:n]
    return ", ".join(repr(f) for f in found)
