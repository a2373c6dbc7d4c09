"""The Python face of tfue-onnx: an estimator object, ``export``, and what the CLI does to
its arguments before it builds one (so Python has it too).

>>> from tfue_onnx import Estimator, Noise
>>> est = Estimator("model.onnx", Noise(sigma=0.1, at="0.5"), samples=8, seed=0,
...                 max_memory="2G")
>>> res = est(x)                      # x: numpy array (or dict by input name)
>>> res.output, res.mean, res.variance
>>> est.export("model_uncertainty.onnx")

Ensembles from files and folders: ``model, spec = ensemble_from_paths(["m0.onnx",
"members/"])``; ``--at auto``: ``choose.choose_location``. The CLI is a thin shell over
this module; it has no logic this lacks.
"""

from __future__ import annotations

import dataclasses
import os

from .errors import ArgumentError
from .perturb import Dropout, Ensemble, MCDropout, Noise, parse_bytes
from .results import Result
from .runner import Estimator

__all__ = ["Estimator", "Result", "export", "Noise", "Dropout", "MCDropout",
           "ensemble_from_paths", "is_model", "split_models", "parse_bytes"]


def export(model, spec, path, samples: int = 8, seed: int | None = None, example=None,
           force: bool = False, strategy: str = "auto", provider: str = "auto", pad=None,
           layout: str = "auto") -> str:
    """Write the uncertainty graph of ``model`` for ``spec`` to ``path`` (see Estimator.export;
    ``pad`` and ``layout`` as in Estimator)."""
    est = Estimator(model, spec, samples=samples, seed=seed, strategy=strategy, provider=provider,
                    pad=pad, layout=layout)
    return est.export(path, example=example, force=force)


def is_model(path) -> bool:
    """Whether ``path`` names models: an .onnx file, or a folder holding .onnx files and no
    input files (images, .npy/.npz). False for anything else, missing paths included."""
    from .io import ARRAY_EXTS, IMAGE_EXTS

    path = os.fspath(path)
    if os.path.isdir(path):
        names = [f.lower() for f in os.listdir(path)]
        return any(f.endswith(".onnx") for f in names) and \
            not any(f.endswith(IMAGE_EXTS + ARRAY_EXTS) for f in names)
    return path.lower().endswith(".onnx")


def split_models(paths) -> tuple:
    """(models, inputs): the paths that name models (``is_model``) and the rest, each in
    order, as ``tfue run --method ensemble MODEL INPUTS...`` reads its arguments.

    Raises:
        ArgumentError (a ValueError): no input is left besides the models.
    """
    paths = [os.fspath(p) for p in paths]
    models = [p for p in paths if is_model(p)]
    inputs = [p for p in paths if not is_model(p)]
    if not inputs:
        raise ArgumentError("no inputs given besides the ensemble's models",
                            "add image files, .npy/.npz arrays or a folder of them")
    return models, inputs


def ensemble_from_paths(paths) -> tuple:
    """The model and the ``Ensemble`` spec that model files and folders name.

    Folders are expanded into the .onnx files they hold (sorted); the first model found
    is member 0 (the model the Estimator is built on); a file named twice counts once; a
    model in a folder whose inputs or outputs do not match member 0's is skipped
    (``graph.blackbox.collect_members``). What was counted once or skipped is in the
    spec's ``notes`` (recorded in results).

    Args:
        paths: .onnx files and folders of them (str or PathLike), member 0's first.

    Returns:
        (model, spec): member 0's path (str), and an Ensemble of the other members'
        ModelInfos (``spec.members[k].path`` their paths).

    Raises:
        ArgumentError (a ValueError): ``paths`` is one path (not a list), or names
            fewer than 2 models.
        TfueError: a path is missing, a folder holds no model, a file is not ONNX.

    >>> model, spec = ensemble_from_paths(["m0.onnx", "more_members/"])
    >>> est = Estimator(model, spec)
    """
    from .graph.blackbox import collect_members

    if isinstance(paths, (str, bytes, os.PathLike)):
        raise ArgumentError("ensemble_from_paths takes a list of paths, got one path",
                            f"pass [{os.fspath(paths)!r}, ...]")
    infos, notes = collect_members(list(paths))
    spec = Ensemble(tuple(infos[1:]))  # refuses fewer than 2 members
    return infos[0].path, dataclasses.replace(spec, notes=tuple(notes))
