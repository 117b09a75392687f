"""OIP v2 inference answering: the one hot path of the REST data plane.

:func:`answer_infer` turns an inference request (target, a few headers, the body) into the bytes
of its answer: authentication, decoding, :meth:`DataPlane.infer`, encoding, and every failure
mapped to its ``{"error": {"code", "message"}}`` body. Two ways in share it:

* :class:`~modelyard.api.v2.protocol.InferenceProtocol`, the server's HTTP/1.1 protocol, calls it
  straight from the parser callbacks (no ASGI scope, middleware chain or messages); for the usual
  request (everything it needs known from memory) it calls :func:`start_answer` instead, the same
  steps without a task or a coroutine, and makes the answer in a callback on the queued work;
* :class:`InferenceFastPath`, an ASGI middleware, for requests that reach the app as ASGI
  (pipelined requests, in-process test clients); the documented FastAPI routes call
  :func:`run_infer` too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from modelyard.api.v2.codec import decode_infer_request, encode_infer_response
from modelyard.core.keys import bearer_token
from modelyard.core.inference import PendingInference
from modelyard.core.platform import Platform
from modelyard.core.principal import Principal
from modelyard.errors import InvalidInput, ModelYardError, PayloadTooLarge
from modelyard.tensors import InferenceRequest, InferenceResponse

__all__ = [
    "InferenceFastPath",
    "answer_infer",
    "start_answer",
    "finish_answer",
    "run_infer",
    "read_body",
    "unless_disconnected",
    "split_infer_path",
    "error_result",
    "InferResult",
    "ClientGone",
]

log = logging.getLogger("modelyard.api")

T = TypeVar("T")
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: (status, headers, body)
InferResult = tuple[int, list[tuple[bytes, bytes]], bytes]

_PREFIX = "/v2/models/"
_SUFFIX = "/infer"
_JSON = (b"content-type", b"application/json")
_OCTETS = (b"content-type", b"application/octet-stream")
_INTERNAL = orjson.dumps({"error": {"code": "internal", "message": "internal server error; see the server log"}})


class ClientGone(Exception):
    """The caller disconnected before its answer was ready; its work was cancelled."""


def split_infer_path(path: str) -> tuple[str, str | None] | None:
    """``(model, version)`` of ``/v2/models/{m}[/versions/{v}]/infer``, else ``None``."""
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    parts = path[len(_PREFIX) : -len(_SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


async def run_infer(
    platform: Platform,
    principal: Principal,
    name: str,
    version: str | None,
    body: bytes,
    header_length: str | None,
) -> InferResult:
    """Decode, infer, encode (errors propagate as :class:`ModelYardError`)."""
    request = _decode(body, header_length)
    return _encoded(await platform.dataplane.infer(principal, name, version, request, protocol="rest"), request)


def _decode(body: bytes, header_length: str | None) -> InferenceRequest:
    length: int | None = None
    if header_length is not None:
        if not header_length.isdigit():
            raise InvalidInput(
                f"Inference-Header-Content-Length must be a non-negative integer, got {header_length!r}"
            )
        length = int(header_length)
    return decode_infer_request(body, length)


def _encoded(response: InferenceResponse, request: InferenceRequest) -> InferResult:
    binary_default = bool(request.parameters.get("binary_data_output", False))
    payload, json_length = encode_infer_response(response, requested=request.outputs, binary_default=binary_default)
    if json_length is None:
        return 200, [_JSON], payload
    return 200, [_OCTETS, (b"inference-header-content-length", str(json_length).encode())], payload


def error_result(exc: ModelYardError) -> InferResult:
    """The answer for ``exc``: its status, ``Retry-After`` / ``WWW-Authenticate`` and body."""
    headers = [_JSON]
    if exc.retry_after_header is not None:
        headers.append((b"retry-after", exc.retry_after_header.encode()))
    if exc.http_status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return exc.http_status, headers, orjson.dumps(exc.to_body())


async def answer_infer(
    platform: Platform,
    name: str,
    version: str | None,
    *,
    authorization: str | None,
    header_length: str | None,
    body: bytes,
    where: str,
) -> tuple[InferResult, Principal | None]:
    """Authenticate and run one inference request; every failure becomes its error answer.

    Returns the answer and the authenticated principal (``None`` when authentication failed),
    which the caller needs for the audit trail. Cancellation (the caller went away) propagates.
    """
    principal: Principal | None = None
    try:
        principal = await platform.keys.authenticate_async(bearer_token(authorization))  # 401 when missing or bad
        return await run_infer(platform, principal, name, version, body, header_length), principal
    except Exception as exc:
        return _failure(exc, where), principal


def start_answer(
    platform: Platform,
    name: str,
    version: str | None,
    *,
    authorization: str | None,
    header_length: str | None,
    body: bytes,
    where: str,
) -> tuple[Principal, InferResult | PendingInference] | None:
    """:func:`answer_infer` without a coroutine, for a transport that answers from a callback
    (the usual request: its key, model and quotas known from memory, its version loaded).

    ``None``: await :func:`answer_infer` instead (nothing was counted). Else the principal and
    either the answer (an error found before the request was queued) or the queued request:
    once its ``future`` is done, :func:`finish_answer` makes the answer."""
    try:
        secret = bearer_token(authorization)
    except ModelYardError:
        return None  # answer_infer answers a malformed Authorization (401, audited)
    principal = platform.keys.known(secret)
    if principal is None:
        return None
    try:
        request = _decode(body, header_length)
        pending = platform.dataplane.start(principal, name, version, request, protocol="rest")
    except Exception as exc:
        return principal, _failure(exc, where)
    if pending is None:
        return None
    return principal, pending


def finish_answer(pending: PendingInference, where: str) -> InferResult:
    """The answer of a request :func:`start_answer` queued, once its ``future`` is done (call
    once; ``CancelledError`` when the caller went away and it was cancelled)."""
    try:
        return _encoded(pending.finish(), pending.request)
    except Exception as exc:
        return _failure(exc, where)


def _failure(exc: Exception, where: str) -> InferResult:
    """The answer for a request that failed with ``exc``; unexpected errors are logged."""
    if isinstance(exc, ModelYardError):
        if exc.http_status >= 500:
            log.error("inference on %s failed: %s", where, exc.message, exc_info=exc)
        return error_result(exc)
    log.exception("unhandled error on POST %s", where, exc_info=exc)
    return 500, [_JSON], _INTERNAL


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any]) -> bool:
    # After the body is read, the next ASGI message is ``http.disconnect`` (or never comes).
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()
    return True


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work`` in this task; if the ASGI client disconnects first, the task is cancelled
    (its queued work is dropped) and :class:`ClientGone` is raised. One helper task per request."""
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.ensure_future(_cancel_on_disconnect(receive, task))
    try:
        return await work
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            task.uncancel()
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it is over ``limit`` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class InferenceFastPath:
    """ASGI middleware serving OIP v2 inference directly; everything else passes through."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        target = split_infer_path(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        platform: Platform = scope["app"].state.platform
        auth = declared = header_length = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                auth = value.decode("latin-1")
            elif key == b"content-length":
                declared = value.decode("latin-1")
            elif key == b"inference-header-content-length":
                header_length = value.decode("latin-1")
        try:
            body = await read_body(receive, declared, platform.settings.max_request_bytes)
            (status, headers, payload), principal = await unless_disconnected(
                receive,
                answer_infer(
                    platform, target[0], target[1],
                    authorization=auth, header_length=header_length, body=body, where=scope["path"],
                ),
            )
            if principal is not None:
                scope.setdefault("state", {})["principal"] = principal
        except ClientGone:
            return  # nobody is there to read an answer
        except PayloadTooLarge as exc:
            status, headers, payload = error_result(exc)
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
