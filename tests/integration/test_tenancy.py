"""Two tenants side by side through a real server: isolation, keys, rate limits and quotas hit
and recovered, usage that matches the requests sent, audit entries, encryption at rest and
master-key rotation. gRPC and the OpenAI API are checked when the server has them."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.store.encryption import MasterKeyMismatch
from tests.integration.test_sdk import tiny_onnx
from tests.support.live import LiveServer

KEY_1 = base64.b64encode(b"1" * 32).decode()
KEY_2 = base64.b64encode(b"2" * 32).decode()
PRICES = {"request": 0.5, "input_token": 0.0, "output_token": 0.0, "compute_second": 0.0}


def _infer_body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def _server(home: Path, key: str) -> LiveServer:
    return LiveServer.build(home, master_key=key, prices=PRICES, usage_flush_s=0.1).start()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    srv = _server(tmp_path / "home", KEY_1)
    try:
        yield srv
    finally:
        srv.stop()


def _make_tenant(admin: httpx.Client, name: str, tmp: Path, add: float, **quotas: int) -> dict[str, Any]:
    r = admin.post("/api/v1/tenants", json={"name": name, "quotas": quotas or None})
    assert r.status_code == 201, r.text
    owner = admin.post("/api/v1/keys", json={"role": "owner", "tenant": name, "name": f"{name} owner"}).json()
    assert owner["secret"].startswith("my_") and owner["role"] == "owner"
    model = f"{name}-model"
    artifact = tiny_onnx(tmp / f"{name}.onnx", add=add)
    with httpx.Client(base_url=admin.base_url, headers={"Authorization": f"Bearer {owner['secret']}"}) as c:
        r = c.post(f"/api/v1/models/{model}/versions", params={"stage": "production"},
                   content=artifact.read_bytes(), headers={"X-Request-ID": f"push-{name}"})
        assert r.status_code == 201, r.text
        assert r.headers["x-request-id"] == f"push-{name}"
    return {"owner": owner, "model": model, "artifact": artifact.read_bytes(), "sha256": r.json()["sha256"]}


def test_two_tenants_end_to_end(server: LiveServer, tmp_path: Path) -> None:  # noqa: PLR0915
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with server.client() as admin:
        alpha = _make_tenant(admin, "alpha", tmp_path, 1.0)
        beta = _make_tenant(admin, "beta", tmp_path, 2.0, requests_per_day=4)
    a_key, b_key = alpha["owner"]["secret"], beta["owner"]["secret"]
    a, b = server.client(a_key), server.client(b_key)
    sent = {"alpha": 0, "beta": 0}

    # -- served correctly from encrypted files -----------------------------------------------
    r = a.post(f"/v2/models/{alpha['model']}/infer", json=_infer_body(x))
    sent["alpha"] += 1
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == (x + 1).ravel().tolist()
    assert server.platform is not None
    blob = server.platform.artifacts.path_for(alpha["sha256"])
    on_disk = blob.read_bytes()
    assert alpha["artifact"][:64] not in on_disk and alpha["artifact"] != on_disk
    assert on_disk.startswith(b"MYENC1")
    csv_bytes = b"pixel_a,pixel_b,label\n1,2,0\n3,4,1\n5,6,0\n"
    ds = a.post("/api/v1/datasets", params={"name": "alpha-data", "format": "csv"}, content=csv_bytes)
    if ds.status_code != 404:  # the datasets routes exist: datasets are encrypted too
        assert ds.status_code == 201, ds.text
        ds_blob = server.platform.artifacts.path_for(ds.json()["sha256"]).read_bytes()
        assert ds_blob.startswith(b"MYENC1") and b"pixel_a" not in ds_blob
        assert a.get("/api/v1/datasets/alpha-data").json()["n_rows"] == 3
        assert b.get("/api/v1/datasets/alpha-data").status_code == 404

    # -- isolation: the other tenant's model is "not found", with the same body as a missing one
    r_other = a.post(f"/v2/models/{beta['model']}/infer", json=_infer_body(x))
    assert r_other.status_code == 404
    assert a.get(f"/api/v1/models/{beta['model']}").status_code == 404
    assert beta["model"] not in a.get("/api/v1/models").text
    assert a.get("/api/v1/tenants").status_code == 403

    # -- per-key rate limit: 429 + Retry-After, then recovered ---------------------------------
    limited = a.post("/api/v1/keys", json={"role": "inference", "rate_limit": 1}).json()
    assert "secret" not in a.get("/api/v1/keys").text and limited["prefix"] in a.get("/api/v1/keys").text
    lim = server.client(limited["secret"])
    statuses = []
    for _ in range(4):
        resp = lim.post(f"/v2/models/{alpha['model']}/infer", json=_infer_body(x))
        statuses.append(resp.status_code)
        if resp.status_code == 429:
            assert int(resp.headers["Retry-After"]) >= 1
            assert "requests/second" in resp.json()["error"]["message"]
        else:
            sent["alpha"] += 1
    assert statuses[0] == 200 and 429 in statuses
    time.sleep(1.1)
    assert lim.post(f"/v2/models/{alpha['model']}/infer", json=_infer_body(x)).status_code == 200
    sent["alpha"] += 1

    # -- tenant requests/day: 429 naming the limit, recovered when the admin raises it ---------
    codes = []
    for _ in range(6):
        resp = b.post(f"/v2/models/{beta['model']}/infer", json=_infer_body(x))
        codes.append(resp.status_code)
        if resp.status_code == 200:
            sent["beta"] += 1
            assert resp.json()["outputs"][0]["data"] == (x + 2).ravel().tolist()
        else:
            assert resp.status_code == 429 and "requests/day" in resp.json()["error"]["message"]
            assert int(resp.headers["Retry-After"]) >= 1
    assert codes == [200] * 4 + [429] * 2
    with server.client() as admin:
        assert admin.patch("/api/v1/tenants/beta", json={"quotas": {"requests_per_day": 100}}).status_code == 200
    assert b.post(f"/v2/models/{beta['model']}/infer", json=_infer_body(x)).status_code == 200
    sent["beta"] += 1

    # -- usage matches what was sent -----------------------------------------------------------
    time.sleep(0.3)
    ua = a.get("/api/v1/usage").json()
    assert {i["tenant"] for i in ua["items"]} == {"alpha"}
    assert ua["totals"]["requests"] == sent["alpha"]
    assert ua["totals"]["cost"] == pytest.approx(sent["alpha"] * 0.5)
    ub = b.get("/api/v1/usage", params={"model": beta["model"]}).json()
    assert ub["totals"]["requests"] == sent["beta"]
    assert b.get("/api/v1/usage", params={"tenant": "alpha"}).status_code == 403
    with server.client() as admin:
        everything = admin.get("/api/v1/usage").json()
        assert {i["tenant"] for i in everything["items"]} >= {"alpha", "beta"}
        csv_text = admin.get("/api/v1/usage", params={"format": "csv", "tenant": "beta"}).text
        assert csv_text.startswith("tenant,model,hour") and "beta-model" in csv_text and "alpha" not in csv_text

    # -- audit: mutations and auth failures ----------------------------------------------------
    assert httpx.get(f"{server.url}/api/v1/models", headers={"Authorization": "Bearer my_bad"}).status_code == 401
    own = a.get("/api/v1/audit").json()["items"]
    assert all(e["tenant"] == "alpha" for e in own)
    assert any(e["request_id"] == "push-alpha" and e["action"] == "POST" and e["result"] == 201 for e in own)
    assert any(e["object"] == "/api/v1/keys" and e["result"] == 201 for e in own)
    with server.client() as admin:
        all_entries = admin.get("/api/v1/audit", params={"page_size": 500}).json()["items"]
        assert any(e["result"] == 401 and e["tenant"] is None for e in all_entries)
        assert any(e["object"] == "/api/v1/tenants/beta" and e["action"] == "PATCH" for e in all_entries)
    assert server.client(limited["secret"]).get("/api/v1/audit").status_code == 403

    # -- gRPC with the same keys (when the server has it) ---------------------------------------
    _grpc_checks(server, a_key, alpha["model"], beta["model"], x)

    # -- the OpenAI API with the same keys (when the server has it) -----------------------------
    openai_models = a.get("/v1/models")
    has_openai = openai_models.status_code != 404
    if has_openai:
        assert openai_models.status_code == 200 and beta["model"] not in openai_models.text

    # -- revocation and disabling take effect at once ------------------------------------------
    assert a.delete(f"/api/v1/keys/{limited['id']}").status_code == 204
    assert lim.post(f"/v2/models/{alpha['model']}/infer", json=_infer_body(x)).status_code == 401
    if has_openai:
        assert lim.get("/v1/models").status_code == 401
    with server.client() as admin:
        assert admin.patch("/api/v1/tenants/beta", json={"disabled": True}).status_code == 200
        assert admin.delete("/api/v1/tenants/alpha").status_code == 409  # still owns a model
    assert b.get("/api/v1/models").status_code == 401
    for c in (a, b, lim):
        c.close()


def _grpc_checks(server: LiveServer, key: str, mine: str, theirs: str, x: np.ndarray) -> None:
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    if not server.settings.grpc_enabled:
        return
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    headers = {"authorization": f"Bearer {key}"}
    out = client.infer(mine, [inp], headers=headers).as_numpy("y")
    np.testing.assert_allclose(out, x + 1)
    with pytest.raises(InferenceServerException) as err:
        client.infer(theirs, [inp], headers=headers)
    assert "NOT_FOUND" in str(err.value.status()) or "not found" in str(err.value).lower()
    with pytest.raises(InferenceServerException):
        client.infer(mine, [inp], headers={"authorization": "Bearer my_000000000000_nope"})


def test_master_key_rotation(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from modelyard.cli.main import app

    home = tmp_path / "home"
    x = np.ones((1, 3), dtype=np.float32)
    srv = _server(home, KEY_1)
    try:
        with srv.client() as admin:
            alpha = _make_tenant(admin, "alpha", tmp_path, 5.0)
    finally:
        srv.stop()
    keyfile = tmp_path / "new.key"
    keyfile.write_text(KEY_2)
    blob = home / "artifacts" / "blobs" / alpha["sha256"][:2] / alpha["sha256"]
    before = blob.read_bytes()
    result = CliRunner().invoke(
        app, ["keys", "rotate-master", "--new-key-file", str(keyfile), "--home", str(home)],
        env={"MODELYARD_MASTER_KEY": KEY_1, "MODELYARD_HOME": str(home)},
    )
    assert result.exit_code == 0, result.output
    assert "Re-wrapped 1 data key" in result.output
    assert blob.read_bytes() == before  # data not re-encrypted
    with pytest.raises(MasterKeyMismatch):
        LiveServer.build(home, master_key=KEY_1).start()
    srv = _server(home, KEY_2)
    try:
        with srv.client(alpha["owner"]["secret"]) as a:
            r = a.post(f"/v2/models/{alpha['model']}/infer", json=_infer_body(x))
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["data"] == [6.0, 6.0, 6.0]
    finally:
        srv.stop()


def test_cli_and_sdk(live_server: LiveServer, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from modelyard.cli.main import app
    from modelyard.client import Client
    from modelyard.errors import PermissionDenied, RateLimited

    env = {"MODELYARD_URL": live_server.url, "MODELYARD_API_KEY": live_server.admin_key}
    runner = CliRunner()

    def cli(*args: str, key: str | None = None) -> str:
        result = runner.invoke(app, list(args), env={**env, **({"MODELYARD_API_KEY": key} if key else {})})
        assert result.exit_code == 0, result.output
        return result.output

    assert "Created tenant" in cli("tenants", "create", "gamma", "-q", "requests_per_day=2")
    created = json.loads(cli("keys", "create", "--role", "owner", "--tenant", "gamma", "--json"))
    assert created["secret"].startswith("my_")
    listed = cli("keys", "list", "--tenant", "gamma")
    assert created["prefix"] in listed and created["secret"] not in listed
    assert "gamma" in cli("tenants", "list")

    with Client(url=live_server.url, api_key=created["secret"]) as owner:
        artifact = tiny_onnx(tmp_path / "g.onnx")
        owner.models.push(artifact, name="g-model", stage="production")
        x = np.zeros((1, 3), dtype=np.float32)
        owner.predict("g-model", {"x": x})
        owner.predict("g-model", {"x": x})
        with pytest.raises(RateLimited) as err:
            owner.predict("g-model", {"x": x})
        assert err.value.retry_after is not None and "requests/day" in err.value.message
        with pytest.raises(PermissionDenied):
            owner.tenants.create("delta")
        viewer = owner.keys.create("viewer", name="dash")
        assert viewer.key.role == "viewer" and [k.prefix for k in owner.keys.list() if k.role == "viewer"]
        owner.keys.revoke(viewer.key.id)
        assert all(k.id != viewer.key.id for k in owner.keys.list())
        time.sleep(0.3)
        report = owner.usage.report()
        assert report.totals["requests"] == 2 and report.records[0].model == "g-model"
        assert owner.usage.csv().startswith("tenant,model,hour")
        entries = list(owner.audit.list())
        assert any(e.action == "DELETE" and e.object.startswith("/api/v1/keys/") for e in entries)
    chart = cli("usage", "--tenant", "gamma")
    assert "g-model" in chart and "█" in chart and "total: 2 requests" in chart
    failed = runner.invoke(app, ["tenants", "list"], env={**env, "MODELYARD_API_KEY": created["secret"]})
    assert failed.exit_code == 3 and "may not" in failed.output


def test_two_tenants_models_of_one_name_are_two_series_in_metrics(server: LiveServer, tmp_path: Path) -> None:
    """An operator watching /metrics tells two tenants' ``shared`` models apart (label ``tenant``)."""
    from tests.integration._serving import metric

    x = np.ones((1, 3), np.float32)
    with server.client() as admin:
        for tenant, calls in (("red", 2), ("blue", 1)):
            assert admin.post("/api/v1/tenants", json={"name": tenant}).status_code == 201
            owner = admin.post("/api/v1/keys", json={"role": "owner", "tenant": tenant}).json()["secret"]
            with server.client(owner) as c:
                r = c.post("/api/v1/models/shared/versions", params={"stage": "production"},
                           content=tiny_onnx(tmp_path / f"{tenant}.onnx").read_bytes())
                assert r.status_code == 201, r.text
                for _ in range(calls):
                    assert c.post("/v2/models/shared/infer", json=_infer_body(x)).status_code == 200
                bad = c.post("/v2/models/shared/infer", json=_infer_body(np.ones((1, 5), np.float32)))
                assert bad.status_code == 400
        text = admin.get("/metrics").text
    for tenant, calls in (("red", 2), ("blue", 1)):
        labels = {"tenant": tenant, "model": "shared", "version": "1"}
        assert metric(text, "modelyard_inference_requests_total", **labels, protocol="rest") == calls + 1
        assert metric(text, "modelyard_inference_errors_total", **labels, code="invalid_input") == 1
        assert metric(text, "modelyard_batch_size_count", **labels) == calls
        assert metric(text, "modelyard_model_loads_total", **labels) == 1


def test_a_tenants_requests_per_second_hold_over_its_keys_and_protocols(server: LiveServer) -> None:
    """A tenant with requests_per_second 0.5 (a bucket of one request, refilled in 2 s) and three
    keys of its own, each unlimited: the first request of any key is let through, the others in
    the next 2 s are refused, over REST and gRPC alike, naming the tenant's limit. The rate is
    checked before the model is looked for, so the request let through meets a 404 here (the
    tenant has no model)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with server.client() as admin:
        for bad in (0, -1, "fast", 2_000_000):  # none of these is a rate: refused, nothing made
            r = admin.post("/api/v1/tenants", json={"name": "paced", "quotas": {"requests_per_second": bad}})
            assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed", (bad, r.text)
            assert "requests_per_second" in r.json()["error"]["message"], r.text
        assert admin.get("/api/v1/tenants/paced").status_code == 404
        r = admin.post("/api/v1/tenants", json={"name": "paced", "quotas": {"requests_per_second": 0.5}})
        assert r.status_code == 201 and r.json()["quotas"]["requests_per_second"] == 0.5, r.text
        keys = [admin.post("/api/v1/keys", json={"role": "inference", "tenant": "paced"}).json()["secret"]
                for _ in range(3)]
        clients = [server.client(key) for key in keys]
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.settings.grpc_port}")
        x = np.ones((1, 3), np.float32)
        inputs = [grpcclient.InferInput("x", [1, 3], "FP32")]
        inputs[0].set_data_from_numpy(x)
        started = time.monotonic()
        statuses = [clients[i % 3].post("/v2/models/none/infer", json=_infer_body(x)) for i in range(9)]
        with pytest.raises(InferenceServerException) as refused:
            grpc.infer("none", inputs, headers={"authorization": f"Bearer {keys[1]}"})
        elapsed = time.monotonic() - started
        grpc.close()
        for c in clients:
            c.close()
        metrics = admin.get("/metrics").text
    assert elapsed < 1.5, elapsed  # (the bucket's next request comes 2 s after the first)
    assert [r.status_code for r in statuses] == [404] + [429] * 8
    for r in statuses[1:]:
        assert r.json()["error"]["message"].startswith("tenant requests/second limit reached (0.5 requests/s)")
        assert int(r.headers["Retry-After"]) >= 1
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "tenant requests/second" in refused.value.message()
    counted = [line for line in metrics.splitlines()
               if line.startswith('modelyard_limit_refusals_total{limit="tenant_requests_per_second",tenant="paced"}')]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) == 9, counted
