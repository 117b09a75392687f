"""Benchmark: OIP v2 REST inference on the digits demo model against ONNX Runtime in process.

Starts ``python -m modelyard serve --demo`` as a subprocess bound to 127.0.0.1 (its own temp
home, gRPC off), then, for 1, 16 and 64 concurrent clients, measures:

* **REST**: closed-loop ``httpx.AsyncClient`` clients each POSTing one 8x8 digit (JSON tensors)
  to ``/v2/models/digits/infer``;
* **in-process ONNX Runtime** (the baseline, same run, same stored artifact, same thread count):
  closed-loop threads each calling ``InferenceSession.run`` on one row.

Each level stops after ``--requests`` requests or ``--seconds`` seconds, whichever comes first.
Prints throughput (requests/s) and latency p50/p99 for both, and the REST/ORT throughput ratio.

    python bench/serving_rest.py [--seconds 5] [--requests 5000] [--clients 1,16,64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from sklearn.datasets import load_digits


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    latencies_ms: np.ndarray

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, key: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {
        **os.environ,
        "MODELYARD_HOME": str(home),
        "MODELYARD_ADMIN_KEY": key,
        "MODELYARD_GRPC_ENABLED": "false",
        "MODELYARD_BUILTIN_MODELS": "false",
        "MODELYARD_LOG_LEVEL": "warning",
    }
    log = open(home / "server.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "serve", "--host", "127.0.0.1", "--port", str(port), "--demo"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early; see {home / 'server.log'}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready")


async def bench_rest(url: str, key: str, rows: np.ndarray, clients: int, seconds: float, limit: int) -> Result:
    bodies = [
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": r.tolist()}]} for r in rows
    ]
    latencies: list[float] = []
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                 limits=limits, timeout=60) as client:
        for body in bodies[:clients]:  # warm up: the first request loads the model
            (await client.post("/v2/models/digits/infer", json=body)).raise_for_status()
        start = time.perf_counter()
        deadline = start + seconds

        async def worker(i: int) -> None:
            nonlocal sent
            while sent < limit and time.perf_counter() < deadline:
                sent += 1
                body = bodies[(i + sent) % len(bodies)]
                t0 = time.perf_counter()
                r = await client.post("/v2/models/digits/infer", json=body)
                latencies.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()

        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - start
    return Result(len(latencies), elapsed, np.array(latencies))


def bench_ort(session: ort.InferenceSession, rows: np.ndarray, clients: int, seconds: float, limit: int) -> Result:
    latencies: list[float] = []
    lock = threading.Lock()
    count = [0]
    start = time.perf_counter()
    deadline = start + seconds

    def worker(i: int) -> None:
        local: list[float] = []
        while time.perf_counter() < deadline:
            with lock:
                if count[0] >= limit:
                    break
                count[0] += 1
                n = count[0]
            x = rows[(i + n) % len(rows)][None, :]
            t0 = time.perf_counter()
            session.run(None, {"input": x})
            local.append((time.perf_counter() - t0) * 1000)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Result(len(latencies), time.perf_counter() - start, np.array(latencies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="time bound per level")
    parser.add_argument("--requests", type=int, default=5000, help="request bound per level")
    parser.add_argument("--clients", default="1,16,64", help="comma-separated concurrency levels")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    rows = load_digits().data[:256].astype(np.float32)
    key = f"my_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"

    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
        home = Path(tmp)
        proc, url = start_server(home, key)
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
                sha = c.get("/api/v1/models/digits/versions/1").json()["sha256"]
            artifact = home / "artifacts" / "blobs" / sha[:2] / sha  # the very file the server runs
            so = ort.SessionOptions()
            so.intra_op_num_threads = os.cpu_count() or 1
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            session = ort.InferenceSession(str(artifact), sess_options=so, providers=["CPUExecutionProvider"])
            session.run(None, {"input": rows[:1]})

            print(f"digits demo model, 1 row per request, {os.cpu_count()} cores, "
                  f"bounds: {args.requests} requests or {args.seconds:.0f} s per level\n")
            header = (f"{'clients':>7} | {'REST req/s':>10} {'p50 ms':>8} {'p99 ms':>8} | "
                      f"{'ORT req/s':>10} {'p50 ms':>8} {'p99 ms':>8} | {'REST/ORT':>8}")
            print(header)
            print("-" * len(header))
            for clients in levels:
                rest = asyncio.run(bench_rest(url, key, rows, clients, args.seconds, args.requests))
                local = bench_ort(session, rows, clients, args.seconds, args.requests)
                print(f"{clients:>7} | {rest.throughput:>10.0f} {rest.pct(50):>8.2f} {rest.pct(99):>8.2f} | "
                      f"{local.throughput:>10.0f} {local.pct(50):>8.3f} {local.pct(99):>8.3f} | "
                      f"{rest.throughput / local.throughput:>8.3f}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
