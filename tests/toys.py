"""Small ONNX models built in the tests, for cases real models don't cover."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _w(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32) * 0.5


def _save(path, nodes, inits, x_shape, y_shape, name="toy", opset=13, x="x", y="y",
          dtype=TensorProto.FLOAT):
    """Make, check and save a one-input, one-output model; return its path."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(x, dtype, x_shape)],
                              [helper.make_tensor_value_info(y, dtype, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def conv_net(path=None, batch=None, opset=13, dropout_ratio=None, ir_version=None,
             dropout_training_input=False, channels=3, seed=0, external_data=False):
    """x [B,C,H,W] -> Conv -> Relu -> (Dropout) -> Conv -> Sigmoid -> y [B,2,H,W].

    ``batch`` None makes the batch axis free; an int fixes it. ``dropout_ratio``
    adds a Dropout node in the opset's own style (ratio attribute for opset < 12,
    ratio input from 12, plus a training_mode input when asked).
    """
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_w(rng, 4, channels, 3, 3), "w1"),
             numpy_helper.from_array(_w(rng, 4), "b1"),
             numpy_helper.from_array(_w(rng, 2, 4, 3, 3), "w2"),
             numpy_helper.from_array(_w(rng, 2), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1")]
    mid = "r1"
    if dropout_ratio is not None:
        if opset < 12:
            nodes.append(helper.make_node("Dropout", ["r1"], ["d1"], name="drop1",
                                          ratio=float(dropout_ratio)))
        else:
            inits.append(numpy_helper.from_array(np.array(dropout_ratio, np.float32), "ratio"))
            ins = ["r1", "ratio"]
            if dropout_training_input:
                inits.append(numpy_helper.from_array(np.array(False), "training"))
                ins.append("training")
            nodes.append(helper.make_node("Dropout", ins, ["d1"], name="drop1"))
        mid = "d1"
    nodes += [helper.make_node("Conv", [mid, "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
              helper.make_node("Sigmoid", ["c2"], ["y"], name="sigmoid")]
    b = batch if batch is not None else "batch"
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, channels, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, 2, "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="tfue-tests")
    model.ir_version = ir_version or (3 if opset < 8 else 7)
    if opset < 9:
        # IR 3 requires every initializer to be listed as a graph input.
        model.graph.input.extend(helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
                           for i in inits)
    onnx.checker.check_model(model)
    if path is not None:
        if external_data:
            onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                      location="weights.data", size_threshold=0)
        else:
            onnx.save(model, str(path))
    return model


def transposed_batch_net(path):
    """x -> Conv -> Transpose(batch to axis 1) -> Relu -> Transpose back -> y.

    At 'r' the batch axis is not outermost, so the batched strategy's slot mask
    would leak noise into the unperturbed slot: verification must reject it.
    """
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(_w(rng, 4, 3, 3, 3), "w1")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c1"], ["t"], name="t1", perm=[1, 0, 2, 3]),
             helper.make_node("Relu", ["t"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["y"], name="t2", perm=[1, 0, 2, 3])]
    return _save(path, nodes, inits, ["b", 3, "h", "w"], ["b", 4, "h", "w"], "tb")


def pointwise_net(path, batch="b", height="h", width="w"):
    """A 1x1 convolution: exactly equivariant to every flip and rotation."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(_w(rng, 2, 3, 1, 1), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Tanh", ["c"], ["y"], name="tanh")]
    return _save(path, nodes, inits, [batch, 3, height, width], [batch, 2, height, width],
                 "pointwise")


def classifier_net(path, classes=4, softmax=True, seed=0, input_name="x", dtype=TensorProto.FLOAT,
                   opset=13):
    """x [B,3,H,W] -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> (Softmax) -> p."""
    rng = np.random.default_rng(seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    inits = [numpy_helper.from_array(_w(rng, 8, 3, 3, 3).astype(np_dtype), "w1"),
             numpy_helper.from_array((_w(rng, classes, 8) * 4).astype(np_dtype), "w2"),
             numpy_helper.from_array(_w(rng, classes).astype(np_dtype), "b2")]
    nodes = [helper.make_node("Conv", [input_name, "w1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["logits" if softmax else "p"],
                              name="fc", transB=1)]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["p"], name="softmax", axis=1))
    return _save(path, nodes, inits, ["b", 3, "h", "w"], ["b", classes], "classifier",
                 opset=opset, x=input_name, y="p", dtype=dtype)


def nhwc_net(path, channels=8):
    """x [N, H, W, 3] -> 1x1 conv to ``channels`` -> Tanh -> y [N, H, W, channels]."""
    w = np.random.default_rng(0).normal(0, 0.5, (channels, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"]),
             helper.make_node("Tanh", ["c"], ["h"]),
             helper.make_node("Transpose", ["h"], ["y"], perm=[0, 2, 3, 1])]
    return _save(path, nodes, [numpy_helper.from_array(w, "w")], ["n", "h", "w", 3],
                 ["n", "h", "w", channels], "nhwc")


def softmax_segmenter(path):
    """x [N, 3, H, W] -> 1x1 conv to 4 classes -> Softmax over the classes -> p."""
    w = np.random.default_rng(0).normal(0, 2, (4, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Softmax", ["c"], ["p"], axis=1)]
    return _save(path, nodes, [numpy_helper.from_array(w, "w")], ["n", 3, "h", "w"],
                 ["n", 4, "h", "w"], "seg", y="p")


def fixed_bias_net(path):
    """Dynamic H, W in the signature, but a bias of shape [1, 2, 8, 12]: only 8x12 runs."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(_w(rng, 2, 3, 3, 3), "w"),
             numpy_helper.from_array(_w(rng, 1, 2, 8, 12), "bias")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "bias"], ["y"], name="add")]
    return _save(path, nodes, inits, ["b", 3, "h", "w"], ["b", 2, "h", "w"], "fixedbias")


def upscale_net(path, scale=2):
    """x [B,3,H,W] -> 3x3 conv -> nearest upsampling by ``scale``: a stand-in for SR."""
    rng = np.random.default_rng(4)
    w = np.zeros((3, 3, 3, 3), np.float32)
    for c in range(3):
        w[c, c, 1, 1] = 1.0  # identity plus a little noise: output ~ upscaled input
    w += rng.standard_normal(w.shape).astype(np.float32) * 0.05
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "scales"),
             numpy_helper.from_array(np.array([], np.float32), "roi")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "roi", "scales"], ["y"], name="up", mode="nearest")]
    return _save(path, nodes, inits, ["b", 3, "h", "w"], ["b", 3, "H", "W"], "up")


def skip_net(path):
    """x -> conv1 -> c1 -> relu -> r1 -> conv2 -> c2; y = c2 + c1 (a skip connection)."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(_w(rng, 4, 3, 3, 3), "w1"),
             numpy_helper.from_array(_w(rng, 4, 4, 3, 3), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "c1"], ["y"], name="skip")]
    return _save(path, nodes, inits, ["b", 3, "h", "w"], ["b", 4, "h", "w"], "skip")


def merged_batch_net(path):
    """x -> Conv -> Flatten(axis 2) [B*4, H*W] -> Relu ('r') -> Reshape back -> Conv -> y.

    At 'r' the batch is merged into axis 0 with the channels: no axis follows the
    batch size, so draws there are made for the whole tensor.
    """
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(_w(rng, 4, 3, 3, 3), "w1"),
             numpy_helper.from_array(_w(rng, 2, 4, 3, 3), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c1"], ["f"], name="flat", axis=2),
             helper.make_node("Relu", ["f"], ["r"], name="relu"),
             helper.make_node("Shape", ["c1"], ["s"], name="shape"),
             helper.make_node("Reshape", ["r", "s"], ["u"], name="unflat"),
             helper.make_node("Conv", ["u", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    return _save(path, nodes, inits, ["b", 3, "h", "w"], ["b", 2, "h", "w"], "merged")


# --- plain onnxruntime references -------------------------------------------------------
def run_plain(model, feeds) -> dict:
    """Run a ModelProto in plain onnxruntime (CPU): output name -> array."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def with_output(model, name):
    """A copy of ``model`` that also returns tensor ``name``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(onnx.ValueInfoProto(name=name))
    return m


def cut_at(model, name, shape):
    """A copy of ``model`` with tensor ``name`` made a float graph input of ``shape`` (its
    producer's output renamed away): everything reading ``name``, subgraphs too, reads
    the fed value."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for node in m.graph.node:
        node.output[:] = [o + "/unused" if o == name else o for o in node.output]
    m.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
    return m


def npz_pairs(folder, count: int = 3, seed: int = 0):
    """``count`` (input, target) pairs for conv_net as ``p<k>.npz`` (x [3, 16, 16], target
    [2, 16, 16], float32) in ``folder`` (made); returns the folder."""
    import os

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(count):
        np.savez(os.path.join(folder, f"p{k}.npz"), x=rng.random((3, 16, 16), dtype=np.float32),
                 target=rng.random((2, 16, 16), dtype=np.float32))
    return folder
