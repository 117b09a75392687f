"""The server's HTTP/1.1 protocol: uvicorn's httptools protocol, with OIP v2 inference answered in place.

``POST /v2/models/{m}[/versions/{v}]/infer`` is recognised as soon as its request line and headers
are parsed. Its body is collected by the parser callbacks; a loop turn after it was read, it is
authenticated, decoded, checked and queued without a coroutine
(:func:`~modelyard.api.v2.infer.start_answer`) and answered from a callback on its queued work,
or, when something it needs is not in memory (a key, model or deployment not seen lately), by a
task through :func:`~modelyard.api.v2.infer.answer_infer` (the same code the ASGI routes use).
Either way the protocol writes the answer's bytes to the socket itself. No ASGI scope,
middleware chain, receive/send messages or helper tasks exist for it: on a small model that
per-request event-loop cost, not the model, decides throughput (see ``docs/benchmarks.md``).

A keep-alive client sends the same head (request line and headers: the path, the key, the
framing) with every request to one model. A request whose head is byte for byte the last
inference head of its connection, arriving with its whole body, is taken as that head said,
without the parser. With the answer's remembered header (``codec.encode_infer_response``), that
took a tiny model's request from 37-44 to 31-34 µs of the server's user time
(``docs/benchmarks-history.md``, "Rig measurements, twelfth session").

Everything else goes to the ASGI app exactly as uvicorn would send it, including an inference
request that arrives while an earlier request of the same connection is still being answered
(HTTP pipelining), so answers always leave in request order.

Behaviour kept from the ASGI path: ``X-Request-ID`` echoed or made; 401/403 recorded in the audit
log; ``Expect: 100-continue`` answered; a body over ``max_request_bytes`` refused with 413 (the
connection is then closed, as the rest of the body is not read); a client that disconnects
cancels its request's task, which drops its queued work; on shutdown the answer in flight is
written before the connection closes, and a request waiting unread on a held connection (below) is
read and answered first.

Overload. After a caller got 429 (its model's queue full), its next requests for that model are
refused before their body is read, and a connection of its that was just answered is not read
again until the queue has room (``DynamicBatcher.when_room``): its next request waits in the
client's socket, TCP backpressure, instead of costing the server a read and a refusal. On one core
a refusal costs half as much as serving a small model, so refusing a flood would leave little for
the requests that are served (see ``docs/serving.md``).
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from modelyard.api.middleware import audit_entry, request_id
from modelyard.api.v2.infer import (
    InferResult,
    answer_infer,
    error_result,
    finish_answer,
    split_infer_path,
    start_answer,
)
from modelyard.core.inference import PendingInference
from modelyard.core.keys import bearer_token
from modelyard.core.queue_gates import QueueGate, QueueGates
from modelyard.core.platform import Platform
from modelyard.core.principal import Principal
from modelyard.errors import ModelYardError, PayloadTooLarge

__all__ = ["InferenceProtocol"]

log = logging.getLogger("modelyard.api")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: distinct answer heads remembered per second (see ``InferenceProtocol._head``)
_HEADS_KEPT = 64
#: at shutdown, how long a held connection let in is given for the request it held unread to arrive
_LAST_REQUEST_S = 0.1


class _Queued:
    """Stands in for an unfinished ASGI cycle so uvicorn queues a request behind a fast answer."""

    response_complete = False


_BEHIND_FAST_ANSWER: Any = _Queued()


class _Inference:
    """One inference request of a connection: what its answer needs, and its task."""

    __slots__ = (
        "name", "version", "path", "authorization", "header_length", "request_id",
        "chunks", "size", "keep_alive", "task", "answering", "gate", "gate_key",
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
        #: how it is being answered: a task (see ``_answer``), or a queued request (``_answered``)
        self.task: asyncio.Task[None] | None = None
        self.answering: PendingInference | None = None
        #: its caller's gate when it had one as the request arrived (see ``_gate``), and the
        #: gate's key in the table: (path, ``Authorization``)
        self.gate: QueueGate | None = None
        self.gate_key: tuple[str, str | None] | None = None


class _RequestHead:
    """What an inference request's head (request line and headers) says, remembered with its
    bytes: a keep-alive client sends the same head with every request to one model (the same
    path, key and framing headers), and a request whose head is byte for byte the last one's
    means the same, so it is taken without the parser (see ``InferenceProtocol.data_received``)."""

    __slots__ = ("raw", "length", "name", "version", "path", "authorization", "header_length", "given_id", "gate_key")

    def __init__(self, raw: bytes, length: int, request: _Inference, given_id: str | None) -> None:
        self.raw = raw
        self.length = length  # its Content-Length
        self.name = request.name
        self.version = request.version
        self.path = request.path
        self.authorization = request.authorization
        self.header_length = request.header_length
        self.given_id = given_id
        self.gate_key = (request.path, request.authorization)  # built once for the requests it heads


def _head_of(chunk: bytes) -> bytes | None:
    """The head at the start of ``chunk`` (through its empty line), when it starts with its
    request line and every line of it ends in CRLF: then it ends at the first empty line,
    whatever the parser tolerates."""
    end = chunk.find(b"\r\n\r\n")
    if end < 0 or not chunk.startswith(b"POST /"):
        return None
    head = chunk[: end + 4]
    return head if head.count(b"\n") == head.count(b"\r\n") else None


class InferenceProtocol(HttpToolsProtocol):
    """See the module docstring. Make a class bound to a platform with :meth:`bound`."""

    platform: ClassVar[Platform]
    #: (path, Authorization) -> gate, shared by the server's connections: after a 429, the same
    #: caller's requests for the same model are refused unread while its queue stays full (for at
    #: most a second), as long as the key service still remembers the key: a key revoked here is
    #: authenticated again (401) rather than answered from a gate
    gates: ClassVar[QueueGates]
    #: (error, default headers, keep-alive, head, tail): the last refusal's encoded answer
    refusal_memo: ClassVar[tuple[Any, ...]] = (None, None, None, b"", b"")
    #: (default headers, {(status, *headers): head}): the heads answers had, made once per
    #: ``Date`` (uvicorn replaces its default headers every second)
    head_memo: ClassVar[tuple[Any, dict[tuple[Any, ...], bytes]]] = (None, {})

    # Every attribute a connection has, uvicorn's and ours, lives in a slot: with about forty of
    # them an instance's ``__dict__`` no longer shares its keys with the class (CPython shares at
    # most 30), so each connection had a hash table of its own, looked up for every attribute.
    # Slotted: 1.5-3.5% more throughput at 64 connections, 4.0-4.7% at 1,024 (docs/serving.md,
    # "A connection's state in slots"). An attribute missing here still works, in the dict the
    # base class gives (tests/integration/test_http_protocol.py checks that a served
    # connection's dict stays empty).
    __slots__ = (
        # uvicorn's HttpToolsProtocol
        "config", "app", "loop", "logger", "access_logger", "access_log", "parser", "ws_protocol_class",
        "root_path", "asgi_version", "limit_concurrency", "app_state", "timeout_keep_alive_task",
        "timeout_keep_alive", "server_state", "connections", "tasks", "transport", "flow", "server", "client",
        "scheme", "pipeline", "scope", "headers", "expect_100_continue", "cycle", "url",
        # this class's
        "_limit", "_raw", "_reading", "_answering", "_discarding", "_idle_since", "_held", "_last_request",
        "_between", "_chunk", "_chunk_head", "_last_head",
    )

    @classmethod
    def bound(cls, platform: Platform) -> type[InferenceProtocol]:
        """The protocol class for uvicorn's ``Config(http=...)``, serving ``platform``."""
        return type("InferenceProtocol", (cls,), {"platform": platform, "gates": QueueGates()})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limit = self.platform.settings.max_request_bytes
        self._raw: list[tuple[bytes, bytes]] = []
        self._reading: _Inference | None = None  # body being received
        self._answering: _Inference | None = None  # task running; its answer is next to write
        self._discarding = False  # a refused request's remaining parser callbacks are ignored
        self._idle_since: float | None = None  # when the last answer left, while idle
        self._held = False  # not read until a full queue has room (see _hold)
        self._last_request = False  # shut down while held: answer what waited unread, then close
        self._between = True  # the parser is between two requests
        self._chunk = b""  # the data being parsed, while it begins between two requests
        self._chunk_head = b""  # that data, once the request being parsed began with it
        self._last_head: _RequestHead | None = None  # of the last inference request parsed

    def data_received(self, data: bytes) -> None:
        """Parse ``data``; a request whose head is the connection's last inference head, byte
        for byte, with its whole body in ``data``, is taken as that head says without the
        parser (see the module docstring)."""
        head = self._last_head
        if head is not None and self._between and data.startswith(head.raw) and self._may_answer_now():
            end = len(head.raw) + head.length
            if len(data) >= end:
                self._unset_keepalive_if_required()
                self._take(head, data[len(head.raw) : end])
                if len(data) == end:
                    return
                data = data[end:]  # pipelined behind it: the parser, between two requests
        self._chunk = data if self._between else b""
        super().data_received(data)
        self._chunk = self._chunk_head = b""

    # -- parser callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        # uvicorn's scope is built only for requests that go to the ASGI app (see _to_asgi).
        self.url = b""
        self._raw = []
        self.expect_100_continue = False
        self._between = False
        self._chunk_head, self._chunk = self._chunk, b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw.append((name, value))

    def _may_answer_now(self) -> bool:
        """Whether a request read now can be answered in place: nothing of this connection is
        being answered (else it is queued behind, through the ASGI path, to keep the order)."""
        return self._answering is None and not self.pipeline and (self.cycle is None or self.cycle.response_complete)

    def on_headers_complete(self) -> None:
        parser = self.parser
        if parser.get_method() == b"POST" and self._may_answer_now() and not parser.should_upgrade():
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
        self._between = True
        request = self._reading
        if request is None:
            if self._discarding:
                self._discarding = False
            else:
                super().on_message_complete()
            return
        self._reading = None
        self._answering = request
        # Started a loop turn later, with every request read in this one: what a batch gathers
        # depends on it (a batch on the loop is taken in the first turn that queues nothing new).
        self.loop.call_soon(self._start, request)

    # -- the inference path ----------------------------------------------------------------
    def _begin(self, name: str, version: str | None, path: str) -> None:
        request = _Inference(name, version, path)
        declared = given_id = None
        expect = chunked = False
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
            elif key == b"transfer-encoding":
                chunked = True
        request.request_id = request_id(given_id)
        request.keep_alive = (
            self.parser.should_keep_alive() and self.parser.get_http_version() != "1.0" and not self._last_request
        )
        self._reading = request
        length = int(declared) if declared is not None and declared.strip().isdigit() else None
        if length is not None and length > self._limit:
            self._refuse(request, PayloadTooLarge(f"request body of {length} bytes is over the limit of {self._limit}"))
            return
        chunk, self._chunk_head = self._chunk_head, b""
        if chunk and length is not None and request.keep_alive and not expect and not chunked:
            raw = _head_of(chunk)
            if raw is not None:
                self._last_head = _RequestHead(raw, length, request, given_id)
        self._admit(request, expect)

    def _take(self, head: _RequestHead, body: bytes) -> None:
        """A request whose head is ``head``'s bytes, and its whole ``body``: what the parser's
        callbacks would have done with it."""
        request = _Inference(head.name, head.version, head.path)
        request.authorization = head.authorization
        request.header_length = head.header_length
        request.gate_key = head.gate_key
        request.request_id = request_id(head.given_id)
        request.keep_alive = not self._last_request
        self._reading = request
        if self._admit(request, False):
            request.chunks.append(body)
            request.size = len(body)
            self.on_message_complete()
        else:
            self._discarding = False  # refused: its body is read past already

    def _admit(self, request: _Inference, expect: bool) -> bool:
        """Let ``request``'s body be read (True), or refuse it at once (False): when a request
        with the same path and key got 429 within the last second on any connection and that
        queue is still full (429), or when the server is saturated (503). Refused before the body
        is read: the cheapest answer there is."""
        gate = self._gate(request)
        overload = None if gate is None else gate.refusal()
        if overload is None and self.platform.manager.saturated:
            overload = self.platform.manager.saturation()
        if overload is not None:
            if expect:
                request.keep_alive = False  # the client may never send the body we would skip
            self._refuse(request, overload)
            if gate is not None:
                self._hold(gate, request)
            return False
        if expect:
            self.transport.write(_CONTINUE)
        return True

    def _gate(self, request: _Inference) -> QueueGate | None:
        """The gate of ``request``'s caller, if it has one. Looked up once as the request
        arrives (``request.gate``), again only while it had none: under a flood every request
        passes here, and a lookup costs a hash of the key and a check that the key is still
        known, about as much as the rest of holding a connection."""
        gate = request.gate
        if gate is not None or not self.gates:
            return gate
        key = request.gate_key
        if key is None:
            key = request.gate_key = (request.path, request.authorization)
        gate = self.gates.get(key, self.loop.time())
        if gate is None or not self.platform.keys.remembers_key(gate.secret):
            return None  # none, or its key was revoked since its 429: authenticate it again
        request.gate = gate
        return gate

    def _refuse(self, request: _Inference, exc: ModelYardError) -> None:
        """Answer at once; the rest of the body is skipped unread. A body over the limit
        closes the connection; an overload answer keeps it (the body is read past)."""
        self._reading = None
        self._discarding = True
        if isinstance(exc, PayloadTooLarge):
            request.keep_alive = False
        # A gate answers a flood with one error object: encode its answer once (per Date).
        defaults = self.server_state.default_headers
        memo = self.refusal_memo
        if memo[0] is exc and memo[1] is defaults and memo[2] == request.keep_alive:
            head, tail = memo[3], memo[4]
        else:
            status, headers, payload = error_result(exc)
            head, tail = self._head(status, headers), self._tail(payload, request.keep_alive)
            type(self).refusal_memo = (exc, defaults, request.keep_alive, head, tail)
        self._send(request, head, tail)
        if request.keep_alive:
            self.on_response_complete()

    def _start(self, request: _Inference) -> None:
        """Answer ``request``, its body read: from a callback on its queued work when memory
        answers everything it needs (the usual request: no task, no coroutine), else from a
        task (:meth:`_answer`)."""
        if self._answering is not request:
            return  # the connection was lost since the request was read: nothing to start
        # Requests read in one loop turn passed the gate together; the ones ahead of this one may
        # have filled the queue since: ask again before any decoding.
        gate = self._gate(request)
        refused = None if gate is None else gate.refusal()
        if refused is not None:
            self._answering = None
            self._write(request, error_result(refused))
            self.on_response_complete()
            self._hold(gate, request)
            return
        chunks = request.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        started = start_answer(
            self.platform, request.name, request.version,
            authorization=request.authorization, header_length=request.header_length, body=body, where=request.path,
        )
        if started is None:
            request.task = self.loop.create_task(self._answer(request, body))
            return
        principal, outcome = started
        if isinstance(outcome, PendingInference):
            request.answering = outcome
            outcome.future.add_done_callback(partial(self._answered, request, principal))
        else:
            self._deliver(request, outcome, principal)

    def _answered(self, request: _Inference, principal: Principal, _: Any) -> None:
        pending = request.answering
        assert pending is not None
        try:
            result = finish_answer(pending, request.path)
        except asyncio.CancelledError:
            return  # the client went away; its queued work was dropped
        self._deliver(request, result, principal)

    async def _answer(self, request: _Inference, body: bytes) -> None:
        try:
            result, principal = await answer_infer(
                self.platform, request.name, request.version,
                authorization=request.authorization, header_length=request.header_length,
                body=body, where=request.path,
            )
        except asyncio.CancelledError:
            return  # the client went away; its queued work was dropped
        self._deliver(request, result, principal)

    def _deliver(self, request: _Inference, result: InferResult, principal: Principal | None) -> None:
        """Write ``request``'s answer (if the connection still waits for it), then see whether
        its caller's queue has room to read on."""
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
            if result[0] == 429 and principal is not None:
                gate = self._remember_gate(request, principal)
            elif self.gates:  # a caller was refused lately: is this one's queue still full?
                gate = self._gate(request)
            else:
                return
            if gate is not None:
                self._hold(gate, request)

    def _remember_gate(self, request: _Inference, principal: Any) -> QueueGate | None:
        gate = self.platform.dataplane.queue_gate(principal, request.name, request.version)
        if gate is not None:
            gate.secret = bearer_token(request.authorization)  # well formed: it was authenticated
            self.gates.put(request.gate_key or (request.path, request.authorization), gate, self.loop.time())
        return gate

    # -- backpressure ------------------------------------------------------------------------
    def _hold(self, gate: QueueGate, request: _Inference) -> None:
        """Just answered ``request``: while ``gate``'s queue has no room (it holds two batches
        or more, see ``DynamicBatcher.let_in_level``), stop reading this connection. Its next
        request waits unread in the client's socket until the queue has room for it (waiters are
        let in newest first, those that waited half a second before them; after a second it is
        read, and refused if the queue is full) instead of being read only to be refused. The
        caller's gate is kept while its connections keep finding no room. A connection for which
        a slot was kept (answered by a batch computed on the loop while others waited: see
        ``DynamicBatcher.claim_return``) takes it and reads on."""
        if self._held or not request.keep_alive or self.transport.is_closing() or not gate.must_wait():
            return  # room, or a slot was kept for the callers of the batch that answered it: read on
        self._held = True
        self._idle_since = None  # a request may be waiting unread: not idle
        self.flow.pause_reading()
        gate.seen = self.loop.time()  # its caller still finds no room: the table keeps the gate
        gate.when_room(self._release)

    def _release(self) -> int:
        """The held queue has room (or the wait is over): read this connection again. Returns
        how many requests that brings: one (HTTP/1.1 carries one at a time), or 0 when the
        connection is gone or busy (a request pipelined behind the held one: its answer resumes
        reading), so the batcher does not keep a slot for it."""
        if not self._held:
            return 0
        self._held = False
        cycle = self.cycle
        if (
            self.transport.is_closing()
            or self._answering is not None
            or self.pipeline
            or not (cycle is None or cycle.response_complete)
        ):
            return 0
        self.flow.resume_reading()
        self._went_idle()
        if self._last_request:
            self.loop.call_later(_LAST_REQUEST_S, self._close_if_idle)
        return 1

    def _close_if_idle(self) -> None:
        if self._idle_since is not None and not self.transport.is_closing():
            self.transport.close()  # nothing had waited unread

    def _write(self, request: _Inference, result: InferResult) -> None:
        status, headers, payload = result
        self._send(request, self._head(status, headers), self._tail(payload, request.keep_alive))

    def _head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        """An answer's bytes before its ``x-request-id`` (answers of one model share them)."""
        defaults = self.server_state.default_headers
        memo = self.head_memo
        if memo[0] is not defaults:
            memo = type(self).head_memo = (defaults, {})
        key = (status, *headers)
        head = memo[1].get(key)
        if head is None:
            parts = [STATUS_LINE[status]]
            for name, value in defaults:
                parts += (name, b": ", value, b"\r\n")
            for name, value in headers:
                parts += (name, b": ", value, b"\r\n")
            head = b"".join(parts)
            if len(memo[1]) < _HEADS_KEPT:
                memo[1][key] = head
        return head

    @staticmethod
    def _tail(payload: bytes, keep_alive: bool) -> bytes:
        """An answer's bytes after its ``x-request-id``."""
        close = b"" if keep_alive else b"connection: close\r\n"
        return b"".join((b"content-length: ", str(len(payload)).encode(), b"\r\n", close, b"\r\n", payload))

    def _send(self, request: _Inference, head: bytes, tail: bytes) -> None:
        transport = self.transport
        transport.write(b"".join((head, b"x-request-id: ", request.request_id.encode(), b"\r\n", tail)))
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

    # -- keep-alive --------------------------------------------------------------------------
    # uvicorn arms a timer after every answer and cancels it on the next request: two timer
    # operations per request. Here one timer per connection checks when the connection went idle.
    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        if self._last_request:
            self.transport.close()  # the request that waited unread at shutdown is answered
            return
        self._went_idle()

    def _went_idle(self) -> None:
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self._keep_alive_check)

    def _keep_alive_check(self) -> None:
        self.timeout_keep_alive_task = None
        idle_since = self._idle_since
        if idle_since is None or self.transport.is_closing():
            return  # busy (the next answer arms the check again) or gone
        left = idle_since + self.timeout_keep_alive - self.loop.time()
        if left <= 0:
            self.transport.close()
        else:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_check)

    # -- connection ------------------------------------------------------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        request, self._answering = self._answering, None
        self._reading = None
        super().connection_lost(exc)
        if request is not None:
            if request.task is not None:
                request.task.cancel()
            elif request.answering is not None:
                request.answering.cancel()

    def shutdown(self) -> None:
        if self._answering is not None:
            self._answering.keep_alive = False  # close once the answer in flight is written
            return
        if self._held:
            # Its next request may be waiting unread in the socket (see _hold), sent before the
            # stop: closing now would lose it. Read it once the queue has room (the in-flight
            # work drains it; a second at most), answer it, then close.
            self._last_request = True
            return
        super().shutdown()
