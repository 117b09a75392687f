"""The native HTTP/2 transport's backpressure after a screen's refusals: a held connection, read
again, says how many calls it may bring (as many as were refused on it while it waited)."""

from __future__ import annotations

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


def _connection(screen: Callable[..., Refusal | None]) -> tuple[_Connection, FakeTransport, _Head]:
    async def handler(request: Any, context: Any) -> Any:
        raise AssertionError("a screened call never reaches its handler")

    server = Http2GrpcServer({PATH: (bytes, handler)}, screens={PATH: screen}, max_message_bytes=1 << 20)
    connection = _Connection(server)
    transport = FakeTransport()
    connection.transport = transport  # type: ignore[assignment]
    return connection, transport, _Head([(b":path", PATH.encode())], server)


def _refuse(connection: _Connection, head: _Head, stream_id: int) -> bool:
    stream = _Stream(stream_id, 65_535)
    stream.head = head
    connection.streams[stream_id] = stream
    return connection._refused(stream, b"\x00\x00\x00\x00\x00")


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
    assert connection.refused == 0 and connection.out == [] and transport.paused == 0
