"""A key scoped to named models sees only those: in lists (with honest totals), gets and infer."""

from __future__ import annotations

import httpx
import numpy as np

from tests.integration.onnx_models import add_model
from tests.support.live import LiveServer


def test_scoped_key_lists_and_reaches_only_its_models(live_server: LiveServer) -> None:
    with live_server.client() as admin:
        for name in ("a", "b", "c"):
            assert admin.post(f"/api/v1/models/{name}/versions", content=add_model()).status_code == 201
        key = admin.post("/api/v1/keys", json={"role": "viewer", "scopes": ["b"]})
        assert key.status_code == 201, key.text
    headers = {"Authorization": f"Bearer {key.json()['secret']}"}
    with httpx.Client(base_url=live_server.url, headers=headers) as scoped:
        listing = scoped.get("/api/v1/models", params={"page_size": 1}).json()
        assert listing["total"] == 1
        assert [m["name"] for m in listing["items"]] == ["b"]
        assert scoped.get("/api/v1/models/b").status_code == 200
        hidden = scoped.get("/api/v1/models/a")
        assert hidden.status_code == 404
        missing = scoped.get("/api/v1/models/nope")
        assert hidden.json()["error"]["code"] == missing.json()["error"]["code"] == "model_not_found"
        assert hidden.json()["error"]["message"] == "model 'a' not found"
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": np.ones(3).tolist()}]}
        assert scoped.post("/v2/models/b/infer", json=body).status_code == 200
        assert scoped.post("/v2/models/a/infer", json=body).status_code == 404
