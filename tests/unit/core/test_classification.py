"""Triton's classification extension in process (``core/classification.py``): the top classes
of each row as ``"value:index"``, highest first and ties by the lower index, as Triton writes
values; a count beyond the classes returns them all; a bad count is refused."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.core.classification import classification_count, classify, labels_of
from modelyard.errors import InvalidInput
from modelyard.tensors import TensorSpec


def _text(out: np.ndarray) -> list:
    return [x.decode() for x in out] if out.ndim == 1 else [[x.decode() for x in row] for row in out]


def test_the_highest_classes_of_each_row_first_ties_by_the_lower_index() -> None:
    rows = np.array([[1, 5, 10, 4], [3, 3, 1, 3]], np.float32)
    out = classify(rows, 2, TensorSpec("p", "FP32", (-1, 4)))
    assert out.shape == (2, 2) and out.dtype == object
    assert _text(out) == [["10.000000:2", "5.000000:1"], ["3.000000:0", "3.000000:1"]]  # Triton's example


def test_a_count_beyond_the_classes_returns_them_all_and_integers_stay_whole() -> None:
    spec = TensorSpec("p", "UINT8", (-1, 3))
    assert _text(classify(np.array([[7, 255, 0]], np.uint8), 10, spec)) == [["255:1", "7:0", "0:2"]]
    lowest = classify(np.array([[-128, 127, 0]], np.int8), 3, TensorSpec("p", "INT8", (-1, 3)))
    assert _text(lowest) == [["127:1", "0:2", "-128:0"]]  # no negation to overflow
    assert _text(classify(np.array([[False, True]]), 1, TensorSpec("p", "BOOL", (-1, 2)))) == [["1:1"]]


def test_an_output_without_a_batch_dimension_is_one_row() -> None:
    out = classify(np.array([[0.1, 0.7], [0.2, 0.0]], np.float64), 3, TensorSpec("p", "FP64", (2, 2)))
    assert out.shape == (3,)
    assert _text(out) == ["0.700000:1", "0.200000:2", "0.100000:0"]  # row-major over the whole tensor


def test_rows_with_more_dimensions_are_read_row_major() -> None:
    out = classify(np.arange(8, dtype=np.int32).reshape(2, 2, 2), 1, TensorSpec("p", "INT32", (-1, 2, 2)))
    assert _text(out) == [["3:3"], ["7:3"]]


def test_the_count_is_a_whole_number_at_least_1() -> None:
    assert classification_count("p", {}) is None
    assert classification_count("p", {"binary_data": True, "classification": 3}) == 3
    for bad in (0, -1, 1.0, "3", True):
        with pytest.raises(InvalidInput, match="'classification' must be a whole number") as info:
            classification_count("p", {"classification": bad})
        assert info.value.details == {"field": "outputs.p.parameters.classification"}


def test_labels_are_added_when_there_is_one_per_class() -> None:
    spec = TensorSpec("probabilities", "FP32", (-1, 3))
    rows = np.array([[0.2, 0.7, 0.1]], np.float32)
    assert _text(classify(rows, 2, spec, ["cat", "dog", "eel"])) == [["0.700000:1:dog", "0.200000:0:cat"]]
    assert _text(classify(rows, 1, spec, ["cat", "dog"])) == [["0.700000:1"]]  # not one per class: none
    assert labels_of({"classes": [3, "b"]}, "probabilities") == ["3", "b"]
    assert labels_of({"classes": [3, "b"]}, "label") is None  # only a trained version's probabilities
    assert labels_of({}, "probabilities") is None and labels_of({"classes": "ab"}, "probabilities") is None
