"""Tensors and inference requests as they travel inside ModelYard, independent of transport.

REST (JSON and binary), gRPC and the SDK all decode into these shapes and encode from them, so
the engine sees numpy arrays and never a wire format. Datatype names are those of the Open
Inference Protocol v2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.errors import InvalidInput

__all__ = [
    "DATATYPES",
    "Tensor",
    "RequestedOutput",
    "InferenceRequest",
    "InferenceResponse",
    "TensorSpec",
    "datatype_of",
    "numpy_dtype",
    "element_count",
]

#: OIP v2 datatype name -> numpy dtype (BYTES -> object arrays of ``bytes``).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

_BY_KIND = {dt: name for name, dt in DATATYPES.items() if name != "BYTES"}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype for an OIP datatype name; ``InvalidInput`` when the name is unknown."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise InvalidInput(
            f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        ) from None


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype name of a numpy array (object and string arrays are BYTES)."""
    if array.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _BY_KIND[array.dtype]
    except KeyError:
        raise InvalidInput(f"arrays of dtype {array.dtype} cannot be sent") from None


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named, typed, shaped input or output of a model version; ``-1`` marks a dynamic dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=d["name"], datatype=d["datatype"], shape=tuple(int(x) for x in d["shape"]))

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        for want, got in zip(self.shape, shape):
            if want != got and want != -1:
                return False
        return True


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named numpy array with its OIP datatype; ``data`` already has ``shape``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_array(cls, name: str, array: np.ndarray, **parameters: Any) -> Tensor:
        return cls(name, datatype_of(array), tuple(array.shape), array, dict(parameters))


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferenceResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
