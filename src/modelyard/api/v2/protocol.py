"""The server's HTTP/1.1 protocol: uvicorn's httptools protocol, with OIP v2 inference answered in place.

``POST /v2/models/{m}[/versions/{v}]/infer`` is recognised as soon as its request line and headers
are parsed. Its body is collected by the parser callbacks and one task per request authenticates,
infers and encodes through :func:`~modelyard.api.v2.infer.answer_infer` (the same code the ASGI
routes use), then writes the answer's bytes to the socket itself. No ASGI scope, middleware chain,
receive/send messages or helper tasks exist for it: on a small model that per-request event-loop
cost, not the model, decides throughput (see ``docs/benchmarks.md``).

Everything else goes to the ASGI app exactly as uvicorn would send it, including an inference
request that arrives while an earlier request of the same connection is still being answered
(HTTP pipelining), so answers always leave in request order.

Behaviour kept from the ASGI path: ``X-Request-ID`` echoed or made; 401/403 recorded in the audit
log; ``Expect: 100-continue`` answered; a body over ``max_request_bytes`` refused with 413 (the
connection is then closed, as the rest of the body is not read); a client that disconnects
cancels its request's task, which drops its queued work; on shutdown the answer in flight is
written before the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from modelyard.api.middleware import audit_entry, request_id
from modelyard.api.v2.infer import InferResult, answer_infer, error_result, split_infer_path
from modelyard.core.platform import Platform
from modelyard.errors import PayloadTooLarge

__all__ = ["InferenceProtocol"]

log = logging.getLogger("modelyard.api")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Queued:
    """Stands in for an unfinished ASGI cycle so uvicorn queues a request behind a fast answer."""

    response_complete = False


_BEHIND_FAST_ANSWER: Any = _Queued()


class _Inference:
    """One inference request of a connection: what its answer needs, and its task."""

    __slots__ = (
        "name", "version", "path", "authorization", "header_length", "request_id",
        "chunks", "size", "keep_alive", "task",
    )

    def __init__(self, name: str, version: str | None, path: str) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.authorization: str | None = None
        self.header_length: str | None = None
        self.request_id = ""
        self.chunks: list[bytes] = []
        self.size = 0
        self.keep_alive = True
        self.task: asyncio.Task[None] | None = None


class InferenceProtocol(HttpToolsProtocol):
    """See the module docstring. Make a class bound to a platform with :meth:`bound`."""

    platform: ClassVar[Platform]

    @classmethod
    def bound(cls, platform: Platform) -> type[InferenceProtocol]:
        """The protocol class for uvicorn's ``Config(http=...)``, serving ``platform``."""
        return type("InferenceProtocol", (cls,), {"platform": platform})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limit = self.platform.settings.max_request_bytes
        self._raw: list[tuple[bytes, bytes]] = []
        self._reading: _Inference | None = None  # body being received
        self._answering: _Inference | None = None  # task running; its answer is next to write
        self._discarding = False  # a refused request's remaining parser callbacks are ignored

    # -- parser callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        # uvicorn's scope is built only for requests that go to the ASGI app (see _to_asgi).
        self.url = b""
        self._raw = []
        self.expect_100_continue = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        if (
            parser.get_method() == b"POST"
            and self._answering is None
            and not self.pipeline
            and (self.cycle is None or self.cycle.response_complete)
            and not parser.should_upgrade()
        ):
            path = self.url.partition(b"?")[0]
            target = split_infer_path(path.decode("latin-1")) if b"%" not in path else None
            if target is not None:
                self._begin(target[0], target[1], path.decode("latin-1"))
                return
        self._to_asgi()

    def on_body(self, body: bytes) -> None:
        request = self._reading
        if request is None:
            if not self._discarding:
                super().on_body(body)
            return
        request.size += len(body)
        if request.size > self._limit:
            self._refuse(request, PayloadTooLarge(f"request body is over the limit of {self._limit} bytes"))
            return
        request.chunks.append(body)

    def on_message_complete(self) -> None:
        request = self._reading
        if request is None:
            if self._discarding:
                self._discarding = False
            else:
                super().on_message_complete()
            return
        self._reading = None
        self._answering = request
        request.task = self.loop.create_task(self._answer(request))

    # -- the inference path ----------------------------------------------------------------
    def _begin(self, name: str, version: str | None, path: str) -> None:
        request = _Inference(name, version, path)
        declared = given_id = None
        expect = False
        for key, value in self._raw:
            key = key.lower()
            if key == b"authorization":
                request.authorization = value.decode("latin-1").strip()
            elif key == b"content-length":
                declared = value
            elif key == b"inference-header-content-length":
                request.header_length = value.decode("latin-1").strip()
            elif key == b"x-request-id":
                given_id = value.decode("latin-1").strip()
            elif key == b"expect":
                expect = value.strip().lower() == b"100-continue"
        request.request_id = request_id(given_id)
        request.keep_alive = self.parser.should_keep_alive() and self.parser.get_http_version() != "1.0"
        self._reading = request
        if declared is not None and declared.strip().isdigit() and int(declared) > self._limit:
            self._refuse(request, PayloadTooLarge(
                f"request body of {int(declared)} bytes is over the limit of {self._limit}"
            ))
            return
        if expect:
            self.transport.write(_CONTINUE)

    def _refuse(self, request: _Inference, exc: PayloadTooLarge) -> None:
        """Answer at once and close: the rest of the body is never read."""
        self._reading = None
        self._discarding = True
        request.keep_alive = False
        self._write(request, error_result(exc))

    async def _answer(self, request: _Inference) -> None:
        chunks = request.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            result, principal = await answer_infer(
                self.platform, request.name, request.version,
                authorization=request.authorization, header_length=request.header_length,
                body=body, where=request.path,
            )
        except asyncio.CancelledError:
            return  # the client went away; its queued work was dropped
        try:
            if result[0] in (401, 403):
                self.platform.audit.append(
                    audit_entry("POST", request.path, result[0], request.request_id, principal, self.client)
                )
        except Exception:  # the audit trail must not take the answer down with it
            log.exception("recording the audit entry of POST %s failed", request.path)
        if self._answering is request:
            self._answering = None
            self._write(request, result)
            self.on_response_complete()

    def _write(self, request: _Inference, result: InferResult) -> None:
        status, headers, payload = result
        parts = [STATUS_LINE[status]]
        for key, value in self.server_state.default_headers:
            parts += (key, b": ", value, b"\r\n")
        for key, value in headers:
            parts += (key, b": ", value, b"\r\n")
        parts += (b"x-request-id: ", request.request_id.encode(), b"\r\n")
        parts += (b"content-length: ", str(len(payload)).encode(), b"\r\n")
        if not request.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", payload)
        transport = self.transport
        transport.write(b"".join(parts))
        if not request.keep_alive:
            transport.close()

    # -- the ASGI path ---------------------------------------------------------------------
    def _to_asgi(self) -> None:
        url = self.url
        HttpToolsProtocol.on_message_begin(self)  # uvicorn's scope for this request
        self.url = url
        for key, value in self._raw:
            HttpToolsProtocol.on_header(self, key, value)
        if (
            self._answering is not None
            and (self.cycle is None or self.cycle.response_complete)
            and not self.parser.should_upgrade()
        ):
            self.cycle = _BEHIND_FAST_ANSWER  # uvicorn queues it until the fast answer is written
        super().on_headers_complete()

    # -- connection ------------------------------------------------------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        request, self._answering = self._answering, None
        self._reading = None
        super().connection_lost(exc)
        if request is not None and request.task is not None:
            request.task.cancel()

    def shutdown(self) -> None:
        if self._answering is not None:
            self._answering.keep_alive = False  # close once the answer in flight is written
            return
        super().shutdown()
