from __future__ import annotations

import json

import numpy as np
import pytest

from modelyard.engine.dataframes import Table
from modelyard.engine.optimizer import Source, Step, check_max_metric_drop, optimize, parse_steps, quantize_dynamic
from modelyard.errors import ValidationFailed

FAST = {"measure_iterations": 10, "measure_budget_s": 1.0}


def test_parse_steps_normalises_and_checks():
    steps = parse_steps([{"method": "PRUNE", "options": {"sparsity": 0.5, "fine_tune_epochs": 2}},
                         {"method": "quantize_dynamic"}])
    assert steps == (Step("prune", {"sparsity": 0.5, "fine_tune_epochs": 2}), Step("quantize-dynamic", {}))


@pytest.mark.parametrize("raw, field", [
    ([], "steps"),
    ([{"method": "distill"}], "steps[0].method"),
    ([{"method": "prune"}], "steps[0].options.sparsity"),
    ([{"method": "prune", "options": {"sparsity": 1.0}}], "options.sparsity"),
    ([{"method": "prune", "options": {"sparsity": 0.5, "mode": "random"}}], "steps[0].options.mode"),
    ([{"method": "quantize-dynamic", "options": {"bits": 4}}], "steps[0].options.bits"),
    ([{"method": "quantize-dynamic", "options": {"per_channel": "yes"}}], "steps[0].options.per_channel"),
    ([{"method": "quantize-dynamic"}, {"method": "prune", "options": {"sparsity": 0.5}}], "steps[1]"),
    ([{"method": "quantize-dynamic"}, {"method": "fp16"}], "steps[1]"),
    ([{"method": "quantize-static", "options": {"samples": 0}}], "steps[0].options.samples"),
    (["prune"], "steps[0]"),
])
def test_parse_steps_refuses(raw, field):
    with pytest.raises(ValidationFailed) as info:
        parse_steps(raw)
    assert info.value.details["field"] == field


def test_max_metric_drop_check():
    assert check_max_metric_drop(0) == 0.0
    for bad in (-0.1, "0.1", None, True):
        with pytest.raises(ValidationFailed, match="max_metric_drop"):
            check_max_metric_drop(bad)


def test_quantize_dynamic_report(tmp_path, digits, digits_source):
    result = optimize(digits_source, parse_steps([{"method": "quantize-dynamic"}]), evaluation=digits,
                      workdir=tmp_path, max_metric_drop=0.01, **FAST)
    r = result.report
    assert result.guard_held and r["guard_held"]
    assert r["metric"] == "accuracy" and r["evaluation_rows"] == digits.n_rows
    assert r["after"]["file_bytes"] < r["before"]["file_bytes"]
    assert set(r["before"]["latency"]) == {"1", "32"} == set(r["after"]["latency"])
    assert r["ratios"]["size"] < 0.5 and r["ratios"]["speedup_batch_32"] > 0
    assert r["metric_drop"] == pytest.approx(r["before"]["metric"] - r["after"]["metric"])
    assert result.weights_path is None and result.architecture is None  # int8 graph has no torch source
    json.dumps(r)


def test_prune_then_quantize_chain(tmp_path, digits, digits_source):
    steps = parse_steps([{"method": "prune", "options": {"sparsity": 0.5, "fine_tune_epochs": 3}},
                         {"method": "quantize-static", "options": {"samples": 64}}])
    result = optimize(digits_source, steps, evaluation=digits, workdir=tmp_path, max_metric_drop=0.05, **FAST)
    assert result.guard_held
    assert result.report["after"]["parameters"] < 0.6 * result.report["before"]["parameters"]
    assert [s["method"] for s in result.report["steps"]] == ["prune", "quantize-static"]


def test_prune_alone_keeps_a_torch_source(tmp_path, digits, digits_source):
    result = optimize(digits_source, parse_steps([{"method": "prune", "options": {"sparsity": 0.25, "fine_tune_epochs": 2}}]),
                      evaluation=digits, workdir=tmp_path, max_metric_drop=0.05, **FAST)
    assert result.weights_path is not None and result.weights_path.is_file()
    assert result.architecture["layers"][0]["out_features"] == 48


def test_guard_refuses_a_harmful_setting(tmp_path, digits, digits_source):
    result = optimize(digits_source, parse_steps([{"method": "prune", "options": {"sparsity": 0.99}}]),
                      evaluation=digits, workdir=tmp_path, max_metric_drop=0.01, **FAST)
    assert not result.guard_held and not result.report["guard_held"]
    assert result.report["metric_drop"] > 0.3


def test_prune_on_onnx_only_source_is_refused(tmp_path, digits, digits_source):
    onnx_only = Source(onnx_path=digits_source.onnx_path)
    with pytest.raises(ValidationFailed, match="ONNX-only"):
        optimize(onnx_only, parse_steps([{"method": "prune", "options": {"sparsity": 0.5}}]), evaluation=digits,
                 workdir=tmp_path, max_metric_drop=0.01)


def test_already_int8_source_is_refused(tmp_path, digits, digits_source):
    q = quantize_dynamic(digits_source.onnx_path, tmp_path / "q.onnx")
    with pytest.raises(ValidationFailed, match="already quantized"):
        optimize(Source(onnx_path=q), parse_steps([{"method": "quantize-dynamic"}]), evaluation=digits,
                 workdir=tmp_path / "w", max_metric_drop=0.01)


def test_calibration_table_that_does_not_fit(tmp_path, digits, digits_source):
    wrong = Table(columns={"a": np.zeros(8), "target": np.zeros(8, dtype=np.int64)})
    with pytest.raises(ValidationFailed, match="calibration dataset does not fit") as info:
        optimize(digits_source, parse_steps([{"method": "quantize-static"}]), evaluation=digits,
                 calibration=wrong, workdir=tmp_path, max_metric_drop=0.01)
    assert info.value.details["field"] == "calibration_dataset"


def test_evaluation_table_that_does_not_fit_fails_before_work(tmp_path, digits_source):
    wrong = Table(columns={"a": np.zeros(8), "target": np.zeros(8, dtype=np.int64)})
    with pytest.raises(ValidationFailed, match="lacks the column"):
        optimize(digits_source, parse_steps([{"method": "quantize-dynamic"}]), evaluation=wrong,
                 workdir=tmp_path, max_metric_drop=0.01)
    assert not any(tmp_path.iterdir())
