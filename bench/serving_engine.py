"""Benchmark: the serving engine (dynamic batching, gRPC, overload) against baselines measured in
the same run. The server is pinned to core 0 and this load generator to core 1 (``taskset`` /
``sched_setaffinity``); the server gets ``MODELYARD_CORES=1``.

Figures (each printed with its ratio):

1. medium MLP (784-2048-2048-2048-10 fp32), 64 closed-loop clients, one row each, REST with
   batching vs in-process ONNX Runtime at batch 32 on one core (rows/s);
2. tiny digits MLP, 64 clients: ModelYard REST with batching vs a plain FastAPI + uvicorn + ORT
   server without batching (written below, a dozen lines), plus p99/p50;
3. tiny model, one client at a time: p50 with batching on vs off (two deployments of one version);
4. tiny model, 64 clients: gRPC vs REST throughput;
5. overload: open-loop at 3x the measured capacity for ``--overload-seconds``: status codes,
   goodput / capacity, server memory growth, and how long p99 takes to come back afterwards.

The load generator speaks HTTP/1.1 over raw keep-alive sockets (pre-built requests, Triton's
binary tensor extension) so that it is not the bottleneck.

    python bench/serving_engine.py [--seconds 5] [--overload-seconds 20] [--skip-medium]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import medium_mlp, tiny_digits  # noqa: E402

SERVER_CORE, CLIENT_CORE = 0, 1


# -- load generation ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def oip_request(path: str, key: str, input_name: str, x: np.ndarray, output: str) -> bytes:
    """One pre-built HTTP/1.1 OIP v2 request with a binary input tensor and binary output."""
    raw = x.astype(np.float32).tobytes()
    header = json.dumps({
        "inputs": [{"name": input_name, "datatype": "FP32", "shape": list(x.shape),
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": output, "parameters": {"binary_data": True}}],
    }).encode()
    body = header + raw
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def plain_request(path: str, x: np.ndarray) -> bytes:
    raw = x.astype(np.float32).tobytes()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(raw)}\r\n\r\n"
    ).encode() + raw


class Conn:
    """A keep-alive HTTP/1.1 connection that sends pre-built requests and reads the status."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def call(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


@dataclass
class Result:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    stamps: list[float] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.statuses[200]

    @property
    def rps(self) -> float:
        return self.ok / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")


async def closed_loop(port: int, request: bytes, clients: int, seconds: float) -> Result:
    conns = [await Conn.open(port) for _ in range(clients)]
    for c in conns:  # warm every connection
        await c.call(request)
    result = Result(seconds)
    stop = time.perf_counter() + seconds

    async def client(c: Conn) -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            status = await c.call(request)
            done = time.perf_counter()
            result.statuses[status] += 1
            if status == 200:
                result.latencies.append(done - t)
                result.stamps.append(done)

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    result.seconds = time.perf_counter() - started
    for c in conns:
        c.close()
    return result


async def open_loop(port: int, request: bytes, rate: float, seconds: float, max_conns: int = 1024) -> Result:
    """Requests start at ``rate``/s whatever the answers; each takes an idle connection or opens
    one (up to ``max_conns``; beyond it the start is counted as status 0: generator-limited)."""
    idle: list[Conn] = []
    opened = 0
    result = Result(seconds)
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        nonlocal opened
        if idle:
            c = idle.pop()
        elif opened < max_conns:
            opened += 1
            c = await Conn.open(port)
        else:
            result.statuses[0] += 1
            return
        t = time.perf_counter()
        try:
            status = await c.call(request)
        except (ConnectionError, asyncio.IncompleteReadError):
            result.statuses[-1] += 1
            return
        result.statuses[status] += 1
        if status == 200:
            result.latencies.append(time.perf_counter() - t)
        idle.append(c)

    started = time.perf_counter()
    n = 0
    while True:
        now = time.perf_counter()
        if now - started >= seconds:
            break
        due = int((now - started) * rate)
        while n < due:
            n += 1
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(0.001)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    result.seconds = time.perf_counter() - started
    for c in idle:
        c.close()
    return result


async def grpc_closed_loop(port: int, key: str, name: str, x: np.ndarray, clients: int, seconds: float) -> Result:
    import grpc

    from modelyard.grpc.proto import grpc_service_pb2 as pb
    from modelyard.grpc.proto import grpc_service_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name=name)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    del tensor
    request.raw_input_contents.append(x.astype(np.float32).tobytes())
    metadata = (("authorization", f"Bearer {key}"),)
    await stub.ModelInfer(request, metadata=metadata)
    result = Result(seconds)
    stop = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                await stub.ModelInfer(request, metadata=metadata)
                result.statuses[200] += 1
                result.latencies.append(time.perf_counter() - t)
            except grpc.aio.AioRpcError as exc:
                result.statuses[exc.code().value[0]] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    result.seconds = time.perf_counter() - started
    await channel.close()
    return result


# -- servers -----------------------------------------------------------------------------------

PLAIN_SERVER = textwrap.dedent('''
    import os, numpy as np, onnxruntime as ort
    from fastapi import FastAPI, Request, Response
    opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.environ["PLAIN_MODEL"], opts, providers=["CPUExecutionProvider"])
    name, width = sess.get_inputs()[0].name, int(os.environ["PLAIN_WIDTH"])
    app = FastAPI()

    @app.post("/infer")
    async def infer(request: Request) -> Response:
        x = np.frombuffer(await request.body(), np.float32).reshape(-1, width)
        return Response(sess.run(None, {name: x})[-1].tobytes(), media_type="application/octet-stream")
''')


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited early")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def show(label: str, value: str, command: str = "") -> None:
    print(f"{label:<62} {value}", flush=True)


def in_process_ort(path: Path, width: int, batch: int, seconds: float) -> float:
    """Rows/s of ONNX Runtime in this process, one thread, fixed batch (on the server's core)."""
    import onnxruntime as ort

    os.sched_setaffinity(0, {SERVER_CORE})
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32)
        name = sess.get_inputs()[0].name
        for _ in range(3):
            sess.run(None, {name: x})
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            sess.run(None, {name: x})
            n += batch
        return n / (time.perf_counter() - started)
    finally:
        os.sched_setaffinity(0, {CLIENT_CORE})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each closed-loop run")
    parser.add_argument("--overload-seconds", type=float, default=20.0, help="duration of the 3x overload")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--skip-medium", action="store_true")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two cores (server on core 0, load generator on core 1)")
    os.sched_setaffinity(0, {CLIENT_CORE})
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    key = f"my_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"
    port, grpc_port, plain_port = _free_port(), _free_port(), _free_port()
    tiny, medium = tiny_digits(tmp / "tiny.onnx"), medium_mlp(tmp / "medium.onnx")
    env = {**os.environ, "MODELYARD_HOME": str(tmp / "home"), "MODELYARD_ADMIN_KEY": key,
           "MODELYARD_CORES": "1", "MODELYARD_BUILTIN_MODELS": "false", "MODELYARD_LOG_LEVEL": "warning",
           "MODELYARD_MAX_QUEUE_SIZE": "512"}
    server = subprocess.Popen(
        ["taskset", "-c", str(SERVER_CORE), sys.executable, "-m", "modelyard", "serve",
         "--port", str(port), "--grpc-port", str(grpc_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "wb"),
    )
    plain_file = tmp / "plain_server.py"
    plain_file.write_text(PLAIN_SERVER)
    plain = None
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/v2/health/ready", server)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            for name, path in (("tiny", tiny), ("medium", medium)):
                r = http.post(f"/api/v1/models/{name}/versions", params={"stage": "production"},
                              content=path.read_bytes(), headers={"content-type": "application/octet-stream"})
                r.raise_for_status()
            for dep, batching in (("tiny-batched", True), ("tiny-unbatched", False)):
                r = http.post("/api/v1/deployments", json={
                    "name": dep, "routes": [{"model": "tiny", "version": 1}], "serving": {"batching": batching}})
                r.raise_for_status()
        rng = np.random.default_rng(0)
        x_tiny, x_medium = rng.random((1, 64)).astype(np.float32) * 16, rng.random((1, 784)).astype(np.float32)
        req = {
            "tiny": oip_request("/v2/models/tiny/infer", key, "input", x_tiny, "label"),
            "tiny-batched": oip_request("/v2/models/tiny-batched/infer", key, "input", x_tiny, "label"),
            "tiny-unbatched": oip_request("/v2/models/tiny-unbatched/infer", key, "input", x_tiny, "label"),
            "medium": oip_request("/v2/models/medium/infer", key, "input", x_medium, "logits"),
        }
        c, s = args.clients, args.seconds
        print(f"# serving_engine: server on core {SERVER_CORE}, generator on core {CLIENT_CORE}, "
              f"{c} clients, {s:g} s per run", flush=True)

        if not args.skip_medium:
            asyncio.run(closed_loop(port, req["medium"], 8, 1.0))  # warm
            rest = asyncio.run(closed_loop(port, req["medium"], c, s))
            ort_rows = in_process_ort(medium, 784, 32, s)
            show("medium: REST rows/s, 64 clients, batching", f"{rest.rps:,.0f}  (p50 {rest.pct(50):.1f} ms, p99 {rest.pct(99):.1f} ms)")
            show("medium: in-process ORT rows/s, batch 32, 1 thread", f"{ort_rows:,.0f}")
            show("medium: ratio REST / ORT (target >= 0.7)", f"{rest.rps / ort_rows:.2f}")

        plain = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CORE), sys.executable, "-m", "uvicorn", "plain_server:app",
             "--port", str(plain_port), "--log-level", "warning", "--no-access-log"],
            cwd=tmp, env={**os.environ, "PLAIN_MODEL": str(tiny), "PLAIN_WIDTH": "64"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_ready(f"http://127.0.0.1:{plain_port}/docs", plain)
        base = asyncio.run(closed_loop(plain_port, plain_request("/infer", x_tiny), c, s))
        plain.terminate()
        plain.wait()
        plain = None
        ours = asyncio.run(closed_loop(port, req["tiny"], c, s))
        show("tiny: plain FastAPI+uvicorn+ORT req/s, 64 clients", f"{base.rps:,.0f}  (p50 {base.pct(50):.1f} ms, p99 {base.pct(99):.1f} ms)")
        show("tiny: ModelYard REST req/s, 64 clients, batching", f"{ours.rps:,.0f}  (p50 {ours.pct(50):.1f} ms, p99 {ours.pct(99):.1f} ms)")
        show("tiny: ratio ModelYard / plain (target >= 3)", f"{ours.rps / base.rps:.2f}")
        show("tiny: p99 / p50 (target <= 4)", f"{ours.pct(99) / ours.pct(50):.2f}")

        on = asyncio.run(closed_loop(port, req["tiny-batched"], 1, s))
        off = asyncio.run(closed_loop(port, req["tiny-unbatched"], 1, s))
        show("tiny: 1 client p50, batching on / off (target <= 1.2)",
             f"{on.pct(50):.3f} ms / {off.pct(50):.3f} ms = {on.pct(50) / off.pct(50):.2f}")

        g = asyncio.run(grpc_closed_loop(grpc_port, key, "tiny", x_tiny, c, s))
        show("tiny: gRPC req/s, 64 clients", f"{g.rps:,.0f}  (p50 {g.pct(50):.1f} ms, p99 {g.pct(99):.1f} ms)")
        show("tiny: ratio gRPC / REST (target >= 1)", f"{g.rps / ours.rps:.2f}")

        capacity = ours.rps
        rss_before = rss_mb(server.pid)
        over = asyncio.run(open_loop(port, req["tiny"], 3 * capacity, args.overload_seconds))
        rss_after = rss_mb(server.pid)
        after = asyncio.run(closed_loop(port, req["tiny"], c, 5.0))
        stamps = np.asarray(after.stamps)
        lat = np.asarray(after.latencies)
        recovered = None
        if len(stamps):
            t0 = stamps.min()
            for second in range(5):
                window = lat[(stamps >= t0 + second) & (stamps < t0 + second + 1)]
                if len(window) and np.percentile(window, 99) * 1000 <= 1.5 * ours.pct(99):
                    recovered = second + 1
                    break
        codes = {k: v for k, v in sorted(over.statuses.items())}
        show(f"overload: 3x capacity ({3 * capacity:,.0f}/s) for {args.overload_seconds:g} s, statuses", str(codes))
        show("overload: only 200/429/503 (target: yes; 0 = generator out of connections)",
             str(set(codes) <= {200, 429, 503}))
        show("overload: goodput / capacity (target >= 0.9)", f"{over.rps / capacity:.2f}")
        show("overload: server RSS growth MB (target < 50)", f"{rss_after - rss_before:.1f}")
        show("overload: seconds until p99 <= 1.5x baseline (target <= 5)", str(recovered))
    finally:
        if plain is not None:
            plain.terminate()
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
