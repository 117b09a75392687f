"""Triton's classification extension: an output asked for with the parameter ``classification:
N`` comes back as its ``N`` highest-valued classes instead of its raw values.

``tritonclient``'s ``InferRequestedOutput(name, class_count=N)`` sends it, over HTTP and gRPC;
in JSON, ``"outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]``. Such
an output is a BYTES tensor of shape ``[batch, N]`` (``[N]`` for an output without a batch
dimension) whose elements are ``"<value>:<index>"``: the class's index in the output's row
(its elements after the batch dimension, row-major) and its value, highest first, ties by the
lower index. Values are written as Triton writes them (C++ ``std::to_string``): floats with six
decimals, integers as they are. ``N`` larger than the number of classes returns them all.

Labels (what Triton reads from an output's label file): with a label for its index, a class is
``"<value>:<index>:<label>"``. Where they come from, first found:

* the version's ``labels`` tag, ``{"<output>": ["<label of class 0>", "<label of class 1>", ...]}``;
* the model's ``labels`` tag, the same for all its versions;
* for a version ModelYard trained, its ``probabilities`` output: its lineage's ``classes`` (the
  training data's target values, one per column).

A ``labels`` tag is checked when it is written (:func:`parse_labels`; a version's also against its
outputs, :func:`check_labels`): each output's labels a list of non-empty one-line strings, as
many as the output has classes per row when its shape says so. A class past the end of its
labels (an output of dynamic width) has none, as in Triton.

The count is checked with the requested outputs, before the request is queued: a whole number,
at least 1 (400 otherwise). The model runs as usual, so the response cache and a shadow see its
raw outputs; only the answer is classified.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.errors import InvalidInput, ValidationFailed
from modelyard.tensors import TensorSpec

if TYPE_CHECKING:
    from modelyard.core.registry import VersionInfo

__all__ = ["LABELS_TAG", "PARAMETER", "check_labels", "classification_count", "classify", "labels_of", "parse_labels"]

PARAMETER = "classification"
#: the tag (a model's or a version's) that names its outputs' classes
LABELS_TAG = "labels"
_MAX_LABELS = 100_000
_MAX_LABEL_CHARS = 1_024


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


def labels_of(info: VersionInfo, output: str) -> list[str] | None:
    """The labels of ``output``'s classes, when the version knows them (see the module)."""
    for tag in (info.tags.get(LABELS_TAG), info.model_labels):
        names = tag.get(output) if isinstance(tag, dict) else None
        if isinstance(names, list):  # (a tag written before labels were checked may be anything)
            return [str(n) for n in names]
    classes = info.lineage.get("classes") if output == "probabilities" else None
    return [str(c) for c in classes] if isinstance(classes, list) and classes else None


def parse_labels(raw: Any, where: str = "tags.labels") -> dict[str, list[str]]:
    """Check a ``labels`` tag (see the module) and return it; :class:`ValidationFailed` names the
    field at fault."""
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, str) and k for k in raw):
        raise ValidationFailed(
            f"{where} must be an object of output names to their classes' labels, e.g. "
            '{"probabilities": ["cat", "dog"]}',
            details={"field": where},
        )
    for name, labels in raw.items():
        field = f"{where}.{name}"
        if not isinstance(labels, list) or not 1 <= len(labels) <= _MAX_LABELS:
            raise ValidationFailed(
                f"{field} must be a list of 1 to {_MAX_LABELS:,} labels, the label of class 0 first",
                details={"field": field},
            )
        for i, label in enumerate(labels):
            if not isinstance(label, str) or not 0 < len(label) <= _MAX_LABEL_CHARS or not label.isprintable():
                raise ValidationFailed(
                    f"{field}[{i}] must be a label of 1 to {_MAX_LABEL_CHARS:,} printable characters "
                    f"on one line, not {label!r:.80}",
                    details={"field": field},
                )
    return raw


def check_labels(labels: dict[str, list[str]], outputs: Iterable[TensorSpec], where: str = "tags.labels") -> None:
    """Check a version's ``labels`` tag against its ``outputs``: each names one, not a BYTES
    one, with as many labels as it has classes per row when its shape says how many."""
    specs = {s.name: s for s in outputs}
    for name, names in labels.items():
        field = f"{where}.{name}"
        spec = specs.get(name)
        if spec is None:
            raise ValidationFailed(
                f"{field}: the version has no output {name!r}; its outputs are {', '.join(sorted(specs)) or 'none'}",
                details={"field": field},
            )
        if spec.datatype == "BYTES":
            raise ValidationFailed(f"{field}: output {name!r} is BYTES, it has no classes to name",
                                   details={"field": field})
        classes = _classes_per_row(spec)
        if classes is not None and classes != len(names):
            raise ValidationFailed(
                f"{field}: output {name!r} has {classes:,} classes per row (shape {list(spec.shape)}); "
                f"{len(names):,} labels were given",
                details={"field": field},
            )


def _classes_per_row(spec: TensorSpec) -> int | None:
    """How many classes a row of ``spec`` holds (see :func:`classify`), ``None`` when its shape
    leaves that open."""
    dims = spec.shape[1:] if spec.shape and spec.shape[0] == -1 else spec.shape
    return None if any(d < 0 for d in dims) else math.prod(dims)


def classify(
    array: np.ndarray, count: int, spec: TensorSpec | None, labels: list[str] | None = None
) -> np.ndarray:
    """The ``count`` highest-valued classes of each row of ``array`` as ``"value:index"`` bytes
    (``"value:index:label"`` where ``labels`` has one for the index): shape ``[rows, count]`` when the output's first dimension is its batch (``spec``'s
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
    named = labels or ()
    out = np.empty(order.shape, dtype=object)
    for r in range(order.shape[0]):
        for c in range(kept):
            index = int(order[r, c])
            label = f":{named[index]}" if index < len(named) else ""
            out[r, c] = f"{text(values[r, c])}:{index}{label}".encode()
    return out if batched else out.reshape(kept)


def _formatter(dtype: np.dtype[Any]) -> Any:
    if dtype.kind == "f":
        return lambda v: f"{float(v):f}"
    return lambda v: str(int(v))  # integers and booleans
