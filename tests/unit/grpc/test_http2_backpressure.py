"""The native HTTP/2 transport's backpressure: a connection held after a screen's refusal, or
after a call its method's hold says should wait for room, read again, says how many calls it may
bring (one for each call answered on it since it was held). And when its answers are written."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from modelyard.grpc.http2 import Http2GrpcServer, Refusal, _Connection, _Head, _Stream

PATH = "/pkg.Service/Method"


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.paused = 0
        self.resumed = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1

    def is_closing(self) -> bool:
        return self.closing


async def _unreachable(request: Any, context: Any) -> Any:
    raise AssertionError("a screened call never reaches its handler")


async def _answered(request: Any, context: Any) -> Any:
    return _Answer()


class _Answer:
    def SerializeToString(self) -> bytes:
        return b"ok"


def _connection(
    screen: Callable[..., Refusal | None] | None = None,
    hold: Callable[..., Any] | None = None,
    handler: Callable[[Any, Any], Any] = _unreachable,
) -> tuple[_Connection, FakeTransport, _Head]:
    server = Http2GrpcServer(
        {PATH: (bytes, handler)},
        screens={PATH: screen} if screen else None,
        holds={PATH: hold} if hold else None,
        max_message_bytes=1 << 20,
    )
    connection = _Connection(server)
    transport = FakeTransport()
    connection.transport = transport  # type: ignore[assignment]
    return connection, transport, _Head([(b":path", PATH.encode())], server)


def _open(connection: _Connection, head: _Head, stream_id: int) -> _Stream:
    stream = _Stream(stream_id, 65_535)
    stream.head = head
    connection.streams[stream_id] = stream
    return stream


def _refuse(connection: _Connection, head: _Head, stream_id: int) -> bool:
    return connection._refused(_open(connection, head, stream_id), b"\x00\x00\x00\x00\x00")


async def _serve(connection: _Connection, head: _Head, stream_id: int) -> None:
    await connection._call(_open(connection, head, stream_id), b"\x00\x00\x00\x00\x02hi")


def _sent(connection: _Connection, transport: FakeTransport) -> bytes:
    """What the connection wrote and what it will write at the end of this loop turn."""
    return b"".join(transport.written + connection.out)


@pytest.mark.asyncio
async def test_a_held_connection_read_again_brings_as_many_calls_as_were_refused_on_it() -> None:
    waits: list[Callable[[], int]] = []
    refusal = Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", (("retry-after", "1"),), waits.append)
    connection, transport, head = _connection(lambda metadata, body: refusal)
    for stream_id in (1, 3, 5):  # read together: all three are refused, the first one holds
        assert _refuse(connection, head, stream_id)
    assert len(connection.out) == 3, "each refused call is answered (in the loop turn's one write)"
    assert transport.paused == 1 and len(waits) == 1, "held once, waiting for room once"
    assert waits[0]() == 3, "its client will send about as many calls again"
    assert transport.resumed == 1
    assert waits[0]() == 0, "called back twice: nothing more to bring"
    assert _refuse(connection, head, 7) and len(waits) == 2
    assert waits[1]() == 1, "counted afresh after it was read again"


@pytest.mark.asyncio
async def test_a_held_connection_that_has_gone_brings_nothing() -> None:
    waits: list[Callable[[], int]] = []
    refusal = Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", (), waits.append)
    connection, transport, head = _connection(lambda metadata, body: refusal)
    assert _refuse(connection, head, 1)
    transport.closing = True
    assert waits[0]() == 0 and transport.resumed == 0


@pytest.mark.asyncio
async def test_a_call_the_screen_lets_through_is_not_counted() -> None:
    connection, transport, head = _connection(lambda metadata, body: None)
    assert not _refuse(connection, head, 1)
    assert connection.brings == 0 and connection.out == [] and transport.paused == 0


@pytest.mark.asyncio
async def test_a_connection_is_held_after_a_served_call_when_its_hold_says_so() -> None:
    """After a call is answered, the method's hold is asked (with the framed message); a wait
    back stops reading the connection. Calls answered while it is held are counted: each freed
    a stream that its client will fill again once the connection is read."""
    waits: list[Callable[[], int]] = []
    asked: list[bytes] = []

    def hold(metadata: Any, framed: bytes) -> Callable[[Callable[[], int]], None]:
        asked.append(framed)
        return waits.append

    connection, transport, head = _connection(hold=hold, handler=_answered)
    await _serve(connection, head, 1)
    assert asked == [b"\x00\x00\x00\x00\x02hi"] and b"ok" in _sent(connection, transport), "answered first"
    assert transport.paused == 1 and len(waits) == 1 and 1 not in connection.streams
    await _serve(connection, head, 3)  # in flight when it was held: answered, not asked again
    assert len(asked) == 1 and transport.paused == 1
    assert waits[0]() == 2, "two calls answered: its client may send two"
    assert transport.resumed == 1 and not connection.held


@pytest.mark.asyncio
async def test_a_connection_whose_hold_finds_room_reads_on() -> None:
    connection, transport, head = _connection(hold=lambda metadata, framed: None, handler=_answered)
    await _serve(connection, head, 1)
    assert transport.paused == 0 and not connection.held and b"ok" in _sent(connection, transport)


@pytest.mark.asyncio
async def test_a_connections_answers_leave_in_one_write_as_soon_as_its_last_call_in_flight_is_answered() -> None:
    """Answers wait for the end of the loop turn while other calls of the connection are in
    flight (one write for a batch's answers), and leave at once with the last one: its client
    reads them while the loop goes on answering other connections."""
    connection, transport, head = _connection(handler=_answered)
    waiting = _open(connection, head, 1)  # a call of the same batch, not answered yet
    await _serve(connection, head, 3)
    assert transport.written == [] and b"ok" in b"".join(connection.out), "kept for one write"
    await connection._call(waiting, b"\x00\x00\x00\x00\x02hi")
    assert len(transport.written) == 1 and transport.written[0].count(b"ok") == 2 and connection.out == []
    await asyncio.sleep(0)  # the end of the loop turn finds nothing left to write
    assert len(transport.written) == 1
