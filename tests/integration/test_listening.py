"""A real ``modelyard serve`` listens on ``MODELYARD_LISTEN_SOCKETS`` sockets on each port (HTTP
and gRPC), and a second server started on a port the first holds exits with a clear error
instead of sharing the port's connections."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from modelyard.listeners import spreads_connections
from tests.support.live import ServerProcess

_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


def _listening_sockets(port: int) -> int:
    """Listening TCP sockets on ``port`` (IPv4), from ``/proc/net/tcp``."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


@pytest.mark.slow
@pytest.mark.skipif(not spreads_connections(), reason="several listening sockets a port on Linux only")
def test_listening_sockets_and_a_port_in_use(tmp_path: Path) -> None:
    env = {"MODELYARD_BUILTIN_MODELS": "false", "MODELYARD_LISTEN_SOCKETS": "3", "MODELYARD_LOG_LEVEL": "info"}
    first = ServerProcess(tmp_path / "first", env=env).start()
    try:
        assert _listening_sockets(first.port) == 3
        assert _listening_sockets(first.grpc_port) == 3
        assert "listening on http://127.0.0.1:%d (3 socket(s))" % first.port in first.log.read_text()

        for taken in ("port", "grpc_port"):
            second = ServerProcess(tmp_path / f"second-{taken}", env=env)
            setattr(second, taken, getattr(first, taken))
            assert second.run_to_exit() == 1
            said = second.log.read_text()
            setting = "MODELYARD_HTTP_PORT" if taken == "port" else "MODELYARD_GRPC_PORT"
            assert "Address already in use" in said and setting in said, said[-2000:]
            assert "Traceback" not in said, said[-2000:]
            # the second server holds nothing: the first still has all the port's sockets
            assert _listening_sockets(getattr(first, taken)) == 3

        with httpx.Client(base_url=first.url, headers=first.headers, timeout=30) as http:
            answers = [http.get("/v2/health/ready").status_code for _ in range(50)]
        assert answers == [200] * 50
    finally:
        first.stop()
