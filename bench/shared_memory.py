"""Benchmark: tensors passed in system shared memory against the same tensors in the request.

For each tensor size, one ``tritonclient`` caller (HTTP, then gRPC) sends one row of ``y = 2 * x``
(``x: FP32[1, width]``, a model whose cost is moving its tensors) to ``modelyard serve`` on core 0,
the caller on core 1, as fast as it is answered:

* **in the request** (the baseline): binary tensors (HTTP's binary extension, gRPC's raw contents),
  the output in the answer;
* **in shared memory**: the input read from a registered region, the output written to another
  (``docs/inference.md``, "System shared memory").

The two alternate in windows (ABBA, as ``serving_engine.py`` does: this VM's cores change speed
within seconds); every answer of both is checked. Prints requests/s of each and the ratio
shared memory / in the request.

    python bench/shared_memory.py [--seconds 4] [--widths 16384,262144,2097152]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as shm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import doubler  # noqa: E402
from serving_engine import CLIENT_CORE, SERVER_CORE, _free_port, start_modelyard, wait_ready  # noqa: E402

Call = Callable[[], None]


def windows(first: Call, second: Call, seconds: float, window: float) -> tuple[float, float]:
    """Answers/s of ``first`` and ``second``, each called in a loop in alternating windows
    (ABBA), about ``seconds`` of each in all."""
    done, spent = [0, 0], [0.0, 0.0]
    for _ in range(max(1, round(seconds / (2 * window)))):
        for which in (0, 1, 1, 0):
            call = (first, second)[which]
            start = time.perf_counter()
            end = start + window
            while (now := time.perf_counter()) < end:
                call()
                done[which] += 1
            spent[which] += now - start
    return done[0] / spent[0], done[1] / spent[1]


class Sides:
    """One client's two ways of sending ``x``: binary in the request, or through regions."""

    def __init__(self, client: object, module: object, x: np.ndarray, auth: dict[str, str], grpc: bool) -> None:
        self.client, self.auth, self.x = client, auth, x
        nbytes = x.nbytes
        tag = uuid.uuid4().hex[:8]
        self.keys = (f"/modelyard-bench-in-{tag}", f"/modelyard-bench-out-{tag}")
        self.regions = [shm.create_shared_memory_region(f"{n}-{tag}", k, nbytes, create_only=True)
                        for n, k in zip(("in", "out"), self.keys)]
        shm.set_shared_memory_region(self.regions[0], [x])
        for name, key in zip(("in", "out"), self.keys):
            client.register_system_shared_memory(f"bench-{name}", key, nbytes, headers=auth)  # type: ignore[attr-defined]
        self.plain_in = module.InferInput("x", list(x.shape), "FP32")  # type: ignore[attr-defined]
        if grpc:
            self.plain_in.set_data_from_numpy(x)
            self.plain_out = module.InferRequestedOutput("y")  # type: ignore[attr-defined]
        else:
            self.plain_in.set_data_from_numpy(x, binary_data=True)
            self.plain_out = module.InferRequestedOutput("y", binary_data=True)  # type: ignore[attr-defined]
        self.shm_in = module.InferInput("x", list(x.shape), "FP32")  # type: ignore[attr-defined]
        self.shm_in.set_shared_memory("bench-in", nbytes)
        self.shm_out = module.InferRequestedOutput("y")  # type: ignore[attr-defined]
        self.shm_out.set_shared_memory("bench-out", nbytes)
        self.want = x * 2

    def plain(self) -> None:
        # a new dict each call: tritonclient.http writes Inference-Header-Content-Length into it
        result = self.client.infer("big", [self.plain_in], outputs=[self.plain_out], headers=dict(self.auth))  # type: ignore[attr-defined]
        if not np.array_equal(result.as_numpy("y"), self.want):
            raise SystemExit("a binary answer was wrong")

    def shared(self) -> None:
        self.client.infer("big", [self.shm_in], outputs=[self.shm_out], headers=dict(self.auth))  # type: ignore[attr-defined]
        if not np.array_equal(shm.get_contents_as_numpy(self.regions[1], np.float32, list(self.x.shape)), self.want):
            raise SystemExit("an answer in shared memory was wrong")

    def close(self) -> None:
        self.client.unregister_system_shared_memory(headers=self.auth)  # type: ignore[attr-defined]
        for region in self.regions:
            shm.destroy_shared_memory_region(region)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of each side per width and protocol")
    parser.add_argument("--window", type=float, default=0.5, help="seconds per alternating window")
    parser.add_argument("--widths", default="16384,262144,2097152", help="FP32 elements per tensor (64 KiB, 1, 8 MiB)")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    os.sched_setaffinity(0, {CLIENT_CORE})
    os.environ["MODELYARD_SHARED_MEMORY"] = "true"
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-shm-") as tmp:
        folder = Path(tmp)
        key = f"my_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"
        port, grpc_port = _free_port(), _free_port()
        proc = start_modelyard(port, grpc_port, key, folder)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(f"{url}/v2/health/ready", proc)
            print(f"# shared_memory: server on core {SERVER_CORE}, one tritonclient caller on core {CLIENT_CORE}, "
                  f"{args.seconds:g} s of each side per row in {args.window:g} s windows (ABBA)")
            print(f"{'protocol':<8} {'tensor':>8} {'in the request':>16} {'shared memory':>15} {'ratio':>7}")
            for width in widths:
                with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
                    r = http.post("/api/v1/models/big/versions", params={"stage": "production"},
                                  content=doubler(folder / f"doubler-{width}.onnx", width).read_bytes(),
                                  headers={"content-type": "application/octet-stream"})
                    r.raise_for_status()
                x = np.random.default_rng(width).random((1, width), dtype=np.float32)
                clients = (
                    ("HTTP", triton_http, triton_http.InferenceServerClient(f"127.0.0.1:{port}"),
                     {"Authorization": f"Bearer {key}"}, False),
                    ("gRPC", triton_grpc, triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}"),
                     {"authorization": f"Bearer {key}"}, True),
                )
                for label, module, client, auth, grpc in clients:
                    sides = Sides(client, module, x, auth, grpc)
                    try:
                        try:
                            sides.plain(), sides.shared()  # warm: the version loads
                        except Exception as exc:  # tritonclient's str() of ModelYard's error object fails
                            raise SystemExit(f"{label}: the first requests failed: {getattr(exc, 'message', exc)()!r}") from None
                        plain, shared = windows(sides.plain, sides.shared, args.seconds, args.window)
                    finally:
                        sides.close()
                        client.close()
                    size = f"{x.nbytes / 2**20:g} MiB" if x.nbytes >= 2**20 else f"{x.nbytes // 1024} KiB"
                    print(f"{label:<8} {size:>8} {plain:>12,.0f} r/s {shared:>11,.0f} r/s {shared / plain:>7.2f}")
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
