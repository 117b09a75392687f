"""What to train: :class:`TrainSpec`, its checks, and the plan it resolves to against a table.

A ``TrainSpec`` checks its own fields when built (ranges, names) and :meth:`TrainSpec.validate`
checks it against a dataset (columns exist, types fit the recipe). Every problem raises
:class:`~modelyard.errors.ValidationFailed` with ``details={"field": ...}`` for a bad field or
``details={"column": ...}`` for a bad column, so an API can point at the culprit.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.engine.dataframes import Table
from modelyard.errors import ValidationFailed

__all__ = [
    "RECIPES",
    "TASKS",
    "OPTIMIZERS",
    "ACTIVATIONS",
    "LOSSES",
    "TrainSpec",
    "TrainPlan",
]

RECIPES = ("linear", "mlp", "cnn", "text-classifier")
TASKS = ("classification", "regression")
OPTIMIZERS = ("sgd", "adam", "adamw")
ACTIVATIONS = ("relu", "gelu", "tanh")
LOSSES = ("cross_entropy", "mse", "mae")
DEVICES = ("auto", "cpu", "cuda")
#: An integer target with at most this many distinct values is inferred as classification.
MAX_INFERRED_CLASSES = 50
#: A string column with more distinct values than this cannot be one-hot encoded.
MAX_CATEGORIES = 256


def _fail(message: str, field_name: str) -> ValidationFailed:
    return ValidationFailed(message, details={"field": field_name})


@dataclass(frozen=True, init=False)
class TrainSpec:
    """Hyper-parameters and data mapping of one training run (keyword-only, immutable).

    ``features=None`` means every column except the target (and the text field for the
    ``text-classifier`` recipe). ``task=None`` is inferred from the target: strings, booleans and
    integers with few distinct values mean classification, anything else regression. ``loss=None``
    picks ``cross_entropy`` for classification and ``mse`` for regression. ``optimizer``,
    ``activation``, ``recipe`` and ``device`` are case-insensitive.
    """

    target: str
    features: tuple[str, ...] | None = None
    task: str | None = None
    recipe: str = "mlp"
    hidden_sizes: tuple[int, ...] = (128, 64)
    conv_channels: tuple[int, ...] = (16, 32)
    activation: str = "relu"
    dropout: float = 0.0
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 20
    batch_size: int = 64
    loss: str | None = None
    validation_split: float = 0.2
    early_stopping_patience: int | None = None
    seed: int = 0
    workers: int = 1
    device: str = "auto"
    text_field: str = "text"
    fine_tune_encoder: bool = False
    max_text_length: int = 128

    def __init__(self, **kwargs: Any) -> None:  # keyword-only construction
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise _fail(f"unknown training parameter {unknown[0]!r}", unknown[0])
        if "target" not in kwargs:
            raise _fail("the target column is required", "target")
        for f in dataclasses.fields(self):
            if f.name in kwargs:
                value = kwargs[f.name]
            elif f.default is not dataclasses.MISSING:
                value = f.default
            else:
                value = f.default_factory()  # type: ignore[misc]
            object.__setattr__(self, f.name, value)
        self._normalise()
        self.check()

    # -- construction helpers ----------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        """Build from a JSON-like mapping (lists become tuples)."""
        if not isinstance(data, dict):
            raise ValidationFailed("training parameters must be a JSON object")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able mapping that :meth:`from_dict` turns back into an equal spec."""
        out = dataclasses.asdict(self)
        for key in ("features", "hidden_sizes", "conv_channels"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    def replace(self, **changes: Any) -> TrainSpec:
        return TrainSpec(**{**self.to_dict(), **changes})

    def _normalise(self) -> None:
        def lower(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, value.strip().lower().replace("_", "-") if name == "recipe" else value.strip().lower())

        for name in ("recipe", "optimizer", "activation", "device", "task", "loss"):
            lower(name)
        if isinstance(self.loss, str):
            object.__setattr__(self, "loss", self.loss.replace("-", "_"))
        if isinstance(self.recipe, str) and self.recipe in ("text", "text-classification"):
            object.__setattr__(self, "recipe", "text-classifier")
        for name in ("features", "hidden_sizes", "conv_channels"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise _fail(f"{name} must be a list", name)
            if value is not None:
                try:
                    object.__setattr__(self, name, tuple(value))
                except TypeError:
                    raise _fail(f"{name} must be a list", name) from None

    # -- checks --------------------------------------------------------------------------------

    def check(self) -> None:
        """Field checks that need no data; raises ``ValidationFailed`` naming the field."""
        if not isinstance(self.target, str) or not self.target:
            raise _fail("target must be a column name", "target")
        if self.features is not None:
            if not self.features or not all(isinstance(f, str) and f for f in self.features):
                raise _fail("features must be a non-empty list of column names", "features")
            if len(set(self.features)) != len(self.features):
                raise _fail("features lists a column twice", "features")
            if self.target in self.features:
                raise _fail(f"the target {self.target!r} cannot also be a feature", "features")
        _choice(self.recipe, RECIPES, "recipe")
        if self.task is not None:
            _choice(self.task, TASKS, "task")
        _choice(self.activation, ACTIVATIONS, "activation")
        _choice(self.optimizer, OPTIMIZERS, "optimizer")
        _choice(self.device, DEVICES, "device")
        if self.loss is not None:
            _choice(self.loss, LOSSES, "loss")
        if not all(_is_int(h) and 1 <= h <= 65536 for h in self.hidden_sizes) or len(self.hidden_sizes) > 32:
            raise _fail("hidden_sizes must be at most 32 integers in 1..65536", "hidden_sizes")
        if not self.conv_channels or not all(_is_int(c) and 1 <= c <= 4096 for c in self.conv_channels):
            raise _fail("conv_channels must be integers in 1..4096", "conv_channels")
        if self.recipe == "mlp" and not self.hidden_sizes:
            raise _fail("the mlp recipe needs at least one hidden layer", "hidden_sizes")
        _number(self.dropout, "dropout", lo=0.0, hi=0.95)
        _number(self.learning_rate, "learning_rate", lo=0.0, hi=10.0, lo_open=True)
        _number(self.momentum, "momentum", lo=0.0, hi=1.0)
        _number(self.weight_decay, "weight_decay", lo=0.0, hi=1.0)
        _integer(self.epochs, "epochs", 1, 10000)
        _integer(self.batch_size, "batch_size", 1, 65536)
        _number(self.validation_split, "validation_split", lo=0.0, hi=0.9)
        if self.early_stopping_patience is not None:
            _integer(self.early_stopping_patience, "early_stopping_patience", 1, 10000)
            if self.validation_split == 0:
                raise _fail("early stopping needs a validation split > 0", "early_stopping_patience")
        _integer(self.seed, "seed", 0, 2**31 - 1)
        _integer(self.workers, "workers", 1, 1024)
        if not isinstance(self.text_field, str) or not self.text_field:
            raise _fail("text_field must be a column name", "text_field")
        if not isinstance(self.fine_tune_encoder, bool):
            raise _fail("fine_tune_encoder must be true or false", "fine_tune_encoder")
        _integer(self.max_text_length, "max_text_length", 8, 512)

    def validate(self, table: Table, *, max_workers: int | None = None) -> None:
        """Check this spec against ``table``; ``ValidationFailed`` names the field or column.

        ``max_workers`` caps ``workers`` (default: this machine's CPU count).
        """
        self.plan(table, max_workers=max_workers)

    def plan(self, table: Table, *, max_workers: int | None = None) -> TrainPlan:
        """Resolve features, task, loss, classes and device against ``table`` (validating)."""
        limit = max_workers if max_workers is not None else (os.cpu_count() or 1)
        if self.workers > limit:
            raise _fail(f"workers={self.workers} exceeds the limit of {limit}", "workers")
        device = _resolve_device(self.device)
        if device == "cuda" and self.workers > 1:
            raise _fail("multi-worker training runs on the CPU (gloo); use device='cpu'", "device")
        if self.target not in table:
            raise ValidationFailed(
                f"target column {self.target!r} is not in the dataset "
                f"(columns: {', '.join(table.column_names[:20])})",
                details={"field": "target", "column": self.target},
            )
        y = table[self.target]
        if y.ndim != 1:
            raise ValidationFailed(
                f"target {self.target!r} must have one value per row", details={"column": self.target}
            )
        if _missing_count(y):
            raise ValidationFailed(
                f"target column {self.target!r} has {_missing_count(y)} missing values",
                details={"column": self.target},
            )
        task = self.task or _infer_task(y)
        if task == "regression" and y.dtype.kind not in "iuf":
            raise ValidationFailed(
                f"regression needs a numeric target; {self.target!r} holds strings",
                details={"column": self.target},
            )
        loss = self.loss or ("cross_entropy" if task == "classification" else "mse")
        if (task == "classification") != (loss == "cross_entropy"):
            raise _fail(f"loss {loss!r} does not fit a {task} task", "loss")
        classes: tuple[Any, ...] = ()
        if task == "classification":
            classes = tuple(_py(v) for v in sorted(set(y.tolist())))
            if len(classes) < 2:
                raise ValidationFailed(
                    f"target {self.target!r} has a single class; classification needs two or more",
                    details={"column": self.target},
                )
            if len(classes) > 10000:
                raise ValidationFailed(
                    f"target {self.target!r} has {len(classes)} classes (at most 10000)",
                    details={"column": self.target},
                )

        if self.recipe == "text-classifier":
            if task != "classification":
                raise _fail("the text-classifier recipe only does classification", "task")
            if self.text_field not in table:
                raise ValidationFailed(
                    f"text field {self.text_field!r} is not in the dataset",
                    details={"field": "text_field", "column": self.text_field},
                )
            text = table[self.text_field]
            if text.dtype.kind != "O" or text.ndim != 1:
                raise ValidationFailed(
                    f"text field {self.text_field!r} must hold strings", details={"column": self.text_field}
                )
            if _missing_count(text):
                raise ValidationFailed(
                    f"text field {self.text_field!r} has missing values", details={"column": self.text_field}
                )
            return TrainPlan(
                spec=self, task=task, loss=loss, classes=classes, numeric=(), numeric_widths=(),
                categorical=(), image_shape=None, device=device,
            )

        features = self.features or tuple(n for n in table.column_names if n != self.target)
        if not features:
            raise _fail("there are no feature columns besides the target", "features")
        numeric: list[str] = []
        widths: list[int] = []
        categorical: list[tuple[str, tuple[str, ...]]] = []
        for name in features:
            if name not in table:
                raise ValidationFailed(
                    f"feature column {name!r} is not in the dataset", details={"field": "features", "column": name}
                )
            col = table[name]
            if col.dtype.kind in "biuf":
                numeric.append(name)
                widths.append(int(np.prod(col.shape[1:], dtype=np.int64)) if col.ndim > 1 else 1)
                continue
            if self.recipe == "cnn" or col.ndim != 1:
                raise ValidationFailed(
                    f"column {name!r} is not numeric; the {self.recipe} recipe needs numbers",
                    details={"column": name},
                )
            cats = sorted({v for v in col.tolist() if v is not None})
            if len(cats) > MAX_CATEGORIES:
                raise ValidationFailed(
                    f"column {name!r} has {len(cats)} distinct strings; one-hot encoding allows at "
                    f"most {MAX_CATEGORIES} (drop it from features)",
                    details={"column": name},
                )
            categorical.append((name, tuple(cats)))
        image_shape = None
        if self.recipe == "cnn":
            image_shape = _image_shape(table, numeric, widths)
        return TrainPlan(
            spec=self, task=task, loss=loss, classes=classes, numeric=tuple(numeric),
            numeric_widths=tuple(widths), categorical=tuple(categorical), image_shape=image_shape,
            device=device,
        )


@dataclass(frozen=True)
class TrainPlan:
    """A :class:`TrainSpec` resolved against a table: what the trainer actually does."""

    spec: TrainSpec
    task: str
    loss: str
    classes: tuple[Any, ...]
    numeric: tuple[str, ...]
    numeric_widths: tuple[int, ...]
    categorical: tuple[tuple[str, tuple[str, ...]], ...]
    image_shape: tuple[int, int, int] | None
    device: str

    @property
    def n_numeric(self) -> int:
        return int(sum(self.numeric_widths))

    @property
    def n_features(self) -> int:
        return self.n_numeric + sum(len(c) for _, c in self.categorical)

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else 1


def _image_shape(table: Table, numeric: list[str], widths: list[int]) -> tuple[int, int, int]:
    if len(numeric) == 1 and table[numeric[0]].ndim in (3, 4):
        shape = table[numeric[0]].shape[1:]
        return (1, int(shape[0]), int(shape[1])) if len(shape) == 2 else (int(shape[0]), int(shape[1]), int(shape[2]))
    n = sum(widths)
    if table.image_shape is not None and int(np.prod(table.image_shape)) == n:
        return table.image_shape
    side = int(round(n**0.5))
    if side * side == n and side >= 2:
        return (1, side, side)
    raise ValidationFailed(
        f"the cnn recipe needs image-shaped features; {n} features do not form a square image",
        details={"field": "recipe"},
    )


def _infer_task(y: np.ndarray) -> str:
    if y.dtype.kind in "OUSb":
        return "classification"
    if y.dtype.kind in "iu":
        return "classification" if len(np.unique(y)) <= MAX_INFERRED_CLASSES else "regression"
    return "regression"


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise _fail("device 'cuda' was asked for but no CUDA device is available", "device")
    return device


def _missing_count(a: np.ndarray) -> int:
    if a.dtype.kind == "f":
        return int(np.isnan(a).sum())
    if a.dtype.kind == "O":
        return sum(1 for v in a.ravel() if v is None)
    return 0


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise _fail(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}", name)


def _number(value: Any, name: str, *, lo: float, hi: float, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise _fail(f"{name} must be a number", name)
    v = float(value)
    if not np.isfinite(v) or v > hi or v < lo or (lo_open and v <= lo):
        bound = f"> {lo}" if lo_open else f">= {lo}"
        raise _fail(f"{name}={value} is out of range (must be {bound} and <= {hi})", name)


def _integer(value: Any, name: str, lo: int, hi: int) -> None:
    if not _is_int(value):
        raise _fail(f"{name} must be an integer", name)
    if not lo <= int(value) <= hi:
        raise _fail(f"{name}={value} is out of range ({lo}..{hi})", name)
