"""Triton's statistics extension through a real server: ``tritonclient.http`` and
``tritonclient.grpc`` (both gRPC transports) read per-version figures that match the requests
sent (answered, failed, queued, batched), scoped to the caller's tenant, for a model, a version,
a deployment, or everything served; unknown names get 404 / NOT_FOUND."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from modelyard.cli.main import app
from modelyard.client import Client
from tests.integration._serving import (
    WIDTH, failing_model, grpc_refuses, infer_body, on_grpc_transport, register, scale_model,
)
from tests.support.live import LiveServer

ANSWERED = 48
FAILED = 5


def _infer(client: httpx.Client, model: str, value: float, rows: int = 1) -> int:
    x = np.full((rows, WIDTH), value, np.float32)
    return client.post(f"/v2/models/{model}/infer", json=infer_body(x)).status_code


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("statistics")
    live = LiveServer.build(tmp / "home", builtin_models=False).start()
    register(live, "alpha", scale_model(tmp / "alpha.onnx", 2.0))
    register(live, "broken", failing_model(tmp / "broken.onnx"))
    register(live, "idle", scale_model(tmp / "idle.onnx", 3.0))
    register(live, "gamma", scale_model(tmp / "gamma.onnx", 4.0))  # the later tests' (alpha's figures stay)
    try:
        with live.client() as admin, ThreadPoolExecutor(16) as pool:
            # concurrent requests, so some share a batch; rows 1 or 2 each
            codes = list(pool.map(lambda i: _infer(admin, "alpha", float(i), 1 + i % 2), range(ANSWERED)))
            assert codes == [200] * ANSWERED
            # values >= 10 make the model fail at run time (ONNX Runtime's invalid index: a 400)
            assert [_infer(admin, "broken", 50.0) for _ in range(FAILED)] == [400] * FAILED
            assert _infer(admin, "broken", 1.0) == 200
        yield live
    finally:
        live.stop()


def _one(report: dict[str, Any], name: str, version: str = "1") -> dict[str, Any]:
    found = [m for m in report["model_stats"] if (m["name"], m["version"]) == (name, version)]
    assert len(found) == 1, report
    return found[0]


def _durations(stats: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``inference_stats`` as {name: (count, ns)}, zeros where a field is left out (protobuf JSON)."""
    return {k: (int(v.get("count", 0)), int(v.get("ns", 0))) for k, v in stats.get("inference_stats", {}).items()}


def _check_alpha(alpha: dict[str, Any]) -> None:
    rows = sum(1 + i % 2 for i in range(ANSWERED))
    figures = _durations(alpha)
    assert figures["success"][0] == ANSWERED and figures["success"][1] > 0
    assert figures["fail"][0] == 0
    assert figures["queue"][0] == ANSWERED and figures["compute_infer"][0] == ANSWERED
    assert figures["compute_infer"][1] > 0 and figures["queue"][1] > 0  # every request waits a loop turn at least
    # a request's time includes its queueing and its batch's compute
    assert figures["success"][1] >= figures["queue"][1]
    assert int(alpha["inference_count"]) == rows
    executions = int(alpha["execution_count"])
    assert 1 <= executions <= ANSWERED
    batches = alpha["batch_stats"]
    assert sum(int(b["compute_infer"]["count"]) for b in batches) == executions
    assert sum(int(b["batch_size"]) * int(b["compute_infer"]["count"]) for b in batches) == rows
    assert abs(int(alpha["last_inference"]) / 1000 - time.time()) < 600
    assert int(alpha["memory_usage"][0]["byte_size"]) > 0


def test_tritonclient_http_reads_what_was_served(server: LiveServer) -> None:
    triton = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    headers = server.headers
    everything = triton.get_inference_statistics(headers=headers)
    _check_alpha(_one(everything, "alpha"))
    broken = _durations(_one(everything, "broken"))
    assert broken["fail"][0] == FAILED and broken["fail"][1] > 0
    assert broken["success"][0] == 1
    # a version never called nor loaded is left out of the whole list...
    assert "idle" not in {m["name"] for m in everything["model_stats"]}
    # ...and reported, with zeros, when asked for by name or version
    for idle in (triton.get_inference_statistics("idle", headers=headers),
                 triton.get_inference_statistics("idle", "1", headers=headers)):
        stats = _one(idle, "idle")
        assert int(stats["execution_count"]) == 0 and _durations(stats)["success"] == (0, 0)
        assert stats["memory_usage"] == []
    only = triton.get_inference_statistics("alpha", "1", headers=headers)
    assert [m["name"] for m in only["model_stats"]] == ["alpha"]
    _check_alpha(only["model_stats"][0])

    with pytest.raises(InferenceServerException) as missing:
        triton.get_inference_statistics("nope", headers=headers)
    assert missing.value.status() == "404"
    with pytest.raises(InferenceServerException) as version:
        triton.get_inference_statistics("alpha", "9", headers=headers)
    assert version.value.status() == "404"
    triton.close()


def test_errors_are_the_usual_shape(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as anonymous:
        r = anonymous.get("/v2/models/stats")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    with server.client() as admin:
        r = admin.get("/v2/models/nope/stats")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        for version in ("x", "-1", "9"):
            r = admin.get(f"/v2/models/alpha/versions/{version}/stats")
            assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_found", r.text


def test_statistics_follow_new_requests(server: LiveServer) -> None:
    with server.client() as admin:
        assert _infer(admin, "gamma", 1.0) == 200
        before = _one(admin.get("/v2/models/gamma/stats").json(), "gamma")
        assert _infer(admin, "gamma", 1.0, rows=2) == 200
        assert _infer(admin, "gamma", 50.0, rows=2) == 200
        after = _one(admin.get("/v2/models/gamma/stats").json(), "gamma")
    assert _durations(after)["success"][0] == _durations(before)["success"][0] + 2
    assert after["inference_count"] == before["inference_count"] + 4
    assert after["execution_count"] == before["execution_count"] + 2
    assert after["last_inference"] >= before["last_inference"]


def test_a_deployment_reports_the_versions_it_routes_to(server: LiveServer) -> None:
    with server.client() as admin:
        r = admin.post("/api/v1/deployments", json={"name": "front", "routes": [{"model": "gamma", "version": 1}]})
        assert r.status_code == 201, r.text
        before = _one(admin.get("/v2/models/front/stats").json(), "gamma")
        assert admin.post("/v2/models/front/infer", json=infer_body(np.ones((1, WIDTH), np.float32))).status_code == 200
        report = admin.get("/v2/models/front/stats").json()
    assert [(m["name"], m["version"]) for m in report["model_stats"]] == [("gamma", "1")]
    # the deployment's request is counted on the version that answered it
    assert _durations(report["model_stats"][0])["success"][0] == _durations(before)["success"][0] + 1


def test_a_key_scoped_to_a_deployment_sees_only_what_it_may_call(server: LiveServer) -> None:
    with server.client() as admin:
        r = admin.post("/api/v1/deployments", json={
            "name": "scoped-front", "routes": [{"model": "gamma", "version": 1}],
            "shadow": {"model": "alpha", "version": 1},
        })
        assert r.status_code == 201, r.text
        narrow = admin.post("/api/v1/keys", json={"role": "developer", "scopes": ["scoped-front", "gamma"]}).json()
    with server.client(narrow["secret"]) as client:
        report = client.get("/v2/models/scoped-front/stats").json()
        # the route's model is in the key's scope, the shadow's is not
        assert [(m["name"], m["version"]) for m in report["model_stats"]] == [("gamma", "1")]
        assert client.get("/v2/models/alpha/stats").status_code == 404


def test_a_model_deleted_and_pushed_again_starts_from_zero(server: LiveServer, tmp_path: Path) -> None:
    with server.client() as admin:
        register(server, "again", scale_model(tmp_path / "again.onnx", 2.0))
        assert [_infer(admin, "again", 1.0) for _ in range(3)] == [200] * 3
        assert _durations(_one(admin.get("/v2/models/again/stats").json(), "again"))["success"][0] == 3
        assert admin.delete("/api/v1/models/again").status_code == 204
        register(server, "again", scale_model(tmp_path / "again-2.onnx", 5.0))  # version 1 again
        fresh = _one(admin.get("/v2/models/again/versions/1/stats").json(), "again")
        assert _durations(fresh)["success"] == (0, 0) and fresh["execution_count"] == 0
        assert "again" not in {m["name"] for m in admin.get("/v2/models/stats").json()["model_stats"]}
        assert _infer(admin, "again", 1.0) == 200
        assert _durations(_one(admin.get("/v2/models/again/stats").json(), "again"))["success"][0] == 1


def test_another_tenant_sees_none_of_it(server: LiveServer) -> None:
    with server.client() as admin:
        assert admin.post("/api/v1/tenants", json={"name": "other"}).status_code == 201
        owner = admin.post("/api/v1/keys", json={"role": "owner", "tenant": "other"}).json()["secret"]
    with server.client(owner) as other:
        assert other.get("/v2/models/stats").json() == {"model_stats": []}
        r = other.get("/v2/models/alpha/stats")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("transport", ["native", "grpcio"])
def test_tritonclient_grpc_reads_the_same(server: LiveServer, tmp_path: Path, transport: str) -> None:
    with on_grpc_transport(server, tmp_path, transport) as live:
        if live is not server:  # a server of its own: the same requests as the module's
            with live.client() as admin, ThreadPoolExecutor(16) as pool:
                assert set(pool.map(lambda i: _infer(admin, "alpha", float(i), 1 + i % 2), range(ANSWERED))) == {200}
        triton = triton_grpc.InferenceServerClient(live.grpc_url)
        headers = {"authorization": f"Bearer {live.admin_key}"}
        over_grpc = triton.get_inference_statistics("alpha", "1", headers=headers, as_json=True)
        alpha = _one(over_grpc, "alpha")
        _check_alpha(alpha)
        with live.client() as admin:
            over_rest = _one(admin.get("/v2/models/alpha/versions/1/stats").json(), "alpha")
        assert int(alpha["execution_count"]) == over_rest["execution_count"]
        assert _durations(alpha)["queue"] == tuple(over_rest["inference_stats"]["queue"].values())
        everything = triton.get_inference_statistics(headers=headers, as_json=True)
        assert "alpha" in {m["name"] for m in everything["model_stats"]}
        grpc_refuses(lambda: triton.get_inference_statistics("nope", headers=headers),
                     lambda: triton.get_inference_statistics("alpha"))
        triton.close()


def test_sdk_and_cli(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with Client(url=server.url, api_key=server.admin_key) as client:
        (alpha,) = client.statistics.get("alpha", 1)
        assert (alpha.model, alpha.version, alpha.answered.count, alpha.failed.count) == ("alpha", 1, ANSWERED, 0)
        assert alpha.rows == sum(1 + i % 2 for i in range(ANSWERED)) and alpha.memory_bytes > 0
        assert alpha.mean_batch_size == alpha.rows / alpha.batches
        assert sum(d.count for d in alpha.by_batch_size.values()) == alpha.batches
        assert alpha.answered.mean_ms > 0 and alpha.computed.seconds > 0
        (broken,) = client.statistics.get("broken")
        assert broken.failed.count == FAILED
        assert {"alpha", "broken"} <= {v.model for v in client.statistics.get()}
        with pytest.raises(ValueError):
            client.statistics.get(version=1)
        (before,) = client.statistics.get("gamma", 1)
        with server.client() as admin:
            assert [_infer(admin, "gamma", 2.0, rows=3) for _ in range(3)] == [200] * 3
        (after,) = client.statistics.get("gamma", 1)
        grown = after.since(before)
        assert (grown.answered.count, grown.failed.count, grown.rows) == (3, 0, 9)
        assert grown.batches == 3 and sum(d.count for d in grown.by_batch_size.values()) == 3
        assert grown.answered.seconds > 0 and grown.memory_bytes == after.memory_bytes

    monkeypatch.setenv("MODELYARD_URL", server.url)
    monkeypatch.setenv("MODELYARD_API_KEY", server.admin_key)
    monkeypatch.setenv("COLUMNS", "160")
    runner = CliRunner()
    result = runner.invoke(app, ["models", "stats", "alpha", "-v", "1"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output and max(map(len, result.output.splitlines())) <= 80, result.output
    assert "alpha" in result.output and str(ANSWERED) in result.output
    assert "batches by size" in result.output and "█" in result.output
    result = runner.invoke(app, ["models", "stats", "--json"])
    assert result.exit_code == 0, result.output
    items = {i["model"]: i for i in json.loads(result.output)["items"]}
    assert items["broken"]["failed"]["count"] == FAILED
    result = runner.invoke(app, ["models", "stats", "alpha", "--watch", "0.1", "--count", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.count("the last 0.1 s") == 2 and "req/s" in result.output
    result = runner.invoke(app, ["models", "stats", "--watch", "1", "--json"])
    assert result.exit_code == 2 and "--watch" in result.output, result.output
    result = runner.invoke(app, ["models", "stats", "nope"])
    assert result.exit_code == 4 and "not found" in result.output, result.output
    result = runner.invoke(app, ["models", "stats", "-v", "1"])
    assert result.exit_code == 2 and "NAME" in result.output, result.output
