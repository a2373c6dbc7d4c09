"""Perturbation specs: what to perturb, where and how strongly, as plain data.

Specs validate their arguments on construction, so a bad level never reaches a
graph. They say nothing about how the perturbation is built; ``graph.py`` does.
"""

from __future__ import annotations

import dataclasses
import math
import os

from .errors import ArgumentError
from .layout import check_layout
from .names import METHODS, SIGMA_MODES


def _check_number(name: str, value, hint: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{name} must be a number, got {value!r}", hint) from None
    if math.isnan(value) or math.isinf(value):
        raise ArgumentError(f"{name} must be a finite number, got {value}", hint)
    return value


def check_rate(name: str, rate) -> float:
    """Validate a dropout rate: a number in [0, 1), returned as a float.

    Raises:
        ArgumentError (a ValueError): ``rate`` is not a finite number in [0, 1).
    """
    hint = f"give --{name} in [0, 1), e.g. 0.1"
    rate = _check_number(name, rate, hint)
    if not 0.0 <= rate < 1.0:
        raise ArgumentError(f"{name} must be in [0, 1), got {rate:g}", hint)
    return rate


def check_level(method: str, level, option: str = "--levels") -> float:
    """Validate a level given apart from the spec (``est(x, level=...)``, ``--levels``,
    a sweep's ``--sigmas``/``--rates``): a noise sigma >= 0, or a dropout rate in
    [0, 1), of a gray-box ``method``; ``option`` names the option in the hint.

    Raises:
        ArgumentError (a ValueError): not a finite number in the method's range.
    """
    if method == "noise":
        hint = f"give {option} as numbers >= 0 (noise sigmas), e.g. {option} 0.1"
        value = _check_number("level", level, hint)
        if value < 0:
            raise ArgumentError(f"a noise level (sigma) must be >= 0, got {value:g}", hint)
        return value
    hint = f"give {option} as numbers in [0, 1) (dropout rates), e.g. {option} 0.1"
    value = _check_number("level", level, hint)
    if not 0.0 <= value < 1.0:
        raise ArgumentError(f"a dropout level (rate) must be in [0, 1), got {value:g}", hint)
    return value


MAX_SEED = 2**63 - 1  # seeds are recorded in JSON and fit an int64 everywhere
MAX_SAMPLES = 100_000  # N beyond this is almost surely a typo; the variance is settled long before


def _is_integer(value) -> bool:
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_seed(seed) -> int | None:
    """Validate a seed: None (pick one at random) or an integer in [0, 2**63 - 1].

    Raises:
        ArgumentError (a ValueError): ``seed`` is not an integer, or is outside that range.
    """
    hint = f"give --seed as an integer from 0 to {MAX_SEED} (2**63 - 1), e.g. 0"
    if seed is None:
        return None
    if not _is_integer(seed):
        raise ArgumentError(f"seed must be an integer, got {seed!r} ({type(seed).__name__})",
                            hint)
    if not 0 <= int(seed) <= MAX_SEED:
        raise ArgumentError(f"seed must be in [0, 2**63 - 1], got {seed}", hint)
    return int(seed)


def check_samples(samples) -> int:
    """Validate N, the number of perturbed samples: an integer in [2, MAX_SAMPLES].

    Raises:
        ArgumentError (a ValueError): ``samples`` is not an integer, below 2 or above
            MAX_SAMPLES.
    """
    hint = "give --samples N with 2 <= N <= 100000, e.g. 8"
    if not _is_integer(samples):
        raise ArgumentError(f"samples must be an integer, got {samples!r} "
                        f"({type(samples).__name__})", hint)
    if samples < 2:
        raise ArgumentError(f"samples must be an integer >= 2, got {samples}",
                        "variance needs at least 2 samples; give --samples 8")
    if samples > MAX_SAMPLES:
        raise ArgumentError(f"samples N = {samples} is above the limit of {MAX_SAMPLES}: the run "
                        "would take about N times one model run per input",
                        "tens to hundreds of samples settle the variance; give e.g. "
                        "--samples 64")
    return int(samples)


BYTE_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}  # binary: 1K = 1024 B


def parse_bytes(value, name: str = "max_memory") -> int:
    """A memory size in bytes, from a number of bytes or a text like ``"512M"``, ``"2G"``,
    ``"1.5G"``, ``"64KB"`` (units K, M, G, T are powers of 1024; case and a trailing B are
    ignored). ``name`` is the argument named in the error.

    Returns:
        The size as an int, at least 1 (byte).

    Raises:
        ArgumentError (a ValueError): not such a size (negative, zero, NaN, inf, a bool,
            an unknown unit).
    """
    flag = "--" + name.replace("_", "-")
    hint = f"e.g. {flag} 2G (or 512M, or a number of bytes)"
    if isinstance(value, str):
        text = value.strip().upper()
        text = text[:-1] if text.endswith("B") and text[-2:-1] in BYTE_UNITS else text
        try:
            number = float(text[:-1]) * BYTE_UNITS[text[-1]] if text and text[-1] in BYTE_UNITS \
                else float(text)
        except ValueError:
            number = float("nan")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentError(f"{flag} must be a size like 512M or 2G, or a number of bytes, "
                            f"got {value!r}", hint)
    else:
        number = value
    if not (math.isfinite(number) and number >= 1):
        raise ArgumentError(f"{flag} must be a size like 512M or 2G (at least 1 byte), got "
                            f"{value!r}", hint)
    return int(number)


def check_max_memory(value) -> int:
    """Validate a memory budget: bytes (a number >= 1) or a size text like "2G"
    (``parse_bytes``); returned in bytes as an int.

    Raises:
        ArgumentError (a ValueError): ``value`` is not such a size.
    """
    return parse_bytes(value, "max_memory")


def check_count(name: str, value) -> int | None:
    """Validate an optional count such as a chunk size or a thread count: None (chosen
    automatically) or an integer >= 1.

    Raises:
        ArgumentError (a ValueError): ``value`` is not such an integer.
    """
    if value is None:
        return None
    if not _is_integer(value) or value < 1:
        raise ArgumentError(f"{name} must be an integer >= 1, got {value!r}",
                            f"give --{name} 4, or leave it out to have it chosen")
    return int(value)


def parse_nodes(nodes) -> tuple:
    """MC-dropout node names from a comma-separated text ("a,b") or a sequence of names;
    blanks dropped, order kept. Empty (None, "", ()): all Dropout nodes.

    Raises:
        ArgumentError (a ValueError): a name that is not a string.
    """
    if nodes is None:
        return ()
    if isinstance(nodes, str):
        nodes = nodes.split(",")
    if not hasattr(nodes, "__iter__"):
        raise ArgumentError(f"Dropout node names must be text or a list of names, got "
                            f"{nodes!r}", "give --at as comma-separated Dropout node names, "
                            "e.g. --at d1,d2")
    names = tuple(nodes)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ArgumentError(f"Dropout node names must be strings, got {bad[0]!r}",
                            "give --at as comma-separated Dropout node names, e.g. --at d1,d2")
    return tuple(n.strip() for n in names if n.strip())


@dataclasses.dataclass(frozen=True)
class Noise:
    """infer-noise (Mi et al., AAAI 2022): add N(0, sigma^2) to the tensor at ``at``.

    ``at``: a tensor name, a candidate index, "input", or a depth in [0, 1] as text or
    number ("0.5": the middle of the graph; resolved by ``ModelInfo.resolve_location``).
    ``mode='relative'`` scales sigma by the tensor's own standard deviation (computed in
    the graph, over the whole tensor), so levels compare across locations.

    Raises:
        ArgumentError (a ValueError): sigma not a finite number >= 0, an unknown mode.
    """

    sigma: float = 0.1
    at: object = "0.5"
    mode: str = "absolute"

    method = "noise"

    def __post_init__(self):
        sigma = _check_number("sigma", self.sigma, "give --sigma as a number >= 0, e.g. 0.1")
        if sigma < 0:
            raise ArgumentError(f"sigma must be >= 0, got {sigma:g}",
                                "give --sigma as a number >= 0, e.g. 0.1")
        if self.mode not in SIGMA_MODES:
            raise ArgumentError(f"unknown sigma mode {self.mode!r}",
                                "use --sigma-mode absolute or --sigma-mode relative")
        object.__setattr__(self, "sigma", sigma)

    @property
    def level(self) -> float:
        """The noise std, in the tensor's own units (relative mode: in its stds)."""
        return self.sigma

    def with_level(self, level: float) -> "Noise":
        """The same spec at another sigma."""
        return dataclasses.replace(self, sigma=level)

    def describe(self) -> dict:
        """The spec as plain data (method, at, level, ...), recorded in results."""
        return {"method": "noise", "at": str(self.at), "sigma": self.sigma,
                "sigma_mode": self.mode, "level": self.sigma}


@dataclasses.dataclass(frozen=True)
class Dropout:
    """infer-dropout (Mi et al., AAAI 2022): drop elements of the tensor at ``at`` with
    probability ``rate`` (``at`` as for Noise).

    Kept elements are scaled by 1 / (1 - rate), as in training-time dropout.

    Raises:
        ArgumentError (a ValueError): rate not in [0, 1).
    """

    rate: float = 0.1
    at: object = "0.5"

    method = "dropout"

    def __post_init__(self):
        object.__setattr__(self, "rate", check_rate("rate", self.rate))

    @property
    def level(self) -> float:
        """The dropout probability, in [0, 1)."""
        return self.rate

    def with_level(self, level: float) -> "Dropout":
        """The same spec at another rate."""
        return dataclasses.replace(self, rate=level)

    def describe(self) -> dict:
        """The spec as plain data (method, at, level, ...), recorded in results."""
        return {"method": "dropout", "at": str(self.at), "rate": self.rate,
                "level": self.rate}


@dataclasses.dataclass(frozen=True)
class MCDropout:
    """MC-dropout: switch on the model's own Dropout nodes at inference.

    ``nodes`` names the Dropout nodes to activate: a sequence of names or one
    comma-separated text ("d1,d2", as ``--at`` takes them; ``parse_nodes``); empty: all.
    ``rate`` overrides their own ratios (None: each keeps its own).

    Raises:
        ArgumentError (a ValueError): a rate outside [0, 1), a node name not a string.
    """

    rate: float | None = None
    nodes: tuple = ()

    method = "mc-dropout"

    def __post_init__(self):
        if self.rate is not None:
            object.__setattr__(self, "rate", check_rate("rate", self.rate))
        object.__setattr__(self, "nodes", parse_nodes(self.nodes))

    @property
    def level(self) -> float | None:
        """The rate every activated node uses; None: each keeps its own ratio."""
        return self.rate

    def with_level(self, level: float) -> "MCDropout":
        """The same spec with every activated node at ``level``."""
        return dataclasses.replace(self, rate=level)

    def describe(self) -> dict:
        """The spec as plain data (method, at, level, ...), recorded in results."""
        return {"method": "mc-dropout", "at": ",".join(self.nodes) or "all",
                "rate": self.rate, "level": self.rate}


@dataclasses.dataclass(frozen=True)
class Transform:
    """infer-transformation: run the model on rotated/flipped inputs, undo it on outputs.

    ``transforms`` is a named set (d4, rot, flips, hflip, rot180) or a list of
    elements (identity, hflip, vflip, rot90, rot180, rot270, transpose,
    antitranspose). ``layout`` (auto, NCHW, NHWC) says where the input's
    spatial axes are.
    """

    transforms: object = "d4"
    layout: str = "auto"

    method = "transform"
    level = None

    def __post_init__(self):
        from .transforms import parse_transforms

        check_layout(self.layout)
        elements = tuple(parse_transforms(self.transforms))
        object.__setattr__(self, "elements", elements)

    @property
    def names(self) -> list:
        """The transform elements' names, in order (the first is usually identity)."""
        return [e.name for e in self.elements]

    def describe(self) -> dict:
        """The spec as plain data (method, at, level, ...), recorded in results."""
        return {"method": "transform", "at": "input", "transforms": self.names,
                "level": None}


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """Deep ensemble: the same input through every member model.

    ``members`` are the models *beside* the one the estimator is built on, which
    is member 0 (paths, ModelProtos or ModelInfos). Members exported by other
    tools may name their inputs and outputs differently: they are matched by
    position then, and ``renamed`` (filled in when the members are loaded) says
    how. ``notes`` says which files were counted once or skipped when folders were
    expanded (recorded in results).
    """

    members: tuple = ()
    renamed: tuple = dataclasses.field(default=(), compare=False)
    notes: tuple = dataclasses.field(default=(), compare=False)

    method = "ensemble"
    level = None

    def __post_init__(self):
        if isinstance(self.members, (str, bytes, os.PathLike)) or \
                not hasattr(self.members, "__iter__"):
            raise ArgumentError(f"Ensemble members must be a list of models, got "
                            f"{type(self.members).__name__}",
                            "pass Ensemble(['m1.onnx', 'm2.onnx']): the models beside member 0")
        members = tuple(self.members)
        if len(members) < 1:
            raise ArgumentError(f"an ensemble needs at least 2 models, got {len(members) + 1}",
                            "pass several .onnx files (or a folder of them)")
        object.__setattr__(self, "members", members)

    @staticmethod
    def label(m, k: int) -> str:
        """How member ``k`` is named in results: its path, else '<model k>'."""
        if isinstance(m, (str, os.PathLike)):
            return os.fspath(m)
        return getattr(m, "path", None) or f"<model {k}>"

    def describe(self) -> dict:
        """The members beside member 0 (the runner adds member 0 first: it knows it)."""
        d = {"method": "ensemble", "at": "members",
             "members": [self.label(m, i) for i, m in enumerate(self.members, start=1)],
             "level": None}
        if self.renamed:
            d["member_names"] = {label: names for label, names in self.renamed}
        if self.notes:
            d["member_notes"] = list(self.notes)
        return d


@dataclasses.dataclass(frozen=True)
class Entropy:
    """Softmax entropy of one unperturbed run: the training-free classification baseline."""

    method = "entropy"
    level = None

    def describe(self) -> dict:
        """The spec as plain data (method, at, level, ...), recorded in results."""
        return {"method": "entropy", "at": "output", "level": None}


SAMPLED = (Noise, Dropout, MCDropout)  # specs with a level and N random samples
SPECS = SAMPLED + (Transform, Ensemble, Entropy)


def make_spec(method: str, at=None, sigma=None, rate=None, sigma_mode="absolute", nodes=(),
              transforms=None, layout="auto", members=()):
    """Build a spec from CLI-style arguments (``method`` as the CLI names it, one of
    ``names.METHODS``; None for an argument the user did not give).

    For ``mc-dropout``, ``at`` (like ``--at``) names the Dropout nodes, comma-separated,
    as ``nodes`` does. Defaults: sigma 0.1, rate 0.1, at "0.5" (the middle of the graph),
    transforms "d4".

    Raises:
        ArgumentError (a ValueError): an unknown method, an argument the method does not
            take (e.g. sigma for dropout), or a bad value (see the specs).
    """
    if method not in METHODS:
        raise ArgumentError(f"unknown method {method!r}",
                            "use noise, dropout, mc-dropout, transform, ensemble or entropy")
    if method != "transform" and transforms is not None:
        raise ArgumentError(f"--transforms does not apply to --method {method}",
                            "drop it; it is for --method transform")
    if method in ("transform", "ensemble", "entropy"):
        for flag, value, users in (("--sigma", sigma, "noise"), ("--rate", rate,
                                    "dropout and mc-dropout"), ("--at", at,
                                    "noise, dropout (a tensor) and mc-dropout (nodes)")):
            if value is not None:
                raise ArgumentError(f"{flag} does not apply to --method {method}",
                                    f"drop it; it is for {users}")
        return Transform(transforms or "d4", layout) if method == "transform" else \
            Ensemble(tuple(members)) if method == "ensemble" else Entropy()
    wrong = ("--rate", rate) if method == "noise" else ("--sigma", sigma)
    if wrong[1] is not None:
        raise ArgumentError(f"{wrong[0]} does not apply to --method {method}",
                            "use --sigma" if method == "noise" else "use --rate")
    if method == "noise":
        return Noise(sigma=0.1 if sigma is None else sigma, at="0.5" if at is None else at,
                     mode=sigma_mode)
    if method == "dropout":
        return Dropout(rate=0.1 if rate is None else rate, at="0.5" if at is None else at)
    return MCDropout(rate=rate, nodes=parse_nodes(nodes) + parse_nodes(at))
