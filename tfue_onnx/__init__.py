"""tfue-onnx: training-free uncertainty estimation for any ONNX model.

Perturb a trained model tolerably N times at inference (Gaussian noise or dropout
at an intermediate tensor, or the model's own dropout switched on) and use the
per-element variance of the outputs as an uncertainty map (Mi et al., AAAI 2022).

Heavy modules (onnxruntime, onnx-graphsurgeon) load only when used.
"""

from .names import VERSION  # noqa: E402

__version__ = VERSION

from .errors import ArgumentError, TfueError  # noqa: E402
from .perturb import (Dropout, Ensemble, Entropy, MCDropout, Noise, Transform,  # noqa: E402
                      parse_bytes)


def __getattr__(name):
    # Lazy: importing tfue_onnx (and `tfue --help`) must not load onnxruntime.
    if name in ("Estimator", "Result", "export", "ensemble_from_paths", "split_models"):
        from . import api
        return getattr(api, name)
    if name in ("inspect_model", "load_model", "ModelInfo"):
        from . import model
        return getattr(model, name)
    if name == "choose_location":
        from . import choose
        return choose.choose_location
    if name == "read_result":
        from . import report
        return report.read_result
    if name == "load_image":
        from . import io
        return io.load_image
    raise AttributeError(f"module 'tfue_onnx' has no attribute {name!r}")


__all__ = ["TfueError", "ArgumentError", "parse_bytes", "choose_location",
           "ensemble_from_paths", "split_models", "Noise", "Dropout", "MCDropout", "Transform", "Ensemble", "Entropy",
           "Estimator", "Result", "export",
           "inspect_model", "load_model", "ModelInfo", "read_result",
           "load_image"]
