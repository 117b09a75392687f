"""OIP v2 inference over raw ASGI: the one hot path of the REST data plane.

``InferenceFastPath`` answers ``POST /v2/models/{m}[/versions/{v}]/infer`` without FastAPI's
routing and dependency machinery (whose per-request cost dominated a tiny model's time); every
other request goes on to the FastAPI app. The documented FastAPI routes call the same
:func:`run_infer`, so both ways in share one implementation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from modelyard.api.v2.codec import decode_infer_request, encode_infer_response
from modelyard.core.platform import Platform
from modelyard.core.principal import Principal
from modelyard.errors import InvalidInput, ModelYardError, PayloadTooLarge, Unauthenticated

__all__ = ["InferenceFastPath", "run_infer", "InferResult", "ClientGone"]

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


class ClientGone(Exception):
    """The caller disconnected before its answer was ready; its work was cancelled."""


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any]) -> bool:
    # After the body is read, the next ASGI message is ``http.disconnect`` (or never comes).
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()
    return True


async def _unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work`` in this task; if the client disconnects first, the task is cancelled (its
    queued work is dropped) and :class:`ClientGone` is raised. One helper task per request."""
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


async def run_infer(
    platform: Platform,
    principal: Principal,
    name: str,
    version: str | None,
    body: bytes,
    header_length: str | None,
    receive: Receive,
) -> InferResult:
    """Decode, infer (cancelled if the client goes away), encode."""
    length: int | None = None
    if header_length is not None:
        if not header_length.isdigit():
            raise InvalidInput(
                f"Inference-Header-Content-Length must be a non-negative integer, got {header_length!r}"
            )
        length = int(header_length)
    request = decode_infer_request(body, length)
    response = await _unless_disconnected(
        receive, platform.dataplane.infer(principal, name, version, request, protocol="rest")
    )
    binary_default = bool(request.parameters.get("binary_data_output", False))
    payload, json_length = encode_infer_response(response, requested=request.outputs, binary_default=binary_default)
    if json_length is None:
        return 200, [_JSON], payload
    return 200, [_OCTETS, (b"inference-header-content-length", str(json_length).encode())], payload


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


def _split(path: str) -> tuple[str, str | None] | None:
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    parts = path[len(_PREFIX) : -len(_SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


def _error(exc: ModelYardError) -> InferResult:
    headers = [_JSON]
    if exc.retry_after is not None:
        headers.append((b"retry-after", str(max(1, int(round(exc.retry_after)))).encode()))
    if exc.http_status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return exc.http_status, headers, orjson.dumps(exc.to_body())


class InferenceFastPath:
    """ASGI middleware serving OIP v2 inference directly; everything else passes through."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        target = _split(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
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
            principal = await self._authenticate(platform, auth)
            scope.setdefault("state", {})["principal"] = principal
            body = await read_body(receive, declared, platform.settings.max_request_bytes)
            status, headers, payload = await run_infer(
                platform, principal, target[0], target[1], body, header_length, receive
            )
        except ClientGone:
            return  # nobody is there to read an answer
        except ModelYardError as exc:
            if exc.http_status >= 500:
                log.error("inference on %s failed: %s", scope["path"], exc.message, exc_info=exc)
            status, headers, payload = _error(exc)
        except Exception:
            log.exception("unhandled error on POST %s", scope["path"])
            body_500 = {"error": {"code": "internal", "message": "internal server error; see the server log"}}
            status, headers, payload = 500, [_JSON], orjson.dumps(body_500)
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    async def _authenticate(platform: Platform, header: str | None) -> Principal:
        token: str | None = None
        if header:
            scheme, _, rest = header.partition(" ")
            if scheme.lower() != "bearer" or not rest.strip():
                raise Unauthenticated("malformed Authorization header; expected 'Bearer <key>'")
            token = rest.strip()
        return await platform.keys.authenticate_async(token)
