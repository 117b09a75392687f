"""Open Inference Protocol v2 gRPC codec: ``ModelInferRequest`` / ``ModelInferResponse`` messages.

Pure functions between the protobuf messages of ``grpc_service.proto`` and the
transport-independent shapes of :mod:`modelyard.tensors`. Validation and error messages match
the REST codec (:mod:`modelyard.api.v2.codec`), whose raw-tensor helpers this module shares, so a
bad tensor reads the same on both transports.

Tensor data travels either typed, in ``InferTensorContents`` (one repeated field per datatype
family; FP16 has none), or as raw little-endian bytes in ``raw_input_contents`` /
``raw_output_contents``, one entry per tensor in tensor order (BYTES as 4-byte little-endian
length-prefixed elements). ``tritonclient.grpc`` sends and expects the raw form.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np

from modelyard.api.v2.codec import (
    IN_REGION,
    PreparedRequest,
    decode_raw_tensor,
    encode_raw_tensor,
    select_outputs,
    wire_array,
)
from modelyard.core.shared_memory import REGION
from modelyard.errors import InvalidInput
from modelyard.grpc.proto import grpc_service_pb2 as pb
from modelyard.tensors import (
    DATATYPES,
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    Tensor,
    element_count,
)

__all__ = [
    "InferCall",
    "RawMessage",
    "EncodedMessage",
    "infer_call",
    "call_target",
    "encode_response",
    "stream_response",
    "request_from_proto",
    "response_to_proto",
    "request_to_proto",
    "response_from_proto",
    "parameters_from_proto",
    "parameters_to_proto",
]

#: datatype -> (InferTensorContents field, numpy dtype of that field's values). FP16 has none.
_CONTENTS: dict[str, tuple[str, np.dtype[Any]]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(np.object_)),
}
_CONTENT_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)
_ALLOWED = ", ".join(DATATYPES)
_INT64_MAX = 2**63 - 1


class RawMessage:
    """A ``ModelInferRequest`` still in wire bytes (the native transport hands these over, so
    decoding errors are reported by the servicer like any other bad input)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def call_target(data: bytes, start: int = 0) -> tuple[str, str] | None:
    """``(model_name, model_version)`` of the serialized ``ModelInferRequest`` in ``data`` from
    ``start``, read off its first fields without decoding the message (protobuf encoders write
    fields in number order, and these are fields 1 and 2; an empty version is left out). ``None``
    when the message does not start with them: the caller then decodes it as usual."""
    found: list[str] = []
    pos, end = start, len(data)
    for tag in (0x0A, 0x12):  # field 1 and field 2, length-delimited
        if pos >= end or data[pos] != tag:
            break
        length, shift, pos = 0, 0, pos + 1
        while pos < end and data[pos] & 0x80 and shift < 28:
            length |= (data[pos] & 0x7F) << shift
            shift, pos = shift + 7, pos + 1
        if pos >= end or data[pos] & 0x80:
            return None
        length |= data[pos] << shift
        pos += 1
        if pos + length > end:
            return None
        try:
            found.append(data[pos : pos + length].decode())
        except UnicodeDecodeError:
            return None
        pos += length
    if not found:
        return None
    return found[0], found[1] if len(found) > 1 else ""


class InferCall:
    """A decoded ``ModelInfer`` call: where it goes and what it asks."""

    __slots__ = ("model_name", "model_version", "request")

    def __init__(self, model_name: str, model_version: str, request: InferenceRequest) -> None:
        self.model_name, self.model_version, self.request = model_name, model_version, request


class _Prepared:
    """What the requests of one serialized prefix (the message without its raw contents) share:
    their target, their :class:`PreparedRequest`, and the bytes that stand before each raw
    content when an encoder writes them after the prefix (field 7's tag and the length)."""

    __slots__ = ("prefix", "model_name", "model_version", "request", "tags")

    def __init__(self, prefix: bytes, model_name: str, model_version: str, request: PreparedRequest) -> None:
        self.prefix = prefix
        self.model_name = model_name
        self.model_version = model_version
        self.request = request
        self.tags = tuple(b"\x3a" + _varint(size) for size in request.sizes)

    def contents(self, data: bytes) -> list[bytes] | None:
        """The raw contents of ``data`` when it is this prefix followed by exactly one raw
        content of the remembered size per input (then it means what the prefix says with those
        contents, as protobuf reads a repeated field's entries in order); else ``None``."""
        if not data.startswith(self.prefix):
            return None
        parts = []
        pos = len(self.prefix)
        for tag, size in zip(self.tags, self.request.sizes):
            if data[pos : pos + len(tag)] != tag:
                return None
            pos += len(tag)
            parts.append(data[pos : pos + size])
            pos += size
        return parts if pos == len(data) else None


#: the serialized request without its raw contents -> what its requests share
_PREPARED: dict[bytes, _Prepared] = {}
_PREPARED_MAX = 1024
#: the prepared request of the last call decoded: the next one like it is read off its bytes
_last: _Prepared | None = None


def infer_call(message: pb.ModelInferRequest | RawMessage) -> InferCall:
    """Decode a ``ModelInfer`` request (a message, or its wire bytes).

    Clients send the same message, except for ``raw_input_contents``, with every request of one
    shape; for wire bytes that part is decoded and checked once and remembered (a bounded memo),
    and a request seen before only has its raw contents read. A request whose bytes are the last
    such request's other fields followed by its raw contents (protobuf encoders write fields in
    number order, and the raw contents are the last field) is not even parsed: its contents are
    cut from its bytes. ``InvalidInput`` as :func:`request_from_proto`.
    """
    global _last
    if not isinstance(message, RawMessage):
        return InferCall(message.model_name, message.model_version, request_from_proto(message))
    last = _last
    if last is not None:
        parts = last.contents(message.data)
        if parts is not None:
            return InferCall(last.model_name, last.model_version, last.request.build(parts))
    try:
        msg = pb.ModelInferRequest.FromString(message.data)
    except Exception as exc:  # protobuf's DecodeError
        raise InvalidInput(f"the ModelInferRequest message cannot be parsed: {exc}") from exc
    raw = list(msg.raw_input_contents)
    if not raw:
        return InferCall(msg.model_name, msg.model_version, request_from_proto(msg))
    msg.ClearField("raw_input_contents")
    key = msg.SerializeToString()
    hit = _PREPARED.get(key)
    if hit is not None and len(raw) == len(hit.request.sizes):
        _last = hit
        return InferCall(hit.model_name, hit.model_version, hit.request.build(raw))
    msg.raw_input_contents.extend(raw)
    request = request_from_proto(msg)
    if not request.shared_memory and all(t.datatype != "BYTES" for t in request.inputs):
        if len(_PREPARED) >= _PREPARED_MAX:
            _PREPARED.clear()
        prepared = PreparedRequest(request, [t.data.nbytes for t in request.inputs])
        _PREPARED[key] = _last = _Prepared(key, msg.model_name, msg.model_version, prepared)
    return InferCall(msg.model_name, msg.model_version, request)


def request_from_proto(msg: pb.ModelInferRequest) -> InferenceRequest:
    """Decode a ``ModelInferRequest`` into an :class:`InferenceRequest`.

    Inputs come from ``raw_input_contents`` (then there must be exactly one entry per input) or
    from each input's typed ``contents``. ``model_name`` / ``model_version`` stay on the message
    for the caller to route by. Raises ``InvalidInput`` for anything malformed, with the same
    messages as the REST codec where the problem is the same.
    """
    raw = msg.raw_input_contents
    params_of = [parameters_from_proto(inp.parameters) for inp in msg.inputs]
    in_region = sum(REGION in params for params in params_of)
    if len(raw) and len(raw) != len(msg.inputs) - in_region:
        outside = " outside shared memory" if in_region else ""
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries but the request has {len(msg.inputs) - in_region} "
            f"inputs{outside}; send raw contents for every such input or for none"
        )
    next_raw = 0
    inputs: list[Tensor] = []
    seen: set[str] = set()
    for i, inp in enumerate(msg.inputs):
        if not inp.name:
            raise InvalidInput(f"input #{i} is missing 'name'")
        what = f"input {inp.name!r}"
        if inp.name in seen:
            raise InvalidInput(f"{what} appears more than once")
        seen.add(inp.name)
        datatype = inp.datatype
        if not datatype:
            raise InvalidInput(f"{what}: missing 'datatype'")
        if datatype not in DATATYPES:
            raise InvalidInput(f"{what}: unknown datatype {datatype!r}; expected one of {_ALLOWED}")
        shape = tuple(int(d) for d in inp.shape)
        if any(d < 0 for d in shape):
            raise InvalidInput(f"{what}: shape {list(shape)} has a negative dimension")
        params = params_of[i]
        if REGION in params:  # read by the data plane (core/shared_memory.py)
            if _filled_field(inp.contents) is not None:
                raise InvalidInput(f"{what}: names a shared memory region and also carries data; send one of them")
            array = IN_REGION
        elif len(raw):
            if _filled_field(inp.contents) is not None:
                raise InvalidInput(f"{what}: has both contents and raw_input_contents")
            array = decode_raw_tensor(raw[next_raw], datatype=datatype, shape=shape, name=what)
            next_raw += 1
        else:
            array = _array_from_contents(inp.contents, datatype, shape, what)
        inputs.append(
            Tensor(name=inp.name, datatype=datatype, shape=shape, data=array, parameters=params)
        )
    outputs = [
        RequestedOutput(name=o.name, parameters=parameters_from_proto(o.parameters))
        for o in msg.outputs
    ]
    for i, o in enumerate(outputs):
        if not o.name:
            raise InvalidInput(f"requested output #{i} is missing 'name'")
    return InferenceRequest(
        inputs=inputs,
        outputs=outputs or None,
        id=msg.id or None,
        parameters=parameters_from_proto(msg.parameters),
        shared_memory=bool(in_region) or any(REGION in o.parameters for o in outputs),
    )


def response_to_proto(
    resp: InferenceResponse,
    *,
    raw: bool,
    requested: Sequence[RequestedOutput] | None = None,
) -> pb.ModelInferResponse:
    """Encode a response as a ``ModelInferResponse``.

    ``raw=True`` puts every output in ``raw_output_contents`` (what ``tritonclient.grpc`` reads);
    ``raw=False`` uses typed ``contents``, except that a response with an FP16 output (which has
    no typed field) is sent raw as a whole, since raw entries are matched to outputs by position.
    When ``requested`` is non-empty only those outputs are sent, in that order.
    """
    outputs = select_outputs(resp.outputs, requested)
    msg = pb.ModelInferResponse(
        model_name=resp.model_name, model_version=resp.model_version, id=resp.id or ""
    )
    parameters_to_proto(msg.parameters, resp.parameters)
    use_raw = raw or any(t.datatype == "FP16" for t in outputs)
    for t in outputs:
        out = msg.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        _fill_tensor(out, t, "output", use_raw, msg.raw_output_contents)
    return msg


class EncodedMessage(bytes):
    """A message already in wire bytes; ``SerializeToString`` gives them back (the native
    transport serializes whatever a servicer returns that way)."""

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name
        return bytes(self)


#: (model, version, id, outputs' name/datatype/shape) -> the serialized response without its
#: raw contents (cleared when full)
_RESPONSE_HEADS: dict[tuple[Any, ...], bytes] = {}


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def stream_response(encoded: bytes) -> EncodedMessage:
    """A ``ModelStreamInferResponse`` around an already serialized ``ModelInferResponse`` (its
    field 2, ``infer_response``), without parsing that again."""
    return EncodedMessage(b"\x12" + _varint(len(encoded)) + encoded)


def encode_response(resp: InferenceResponse, *, requested: Sequence[RequestedOutput] | None = None) -> bytes:
    """``response_to_proto(resp, raw=True, requested=...)`` serialized, without building the
    message for every call: the part before ``raw_output_contents`` (names, datatypes, shapes)
    is the same for every response of one shape and is made once; the raw contents
    (``ModelInferResponse`` field 6) are appended to it."""
    outputs = select_outputs(resp.outputs, requested)
    if resp.parameters or any(t.parameters or t.datatype == "FP16" for t in outputs):
        return response_to_proto(resp, raw=True, requested=requested).SerializeToString()
    key = (resp.model_name, resp.model_version, resp.id, tuple((t.name, t.datatype, t.shape) for t in outputs))
    head = _RESPONSE_HEADS.get(key)
    if head is None:
        msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version, id=resp.id or "")
        for t in outputs:
            msg.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        head = msg.SerializeToString()
        if len(_RESPONSE_HEADS) >= 1024:
            _RESPONSE_HEADS.clear()
        _RESPONSE_HEADS[key] = head
    parts = [head]
    for t in outputs:
        raw = encode_raw_tensor(wire_array(t, f"output {t.name!r}"), t.datatype)
        parts += (b"\x32", _varint(len(raw)), raw)
    return b"".join(parts)


def request_to_proto(
    req: InferenceRequest, *, model_name: str, model_version: str = "", raw: bool = True
) -> pb.ModelInferRequest:
    """Encode a request as a ``ModelInferRequest`` (client side; ``raw`` as Triton's client)."""
    msg = pb.ModelInferRequest(model_name=model_name, model_version=model_version, id=req.id or "")
    parameters_to_proto(msg.parameters, req.parameters)
    use_raw = raw or any(t.datatype == "FP16" for t in req.inputs)
    for t in req.inputs:
        inp = msg.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        _fill_tensor(inp, t, "input", use_raw, msg.raw_input_contents)
    for o in req.outputs or ():
        parameters_to_proto(msg.outputs.add(name=o.name).parameters, o.parameters)
    return msg


def response_from_proto(msg: pb.ModelInferResponse) -> InferenceResponse:
    """Decode a ``ModelInferResponse`` (raw or typed contents) into an :class:`InferenceResponse`."""
    raw = msg.raw_output_contents
    outputs: list[Tensor] = []
    for i, out in enumerate(msg.outputs):
        what = f"output {out.name!r}"
        if out.datatype not in DATATYPES:
            raise InvalidInput(
                f"{what}: unknown datatype {out.datatype!r}; expected one of {_ALLOWED}"
            )
        shape = tuple(int(d) for d in out.shape)
        if any(d < 0 for d in shape):
            raise InvalidInput(f"{what}: shape {list(shape)} has a negative dimension")
        if i < len(raw):
            array = decode_raw_tensor(raw[i], datatype=out.datatype, shape=shape, name=what)
        else:
            array = _array_from_contents(out.contents, out.datatype, shape, what)
        outputs.append(
            Tensor(
                name=out.name,
                datatype=out.datatype,
                shape=shape,
                data=array,
                parameters=parameters_from_proto(out.parameters),
            )
        )
    return InferenceResponse(
        model_name=msg.model_name,
        model_version=msg.model_version,
        outputs=outputs,
        id=msg.id or None,
        parameters=parameters_from_proto(msg.parameters),
    )


def parameters_from_proto(params: Mapping[str, Any]) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as a plain dict of bool / int / float / str."""
    out: dict[str, Any] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which is not None else None
    return out


def parameters_to_proto(target: MutableMapping[str, Any], params: Mapping[str, Any]) -> None:
    """Fill a ``map<string, InferParameter>`` from a dict.

    bool, int (int64, or uint64 above the int64 range), float and str map to their oneof
    fields; ``None`` leaves the parameter unset; anything else is sent as a JSON string.
    """
    for key, value in params.items():
        p = target[key]
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)):
            p.bool_param = bool(value)
        elif isinstance(value, (int, np.integer)) and -(2**63) <= int(value) <= 2**64 - 1:
            if int(value) > _INT64_MAX:
                p.uint64_param = int(value)
            else:
                p.int64_param = int(value)
        elif isinstance(value, (float, np.floating)):
            p.double_param = float(value)
        elif isinstance(value, str):
            p.string_param = value
        else:
            p.string_param = json.dumps(value, default=str)


def _filled_field(contents: pb.InferTensorContents) -> str | None:
    for field in _CONTENT_FIELDS:
        if len(getattr(contents, field)):
            return field
    return None


def _array_from_contents(
    contents: pb.InferTensorContents, datatype: str, shape: tuple[int, ...], what: str
) -> np.ndarray:
    count = element_count(shape)
    filled = [f for f in _CONTENT_FIELDS if len(getattr(contents, f))]
    if datatype not in _CONTENTS:
        if filled or count:
            raise InvalidInput(
                f"{what}: {datatype} has no typed contents field; send it in raw contents"
            )
        return np.zeros(shape, dtype=DATATYPES[datatype])
    field, field_dtype = _CONTENTS[datatype]
    wrong = [f for f in filled if f != field]
    if wrong:
        raise InvalidInput(
            f"{what}: {datatype} data must be in contents.{field}, got contents.{wrong[0]}"
        )
    values = getattr(contents, field)
    if len(values) != count:
        if not len(values) and count:
            raise InvalidInput(
                f"{what}: no data; set contents.{field} or send raw contents"
            )
        raise InvalidInput(
            f"{what}: contents has {len(values)} elements but shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    array = np.fromiter(values, dtype=field_dtype, count=count)
    target = DATATYPES[datatype]
    if target != field_dtype and count:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(
                f"{what}: value out of range for {datatype} ({info.min}..{info.max})"
            )
        array = array.astype(target)
    return array.reshape(shape)


def _fill_tensor(
    entry: Any, t: Tensor, kind: str, raw: bool, raw_contents: Any
) -> None:
    what = f"{kind} {t.name!r}"
    array = wire_array(t, what)
    params = {k: v for k, v in t.parameters.items() if k != "binary_data_size"}
    parameters_to_proto(entry.parameters, params)
    if REGION in params:  # written to a shared-memory region: no contents
        if raw:
            raw_contents.append(b"")  # raw entries are matched to outputs by position
        return
    if raw:
        raw_contents.append(encode_raw_tensor(array, t.datatype))
        return
    field, _ = _CONTENTS[t.datatype]
    flat = array.reshape(-1)
    if t.datatype == "BYTES":
        values: list[Any] = [_to_bytes(x) for x in flat.tolist()]
    else:
        values = flat.tolist()
    getattr(entry.contents, field).extend(values)


def _to_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    return str(item).encode("utf-8")
