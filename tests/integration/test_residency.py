"""Versions in memory through a real server: Triton's repository calls from ``tritonclient.http``
(index, load, unload), ModelYard's ``/api/v1/loaded`` and per-version load and unload, pins that
hold against the memory budget, who may do what, and tenants that do not see each other's."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from modelyard.cli.main import app
from modelyard.client import Client, Residency
from tests.integration._serving import infer_body, metric, on_grpc_transport, register, scale_model
from tests.support.live import LiveServer, wait_until

#: what the server says it implements (system shared memory is off here)
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "model_configuration", "parameters",
              "schedule_policy", "statistics", "trace", "logging"]

#: an ONNX Runtime version of the scale model counts twice its 98-byte file: two fit, not three
BUDGET = 500


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("residency")
    live = LiveServer.build(tmp / "home", builtin_models=False, memory_budget_bytes=BUDGET).start()
    for name in ("alpha", "beta", "gamma"):
        register(live, name, scale_model(tmp / f"{name}.onnx", 2.0))
    register(live, "alpha", scale_model(tmp / "alpha-2.onnx", 3.0))  # alpha 2 is the served one
    try:
        yield live
    finally:
        live.stop()


def _key(server: LiveServer, role: str, **body: object) -> str:
    with server.client() as admin:
        r = admin.post("/api/v1/keys", json={"role": role, **body})
        assert r.status_code == 201, r.text
        return str(r.json()["secret"])


def _loaded(client: httpx.Client) -> dict[tuple[str, int], dict]:
    r = client.get("/api/v1/loaded")
    assert r.status_code == 200, r.text
    return {(i["model"], i["version"]): i for i in r.json()["items"]}


def _unload_all(client: httpx.Client) -> None:
    for model, version in _loaded(client):
        assert client.post(f"/api/v1/models/{model}/versions/{version}/unload").status_code == 200


def test_tritonclient_indexes_loads_and_unloads(server: LiveServer) -> None:
    with server.client() as admin:
        _unload_all(admin)
    triton = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    headers = server.headers
    assert triton.get_server_metadata(headers=headers)["extensions"] == EXTENSIONS
    index = triton.get_model_repository_index(headers=headers)
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        ("alpha", "1", "UNAVAILABLE"), ("alpha", "2", "UNAVAILABLE"),
        ("beta", "1", "UNAVAILABLE"), ("gamma", "1", "UNAVAILABLE"),
    }
    assert all(m["reason"] == "unloaded" for m in index)

    triton.load_model("alpha", headers=headers)
    index = triton.get_model_repository_index(headers=headers)
    assert [(m["name"], m["version"]) for m in index if m["state"] == "READY"] == [("alpha", "2")]
    assert triton.is_model_ready("alpha", headers=headers)

    triton.unload_model("alpha", headers=headers)
    assert all(m["state"] == "UNAVAILABLE" for m in triton.get_model_repository_index(headers=headers))
    triton.close()


def test_repository_calls_refuse_what_they_cannot_do(server: LiveServer) -> None:
    with server.client() as admin:
        r = admin.post("/v2/repository/models/alpha/load", json={"parameters": {"config": '{"sequence_batching": {}}'}})
        assert r.status_code == 400 and r.json()["error"]["details"] == {"field": "config.sequence_batching"}, r.text
        r = admin.post("/v2/repository/models/alpha/load", json={"parameters": {"file:1/model.onnx": "AA=="}})
        assert r.status_code == 400 and "/api/v1/models" in r.json()["error"]["message"]
        r = admin.post("/v2/repository/models/nope/load")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = admin.post("/v2/repository/index", content=b"{not json")
        assert r.status_code == 400
        r = admin.post("/v2/repository/index", json={"ready": "yes"})
        assert r.status_code == 400
        r = admin.post("/v2/repository/index", json={"ready": True})
        assert r.status_code == 200 and all(m["state"] == "READY" for m in r.json())


def test_loaded_shows_memory_and_a_pin_holds_against_the_budget(server: LiveServer) -> None:
    with server.client() as admin:
        _unload_all(admin)
        r = admin.post("/api/v1/models/beta/versions/1/load", json={"pin": True})
        assert r.status_code == 200, r.text
        assert r.json() == {"model": "beta", "version": 1, "loaded": True, "pinned": True}
        loaded = admin.get("/api/v1/loaded").json()
        assert loaded["budget_bytes"] == BUDGET and loaded["in_use_bytes"] > 0
        text = admin.get("/metrics").text  # what the memory alert compares (docs/monitoring.md)
        assert metric(text, "modelyard_memory_budget_bytes") == BUDGET
        assert metric(text, "modelyard_model_memory_bytes") == loaded["in_use_bytes"]
        (beta,) = loaded["items"]
        assert (beta["model"], beta["version"], beta["pinned"], beta["in_flight"]) == ("beta", 1, True, 0)
        assert beta["memory_bytes"] > 0 and beta["isolation"] == "thread" and beta["load_seconds"] >= 0

        # one more version fits beside it; the next one evicts that one, never the pinned version
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
        assert admin.post("/v2/models/gamma/infer", json=body).status_code == 200
        assert set(_loaded(admin)) == {("beta", 1), ("gamma", 1)}
        assert admin.post("/v2/models/alpha/versions/1/infer", json=body).status_code == 200
        assert set(_loaded(admin)) == {("beta", 1), ("alpha", 1)}

        r = admin.post("/api/v1/models/beta/versions/1/unload")
        assert r.json() == {"model": "beta", "version": 1, "loaded": False, "pinned": False}
        assert admin.post("/v2/models/beta/infer", json=body).status_code == 200  # loads again on demand
        assert _loaded(admin)[("beta", 1)]["pinned"] is False


def test_who_may_load_pin_and_unload(server: LiveServer) -> None:
    developer = _key(server, "developer")
    viewer = _key(server, "viewer")
    with server.client() as admin, server.client(developer) as dev, server.client(viewer) as view:
        _unload_all(admin)
        assert dev.post("/api/v1/models/gamma/versions/1/load").json()["pinned"] is False
        r = dev.post("/api/v1/models/gamma/versions/1/load", json={"pin": True})
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
        assert view.post("/api/v1/models/gamma/versions/1/load").status_code == 403
        assert view.post("/v2/repository/models/gamma/unload").status_code == 403
        assert set(_loaded(view)) == {("gamma", 1)}  # a viewer may look

        assert admin.post("/api/v1/models/gamma/versions/1/load", json={"pin": True}).status_code == 200
        r = dev.post("/api/v1/models/gamma/versions/1/unload")
        assert r.status_code == 409 and "administrator" in r.json()["error"]["message"]
        assert _loaded(admin)[("gamma", 1)]["pinned"] is True  # the refused unload changed nothing
        assert admin.post("/api/v1/models/gamma/versions/1/unload").json()["loaded"] is False

        assert dev.post("/api/v1/models/gamma/versions/9/load").status_code == 404
        assert dev.post("/api/v1/models/gamma/versions/one/load").status_code == 422
        r = dev.post("/api/v1/models/gamma/versions/1/load", json={"pin": True, "extra": 1})
        assert r.status_code == 422


def test_tenants_and_scoped_keys_see_only_their_own(server: LiveServer, tmp_path: Path) -> None:
    with server.client() as admin:
        _unload_all(admin)
        assert admin.post("/api/v1/models/alpha/versions/2/load").status_code == 200
        assert admin.post("/api/v1/tenants", json={"name": "other"}).status_code == 201
    other = _key(server, "owner", tenant="other")
    scoped = _key(server, "developer", scopes=["beta"])
    with server.client(other) as them, server.client(scoped) as narrow:
        assert _loaded(them) == {} and them.post("/v2/repository/index").json() == []
        assert them.post("/api/v1/models/alpha/versions/2/unload").status_code == 404
        assert them.post("/v2/repository/models/alpha/unload").status_code == 404
        assert {m["name"] for m in narrow.post("/v2/repository/index").json()} == {"beta"}
        assert _loaded(narrow) == {}
        assert narrow.post("/api/v1/models/alpha/versions/2/unload").status_code == 404
    with server.client() as admin:
        assert ("alpha", 2) in _loaded(admin)  # still loaded: nobody outside could touch it


def test_cli_and_sdk(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with Client(url=server.url, api_key=server.admin_key) as client:
        for v in client.memory.loaded().versions:
            client.memory.unload(v.model, v.version)
        assert client.memory.load("alpha") == Residency("alpha", 2, loaded=True, pinned=False)  # the served one
        report = client.memory.loaded()
        assert report.budget_bytes == BUDGET and [(v.model, v.version) for v in report.versions] == [("alpha", 2)]

    monkeypatch.setenv("MODELYARD_URL", server.url)
    monkeypatch.setenv("MODELYARD_API_KEY", server.admin_key)
    monkeypatch.setenv("COLUMNS", "160")
    runner = CliRunner()
    result = runner.invoke(app, ["models", "load", "beta", "-v", "1", "--pin"])
    assert result.exit_code == 0 and "beta version 1 is loaded and pinned" in result.output, result.output
    result = runner.invoke(app, ["models", "loaded"])
    assert result.exit_code == 0, result.output
    assert "memory" in result.output and "of 500 B" in result.output
    assert "alpha" in result.output and "beta" in result.output and "yes" in result.output
    result = runner.invoke(app, ["models", "unload", "beta", "-v", "1"])
    assert result.exit_code == 0 and "unloaded" in result.output
    result = runner.invoke(app, ["models", "loaded", "--json"])
    assert [(i["model"], i["version"]) for i in json.loads(result.output)["items"]] == [("alpha", 2)]
    result = runner.invoke(app, ["models", "unload", "nope"])
    assert result.exit_code == 4, result.output


@pytest.mark.parametrize("transport", ["native", "grpcio"])
def test_tritonclient_grpc_indexes_loads_and_unloads(server: LiveServer, tmp_path: Path, transport: str) -> None:
    with on_grpc_transport(server, tmp_path, transport) as live:
        with live.client() as admin:
            _unload_all(admin)
        triton = triton_grpc.InferenceServerClient(live.grpc_url)
        headers = {"authorization": f"Bearer {live.admin_key}"}  # gRPC metadata keys are lowercase
        assert triton.get_server_metadata(headers=headers, as_json=True)["extensions"] == EXTENSIONS
        triton.load_model("alpha", headers=headers)
        index = triton.get_model_repository_index(headers=headers, as_json=True)["models"]
        served = "2" if transport == "native" else "1"
        assert {(m["name"], m["version"]) for m in index if m.get("state") == "READY"} == {("alpha", served)}
        triton.unload_model("alpha", headers=headers)
        assert all(m.get("state") == "UNAVAILABLE" for m in triton.get_model_repository_index(headers=headers, as_json=True)["models"])

        with pytest.raises(InferenceServerException) as refused:
            triton.load_model("alpha", headers=headers, files={"file:1/model.onnx": b"\0"})
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "registry" in refused.value.message()
        with pytest.raises(InferenceServerException) as missing:
            triton.load_model("nope", headers=headers)
        assert missing.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException) as nokey:
            triton.get_model_repository_index()
        assert nokey.value.status() == "StatusCode.UNAUTHENTICATED"
        triton.close()


def test_a_pin_whose_load_fails_is_not_left_behind(server: LiveServer, tmp_path: Path) -> None:
    assert server.platform is not None
    info = register(server, "broken", scale_model(tmp_path / "broken.onnx", 5.0))
    blob = server.platform.artifacts.verified_path(info.sha256)
    blob.write_bytes(b"not onnx any more")  # the load will fail its checksum
    with server.client() as admin:
        r = admin.post("/api/v1/models/broken/versions/1/load", json={"pin": True})
        assert r.status_code == 500 and r.json()["error"]["code"] == "corrupt_artifact", r.text
        assert ("broken", 1) not in _loaded(admin)
    tenant = server.platform.keys.ensure_default_tenant()
    assert server.platform.registry.get_version(tenant, "broken", 1).pinned is False
    assert not server.platform.manager.is_pinned(info.key)


def test_an_idle_version_is_unloaded_and_its_next_request_loads_it(server: LiveServer, tmp_path: Path) -> None:
    register(server, "dormant", scale_model(tmp_path / "dormant.onnx", 7.0))
    body = infer_body(np.ones((1, 4), np.float32))
    with server.client() as admin:
        _unload_all(admin)

        def idle_after(seconds: float) -> None:
            r = admin.patch("/api/v1/models/dormant", json={"tags": {"serving": {"idle_unload_s": seconds}}})
            assert r.status_code == 200, r.text
            assert admin.post("/v2/models/dormant/infer", json=body).status_code == 200  # its latest request's
        # shown by the API, the SDK and the CLI (long enough for a cold CLI to find it still loaded)
        idle_after(30)
        assert _loaded(admin)[("dormant", 1)]["idle_unload_s"] == 30
        with Client(url=server.url, api_key=server.admin_key) as sdk:
            (shown,) = [v for v in sdk.memory.loaded().versions if v.model == "dormant"]
            assert shown.idle_unload_s == 30
        result = CliRunner().invoke(app, ["models", "loaded"], env={
            "MODELYARD_URL": server.url, "MODELYARD_API_KEY": server.admin_key, "COLUMNS": "160"})
        assert result.exit_code == 0 and " s of 30" in result.output, result.output
        idle_after(1.0)

        def idle_unloads() -> float:
            return metric(admin.get("/metrics").text, "modelyard_model_unloads_total", model="dormant", reason="idle")
        # requests keep it loaded past its idle time (a request every 0.1 s: none unloads it, which
        # the counter tells even if a slow moment let one go and the next request loaded it again)
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            assert admin.post("/v2/models/dormant/infer", json=body).status_code == 200
            time.sleep(0.1)
        assert idle_unloads() == 0

        wait_until(lambda: ("dormant", 1) not in _loaded(admin))
        index = {(m["name"], m["version"]): m for m in admin.post("/v2/repository/index").json()}
        assert index[("dormant", "1")]["state"] == "UNAVAILABLE"
        assert idle_unloads() == 1

        r = admin.post("/v2/models/dormant/infer", json=body)  # loads it again
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [7.0] * 4
        assert ("dormant", 1) in _loaded(admin)
        r = admin.post("/api/v1/models/dormant/versions/1/load", json={"pin": True})
        assert r.status_code == 200, r.text
        time.sleep(1.5)  # past its idle time
        assert _loaded(admin)[("dormant", 1)]["pinned"], "a pinned version was unloaded as idle"
        assert admin.post("/api/v1/models/dormant/versions/1/unload").status_code == 200
