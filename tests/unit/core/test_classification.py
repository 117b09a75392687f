"""Triton's classification extension in process (``core/classification.py``): the top classes
of each row as ``"value:index"``, highest first and ties by the lower index, as Triton writes
values; a count beyond the classes returns them all; a bad count is refused; labels from a
version's or its model's ``labels`` tag or a trained version's classes, checked when written."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from modelyard.core.classification import check_labels, classification_count, classify, labels_of, parse_labels
from modelyard.errors import InvalidInput, ValidationFailed
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


def test_labels_are_added_where_the_index_has_one() -> None:
    spec = TensorSpec("probabilities", "FP32", (-1, 3))
    rows = np.array([[0.2, 0.7, 0.1]], np.float32)
    assert _text(classify(rows, 2, spec, ["cat", "dog", "eel"])) == [["0.700000:1:dog", "0.200000:0:cat"]]
    assert _text(classify(rows, 3, spec, ["cat"])) == [["0.700000:1", "0.200000:0:cat", "0.100000:2"]]  # as Triton


def _version(tags: dict | None = None, model_labels: dict | None = None, lineage: dict | None = None) -> Any:
    return SimpleNamespace(tags=tags or {}, model_labels=model_labels or {}, lineage=lineage or {})


def test_labels_come_from_the_version_then_the_model_then_a_trained_versions_classes() -> None:
    trained = {"classes": [3, "b"]}
    assert labels_of(_version(lineage=trained), "probabilities") == ["3", "b"]
    assert labels_of(_version(lineage=trained), "label") is None  # only a trained version's probabilities
    assert labels_of(_version(lineage={"classes": "ab"}), "probabilities") is None
    model = {"probabilities": ["m0", "m1"], "logits": ["l0", "l1"]}
    assert labels_of(_version(model_labels=model, lineage=trained), "probabilities") == ["m0", "m1"]
    own = {"labels": {"probabilities": ["v0", "v1"]}}
    version = _version(tags=own, model_labels=model, lineage=trained)
    assert labels_of(version, "probabilities") == ["v0", "v1"]
    assert labels_of(version, "logits") == ["l0", "l1"]  # per output: the model's where the version has none
    assert labels_of(version, "other") is None
    # a free-form tag from before labels were checked: ignored where it is no list of labels
    assert labels_of(_version(tags={"labels": "red,green"}, lineage=trained), "probabilities") == ["3", "b"]
    assert labels_of(_version(tags={"labels": {"probabilities": 7}}), "probabilities") is None


def test_a_labels_tag_is_an_object_of_outputs_to_one_line_labels() -> None:
    good = {"probabilities": ["setosa", "versicolor", "virginica"]}
    assert parse_labels(good) == good
    bad = [
        ([], "tags.labels"), ({}, "tags.labels"), ({"": ["a"]}, "tags.labels"),
        ({"p": "a b"}, "tags.labels.p"), ({"p": []}, "tags.labels.p"), ({"p": ["a", 1]}, "tags.labels.p"),
        ({"p": ["a", ""]}, "tags.labels.p"), ({"p": ["two\nlines"]}, "tags.labels.p"),
        ({"p": ["x" * 1025]}, "tags.labels.p"), ({"p": ["a"] * 100_001}, "tags.labels.p"),
    ]
    for raw, field in bad:
        with pytest.raises(ValidationFailed) as info:
            parse_labels(raw)
        assert info.value.details == {"field": field}, raw


def test_a_versions_labels_name_its_outputs_one_per_class() -> None:
    outputs = [TensorSpec("probabilities", "FP32", (-1, 3)), TensorSpec("label", "INT64", (-1,)),
               TensorSpec("scores", "FP32", (-1, -1)), TensorSpec("whole", "FP32", (2, 2)),
               TensorSpec("names", "BYTES", (-1, 3))]
    check_labels({"probabilities": ["a", "b", "c"], "scores": ["a"], "whole": list("abcd")}, outputs)
    check_labels({"label": ["only"]}, outputs)  # one value per row: one class
    cases = [
        ({"probabilities": ["a", "b"]}, "has 3 classes per row (shape [-1, 3]); 2 labels were given"),
        ({"whole": ["a"]}, "has 4 classes per row"),
        ({"prob": ["a"]}, "no output 'prob'; its outputs are label, names, probabilities, scores, whole"),
        ({"names": ["a", "b", "c"]}, "is BYTES"),
    ]
    for labels, message in cases:
        with pytest.raises(ValidationFailed, match=re.escape(message)) as info:
            check_labels(labels, outputs)
        assert info.value.details == {"field": f"tags.labels.{next(iter(labels))}"}
