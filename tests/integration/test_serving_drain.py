"""SIGTERM on a real ``modelyard serve`` process: in-flight requests finish, then exit 0."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration._serving import SLOW_WIDTH, infer_body, slow_model
from tests.support.live import ServerProcess


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "home", env={"MODELYARD_BUILTIN_MODELS": "false", "MODELYARD_DRAIN_TIMEOUT_S": "30"}
    ).start()
    try:
        artifact = slow_model(tmp_path / "slow.onnx", 150_000)  # a few hundred ms per batch
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
            r = client.post(
                "/api/v1/models/slow/versions", params={"stage": "production"},
                content=artifact.read_bytes(), headers={"content-type": "application/octet-stream"},
            )
            assert r.status_code == 201, r.text
            warm = client.post("/v2/models/slow/infer", json=infer_body(np.zeros((1, SLOW_WIDTH), np.float32)))
            assert warm.status_code == 200

            def call(i: int) -> int:
                x = np.full((1, SLOW_WIDTH), i / 10, np.float32)
                return client.post("/v2/models/slow/infer", json=infer_body(x)).status_code

            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(call, i) for i in range(8)]
                time.sleep(0.15)  # all eight are in flight now
                assert server.proc is not None
                server.proc.send_signal(signal.SIGTERM)
                time.sleep(0.05)
                try:
                    ready = httpx.get(f"{server.url}/v2/health/ready", timeout=2).status_code
                except httpx.HTTPError:
                    ready = None  # no longer listening: also not ready
                codes = [f.result() for f in futures]
        assert ready != 200
        assert codes == [200] * 8
        assert server.proc.wait(timeout=30) == 0  # type: ignore[union-attr]
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
