"""A server restart keeps every model and version (push, stop, start again, infer) and loads the
pinned ones before it answers."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.onnx_models import add_model, identity_model
from tests.support.live import ServerProcess


@pytest.mark.slow
def test_restart_keeps_models_versions_and_stages(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"MODELYARD_GRPC_ENABLED": "false", "MODELYARD_BUILTIN_MODELS": "false"}
    first = ServerProcess(home, env=env).start()
    try:
        with httpx.Client(base_url=first.url, headers=first.headers, timeout=60) as c:
            assert c.post("/api/v1/models/adder/versions", content=add_model(1.0)).status_code == 201
            assert c.post("/api/v1/models/adder/versions?stage=production", content=add_model(2.0)).status_code == 201
            assert c.post("/api/v1/models/adder/versions", content=add_model(3.0)).status_code == 201
            assert c.post("/api/v1/models/words/versions", content=identity_model("BYTES")).status_code == 201
            assert c.post("/api/v1/models/adder/versions/1/load", json={"pin": True}).json()["pinned"] is True
            before = {m["name"]: m for m in c.get("/api/v1/models").json()["items"]}
            versions_before = c.get("/api/v1/models/adder/versions").json()["items"]
    finally:
        # uvicorn re-raises the SIGTERM it caught once it has drained, hence -SIGTERM today
        assert first.stop() in (0, -signal.SIGTERM)

    again = ServerProcess(home, admin_key=first.admin_key, env=env)
    again.port, again.grpc_port = first.port, first.grpc_port
    again.start()
    try:
        with httpx.Client(base_url=again.url, headers=again.headers, timeout=60) as c:
            # the pinned version was loaded before the server answered anything
            loaded = c.get("/api/v1/loaded").json()["items"]
            assert [(i["model"], i["version"], i["pinned"]) for i in loaded] == [("adder", 1, True)]
            after = {m["name"]: m for m in c.get("/api/v1/models").json()["items"]}
            assert after.keys() == before.keys()
            assert after["adder"]["latest_version"] == 3 and after["adder"]["production_version"] == 2
            versions_after = c.get("/api/v1/models/adder/versions").json()["items"]
            assert [(v["version"], v["sha256"], v["stage"]) for v in versions_after] == [
                (v["version"], v["sha256"], v["stage"]) for v in versions_before
            ]
            x = np.arange(6, dtype=np.float32).reshape(2, 3)
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": x.ravel().tolist()}]}
            for path, add, version in [("/v2/models/adder", 2.0, "2"), ("/v2/models/adder/versions/1", 1.0, "1"),
                                       ("/v2/models/adder/versions/3", 3.0, "3")]:
                out = c.post(f"{path}/infer", json=body).json()
                assert out["model_version"] == version
                y = next(o for o in out["outputs"] if o["name"] == "y")
                assert y["data"] == (x + add).ravel().tolist()
            words = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 4], "data": ["a", "b", "c", "d"]}]}
            assert c.post("/v2/models/words/infer", json=words).json()["outputs"][0]["data"] == ["a", "b", "c", "d"]
            # numbering continues after the restart
            assert c.post("/api/v1/models/adder/versions", content=add_model(4.0)).json()["version"] == 4
    finally:
        assert again.stop() in (0, -signal.SIGTERM)
