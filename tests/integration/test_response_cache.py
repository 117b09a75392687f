"""The response cache through a real server: a version (or a deployment) with
``"response_cache": true`` answers a repeated request from memory (no batch runs: Triton's
statistics and the Prometheus counters say so), over REST and gRPC, on the fast and the awaited
paths; different inputs or outputs miss; errors are never remembered; entries are a version's
(another tenant, a removed version), bounded in bytes and least recently used first out; the
setting is checked when written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from typer.testing import CliRunner

from modelyard.cli.main import app
from modelyard.client import Client
from tests.integration._serving import failing_model, infer_body, metric, output, register, scale_model
from tests.support.live import LiveServer

CACHED = {"serving": {"response_cache": True}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("cache")
    live = LiveServer.build(home / "home", builtin_models=False).start()
    try:
        register(live, "cached", scale_model(home / "cached.onnx", 2.0), config=CACHED)
        register(live, "plain", scale_model(home / "plain.onnx", 2.0))
        register(live, "broken", failing_model(home / "broken.onnx"), config=CACHED)
        yield live
    finally:
        live.stop()


def _stats(client: Any, model: str) -> dict[str, Any]:
    (stat,) = client.get(f"/v2/models/{model}/stats").json()["model_stats"]
    return stat


def _figures(client: Any, model: str) -> tuple[int, int, int, int]:
    """(successes, executions, cache hits, cache misses) of ``model``'s version 1."""
    stat = _stats(client, model)
    inference = stat["inference_stats"]
    return (inference["success"]["count"], stat["execution_count"], inference["cache_hit"]["count"],
            inference["cache_miss"]["count"])


def _infer(client: Any, model: str, x: np.ndarray, **extra: Any) -> Any:
    r = client.post(f"/v2/models/{model}/infer", json={**infer_body(x), **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_repeated_request_is_answered_from_memory(server: LiveServer) -> None:
    x = np.array([[1, 2, 3, 4]], np.float32)
    with server.client() as client:
        first = _infer(client, "cached", x)
        assert _figures(client, "cached") == (1, 1, 0, 1)
        for _ in range(3):  # the version is loaded now: these take the protocol's fast path
            again = _infer(client, "cached", x)
            np.testing.assert_array_equal(output(again), output(first))
        assert _figures(client, "cached") == (4, 1, 3, 1)  # no batch ran for them
        assert _stats(client, "cached")["inference_stats"]["cache_hit"]["ns"] > 0

        np.testing.assert_array_equal(output(_infer(client, "cached", x + 1)), (x + 1) * 2)  # other bytes
        _infer(client, "cached", x, outputs=[{"name": "y"}])  # the same inputs, outputs named: another answer
        _infer(client, "cached", x.astype(np.float32).reshape(1, 4), id="a-new-id")  # the id is not the request
        assert _figures(client, "cached") == (7, 3, 4, 3)

        text = client.get("/metrics").text
        assert metric(text, "modelyard_response_cache_lookups_total", model="cached", result="hit") == 4
        assert metric(text, "modelyard_response_cache_lookups_total", model="cached", result="miss") == 3
        assert metric(text, "modelyard_response_cache_entries") >= 3
        assert client.get("/v2/models/cached/config").json()["response_cache"] == {"enable": True}


def test_the_sdk_and_the_cli_show_the_hits(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.array([[9, 9, 9, 9]], np.float32)
    with Client(url=server.url, api_key=server.admin_key) as sdk, server.client() as client:
        (before,) = sdk.statistics.get("cached", 1)
        for _ in range(3):
            _infer(client, "cached", x)
        (after,) = sdk.statistics.get("cached", 1)
        grown = after.since(before)
        assert (grown.cache_hits.count, grown.cache_misses.count, grown.batches) == (2, 1, 1)
        assert grown.cache_misses.seconds > 0
    monkeypatch.setenv("MODELYARD_URL", server.url)
    monkeypatch.setenv("MODELYARD_API_KEY", server.admin_key)
    result = CliRunner().invoke(app, ["models", "stats", "cached"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "answered" in line)
    row = next(line for line in result.output.splitlines() if line.split() and line.split()[0] == "cached")
    cells = dict(zip(header.split(), row.split()))
    assert cells["cached"] == str(after.cache_hits.count) and cells["answered"] == str(after.answered.count), result.output


def test_a_hit_needs_no_loaded_version(server: LiveServer) -> None:
    """Unloaded, the version's requests take the awaited path; a remembered one is answered there
    too, without loading the version again."""
    x = np.array([[4, 3, 2, 1]], np.float32)
    with server.client() as client:
        first = _infer(client, "cached", x)
        assert client.post("/api/v1/models/cached/versions/1/unload").status_code == 200
        assert _stats(client, "cached")["memory_usage"] == []
        before = _figures(client, "cached")
        np.testing.assert_array_equal(output(_infer(client, "cached", x)), output(first))
        after = _figures(client, "cached")
        assert (after[1] - before[1], after[2] - before[2]) == (0, 1)  # no batch: a hit
        assert _stats(client, "cached")["memory_usage"] == []  # and still not loaded


def test_grpc_calls_are_answered_from_memory_too(server: LiveServer) -> None:
    triton = triton_grpc.InferenceServerClient(server.grpc_url)
    headers = {"authorization": f"Bearer {server.admin_key}"}
    x = np.array([[5, 6, 7, 8]], np.float32)
    with server.client() as client:
        before = _figures(client, "cached")
        for _ in range(3):
            inp = triton_grpc.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            np.testing.assert_array_equal(triton.infer("cached", [inp], headers=headers).as_numpy("y"), x * 2)
        after = _figures(client, "cached")
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2], after[3] - before[3]) == (3, 1, 2, 1)
    triton.close()


def test_versions_without_it_compute_every_request(server: LiveServer) -> None:
    x = np.array([[1, 1, 1, 1]], np.float32)
    with server.client() as client:
        for _ in range(3):
            _infer(client, "plain", x)
        assert _figures(client, "plain") == (3, 3, 0, 0)
        assert client.get("/v2/models/plain/config").json()["response_cache"] == {"enable": False}


def test_errors_are_never_remembered(server: LiveServer) -> None:
    x = np.full((1, 4), 50, np.float32)  # out of the failing model's table: fails when it runs
    with server.client() as client:
        for _ in range(2):
            r = client.post("/v2/models/broken/infer", json=infer_body(x))
            assert r.status_code >= 400, r.text
        stat = _stats(client, "broken")
        assert stat["inference_stats"]["fail"]["count"] == 2
        assert stat["inference_stats"]["cache_hit"]["count"] == 0


def test_a_deployment_turns_it_on_for_its_routes(server: LiveServer) -> None:
    x = np.array([[2, 2, 2, 2]], np.float32)
    with server.client() as client:
        r = client.post("/api/v1/deployments", json={
            "name": "front", "routes": [{"model": "plain", "version": 1}], "serving": {"response_cache": True}})
        assert r.status_code == 201, r.text
        before = _figures(client, "plain")
        for _ in range(3):
            np.testing.assert_array_equal(output(_infer(client, "front", x)), x * 2)
        after = _figures(client, "plain")
        assert (after[1] - before[1], after[2] - before[2]) == (1, 2)
        r = client.post("/api/v1/deployments", json={
            "name": "bad", "routes": [{"model": "plain", "version": 1}], "serving": {"response_cache": "yes"}})
        assert r.status_code == 422, r.text


def test_another_tenant_never_gets_these_answers(server: LiveServer, tmp_path: Path) -> None:
    x = np.array([[3, 3, 3, 3]], np.float32)
    with server.client() as admin:
        _infer(admin, "cached", x)
        assert admin.post("/api/v1/tenants", json={"name": "cache-other"}).status_code == 201
        owner = admin.post("/api/v1/keys", json={"role": "owner", "tenant": "cache-other"}).json()["secret"]
    register(server, "cached", scale_model(tmp_path / "theirs.onnx", 3.0), config=CACHED, tenant="cache-other")
    with server.client(owner) as other:  # the same name and inputs: its own model answers
        np.testing.assert_array_equal(output(_infer(other, "cached", x)), x * 3)
        assert _figures(other, "cached") == (1, 1, 0, 1)


def test_the_setting_is_checked_when_written(server: LiveServer) -> None:
    with server.client() as client:
        r = client.patch("/api/v1/models/plain/versions/1", json={"tags": {"serving": {"response_cache": 1}}})
        assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "response_cache", r.text


def test_the_cache_is_bounded_least_recently_used_first_out(tmp_path: Path) -> None:
    live = LiveServer.build(tmp_path / "home", builtin_models=False, response_cache_bytes=2000).start()
    try:
        register(live, "cached", scale_model(tmp_path / "cached.onnx", 2.0), config=CACHED)
        with live.client() as client:
            rows = [np.full((1, 4), i, np.float32) for i in range(12)]
            for x in rows:
                _infer(client, "cached", x)
            text = client.get("/metrics").text
            assert 0 < metric(text, "modelyard_response_cache_bytes") <= 2000
            held = int(metric(text, "modelyard_response_cache_entries"))
            assert 1 <= held < len(rows)
            executions = _figures(client, "cached")[1]
            _infer(client, "cached", rows[-1])  # among the newest: still held
            assert _figures(client, "cached")[1] == executions
            _infer(client, "cached", rows[0])  # the oldest: evicted, computed again
            assert _figures(client, "cached")[1] == executions + 1

            assert client.delete("/api/v1/models/cached/versions/1").status_code in (200, 204)
            text = client.get("/metrics").text
            assert metric(text, "modelyard_response_cache_entries") == 0  # a removed version's answers go
            assert metric(text, "modelyard_response_cache_bytes") == 0
    finally:
        live.stop()


def test_no_bytes_means_no_cache(tmp_path: Path) -> None:
    live = LiveServer.build(tmp_path / "home", builtin_models=False, response_cache_bytes=0).start()
    try:
        register(live, "cached", scale_model(tmp_path / "cached.onnx", 2.0), config=CACHED)
        with live.client() as client:
            for _ in range(3):
                _infer(client, "cached", np.ones((1, 4), np.float32))
            assert _figures(client, "cached") == (3, 3, 0, 0)
    finally:
        live.stop()
