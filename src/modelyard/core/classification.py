"""Triton's classification extension: an output asked for with the parameter ``classification:
N`` comes back as its ``N`` highest-valued classes instead of its raw values.

``tritonclient``'s ``InferRequestedOutput(name, class_count=N)`` sends it, over HTTP and gRPC;
in JSON, ``"outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]``. Such
an output is a BYTES tensor of shape ``[batch, N]`` (``[N]`` for an output without a batch
dimension) whose elements are ``"<value>:<index>"``: the class's index in the output's row
(its elements after the batch dimension, row-major) and its value, highest first, ties by the
lower index. Values are written as Triton writes them (C++ ``std::to_string``): floats with six
decimals, integers as they are. ``N`` larger than the number of classes returns them all.

Labels (Triton's label files): a version ModelYard trained knows the classes of its
``probabilities`` output, one per column (its lineage's ``classes``: the training data's target
values); its elements are then ``"<value>:<index>:<label>"``. Other outputs and models pushed
from elsewhere have no labels.

The count is checked with the requested outputs, before the request is queued: a whole number,
at least 1 (400 otherwise). The model runs as usual, so the response cache and a shadow see its
raw outputs; only the answer is classified.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelyard.errors import InvalidInput
from modelyard.tensors import TensorSpec

__all__ = ["PARAMETER", "classification_count", "classify", "labels_of"]

PARAMETER = "classification"


def classification_count(name: str, parameters: dict[str, Any]) -> int | None:
    """The number of classes requested output ``name`` asks for (``None``: its raw values)."""
    count = parameters.get(PARAMETER)
    if count is None:
        return None
    if type(count) is not int or count < 1:
        raise InvalidInput(
            f"requested output {name!r}: the parameter 'classification' must be a whole number of "
            f"classes, at least 1, not {count!r}",
            details={"field": f"outputs.{name}.parameters.classification"},
        )
    return count


def labels_of(lineage: dict[str, Any], output: str) -> list[str] | None:
    """The labels of ``output``'s classes, when the version knows them (see the module)."""
    classes = lineage.get("classes") if output == "probabilities" else None
    return [str(c) for c in classes] if isinstance(classes, list) and classes else None


def classify(
    array: np.ndarray, count: int, spec: TensorSpec | None, labels: list[str] | None = None
) -> np.ndarray:
    """The ``count`` highest-valued classes of each row of ``array`` as ``"value:index"`` bytes
    (``"value:index:label"`` with ``labels``, one per class, when there are as many as a row has
    classes): shape ``[rows, count]`` when the output's first dimension is its batch (``spec``'s
    is -1), else ``[count]`` for the whole tensor."""
    batched = spec is not None and bool(spec.shape) and spec.shape[0] == -1 and array.ndim >= 1
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    kept = min(count, rows.shape[1])
    # highest first, ties by the lower index: a stable ascending sort of each row reversed,
    # read backwards (no negation, which unsigned and the lowest signed integers do not survive)
    last = rows.shape[1] - 1
    order = (last - np.argsort(rows[:, ::-1], axis=1, kind="stable"))[:, ::-1][:, :kept]
    values = np.take_along_axis(rows, order, axis=1)
    text = _formatter(rows.dtype)
    named = labels if labels is not None and len(labels) == rows.shape[1] else None
    out = np.empty(order.shape, dtype=object)
    for r in range(order.shape[0]):
        for c in range(kept):
            index = int(order[r, c])
            label = "" if named is None else f":{named[index]}"
            out[r, c] = f"{text(values[r, c])}:{index}{label}".encode()
    return out if batched else out.reshape(kept)


def _formatter(dtype: np.dtype[Any]) -> Any:
    if dtype.kind == "f":
        return lambda v: f"{float(v):f}"
    return lambda v: str(int(v))  # integers and booleans
