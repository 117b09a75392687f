"""Small ONNX models built with ``onnx.helper`` for tests: one Identity model per datatype,
an Add model, and helpers to write them as bytes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = ["identity_model", "add_model", "two_input_model", "DTYPE_CASES", "sample_for"]

#: OIP datatype -> (ONNX element type, numpy dtype)
DTYPE_CASES: dict[str, tuple[int, object]] = {
    "BOOL": (TensorProto.BOOL, np.bool_),
    "UINT8": (TensorProto.UINT8, np.uint8),
    "UINT16": (TensorProto.UINT16, np.uint16),
    "UINT32": (TensorProto.UINT32, np.uint32),
    "UINT64": (TensorProto.UINT64, np.uint64),
    "INT8": (TensorProto.INT8, np.int8),
    "INT16": (TensorProto.INT16, np.int16),
    "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64),
    "FP16": (TensorProto.FLOAT16, np.float16),
    "FP32": (TensorProto.FLOAT, np.float32),
    "FP64": (TensorProto.DOUBLE, np.float64),
    "BYTES": (TensorProto.STRING, np.object_),
}


def _bytes(model: onnx.ModelProto) -> bytes:
    onnx.checker.check_model(model)
    return model.SerializeToString()


def identity_model(datatype: str, shape: tuple[object, ...] = ("n", 4)) -> bytes:
    """``y = Identity(x)`` for one OIP datatype; input ``x``, output ``y``."""
    elem = DTYPE_CASES[datatype][0]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("x", elem, list(shape))],
        [helper.make_tensor_value_info("y", elem, list(shape))],
    )
    return _bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def add_model(add: float = 1.0, width: int = 3) -> bytes:
    """``y = x + add`` and ``z = x * 2``; input ``x`` FP32 [n, width]."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["y"]), helper.make_node("Mul", ["x", "two"], ["z"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", width]),
        ],
        [
            helper.make_tensor("b", TensorProto.FLOAT, [width], [add] * width),
            helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0]),
        ],
    )
    return _bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def softmax_model(width: int = 3) -> bytes:
    """``probabilities = Softmax(x)`` on ``x`` FP32 [n, width]: a classifier's output."""
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["probabilities"], axis=1)],
        "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", width])],
    )
    return _bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def two_input_model() -> bytes:
    """``s = a + b`` with a FP32 [n, 2] and b FP32 [n, 2]."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"])],
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 2]),
        ],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["n", 2])],
    )
    return _bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def checker_failing_model() -> bytes:
    """Parses as ONNX but the checker refuses it (a node with an unknown operator)."""
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return model.SerializeToString()


def sample_for(datatype: str, rows: int = 2, width: int = 4) -> np.ndarray:
    """A deterministic array of the datatype, with edge values where they matter."""
    if datatype == "BYTES":
        words = ["a", "héllo", "", "x y", "ünï", "0", "long-" * 5, "z"]
        return np.array([w.encode() for w in words[: rows * width]], dtype=object).reshape(rows, width)
    dtype = DTYPE_CASES[datatype][1]
    if datatype == "BOOL":
        return (np.arange(rows * width) % 3 == 0).reshape(rows, width)
    if datatype.startswith("FP"):
        return (np.arange(rows * width, dtype=np.float64) * 1.5 - 3.25).astype(dtype).reshape(rows, width)
    info = np.iinfo(dtype)  # type: ignore[type-var]
    values = np.array([info.min, info.max, 0, 1, 7, info.max - 1, info.min + 1, 3][: rows * width], dtype=dtype)
    return values.reshape(rows, width)
