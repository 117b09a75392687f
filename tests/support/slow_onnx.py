"""A deliberately slow, batchable ONNX model for serving and isolation tests:
``y = tanh(... tanh(x @ W) ... @ W)``, repeated in an ONNX ``Loop``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["tanh_loop_model", "tanh_loop_expected", "random_weights"]


def random_weights(width: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)


def tanh_loop_model(path: Path, *, weights: np.ndarray, iterations: int | None = None) -> Path:
    """Input ``x: FP32[batch, width]``. With ``iterations`` the loop count is fixed in the model;
    without, the model takes a second input ``n: INT64[]`` that sets how slow each call is."""
    width = weights.shape[0]
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["state_in", "W"], ["mm"]),
            helper.make_node("Tanh", ["mm"], ["state_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, None),
        ],
    )
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])]
    initializers = [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(np.array(True), "keep_going")]
    if iterations is None:
        inputs.append(helper.make_tensor_value_info("n", TensorProto.INT64, []))
    else:
        initializers.append(numpy_helper.from_array(np.array(iterations, np.int64), "n"))
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "keep_going", "x"], ["y"], body=body)],
        "slow",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def tanh_loop_expected(x: np.ndarray, weights: np.ndarray, iterations: int) -> np.ndarray:
    y = x.astype(np.float32)
    for _ in range(iterations):
        y = np.tanh(y @ weights)
    return y
