"""Quotas enforced where things are admitted: stored bytes on uploads, concurrent jobs and
training hours on job submission — through a real server, with the 429 naming the limit."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.integration.onnx_models import add_model
from tests.support.live import LiveServer


def _tenant(admin: httpx.Client, name: str, **quotas: float) -> httpx.Client:
    assert admin.post("/api/v1/tenants", json={"name": name, "quotas": quotas}).status_code == 201
    owner = admin.post("/api/v1/keys", json={"role": "owner", "tenant": name}).json()
    return httpx.Client(base_url=admin.base_url, headers={"Authorization": f"Bearer {owner['secret']}"}, timeout=60)


def test_stored_bytes_quota_refuses_uploads_and_keeps_nothing(live_server: LiveServer, tmp_path: Path) -> None:
    artifact = add_model(add=1.0)
    with live_server.client() as admin, _tenant(admin, "small", stored_bytes=len(artifact) + 10) as c:
        assert c.post("/api/v1/models/a/versions", content=artifact).status_code == 201
        other = add_model(add=2.0)
        r = c.post("/api/v1/models/a/versions", content=other)
        assert r.status_code == 429, r.text
        assert "stored bytes" in r.json()["error"]["message"]
        assert "retry-after" in r.headers
        assert c.get("/api/v1/models/a/versions").json()["total"] == 1
    assert live_server.platform is not None
    assert not list(live_server.platform.artifacts.tmp.iterdir())


def test_concurrent_jobs_and_training_hours_quotas(live_server: LiveServer) -> None:
    job = {"type": "train", "model_name": "m", "dataset": "builtin:iris", "epochs": 1000}
    with live_server.client() as admin:
        with _tenant(admin, "onejob", concurrent_jobs=1) as c:
            first = c.post("/api/v1/jobs", json=job)
            assert first.status_code == 202, first.text
            second = c.post("/api/v1/jobs", json=job)
            assert second.status_code == 429
            assert "concurrent jobs" in second.json()["error"]["message"]
            assert c.post(f"/api/v1/jobs/{first.json()['id']}/cancel").status_code in (200, 202)
        with _tenant(admin, "nohours", training_hours_per_month=0) as c:
            r = c.post("/api/v1/jobs", json=job)
            assert r.status_code == 429
            assert "training hours" in r.json()["error"]["message"]


def test_stored_bytes_count_datasets_and_models_together(live_server: LiveServer) -> None:
    csv = b"a,b,target\n" + b"".join(f"{i},{i * 2},{i % 2}\n".encode() for i in range(50))
    artifact = add_model(add=3.0)
    with live_server.client() as admin, _tenant(admin, "mixed", stored_bytes=len(csv) + len(artifact) - 1) as c:
        assert c.post("/api/v1/datasets", params={"name": "d", "format": "csv"}, content=csv).status_code == 201
        r = c.post("/api/v1/models/m/versions", content=artifact)
        assert r.status_code == 429, r.text
        assert "stored bytes" in r.json()["error"]["message"]


def test_blob_deletes_consult_every_owner_of_a_blob(live_server: LiveServer) -> None:
    """Registry and datasets each ask the whole platform before removing a file on delete, so a
    blob another part still names (a dataset, a job's result) is never removed under it."""
    csv = b"a,target\n1,0\n2,1\n3,0\n"
    with live_server.client() as c:
        assert c.post("/api/v1/models/m/versions", content=add_model(add=5.0)).status_code == 201
        assert c.post("/api/v1/datasets", params={"name": "d", "format": "csv"}, content=csv).status_code == 201
        version_sha = c.get("/api/v1/models/m/versions/1").json()["sha256"]
        dataset_sha = c.get("/api/v1/datasets/d").json()["sha256"]
    platform = live_server.platform
    assert platform is not None
    registry_hook, datasets_hook = platform.registry.referenced_elsewhere, platform.datasets.referenced_elsewhere
    assert registry_hook is not None and datasets_hook is not None
    assert registry_hook(dataset_sha) and datasets_hook(version_sha)
    assert not registry_hook("0" * 64)
    with live_server.client() as c:  # with no other owner, deletes do remove the files
        assert c.delete("/api/v1/models/m").status_code == 204
        assert c.delete("/api/v1/datasets/d").status_code in (200, 204)
    assert not platform.artifacts.exists(version_sha) and not platform.artifacts.exists(dataset_sha)
