"""What Triton's classification extension should answer for rows of class scores: each row's
top ``count`` classes as ``"value:index[:label]"`` text, highest first, ties by the lower index."""

from __future__ import annotations

import numpy as np


def top_classes(rows: np.ndarray, count: int, labels: list[str] | None = None) -> list[list[str]]:
    expected = []
    for row in rows:
        top = np.argsort(-row, kind="stable")[:count]
        expected.append([f"{row[i]:f}:{i}" + ("" if labels is None else f":{labels[i]}") for i in top])
    return expected


def as_text(classes: np.ndarray) -> list[list[str]]:
    """A BYTES answer of classes as text, row by row."""
    return [[c.decode() for c in row] for row in classes]
