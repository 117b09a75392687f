"""Open Inference Protocol v2 REST wire codec: JSON bodies and the binary tensor data extension.

Pure functions between wire bytes and the transport-independent shapes of
:mod:`modelyard.tensors`. The server decodes requests and encodes responses; the SDK encodes
requests and decodes responses, so this module imports nothing from the server side (only numpy,
a JSON library, :mod:`modelyard.tensors` and :mod:`modelyard.errors`).

Body layout (KServe / Triton):

- pure JSON: ``{"id"?, "parameters"?, "inputs": [{"name", "datatype", "shape", "parameters"?,
  "data"}], "outputs"?: [{"name", "parameters"?}]}``; ``data`` is flat row-major or nested
  exactly as ``shape``; BYTES elements are UTF-8 strings.
- binary extension: the HTTP header ``Inference-Header-Content-Length: N`` says the first N bytes
  are that JSON; tensors whose ``parameters.binary_data_size`` is set carry no ``data`` and their
  raw little-endian bytes follow the JSON, concatenated in tensor order. A BYTES tensor in binary
  is its elements, each prefixed by its length as a 4-byte little-endian unsigned integer.

Every malformed request raises :class:`~modelyard.errors.InvalidInput` whose message names the
tensor and the problem.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelyard.core.shared_memory import REGION
from modelyard.errors import InvalidInput
from modelyard.tensors import (
    DATATYPES,
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    Tensor,
    decode_raw_tensor,
    deserialize_bytes_elements,
    element_count,
    serialize_bytes_elements,
)

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    _orjson = None  # type: ignore[assignment]

__all__ = [
    "HEADER_LENGTH_HEADER",
    "IN_REGION",
    "decode_infer_request",
    "PreparedRequest",
    "encode_infer_response",
    "encode_infer_request",
    "decode_infer_response",
    "decode_raw_tensor",
    "encode_raw_tensor",
    "serialize_bytes_elements",
    "deserialize_bytes_elements",
    "select_outputs",
    "wire_array",
]

#: The HTTP header of the binary tensor data extension: the length of the JSON part of the body.
HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"

_ALLOWED = ", ".join(DATATYPES)
#: an input's ``data`` until the data plane reads it from its shared-memory region
IN_REGION = np.empty(0, dtype=np.uint8)
IN_REGION.flags.writeable = False
#: numeric datatype -> its little-endian numpy dtype, as tensors travel
_WIRE = {name: dtype.newbyteorder("<") for name, dtype in DATATYPES.items() if name != "BYTES"}
#: outputs this small are copied into bytes rather than viewed (see ``_raw_chunk``)
_COPY_AT_MOST = 64 * 1024


# --------------------------------------------------------------------------------------------
# public entry points


def decode_infer_request(
    body: bytes | bytearray | memoryview, header_length: int | str | None = None
) -> InferenceRequest:
    """Decode an OIP v2 ``POST .../infer`` body into an :class:`InferenceRequest`.

    ``header_length`` is the value of the ``Inference-Header-Content-Length`` header (``None``
    when absent: the whole body is JSON). Input arrays come back shaped; numeric inputs sent in
    binary are read-only views of ``body`` (no copy) when aligned. ``binary_data_size`` is
    removed from each input's parameters (it is framing, not meaning). An input whose parameters
    name a shared-memory region comes back with empty ``data`` and the request marked
    ``shared_memory`` (the data plane reads it: ``core/shared_memory.py``). Raises
    ``InvalidInput`` for anything malformed.

    A client sends the same JSON header with every request of one shape, so the header of an
    all-binary request is parsed and checked once and remembered (a bounded memo, like a prepared
    statement): a request with a header seen before only has its binary part read.
    """
    if header_length is not None:
        view = memoryview(body)
        if view.format == "B" and view.ndim == 1 and isinstance(header_length, int) and 0 <= header_length:
            prepared = _PREPARED.get(bytes(view[:header_length]))
            if prepared is not None and len(view) - header_length == prepared.total:
                return prepared.build_from(view[header_length:])
    request = _decode_request(body, header_length)
    if header_length is not None:
        _prepare(body, int(header_length), request)
    return request


class PreparedRequest:
    """What requests that share one header have in common (inputs' names, datatypes, shapes and
    parameters; requested outputs; id; parameters): only their raw tensor bytes differ. Shared
    with the gRPC codec, whose requests carry the same in ``raw_input_contents``."""

    __slots__ = ("inputs", "outputs", "id", "parameters", "sizes", "total", "_plain")

    def __init__(self, request: InferenceRequest, sizes: Sequence[int]) -> None:
        self.inputs = [(t.name, t.datatype, t.shape, t.parameters) for t in request.inputs]
        self.outputs = request.outputs
        self.id = request.id
        self.parameters = request.parameters
        self.sizes = tuple(sizes)
        self.total = sum(sizes)
        # Per input, its wire dtype and element count when any bytes of the right size are a
        # valid value (numbers other than BOOL): those are read without decode_raw_tensor's
        # checks, which the first request of this header passed. None: decode and check.
        self._plain = [
            None if datatype in ("BYTES", "BOOL") else (_WIRE[datatype], element_count(shape))
            for _, datatype, shape, _ in self.inputs
        ]

    def build(self, parts: Sequence[bytes | memoryview]) -> InferenceRequest:
        """The request whose inputs' raw bytes are ``parts`` (one per input, in order)."""
        inputs = []
        for (name, datatype, shape, params), plain, size, part in zip(self.inputs, self._plain, self.sizes, parts):
            if plain is not None and len(part) == size:
                array = np.frombuffer(part, dtype=plain[0], count=plain[1])
                if not array.flags.aligned:
                    array = array.copy()
                array = array.reshape(shape)
            else:
                array = decode_raw_tensor(part, datatype=datatype, shape=shape, name=f"input {name!r}")
            inputs.append(Tensor(name, datatype, shape, array, dict(params)))
        return InferenceRequest(
            inputs=inputs,
            outputs=list(self.outputs) if self.outputs is not None else None,
            id=self.id,
            parameters=dict(self.parameters),
        )

    def build_from(self, binary: memoryview) -> InferenceRequest:
        """The request whose inputs' raw bytes follow each other in ``binary``."""
        parts = []
        pos = 0
        for size in self.sizes:
            parts.append(binary[pos : pos + size])
            pos += size
        return self.build(parts)


#: JSON header bytes -> :class:`PreparedRequest` (cleared when full)
_PREPARED: dict[bytes, PreparedRequest] = {}
_PREPARED_MAX = 1024


def _prepare(body: bytes | bytearray | memoryview, header_length: int, request: InferenceRequest) -> None:
    """Remember a decoded all-binary, numeric request's header for the next ones like it."""
    if request.shared_memory:
        return  # its inputs in regions are not in the body
    sizes = []
    for t in request.inputs:
        if t.datatype == "BYTES" or not t.data.flags.aligned:
            return
        sizes.append(t.data.nbytes)
    if len(memoryview(body)) - header_length != sum(sizes):
        return  # some input was JSON data
    if len(_PREPARED) >= _PREPARED_MAX:
        _PREPARED.clear()
    _PREPARED[bytes(memoryview(body)[:header_length])] = PreparedRequest(request, sizes)


def _decode_request(
    body: bytes | bytearray | memoryview, header_length: int | str | None
) -> InferenceRequest:
    doc, binary = _split_body(body, header_length)
    reader = _BinaryReader(binary, enabled=header_length is not None)
    raw_inputs = doc.get("inputs")
    if raw_inputs is None:
        raise InvalidInput("request is missing 'inputs'")
    if not isinstance(raw_inputs, list):
        raise InvalidInput("'inputs' must be a JSON array")
    inputs = [_decode_tensor(item, reader, "input", i) for i, item in enumerate(raw_inputs)]
    reader.finish()
    seen: set[str] = set()
    shared = False  # an input or an output in a shared-memory region
    for t in inputs:
        if t.name in seen:
            raise InvalidInput(f"input {t.name!r} appears more than once")
        seen.add(t.name)
        if t.data is IN_REGION:
            shared = True
    outputs = _decode_requested_outputs(doc.get("outputs"))
    if outputs is not None and not shared:
        shared = any(REGION in o.parameters for o in outputs)
    return InferenceRequest(
        inputs=inputs,
        outputs=outputs,
        id=_decode_id(doc.get("id")),
        parameters=_parameters(doc.get("parameters"), "request"),
        shared_memory=shared,
    )


def encode_infer_response(
    resp: InferenceResponse,
    *,
    requested: Sequence[RequestedOutput] | None,
    binary_default: bool,
) -> tuple[bytes, int | None]:
    """Encode a response as an OIP v2 body; returns ``(body, header_length)``.

    ``header_length`` is ``None`` for a pure JSON body, otherwise the value to send as the
    ``Inference-Header-Content-Length`` header. An output goes binary when its requested
    ``parameters.binary_data`` is true, or, when it says nothing, when ``binary_default`` (the
    request's ``binary_data_output`` parameter) is true. JSON data is a flat row-major list (FP16
    as JSON numbers too). A BYTES output that is not valid UTF-8 is always sent binary.

    When ``requested`` is non-empty only those outputs are encoded, in that order; naming an
    output the response lacks raises ``InvalidInput``.
    """
    outputs = select_outputs(resp.outputs, requested)
    flags = _binary_flags(requested)
    key = _binary_head_key(resp, outputs, flags, binary_default)
    if key is not None:
        head = _BINARY_HEADS.get(key)
        if head is not None:
            return b"".join([head, *[_raw_chunk(t.data, t.datatype, "") for t in outputs]]), len(head)
    doc: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id is not None:
        doc["id"] = resp.id
    if resp.parameters:
        doc["parameters"] = dict(resp.parameters)
    entries, chunks = _encode_tensors(
        outputs, "output", lambda name: flags.get(name, binary_default)
    )
    doc["outputs"] = entries
    body, length = _assemble(doc, chunks)
    if key is not None and length is not None:
        if len(_BINARY_HEADS) >= _BINARY_HEADS_MAX:
            _BINARY_HEADS.clear()
        _BINARY_HEADS[key] = body[:length]
    return body, length


#: an all-binary response's JSON header, by what it is made of (see ``_binary_head_key``)
_BINARY_HEADS: dict[tuple[Any, ...], bytes] = {}
_BINARY_HEADS_MAX = 1024


def _binary_head_key(
    resp: InferenceResponse, outputs: Sequence[Tensor], flags: Mapping[str, bool], binary_default: bool
) -> tuple[Any, ...] | None:
    """What the JSON header of ``resp`` depends on, when all of it is: every output numeric,
    sent binary, without parameters, its array already of its datatype and shape (so only the
    raw bytes differ between answers of one model to requests of one shape); else ``None``.
    Encoding that header once saves most of an answer's encoding (the twin of the decoder's
    ``PreparedRequest``)."""
    if resp.id is not None or resp.parameters:
        return None
    key: list[Any] = [resp.model_name, resp.model_version]
    for t in outputs:
        data = t.data
        if (
            t.parameters
            or not flags.get(t.name, binary_default)
            or t.datatype not in _WIRE
            or not isinstance(data, np.ndarray)
            or data.dtype != DATATYPES[t.datatype]
            or data.shape != t.shape
        ):
            return None
        key.append((t.name, t.datatype, t.shape))
    return tuple(key)


def encode_infer_request(
    req: InferenceRequest, *, binary_inputs: bool = True, binary_outputs: bool = False
) -> tuple[bytes, int | None]:
    """Encode a request as an OIP v2 body (the SDK side); returns ``(body, header_length)``.

    ``binary_inputs`` sends input tensors with the binary extension (as Triton's client does by
    default); a BYTES input that is not valid UTF-8 is sent binary regardless. ``binary_outputs``
    asks the server for binary outputs: it sets the request parameter ``binary_data_output`` and
    ``binary_data`` on each requested output that does not say otherwise.
    """
    doc: dict[str, Any] = {}
    if req.id is not None:
        doc["id"] = req.id
    parameters = dict(req.parameters)
    if binary_outputs:
        parameters.setdefault("binary_data_output", True)
    if parameters:
        doc["parameters"] = parameters
    entries, chunks = _encode_tensors(req.inputs, "input", lambda _name: binary_inputs)
    doc["inputs"] = entries
    if req.outputs:
        outs = []
        for out in req.outputs:
            params = dict(out.parameters)
            if binary_outputs:
                params.setdefault("binary_data", True)
            entry: dict[str, Any] = {"name": out.name}
            if params:
                entry["parameters"] = params
            outs.append(entry)
        doc["outputs"] = outs
    return _assemble(doc, chunks)


def decode_infer_response(
    body: bytes | bytearray | memoryview, header_length: int | str | None = None
) -> InferenceResponse:
    """Decode an OIP v2 infer response body (JSON or binary extension) into a response.

    The inverse of :func:`encode_infer_response`, used by the SDK; accepts Triton's own bodies.
    Raises ``InvalidInput`` for a malformed body.
    """
    doc, binary = _split_body(body, header_length)
    reader = _BinaryReader(binary, enabled=header_length is not None)
    raw_outputs = doc.get("outputs", [])
    if not isinstance(raw_outputs, list):
        raise InvalidInput("'outputs' must be a JSON array")
    outputs = [_decode_tensor(item, reader, "output", i) for i, item in enumerate(raw_outputs)]
    reader.finish()
    model_name = doc.get("model_name", "")
    model_version = doc.get("model_version", "")
    return InferenceResponse(
        model_name=str(model_name),
        model_version=str(model_version),
        outputs=outputs,
        id=_decode_id(doc.get("id")),
        parameters=_parameters(doc.get("parameters"), "response"),
    )


# --------------------------------------------------------------------------------------------
# raw tensor bytes (the decoding half and BYTES framing live in ``modelyard.tensors``)


def encode_raw_tensor(array: np.ndarray, datatype: str) -> bytes:
    """The raw wire bytes of one tensor: little-endian row-major, or length-prefixed BYTES."""
    return bytes(_raw_chunk(np.asarray(array), datatype, "tensor"))


# --------------------------------------------------------------------------------------------
# decoding helpers


class _BinaryReader:
    """Hands out consecutive slices of the binary part of a body, in tensor order."""

    __slots__ = ("_buf", "_pos", "_enabled")

    def __init__(self, buf: memoryview, *, enabled: bool) -> None:
        self._buf = buf
        self._pos = 0
        self._enabled = enabled

    def take(self, size: int, what: str) -> memoryview:
        if not self._enabled:
            raise InvalidInput(
                f"{what}: parameters.binary_data_size is set but the request has no "
                f"{HEADER_LENGTH_HEADER} header, so the body holds no binary data"
            )
        left = len(self._buf) - self._pos
        if size > left:
            raise InvalidInput(
                f"{what}: binary_data_size is {size} bytes but only {left} bytes of binary data "
                "are left in the body"
            )
        chunk = self._buf[self._pos : self._pos + size]
        self._pos += size
        return chunk

    def finish(self) -> None:
        left = len(self._buf) - self._pos
        if left:
            raise InvalidInput(
                f"{left} bytes of binary data follow the last binary tensor; the "
                "binary_data_size values do not add up to the body"
            )


def _split_body(
    body: bytes | bytearray | memoryview, header_length: int | str | None
) -> tuple[dict[str, Any], memoryview]:
    view = memoryview(body)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if header_length is None:
        return _load_object(view), view[len(view) :]
    try:
        n = int(header_length)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"{HEADER_LENGTH_HEADER} must be an integer, got {header_length!r}"
        ) from None
    if n < 0:
        raise InvalidInput(f"{HEADER_LENGTH_HEADER} must not be negative, got {n}")
    if n > len(view):
        raise InvalidInput(
            f"{HEADER_LENGTH_HEADER} is {n} but the body is only {len(view)} bytes"
        )
    return _load_object(view[:n]), view[n:]


def _load_object(view: memoryview) -> dict[str, Any]:
    try:
        doc = _orjson.loads(view) if _orjson is not None else json.loads(bytes(view))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidInput(f"malformed JSON in the request body: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInput(
            f"malformed JSON: the body must be a JSON object, got {type(doc).__name__}"
        )
    return doc


def _decode_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"'id' must be a string, got {type(value).__name__}")
    return value


def _parameters(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what}: 'parameters' must be a JSON object")
    return dict(value)


def _decode_requested_outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput("'outputs' must be a JSON array")
    out: list[RequestedOutput] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidInput(f"requested output #{i} must be a JSON object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"requested output #{i} is missing 'name'")
        params = _parameters(item.get("parameters"), f"requested output {name!r}")
        out.append(RequestedOutput(name=name, parameters=params))
    return out


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if value is None:
        raise InvalidInput(f"{what}: missing 'shape'")
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise InvalidInput(f"{what}: 'shape' must be a list of integers, got {value!r}")
    if any(d < 0 for d in value):
        raise InvalidInput(f"{what}: shape {value} has a negative dimension")
    return tuple(value)


def _decode_tensor(item: Any, reader: _BinaryReader, kind: str, index: int) -> Tensor:
    if not isinstance(item, dict):
        raise InvalidInput(f"{kind} #{index} must be a JSON object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{kind} #{index} is missing 'name'")
    what = f"{kind} {name!r}"
    datatype = item.get("datatype")
    if datatype is None:
        raise InvalidInput(f"{what}: missing 'datatype'")
    if datatype not in DATATYPES:
        raise InvalidInput(
            f"{what}: unknown datatype {datatype!r}; expected one of {_ALLOWED}"
        )
    shape = _shape(item.get("shape"), what)
    params = _parameters(item.get("parameters"), what)
    if REGION in params:
        if "data" in item or "binary_data_size" in params:
            raise InvalidInput(f"{what}: names a shared memory region and also carries data; send one of them")
        return Tensor(name=name, datatype=datatype, shape=shape, data=IN_REGION, parameters=params)
    size = params.pop("binary_data_size", None)
    if size is not None:
        if "data" in item:
            raise InvalidInput(f"{what}: has both 'data' and parameters.binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(
                f"{what}: binary_data_size must be a non-negative integer, got {size!r}"
            )
        array = decode_raw_tensor(
            reader.take(size, what), datatype=datatype, shape=shape, name=what
        )
    elif "data" in item:
        array = _array_from_json(item["data"], datatype, shape, what)
    else:
        raise InvalidInput(
            f"{what}: missing 'data' (or parameters.binary_data_size with binary data)"
        )
    return Tensor(name=name, datatype=datatype, shape=shape, data=array, parameters=params)


_KIND_WORDS = {
    "b": "booleans",
    "i": "integers",
    "u": "integers",
    "f": "floats",
    "U": "strings",
    "S": "strings",
    "O": "mixed or out-of-range values",
}


def _array_from_json(data: Any, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidInput(f"{what}: 'data' must be a JSON array, got {type(data).__name__}")
    count = element_count(shape)
    if datatype == "BYTES":
        flat, got_shape = _flatten_strings(data, what)
        _check_layout(got_shape, shape, count, what)
        arr = np.empty(count, dtype=object)
        arr[:] = flat
        return arr.reshape(shape)
    try:
        raw = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(
            f"{what}: 'data' is ragged (nested lists of unequal length) or holds non-numbers"
        ) from None
    _check_layout(raw.shape, shape, count, what)
    dtype = DATATYPES[datatype]
    if raw.size == 0:
        return np.zeros(shape, dtype=dtype)
    kind = raw.dtype.kind
    if dtype.kind in "iu" and kind in "fO":
        raw = _exact_integers(data, raw, datatype, what)
        kind = raw.dtype.kind
    if datatype == "BOOL":
        ok, expected = kind == "b", "true/false"
    elif dtype.kind in "iu":
        ok, expected = kind in "iu", "integers"
    else:
        ok, expected = kind in "iuf", "numbers"
    if not ok:
        got = _KIND_WORDS.get(kind, str(raw.dtype))
        raise InvalidInput(f"{what}: {datatype} 'data' must hold {expected}, got {got}")
    if dtype.kind in "iu" and raw.dtype != dtype:
        info = np.iinfo(dtype)
        lo, hi = raw.min(), raw.max()
        if lo < info.min or hi > info.max:
            raise InvalidInput(
                f"{what}: value out of range for {datatype} ({info.min}..{info.max})"
            )
    with np.errstate(over="ignore"):
        return raw.astype(dtype, copy=False).reshape(shape)


def _exact_integers(data: list[Any], raw: np.ndarray, datatype: str, what: str) -> np.ndarray:
    """Re-read JSON integers that numpy widened to float64 or object (a mix of int64 and
    uint64-only values, or values beyond 64 bits); ``raw`` unchanged if any value is not an int."""
    values = np.array(data, dtype=object).reshape(-1).tolist()
    if not all(type(v) is int for v in values):
        return raw
    dtype = DATATYPES[datatype]
    info = np.iinfo(dtype)
    if min(values) < info.min or max(values) > info.max:
        raise InvalidInput(f"{what}: value out of range for {datatype} ({info.min}..{info.max})")
    return np.array(values, dtype=dtype).reshape(raw.shape)


def _check_layout(
    got_shape: tuple[int, ...], shape: tuple[int, ...], count: int, what: str
) -> None:
    if len(got_shape) > 1 and tuple(got_shape) != shape:
        raise InvalidInput(
            f"{what}: nested 'data' has shape {list(got_shape)} but 'shape' is {list(shape)}"
        )
    got = element_count(got_shape)
    if got != count:
        raise InvalidInput(
            f"{what}: 'data' has {got} elements but shape {list(shape)} needs {count}"
        )


def _flatten_strings(data: list[Any], what: str) -> tuple[list[bytes], tuple[int, ...]]:
    """Flatten (possibly nested) lists of strings to UTF-8 bytes and the nesting shape."""
    if all(type(x) is str for x in data):
        return [x.encode("utf-8") for x in data], (len(data),)
    if not all(isinstance(x, list) for x in data):
        bad = next((x for x in data if not isinstance(x, (str, list))), None)
        if bad is None:
            raise InvalidInput(f"{what}: 'data' is ragged (strings mixed with lists)")
        raise InvalidInput(f"{what}: BYTES 'data' must hold strings, got {type(bad).__name__}")
    flat: list[bytes] = []
    sub_shape: tuple[int, ...] | None = None
    for sub in data:
        items, s = _flatten_strings(sub, what)
        if sub_shape is None:
            sub_shape = s
        elif s != sub_shape:
            raise InvalidInput(f"{what}: 'data' is ragged (nested lists of unequal length)")
        flat.extend(items)
    return flat, (len(data), *(sub_shape or (0,)))


# --------------------------------------------------------------------------------------------
# encoding helpers


def select_outputs(
    outputs: Sequence[Tensor], requested: Sequence[RequestedOutput] | None
) -> list[Tensor]:
    """The outputs to send: all when ``requested`` is empty, else those named, in that order.

    Naming an output the response lacks raises ``InvalidInput``. Shared with the gRPC codec.
    """
    if not requested:
        return list(outputs)
    by_name = {t.name: t for t in outputs}
    chosen: list[Tensor] = []
    for r in requested:
        t = by_name.get(r.name)
        if t is None:
            raise InvalidInput(
                f"requested output {r.name!r} is not an output of this model; it has "
                f"{', '.join(repr(n) for n in by_name) or 'none'}"
            )
        chosen.append(t)
    return chosen


def _binary_flags(requested: Sequence[RequestedOutput] | None) -> dict[str, bool]:
    flags: dict[str, bool] = {}
    for r in requested or ():
        value = r.parameters.get("binary_data")
        if value is not None:
            flags[r.name] = bool(value)
    return flags


def _encode_tensors(
    tensors: Sequence[Tensor], kind: str, want_binary: Any
) -> tuple[list[dict[str, Any]], list[Any]]:
    entries: list[dict[str, Any]] = []
    chunks: list[Any] = []
    for t in tensors:
        what = f"{kind} {t.name!r}"
        array = wire_array(t, what)
        params = dict(t.parameters)
        params.pop("binary_data_size", None)
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if REGION in params:  # written to a shared-memory region (core/shared_memory.py)
            entry["parameters"] = params
            entries.append(entry)
            continue
        data = None if want_binary(t.name) else _json_data(array, t.datatype)
        if data is not None:
            if params:
                entry["parameters"] = params
            entry["data"] = data
        else:
            chunk = _raw_chunk(array, t.datatype, what)
            params["binary_data_size"] = len(chunk)  # bytes, or a 1-D view of bytes
            entry["parameters"] = params
            chunks.append(chunk)
        entries.append(entry)
    return entries, chunks


def wire_array(t: Tensor, what: str) -> np.ndarray:
    """``t.data`` as an array of ``t.datatype``'s numpy dtype, checked against ``t.shape``.

    ``what`` names the tensor in the ``InvalidInput`` raised for an unknown datatype or an
    element count that does not match the shape. Shared with the gRPC codec.
    """
    if t.datatype not in DATATYPES:
        raise InvalidInput(f"{what}: unknown datatype {t.datatype!r}; expected one of {_ALLOWED}")
    array = np.asarray(t.data)
    count = element_count(t.shape)
    if array.size != count:
        raise InvalidInput(
            f"{what}: data has {array.size} elements but shape {list(t.shape)} needs {count}"
        )
    if t.datatype != "BYTES" and array.dtype != DATATYPES[t.datatype]:
        with np.errstate(over="ignore", invalid="ignore"):
            array = array.astype(DATATYPES[t.datatype])
    return array


def _json_data(array: np.ndarray, datatype: str) -> Any:
    """Flat JSON-able data for ``array``; ``None`` when it cannot be JSON (non-UTF-8 BYTES)."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        out: list[str] = []
        for item in flat.tolist():
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, (bytes, bytearray)):
                try:
                    out.append(item.decode("utf-8"))
                except UnicodeDecodeError:
                    return None
            else:
                out.append(str(item))
        return out
    if _orjson is not None:
        return np.ascontiguousarray(flat)
    return flat.tolist()


def _raw_chunk(array: np.ndarray, datatype: str, what: str) -> bytes | memoryview:
    """The wire bytes of ``array``: a copy when small (cheaper than a buffer view: about half,
    ``bench/hot_path.py``), else a view without a copy (the answer's body is joined from it)."""
    if datatype == "BYTES":
        return serialize_bytes_elements(array)
    wire = _WIRE.get(datatype)
    if wire is None:
        raise InvalidInput(f"{what}: unknown datatype {datatype!r}; expected one of {_ALLOWED}")
    contiguous = np.ascontiguousarray(array, dtype=wire)
    if contiguous.nbytes <= _COPY_AT_MOST:
        return contiguous.tobytes()
    return contiguous.reshape(-1).view(np.uint8).data


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", errors="replace")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _dumps(doc: Mapping[str, Any]) -> bytes:
    if _orjson is not None:
        return _orjson.dumps(
            doc, default=_json_default, option=_orjson.OPT_SERIALIZE_NUMPY
        )
    return json.dumps(doc, separators=(",", ":"), default=_json_default).encode("utf-8")


def _assemble(doc: Mapping[str, Any], chunks: list[Any]) -> tuple[bytes, int | None]:
    header = _dumps(doc)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
