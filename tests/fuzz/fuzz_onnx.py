"""Fuzz ``relprop.from_onnx`` (ONNX model bytes) for a fixed time budget.

    pip install atheris                          # optional: coverage-guided (libFuzzer)
    python tests/fuzz/fuzz_onnx.py -max_total_time=60

Without atheris the same command runs a plain random-mutation loop (see ``_harness.py``).
The property: ``from_onnx`` returns a Graph (a Sequential for chains) or raises ValueError
(MemoryError for a model that declares more than memory holds), never anything else, never a
crash; a network it
returns runs a forward pass or raises ValueError/MemoryError.

The first byte of an input is a flag (bit 0: run the onnxruntime self-check, ``check=True``);
the rest is the serialized ModelProto.  Seeds, written into the corpus directory when it is
empty: an MLP (Gemm, Relu, Softmax), a CNN (Conv, BatchNormalization, Relu, MaxPool,
AveragePool, GlobalAveragePool, Flatten, MatMul + Add) and a net with Reshape-as-flatten,
Dropout and Identity, each with the flag clear and set.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import relprop  # noqa: E402

import _harness  # noqa: E402


def _model(nodes, inits, in_shape, out_shape, opset=13):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.int64 if k == "shape" else np.float32), k)
         for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def seed_models():
    rng = np.random.default_rng(0)
    mlp = _model(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2"], ["z"], transB=1),
         helper.make_node("Softmax", ["z"], ["y"], axis=1)],
        {"w1": rng.normal(size=(5, 6)), "b1": rng.normal(size=5), "w2": rng.normal(size=(3, 5))},
        [1, 6], [1, 3])
    cnn = _model(
        [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
         helper.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["bn"]),
         helper.make_node("Relu", ["bn"], ["r"]),
         helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("AveragePool", ["p"], ["a"], kernel_shape=[2, 2], strides=[1, 1]),
         helper.make_node("GlobalAveragePool", ["a"], ["g"]),
         helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("MatMul", ["f", "mw"], ["mm"]),
         helper.make_node("Add", ["mm", "mb"], ["y"])],
        {"cw": rng.normal(size=(3, 2, 3, 3)), "cb": rng.normal(size=3), "s": np.ones(3),
         "t": np.zeros(3), "m": np.zeros(3), "v": np.ones(3), "mw": rng.normal(size=(3, 2)),
         "mb": rng.normal(size=2)},
        [2, 2, 6, 6], [2, 2])
    flat = _model(
        [helper.make_node("Conv", ["x", "cw"], ["c"], strides=[2, 2]),
         helper.make_node("Dropout", ["c"], ["d"]),
         helper.make_node("Relu", ["d"], ["r"]),
         helper.make_node("Identity", ["r"], ["i"]),
         helper.make_node("Reshape", ["i", "shape"], ["f"]),
         helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)],
        {"cw": rng.normal(size=(2, 1, 2, 2)), "shape": np.array([0, -1]),
         "w": rng.normal(size=(4, 8))},
        [1, 1, 4, 4], [1, 4])
    return [mlp, cnn, flat]


def seeds():
    models = seed_models()
    for m in models:  # the seeds are valid: relprop reads them
        relprop.from_onnx(m)
    return [bytes([flag]) + m for m in models for flag in (0, 1)]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    try:
        net = relprop.from_onnx(data[1:], check=bool(data[0] & 1))
    except (ValueError, MemoryError):
        return
    assert isinstance(net, relprop.Graph)  # a Sequential for chains
    if np.prod(net.input_shape) <= 1 << 16:
        try:
            net.forward(np.ones((1,) + net.input_shape, dtype=np.float32))
        except (ValueError, MemoryError):
            pass


if __name__ == "__main__":
    _harness.main("onnx", test_one_input, seeds)
