"""Inference from the SDK over the Open Inference Protocol v2 REST API.

Requests and responses are encoded by :mod:`modelyard.api.v2.codec` (pure numpy, no server
imports), with the binary tensor extension by default: tensors travel as raw little-endian
bytes after a small JSON header, as Triton's own client sends them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import numpy as np

from modelyard.api.v2.codec import HEADER_LENGTH_HEADER, decode_infer_response, encode_infer_request
from modelyard.client._models import TensorInfo
from modelyard.client._transport import Transport
from modelyard.errors import InvalidInput, Unavailable
from modelyard.tensors import DATATYPES, InferenceRequest, RequestedOutput, Tensor, datatype_of

__all__ = ["Inference", "ModelMetadata"]

Inputs = Mapping[str, Any] | np.ndarray


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """OIP v2 metadata of a served model version: name, versions, platform, inputs, outputs."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelMetadata:
        return cls(
            name=d["name"],
            versions=tuple(str(v) for v in d.get("versions", [])),
            platform=d.get("platform", ""),
            inputs=tuple(TensorInfo.from_json(t) for t in d.get("inputs", [])),
            outputs=tuple(TensorInfo.from_json(t) for t in d.get("outputs", [])),
        )


class Inference:
    """Model metadata (cached per model and version) and ``predict``; used by ``Client``."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self._cache: dict[tuple[str, str | None], ModelMetadata] = {}
        self._lock = threading.Lock()

    def metadata(self, name: str, *, version: int | str | None = None, refresh: bool = False) -> ModelMetadata:
        """The served signature of ``name`` (its production version unless ``version``)."""
        key = (name, None if version is None else str(version))
        with self._lock:
            cached = None if refresh else self._cache.get(key)
        if cached is not None:
            return cached
        meta = ModelMetadata.from_json(self._t.get(_v2_path(name, version)))
        with self._lock:
            self._cache[key] = meta
        return meta

    def predict(
        self,
        name: str,
        inputs: Inputs,
        *,
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        binary: bool = True,
        request_id: str | None = None,
        deadline_s: float | None = None,
        priority: int = 0,
        top_classes: int | None = None,
        routing_key: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``name`` on ``inputs``; see :meth:`modelyard.client.Client.predict`."""
        if deadline_s is not None and not deadline_s > 0:
            raise InvalidInput(f"deadline_s must be a positive number of seconds, not {deadline_s!r}")
        if top_classes is not None and not outputs:
            raise InvalidInput("top_classes ranks the outputs you name: pass outputs=[...] too")
        meta = self.metadata(name, version=version)
        tensors = _tensors(inputs, meta)
        req = InferenceRequest(
            inputs=tensors,
            outputs=[RequestedOutput(n, {} if top_classes is None else {"classification": top_classes})
                     for n in outputs] if outputs else None,
            id=request_id,
            parameters=_scheduling(deadline_s, priority, routing_key),
        )
        body, header_length = encode_infer_request(req, binary_inputs=binary, binary_outputs=binary)
        headers = {"Content-Type": "application/octet-stream" if header_length is not None else "application/json"}
        if header_length is not None:
            headers[HEADER_LENGTH_HEADER] = str(header_length)
        response = self._t.request("POST", f"{_v2_path(name, version)}/infer", content=body, headers=headers)
        # a bytearray keeps the decoded arrays writable (frombuffer over bytes is read-only)
        try:
            decoded = decode_infer_response(
                bytearray(response.content), response.headers.get(HEADER_LENGTH_HEADER)
            )
        except InvalidInput as exc:
            raise Unavailable(
                f"the inference response of {self._t.url} could not be decoded: {exc.message}",
                details={"reason": "protocol", "url": self._t.url},
            ) from exc
        return {t.name: t.data for t in decoded.outputs}


def _scheduling(deadline_s: float | None, priority: int, routing_key: str | None = None) -> dict[str, int | str]:
    """The request parameters that carry a deadline, a priority and a routing key (the server
    checks them)."""
    parameters: dict[str, int | str] = {"priority": priority} if priority else {}
    if routing_key is not None:
        parameters["routing_key"] = routing_key
    if deadline_s is not None:
        # whole microseconds, at least one (0 would mean "the model's own deadline")
        parameters["timeout"] = max(1, round(deadline_s * 1e6))
    return parameters


def _tensors(inputs: Inputs, meta: ModelMetadata) -> list[Tensor]:
    specs = {s.name: s for s in meta.inputs}
    if isinstance(inputs, np.ndarray) or not isinstance(inputs, Mapping):
        if len(meta.inputs) != 1:
            names = ", ".join(repr(s.name) for s in meta.inputs) or "none"
            raise InvalidInput(
                f"model {meta.name!r} has {len(meta.inputs)} inputs ({names}); pass a dict "
                "{input_name: array} instead of a single array"
            )
        inputs = {meta.inputs[0].name: inputs}
    out: list[Tensor] = []
    for input_name, value in inputs.items():
        spec = specs.get(input_name)
        if specs and spec is None:
            raise InvalidInput(
                f"model {meta.name!r} has no input {input_name!r}; its inputs are "
                f"{', '.join(repr(s) for s in specs)}"
            )
        array = _as_array(value, spec, input_name)
        out.append(Tensor(input_name, datatype_of(array), tuple(array.shape), array))
    return out


def _as_array(value: Any, spec: TensorInfo | None, name: str) -> np.ndarray:
    """``value`` as an array of the declared datatype: numeric data is cast to it (so JSON
    numbers and float64 arrays reach an FP32 model as FP32); strings become BYTES."""
    if isinstance(value, (str, bytes)):
        value = [value]
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise InvalidInput(f"input {name!r}: data is ragged or not numbers/strings") from None
    if array.dtype.kind in "US":
        array = array.astype(object)
    if spec is None or spec.datatype not in DATATYPES:
        return array
    want = DATATYPES[spec.datatype]
    if spec.datatype == "BYTES":
        if array.dtype.kind != "O":
            raise InvalidInput(f"input {name!r} is BYTES; pass strings or bytes")
        return array
    if array.dtype.kind not in "biuf":
        raise InvalidInput(f"input {name!r} is {spec.datatype}; pass numbers, got {array.dtype}")
    if array.dtype != want:
        array = array.astype(want)
    return array


def _v2_path(name: str, version: int | str | None) -> str:
    path = f"/v2/models/{quote(name, safe='')}"
    if version is not None:
        path += f"/versions/{quote(str(version), safe='')}"
    return path
