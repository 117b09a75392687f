"""A real ``modelyard serve`` started with a soft open-file limit of 512 raises it to its hard
limit, and holds more connections at once than the limit it was started with."""

from __future__ import annotations

import resource
import socket
from pathlib import Path

import pytest

from tests.support.live import ServerProcess

CONNECTIONS = 700  # over the 512 the server starts with


def _soft_open_files(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc")


@pytest.mark.slow
def test_a_server_started_with_a_low_soft_limit_serves_more_connections(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= 4096, "this machine's hard limit is too low for the test"
    server = ServerProcess(tmp_path / "home", env={"MODELYARD_BUILTIN_MODELS": "false"}, open_files=512).start()
    conns: list[socket.socket] = []
    try:
        assert server.proc is not None
        assert _soft_open_files(server.proc.pid) > 512, "raised at start"
        for _ in range(CONNECTIONS):
            conns.append(socket.create_connection(("127.0.0.1", server.port), timeout=30))
        request = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n"
        for sock in conns:  # all open at once, then each asked
            sock.sendall(request)
        answered = 0
        for sock in conns:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                assert chunk, "closed by the server"
                data += chunk
            answered += data.startswith(b"HTTP/1.1 200")
        assert answered == CONNECTIONS
    finally:
        for sock in conns:
            sock.close()
        server.stop()
