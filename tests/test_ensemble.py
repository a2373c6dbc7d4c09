"""Deep ensembles of members exported by different tools (issue 9, class 8).

Members name their inputs and outputs differently ('x'/'y' vs 'input.1'/'output'),
list them in another order, or come at another opset; folders of members must
not count a model twice nor pick up models that are not members.
"""

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import toys
from tfue_onnx import Estimator
from tfue_onnx.errors import TfueError
from tfue_onnx.perturb import Ensemble


def renamed(src, dst, names):
    """Copy the model at ``src`` to ``dst`` with tensors renamed (old -> new), as another
    exporter would name them; return ``dst``."""
    model = onnx.load(str(src))
    g = model.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = names.get(vi.name, vi.name)
    for node in g.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return str(dst)


def two_io_net(path, seed=0, names=("a", "b", "sum", "prod"), order=(0, 1), out_order=(0, 1),
               opset=13):
    """a [B,3,H,W], b [B,1,H,W] -> sum = conv(a) + b, prod = conv(a) * b (two outputs with
    different shapes, so a member wired to the wrong input or output fails or differs).
    ``order``/``out_order`` list the inputs/outputs in another order."""
    a, b, s, p = names
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((2, 3, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", [a, "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", b], [s]),
             helper.make_node("Conv", [a, "w2"], ["c2"]),
             helper.make_node("Mul", ["c2", b], [p])]
    ins = [helper.make_tensor_value_info(a, TensorProto.FLOAT, ["n", 3, "h", "w"]),
           helper.make_tensor_value_info(b, TensorProto.FLOAT, ["n", 1, "h", "w"])]
    outs = [helper.make_tensor_value_info(s, TensorProto.FLOAT, ["n", 1, "h", "w"]),
            helper.make_tensor_value_info(p, TensorProto.FLOAT, ["n", 2, "h", "w"])]
    graph = helper.make_graph(nodes, "two", [ins[i] for i in order], [outs[i] for i in out_order],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _saved(model, path):
    """The path a builder has just saved ``model`` to."""
    assert model is not None and os.path.exists(path)
    return str(path)


def plain(path, feeds):
    """The member's own outputs in plain onnxruntime, fed by its own input names in order."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, feeds)))


def test_members_with_other_names_match_by_position(toy, tmp_path, x8):
    m0 = toy("m0")  # 'x' -> 'y'
    m1 = renamed(toy("m1", seed=1), tmp_path / "torch.onnx", {"x": "input.1", "y": "output"})
    m2 = renamed(toy("m2", seed=2, opset=11),
                 tmp_path / "tf.onnx", {"x": "images:0", "y": "Identity:0", "r1": "relu"})
    est = Estimator(m0, Ensemble([m1, m2]), keep_samples=True)
    res = est(x8)
    outs = np.stack([plain(m, [x8])[0] for m in (m0, m1, m2)]).astype(np.float64)
    np.testing.assert_allclose(res.output, outs[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.samples, outs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.mean, outs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.variance, outs.var(0), rtol=1e-4, atol=1e-7)
    assert res.metadata["samples"] == 3
    assert res.metadata["member_names"] == {
        m1: {"inputs": {"input.1": "x"}, "outputs": {"output": "y"}},
        m2: {"inputs": {"images:0": "x"}, "outputs": {"Identity:0": "y"}}}
    notes = "\n".join(est.notes)
    assert f"ensemble member 1 ('{m1}') names its tensors differently; matched by position: " \
           "input 'input.1' -> 'x', output 'output' -> 'y'" in notes
    assert f"model: ensemble member '{m2}' converted from opset 11 to 13" in notes, notes
    # The exported ensemble keeps member 0's names and gives the same numbers.
    path = est.export(tmp_path / "ens.onnx")
    var, = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        ["y.variance"], {"x": x8})
    np.testing.assert_allclose(var, outs.var(0), rtol=1e-4, atol=1e-7)


def test_same_names_in_another_order_match_by_name(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.random((1, 3, 6, 5), dtype=np.float32), rng.random((1, 1, 6, 5), dtype=np.float32)
    m0 = two_io_net(tmp_path / "m0.onnx")
    m1 = two_io_net(tmp_path / "m1.onnx", seed=1, order=(1, 0), out_order=(1, 0))
    # Other names, same positions: wired by position.
    m2 = two_io_net(tmp_path / "m2.onnx", seed=2, names=("in0", "in1", "out0", "out1"))
    est = Estimator(m0, Ensemble([m1, m2]), keep_samples=True)
    res = est({"a": a, "b": b})
    outs0 = [plain(m0, [a, b]), plain(m1, [b, a]), plain(m2, [a, b])]
    sums = np.stack([outs0[0][0], outs0[1][1], outs0[2][0]])  # m1 lists 'sum' second
    prods = np.stack([outs0[0][1], outs0[1][0], outs0[2][1]])
    np.testing.assert_allclose(res.outputs["sum"].samples, sums, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.outputs["sum"].variance, sums.var(0), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(res.outputs["prod"].mean, prods.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.outputs["prod"].variance, prods.var(0), rtol=1e-4, atol=1e-7)
    assert res.metadata["member_names"] == {
        m2: {"inputs": {"in0": "a", "in1": "b"}, "outputs": {"out0": "sum", "out1": "prod"}}}


@pytest.mark.parametrize("make,message", [
    (lambda d: two_io_net(d / "bad.onnx", names=("p", "q", "r", "s"), order=(1, 0)),
     "input 0 ('q') has shape ['n', 1, 'h', 'w'], not ['n', 3, 'h', 'w'] "
     "(matched by position to 'a')"),
    (lambda d: renamed(two_io_net(d / "t.onnx", opset=13), d / "bad.onnx", {"sum": "s0"}),
     None),  # one output renamed: the names differ, so positions are used, and they match
    (lambda d: _saved(toys.conv_net(d / "bad.onnx"), d / "bad.onnx"),
     "it has 1 inputs ['x'], the first model 2 ['a', 'b']"),
])
def test_refusals_name_member_position_and_difference(tmp_path, make, message):
    m0 = two_io_net(tmp_path / "m0.onnx")
    bad = make(tmp_path)
    if message is None:
        est = Estimator(m0, Ensemble([bad]))
        assert est.spec.renamed == ((str(tmp_path / "bad.onnx"), {"inputs": {},
                                                                   "outputs": {"s0": "sum"}}),)
        return
    with pytest.raises(TfueError) as err:
        Estimator(m0, Ensemble([bad]))
    text = str(err.value)
    assert f"ensemble member '{tmp_path / 'bad.onnx'}' does not match" in text
    assert message in text and "names may differ" in text


def test_dtype_and_output_count_differences(tmp_path, toy):
    a = toys.classifier_net(tmp_path / "a.onnx")
    b = toys.classifier_net(tmp_path / "b.onnx", dtype=TensorProto.DOUBLE, input_name="image")
    with pytest.raises(TfueError, match=r"input 0 \('image'\) has dtype float64, not float32 "
                                        r"\(matched by position to 'x'\)"):
        Estimator(a, Ensemble([b]))
    twin = _mcdropout_twin(tmp_path / "twin.onnx")
    with pytest.raises(TfueError, match=r"it has 2 outputs \['y', 'mask'\], the first model 1 "
                                        r"\['y'\]"):
        Estimator(toy(), Ensemble([twin]))


def test_bad_members_argument():
    with pytest.raises(TfueError, match="Ensemble members must be a list of models, got str"):
        Ensemble("m1.onnx")
    with pytest.raises(TfueError, match="ensemble member 1 is a int, not a model"):
        Estimator(toys.conv_net(), Ensemble([3]))


def _mcdropout_twin(path):
    """The toy with a second output (a dropout mask), as an MC-dropout export might be."""
    model = toys.conv_net(None, dropout_ratio=0.2)
    drop = next(n for n in model.graph.node if n.op_type == "Dropout")
    drop.output.append("mask")
    model.graph.output.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, None))
    onnx.save(model, str(path))
    return str(path)


def test_folder_of_members_cli(cli, tmp_path, x8):
    folder = tmp_path / "models"
    folder.mkdir()
    toys.conv_net(folder / "m0.onnx")
    toys.conv_net(folder / "tmp.onnx", seed=1)
    renamed(folder / "tmp.onnx", folder / "m1.onnx", {"x": "input.1", "y": "output"})
    os.remove(folder / "tmp.onnx")
    _mcdropout_twin(folder / "m0_mcdropout.onnx")
    (folder / "notes.txt").write_text("not a model")
    np.save(tmp_path / "x.npy", x8)
    m0, m1, twin = (str(folder / n) for n in ("m0.onnx", "m1.onnx", "m0_mcdropout.onnx"))
    outs = np.stack([plain(m, [x8])[0] for m in (m0, m1)])
    for k, models in enumerate([[m0, folder], [folder], [m0, m0, m1], [folder, m1]]):
        out = tmp_path / f"out{k}"
        r = cli("run", *models, tmp_path / "x.npy", "--method", "ensemble", "--out", out,
                "--json", "--verbose")
        assert r.exit_code == 0, r.output
        s = json.loads(r.stdout)
        assert s["samples"] == 2, models
        assert s["location"] == f"{m0}, {m1}" and s["members"] == [m0, m1]
        assert f"tfue: ensemble of 2 member(s): {m0}, {m1}" in r.stderr
        assert s["member_names"] == {m1: {"inputs": {"input.1": "x"},
                                          "outputs": {"output": "y"}}}
        assert "matched by position: input 'input.1' -> 'x'" in r.stderr  # --verbose
        if folder in models:
            skipped = f"skipped '{twin}': not a member like '{m0}' (it has 2 outputs"
            assert skipped in r.stderr and any(skipped in n for n in s["member_notes"])
        with np.load(out / "x.npz") as z:
            np.testing.assert_allclose(z["variance"], outs.var(0), rtol=1e-4, atol=1e-7)
    assert "is the same file as member" in cli(
        "run", m0, m0, m1, tmp_path / "x.npy", "--method", "ensemble", "--out",
        tmp_path / "o9").stderr
    # A model named explicitly must match: refused with the exact difference.
    r = cli("run", m0, twin, tmp_path / "x.npy", "--method", "ensemble", "--out", tmp_path / "o")
    assert r.exit_code == 2 and not (tmp_path / "o").exists()
    assert f"error: ensemble member '{twin}' does not match '{m0}': it has 2 outputs" in r.stderr
    # Only one member left after deduplication: not an ensemble.
    r = cli("run", m0, m0, tmp_path / "x.npy", "--method", "ensemble", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "an ensemble needs at least 2 models, got 1" in r.stderr


def softmax_net(path, opset, seed=0):
    """x [B,3,H,W] -> Conv -> Softmax(axis=1) -> p: before opset 13 the Softmax normalises
    over all of C*H*W, from 13 over C alone, so a member merged without conversion would
    silently change its numbers."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Softmax", ["c"], ["p"], axis=1)]
    graph = helper.make_graph(
        nodes, "sm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("opsets", [(13, 11), (11, 13), (13, 12)])
def test_members_at_other_opsets_keep_their_own_semantics(tmp_path, x8, opsets):
    m0 = softmax_net(tmp_path / "m0.onnx", opsets[0])
    m1 = softmax_net(tmp_path / "m1.onnx", opsets[1], seed=1)
    est = Estimator(m0, Ensemble([m1]), keep_samples=True, classify=False)
    res = est(x8)
    outs = np.stack([plain(m, [x8])[0] for m in (m0, m1)])
    np.testing.assert_allclose(res.samples, outs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.variance, outs.var(0), rtol=1e-4, atol=1e-9)
    which = 1 if opsets[1] < opsets[0] else 0  # the older member is converted up
    assert any(f"model: ensemble member '{(m0, m1)[which]}' converted from opset "
               f"{min(opsets)} to {max(opsets)}" in n for n in est.notes), est.notes
    graph = est.uncertainty_graph(x8).model
    assert [i.version for i in graph.opset_import if i.domain == ""] == [max(opsets)]


def test_old_ir_member_with_weights_listed_as_inputs(toy, tmp_path, x8):
    # IR 3 / opset 7 exports list every initializer as a graph input too; only the real
    # input is matched (by position here, as the names differ), the model is converted up.
    toys.conv_net(tmp_path / "old.onnx", opset=7, seed=3)
    old = renamed(tmp_path / "old.onnx", tmp_path / "old_r.onnx", {"x": "data", "y": "prob"})
    new = toy("new", seed=4)
    for order in ([new, old], [old, new]):
        est = Estimator(order[0], Ensemble(order[1:]))
        res = est(x8)
        outs = np.stack([plain(m, [x8])[0] for m in order])
        np.testing.assert_allclose(res.output, outs[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res.variance, outs.var(0), rtol=1e-4, atol=1e-7)
        assert any("converted from opset 7 to 13" in n for n in est.notes)


@pytest.mark.parametrize("k", [2, 3])
def test_summary_members_list_member_zero_like_stderr(cli, tmp_path, x8, k):
    """summary.json's 'members' names every member, member 0 first, as stderr does."""
    paths = [str(tmp_path / f"m{i}.onnx") for i in range(k)]
    for i, p in enumerate(paths):
        toys.conv_net(p, seed=i)
    np.save(tmp_path / "x.npy", x8)
    r = cli("run", *paths, tmp_path / "x.npy", "--method", "ensemble", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["members"] == paths and summary["samples"] == k
    assert f"tfue: ensemble of {k} member(s): {', '.join(paths)}" in r.stderr


def test_api_members_without_paths_are_labelled_by_position(tmp_path, x8):
    m0, m1 = toys.conv_net(None), toys.conv_net(None, seed=1)
    res = Estimator(m0, Ensemble([m1])).run(x8)
    assert res.metadata["members"] == ["<model 0>", "<model 1>"]
