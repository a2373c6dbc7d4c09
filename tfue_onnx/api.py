"""The Python face of tfue-onnx: an estimator object and ``export``.

>>> from tfue_onnx import Estimator, Noise
>>> est = Estimator("model.onnx", Noise(sigma=0.1, at="0.5"), samples=8, seed=0)
>>> res = est(x)                      # x: numpy array (or dict by input name)
>>> res.output, res.mean, res.variance
>>> est.export("model_uncertainty.onnx")

The CLI is a thin shell over this module; it has no logic this lacks.
"""

from __future__ import annotations

import os

import onnx

from .errors import TfueError
from .external import save_model, writes_data_file
from .io import check_new_file
from .perturb import Dropout, MCDropout, Noise
from .runner import Result, Runner

__all__ = ["Estimator", "Result", "export", "Noise", "Dropout", "MCDropout"]

EXPORT_SAMPLING_NOTE = ("in-graph: onnxruntime's seeded RandomNormalLike/RandomUniformLike; each "
                        "run of a session draws anew, a fresh session repeats the same sequence")


class Estimator(Runner):
    """Training-free uncertainty for one ONNX model and one perturbation.

    Args:
        model: path to an .onnx file (external data is read too) or a ModelProto.
        spec: ``Noise(sigma, at, mode)``, ``Dropout(rate, at)`` or ``MCDropout(rate, nodes)``.
        samples: N, the number of perturbed samples (>= 2).
        chunk: samples per session run (None: automatic); statistics merge across chunks.
            Automatic with looped-suffix: the first input of each shape times real samples
            at chunks 1, 4, 16, ... (up to ``max_memory``) and two thread counts, and the
            rest run at the fastest (``metadata["autotune"]``); with the other strategies,
            as many samples as fit in ``max_memory``.
        seed: makes runs reproducible (None: a random seed, recorded in results). A
            result depends on the input, spec, N and seed only: sample k's draws come
            from (seed, k), whatever the chunks, the strategy or the inputs run before.
        provider: ``auto`` (CUDA when it really loads, else CPU), ``cpu`` or ``cuda``.
        strategy: ``auto`` (the first that passes verification, in the order
            ``looped-suffix``, ``shared-prefix``, ``batched``, ``loop``) or one of them.
            looped-suffix (gray box) runs the model up to the location once per input and
            the rest once more for the unperturbed output, then per chunk of samples.
        keep_samples: also return the samples, shape [N, ...].
        softmax, classify, class_axis: class probabilities (see Runner).
        max_memory: bytes the samples of one run may take; sets the chunk size when
            ``chunk`` is None (estimated from the model's tensor sizes at the input).
        io_binding: keep the inputs on the device across chunks (default: on CUDA).
        pad: reflect-pad the image input by this many pixels on each side of H and W
            before the model (valid-convolution models, whose output loses a border),
            or ``"auto"`` to find the border from the output size (``metadata["pad"]``,
            ``metadata["pad_found"]``). The Pad is part of the model every graph is
            built from and verified against, so an export pads its input too.
            None: no padding.
        layout: auto, NCHW or NHWC: where H and W are in a 4-D input (for ``pad``).
        cache: keep verified graphs and measured chunk choices on disk (tfue_onnx/cache.py)
            so that a later process starts without verifying or measuring again: True
            (``$TFUE_CACHE_DIR``, else the user cache folder), a folder, or False.
        threads: onnxruntime intra-op threads (None: measured with the chunk size).

    Calling the estimator on an array (or a dict of arrays by input name) returns
    a :class:`Result` with ``.output``, ``.mean``, ``.variance`` and ``.metadata``.
    """

    def __call__(self, inputs, level: float | None = None, progress=None) -> Result:
        return self.run(inputs, level=level, progress=progress)

    def export(self, path, example=None, force: bool = False) -> str:
        """Write the verified uncertainty graph with N fixed to ``path``.

        The file runs in plain onnxruntime (no tfue needed) and returns, for each
        float output ``y``: ``y``, ``y.mean`` and ``y.variance``. ``example`` is
        the input verification runs on (default: a synthetic one). Gray-box draws
        happen in the graph (a file has no bank to be fed): each session run draws
        new samples, and a fresh session repeats the same sequence of runs; the
        estimator's own results (fed draws) are not reproduced sample for sample.

        A model whose weights are in external data is written with its weights
        copied into ``path + '.data'`` beside it (never serialised into one proto);
        both files appear only when complete.

        After it, ``exported_files`` lists the paths written (``[path]``, or ``[path,
        path + '.data']``) and ``exported_outputs`` the file's output names.

        Raises:
            TfueError: ``path`` (or its .data) exists without ``force``, or is the
                input model or one of its data files; the model fails on the
                synthetic example (the hint asks for ``example``).
        """
        path = os.fspath(path)
        if self.path and os.path.abspath(path) == os.path.abspath(self.path):
            raise TfueError(f"refusing to overwrite the input model '{path}'",
                            "give another output path with -o")
        check_new_file(path, force)
        if writes_data_file(self.info.model):  # fail before the graph is built
            check_new_file(path + ".data", force)
        # A file has no bank to be fed: its draws are made in the graph (seeded
        # RandomNormalLike / RandomUniformLike).
        try:
            ug = self.standalone_graph(example)
        except TfueError as exc:
            if example is None and exc.message.startswith("the model failed on input"):
                # The synthetic input (free sizes 64) is what the model refused.
                raise TfueError(exc.message + " (a synthetic example input)",
                                "verify on a real input: --example FILE on the command line, "
                                "example= in Python") from exc
            raise
        # N and the levels become plain constants: the file has the model's own inputs.
        model = ug.frozen()
        props = {"tfue.method": self.spec.method, "tfue.location": self.location,
                 "tfue.level": str(self.spec.level), "tfue.samples": str(self.samples),
                 "tfue.seed": str(self.seed), "tfue.strategy": ug.strategy}
        if ug.sampling is not None:
            props["tfue.sampling"] = EXPORT_SAMPLING_NOTE
        if self.conversion:
            props["tfue.converted_opset"] = "%d->%d" % tuple(self.conversion)
        if self.pad:  # the file reflect-pads its input itself
            props["tfue.pad"] = str(self.pad)
        onnx.helper.set_model_props(model, props)
        self.exported_files = save_model(model, path, force=force)
        self.exported_outputs = [o.name for o in model.graph.output]
        return path


def export(model, spec, path, samples: int = 8, seed: int | None = None, example=None,
           force: bool = False, strategy: str = "auto", provider: str = "auto", pad=None,
           layout: str = "auto") -> str:
    """Write the uncertainty graph of ``model`` for ``spec`` to ``path`` (see Estimator.export;
    ``pad`` and ``layout`` as in Estimator)."""
    est = Estimator(model, spec, samples=samples, seed=seed, strategy=strategy, provider=provider,
                    pad=pad, layout=layout)
    return est.export(path, example=example, force=force)
