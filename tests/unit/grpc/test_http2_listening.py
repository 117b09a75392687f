"""The native HTTP/2 transport's listening sockets: a start that fails part way (a server made for
some sockets, not for the next) leaves nothing open and the port free."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

from modelyard.grpc import http2
from modelyard.grpc.http2 import Http2GrpcServer
from modelyard.listeners import open_listeners, spreads_connections
from tests.support.live import free_port

pytestmark = pytest.mark.skipif(not spreads_connections(), reason="several sockets a port on Linux only")


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_start_that_fails_part_way_closes_every_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    create_server = loop.create_server
    made = 0

    async def third_fails(*args: Any, **kwargs: Any) -> asyncio.Server:
        nonlocal made
        if made == 2:
            raise OSError("no server for this socket")
        made += 1
        return await create_server(*args, **kwargs)

    opened: list[socket.socket] = []

    def kept(*args: Any, **kwargs: Any) -> list[socket.socket]:
        opened.extend(open_listeners(*args, **kwargs))  # held here: none is closed by being dropped
        return list(opened)

    monkeypatch.setattr(loop, "create_server", third_fails)
    monkeypatch.setattr(http2, "open_listeners", kept)
    port = free_port()
    server = Http2GrpcServer({}, max_message_bytes=1024)
    before = _open_descriptors()
    with pytest.raises(OSError, match="no server for this socket"):
        await server.start("127.0.0.1", port, listen_sockets=4)
    assert made == 2, "two servers were made before the failure"
    assert server.listening == 0
    assert len(opened) == 4 and all(sock.fileno() == -1 for sock in opened), "every socket is closed"
    assert _open_descriptors() == before, "the servers' sockets and the two no server took are closed"
    with socket.socket() as plain:  # no SO_REUSEPORT: binds only if no socket of the group is left
        plain.bind(("127.0.0.1", port))
