"""Benchmark: the per-request path in process, piece by piece, each against its baseline in the
same run (no sockets, one core: the figures behind docs/serving.md's "per-request path").

1. request metrics: the loop-local counter and histogram (``metrics.LoopCounter``,
   ``LoopHistogram``) against prometheus_client's ``Counter`` and ``Histogram``, one increment and
   one observation per request;
2. a small binary output's wire bytes: ``codec._raw_chunk`` (a copy when small) against a buffer
   view of the same array (what it returned for every size before);
3. decoding a binary request: a header seen before (the prepared path) against the same body
   decoded from its JSON header;
4. encoding a binary answer: its JSON header remembered for its model and shape against the same
   answer encoded in full (the memo emptied first, then filled again, as a first answer does);
5. decoding a gRPC ``ModelInfer`` call: read off its bytes (the same other fields as the last call)
   against parsed with protobuf and its remembered prefix looked up (what it did before);
6. the native gRPC transport's share of a unary call (its frames in, its answer out): the usual
   call's fast paths against the same frames through the general frame-by-frame path;
7. ``answer_infer`` (authenticate, decode, the data plane, the batcher, encode) for 64 requests at
   a time on uvloop, against the same requests taken straight to the version's batcher (decode,
   submit, encode): what the data plane's checks and accounting cost per request.

    python bench/hot_path.py [--seconds 1.0] [--rounds 600]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from modelyard.api.v2 import codec
from modelyard.api.v2.infer import answer_infer
from modelyard.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram
from modelyard.tensors import InferenceResponse, RequestedOutput, Tensor


def per_call_ns(fn: Callable[[], object], seconds: float) -> float:
    """Nanoseconds per call of ``fn``, best of three runs of ``seconds`` / 3."""
    best = float("inf")
    for _ in range(3):
        n, started = 0, time.perf_counter()
        until = started + seconds / 3
        while time.perf_counter() < until:
            for _ in range(1000):
                fn()
            n += 1000
        best = min(best, (time.perf_counter() - started) / n * 1e9)
    return best


def show(label: str, ours: float, base: float, unit: str) -> None:
    print(f"{label:66s} {ours:9,.0f} {unit} against {base:9,.0f} {unit}  ratio {ours / base:.2f}", flush=True)


def metrics(seconds: float) -> None:
    registry = CollectorRegistry()
    counter = Counter("b_requests", "r", ["model"], registry=registry).labels("m")
    histogram = Histogram("b_latency", "l", ["model"], buckets=LATENCY_BUCKETS, registry=registry).labels("m")
    loop_registry = CollectorRegistry()
    loop_counter = LoopCounter("b_requests", "r", ["model"], registry=loop_registry).labels("m")
    loop_histogram = LoopHistogram("b_latency", "l", ["model"], buckets=LATENCY_BUCKETS, registry=loop_registry).labels("m")

    def prometheus() -> None:
        counter.inc()
        histogram.observe(0.003)

    def loop_local() -> None:
        loop_counter.inc()
        loop_histogram.observe(0.003)

    show("request metrics: loop-local / prometheus_client", per_call_ns(loop_local, seconds),
         per_call_ns(prometheus, seconds), "ns")


def output_bytes(seconds: float) -> None:
    array = np.array([3], dtype=np.int64)
    wire = np.dtype("<i8")
    show("small output's bytes: copy / buffer view",
         per_call_ns(lambda: codec._raw_chunk(array, "INT64", "output"), seconds),
         per_call_ns(lambda: np.ascontiguousarray(array, dtype=wire).reshape(-1).view(np.uint8).data, seconds),
         "ns")


def binary_request(width: int = 64) -> tuple[bytes, int]:
    raw = (np.arange(width, dtype=np.float32) % 16).reshape(1, width).tobytes()
    header = json.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, width], "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
    }).encode()
    return header + raw, len(header)


def decoding(seconds: float) -> None:
    body, header_length = binary_request()
    codec.decode_infer_request(body, header_length)  # its header is now remembered
    show("decode a binary request: header seen before / parsed",
         per_call_ns(lambda: codec.decode_infer_request(body, header_length), seconds),
         per_call_ns(lambda: codec._decode_request(body, header_length), seconds), "ns")


def encoding(seconds: float) -> None:
    out = np.arange(10, dtype=np.float32).reshape(1, 10)
    requested = [RequestedOutput("logits", {"binary_data": True})]

    def answer() -> tuple[bytes, int | None]:
        response = InferenceResponse("m", "1", [Tensor.from_array("logits", out)])
        return codec.encode_infer_response(response, requested=requested, binary_default=False)

    def encoded_in_full() -> tuple[bytes, int | None]:
        codec._BINARY_HEADS.clear()
        return answer()

    answer()  # its header is now remembered
    show("encode a binary answer: header remembered / encoded in full",
         per_call_ns(answer, seconds), per_call_ns(encoded_in_full, seconds), "ns")


def grpc_decoding(seconds: float) -> None:
    from modelyard.grpc import codec as grpc_codec
    from modelyard.grpc.proto import grpc_service_pb2 as pb

    def message(values: np.ndarray) -> bytes:
        request = pb.ModelInferRequest(model_name="m")
        request.inputs.add(name="input", datatype="FP32", shape=list(values.shape))
        request.raw_input_contents.append(values.tobytes())
        return request.SerializeToString()

    data = message(np.arange(64, dtype=np.float32).reshape(1, 64))
    call = grpc_codec.RawMessage(data)
    grpc_codec.infer_call(call)  # remembered, and the last call decoded

    def parsed() -> object:
        grpc_codec._last = None  # not read off the bytes: parsed, then its prefix looked up
        return grpc_codec.infer_call(call)

    show("decode a gRPC call: read off its bytes / parsed, prefix remembered",
         per_call_ns(lambda: grpc_codec.infer_call(call), seconds), per_call_ns(parsed, seconds), "ns")


def grpc_transport(seconds: float) -> None:
    """The native gRPC transport's share of a unary call: a connection fed h2load's framing (eight
    calls' HEADERS frames, then their DATA frames, in one read) and answering each call from a
    completed future, with the usual call's fast paths (``_new_call``, ``_whole_message``)
    against the same frames taken by the general frame-by-frame path (the fast paths refused)."""
    import hpack

    from modelyard.grpc import http2

    path = "/inference.GRPCInferenceService/ModelInfer"

    class Done:  # a completed call: its callback runs at once
        def add_done_callback(self, callback: Callable[[object], None]) -> None:
            callback(self)

    class Started:
        future = Done()

        def answer(self) -> bytes:
            return b"\x0a\x04tiny" + b"\x00" * 30

        def cancel(self) -> None:
            pass

    started = Started()
    server = http2.Http2GrpcServer({path: (bytes, None)}, max_message_bytes=1 << 20,  # type: ignore[dict-item]
                                   starts={path: lambda metadata, body: started})

    class Sink:  # the transport and loop the connection writes to
        def write(self, data: bytes) -> None:
            pass

        def is_closing(self) -> bool:
            return False

        def call_soon(self, *args: object) -> None:
            pass

    encoder = hpack.Encoder()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "127.0.0.1"),
               ("content-type", "application/grpc"), ("te", "trailers"), ("authorization", "Bearer my_key")]
    blocks = [encoder.encode(headers), encoder.encode(headers)]  # the second: what every later call sends
    message = b"\x00" + (300).to_bytes(4, "big") + b"\x00" * 300
    reads = [
        b"".join(http2._frame(http2._HEADERS, http2._END_HEADERS, sid, blocks[min(sid // 2, 1)]) for sid in ids)
        + b"".join(http2._frame(http2._DATA, http2._END_STREAM, sid, message) for sid in ids)
        for ids in (range(first, first + 16, 2) for first in range(1, 16 * 12_000, 16))
    ]

    async def connection() -> http2._Connection:
        conn = http2._Connection(server)
        conn.transport, conn.loop, conn.preface = Sink(), Sink(), True  # type: ignore[assignment]
        conn.send_window = 1 << 60  # the peer's window updates are not simulated
        return conn

    def per_call(fast: bool) -> float:
        best = float("inf")
        for _ in range(3):
            conn = asyncio.run(connection())
            if not fast:
                conn._new_call = conn._whole_message = lambda *args: False  # type: ignore[method-assign]
            n, started_at = 0, time.perf_counter()
            while time.perf_counter() - started_at < seconds / 3 and n < len(reads):
                conn.data_received(reads[n])
                conn.out.clear()
                n += 1
            best = min(best, (time.perf_counter() - started_at) / (n * 8) * 1e9)
        return best

    show("gRPC transport, a call's frames in and answer out: fast / general",
         per_call(True), per_call(False), "ns")


def answer_path(rounds: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-hot-path-"))
    key = f"my_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"
    os.environ.update(MODELYARD_HOME=str(tmp / "home"), MODELYARD_ADMIN_KEY=key, MODELYARD_CORES="1",
                      MODELYARD_DEMO_MODEL="true", MODELYARD_LOG_LEVEL="warning")
    from modelyard.config import Settings
    from modelyard.core.demo import DEMO_MODEL
    from modelyard.server import prepare_platform, run_on_fast_loop

    platform = prepare_platform(Settings(), announce=lambda _: None)
    body, header_length = binary_request()
    authorization = f"Bearer {key}"

    async def main() -> None:
        principal = await platform.keys.authenticate_async(key)
        plane = platform.dataplane
        info = await plane.resolve(principal, DEMO_MODEL, None)
        options = plane.options(info)
        model = await platform.manager.acquire(plane.source(info, options), options)
        batcher = model.batcher(options)

        async def full() -> None:
            result, _ = await answer_infer(platform, DEMO_MODEL, None, authorization=authorization,
                                           header_length=str(header_length), body=body, where="bench")
            assert result[0] == 200, result

        async def batcher_only() -> None:
            request = codec.decode_infer_request(body, header_length)
            outputs = await batcher.submit({t.name: t.data for t in request.inputs}, ["label"])
            response = InferenceResponse(DEMO_MODEL, "1", [Tensor.from_array("label", outputs["label"])])
            codec.encode_infer_response(response, requested=request.outputs, binary_default=False)

        async def per_request_us(one: Callable[[], Awaitable[None]]) -> float:
            for _ in range(3):  # warm
                await asyncio.gather(*(one() for _ in range(64)))
            started = time.perf_counter()
            for _ in range(rounds):
                await asyncio.gather(*(one() for _ in range(64)))
            return (time.perf_counter() - started) / (rounds * 64) * 1e6

        ours, base = [], []
        for _ in range(2):  # alternate, as the machine drifts
            ours.append(await per_request_us(full))
            base.append(await per_request_us(batcher_only))
        show("tiny model in process, 64 at a time: answer_infer / batcher only", min(ours), min(base), "µs")

    run_on_fast_loop(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="per micro-benchmark side")
    parser.add_argument("--rounds", type=int, default=600, help="rounds of 64 requests per in-process run")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(f"# hot_path: one core, python {sys.version.split()[0]}", flush=True)
    metrics(args.seconds)
    output_bytes(args.seconds)
    decoding(args.seconds)
    encoding(args.seconds)
    grpc_decoding(args.seconds)
    grpc_transport(args.seconds)
    answer_path(args.rounds)


if __name__ == "__main__":
    main()
