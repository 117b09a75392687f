"""The 30-line uvloop + httptools HTTP server the benchmarks measure beside ModelYard: what any
asyncio server of that shape pays for a connection, with nothing of ModelYard's in it.

* ``sync`` answers each request in the parser callback that completed it, a fixed 60-byte
  answer: the floor of what a connection costs (the socket, its transport, the parser, the
  protocol object);
* ``deferred`` answers through a task per request awaiting a future set on a later loop turn, 64
  at a time: the shape of a batching server with one task per request.

Used by ``bench/connections.py`` and ``bench/serving_engine.py`` (the machine's own price of 1,024
connections, printed beside the tiny model's overload).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

__all__ = ["start_minimal", "MODES"]

MODES = ("sync", "deferred")

_SOURCE = '''
import asyncio, os, sys
import httptools, uvloop

ANSWER = b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: 60\\r\\n\\r\\n" + b"x" * 60
DEFERRED = os.environ["MINIMAL_MODE"] == "deferred"
pending = []

def answer_some():
    batch = pending[:64]
    del pending[:64]
    for future in batch:
        future.set_result(ANSWER)
    if pending:
        asyncio.get_running_loop().call_soon(answer_some)

async def answer(transport, future):
    data = await future
    if not transport.is_closing():
        transport.write(data)

class Protocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.parser = transport, httptools.HttpRequestParser(self)

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_message_complete(self):
        if not DEFERRED:
            self.transport.write(ANSWER)
            return
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.create_task(answer(self.transport, future))
        if not pending:
            loop.call_soon(answer_some)
        pending.append(future)

async def main():
    server = await asyncio.get_running_loop().create_server(Protocol, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await server.serve_forever()

uvloop.run(main())
'''


def start_minimal(mode: str, port: int, folder: Path, core: int) -> subprocess.Popen[bytes]:
    """Start the server in ``mode`` on ``port``, pinned to ``core`` (its source is written to
    ``folder``); the caller waits for it to answer and stops it."""
    if mode not in MODES:
        raise ValueError(f"mode is one of {MODES}")
    script = folder / "minimal.py"
    script.write_text(textwrap.dedent(_SOURCE))
    return subprocess.Popen(
        ["taskset", "-c", str(core), sys.executable, str(script), str(port)],
        env={**os.environ, "MINIMAL_MODE": mode}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
