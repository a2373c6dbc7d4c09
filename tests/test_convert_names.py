"""The converted copy of an old-opset model keeps the user's tensor names (issue 9
round 2, class 9).

onnx.version_converter renames the output of a node it replaces (Upsample ->
Resize turns ``u`` into ``_v_10``), so a location there resolved on the original
but not on the copy, and the runner fell back to the loop strategy (refusing an
explicit shared-prefix or batched with the stale reason "needs opset >= 10").
``convert.restore_names`` gives such tensors their names back. Checked on several
converted op kinds: every candidate location of the original resolves on the copy
and runs with shared-prefix, sample k equal to plain onnxruntime on the ORIGINAL
model with the location fed t + sigma * eps_k.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from toys import cut_at, run_plain, with_output

from tfue_onnx import Noise
from tfue_onnx.convert import convert, restore_names
from tfue_onnx.graph.builder import Draw, draw_bank
from tfue_onnx.model import ModelInfo
from tfue_onnx.perturb import Dropout
from tfue_onnx.runner import Estimator

F = TensorProto.FLOAT
RNG = np.random.default_rng(5)


def _w(name, *shape):
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.3).astype(np.float32), name)


def _model(middle, inits, opset, out="m"):
    """x -> Conv -> a -> ``middle`` -> ``out`` -> Conv -> y, at ``opset``."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), *middle,
             helper.make_node("Conv", [out, "w2"], ["y"], pads=[1, 1, 1, 1])]
    x = helper.make_tensor_value_info("x", F, ["N", 3, "H", "W"])
    graph = helper.make_graph(nodes, "g", [x],
                              [helper.make_tensor_value_info("y", F, ["N", 2, None, None])],
                              [_w("w1", 4, 3, 3, 3), _w("w2", 2, 4, 3, 3), *inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 4 if opset < 9 else 5
    return model


def _consts(names, value):
    return [numpy_helper.from_array(np.full(4, value, np.float32), n) for n in names]


def upsample(opset):
    scales = {"scales": [1.0, 1.0, 2.0, 2.0]} if opset < 9 else {}
    inputs = ["a"] if opset < 9 else ["a", "sc"]
    inits = [] if opset < 9 else [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")]
    return _model([helper.make_node("Upsample", inputs, ["u"], mode="nearest", **scales),
                   helper.make_node("Relu", ["u"], ["m"])], inits, opset)


def upsample_chain():
    """Two Upsamples in a row (both outputs renamed), the second read twice."""
    return _model([helper.make_node("Upsample", ["a"], ["u"], scales=[1.0, 1.0, 2.0, 2.0]),
                   helper.make_node("Upsample", ["u"], ["u2"], scales=[1.0, 1.0, 1.0, 1.0]),
                   helper.make_node("Relu", ["u2"], ["r2"]),
                   helper.make_node("Add", ["r2", "u2"], ["m"])], [], 8)


def upsample_feeds_output():
    """An Upsample whose output feeds the last Conv directly."""
    return _model([helper.make_node("Sigmoid", ["a"], ["s"]),
                   helper.make_node("Upsample", ["s"], ["m"], scales=[1.0, 1.0, 2.0, 2.0])], [], 7)


def batchnorm(opset):
    attrs = {"spatial": 1} if opset < 9 else {}
    return _model([helper.make_node("BatchNormalization", ["a", "s", "b", "mu", "v"], ["bn"],
                                    **attrs),
                   helper.make_node("Relu", ["bn"], ["m"])], _consts(["s", "b", "mu", "v"], 1.5),
                  opset)


def dropout(opset):
    outs = ["d"] if opset < 9 else ["d", "dm"]
    return _model([helper.make_node("Dropout", ["a"], outs, ratio=0.3),
                   helper.make_node("Relu", ["d"], ["m"])], [], opset)


def reshape_clip():
    return _model([helper.make_node("Shape", ["a"], ["sa"]),
                   helper.make_node("Reshape", ["a", "sa"], ["rs"]),
                   helper.make_node("Clip", ["rs"], ["c"], min=-1.0, max=1.0),
                   helper.make_node("Relu", ["c"], ["m"])], [], 8)


MODELS = {
    "upsample-op7": lambda: upsample(7), "upsample-op8": lambda: upsample(8),
    "upsample-op9": lambda: upsample(9), "upsample-chain-op8": upsample_chain,
    "upsample-last-op7": upsample_feeds_output, "batchnorm-op7": lambda: batchnorm(7),
    "batchnorm-op9": lambda: batchnorm(9), "dropout-op7": lambda: dropout(7),
    "dropout-op9": lambda: dropout(9), "reshape-clip-op8": reshape_clip,
}


X = np.random.default_rng(0).standard_normal((2, 3, 5, 6)).astype(np.float32)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_location_resolves_on_the_copy_and_runs_shared_prefix(name):
    model = MODELS[name]()
    info = ModelInfo(model)
    conversion = convert(info)
    assert conversion.ok, conversion.error
    onnx.checker.check_model(conversion.info.model)
    copy_names = {c.name for c in conversion.info.candidates}
    # Every location something reads (a Dropout's unread float mask at opset < 10 becomes
    # bool at opset 10: no location on the copy, and perturbing it changes nothing).
    read = {i for n in model.graph.node for i in n.input} | {"y"}
    locations = [c.name for c in info.candidates if c.name in read]
    assert set(locations) <= copy_names, sorted(set(locations) - copy_names)
    ref = run_plain(model, {"x": X})["y"]
    sigma, n, seed = 0.2, 3, 9
    inner = [t for t in locations if t not in ("x", "y")]
    assert inner
    for at in inner:
        t = run_plain(with_output(model, at), {"x": X})[at]
        eps = draw_bank(Draw("", at, "normal", np.dtype(np.float32), 1), seed, t.shape, 0, n,
                        batch_axis=0)
        cut = cut_at(model, at, t.shape)
        want = np.stack([run_plain(cut, {"x": X, at: t + sigma * e.reshape(t.shape)})["y"]
                         for e in eps])
        res = Estimator(model, Noise(sigma, at=at), samples=n, seed=seed, strategy="shared-prefix",
                     provider="cpu", keep_samples=True).run({"x": X})
        assert res.metadata["strategy"] == "shared-prefix", at
        assert res.metadata["converted_opset"] == [info.opset, 13]
        assert res.metadata["at"] == at
        # The copy's ops (BatchNormalization-15, Resize) may round differently.
        np.testing.assert_allclose(res.outputs["y"].output, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res.outputs["y"].samples, want, rtol=1e-4, atol=1e-5,
                                   err_msg=at)


def test_restore_names_maps_the_converters_names_back():
    """Upsample at opset 8 (as in the tester's model): the copy's Resize makes ``u``
    again and the next node reads it; explicit tiled strategies run at ``u``."""
    model = upsample(8)
    from onnx import version_converter

    raw = version_converter.convert_version(model, 13)
    assert "u" not in {o for n in raw.graph.node for o in n.output}  # what the converter does
    renames = restore_names(model, raw)
    assert list(renames.values()) == ["u"]
    [resize] = [n for n in raw.graph.node if n.op_type == "Resize"]
    assert list(resize.output) == ["u"]
    assert "u" in [i for n in raw.graph.node if n.op_type == "Relu" for i in n.input]
    np.testing.assert_allclose(run_plain(raw, {"x": X})["y"], run_plain(model, {"x": X})["y"], rtol=1e-6)
    for strategy in ("shared-prefix", "batched"):
        res = Estimator(model, Dropout(0.3, at="u"), samples=4, seed=1, strategy=strategy,
                     provider="cpu").run({"x": X})
        assert res.metadata["strategy"] == strategy and res.metadata["at"] == "u"
        assert float(res.outputs["y"].variance.mean()) > 1e-6


def test_an_unusable_copy_gives_the_real_reason_for_a_refused_strategy(monkeypatch):
    """When the copy still lacks the location, an explicit batched request is refused
    with that reason, not only "needs opset >= 10"."""
    import tfue_onnx.convert as convert_module

    monkeypatch.setattr(convert_module, "restore_names", lambda original, converted: {})
    with pytest.raises(Exception) as err:
        Estimator(upsample(8), Dropout(0.3, at="u"), samples=2, seed=0, strategy="batched",
               provider="cpu").run({"x": X})
    assert ("needs opset >= 10 (dynamic Slice); the model has opset 8, and the copy converted "
            "to opset 13 has no tensor 'u' (onnx.version_converter replaced it)") in str(err.value)
