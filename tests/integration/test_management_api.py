"""The management API (``/api/v1/models``) against a real server with httpx: the registry round
trip, pagination, stages, deletes that clean up, and every error in its one shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelyard.api.app import create_app
from tests.integration.onnx_models import add_model, checker_failing_model
from tests.support.live import LiveServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    srv = LiveServer.build(tmp_path / "home", grpc_enabled=False, max_upload_bytes=64 * 1024).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def _error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def _artifact_files(server: LiveServer) -> list[Path]:
    root = server.settings.resolved_artifact_root
    return [p for p in root.rglob("*") if p.is_file()]


def _key(server: LiveServer, role: str) -> str:
    assert server.platform is not None
    keys = server.platform.keys
    _info, secret = keys.create(tenant_id=keys.ensure_default_tenant(), role=role, name=f"{role}-key")
    return secret


def test_registry_round_trip(client: httpx.Client) -> None:
    r = client.post("/api/v1/models/adder/versions", content=add_model(1.0),
                    params={"description": "v1", "tags": json.dumps({"team": "ml"})})
    assert r.status_code == 201, r.text
    v1 = r.json()
    assert v1["model"] == "adder" and v1["version"] == 1 and v1["format"] == "onnx" and v1["stage"] == "none"
    assert v1["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert v1["tags"] == {"team": "ml"} and v1["description"] == "v1" and len(v1["sha256"]) == 64
    v2 = client.post("/api/v1/models/adder/versions?stage=production", content=add_model(2.0)).json()
    assert v2["version"] == 2 and v2["stage"] == "production"

    model = client.get("/api/v1/models/adder").json()
    assert model["latest_version"] == 2 and model["production_version"] == 2
    patched = client.patch("/api/v1/models/adder", json={"description": "adds", "tags": {"a": 1}}).json()
    assert patched["description"] == "adds" and patched["tags"] == {"a": 1}

    versions = client.get("/api/v1/models/adder/versions").json()
    assert versions["total"] == 2 and [v["version"] for v in versions["items"]] == [2, 1]
    assert client.get("/api/v1/models/adder/versions/1").json()["sha256"] == v1["sha256"]
    pv = client.patch("/api/v1/models/adder/versions/1", json={"stage": "production", "description": "again"}).json()
    assert pv["stage"] == "production" and pv["description"] == "again" and pv["sha256"] == v1["sha256"]
    assert client.get("/api/v1/models/adder/versions/2").json()["stage"] == "archived"
    infer = client.post("/v2/models/adder/infer",
                        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0, 0, 0]}]}).json()
    assert infer["model_version"] == "1" and infer["outputs"][0]["data"] == [1.0, 1.0, 1.0]


def test_list_is_paginated(client: httpx.Client) -> None:
    for i in range(5):
        assert client.post(f"/api/v1/models/m{i}/versions", content=add_model(float(i))).status_code == 201
    page = client.get("/api/v1/models", params={"page": 2, "page_size": 2}).json()
    assert page["total"] == 5 and page["page"] == 2 and page["page_size"] == 2
    assert [m["name"] for m in page["items"]] == ["m2", "m3"]
    assert client.get("/api/v1/models", params={"page": 3, "page_size": 2}).json()["items"][0]["name"] == "m4"
    assert client.get("/api/v1/models", params={"page": 9}).json()["items"] == []
    _error(client.get("/api/v1/models", params={"page": 0}), 422, "validation_failed")
    _error(client.get("/api/v1/models", params={"page_size": 10_000}), 422)


def test_delete_unloads_and_removes_files(server: LiveServer, client: httpx.Client) -> None:
    v = client.post("/api/v1/models/gone/versions", content=add_model(3.0)).json()
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    assert client.post("/v2/models/gone/infer", json=body).status_code == 200
    assert server.platform is not None
    info = server.platform.registry.get_version(server.platform.keys.ensure_default_tenant(), "gone", 1)
    assert server.platform.manager.is_loaded(info.key)
    assert client.delete("/api/v1/models/gone/versions/1").status_code == 204
    assert not server.platform.manager.is_loaded(info.key)
    assert not server.platform.artifacts.exists(v["sha256"])
    _error(client.post("/v2/models/gone/infer", json=body), 404)
    client.post("/api/v1/models/gone/versions", content=add_model(4.0))
    assert client.delete("/api/v1/models/gone").status_code == 204
    _error(client.get("/api/v1/models/gone"), 404, "model_not_found")
    assert _artifact_files(server) == []


@pytest.mark.parametrize(
    "content",
    [b"this is not an onnx file", add_model()[: len(add_model()) // 2], checker_failing_model()],
    ids=["not-onnx", "corrupt", "checker"],
)
def test_bad_artifacts_are_400_and_leave_nothing(server: LiveServer, client: httpx.Client, content: bytes) -> None:
    err = _error(client.post("/api/v1/models/bad/versions", content=content), 400, "invalid_artifact")
    assert err["message"]
    assert _artifact_files(server) == []
    _error(client.get("/api/v1/models/bad"), 404, "model_not_found")


def test_empty_upload_and_bad_parameters(server: LiveServer, client: httpx.Client) -> None:
    _error(client.post("/api/v1/models/e/versions", content=b""), 422, "validation_failed")
    _error(client.post("/api/v1/models/e/versions", content=add_model(), params={"tags": "{oops"}), 422)
    _error(client.post("/api/v1/models/e/versions", content=add_model(), params={"stage": "gold"}), 422)
    _error(client.post("/api/v1/models/e/versions", content=add_model(), params={"format": "tarball"}), 400)
    _error(client.post("/api/v1/models/bad..name/versions", content=add_model()), 422)
    assert _artifact_files(server) == []


def test_upload_over_the_limit_is_413_and_leaves_nothing(server: LiveServer, client: httpx.Client) -> None:
    big = b"\0" * (200 * 1024)
    _error(client.post("/api/v1/models/big/versions", content=big), 413, "payload_too_large")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the server must count
        for _ in range(50):
            yield b"\1" * 8192

    _error(client.post("/api/v1/models/big/versions", content=chunked()), 413, "payload_too_large")
    assert _artifact_files(server) == []
    _error(client.get("/api/v1/models/big"), 404)


def test_upload_reads_no_further_than_the_limit(server: LiveServer) -> None:
    """Drive the ASGI app directly to count how much of a chunked body the server pulls."""
    assert server.platform is not None
    app = create_app(server.settings, platform=server.platform)
    limit, chunk = server.settings.max_upload_bytes, 4096
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        pulled += chunk
        return {"type": "http.request", "body": b"\1" * chunk, "more_body": pulled < 100 * limit}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/api/v1/models/big/versions", "raw_path": b"/api/v1/models/big/versions",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        "headers": [(b"authorization", f"Bearer {server.admin_key}".encode()),
                    (b"content-type", b"application/octet-stream")],
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert pulled <= limit + chunk
    assert _artifact_files(server) == []


def test_auth_errors(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as anon:
        _error(anon.get("/api/v1/models"), 401, "unauthenticated")
        _error(anon.get("/api/v1/models", headers={"Authorization": "Bearer my_nope_nope"}), 401, "unauthenticated")
        _error(anon.post("/api/v1/models/x/versions", content=add_model()), 401)
        _error(anon.delete("/api/v1/models/x"), 401)
    viewer = _key(server, "viewer")
    with server.client(viewer) as c:
        assert c.get("/api/v1/models").status_code == 200
        _error(c.post("/api/v1/models/x/versions", content=add_model()), 403, "permission_denied")
    assert _artifact_files(server) == []


def test_schema_errors_and_unknown_routes(client: httpx.Client) -> None:
    client.post("/api/v1/models/s/versions", content=add_model())
    _error(client.patch("/api/v1/models/s", json={"tenant_id": "other"}), 422, "validation_failed")
    _error(client.patch("/api/v1/models/s", content=b"{bad json", headers={"Content-Type": "application/json"}), 400)
    _error(client.patch("/api/v1/models/s/versions/1", json={"stage": "shipped"}), 422)
    _error(client.get("/api/v1/models/s/versions/abc"), 422)
    _error(client.get("/api/v1/models/s/versions/7"), 404, "version_not_found")
    _error(client.delete("/api/v1/models/nope"), 404, "model_not_found")
    _error(client.get("/api/v1/nothing-here"), 404, "not_found")
    _error(client.put("/api/v1/models/s"), 405)



def test_curl_defaults_work_and_other_types_get_415(client: httpx.Client) -> None:
    """curl's -d and --data-binary send application/x-www-form-urlencoded: the README's commands
    must work as written, for a JSON body and for an upload read as bytes."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = client.post("/api/v1/models/c/versions", params={"stage": "production"}, content=add_model(), headers=form)
    assert r.status_code == 201, r.text
    r = client.patch("/api/v1/models/c", content=b'{"description": "from curl"}', headers=form)
    assert r.status_code == 200 and r.json()["description"] == "from curl"
    r = client.post("/api/v1/deployments", content=b'{"name": "web", "routes": [{"model": "c", "version": 1}]}',
                    headers=form)
    assert r.status_code == 201, r.text
    r = client.post("/v2/models/web/infer", headers=form,
                    content=b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}')
    assert r.status_code == 200, r.text

    error = _error(client.patch("/api/v1/models/c", content=b'<description>x</description>',
                                headers={"Content-Type": "application/xml"}), 415, "unsupported_media_type")
    assert "application/json" in error["message"]
    error = _error(client.patch("/api/v1/models/c", content=b"description=x", headers=form), 400, "bad_request")
    assert error["message"].startswith("malformed JSON in the request body")
    assert client.get("/api/v1/models/c").json()["description"] == "from curl"  # neither changed it

def test_openapi_documents_the_routes(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    for path in ("/api/v1/models", "/api/v1/models/{name}/versions", "/v2/models/{model_name}/infer"):
        assert path in doc["paths"]


def test_concurrent_pushes_over_http_get_distinct_versions(client: httpx.Client) -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: client.post("/api/v1/models/par/versions", content=add_model(float(i))), range(6)))
    assert all(r.status_code == 201 for r in results), [r.text for r in results]
    assert sorted(r.json()["version"] for r in results) == [1, 2, 3, 4, 5, 6]
    assert np.unique([r.json()["sha256"] for r in results]).size == 6
