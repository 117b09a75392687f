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
