"""Real servers for tests: an in-thread uvicorn server on a free loopback port, and a helper to
run ``modelyard serve`` as a subprocess (for restart, SIGTERM and SIGKILL tests)."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from modelyard.config import Settings
from modelyard.core.platform import Platform
from modelyard.server import build_http_server, prepare_platform, run_on_fast_loop, serve_async

__all__ = ["LiveServer", "free_port", "make_admin_key", "ServerProcess", "wait_until"]


_GIVEN: set[int] = set()  # ports free_port handed out in this process


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for ports it gives out on its own (Linux's default where unreadable)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port free now, outside the kernel's ephemeral range. A port from that range
    (what binding port 0 gives) can be taken by any outgoing connection between this check and
    the server's bind, which once failed a CI run with "address already in use"; a port outside
    it is only ever taken by an explicit bind."""
    low, high = _ephemeral_ports()
    candidates = [*range(20_000, min(low, 30_000)), *range(max(high + 1, 61_000), 65_000)]
    for port in random.sample(candidates, min(200, len(candidates))):
        if port in _GIVEN:
            continue  # handed out already in this run (two servers must not draw the same one)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken (or lingering): try another
        _GIVEN.add(port)
        return port
    with socket.socket() as s:  # no free port outside the range: take one from it
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``cond`` (a server's state, read from the test's thread) until it holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def make_admin_key() -> str:
    return f"my_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"


@dataclass
class LiveServer:
    """``create_app`` served by uvicorn in a thread; ``url``, ``admin_key`` and ``platform``."""

    settings: Settings
    admin_key: str
    platform: Platform | None = None
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, home: Path, **overrides: Any) -> LiveServer:
        key = make_admin_key()
        values: dict[str, Any] = {
            "home": home, "http_port": free_port(), "grpc_port": free_port(), "admin_key": key,
            "log_level": "warning",
        }
        values.update(overrides)
        return cls(Settings(**values), key)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.settings.grpc_port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def start(self) -> LiveServer:
        self.platform = prepare_platform(self.settings, announce=lambda _msg: None)
        self._server = build_http_server(self.settings, self.platform)
        platform, server, settings = self.platform, self._server, self.settings
        self._thread = threading.Thread(
            target=lambda: run_on_fast_loop(serve_async(settings, platform, server)), name="live-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.platform is not None:
            asyncio.run(self.platform.aclose())
            self.platform = None


class ServerProcess:
    """``python -m modelyard serve`` in a subprocess with its own home and ports."""

    def __init__(self, home: Path, *, admin_key: str | None = None, env: dict[str, str] | None = None,
                 args: list[str] | None = None, open_files: int | None = None) -> None:
        self.home = home
        self.open_files = open_files  # the soft open-file limit it starts with (None: this process's)
        self.admin_key = admin_key or make_admin_key()
        self.port = free_port()
        self.grpc_port = free_port()
        self.env = {
            **os.environ,
            "MODELYARD_HOME": str(home),
            "MODELYARD_ADMIN_KEY": self.admin_key,
            "MODELYARD_LOG_LEVEL": "warning",
            **(env or {}),
        }
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modelyard", "serve", "--port", str(self.port),
                 "--grpc-port", str(self.grpc_port), *self.args],
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
                # a preexec function only when asked: it makes subprocess fork the slow, thread-unsafe way
                preexec_fn=self._limit_open_files if self.open_files is not None else None,
            )
        return self.proc

    def run_to_exit(self, timeout: float = 60) -> int:
        """Start it and wait for it to exit (a server that must refuse to start); returns its
        exit status, its output is in ``log``."""
        return self._spawn().wait(timeout=timeout)

    def start(self, timeout: float = 60) -> ServerProcess:
        self._spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become ready:\n{self.log.read_text()[-3000:]}")

    def _limit_open_files(self) -> None:
        if self.open_files is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    def stop(self, sig: int = 15, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)
