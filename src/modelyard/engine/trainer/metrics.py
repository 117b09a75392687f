"""Evaluation metrics, in plain numpy.

Classification: ``accuracy``, ``f1_macro``, ``log_loss`` and ``confusion_matrix`` (rows: true
class, columns: predicted class, in the order of the model's classes). Regression: ``mse``,
``mae``, ``r2``. All values are JSON-able Python numbers / lists.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["classification_metrics", "regression_metrics", "scalar_metrics"]


def classification_metrics(probabilities: np.ndarray, y_true: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Metrics from class probabilities ``[n, k]`` and true class indices ``[n]``."""
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(y_true) == 0:
        return {}
    pred = probabilities.argmax(axis=1)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, pred), 1)
    tp = np.diag(cm).astype(np.float64)
    precision_den = cm.sum(axis=0)
    recall_den = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(precision_den > 0, tp / precision_den, 0.0)
        recall = np.where(recall_den > 0, tp / recall_den, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (recall_den > 0) | (precision_den > 0)
    p_true = np.clip(probabilities[np.arange(len(y_true)), y_true].astype(np.float64), 1e-15, 1.0)
    return {
        "accuracy": float((pred == y_true).mean()),
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
        "log_loss": float(-np.log(p_true).mean()),
        "confusion_matrix": cm.tolist(),
    }


def regression_metrics(prediction: np.ndarray, y_true: np.ndarray) -> dict[str, Any]:
    """MSE, MAE and R² (R² is 0 when the targets are constant)."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(prediction, dtype=np.float64).reshape(-1)
    if len(y) == 0:
        return {}
    err = p - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "mse": float((err**2).mean()),
        "mae": float(np.abs(err).mean()),
        "r2": float(1.0 - (err**2).sum() / ss_tot) if ss_tot > 0 else 0.0,
    }


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries only (what goes into per-epoch curves and progress events)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
