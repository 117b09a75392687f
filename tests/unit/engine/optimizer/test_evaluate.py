from __future__ import annotations

import numpy as np
import pytest

from modelyard.engine.dataframes import Table
from modelyard.engine.optimizer import evaluate_onnx, metric_drop
from modelyard.engine.optimizer.evaluate import Evaluation, limit_rows
from modelyard.errors import ValidationFailed


def test_accuracy_of_a_trained_classifier(digits, digits_source):
    result = evaluate_onnx(digits_source.onnx_path, digits, architecture=digits_source.architecture)
    assert result.metric == "accuracy" and result.higher_is_better
    assert result.n_rows == digits.n_rows
    assert 0.9 < result.value <= 1.0


def test_without_architecture_columns_are_taken_in_table_order(digits, digits_source):
    with_arch = evaluate_onnx(digits_source.onnx_path, digits, architecture=digits_source.architecture)
    without = evaluate_onnx(digits_source.onnx_path, digits)
    assert without.value == pytest.approx(with_arch.value)


def test_max_rows_bounds_the_evaluation(digits, digits_source):
    assert evaluate_onnx(digits_source.onnx_path, digits, max_rows=100).n_rows == 100
    assert limit_rows(digits, None) is digits


def test_columns_that_do_not_fit_are_refused(digits_source):
    table = Table(columns={"a": np.zeros(10), "b": np.ones(10), "target": np.zeros(10, dtype=np.int64)})
    with pytest.raises(ValidationFailed, match="2 values per row but the model input 'input' takes 64"):
        evaluate_onnx(digits_source.onnx_path, table)
    with pytest.raises(ValidationFailed, match="lacks the column"):
        evaluate_onnx(digits_source.onnx_path, table, architecture=digits_source.architecture)


def test_missing_target_and_unknown_class(digits, digits_source):
    with pytest.raises(ValidationFailed, match="no target column"):
        evaluate_onnx(digits_source.onnx_path, digits, target="label")
    cols = dict(digits.columns)
    cols["target"] = np.full(digits.n_rows, 42, dtype=np.int64)
    with pytest.raises(ValidationFailed, match="class 42"):
        evaluate_onnx(digits_source.onnx_path, Table(columns=cols), architecture=digits_source.architecture)


def test_metric_drop_directions():
    acc = lambda v: Evaluation("accuracy", v, True, 10, "classification")  # noqa: E731
    mse = lambda v: Evaluation("mse", v, False, 10, "regression")  # noqa: E731
    assert metric_drop(acc(0.9), acc(0.85)) == pytest.approx(0.05)
    assert metric_drop(acc(0.9), acc(0.95)) == pytest.approx(-0.05)
    assert metric_drop(mse(2.0), mse(2.5)) == pytest.approx(0.25)
    assert metric_drop(mse(0.0), mse(0.5)) == pytest.approx(0.5)
