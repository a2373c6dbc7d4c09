"""The names the library accepts for its choices, defined once (no imports: the CLI's
click choice lists come from here without loading onnx or onnxruntime).

Metrics are ``sweep.METRICS``.
"""

# The package version (setup.cfg reads it from here).
VERSION = "0.1.0"

# Float element types numpy (and so tfue's statistics) handles; bfloat16 is not one.
FLOAT_DTYPES = ("float32", "float64", "float16")

# How the CLI names the perturbation methods (``perturb.make_spec`` takes them).
METHODS = ("noise", "dropout", "mc-dropout", "transform", "ensemble", "entropy")
# Methods whose samples are random draws (their results depend on the seed).
DRAWING_METHODS = ("noise", "dropout", "mc-dropout")
# Methods ``--at auto`` / ``choose.choose_location`` choose a location for.
AUTO_METHODS = ("noise", "dropout")
# Where an image input's channel axis is; auto guesses from the shape.
LAYOUTS = ("auto", "NCHW", "NHWC")
# Noise sigma: absolute, or relative to the tensor's own standard deviation.
SIGMA_MODES = ("absolute", "relative")
CHANNEL_ORDERS = ("rgb", "bgr")
# Execution providers (session.py); auto: CUDA when it really loads, else CPU.
PROVIDERS = ("auto", "cpu", "cuda")
# The named transform sets of infer-transformation (their elements: transforms.SETS).
TRANSFORM_SETS = ("d4", "rot", "flips", "hflip", "rot180")
# Strategies whose uncertainty graph is one model (what export can write);
# looped-suffix runs as two (a prefix once per input, the suffix per chunk).
GRAPH_STRATEGIES = ("shared-prefix", "batched", "loop")
STRATEGIES = ("looped-suffix",) + GRAPH_STRATEGIES
# Loss weights from an uncertainty map (weights.py).
WEIGHT_FORMULAS = ("linear", "normalized")
# What `tfue rank` scores an input by (rank.py).
RANK_SCORES = ("mean", "max", "p95", "entropy", "bald")

__all__ = ["VERSION", "FLOAT_DTYPES", "METHODS", "DRAWING_METHODS", "AUTO_METHODS", "LAYOUTS",
           "SIGMA_MODES", "CHANNEL_ORDERS", "PROVIDERS", "TRANSFORM_SETS", "GRAPH_STRATEGIES", "STRATEGIES",
           "WEIGHT_FORMULAS", "RANK_SCORES"]
