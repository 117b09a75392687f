"""Micro-benchmark: a tiny ONNX model under 64 concurrent clients, with and without batching.

No HTTP: this isolates the engine. The baseline is what a plain async server does without
batching — every request runs ``predict`` alone in a thread pool (FastAPI's default pool has 40
threads). The contender sends the same requests through :class:`DynamicBatcher`. Both use the
same ONNX Runtime session options. Prints requests/s for each and the ratio, measured in the
same run.

    python bench/batcher.py [--clients 64] [--seconds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelyard.engine.batcher import DynamicBatcher
from modelyard.runtimes.base import RuntimeOptions
from modelyard.runtimes.onnx import OnnxRuntime

FEATURES, HIDDEN, CLASSES = 64, 64, 10


def tiny_mlp(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((FEATURES, HIDDEN)).astype(np.float32)
    w2 = rng.standard_normal((HIDDEN, CLASSES)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


async def drive(
    call: Callable[[dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]],
    clients: int,
    seconds: float,
) -> tuple[float, float]:
    """Run ``clients`` closed-loop clients for ``seconds``; returns (requests/s, p50 latency ms)."""
    x = {"x": np.random.default_rng(1).standard_normal((1, FEATURES)).astype(np.float32)}
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await call(x)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, 1000 * float(np.median(latencies))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=2.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        runtime = OnnxRuntime(tiny_mlp(Path(tmp) / "tiny.onnx"), RuntimeOptions(args.threads))
    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(40)

    async def plain(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await loop.run_in_executor(pool, runtime.predict, inputs, None)

    batcher = DynamicBatcher(
        predict=runtime.predict,
        max_batch_size=args.max_batch,
        max_queue_delay_ms=args.delay_ms,
        max_queue_size=4 * args.clients,
        instances=args.instances,
    )

    async def batched(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await batcher.submit(inputs, None)

    await drive(plain, args.clients, 0.5)  # warm up both paths
    await drive(batched, args.clients, 0.5)
    base_rps, base_p50 = await drive(plain, args.clients, args.seconds)
    batch_rps, batch_p50 = await drive(batched, args.clients, args.seconds)
    lone_rps, lone_p50 = await drive(batched, 1, min(args.seconds, 1.0))
    plain_lone_rps, plain_lone_p50 = await drive(plain, 1, min(args.seconds, 1.0))
    await batcher.close(5)
    pool.shutdown()

    print(f"clients={args.clients} ort_threads={args.threads} instances={args.instances}")
    print(f"no batching : {base_rps:9.0f} req/s   p50 {base_p50:7.2f} ms")
    print(f"batcher     : {batch_rps:9.0f} req/s   p50 {batch_p50:7.2f} ms")
    print(f"ratio       : {batch_rps / base_rps:9.2f}x")
    print(f"one client  : plain p50 {plain_lone_p50:.3f} ms, batcher p50 {lone_p50:.3f} ms")


if __name__ == "__main__":
    asyncio.run(main())
