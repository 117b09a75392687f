from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelyard.engine.optimizer import measure_latency, measure_many, model_facts


def _matmul_model(path, weight):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_model_facts_counts_parameters_and_zeros(tmp_path):
    w = np.ones((4, 5), dtype=np.float32)
    w[:2] = 0.0
    facts = model_facts(_matmul_model(tmp_path / "m.onnx", w))
    assert facts.parameters == 20
    assert facts.nonzero_parameters == 10
    assert abs(facts.sparsity - 0.5) < 1e-9
    assert facts.file_bytes == (tmp_path / "m.onnx").stat().st_size
    assert facts.to_dict()["sparsity"] == 0.5


def test_latency_at_each_batch_size(tmp_path):
    path = _matmul_model(tmp_path / "m.onnx", np.ones((8, 3), dtype=np.float32))
    feed = {"x": np.ones((5, 8), dtype=np.float32)}
    lats = measure_latency(path, feed, batches=(1, 32), iterations=20)
    assert [lat.batch for lat in lats] == [1, 32]
    for lat in lats:
        assert lat.iterations == 20
        assert 0 < lat.p50_ms <= lat.p99_ms
        assert lat.throughput > 0
        assert set(lat.to_dict()) >= {"batch", "p50_ms", "p99_ms", "throughput"}


def test_measure_many_interleaves_and_respects_budget(tmp_path):
    a = _matmul_model(tmp_path / "a.onnx", np.ones((8, 3), dtype=np.float32))
    b = _matmul_model(tmp_path / "b.onnx", np.ones((8, 3), dtype=np.float32))
    out = measure_many({"a": a, "b": b}, {"x": np.ones((2, 8), dtype=np.float32)}, batches=(4,),
                       iterations=100000, budget_s=0.05)
    assert set(out) == {"a", "b"}
    assert out["a"][0].iterations == out["b"][0].iterations
    assert 5 <= out["a"][0].iterations < 100000
