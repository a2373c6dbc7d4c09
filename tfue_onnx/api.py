"""The Python face of tfue-onnx: an estimator object and ``export``.

>>> from tfue_onnx import Estimator, Noise
>>> est = Estimator("model.onnx", Noise(sigma=0.1, at="0.5"), samples=8, seed=0)
>>> res = est(x)                      # x: numpy array (or dict by input name)
>>> res.output, res.mean, res.variance
>>> est.export("model_uncertainty.onnx")

The CLI is a thin shell over this module; it has no logic this lacks.
"""

from __future__ import annotations

from .perturb import Dropout, MCDropout, Noise
from .runner import Estimator
from .results import Result

__all__ = ["Estimator", "Result", "export", "Noise", "Dropout", "MCDropout"]

def export(model, spec, path, samples: int = 8, seed: int | None = None, example=None,
           force: bool = False, strategy: str = "auto", provider: str = "auto", pad=None,
           layout: str = "auto") -> str:
    """Write the uncertainty graph of ``model`` for ``spec`` to ``path`` (see Estimator.export;
    ``pad`` and ``layout`` as in Estimator)."""
    est = Estimator(model, spec, samples=samples, seed=seed, strategy=strategy, provider=provider,
                    pad=pad, layout=layout)
    return est.export(path, example=example, force=force)
