"""Turning a :class:`~modelyard.engine.dataframes.Table` into training arrays.

Features become one float32 matrix: numeric columns (multi-dimensional arrays flattened, NaN kept
for missing values) followed by the one-hot encoding of each string column. Standardisation is
*not* applied here: its statistics are fitted on the training split and stored as buffers in the
model, so the exported model takes raw features.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from modelyard.engine.dataframes import Table
from modelyard.engine.trainer.spec import TrainPlan

__all__ = [
    "Prepared",
    "prepare",
    "split_rows",
    "encode_features",
    "encode_target",
    "categorical_inputs",
    "numeric_matrix",
    "table_fingerprint",
]


@dataclass(frozen=True)
class Prepared:
    """Encoded arrays and the statistics of the training split."""

    x: np.ndarray  # float32 [n, n_features]
    y: np.ndarray  # int64 class indices or float32 values, [n]
    train_rows: np.ndarray
    val_rows: np.ndarray
    feature_mean: np.ndarray
    feature_std: np.ndarray
    target_mean: float
    target_std: float


def split_rows(n: int, validation_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded shuffle split: (train rows, validation rows); validation may be empty."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * validation_split))
    if validation_split > 0:
        n_val = max(1, min(n_val, n - 1))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def numeric_matrix(plan: TrainPlan, table: Table) -> np.ndarray:
    """The numeric features as float32 ``[n, n_numeric]`` (NaN where missing)."""
    n = table.n_rows
    parts = [np.asarray(table[name], dtype=np.float32).reshape(n, -1) for name in plan.numeric]
    return np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), dtype=np.float32)


def encode_features(plan: TrainPlan, table: Table) -> np.ndarray:
    """Numeric features then one-hot categoricals, float32 ``[n, n_features]``."""
    parts = [numeric_matrix(plan, table)]
    for name, cats in plan.categorical:
        index = {c: i for i, c in enumerate(cats)}
        col = table[name]
        onehot = np.zeros((len(col), len(cats)), dtype=np.float32)
        for row, value in enumerate(col.tolist()):
            j = index.get(value)
            if j is not None:
                onehot[row, j] = 1.0
        parts.append(onehot)
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


def categorical_inputs(plan: TrainPlan, table: Table) -> dict[str, np.ndarray]:
    """The raw string columns as the exported model takes them: object arrays ``[n, 1]``."""
    return {
        name: np.array(["" if v is None else str(v) for v in table[name].tolist()], dtype=object).reshape(-1, 1)
        for name, _ in plan.categorical
    }


def encode_target(plan: TrainPlan, table: Table) -> np.ndarray:
    """Class indices (int64, in ``plan.classes`` order) or float32 regression values."""
    y = table[plan.spec.target]
    if plan.task == "classification":
        index = {c: i for i, c in enumerate(plan.classes)}
        return np.array([index[v] for v in y.tolist()], dtype=np.int64)
    return np.asarray(y, dtype=np.float32)


def prepare(plan: TrainPlan, table: Table) -> Prepared:
    """Encode, split with ``spec.seed`` and fit standardisation on the training rows."""
    spec = plan.spec
    x = encode_features(plan, table)
    y = encode_target(plan, table)
    train_rows, val_rows = split_rows(table.n_rows, spec.validation_split, spec.seed)
    xt = x[train_rows]
    with np.errstate(all="ignore"):
        mean = np.nan_to_num(np.nanmean(xt, axis=0, dtype=np.float64), nan=0.0) if len(xt) else np.zeros(x.shape[1])
        std = np.nan_to_num(np.nanstd(xt, axis=0, dtype=np.float64), nan=1.0) if len(xt) else np.ones(x.shape[1])
    std = np.where(std < 1e-6, 1.0, std)
    if plan.task == "regression":
        yt = y[train_rows].astype(np.float64)
        t_mean, t_std = float(yt.mean()), float(yt.std())
        t_std = t_std if t_std > 1e-12 else 1.0
    else:
        t_mean, t_std = 0.0, 1.0
    return Prepared(
        x=x, y=y, train_rows=train_rows, val_rows=val_rows,
        feature_mean=mean.astype(np.float32), feature_std=std.astype(np.float32),
        target_mean=t_mean, target_std=t_std,
    )


def table_fingerprint(table: Table) -> str:
    """A sha256 over column names, dtypes, shapes and contents (detects a changed dataset)."""
    h = hashlib.sha256()
    for name, col in table.columns.items():
        h.update(name.encode() + b"\0" + str(col.dtype).encode() + str(col.shape).encode())
        if col.dtype.kind == "O":
            for v in col.ravel().tolist():
                h.update(b"\1" if v is None else str(v).encode() + b"\0")
        else:
            h.update(np.ascontiguousarray(col).tobytes())
    return h.hexdigest()
