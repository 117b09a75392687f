"""TrainSpec: field checks, validation against a table, and plan resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelyard.engine.dataframes import Table, load_builtin
from modelyard.engine.trainer import TrainSpec
from modelyard.errors import ValidationFailed


@pytest.fixture(scope="module")
def digits() -> Table:
    return load_builtin("digits")


def table() -> Table:
    return Table(columns={
        "x": np.arange(10, dtype=np.float64),
        "color": np.array(["red", "blue"] * 5, dtype=object),
        "y": np.array([0, 1] * 5, dtype=np.int64),
        "price": np.linspace(0, 1, 10),
    })


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"recipe": "transformer"}, "recipe"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": 10001}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 70000}, "batch_size"),
        ({"validation_split": 0.95}, "validation_split"),
        ({"optimizer": "lion"}, "optimizer"),
        ({"activation": "swish"}, "activation"),
        ({"loss": "hinge"}, "loss"),
        ({"dropout": 1.0}, "dropout"),
        ({"workers": 0}, "workers"),
        ({"early_stopping_patience": 0}, "early_stopping_patience"),
        ({"early_stopping_patience": 3, "validation_split": 0.0}, "early_stopping_patience"),
        ({"bogus": 1}, "bogus"),
        ({"epochs": 2.5}, "epochs"),
        ({"features": ["y"]}, "features"),
    ],
)
def test_field_checks_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        TrainSpec(target="y", **kwargs)
    assert info.value.details["field"] == field


def test_case_insensitive_choices_and_roundtrip() -> None:
    spec = TrainSpec(target="y", optimizer="Adam", activation="GELU", recipe="MLP", hidden_sizes=[8])
    assert (spec.optimizer, spec.activation, spec.recipe, spec.hidden_sizes) == ("adam", "gelu", "mlp", (8,))
    assert TrainSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(TypeError):
        TrainSpec("y")  # keyword-only


def test_validate_against_table(digits: Table) -> None:
    TrainSpec(target="target").validate(digits)
    with pytest.raises(ValidationFailed, match="'label'") as info:
        TrainSpec(target="label").validate(digits)
    assert info.value.details["field"] == "target"
    with pytest.raises(ValidationFailed) as info:
        TrainSpec(target="target", features=["pixel_0_0", "nope"]).validate(digits)
    assert info.value.details["column"] == "nope"
    with pytest.raises(ValidationFailed, match="limit of 2") as info:
        TrainSpec(target="target", workers=3).validate(digits, max_workers=2)
    assert info.value.details["field"] == "workers"


def test_task_inference_and_categoricals() -> None:
    t = table()
    plan = TrainSpec(target="y").plan(t)
    assert plan.task == "classification" and plan.loss == "cross_entropy" and plan.classes == (0, 1)
    assert plan.numeric == ("x", "price") and plan.categorical == (("color", ("blue", "red")),)
    assert plan.n_features == 4
    reg = TrainSpec(target="price", features=["x"]).plan(t)
    assert reg.task == "regression" and reg.loss == "mse" and reg.n_outputs == 1
    with pytest.raises(ValidationFailed, match="strings") as info:
        TrainSpec(target="color", task="regression").plan(t)
    assert info.value.details["column"] == "color"
    with pytest.raises(ValidationFailed) as info:
        TrainSpec(target="y", loss="mse").plan(t)
    assert info.value.details["field"] == "loss"


def test_cnn_rejects_strings_and_non_square(digits: Table) -> None:
    assert TrainSpec(target="target", recipe="cnn").plan(digits).image_shape == (1, 8, 8)
    with pytest.raises(ValidationFailed, match="not numeric") as info:
        TrainSpec(target="y", recipe="cnn").plan(table())
    assert info.value.details["column"] == "color"
    with pytest.raises(ValidationFailed, match="square"):
        TrainSpec(target="target", recipe="cnn", features=["pixel_0_0", "pixel_0_1"]).plan(digits)


def test_text_classifier_needs_text_field() -> None:
    with pytest.raises(ValidationFailed) as info:
        TrainSpec(target="y", recipe="text-classifier").validate(table())
    assert info.value.details["column"] == "text"
    with pytest.raises(ValidationFailed, match="strings"):
        TrainSpec(target="y", recipe="text-classifier", text_field="x").validate(table())


def test_target_problems() -> None:
    t = Table(columns={"x": np.arange(4.0), "y": np.array([1.0, np.nan, 2.0, 3.0]), "c": np.zeros(4, dtype=np.int64)})
    with pytest.raises(ValidationFailed, match="missing"):
        TrainSpec(target="y").validate(t)
    with pytest.raises(ValidationFailed, match="single class"):
        TrainSpec(target="c", features=["x"]).validate(t)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_cuda_without_gpu(digits: Table) -> None:
    with pytest.raises(ValidationFailed) as info:
        TrainSpec(target="target", device="cuda").validate(digits)
    assert info.value.details["field"] == "device"
