"""Old opsets (7, 8, 9) get every strategy and method through a converted, verified copy."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import toys
from tfue_onnx import Dropout, Estimator, MCDropout, Noise, TfueError
from tfue_onnx import graph as graphs
from tfue_onnx.convert import conversion_command, convert
from tfue_onnx.model import inspect_model
from tfue_onnx.perturb import Ensemble, Transform
from tfue_onnx.transforms import ELEMENTS

OPSETS = (7, 8, 9)


def _finish(nodes, inits, opset, x_shape, y_shape, name):
    graph = helper.make_graph(nodes, name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3 if opset < 8 else 4
    if model.ir_version < 4:  # IR 3: every initializer is also a graph input
        model.graph.input.extend(helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
                                 for i in inits)
    onnx.checker.check_model(model)
    return model


def sr_net(path, opset, dropout=0.2, dropout_name="drop", seed=0):
    """An SR-like model in the style of its opset: Conv -> BatchNormalization (``spatial``
    attribute before opset 9) -> Relu -> Reshape by a shape input and back (through
    Shape) -> Dropout (ratio attribute) -> Upsample x2 (scales attribute before 9, input
    at 9) -> Conv: x [B,3,H,W] -> y [B,3,2H,2W]."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    inits = [numpy_helper.from_array(w(4, 3, 3, 3), "w1"), numpy_helper.from_array(w(4), "b1"),
             numpy_helper.from_array(np.abs(w(4)) + 1, "bn_scale"),
             numpy_helper.from_array(w(4), "bn_bias"), numpy_helper.from_array(w(4), "bn_mean"),
             numpy_helper.from_array(np.abs(w(4)) + 0.5, "bn_var"),
             numpy_helper.from_array(np.array([0, 4, -1], np.int64), "flat_shape"),
             numpy_helper.from_array(w(3, 4, 3, 3), "w2")]
    bn = {"epsilon": 1e-5, **({"spatial": 1} if opset < 9 else {})}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean",
                                                     "bn_var"], ["bn"], name="bn", **bn),
             helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
             helper.make_node("Shape", ["r1"], ["r1_shape"], name="shape"),
             helper.make_node("Reshape", ["r1", "flat_shape"], ["flat"], name="flatten"),
             helper.make_node("Relu", ["flat"], ["flat_r"], name="relu2"),
             helper.make_node("Reshape", ["flat_r", "r1_shape"], ["r2"], name="unflatten")]
    mid = "r2"
    if dropout is not None:
        nodes.append(helper.make_node("Dropout", ["r2"], ["d"], name=dropout_name, ratio=dropout))
        mid = "d"
    if opset >= 9:
        inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
        nodes.append(helper.make_node("Upsample", [mid, "scales"], ["up"], name="up"))
    else:
        nodes.append(helper.make_node("Upsample", [mid], ["up"], name="up",
                                      scales=[1.0, 1.0, 2.0, 2.0]))
    nodes.append(helper.make_node("Conv", ["up", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]))
    model = _finish(nodes, inits, opset, ["b", 3, "h", "w"], ["b", 3, "H", "W"], "sr")
    onnx.save(model, str(path))
    return str(path)


def scaler_net(path):
    """Opset 8 with ImageScaler (an experimental op onnxruntime runs, as old zoo models
    such as tiny-yolov2 have): onnx.version_converter cannot convert it."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((2, 3, 3, 3)) * 0.5)
                                     .astype(np.float32), "w")]
    nodes = [helper.make_node("ImageScaler", ["x"], ["s"], name="scaler", scale=0.5,
                              bias=[0.1, 0.2, 0.3]),
             helper.make_node("Conv", ["s", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    onnx.save(_finish(nodes, inits, 8, ["b", 3, "h", "w"], ["b", 2, "h", "w"], "scaler"),
              str(path))
    return str(path)


def _plain(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(params=["conv", "sr"])
def old_model(request, tmp_path):
    """(opset -> path) builder for a conv net with Dropout and the SR-like net."""
    def make(opset):
        path = tmp_path / f"{request.param}{opset}.onnx"
        if request.param == "conv":
            return toys.conv_net(path, opset=opset, dropout_ratio=0.3) and str(path)
        return sr_net(path, opset)
    return make


X = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("spec", [Noise(0.3, at="0.5"), Dropout(0.3, at="r1"), MCDropout()],
                         ids=["noise", "dropout", "mc-dropout"])
def test_gray_box_methods_run_tiled_on_a_converted_copy(old_model, opset, spec):
    path = old_model(opset)
    before = _digest(path)
    est = Estimator(path, spec, samples=6, seed=0)
    zero = est(X, level=0.0)
    meta = zero.metadata
    assert meta["converted_opset"] == [opset, 13]
    assert meta["strategy"] in ("looped-suffix", "shared-prefix", "batched")
    assert any(n.startswith(f"model: opset {opset} converted to 13 with onnx.version_converter")
               for n in est.notes)
    # Level 0 gives the ORIGINAL model's outputs exactly.
    ref = _plain(path, X)
    np.testing.assert_allclose(zero.output, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(zero.mean, ref, rtol=1e-5, atol=1e-6)
    assert float(zero.variance.max()) == 0.0
    assert float(est(X).variance.mean()) > 1e-6
    assert _digest(path) == before  # the user's file is never changed


@pytest.mark.parametrize("opset", OPSETS)
def test_locations_mean_the_users_graph(old_model, opset):
    path = old_model(opset)
    original = inspect_model(path)
    for at in ("0.5", "0.9", 2):
        want = original.resolve_location(at).name
        assert Estimator(path, Noise(0.1, at=at), samples=2).location == want


@pytest.mark.parametrize("opset", OPSETS)
def test_mc_dropout_node_names_resolve_after_conversion(tmp_path, opset):
    named = sr_net(tmp_path / "named.onnx", opset, dropout=0.4, dropout_name="drop")
    res = Estimator(named, MCDropout(nodes=("drop",)), samples=4, seed=0)(X)
    assert res.metadata["converted_opset"] == [opset, 13]
    assert res.metadata["at"] == "drop" and res.metadata["rate"] is None
    assert res.metadata["strategy"] in ("looped-suffix", "shared-prefix", "batched")
    # An unnamed Dropout node is known by its position in the user's graph; the
    # converter inserts nodes before it, and the name still resolves.
    unnamed = sr_net(tmp_path / "unnamed.onnx", opset, dropout=0.4, dropout_name="")
    [d] = inspect_model(unnamed).dropouts
    assert d.name == "Dropout_7"
    converted = convert(inspect_model(unnamed))
    assert [x.name for x in converted.info.dropouts] == ["Dropout_7"]
    assert converted.info.dropouts[0].ratio == pytest.approx(0.4)
    est = Estimator(unnamed, MCDropout(nodes=("Dropout_7",)), samples=4, seed=0)
    assert float(est(X).variance.mean()) > 0
    with pytest.raises(TfueError, match="unknown Dropout node 'drop'.*Hint: the model's "
                                        "Dropout nodes are: 'Dropout_7'"):
        Estimator(unnamed, MCDropout(nodes=("drop",)), samples=4)(X)


def _transform_reference(path, x, names):
    """The mean and variance of infer-transformation, by numpy + onnxruntime."""
    samples = []
    for name in names:
        e = ELEMENTS[name]
        y = _plain(path, np.ascontiguousarray(e.forward(x, axes=(2, 3))))
        samples.append(e.inverse(y, axes=(2, 3)))
    samples = np.stack(samples)
    return samples.mean(axis=0), samples.var(axis=0)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("transforms,shape", [("d4", (2, 3, 8, 8)), ("flips", (1, 3, 6, 10))])
def test_transforms_on_old_opsets_match_numpy(tmp_path, opset, transforms, shape):
    path = sr_net(tmp_path / "sr.onnx", opset)  # its output is 2x the input: H, W still undone
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    res = Estimator(path, Transform(transforms), seed=0)(x)
    assert res.metadata["converted_opset"] == [opset, 13]
    assert res.metadata["strategy"] == "batched"
    mean, var = _transform_reference(path, x, res.metadata["transforms"])
    np.testing.assert_allclose(res.output, _plain(path, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.mean, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.variance, var, rtol=1e-3, atol=1e-6)
    assert float(res.variance.mean()) > 1e-4


@pytest.mark.parametrize("opset", OPSETS)
def test_ensemble_of_old_opset_models(tmp_path, opset):
    a = sr_net(tmp_path / "a.onnx", opset, seed=0)
    b = sr_net(tmp_path / "b.onnx", opset, seed=1)
    res = Estimator(a, Ensemble((b,)), seed=0)(X)
    assert res.metadata["strategy"] == "batched"
    assert "converted_opset" not in res.metadata  # members are joined at their own opset
    ys = np.stack([_plain(a, X), _plain(b, X)])
    np.testing.assert_allclose(res.mean, ys.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.variance, ys.var(axis=0), rtol=1e-3, atol=1e-6)


def test_loop_request_needs_no_conversion(tmp_path):
    path = sr_net(tmp_path / "m.onnx", 9)
    est = Estimator(path, Noise(0.2, at="r1"), samples=4, seed=0, strategy="loop")
    res = est(X)
    assert res.metadata["strategy"] == "loop" and "converted_opset" not in res.metadata
    assert est.info is est.original


def test_unconvertible_model_falls_back_to_loop_for_gray_box(tmp_path):
    path = scaler_net(tmp_path / "scaler.onnx")
    est = Estimator(path, Noise(0.2, at="input"), samples=4, seed=0)
    zero = est(X, level=0.0)
    assert zero.metadata["strategy"] == "loop" and "converted_opset" not in zero.metadata
    np.testing.assert_allclose(zero.mean, _plain(path, X), rtol=1e-5, atol=1e-6)
    assert ("model: opset 8 could not be converted to 13 (onnx.version_converter has no "
            "schema for op 'ImageScaler' (an experimental or removed op), so it cannot "
            "convert it); the shared-prefix and batched strategies need opset >= 10, so only "
            "the loop strategy applies") in est.notes
    assert "strategy shared-prefix: not available (needs opset >= 10 (dynamic Slice); the " \
           "model has opset 8, and converting a copy to opset 13 failed: onnx.version_converter " \
           "has no schema for op 'ImageScaler' (an experimental or removed op), so it cannot " \
           "convert it)" in est.notes


UNCONVERTIBLE = ("infer-transformation needs opset >= 10 and the model has opset 8; converting "
                 "a copy to opset 13 failed: onnx.version_converter has no schema for op "
                 "'ImageScaler' (an experimental or removed op), so it cannot convert it")


def test_unconvertible_model_refuses_transforms_with_the_conversion_hint(tmp_path, cli):
    path = scaler_net(tmp_path / "scaler.onnx")
    hint = ("re-export the model at opset >= 10, or replace that op and convert it with "
            "onnx.version_converter: " + conversion_command(path))
    with pytest.raises(TfueError) as err:
        Estimator(path, Transform("flips"))
    assert (err.value.message, err.value.hint) == (UNCONVERTIBLE, hint)
    np.save(tmp_path / "x.npy", X[0])
    r = cli("run", path, tmp_path / "x.npy", "--method", "transform", "--transforms", "hflip",
            "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert r.stderr.strip() == f"error: {UNCONVERTIBLE}. Hint: {hint}"
    assert not (tmp_path / "out").exists()


def test_the_hints_conversion_command_works(tmp_path):
    """The command the hint gives, run as printed, converts a convertible model; tfue
    then runs infer-transformation on the result without converting again."""
    path = sr_net(tmp_path / "m9.onnx", 9)
    with pytest.raises(TfueError) as err:  # the builder's own check, for direct callers
        graphs.build(inspect_model(path), Transform("flips"), "batched")
    command = err.value.hint.split("onnx.version_converter: ", 1)[1]
    assert command == conversion_command(path)
    assert command.startswith("python -c ")
    subprocess.run(sys.executable + command[len("python"):], shell=True, check=True)
    converted = str(tmp_path / "m9_opset13.onnx")
    assert inspect_model(converted).opset == 13
    x = np.random.default_rng(2).random((1, 3, 6, 10), dtype=np.float32)
    res = Estimator(converted, Transform("flips"), seed=0)(x)
    assert "converted_opset" not in res.metadata
    mean, var = _transform_reference(path, x, res.metadata["transforms"])  # the original's
    np.testing.assert_allclose(res.mean, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.variance, var, rtol=1e-3, atol=1e-6)


def test_cli_records_the_conversion(tmp_path, cli):
    path = sr_net(tmp_path / "m.onnx", 9)
    np.save(tmp_path / "x.npy", X[0])
    out = tmp_path / "out"
    r = cli("run", path, tmp_path / "x.npy", "--method", "noise", "--at", "r1", "-n", 4,
            "--seed", 0, "-o", out, "-v")
    assert r.exit_code == 0, r.output
    assert "tfue: model: opset 9 converted to 13 with onnx.version_converter" in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["converted_opset"] == [9, 13]
    assert summary["strategy"] in ("looped-suffix", "shared-prefix", "batched")


@pytest.mark.parametrize("opsets", [(9, 7), (9, 13), (13, 8)])
def test_ensemble_members_of_different_opsets_join_at_the_newest(tmp_path, opsets):
    def member(name, opset, seed):
        path = sr_net(tmp_path / name, min(opset, 9), seed=seed)
        if opset == 13:  # an opset-13 export of the same network (Upsample is gone at 13)
            onnx.save(convert(inspect_model(path)).info.model, path)
        return path
    a, b = member("a.onnx", opsets[0], 0), member("b.onnx", opsets[1], 1)
    est = Estimator(a, Ensemble((b,)), seed=0)
    res = est(X)
    newest, oldest = max(opsets), min(opsets)
    converted = a if opsets[0] == oldest else b
    assert (f"model: ensemble member '{converted}' converted from opset {oldest} to {newest} "
            "(the newest member's) with onnx.version_converter (a copy)") in est.notes
    assert res.metadata.get("converted_opset") == ([oldest, newest] if converted == a else None)
    ys = np.stack([_plain(a, X), _plain(b, X)])
    np.testing.assert_allclose(res.mean, ys.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.variance, ys.var(axis=0), rtol=1e-3, atol=1e-6)


def test_ensemble_member_that_cannot_be_converted(tmp_path):
    old = scaler_net(tmp_path / "scaler.onnx")  # opset 8, x [b,3,h,w] -> y [b,2,h,w]
    new = toys.conv_net(tmp_path / "new.onnx", opset=13) and str(tmp_path / "new.onnx")
    with pytest.raises(TfueError) as err:
        Estimator(new, Ensemble((old,)))
    assert err.value.message == (
        f"ensemble member '{old}' has opset 8 and another member 13; converting a copy to 13 "
        "failed: onnx.version_converter has no schema for op 'ImageScaler' (an experimental "
        "or removed op), so it cannot convert it")
    assert err.value.hint == ("export every member at the same opset, or convert this one with "
                              "onnx.version_converter: " + conversion_command(old, 13))


@pytest.mark.parametrize("opset", OPSETS)
def test_appended_softmax_on_a_converted_copy(tmp_path, opset):
    """--softmax is appended to the user's graph first; the copy is converted after, and
    verified against the original logits model with the softmax."""
    path = toys.classifier_net(tmp_path / "logits.onnx", softmax=False, opset=opset)
    x = np.random.default_rng(3).random((2, 3, 8, 8), dtype=np.float32)
    logits = _plain(path, x)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    res = Estimator(path, Noise(0.5, at="r"), samples=4, seed=0, softmax=True)(x, level=0.0)
    assert res.metadata["converted_opset"] == [opset, 13]
    assert res.metadata["classes"] == {"outputs": {"p": 1}, "softmax_added": True}
    np.testing.assert_allclose(res.mean, probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.entropy, -(probs * np.log(probs)).sum(1), rtol=1e-4)


@pytest.fixture
def wrong_conversion(monkeypatch):
    """The opset converter made to change the numbers (w2 scaled by 1.01)."""
    import tfue_onnx.convert as convert_module

    real = convert_module.convert

    def wrong(info, target=13):
        conversion = real(info, target)
        w = next(i for i in conversion.info.model.graph.initializer if i.name == "w2")
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.01, "w2"))
        return conversion
    monkeypatch.setattr(convert_module, "convert", wrong)


def test_a_wrong_conversion_is_caught_and_the_original_model_used(tmp_path, wrong_conversion):
    """Verification compares against the ORIGINAL model: a converter that changed the
    numbers is never used; the loop strategy runs the model at its own opset."""
    path = sr_net(tmp_path / "m.onnx", 9)
    est = Estimator(path, Noise(0.2, at="r1"), samples=4, seed=0)
    zero = est(X, level=0.0)
    assert zero.metadata["strategy"] == "loop" and "converted_opset" not in zero.metadata
    np.testing.assert_allclose(zero.mean, _plain(path, X), rtol=1e-5, atol=1e-6)
    notes = "\n".join(est.notes)
    assert "strategy shared-prefix: failed verification (output of 'y' differs" in notes
    assert "model: no graph of the copy converted to opset 13 passed; back to the original " \
           "model" in notes


def test_a_wrong_conversion_is_named_when_transforms_cannot_fall_back(tmp_path,
                                                                     wrong_conversion):
    path = sr_net(tmp_path / "m.onnx", 9)
    with pytest.raises(TfueError) as err:
        Estimator(path, Transform("flips"))(X)
    assert err.value.message.startswith(
        "no uncertainty graph (built from the copy converted from opset 9 to 13) passed "
        "verification against the original model (batched: ")
    assert "of 'y' differs from the original output by 0.13" in err.value.message
    assert err.value.hint.startswith("re-export the model at opset >= 10; ")


def test_ir3_model_without_initializer_inputs_converts(tmp_path):
    """IR 3 wants initializers listed as graph inputs; exporters often left them out
    (onnxruntime runs such files). The converter refuses them as they are; tfue converts
    a copy raised to IR 4, and infer-transformation runs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("LeakyRelu", ["c"], ["y"], alpha=0.1)], "ir3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        [numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 8)])
    m.ir_version = 3
    path = str(tmp_path / "ir3.onnx")
    onnx.save(m, path)
    from onnx import version_converter
    with pytest.raises(Exception, match="undefined"):
        version_converter.convert_version(m, 13)
    x = np.random.default_rng(1).random((1, 3, 6, 6), dtype=np.float32)
    res = Estimator(path, Transform("flips"))(x)
    assert res.metadata["converted_opset"] == [8, 13]
    ys = np.stack([np.flip(_plain(path, np.ascontiguousarray(np.flip(x, a))), a) if a else
                   _plain(path, x) for a in (None, 3, 2, (2, 3))])
    np.testing.assert_allclose(res.mean, ys.mean(0), rtol=1e-5, atol=1e-6)
