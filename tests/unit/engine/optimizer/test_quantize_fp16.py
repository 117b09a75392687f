from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from modelyard.engine.optimizer import convert_fp16, evaluate_onnx, is_quantized, model_facts, quantize_dynamic, quantize_static
from modelyard.engine.optimizer.evaluate import feed_from_table
from modelyard.errors import ValidationFailed


def _acc(path, digits, source):
    return evaluate_onnx(path, digits, architecture=source.architecture).value


def test_dynamic_int8_shrinks_and_keeps_accuracy(tmp_path, digits, digits_source):
    out = quantize_dynamic(digits_source.onnx_path, tmp_path / "q.onnx")
    assert is_quantized(out) and not is_quantized(digits_source.onnx_path)
    assert model_facts(out).file_bytes < 0.5 * model_facts(digits_source.onnx_path).file_bytes
    assert _acc(digits_source.onnx_path, digits, digits_source) - _acc(out, digits, digits_source) <= 0.01


def test_dynamic_int8_can_keep_the_first_layer_in_fp32(tmp_path, digits, digits_source):
    import onnx

    full = quantize_dynamic(digits_source.onnx_path, tmp_path / "q.onnx")
    kept = quantize_dynamic(digits_source.onnx_path, tmp_path / "k.onnx", keep_first_layer=True)
    ops = [n.op_type for n in onnx.load(str(kept)).graph.node]
    assert ops.count("MatMulInteger") == [n.op_type for n in onnx.load(str(full)).graph.node].count("MatMulInteger") - 1
    assert model_facts(full).file_bytes < model_facts(kept).file_bytes < model_facts(digits_source.onnx_path).file_bytes
    assert _acc(digits_source.onnx_path, digits, digits_source) - _acc(kept, digits, digits_source) <= 0.01


def test_quantizing_twice_is_refused(tmp_path, digits_source):
    out = quantize_dynamic(digits_source.onnx_path, tmp_path / "q.onnx")
    with pytest.raises(ValidationFailed, match="already quantized"):
        quantize_dynamic(out, tmp_path / "q2.onnx")
    with pytest.raises(ValidationFailed, match="quantized"):
        convert_fp16(out, tmp_path / "h.onnx")


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_static_int8_with_calibration(tmp_path, digits, digits_source, fmt):
    sess = ort.InferenceSession(str(digits_source.onnx_path), providers=["CPUExecutionProvider"])
    feed = feed_from_table(sess.get_inputs(), digits, target="target", architecture=digits_source.architecture)
    out = quantize_static(digits_source.onnx_path, tmp_path / "s.onnx", calibration=feed, samples=64, fmt=fmt)
    assert is_quantized(out)
    assert _acc(digits_source.onnx_path, digits, digits_source) - _acc(out, digits, digits_source) <= 0.02


def test_static_bad_options_and_no_rows(tmp_path, digits_source):
    feed = {"input": np.zeros((4, 64), dtype=np.float32)}
    with pytest.raises(ValidationFailed, match="calibration method"):
        quantize_static(digits_source.onnx_path, tmp_path / "s.onnx", calibration=feed, method="magic")
    with pytest.raises(ValidationFailed, match="format"):
        quantize_static(digits_source.onnx_path, tmp_path / "s.onnx", calibration=feed, fmt="int4")
    with pytest.raises(ValidationFailed, match="calibration rows"):
        quantize_static(digits_source.onnx_path, tmp_path / "s.onnx", calibration={"input": feed["input"][:0]})


def test_fp16_keeps_fp32_io_and_halves_the_file(tmp_path, digits, digits_source):
    out = convert_fp16(digits_source.onnx_path, tmp_path / "h.onnx")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.type for i in sess.get_inputs()] == ["tensor(float)"]
    assert [o.type for o in sess.get_outputs()] == ["tensor(float)"]
    assert model_facts(out).file_bytes < 0.65 * model_facts(digits_source.onnx_path).file_bytes
    assert abs(_acc(digits_source.onnx_path, digits, digits_source) - _acc(out, digits, digits_source)) <= 0.01
