"""Benchmark: what serving many connections costs per answer, ModelYard against two 30-line
uvloop + httptools servers written below and measured in the same run.

Each server runs pinned to core 0 and ``wrk`` on core 1; closed loops alternate 64 and 1,024
keep-alive connections (one request in flight on each), two passes, each run 1.5 s after the last
(``SETTLE_S``: connections ModelYard held when their client closed them are let go within a
second, and until then they take room from the next run's). For each count the script
prints the answers per second and the server's CPU time per answer (user + system, from
``/proc``), then the ratio of the CPU per answer at 1,024 connections to that at 64:

* **sync**: a server that answers each request in the parser callback that completed it, a fixed
  60-byte answer: the floor of what a connection costs (the socket, its transport, the parser,
  the protocol object);
* **deferred**: the same, but each request is answered by a task awaiting a future that is set
  on a later loop turn, 64 at a time: the shape of a batching server with one task per request;
* **ModelYard**: the tiny digits model over OIP v2 binary tensors, default settings.

Why: the tiny model's overload target compares a flood over 1,024 connections with a 64-client
capacity. This shows how much of the gap any asyncio server of that shape pays
(``docs/benchmarks.md``).

``--burst`` measures instead how long a burst of new connections waits to be accepted by a busy
server: ModelYard with one listening socket (the baseline) and with ``MODELYARD_LISTEN_SOCKETS``
(default 8), in the order 1, 8, 8, 1; on each, six 4 s closed loops over 1,024 connections
started back to back (wrk's timeout 10 s), so each loop's connections arrive while the server
is still busy with the last one's. Printed: each loop's answers per second, p99 and longest
wait; then each setting's longest wait and how many loops had a wait over a second, and the
ratio of the baseline's longest wait to the default's.

    apt-get install wrk
    python bench/connections.py [--seconds 5] [--passes 2] [--counts 64,128,256,512,1024] [--modelyard-only]
    python bench/connections.py --burst
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from modelyard.config import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minimal_server import start_minimal  # noqa: E402
from models import tiny_digits  # noqa: E402
from serving_engine import (  # noqa: E402
    CLIENT_CORE, SERVER_CORE, SETTLE_S, Req, _free_port, cpu_times, oip_request, show, start_modelyard, wait_ready,
    wrk_closed_loop,
)

COUNTS = (64, 1024)
#: ``--burst``: closed loops a server gets back to back, their length and connections
BURST_LOOPS, BURST_S, BURST_CONNECTIONS = 6, 4.0, 1024

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    return sum(cpu_times(pid))


def measure(label: str, pid: int, port: int, req: Req, seconds: float, passes: int, folder: Path,
            counts: tuple[int, ...] = COUNTS) -> None:
    """Run the connection counts ``passes`` times, in reverse order every other pass (a drift of
    the VM's speed then cancels); print each run, then each count's CPU per answer against the
    first count's."""
    wrk_closed_loop(port, req, counts[0], 1.0, folder)  # warm
    per_answer: dict[int, list[float]] = {c: [] for c in counts}
    for i in range(passes):
        for conns in counts if i % 2 == 0 else counts[::-1]:
            time.sleep(SETTLE_S)  # the last run's held connections are gone (see SETTLE_S)
            before = cpu_seconds(pid)
            result = wrk_closed_loop(port, req, conns, seconds, folder)
            answers = sum(n for status, n in result.statuses.items() if status != -1)
            us = (cpu_seconds(pid) - before) / max(1, answers) * 1e6
            per_answer[conns].append(us)
            refused = result.statuses[-2]
            show(f"{label}: {conns:,} connections", f"{result.rps:,.0f} req/s, server CPU {us:.1f} µs per answer"
                 + (f" ({refused:,} non-2xx)" if refused else ""))
    low = float(np.mean(per_answer[counts[0]]))
    for conns in counts[1:]:
        show(f"{label}: CPU per answer, {conns:,} / {counts[0]} connections",
             f"{float(np.mean(per_answer[conns])) / low:.2f}")


def burst(folder: Path, req: Req, key: str, sockets: int) -> list[float]:
    """Start ModelYard with ``sockets`` listening sockets a port, then run the burst loops back to
    back; returns each loop's longest wait in ms."""
    port, grpc_port = _free_port(), _free_port()
    server = served(lambda: start_modelyard(port, grpc_port, key, folder,
                                            settings={"MODELYARD_LISTEN_SOCKETS": str(sockets)}),
                    f"http://127.0.0.1:{port}/v2/health/ready")
    longest = []
    try:
        register_tiny(f"http://127.0.0.1:{port}", key, folder)
        wrk_closed_loop(port, req, 64, 1.0, folder)  # warm
        for i in range(BURST_LOOPS):
            result = wrk_closed_loop(port, req, BURST_CONNECTIONS, BURST_S, folder, timeout_s=10.0)
            longest.append(result.pct(100.0))
            refused, errors = result.statuses[-2], result.statuses[-1]
            show(f"{sockets} listening socket(s), loop {i + 1}",
                 f"{result.rps:,.0f} req/s, p99 {result.pct(99):,.0f} ms, longest {longest[-1]:,.0f} ms, "
                 f"{refused:,} refused (429/503), {errors:,} socket errors")
    finally:
        server.terminate()
        server.wait(timeout=60)
    return longest


def run_bursts(folder: Path, req: Req, key: str) -> None:
    default = Settings.model_fields["listen_sockets"].default
    waits: dict[int, list[float]] = {1: [], default: []}
    for sockets in (1, default, default, 1):
        waits[sockets] += burst(folder, req, key, sockets)
    for sockets, longest in waits.items():
        show(f"{sockets} listening socket(s): longest wait",
             f"{max(longest):,.0f} ms; {sum(ms > 1000 for ms in longest)} of {len(longest)} loops over 1 s")
    show(f"longest wait, 1 / {default} listening sockets", f"{max(waits[1]) / max(waits[default]):.2f}")


def register_tiny(url: str, key: str, folder: Path) -> None:
    httpx.post(f"{url}/api/v1/models/tiny/versions", params={"stage": "production"},
               content=tiny_digits(folder / "tiny.onnx").read_bytes(), timeout=120,
               headers={"content-type": "application/octet-stream", "Authorization": f"Bearer {key}"},
               ).raise_for_status()


def served(start: Callable[[], subprocess.Popen[bytes]], url: str) -> subprocess.Popen[bytes]:
    proc = start()
    try:
        wait_ready(url, proc)
    except BaseException:
        proc.terminate()
        raise
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each closed loop")
    parser.add_argument("--passes", type=int, default=2, help="times each connection count is run")
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)),
                        help="connection counts, the first the baseline (e.g. 64,128,256,512,1024)")
    parser.add_argument("--modelyard-only", action="store_true", help="skip the two 30-line servers")
    parser.add_argument("--burst", action="store_true",
                        help="measure how long a burst of new connections waits, 1 listening socket against the default")
    args = parser.parse_args()
    counts = tuple(int(c) for c in args.counts.split(","))
    if len(counts) < 2 or min(counts) < 1:
        sys.exit("--counts needs two or more positive connection counts, the first the baseline")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two cores (servers on core 0, wrk on core 1)")
    if shutil.which("wrk") is None:
        sys.exit("needs wrk (apt-get install wrk)")
    os.sched_setaffinity(0, {CLIENT_CORE})
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    key = f"my_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"
    x = np.random.default_rng(0).random((1, 64)).astype(np.float32) * 16
    req = oip_request("/v2/models/tiny/infer", key, "input", x, "label")
    if args.burst:
        print(f"# connections --burst: servers on core {SERVER_CORE}, wrk on core {CLIENT_CORE}, {BURST_LOOPS} loops "
              f"of {BURST_S:g} s over {BURST_CONNECTIONS:,} connections each", flush=True)
        run_bursts(tmp, req, key)
        return
    print(f"# connections: servers on core {SERVER_CORE}, wrk on core {CLIENT_CORE}, {args.seconds:g} s per run, "
          f"{args.passes} passes", flush=True)

    for mode in () if args.modelyard_only else ("sync", "deferred"):
        port = _free_port()
        proc = served(lambda: start_minimal(mode, port, tmp, SERVER_CORE), f"http://127.0.0.1:{port}/")
        try:
            measure(f"minimal {mode}", proc.pid, port, req, args.seconds, args.passes, tmp, counts)
        finally:
            proc.terminate()
            proc.wait()

    port, grpc_port = _free_port(), _free_port()
    url = f"http://127.0.0.1:{port}"
    server = served(lambda: start_modelyard(port, grpc_port, key, tmp), f"{url}/v2/health/ready")
    try:
        register_tiny(url, key, tmp)
        measure("ModelYard tiny", server.pid, port, req, args.seconds, args.passes, tmp, counts)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
