"""Tensors and inference requests as they travel inside ModelYard, independent of transport.

REST (JSON and binary), gRPC and the SDK all decode into these shapes and encode from them, so
the engine sees numpy arrays and never a wire format. Datatype names are those of the Open
Inference Protocol v2.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
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
    "decode_raw_tensor",
    "serialize_bytes_elements",
    "deserialize_bytes_elements",
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
    #: an input or a requested output names a shared-memory region (its parameters say which):
    #: such an input's ``data`` is empty until the data plane reads it from the region
    shared_memory: bool = False


@dataclass(frozen=True, slots=True)
class InferenceResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# raw tensor bytes: little-endian row-major numbers, length-prefixed BYTES (the OIP v2 binary
# extension, gRPC's raw contents and shared-memory regions all carry tensors so)

_LEN = struct.Struct("<I")


def decode_raw_tensor(
    buf: bytes | bytearray | memoryview, *, datatype: str, shape: Sequence[int], name: str
) -> np.ndarray:
    """Decode one tensor's raw little-endian bytes into an array of ``shape``.

    ``name`` is used in error messages (e.g. ``"input 'x'"``). Numeric tensors are zero-copy,
    read-only views of ``buf`` when ``buf`` is suitably aligned (a copy otherwise); BYTES
    tensors are length-prefixed elements and come back as an object array of ``bytes``.
    """
    count = element_count(tuple(shape))
    if datatype == "BYTES":
        items = deserialize_bytes_elements(buf, name=name)
        if len(items) != count:
            raise InvalidInput(
                f"{name}: binary data holds {len(items)} BYTES elements but shape "
                f"{list(shape)} needs {count}"
            )
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    dtype = DATATYPES[datatype]
    need = count * dtype.itemsize
    size = memoryview(buf).nbytes
    if size != need:
        raise InvalidInput(
            f"{name}: binary data is {size} bytes but shape {list(shape)} of {datatype} "
            f"needs {need}"
        )
    arr = np.frombuffer(buf, dtype=dtype.newbyteorder("<"), count=count)
    if not arr.flags.aligned:
        arr = arr.copy()
    if datatype == "BOOL" and count and int(arr.view(np.uint8).max()) > 1:
        raise InvalidInput(f"{name}: BOOL binary data must hold only bytes 0 and 1")
    return arr.reshape(shape)


def serialize_bytes_elements(array: np.ndarray) -> bytes:
    """Length-prefixed (4-byte little-endian) concatenation of a BYTES array, row-major.

    Elements may be ``bytes``, ``str`` (encoded as UTF-8) or anything else (``str()`` then UTF-8).
    """
    parts: list[bytes] = []
    pack = _LEN.pack
    for item in np.asarray(array, dtype=object).reshape(-1).tolist():
        b = _as_bytes(item)
        parts.append(pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def deserialize_bytes_elements(
    buf: bytes | bytearray | memoryview, *, name: str = "tensor"
) -> list[bytes]:
    """Split length-prefixed BYTES wire data into its elements; ``InvalidInput`` if truncated."""
    data = bytes(buf)
    out: list[bytes] = []
    pos, end = 0, len(data)
    unpack = _LEN.unpack_from
    while pos < end:
        if end - pos < 4:
            raise InvalidInput(
                f"{name}: BYTES binary data ends inside a 4-byte length prefix at offset {pos}"
            )
        (n,) = unpack(data, pos)
        pos += 4
        if n > end - pos:
            raise InvalidInput(
                f"{name}: BYTES element at offset {pos - 4} claims {n} bytes but only "
                f"{end - pos} remain"
            )
        out.append(data[pos : pos + n])
        pos += n
    return out


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    return str(item).encode("utf-8")
