"""Errors say what really happened: tfue's own refusals keep their hint, onnxruntime's
failures are reported as onnxruntime's, and a method the inputs do not fit is refused
up front."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import toys
from tfue_onnx import Estimator, MCDropout, Noise, TfueError
from tfue_onnx import graph as graphs
from tfue_onnx import runner as runner_module
from tfue_onnx.perturb import Transform

SEQ = ["batch", "seq"]


def text_classifier(path, inputs=("input_ids", "attention_mask"), opset=13):
    """A BERT-like classifier: int64 token ids (and mask) [batch, seq] -> probs [batch, 3]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("Gather", ["emb", inputs[0]], ["h"], name="embed")]
    pooled_in = "h"
    if len(inputs) > 1:
        nodes += [helper.make_node("Cast", [inputs[1]], ["m"], name="cast", to=TensorProto.FLOAT),
                  helper.make_node("Unsqueeze", ["m", "last"], ["m3"], name="unsq"),
                  helper.make_node("Mul", ["h", "m3"], ["hm"], name="mask")]
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "last"))
        pooled_in = "hm"
    nodes += [helper.make_node("ReduceMean", [pooled_in], ["pooled"], name="pool", axes=[1],
                               keepdims=0),
              helper.make_node("MatMul", ["pooled", "w"], ["logits"], name="fc"),
              helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1)]
    graph = helper.make_graph(
        nodes, "text", [helper.make_tensor_value_info(n, TensorProto.INT64, SEQ) for n in inputs],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def tabular_net(path):
    """A float input without image axes: x [batch, 8] -> Gemm -> y [batch, 2]."""
    w = numpy_helper.from_array(np.ones((8, 2), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "tab",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             ["batch", 2])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return str(path)


def image_and_scale_net(path):
    """An image input plus a float scale input: two inputs, so no single image input."""
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Mul", ["c", "scale"], ["y"], name="scale")]
    graph = helper.make_graph(nodes, "two", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, "h", "w"]),
        helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2, "h", "w"])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return str(path)


NO_IMAGE = ("infer-transformation needs one image input (float, [N,C,H,W]/[N,H,W,C]/[N,H,W]); "
            "this model has ")
NO_IMAGE_HINT = ("use a gray-box method instead: --method noise or --method dropout (perturbs "
                 "an inner tensor, any input type)")


@pytest.mark.parametrize("build,inputs", [
    (text_classifier, "2 inputs: input_ids int64 [batch, seq], attention_mask int64 [batch, seq]"),
    (lambda p: text_classifier(p, inputs=("input_ids",), opset=11),
     "1 input: input_ids int64 [batch, seq]"),
    (tabular_net, "1 input: x float32 [batch, 8]"),
    (image_and_scale_net, "2 inputs: x float32 [b, 3, h, w], scale float32 [1]"),
], ids=["bert", "ids-only-opset11", "tabular", "image-and-scale"])
@pytest.mark.parametrize("transforms", ["d4", "flips", "hflip"])
def test_transform_without_an_image_input_is_refused_up_front(tmp_path, build, inputs,
                                                              transforms):
    path = build(tmp_path / "m.onnx")
    with pytest.raises(TfueError) as err:
        Estimator(path, Transform(transforms))  # at construction: before any work
    assert (err.value.message, err.value.hint) == (NO_IMAGE + inputs, NO_IMAGE_HINT)


def test_cli_transform_without_an_image_input(tmp_path, cli):
    path = text_classifier(tmp_path / "bert.onnx")
    np.savez(tmp_path / "pair.npz", input_ids=np.ones((2, 5), np.int64),
             attention_mask=np.ones((2, 5), np.int64))
    want = (f"error: {NO_IMAGE}2 inputs: input_ids int64 [batch, seq], attention_mask int64 "
            f"[batch, seq]. Hint: {NO_IMAGE_HINT}")
    for transforms in ("d4", "flips", "hflip"):
        r = cli("run", path, tmp_path / "pair.npz", "--method", "transform", "--transforms",
                transforms, "-o", tmp_path / "out")
        assert r.exit_code == 2
        assert r.stderr.strip() == want
        assert not (tmp_path / "out").exists()
    # The gray-box methods the hint names do run on this model.
    r = cli("run", path, tmp_path / "pair.npz", "--method", "noise", "--at", "pooled", "-n", 4,
            "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output


def test_build_errors_propagate_with_their_hint(toy, x8, cli, tmp_path):
    """A refusal tfue makes while building a graph is not onnxruntime's, and keeps its hint."""
    path = toy(dropout_ratio=0.3)
    with pytest.raises(TfueError) as err:
        Estimator(path, MCDropout(nodes=("dorp1",)), samples=4)(x8)
    assert (err.value.message, err.value.hint) == (
        "unknown Dropout node 'dorp1'", "the model's Dropout nodes are: 'drop1'")
    np.save(tmp_path / "x.npy", x8[0])
    r = cli("run", path, tmp_path / "x.npy", "--method", "mc-dropout", "--at", "dorp1",
            "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert r.stderr.strip() == ("error: unknown Dropout node 'dorp1'. Hint: the model's Dropout "
                                "nodes are: 'drop1'")
    assert "onnxruntime" not in r.stderr


def _with_bogus_node(monkeypatch):
    """Make every uncertainty graph contain an op onnxruntime does not know."""
    real = graphs.build

    def build(*args, **kwargs):
        ug = real(*args, **kwargs)
        out = ug.model.graph.output[0].name
        node = helper.make_node("TfueBogus", [out], ["tfue/bogus"], name="tfue/bogus")
        ug.model.graph.node.append(node)
        ug.model.graph.output.append(helper.make_tensor_value_info("tfue/bogus",
                                                                   TensorProto.FLOAT, None))
        return ug
    monkeypatch.setattr(runner_module.graphs, "build", build)


@pytest.mark.parametrize("spec,shape", [(Noise(0.1, at="r1"), (1, 3, 8, 8)),
                                        (Transform("d4"), (1, 3, 8, 12)),
                                        (Transform("flips"), (1, 3, 8, 8))])
def test_onnxruntime_failures_are_reported_as_onnxruntimes(toy, monkeypatch, spec, shape):
    """onnxruntime refusing the graph: its own message, no rotation diagnosis (the model
    runs the rotated input; the fault lies elsewhere)."""
    _with_bogus_node(monkeypatch)
    est = Estimator(toy(), spec, **({"samples": 4} if isinstance(spec, Noise) else {}))
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    with pytest.raises(TfueError) as err:
        est(x)
    msg = err.value.message
    assert msg.startswith("onnxruntime cannot run the uncertainty graph (")
    assert "rotated" not in msg
    strategies = ["batched", "loop"] if isinstance(spec, Transform) else \
        ["looped-suffix", "shared-prefix", "batched", "loop"]
    parts = msg[len("onnxruntime cannot run the uncertainty graph ("):-1].split("; ")
    assert [p.split(": ")[:2] for p in parts] == [[name, "onnxruntime rejects the graph"]
                                                  for name in strategies]
    assert all("No Op registered for TfueBogus" in p for p in parts)
    assert err.value.hint == (
        "try another location (--at) or --strategy loop; --verbose shows details"
        if isinstance(spec, Noise) else "the original model runs this input, so this is "
        "tfue's limit for the model; --verbose shows details")
    assert [n.split(":")[0] for n in est.notes if "onnxruntime rejects its graph (" in n] == \
        [f"strategy {name}" for name in strategies]


def test_onnxruntime_failing_at_run_time_is_reported_as_such(toy, x8, monkeypatch):
    """A graph onnxruntime loads but cannot run: its run-time message, not a verdict."""
    real = graphs.build

    def build(*args, **kwargs):
        ug = real(*args, **kwargs)
        g = ug.model.graph
        g.initializer.append(numpy_helper.from_array(np.array([-1, 7], np.int64), "tfue/seven"))
        g.node.append(helper.make_node("Reshape", [g.output[0].name, "tfue/seven"],
                                       ["tfue/odd"], name="tfue/odd"))
        g.output.append(helper.make_tensor_value_info("tfue/odd", TensorProto.FLOAT, None))
        return ug
    monkeypatch.setattr(runner_module.graphs, "build", build)
    est = Estimator(toy(), Noise(0.1, at="r1"), samples=4)
    with pytest.raises(TfueError) as err:
        est(x8)  # y has 128 values per input: not a multiple of 7
    msg = err.value.message
    assert msg.startswith("onnxruntime cannot run the uncertainty graph (looped-suffix: "
                          "onnxruntime fails running the graph: ")
    assert msg.count("onnxruntime fails running the graph: ") == 4 and "Reshape" in msg
    assert "strategy loop: onnxruntime fails running its graph (" in "\n".join(est.notes)


def test_rotation_diagnosis_only_when_the_rotated_shape_fails(tmp_path):
    model = toys.fixed_bias_net(tmp_path / "fb.onnx")  # runs 8x12 only
    x = np.random.default_rng(0).random((1, 3, 8, 12), dtype=np.float32)
    with pytest.raises(TfueError) as err:
        Estimator(model, Transform("rot"))(x)
    assert err.value.message.startswith("the model does not accept the input rotated by 90° "
                                        "(8x12 becomes 12x8): the model failed on input "
                                        "x(1, 3, 12, 8): ")
    assert err.value.hint == "use one of the sets flips, hflip, rot180, or a square input"
    # The same model on an input it cannot run at all: the plain model's failure, not
    # a diagnosis about rotations.
    with pytest.raises(TfueError, match=r"^the model failed on input x\(1, 3, 8, 8\)") as err:
        Estimator(model, Transform("rot"))(x[..., :8])
    assert "rotated" not in str(err.value)


def test_internal_faults_are_not_user_errors(toy, x8, monkeypatch, cli, tmp_path):
    def broken(*args, **kwargs):
        raise KeyError("a bug")
    monkeypatch.setattr(runner_module.graphs, "build", broken)
    with pytest.raises(KeyError):
        Estimator(toy(), Noise(0.1, at="r1"), samples=4)(x8)
    np.save(tmp_path / "x.npy", x8[0])
    with pytest.raises(KeyError):  # a traceback, not "error: ... Hint:" and exit 2
        cli("run", toy(), tmp_path / "x.npy", "--method", "noise", "--at", "r1", "-o",
            tmp_path / "out")


def test_internal_sampling_fault_is_a_runtime_error(toy):
    """What only tfue passes (the sampling mode) is tfue's fault, not the user's."""
    from tfue_onnx.model import inspect_model

    with pytest.raises(RuntimeError, match="tfue internal: unknown sampling") as err:
        graphs.build(inspect_model(toy()), Noise(0.1, at="r1"), sampling="carrier pigeon")
    assert not isinstance(err.value, TfueError)


def test_one_message_two_faces():
    """Messages name options once, as the CLI spells them; str() reads them as Python's
    arguments through errors.PYTHON_NAMES, cli_text() as written."""
    from tfue_onnx.errors import ArgumentError, python_face

    exc = TfueError("'out/x.npz' already exists and would be overwritten",
                    "pass --force to overwrite, or choose another --out folder")
    assert exc.cli_text() == ("'out/x.npz' already exists and would be overwritten. Hint: pass "
                              "--force to overwrite, or choose another --out folder")
    assert str(exc) == ("'out/x.npz' already exists and would be overwritten. Hint: pass "
                        "force=True to overwrite, or choose another out_dir folder")
    assert exc.hint.startswith("pass --force")  # the attributes keep the text as written
    cases = {
        "give --samples 8": "give samples=8",
        "e.g. --max-memory 2G": "e.g. max_memory='2G'",
        "e.g. --mean 0.485,0.456,0.406": "e.g. mean=(0.485, 0.456, 0.406)",
        "give --sigma as a number >= 0, e.g. 0.1": "give sigma as a number >= 0, e.g. 0.1",
        "drop --at auto, or use --method noise": "drop at='auto', or use Noise(...)",
        "use --no-cache or -o out.onnx": "use cache=False or path out.onnx",
        "use --example x.npy": "use example x.npy",
        "--pad 4 needs an image": "pad=4 needs an image",
        "use --sweep-result, --tolerance 0.1.": "use sweep_result, tolerance=0.1.",
        "re-run with --unknown-option 3": "re-run with --unknown-option 3",  # not in the table
        "a--force inside a word": "a--force inside a word",
    }
    for cli, python in cases.items():
        assert python_face(cli) == python, cli
    assert issubclass(ArgumentError, TfueError) and issubclass(ArgumentError, ValueError)


def test_each_face_reads_its_own_spelling(cli, toy, tmp_path, x8):
    from tfue_onnx.files import check_new_file

    path = tmp_path / "m.onnx"
    path.write_bytes(b"")
    with pytest.raises(TfueError) as err:  # Python: the argument
        check_new_file(str(path), force=False)
    assert "force=True" in str(err.value) and "--force" not in str(err.value)
    np.save(tmp_path / "x.npy", x8)
    r = cli("export", toy(), "--method", "noise", "--at", "r1", "-o", path)
    assert r.exit_code == 2 and "--force" in r.stderr and "force=True" not in r.stderr
    r = cli("run", toy(), tmp_path / "x.npy", "--method", "noise", "--sigma", "-1", "-o",
            tmp_path / "o")
    assert r.stderr.strip() == ("error: sigma must be >= 0, got -1. Hint: give --sigma as a "
                                "number >= 0, e.g. 0.1")
    with pytest.raises(ValueError) as err:
        Noise(-1)
    assert str(err.value) == "sigma must be >= 0, got -1. Hint: give sigma as a number >= 0, " \
                             "e.g. 0.1"


def _bad_arguments(toy, x8):
    from tfue_onnx import metrics, segment, transforms
    from tfue_onnx.io import ImageOptions
    from tfue_onnx.layout import image_layout
    from tfue_onnx.model import TensorInfo

    model = toy()
    est = Estimator(model, Noise(0.1, at="0.5"), samples=2, seed=0)
    return {
        "strategy": lambda: Estimator(model, Noise(0.1), strategy="fastest"),
        "provider": lambda: Estimator(model, Noise(0.1), provider="gpu")(x8),
        "chunk": lambda: Estimator(model, Noise(0.1), chunk=0),
        "threads": lambda: Estimator(model, Noise(0.1), threads=0),
        "cache": lambda: Estimator(model, Noise(0.1), cache=3),
        "max_memory": lambda: Estimator(model, Noise(0.1), max_memory="lots"),
        "samples": lambda: Estimator(model, Noise(0.1), samples=1),
        "sigma": lambda: Noise(-0.1),
        "unknown input": lambda: est({"nope": x8}),
        "input rank": lambda: est(x8[0]),
        "NaN input": lambda: est(np.full_like(x8, np.nan)),
        "bootstrap": lambda: metrics.check_bootstrap(5),
        "block sigma": lambda: metrics.check_blocks(-1.0, None),
        "segment sigma": lambda: segment.lcm_blocks(np.zeros((4, 4)), sigma=0),
        "transforms": lambda: transforms.parse_transforms("spin"),
        "layout": lambda: image_layout(TensorInfo("x", "float32", (1, 3, 8, 8)), "CHWN"),
        "channel order": lambda: ImageOptions(channel_order="rbg"),
        "model type": lambda: Estimator(42, Noise(0.1)),
        "estimator layout": lambda: Estimator(model, Noise(0.1), layout="foo"),
        "class axis": lambda: Estimator(model, Noise(0.1), classify=True, class_axis=7),
        "unknown tensor": lambda: Estimator(model, Noise(0.1, at="nosuch")),
        "level below 0": lambda: est(x8, level=-1),
        "level not a number": lambda: est(x8, level="0.1,0.2"),
        "level of a transform": lambda: Estimator(model, Transform("flips"))(x8, level=0.1),
        "class axis not whole": lambda: Estimator(model, Noise(0.1), softmax=True,
                                                  class_axis=1.5),
        "class axis text": lambda: Estimator(model, Noise(0.1), class_axis="a"),
        "classify": lambda: Estimator(model, Noise(0.1), classify="maybe"),
        "io_binding": lambda: Estimator(model, Noise(0.1), io_binding="yes"),
        "provider at build": lambda: Estimator(model, Noise(0.1), provider="tpu"),
        "softmax not a flag": lambda: Estimator(model, Noise(0.1), softmax="no"),
        "keep_samples not a flag": lambda: Estimator(model, Noise(0.1), keep_samples="no"),
        "chunk True": lambda: Estimator(model, Noise(0.1), chunk=True),
        "progress not callable": lambda: est(x8, progress=5),
        "mc-dropout nodes": lambda: MCDropout(nodes=5),
    }


CASES = ["strategy", "provider", "chunk", "threads", "cache", "max_memory", "samples", "sigma",
         "unknown input", "input rank", "NaN input", "bootstrap", "block sigma",
         "segment sigma", "transforms", "layout", "channel order", "model type",
         "estimator layout", "class axis", "unknown tensor", "level below 0",
         "level not a number", "level of a transform", "class axis not whole",
         "class axis text", "classify", "io_binding", "provider at build",
         "softmax not a flag", "keep_samples not a flag", "chunk True", "progress not callable",
         "mc-dropout nodes"]


@pytest.mark.parametrize("case", CASES)
def test_argument_errors_are_value_errors_with_one_line(case, toy, x8):
    from tfue_onnx import ArgumentError

    with pytest.raises(ValueError) as err:
        _bad_arguments(toy, x8)[case]()
    assert isinstance(err.value, ArgumentError) and isinstance(err.value, TfueError)
    text = str(err.value)
    assert "\n" not in text and "Hint:" in text, text
    assert "--" not in text.split("Hint:")[0], text  # Python's face: no CLI spelling


def test_level_errors_name_the_level_on_each_face(cli, toy, tmp_path, x8):
    est = Estimator(toy(), Noise(0.1), samples=2, seed=0)
    with pytest.raises(ValueError) as err:
        est(x8, level=-1)
    assert str(err.value).startswith("a noise level (sigma) must be >= 0, got -1")
    assert str(err.value).endswith("e.g. level=0.1") and "sigma=" not in str(err.value)
    np.save(tmp_path / "x.npy", x8)
    for bad, words in (("-0.1", "a noise level (sigma) must be >= 0"),
                       ("0.1,abc", "--levels must be comma-separated numbers")):
        r = cli("run", toy(), tmp_path / "x.npy", "--method", "noise", "--levels", bad,
                "-o", tmp_path / "o")
        assert r.exit_code == 2 and words in r.output and "0.485" not in r.output, r.output
        assert "--levels" in r.output.split("Hint:")[1]


def test_load_image_mean_of_the_wrong_length_is_a_value_error(tmp_path):
    from PIL import Image

    import tfue_onnx

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    model = toys.conv_net(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"^mean has 2 values"):
        tfue_onnx.load_image(tmp_path / "a.png", model, mean=(0.1, 0.2))


def test_mean_as_text_is_read_like_the_cli_and_bad_text_is_refused(tmp_path):
    from PIL import Image

    import tfue_onnx

    Image.fromarray(np.full((8, 8, 3), 51, np.uint8)).save(tmp_path / "a.png")
    model = toys.conv_net(tmp_path / "m.onnx")
    x = tfue_onnx.load_image(tmp_path / "a.png", model, mean="0.1,0.2,0.3", std="0.5")
    np.testing.assert_allclose(x[0, :, 0, 0], (0.2 - np.array([0.1, 0.2, 0.3])) / 0.5, atol=1e-6,
                               rtol=1e-6)
    with pytest.raises(ValueError, match="^mean must be numbers, got 'a,b,c'"):
        tfue_onnx.load_image(tmp_path / "a.png", model, mean="a,b,c")


def test_entropy_of_a_single_probability_is_refused(tmp_path):
    f = TensorProto.FLOAT
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["p"])], "g",
                              [helper.make_tensor_value_info("x", f, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("p", f, [1, 1, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(ValueError, match="has 1 class on axis 1"):
        Estimator(model, __import__("tfue_onnx").Entropy(), classify=True)
