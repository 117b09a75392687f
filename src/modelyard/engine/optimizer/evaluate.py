"""The evaluation metric of an ONNX model on a table, and the table -> model input mapping.

A model's inputs are fed from the table's columns:

* an input named like a column takes that column (reshaped to ``[-1, *dims]``);
* the tabular ``input`` FP32 ``[-1, n]`` of a platform-trained model takes the numeric columns
  named in its architecture (``architecture["inputs"]["numeric"]``), in that order, flattened;
* otherwise a single FP32/FP64 input ``[-1, n]`` takes every column except the target, in table
  order, when their flattened width is exactly ``n``.

Anything else raises :class:`~modelyard.errors.ValidationFailed` saying which input does not fit.

Metric: classification (an output ``[-1, k]`` of probabilities/scores, or an integer ``label``
output) -> ``accuracy`` (higher is better); regression (one value per row) -> ``mse`` (lower is
better). Class labels map to output columns through ``architecture["classes"]`` when known, else
an integer target is taken as the column index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.engine.dataframes import Table
from modelyard.errors import ValidationFailed

__all__ = ["Evaluation", "feed_from_table", "evaluate_onnx", "metric_drop", "limit_rows"]

_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
           "tensor(int32)": np.int32, "tensor(float16)": np.float16}
_CHUNK = 4096


@dataclass(frozen=True)
class Evaluation:
    """One metric value of one model on one table."""

    metric: str
    value: float
    higher_is_better: bool
    n_rows: int
    task: str

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "higher_is_better": self.higher_is_better,
                "n_rows": self.n_rows, "task": self.task}


def limit_rows(table: Table, max_rows: int | None) -> Table:
    """The first ``max_rows`` rows of ``table`` (all of them when ``None`` or not fewer)."""
    if max_rows is None or table.n_rows <= max_rows:
        return table
    return Table(columns={k: v[:max_rows] for k, v in table.columns.items()}, image_shape=table.image_shape)


def _width(shape: Sequence[Any]) -> int | None:
    dims = list(shape[1:])
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    return int(np.prod(dims))


def feed_from_table(
    inputs: Sequence[Any], table: Table, *, target: str, architecture: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Map table columns onto model inputs (``inputs``: ONNX Runtime ``NodeArg``s). See module doc."""
    n = table.n_rows
    feed: dict[str, np.ndarray] = {}
    for arg in inputs:
        name, dtype = arg.name, _DTYPES.get(arg.type)
        if name in table and name != target:
            col = table[name]
            if arg.type == "tensor(string)":
                feed[name] = np.array(["" if v is None else str(v) for v in col.ravel().tolist()],
                                      dtype=object).reshape(n, -1)
            else:
                feed[name] = np.asarray(col, dtype=dtype).reshape(n, *[d if isinstance(d, int) and d > 0 else -1 for d in arg.shape[1:]] or [-1])
            continue
        if dtype is None or dtype not in (np.float32, np.float64):
            raise ValidationFailed(
                f"the model input {name!r} ({arg.type}) has no matching column in the dataset",
                details={"field": "dataset", "input": name},
            )
        if architecture and name == "input" and architecture.get("inputs", {}).get("numeric") is not None:
            columns = list(architecture["inputs"]["numeric"])
        else:
            columns = [c for c in table.column_names if c != target and c not in {a.name for a in inputs}]
        missing = [c for c in columns if c not in table]
        if missing:
            raise ValidationFailed(
                f"the dataset lacks the column {missing[0]!r} that the model input {name!r} needs",
                details={"field": "dataset", "column": missing[0]},
            )
        bad = [c for c in columns if table[c].dtype.kind not in "biuf"]
        if bad:
            raise ValidationFailed(
                f"column {bad[0]!r} is not numeric but would feed the numeric input {name!r}",
                details={"field": "dataset", "column": bad[0]},
            )
        parts = [np.asarray(table[c], dtype=dtype).reshape(n, -1) for c in columns]
        matrix = np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), dtype=dtype)
        width = _width(arg.shape)
        if width is not None and matrix.shape[1] != width:
            raise ValidationFailed(
                f"the dataset's feature columns give {matrix.shape[1]} values per row but the model input "
                f"{name!r} takes {width}",
                details={"field": "dataset", "input": name},
            )
        feed[name] = np.ascontiguousarray(matrix.reshape(n, *arg.shape[1:]) if width is not None else matrix)
    return feed


def _class_index(y: np.ndarray, classes: Sequence[Any] | None, k: int) -> np.ndarray:
    if classes:
        index = {c: i for i, c in enumerate(classes)}
        try:
            return np.array([index[v] for v in y.tolist()], dtype=np.int64)
        except KeyError as exc:
            raise ValidationFailed(
                f"the target holds the class {exc.args[0]!r}, which the model does not know",
                details={"field": "target"},
            ) from exc
    if y.dtype.kind not in "iu":
        raise ValidationFailed(
            "the model does not name its classes; the target must hold class indices (integers)",
            details={"field": "target"},
        )
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise ValidationFailed(f"the target holds class indices outside 0..{k - 1}", details={"field": "target"})
    return y.astype(np.int64)


def evaluate_onnx(
    path: Path, table: Table, *, target: str = "target", architecture: dict[str, Any] | None = None,
    max_rows: int | None = None, session: Any = None,
) -> Evaluation:
    """Run the model over ``table`` (in chunks) and score it against ``table[target]``."""
    from modelyard.engine.optimizer.measure import session as make_session

    if target not in table:
        raise ValidationFailed(f"the dataset has no target column {target!r}", details={"field": "target"})
    table = limit_rows(table, max_rows)
    sess = session if session is not None else make_session(path)
    feed = feed_from_table(sess.get_inputs(), table, target=target, architecture=architecture)
    outputs = sess.get_outputs()
    names = [o.name for o in outputs]
    chunks: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, table.n_rows, _CHUNK):
        part = {k: v[start : start + _CHUNK] for k, v in feed.items()}
        for i, arr in enumerate(sess.run(names, part)):
            chunks[i].append(np.asarray(arr))
    results = {name: np.concatenate(c) for name, c in zip(names, chunks)}
    y = np.asarray(table[target])
    task = (architecture or {}).get("task")
    scores = next((results[n] for n in ("probabilities", "output_probability", "logits") if n in results
                   and results[n].ndim == 2), None)
    if scores is None:
        scores = next((v for v in results.values() if v.ndim == 2 and v.shape[1] > 1 and v.dtype.kind == "f"), None)
    if task != "regression" and scores is not None:
        classes = (architecture or {}).get("classes")
        true = _class_index(y, classes, scores.shape[1])
        acc = float((scores.argmax(axis=1) == true).mean())
        return Evaluation("accuracy", acc, True, table.n_rows, "classification")
    labels = results.get("label")
    if task != "regression" and labels is not None and labels.dtype.kind in "iuO":
        acc = float((labels.reshape(-1) == y.reshape(-1)).mean())
        return Evaluation("accuracy", acc, True, table.n_rows, "classification")
    pred = np.asarray(results.get("prediction", next(iter(results.values()))), dtype=np.float64).reshape(table.n_rows, -1)
    if pred.shape[1] != 1 or y.dtype.kind not in "biuf":
        raise ValidationFailed("cannot score this model's output against the target column", details={"field": "target"})
    mse = float(((pred[:, 0] - y.astype(np.float64)) ** 2).mean())
    return Evaluation("mse", mse, False, table.n_rows, "regression")


def metric_drop(before: Evaluation, after: Evaluation) -> float:
    """How much worse ``after`` is: absolute accuracy lost, or relative MSE increase (>= 0 worse)."""
    if before.higher_is_better:
        return before.value - after.value
    if before.value <= 0:
        return after.value - before.value
    return (after.value - before.value) / before.value
