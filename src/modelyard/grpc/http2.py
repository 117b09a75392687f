"""gRPC over HTTP/2, served by the event loop itself: the unary calls of a gRPC service, and
bidirectional streams whose every request message gets one answer message.

Why not grpcio's server: its Python layer costs several hundred microseconds a call, more than
this server spends on a whole REST inference (``bench/serving_engine.py``: the same servicer
answered 3.0k calls/s on one core under ``grpc.aio``, 26k on this transport; docs/benchmarks.md).
Here one
``asyncio.Protocol`` per connection parses HTTP/2 frames, decodes headers with HPACK (``hpack``;
a header block seen before on the connection is answered from a memo while the dynamic table is
unchanged), runs each call as one task, and writes the response headers, message and trailers in
one write. grpcio stays the client side (``tritonclient.grpc`` is the proof) and the generated
messages are the same.

What is implemented: the connection preface and SETTINGS exchange; HEADERS with CONTINUATION,
padding and priority; DATA with flow control both ways (connection and stream windows, replenished
as messages are consumed; responses wait for the peer's window); PING; RST_STREAM (cancels the
call: its queued work is dropped); GOAWAY (graceful: calls in flight finish); ``grpc-timeout``;
``authorization`` and other metadata; status and message in trailers, trailers-only answers for
errors, ``UNIMPLEMENTED`` for unknown methods. Messages are not compressed (``grpc-encoding``
other than ``identity`` is refused).

Streams (a :data:`StreamHandler`, e.g. ``ModelStreamInfer``): each request message is read as soon
as it is complete and runs as its own task, so the messages of one stream are batched together
like separate calls; each answer leaves as soon as it is ready (completion order, under flow
control), and the trailers (``grpc-status: 0``) follow the last answer once the client has ended
its side. A handler that raises :class:`GrpcAbort` (e.g. a bad key) ends the whole stream with
that status; ``grpc-timeout`` bounds the whole stream; a reset cancels every message in flight.
When the server stops, a stream's messages in flight are answered, then the stream ends with
``UNAVAILABLE`` (messages it had not started are not run): an idle open stream does not hold the
stop up until the drain timeout.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, Protocol, cast
from urllib.parse import quote

import grpc
import hpack

from modelyard.listeners import open_listeners

__all__ = [
    "Http2GrpcServer", "UnaryHandler", "StreamHandler", "Screen", "Hold", "Wait", "Refusal", "CallContext", "GrpcAbort",
]

log = logging.getLogger("modelyard.grpc")

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _PRIORITY, _RST, _SETTINGS, _PUSH, _PING, _GOAWAY, _WINDOW, _CONT = range(10)
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIO_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
_SETTING = struct.Struct(">HI")
#: a frame's 9-byte head: its 24-bit length (as 8 + 16 bits), type, flags and stream id
_FRAME_HEAD = struct.Struct(">BHBBI")
#: a gRPC message's length, after its compressed flag
_LENGTH = struct.Struct(">I")
_DEFAULT_WINDOW = 65_535
#: what this server lets a peer send before it must wait: large, so unary messages flow freely
_RECV_WINDOW = 16 * 1024 * 1024
_REPLENISH = 1024 * 1024
_MAX_FRAME_DEFAULT = 16_384
_MAX_STREAMS = 1024
_NO_ERROR, _PROTOCOL_ERROR, _FLOW_CONTROL_ERROR, _FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x6
_STOPPING = "the server is stopping: request messages not answered on this stream were not run; open a new stream"

#: ``(message bytes) -> request`` and ``(request, context) -> awaitable response``
UnaryHandler = tuple[Callable[[bytes], Any], Callable[[Any, "CallContext"], Awaitable[Any]]]
#: the same, called for every request message of a stream: its answer message
StreamHandler = UnaryHandler
#: ``(metadata, the gRPC-framed request message) -> refusal or None``: a unary call's screen,
#: asked before a task is made or the message is decoded (see :class:`Refusal`)
Screen = Callable[[tuple[tuple[str, str], ...], bytes], "Refusal | None"]
#: ``wait(resume)``: call ``resume()`` once the connection may be read again (see :class:`Refusal`)
Wait = Callable[[Callable[[], int]], None]
#: ``(metadata, the gRPC-framed request message) -> wait or None``: asked after a unary call was
#: answered; a wait when the connection should not be read until ``wait`` calls back (its client's
#: next calls would be refused now: they wait in its socket instead)
Hold = Callable[[tuple[tuple[str, str], ...], bytes], "Wait | None"]
#: ``(metadata, the gRPC-framed request message) -> started call, refusal or None``: a unary
#: call answered without a task when it can be (see :class:`Started`); ``None``: the call takes
#: its task as usual (nothing was done)
Start = Callable[[tuple[tuple[str, str], ...], bytes], "Started | Refusal | None"]


class Started(Protocol):
    """A unary call a :data:`Start` began: once ``future`` is done, ``answer()`` (called once)
    gives the response message's bytes, or the refusal that ends the call with its status;
    ``cancel()`` when the client went away (``answer`` then raises ``CancelledError``)."""

    @property
    def future(self) -> asyncio.Future[Any]: ...

    def answer(self) -> bytes | Refusal: ...

    def cancel(self) -> None: ...


def _one_message(body: bytes) -> bool:
    """Whether a unary call's request body is exactly one uncompressed gRPC message."""
    return len(body) >= 5 and body[0] == 0 and _LENGTH.unpack_from(body, 1)[0] == len(body) - 5


def _int(value: int, prefix: int, flags: int) -> bytes:
    """An HPACK integer with a ``prefix``-bit prefix (RFC 7541 §5.1)."""
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([flags | value])
    out = bytearray([flags | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header as "literal without indexing, new name": never touches the peer's table."""
    return b"\x00" + _int(len(name), 7, 0) + name + _int(len(value), 7, 0) + value


def _prefix(size: int) -> bytes:
    """The 5 bytes before a gRPC message of ``size`` bytes: not compressed, then its length."""
    return b"\x00" + size.to_bytes(4, "big")


def _message(data: bytes) -> bytes:
    """``data`` as one gRPC message on the wire."""
    return _prefix(len(data)) + data


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


#: ``:status: 200`` (static index 8) and ``content-type: application/grpc`` (name index 31)
_RESPONSE_HEADERS = b"\x88" + b"\x0f\x10" + _int(16, 7, 0) + b"application/grpc"
_OK_TRAILERS = _literal(b"grpc-status", b"0")
#: what stands before a stream id in an answer's three frames (see ``_Connection._answer``)
_HEAD_FRAME = len(_RESPONSE_HEADERS).to_bytes(3, "big") + bytes((_HEADERS, _END_HEADERS))
_DATA_FRAME = bytes((_DATA, 0))
_TRAILERS_FRAME = bytes((_HEADERS, _END_HEADERS | _END_STREAM))
_OK_TAIL = len(_OK_TRAILERS).to_bytes(3, "big") + _TRAILERS_FRAME


def _grpc_message(text: str) -> bytes:
    """``grpc-message``: percent-encoded UTF-8, as the gRPC HTTP/2 spec asks."""
    return quote(text, safe=" !\"#$&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`"
                 "abcdefghijklmnopqrstuvwxyz{|}~").encode("ascii")


def _status_block(code: grpc.StatusCode, details: str, trailing: Iterable[tuple[str, str]] = ()) -> bytes:
    """Trailers for a call that ends with ``code``: status, message and trailing metadata."""
    return (
        _literal(b"grpc-status", str(code.value[0]).encode())
        + _literal(b"grpc-message", _grpc_message(details))
        + b"".join(_literal(k.encode(), str(v).encode()) for k, v in trailing)
    )


def _timeout_s(value: bytes) -> float | None:
    units = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
    if len(value) < 2 or value[-1:] not in units or not value[:-1].isdigit():
        return None
    return int(value[:-1]) * units[value[-1:]]


class GrpcAbort(Exception):
    """Raised by :meth:`CallContext.abort`: ends the call with ``code`` and ``details``."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class Refusal:
    """The answer to a call refused by a :data:`Screen`: a status and its trailing metadata,
    encoded once however many calls it answers (a flood is answered with the same object).

    ``wait``: when given, the connection is not read after the refusal until ``wait`` calls back
    (a :data:`Wait`; ``resume()`` returns how many calls the connection may bring: one for each
    call answered on it since it was held, this one included; 0 when it has gone): its next
    frames wait in the client's socket, TCP backpressure, instead of each costing a refusal."""

    __slots__ = ("code", "details", "trailing", "wait", "_block")

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing: Iterable[tuple[str, str]] = (),
        wait: Wait | None = None,
    ) -> None:
        self.code, self.details, self.trailing, self.wait = code, details, tuple(trailing), wait
        self._block: bytes | None = None

    def block(self) -> bytes:
        """The trailers-only header block that answers a refused call."""
        if self._block is None:
            self._block = _RESPONSE_HEADERS + _status_block(self.code, self.details, self.trailing)
        return self._block


class CallContext:
    """What a servicer method sees of its call (the subset of ``grpc.aio.ServicerContext`` the
    servicers here use): metadata in, trailing metadata out, and ``abort``."""

    __slots__ = ("_metadata", "trailing")

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata
        self.trailing: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str]]) -> None:
        self.trailing = tuple(metadata)

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise GrpcAbort(code, details)


#: a method path's handler, whether it is a stream's, its screen, its hold and its start
_Route = tuple[UnaryHandler | None, bool, Screen | None, Hold | None, Start | None]
_NO_ROUTE: _Route = (None, False, None, None, None)


class _Head:
    """A request's header block, decoded, with what a call derives from it (made once per
    distinct block on a connection while the HPACK table is unchanged). ``start`` is the
    method's :data:`Start` only for a call it may start: no ``grpc-timeout``, not compressed."""

    __slots__ = ("headers", "handler", "streaming", "screen", "hold", "start", "metadata", "timeout", "encoding")

    def __init__(self, headers: list[tuple[bytes, bytes]], server: Http2GrpcServer) -> None:
        self.headers = headers
        self.handler, self.streaming, self.screen, self.hold, self.start = server.handler_for(headers)
        metadata: list[tuple[str, str]] = []
        self.timeout: float | None = None
        self.encoding = b"identity"
        for key, value in headers:
            if key[:1] == b":":
                continue
            if key == b"grpc-timeout":
                self.timeout = _timeout_s(value)
            elif key == b"grpc-encoding":
                self.encoding = value
            elif not key.endswith(b"-bin"):
                metadata.append((key.decode("latin-1"), value.decode("latin-1")))
        self.metadata = tuple(metadata)
        if self.timeout is not None or self.encoding != b"identity":
            self.start = None  # such a call takes its task (its deadline, its encoding refused there)


class _Stream:
    __slots__ = (
        "id", "head", "chunks", "size", "credit", "task", "call", "send_window", "pending", "trailers", "answered",
        "timer", "calls", "ended", "started",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.head: _Head | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.credit = 0  # bytes received and not yet given back as stream window
        self.task: asyncio.Task[None] | None = None  # a unary call's task
        self.call: Started | None = None  # or the unary call started without a task
        self.send_window = send_window
        self.pending: list[bytes] = []  # DATA payloads waiting for window
        self.trailers: bytes | None = None  # sent once ``pending`` is empty
        self.answered = False  # nothing more will be added to the answer
        self.timer: asyncio.TimerHandle | None = None
        self.calls: set[asyncio.Task[None]] = set()  # a stream's messages in flight
        self.ended = False  # a stream's client has sent its last message
        self.started = False  # the response headers are sent

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        elif self.call is not None:
            self.call.cancel()
        for call in self.calls:
            call.cancel()


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection; see the module docstring."""

    def __init__(self, server: Http2GrpcServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.preface = False
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.decoder = hpack.Decoder()
        self.memo: dict[bytes, _Head] = {}
        self.continuing: tuple[int, int, bytearray] | None = None  # (stream, flags, block)
        self.send_window = _DEFAULT_WINDOW
        self.peer_initial_window = _DEFAULT_WINDOW
        self.peer_max_frame = _MAX_FRAME_DEFAULT
        self.consumed = 0
        self.closing = False  # no new streams (either side sent GOAWAY)
        self.stopping = False  # this server sent it: open streams end once their messages are answered
        self.out: list[bytes] = []
        self.held = False  # not read until a wait calls back (see Refusal and Hold)
        self.brings = 0  # while held: calls answered since, each of which its client may send again

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport
        self.server.connections.add(self)
        settings = _SETTING.pack(0x3, _MAX_STREAMS) + _SETTING.pack(0x4, _RECV_WINDOW)
        self.transport.write(
            _frame(_SETTINGS, 0, 0, settings)
            + _frame(_WINDOW, 0, 0, (_RECV_WINDOW - _DEFAULT_WINDOW).to_bytes(4, "big"))
        )

    def _send(self, data: bytes) -> None:
        """Queue bytes; they leave in one write at the end of this loop turn (the answers of a
        batch that share a connection go out together: one system call, not one per call), or
        at once when they answer the connection's last call in flight (``_answer``): its client
        has nothing else to wait for, and reads it while the loop answers other connections."""
        if not self.out:
            self.loop.call_soon(self._write_out)
        self.out.append(data)

    def _write_out(self) -> None:
        if self.out and self.transport is not None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _close(self) -> None:
        if self.transport is not None:
            self._write_out()
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for stream in self.streams.values():
            stream.cancel()
        self.streams.clear()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.preface:
            if len(buf) < len(_PREFACE):
                self.buf = buf
                return
            if buf[: len(_PREFACE)] != _PREFACE:
                self._fail(_PROTOCOL_ERROR)
                return
            self.preface = True
            buf = buf[len(_PREFACE) :]
        pos, end = 0, len(buf)
        while end - pos >= 9:
            high, low, kind, flags, stream_id = _FRAME_HEAD.unpack_from(buf, pos)
            length = high << 16 | low
            if length > _RECV_WINDOW:
                self._fail(_FRAME_SIZE_ERROR)
                return
            if end - pos < 9 + length:
                break
            stream_id &= 0x7FFFFFFF
            payload = buf[pos + 9 : pos + 9 + length]
            pos += 9 + length
            if kind == _DATA:
                if not (flags == _END_STREAM and self._whole_message(stream_id, payload)):
                    self._frame_received(kind, flags, stream_id, payload)
            elif not (kind == _HEADERS and flags == _END_HEADERS and self._new_call(stream_id, payload)):
                self._frame_received(kind, flags, stream_id, payload)
            if self.transport is None:
                return
        self.buf = buf[pos:]

    def _pause(self, wait: Wait) -> None:
        """Stop reading until ``wait`` calls back (:meth:`_resume`); the call just answered is
        the first that the connection may bring when it is read again."""
        if self.held or self.closing or self.transport is None:
            return
        self.held = True
        self.brings = 1
        self.transport.pause_reading()
        wait(self._resume)

    def _resume(self) -> int:
        """A wait is over: read the connection again. Returns how many calls that may bring:
        its client sends again about as many as were answered (refused or served) since it was
        held, each of which freed a stream (0: the connection has gone)."""
        if not self.held:
            return 0
        self.held = False
        brings, self.brings = self.brings, 0
        if self.transport is None or self.transport.is_closing():
            return 0
        self.transport.resume_reading()
        return brings

    def _fail(self, code: int) -> None:
        if self.transport is not None:
            self._send(_frame(_GOAWAY, 0, 0, self.last_stream.to_bytes(4, "big") + code.to_bytes(4, "big")))
            self._close()

    def goaway(self) -> None:
        """Refuse new calls; close once the calls in flight are answered (and open streams ended)."""
        self.closing = self.stopping = True
        if self.transport is not None:
            self._send(
                _frame(_GOAWAY, 0, 0, self.last_stream.to_bytes(4, "big") + _NO_ERROR.to_bytes(4, "big"))
            )
            for stream in list(self.streams.values()):
                self._stop_stream(stream)
            if not self.streams:
                self._close()

    def _new_call(self, stream_id: int, block: bytes) -> bool:
        """The usual HEADERS frame of a unary call: a new stream whose header block was seen
        before on this connection (its ``_Head`` remembered), not the end of the stream. Its
        stream is opened here, as ``_headers_complete`` would; False when the frame is not such
        a one (nothing was done: it takes the general path)."""
        head = self.memo.get(block)
        if (
            head is None or head.handler is None or head.streaming or self.continuing is not None
            or stream_id <= self.last_stream or not stream_id & 1 or self.closing
            or len(self.streams) >= _MAX_STREAMS
        ):
            return False
        self._open(stream_id, head)
        return True

    def _whole_message(self, stream_id: int, payload: bytes) -> bool:
        """The usual unary call's DATA frame: its whole message in one frame that ends the
        stream, on a stream that has received nothing else, for a method started without a task
        (no ``grpc-timeout``, not compressed). Started here, without the bookkeeping of a frame
        that may be followed by more; False when the frame is not such a one (nothing was done:
        it takes the general path)."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.size or stream.answered or stream.task is not None or stream.call is not None:
            return False
        head = stream.head
        if (
            head is None or head.start is None or self.continuing is not None
            or len(payload) > self.server.max_message_bytes + 5 or not _one_message(payload)
        ):
            return False
        self._consume(len(payload))
        self._start_unary(stream, head, payload)
        return True

    def _open(self, stream_id: int, head: _Head) -> _Stream:
        """A new stream for a call whose headers are ``head``."""
        self.last_stream = stream_id
        stream = self.streams[stream_id] = _Stream(stream_id, self.peer_initial_window)
        stream.head = head
        return stream

    def _consume(self, size: int) -> None:
        """``size`` bytes of DATA were received: give the connection's window back in steps."""
        self.consumed += size
        if self.consumed >= _REPLENISH and self.transport is not None:
            self._send(_frame(_WINDOW, 0, 0, self.consumed.to_bytes(4, "big")))
            self.consumed = 0

    # -- frames ----------------------------------------------------------------------------
    def _frame_received(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuing is not None and kind != _CONT:
            self._fail(_PROTOCOL_ERROR)
            return
        if kind == _DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == _HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == _CONT:
            if self.continuing is None or self.continuing[0] != stream_id:
                self._fail(_PROTOCOL_ERROR)
                return
            self.continuing[2].extend(payload)
            if flags & _END_HEADERS:
                continued_id, first_flags, block = self.continuing
                self.continuing = None
                self._headers_complete(continued_id, first_flags, bytes(block))
        elif kind == _SETTINGS:
            if not flags & _ACK:
                self._on_settings(payload)
        elif kind == _PING:
            if not flags & _ACK and self.transport is not None:
                self._send(_frame(_PING, _ACK, 0, payload))
        elif kind == _WINDOW:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if stream_id == 0:
                self.send_window += increment
                for stream in list(self.streams.values()):
                    self._flush(stream)
            elif (window_stream := self.streams.get(stream_id)) is not None:
                window_stream.send_window += increment
                self._flush(window_stream)
        elif kind == _RST:
            reset = self.streams.pop(stream_id, None)
            if reset is not None:
                reset.cancel()  # the caller gave up: its queued work is dropped
        elif kind == _GOAWAY:
            self.closing = True
            if not self.streams and self.transport is not None:
                self._close()
        # PRIORITY and unknown frame types are ignored, as RFC 9113 asks.

    def _on_settings(self, payload: bytes) -> None:
        for offset in range(0, len(payload) - len(payload) % 6, 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == 0x4:
                if value > 0x7FFFFFFF:
                    self._fail(_FLOW_CONTROL_ERROR)
                    return
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == 0x5:
                self.peer_max_frame = value
            elif key == 0x1:
                pass  # we encode without the dynamic table: the peer's table size does not matter
        if self.transport is not None:
            self._send(_frame(_SETTINGS, _ACK, 0))

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            self._fail(_PROTOCOL_ERROR)
            return
        if flags & _PADDED:
            pad = payload[0]
            payload = payload[1 : len(payload) - pad]
        if flags & _PRIO_FLAG:
            payload = payload[5:]
        if flags & _END_HEADERS:
            self._headers_complete(stream_id, flags, payload)
        else:
            self.continuing = (stream_id, flags, bytearray(payload))

    def _headers_complete(self, stream_id: int, flags: int, block: bytes) -> None:
        head = self.memo.get(block)
        if head is None:
            table = self.decoder.header_table.dynamic_entries
            count, first = len(table), (table[0] if table else None)
            try:
                headers = self.decoder.decode(block, raw=True)
            except hpack.HPACKError:
                self._fail(0x9)  # COMPRESSION_ERROR
                return
            # Remember a block that left the table as it was (no insertion, no size update):
            # the same bytes decode the same way until the table changes.
            unchanged = len(table) == count and (table[0] if table else None) is first
            head = _Head(list(headers), self.server)
            if unchanged and block and block[0] & 0xE0 != 0x20:
                if len(self.memo) > 256:
                    self.memo.clear()
                self.memo[block] = head
            else:
                self.memo.clear()  # the table changed: remembered blocks may now mean otherwise
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: the request is complete
            if flags & _END_STREAM:
                self._end_of_requests(stream)
            return
        if stream_id <= self.last_stream:
            return  # a closed stream's late frames
        stream = self._open(stream_id, head)
        if self.closing or len(self.streams) > _MAX_STREAMS:
            self._answer_error(stream, grpc.StatusCode.UNAVAILABLE, "the server is shutting down or busy")
            return
        if head.handler is None:
            self._answer_error(stream, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        if head.streaming:
            if head.encoding != b"identity":
                self._answer_error(stream, grpc.StatusCode.UNIMPLEMENTED,
                                   f"grpc-encoding {head.encoding.decode('latin-1')} is not supported")
                return
            if head.timeout is not None:
                stream.timer = self.loop.call_later(head.timeout, self._expire, stream)
        if flags & _END_STREAM:
            self._end_of_requests(stream)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._consume(len(payload))
        stream = self.streams.get(stream_id)
        if stream is None or stream.answered:
            return
        if flags & _PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        stream.chunks.append(payload)
        stream.size += len(payload)
        if stream.head is not None and stream.head.streaming:
            self._stream_messages(stream)
            if stream.answered:
                return
        if stream.size > self.server.max_message_bytes + 5:
            self._answer_error(
                stream, grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request message is over the limit of {self.server.max_message_bytes} bytes",
            )
            return
        stream.credit += len(payload)
        if stream.credit >= _REPLENISH and not flags & _END_STREAM and self.transport is not None:
            self._send(_frame(_WINDOW, 0, stream_id, stream.credit.to_bytes(4, "big")))
            stream.credit = 0
        if flags & _END_STREAM:
            self._end_of_requests(stream)

    # -- calls -----------------------------------------------------------------------------
    def _end_of_requests(self, stream: _Stream) -> None:
        if stream.head is not None and stream.head.streaming:
            stream.ended = True
            if stream.size and not stream.answered:
                self._answer_error(stream, grpc.StatusCode.INTERNAL, "the stream ended inside a message")
            self._stream_done(stream)
        else:
            self._dispatch(stream)

    def _dispatch(self, stream: _Stream) -> None:
        if stream.answered or stream.task is not None or stream.call is not None:
            return
        body = stream.chunks[0] if len(stream.chunks) == 1 else b"".join(stream.chunks)
        stream.chunks = []
        head = stream.head
        if head is not None and head.start is not None and _one_message(body):
            self._start_unary(stream, head, body)
            return
        if self._refused(stream, body):
            return  # answered here: no task, the message is not decoded
        stream.task = self.loop.create_task(self._call(stream, body))

    def _start_unary(self, stream: _Stream, head: _Head, body: bytes) -> None:
        """A unary call whose ``head`` has a :data:`Start`, its body one message: screened, then
        started without a task when its start can, else in a task."""
        if self._refused(stream, body):
            return  # answered here: no task, the message is not decoded
        assert head.start is not None
        started = head.start(head.metadata, body)
        if started is None:
            stream.task = self.loop.create_task(self._call(stream, body))
            return
        stream.ended = True
        if isinstance(started, Refusal):
            self._answer_block(stream, started.block())
            self._hold_after(head, body)
        else:
            stream.call = started
            started.future.add_done_callback(partial(self._call_done, stream, body))

    def _call_done(self, stream: _Stream, body: bytes, _: Any) -> None:
        """A call started without a task (see :data:`Start`) has its answer: send it."""
        call, stream.call = stream.call, None
        if call is None:
            return
        try:
            answer = call.answer()
        except asyncio.CancelledError:
            return  # the client went away; its queued work was dropped
        if isinstance(answer, Refusal):
            self._answer_error(stream, answer.code, answer.details, answer.trailing)
        else:
            self._answer(stream, answer, _OK_TRAILERS)
        assert stream.head is not None
        self._hold_after(stream.head, body)

    def _hold_after(self, head: _Head, body: bytes) -> None:
        """After a unary call was answered: stop reading while its hold says so."""
        if head.hold is not None and not self.held and self.transport is not None:
            wait = head.hold(head.metadata, body)
            if wait is not None:
                self._pause(wait)

    def _refused(self, stream: _Stream, body: bytes) -> bool:
        """Ask the call's screen (if any); True when it refused the call, which is answered."""
        head = stream.head
        if head is None or head.screen is None or head.encoding != b"identity":
            return False
        refusal = head.screen(head.metadata, body)
        if refusal is None:
            return False
        stream.ended = True
        self._answer_block(stream, refusal.block())
        if refusal.wait is not None:
            self._pause(refusal.wait)
        return True

    async def _call(self, stream: _Stream, body: bytes) -> None:
        head = stream.head
        assert head is not None
        if head.encoding != b"identity":
            encoding = head.encoding.decode("latin-1")
            self._answer_error(stream, grpc.StatusCode.UNIMPLEMENTED, f"grpc-encoding {encoding} is not supported")
            return
        if not _one_message(body):
            self._answer_error(stream, grpc.StatusCode.INTERNAL, "the request is not one uncompressed gRPC message")
            return
        if self._refused(stream, body):
            return  # calls read together passed the screen together; those ahead may have filled the queue
        context = CallContext(head.metadata)
        if head.timeout is not None:
            task = asyncio.current_task()
            assert task is not None
            stream.timer = self.loop.call_later(head.timeout, task.cancel)
        try:
            response = await self._respond(stream, body[5:], context)
        except asyncio.CancelledError:
            if stream.timer is not None and stream.id in self.streams and not stream.answered:
                self._answer_error(stream, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            return
        finally:
            if stream.timer is not None:
                stream.timer.cancel()
        if response is not None:
            message = response.SerializeToString()
            trailers = _OK_TRAILERS + b"".join(_literal(k.encode(), str(v).encode()) for k, v in context.trailing)
            self._answer(stream, message, trailers)
        self._hold_after(head, body)

    async def _respond(self, stream: _Stream, message: bytes, context: CallContext) -> Any:
        """Decode one request message and run the handler on it: its response, or ``None``
        once a failure has answered the stream with its status. Cancellation propagates."""
        assert stream.head is not None and stream.head.handler is not None
        decode, method = stream.head.handler
        try:
            try:
                request = decode(message)
            except Exception as exc:
                raise GrpcAbort(grpc.StatusCode.INTERNAL, f"the request message cannot be parsed: {exc}") from exc
            return await method(request, context)
        except GrpcAbort as exc:
            self._answer_error(stream, exc.code, exc.details, context.trailing)
        except Exception:
            log.exception("unhandled error in gRPC call")
            self._answer_error(stream, grpc.StatusCode.INTERNAL, "internal server error; see the server log")
        return None

    # -- streams ---------------------------------------------------------------------------
    def _stream_messages(self, stream: _Stream) -> None:
        """Start a task for every complete message received on a stream so far (the received
        chunks are joined once a message is complete, not on every frame)."""
        if self.stopping:
            self._stop_stream(stream)  # what was not started is not run
            return
        limit = self.server.max_message_bytes
        while stream.size >= 5 and not stream.answered:
            first = stream.chunks[0]
            if len(first) < 5:
                first = b"".join(stream.chunks)
                stream.chunks = [first]
            if first[0] != 0:
                self._answer_error(stream, grpc.StatusCode.UNIMPLEMENTED, "compressed messages are not supported")
                return
            length = int.from_bytes(first[1:5], "big")
            if length > limit:
                self._answer_error(
                    stream, grpc.StatusCode.RESOURCE_EXHAUSTED, f"request message is over the limit of {limit} bytes"
                )
                return
            if stream.size < 5 + length:
                return
            buf = first if len(stream.chunks) == 1 else b"".join(stream.chunks)
            rest = buf[5 + length :]
            stream.chunks = [rest] if rest else []
            stream.size = len(rest)
            call = self.loop.create_task(self._stream_call(stream, buf[5 : 5 + length]))
            stream.calls.add(call)

    async def _stream_call(self, stream: _Stream, message: bytes) -> None:
        assert stream.head is not None
        try:
            response = await self._respond(stream, message, CallContext(stream.head.metadata))
        except asyncio.CancelledError:
            return
        finally:
            stream.calls.discard(cast("asyncio.Task[None]", asyncio.current_task()))
        if response is None or stream.answered or self.transport is None or stream.id not in self.streams:
            return
        data = response.SerializeToString()
        if not stream.started:
            stream.started = True
            self._send(_frame(_HEADERS, _END_HEADERS, stream.id, _RESPONSE_HEADERS))
        stream.pending.append(_message(data))
        self._flush(stream)
        self._stream_done(stream)
        self._stop_stream(stream)

    def _stream_done(self, stream: _Stream) -> None:
        """After the client's last message and the last answer: the trailers."""
        if stream.ended and not stream.calls and not stream.answered and stream.id in self.streams:
            stream.answered = True
            if not stream.started:
                stream.started = True
                self._send(_frame(_HEADERS, _END_HEADERS, stream.id, _RESPONSE_HEADERS))
            stream.trailers = _OK_TRAILERS
            self._flush(stream)

    def _stop_stream(self, stream: _Stream) -> None:
        """While the server stops: end a stream whose messages in flight are all answered."""
        head = stream.head
        if self.stopping and head is not None and head.streaming and not stream.calls and not stream.answered:
            if stream.ended:
                self._stream_done(stream)
            elif stream.pending:  # answers still wait for the client's window: the status follows them
                stream.answered = True
                stream.trailers = _status_block(grpc.StatusCode.UNAVAILABLE, _STOPPING)
            else:
                self._answer_error(stream, grpc.StatusCode.UNAVAILABLE, _STOPPING)

    def _expire(self, stream: _Stream) -> None:
        stream.timer = None
        if stream.id in self.streams and not stream.answered:
            self._answer_error(stream, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    # -- answers -----------------------------------------------------------------------------
    def _answer_error(
        self, stream: _Stream, code: grpc.StatusCode, details: str, trailing: Iterable[tuple[str, str]] = ()
    ) -> None:
        """A trailers-only answer: status and message in the one HEADERS frame (or the trailers
        after a stream's answers so far; the rest of the stream is cancelled)."""
        if stream.answered or self.transport is None:
            return
        block = _status_block(code, details, trailing)
        self._answer_block(stream, block if stream.started else _RESPONSE_HEADERS + block)

    def _answer_block(self, stream: _Stream, block: bytes) -> None:
        """End ``stream`` with the trailers (or trailers-only answer) ``block``."""
        if stream.answered or self.transport is None:
            return
        stream.answered = True
        out = _frame(_HEADERS, _END_HEADERS | _END_STREAM, stream.id, block)
        if stream.task is None and not stream.ended:  # answered before the request ended: the rest is not wanted
            out += _frame(_RST, 0, stream.id, _NO_ERROR.to_bytes(4, "big"))
        stream.pending = []
        current = asyncio.current_task()
        for call in stream.calls:
            if call is not current:
                call.cancel()
        self._send(out)
        self._close_stream(stream)

    def _answer(self, stream: _Stream, answer: bytes, trailers: bytes) -> None:
        """Send a unary call's one message (``answer``, serialized) and its ``trailers``: when
        the windows allow, the head, the message and the trailers in one write, made in one join."""
        if stream.answered or self.transport is None or stream.id not in self.streams:
            return
        stream.answered = True
        size = len(answer) + 5
        if size <= self.send_window and size <= stream.send_window and size <= self.peer_max_frame:
            self.send_window -= size
            stream.send_window -= size
            sid = stream.id.to_bytes(4, "big")
            tail = _OK_TAIL if trailers is _OK_TRAILERS else len(trailers).to_bytes(3, "big") + _TRAILERS_FRAME
            self._send(b"".join((
                _HEAD_FRAME, sid, _RESPONSE_HEADERS,
                size.to_bytes(3, "big"), _DATA_FRAME, sid, _prefix(len(answer)), answer,
                tail, sid, trailers,
            )))
            self._close_stream(stream)
            if not self.streams:
                # the connection's last call in flight: its client is waiting for this write alone
                self._write_out()
            return
        self._send(_frame(_HEADERS, _END_HEADERS, stream.id, _RESPONSE_HEADERS))
        stream.started = True
        stream.pending = [_message(answer)]
        stream.trailers = trailers
        self._flush(stream)

    def _flush(self, stream: _Stream) -> None:
        """Send as much of a stream's waiting messages as the windows allow, then its trailers
        (once they are known)."""
        if self.transport is None:
            return
        pending = stream.pending
        while pending:
            message = pending[0]
            while message:
                room = min(self.send_window, stream.send_window, self.peer_max_frame)
                if room <= 0:
                    pending[0] = message
                    return
                chunk, message = message[:room], message[room:]
                self.send_window -= len(chunk)
                stream.send_window -= len(chunk)
                self._send(_frame(_DATA, 0, stream.id, chunk))
            pending.pop(0)
        if stream.trailers is not None:
            self._send(_frame(_HEADERS, _END_HEADERS | _END_STREAM, stream.id, stream.trailers))
            stream.trailers = None
            self._close_stream(stream)

    def _close_stream(self, stream: _Stream) -> None:
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        self.streams.pop(stream.id, None)
        if self.held:
            self.brings += 1
        if self.closing and not self.streams and self.transport is not None:
            self._close()


class Http2GrpcServer:
    """A gRPC server on the running loop. ``handlers`` maps a method path
    (``/package.Service/Method``) to its :data:`UnaryHandler`, ``streams`` a bidirectional
    streaming method's path to its :data:`StreamHandler`, ``screens`` a unary method's path to
    its :data:`Screen`, ``holds`` a unary method's path to its :data:`Hold`, ``starts`` a unary
    method's path to its :data:`Start`."""

    def __init__(
        self,
        handlers: dict[str, UnaryHandler],
        *,
        max_message_bytes: int,
        streams: dict[str, StreamHandler] | None = None,
        screens: dict[str, Screen] | None = None,
        holds: dict[str, Hold] | None = None,
        starts: dict[str, Start] | None = None,
    ) -> None:
        screens, holds, starts = screens or {}, holds or {}, starts or {}
        self._handlers: dict[bytes, _Route] = {
            path.encode(): (handler, False, screens.get(path), holds.get(path), starts.get(path))
            for path, handler in handlers.items()
        }
        self._handlers.update(
            {path.encode(): (handler, True, None, None, None) for path, handler in (streams or {}).items()}
        )
        self.max_message_bytes = max_message_bytes
        self.connections: set[_Connection] = set()
        self._servers: list[asyncio.Server] = []

    def handler_for(self, headers: list[tuple[bytes, bytes]]) -> _Route:
        """The handler of a call's ``:path``, whether it is a stream's, its screen and its hold."""
        for key, value in headers:
            if key == b":path":
                return self._handlers.get(value, _NO_ROUTE)
        return _NO_ROUTE

    async def start(
        self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None, listen_sockets: int = 1
    ) -> None:
        """Listen on ``host:port`` with ``listen_sockets`` sockets an address (see
        :func:`modelyard.listeners.open_listeners`)."""
        loop = asyncio.get_running_loop()
        sockets = open_listeners(host, port, count=listen_sockets, backlog=2048)
        try:
            for sock in sockets:
                self._servers.append(
                    await loop.create_server(lambda: _Connection(self), sock=sock, ssl=ssl_context, backlog=2048)
                )
        except BaseException:
            for server in self._servers:
                server.close()  # closes its socket
            for sock in sockets[len(self._servers):]:  # those no server took
                sock.close()
            self._servers.clear()
            raise

    @property
    def listening(self) -> int:
        """How many sockets it listens on."""
        return sum(len(server.sockets) for server in self._servers)

    @property
    def port(self) -> int:
        assert self._servers, "not started"
        return int(self._servers[0].sockets[0].getsockname()[1])

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, send GOAWAY, wait up to ``grace`` seconds for calls in flight."""
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            connection.goaway()
        deadline = asyncio.get_running_loop().time() + (grace or 0.0)
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection._close()
        for server in self._servers:
            await server.wait_closed()
