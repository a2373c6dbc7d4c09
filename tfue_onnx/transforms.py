"""The dihedral group of the square on two spatial axes, as (forward, inverse) pairs.

Every element is "transpose the spatial axes (or not), then flip the first
spatial axis (or not), then flip the second (or not)": 2^3 = 8 elements. The
inverse undoes the flips first, then the transpose. ``rot90`` is numpy's
``np.rot90(x, 1, axes=(h, w))``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import ArgumentError, TfueError


@dataclasses.dataclass(frozen=True)
class D4:
    """One element of the dihedral group: optional transpose, then flips.

    ``flip_h`` flips the first spatial axis (height), ``flip_w`` the second (width).
    Mi et al., "Training-Free Uncertainty Estimation", infer-transformation (the
    transformations whose inverse is exact).
    """

    name: str
    transpose: bool
    flip_h: bool
    flip_w: bool

    @property
    def swaps_axes(self) -> bool:
        """Whether the element swaps height and width (the 90° family)."""
        return self.transpose

    def forward(self, x: np.ndarray, axes=(-2, -1)) -> np.ndarray:
        """Apply the transform to ``x`` (any dtype) on its spatial ``axes`` (h, w); a
        view, shaped like ``x`` with h and w swapped when :attr:`swaps_axes`."""
        h, w = axes
        if self.transpose:
            x = np.swapaxes(x, h, w)
        if self.flip_h:
            x = np.flip(x, h)
        if self.flip_w:
            x = np.flip(x, w)
        return x

    def inverse(self, y: np.ndarray, axes=(-2, -1)) -> np.ndarray:
        """Undo the transform on ``y`` (flips first, then the transpose) on its spatial
        ``axes`` (h, w): ``inverse(forward(x)) == x``; a view of ``y``."""
        h, w = axes
        if self.flip_w:
            y = np.flip(y, w)
        if self.flip_h:
            y = np.flip(y, h)
        if self.transpose:
            y = np.swapaxes(y, h, w)
        return y


_ELEMENTS = [
    D4("identity", False, False, False),
    D4("hflip", False, False, True),      # mirror left-right
    D4("vflip", False, True, False),      # mirror top-bottom
    D4("rot180", False, True, True),
    D4("rot90", True, True, False),       # np.rot90(x, 1): counter-clockwise
    D4("rot270", True, False, True),      # np.rot90(x, 3)
    D4("transpose", True, False, False),
    D4("antitranspose", True, True, True),
]
ELEMENTS = {e.name: e for e in _ELEMENTS}

SETS = {  # the keys are names.TRANSFORM_SETS
    "d4": ["identity", "rot90", "rot180", "rot270", "hflip", "vflip", "transpose",
           "antitranspose"],
    "rot": ["identity", "rot90", "rot180", "rot270"],
    "flips": ["identity", "hflip", "vflip", "rot180"],
    "hflip": ["identity", "hflip"],
    "rot180": ["identity", "rot180"],
}


def parse_transforms(text) -> list:
    """The D4 elements of a named set (d4, rot, flips, hflip, rot180), a
    comma-separated list of element names, or a list or tuple of them.

    Raises:
        TfueError: an unknown name, an element repeated, or fewer than 2 elements (one
            transform gives no variance).
    """
    if isinstance(text, (list, tuple)):
        names = list(text)
    elif text in SETS:
        names = SETS[text]
    else:
        names = [t.strip() for t in str(text).split(",") if t.strip()]
    unknown = [n for n in names if n not in ELEMENTS]
    if unknown or not names:
        raise ArgumentError(f"unknown transform(s) {', '.join(map(repr, unknown)) or repr(text)}",
                        f"use a set ({', '.join(SETS)}) or elements "
                        f"({', '.join(ELEMENTS)}), comma-separated")
    if len(set(names)) != len(names):
        raise TfueError(f"transform list {text!r} repeats an element", "list each one once")
    if len(names) < 2:
        raise TfueError(f"{len(names)} transform gives no variance",
                        "use at least 2, e.g. --transforms hflip (identity + hflip)")
    return [ELEMENTS[n] for n in names]


def usable_sets(square: bool) -> list:
    """Names of the sets (of :data:`SETS`) that fit an input: those without 90°
    rotations when it is not ``square`` (they swap height and width)."""
    return [name for name, members in SETS.items()
            if square or not any(ELEMENTS[m].swaps_axes for m in members)]
