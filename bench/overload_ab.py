"""Benchmark: a model's overload (the tiny one by default), one code against another (or one path against another),
in alternating rounds: what a change to the serving engine does to a flood, measured beside its
baseline on the same core at nearly the same moment.

Each source tree (``--src``, one or more ``src`` folders: this checkout's and, say, a ``git
archive`` of the commit before a change) gets its own ``modelyard serve`` pinned to core 0
(``MODELYARD_CORES=1``), the load on core 1. Each round loads every server in turn (ABBA: the
order flips every round): a 64-client closed loop (``wrk``) for the capacity, then the bench's
open loop at 3x that capacity over 1,024 connections. Per server and round it prints the
capacity, the flood's goodput and their ratio, the server's CPU time per answer (user and
system), the rows per batch of each version during the flood, and the latencies of the flood's
answers (from the start of the send: a connection held while the queue is full waits longer), and the
server core's speed in the capacity run and in the flood (``serving_engine.CoreSpeed``'s probe):
the flood's ratio as it would read at equal speed, and the CPU time of an answer in the probe's
loops, a cost that a core slowing down for a while does not inflate. ``--target`` floods the model
itself (``model``), a one-route deployment of it (``deployment``) or a deployment split 90/10
between two versions of it (``canary``).

A full bench run (``serving_engine.py``) measures a 60 s flood once; on this VM the core's speed
moves within minutes, so comparing two codes takes alternating rounds: read the goodputs of
adjacent rounds side by side, not one ratio.

    python bench/overload_ab.py --src src --src /tmp/before/src [--rounds 4] [--flood-seconds 10]
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
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import medium_mlp, tiny_digits  # noqa: E402
from serving_engine import (  # noqa: E402
    CLIENT_CORE,
    SETTLE_S,
    CoreSpeed,
    OPEN_LOOP_CONNS,
    SERVER_CORE,
    Req,
    Result,
    _free_port,
    at_equal_speed,
    cpu_times,
    oip_request,
    open_loop,
    run_generator,
    server_counters,
    start_modelyard,
    wait_ready,
    wrk_closed_loop,
)

#: the second version of a canary's model gets this share of its traffic
CANARY_SHARE = 10
#: per model: how to build it, its input's width, the output asked for
MODELS = {"tiny": (tiny_digits, 64, "label"), "medium": (medium_mlp, 784, "logits")}


@dataclass
class Server:
    src: Path
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    key: str
    req: Req
    model: str


def start(src: Path, model: str, onnx: Path, target: str, tmp: Path) -> Server:
    """``modelyard serve`` from the source tree ``src`` on core 0, with ``model`` (twice for a
    canary) and the deployment ``target`` asks for."""
    key = f"my_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"
    port = _free_port()
    proc = start_modelyard(port, 0, key, tmp, src)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/v2/health/ready", proc)
    routes = {"model": None, "deployment": [{"model": model, "version": 1}],
              "canary": [{"model": model, "version": 1, "weight": 100 - CANARY_SHARE},
                         {"model": model, "version": 2, "weight": CANARY_SHARE}]}[target]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        for stage in ("production", "staging")[: 2 if target == "canary" else 1]:
            r = http.post(f"/api/v1/models/{model}/versions", params={"stage": stage}, content=onnx.read_bytes(),
                          headers={"content-type": "application/octet-stream"})
            r.raise_for_status()
        if routes is not None:
            http.post("/api/v1/deployments", json={"name": "flooded", "routes": routes}).raise_for_status()
    _, width, output = MODELS[model]
    x = np.random.default_rng(0).random((1, width)).astype(np.float32) * 16
    path = f"/v2/models/{model}/infer" if routes is None else "/v2/models/flooded/infer"
    return Server(src, proc, url, port, key, oip_request(path, key, "input", x, output), model)


def batch_sums(server: Server) -> dict[str, tuple[float, float]]:
    """Per version of the flooded model: (batches, rows) so far, from the server's batch-size histogram."""
    batches, rows = (server_counters(server.url, server.key, f"modelyard_batch_size_{kind}", "version",
                                     model=server.model) for kind in ("count", "sum"))
    return {version: (batches[version], rows[version]) for version in batches}


@dataclass
class Measured:
    """One load on a server: what its generator saw, and the server's CPU time and batches meanwhile."""

    result: Result
    user_us: float  # CPU time an answer
    system_us: float
    rows: str  # rows per batch, per version

    @property
    def cpu_us(self) -> float:
        return self.user_us + self.system_us

    def cost(self) -> str:
        return f"CPU {self.user_us:5.1f} user + {self.system_us:4.1f} system µs an answer  rows/batch {self.rows}"


def measured(server: Server, load: Callable[[], Result]) -> Measured:
    batches_before, (user0, sys0) = batch_sums(server), cpu_times(server.proc.pid)
    result = load()
    (user1, sys1), batches_after = cpu_times(server.proc.pid), batch_sums(server)
    answers = max(1, sum(n for code, n in result.statuses.items() if code > 0))
    rows = {v: (r - batches_before.get(v, (0, 0))[1]) / max(1.0, b - batches_before.get(v, (0, 0))[0])
            for v, (b, r) in sorted(batches_after.items())}
    return Measured(result, 1e6 * (user1 - user0) / answers, 1e6 * (sys1 - sys0) / answers,
                    ", ".join(f"v{v} {n:.0f}" for v, n in rows.items()))


def flood_round(server: Server, seconds: float, tmp: Path, speed: CoreSpeed, closed_too: bool) -> str:
    started = time.monotonic()
    capacity = wrk_closed_loop(server.port, server.req, 64, 5.0, tmp).rps
    flooded = time.monotonic()
    flood = measured(server, lambda: run_generator(
        open_loop(server.port, server.req.raw(), 3 * capacity, seconds, OPEN_LOOP_CONNS)))
    core_capacity, core_flood = speed.mean(started, flooded), speed.mean(flooded, time.monotonic())
    over = flood.result
    codes = {code: n for code, n in sorted(over.statuses.items()) if code != 0}
    line = (f"capacity {capacity:8,.0f}  flood {over.rps:8,.0f} req/s = {over.rps / capacity:.3f}  {flood.cost()}  "
            f"p50/p99/max {over.pct(50):.0f}/{over.pct(99):.0f}/{1000 * max(over.latencies, default=0):.0f} ms  "
            f"{codes}  core {core_capacity:.1f}/{core_flood:.1f} M loops/s: flood/capacity at equal speed "
            f"{at_equal_speed(over.rps / capacity, core_capacity, core_flood):.3f}, "
            f"{flood.cpu_us * core_flood / 1000:.2f}k loops an answer")
    if closed_too:
        time.sleep(SETTLE_S)
        closed = measured(server, lambda: wrk_closed_loop(server.port, server.req, OPEN_LOOP_CONNS, seconds, tmp))
        line += (f"\n{'':>34}wrk closed loop over {OPEN_LOOP_CONNS:,}: {closed.result.rps:8,.0f} req/s = "
                 f"{closed.result.rps / capacity:.3f} of capacity  {closed.cost()}  "
                 f"p50/p99 {closed.result.pct(50):.0f}/{closed.result.pct(99):.0f} ms")
        time.sleep(SETTLE_S)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", action="append", type=Path, required=True,
                        help="a source tree's src folder (repeat)")
    parser.add_argument("--target", choices=["model", "deployment", "canary"], default="model")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny",
                        help="the digits MLP, or the medium MLP (784-2048-2048-2048-10)")
    parser.add_argument("--closed-too", action="store_true",
                        help=f"after each flood, wrk's closed loop over its {OPEN_LOOP_CONNS:,} connections, "
                             "for its cost and batches beside the flood's")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--flood-seconds", type=float, default=10.0)
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2 or shutil.which("wrk") is None:
        sys.exit("needs two cores and wrk (apt-get install wrk)")
    os.sched_setaffinity(0, {CLIENT_CORE})
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-overload-ab-"))
    build, _, _ = MODELS[args.model]
    onnx = build(tmp / f"{args.model}.onnx")
    servers: list[Server] = []
    speed: CoreSpeed | None = None
    try:
        for src in args.src:
            servers.append(start(src, args.model, onnx, args.target, tmp))
        for server in servers:
            wrk_closed_loop(server.port, server.req, 64, 2.0, tmp)  # warm
        speed = CoreSpeed(servers[0].proc.pid)
        print(f"# overload_ab: {args.model} {args.target}, servers on core {SERVER_CORE}, generators on core {CLIENT_CORE}, "
              f"{args.flood_seconds:g} s floods at 3x capacity over {OPEN_LOOP_CONNS:,} connections", flush=True)
        for r in range(args.rounds):
            for server in servers if r % 2 == 0 else servers[::-1]:
                print(f"round {r + 1} {str(server.src):>24}: {flood_round(server, args.flood_seconds, tmp, speed, args.closed_too)}",
                      flush=True)
    finally:
        if speed is not None:
            speed.close()  # the probe loops until stopped, pinned to the servers' core
        for server in servers:
            server.proc.terminate()
            server.proc.wait(timeout=60)


if __name__ == "__main__":
    main()
