"""Models for the serving benchmarks: the medium MLP (784-2048-2048-2048-10, fp32, ~40 MB) and the
tiny digits MLP (the demo model). Random weights: only the arithmetic matters here.

    python bench/models.py medium.onnx      # writes the medium model
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["medium_mlp", "tiny_digits", "doubler", "MEDIUM_LAYERS"]

MEDIUM_LAYERS = (784, 2048, 2048, 2048, 10)


def medium_mlp(path: Path, layers: tuple[int, ...] = MEDIUM_LAYERS) -> Path:
    """An fp32 MLP with ReLU between layers: ``input FP32[-1, 784] -> logits FP32[-1, 10]``."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    current = "input"
    for i, (fan_in, fan_out) in enumerate(zip(layers, layers[1:])):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = np.zeros(fan_out, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        last = i == len(layers) - 2
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"]))
        current = f"a{i}" if last else f"r{i}"
    nodes.append(helper.make_node("Identity", [current], ["logits"]))
    graph = helper.make_graph(
        nodes, "medium_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", layers[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", layers[-1]])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def tiny_digits(path: Path) -> Path:
    """The digits demo MLP (scikit-learn, converted to ONNX): ``input FP32[-1, 64]``."""
    from modelyard.core.demo import build_digits_onnx

    build_digits_onnx(path)
    return path


def doubler(path: Path, width: int) -> Path:
    """``y = 2 * x`` on ``x: FP32[-1, width]``: a model whose cost is moving its tensors."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "doubler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


if __name__ == "__main__":
    print(medium_mlp(Path(sys.argv[1] if len(sys.argv) > 1 else "medium.onnx")))
