"""Deployments from the Python SDK and the ``modelyard deploy`` CLI against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from modelyard.cli.main import app
from modelyard.client import Client
from modelyard.errors import DeploymentNotFound, ValidationFailed
from tests.integration._serving import register, scale_model
from tests.support.live import LiveServer


def test_sdk_and_cli_manage_a_deployment(live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register(live_server, "m", scale_model(tmp_path / "a.onnx", 1.0))
    register(live_server, "m", scale_model(tmp_path / "b.onnx", 3.0))
    x = np.ones((1, 4), np.float32)
    with Client(url=live_server.url, api_key=live_server.admin_key) as client:
        dep = client.deployments.create("web", [("m", 1, 100), ("m", 2, 0)], serving={"max_batch_size": 8})
        assert dep.revision == 1 and dep.serving == {"max_batch_size": 8}
        np.testing.assert_allclose(client.predict("web", {"x": x})["y"], x)
        dep = client.deployments.set_weights("web", {"m:1": 0, "m:2": 1})
        np.testing.assert_allclose(client.predict("web", {"x": x})["y"], 3 * x)
        assert client.deployments.get("web").stats is not None
        with pytest.raises(ValidationFailed):
            client.deployments.set_weights("web", {"m:9": 1})
        assert [d.name for d in client.deployments.list()] == ["web"]

    monkeypatch.setenv("MODELYARD_URL", live_server.url)
    monkeypatch.setenv("MODELYARD_API_KEY", live_server.admin_key)
    runner = CliRunner()
    result = runner.invoke(app, ["deploy", "rollback", "web", "--json"])
    assert result.exit_code == 0, result.output
    assert '"kind": "rolled_back"' in result.output
    result = runner.invoke(app, ["deploy", "show", "web"])  # the canary left: what it answered stays
    retired = [line.split() for line in result.output.splitlines() if "(retired)" in line]
    assert [[cell for cell in row if cell not in "│┃"] for row in retired] == [["m:2", "(retired)", "-", "1", "0"]], result.output
    result = runner.invoke(app, ["deploy", "create", "api", "m:1=90", "m:2=10", "--max-error-rate", "0.3"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["deploy", "list"])
    assert "api" in result.output and "web" in result.output
    assert runner.invoke(app, ["deploy", "delete", "api"]).exit_code == 0
    result = runner.invoke(app, ["deploy", "show", "api"])
    assert result.exit_code == DeploymentNotFound.exit_code


def test_cli_update_changes_what_it_is_given_and_keeps_the_rest(
    live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(live_server, "u", scale_model(tmp_path / "a.onnx", 1.0))
    register(live_server, "u", scale_model(tmp_path / "b.onnx", 3.0))
    monkeypatch.setenv("MODELYARD_URL", live_server.url)
    monkeypatch.setenv("MODELYARD_API_KEY", live_server.admin_key)
    runner = CliRunner()

    def deploy(*args: str) -> dict:
        result = runner.invoke(app, ["deploy", *args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    deploy("create", "upd", "u:1", "--max-error-rate", "0.3")
    dep = deploy("update", "upd", "--shadow", "u:2=0.25", "--serving", '{"max_batch_size": 4}')
    assert dep["shadow"] == {"model": "u", "version": 2, "share": 0.25}
    assert dep["serving"] == {"max_batch_size": 4}
    assert dep["rollback"]["max_error_rate"] == 0.3 and dep["routes"] == [{"model": "u", "version": 1, "weight": 100.0}]
    dep = deploy("update", "upd", "u:1=80", "u:2=20")
    assert [(r["version"], r["weight"]) for r in dep["routes"]] == [(1, 80.0), (2, 20.0)]
    assert dep["shadow"] is not None and dep["serving"] == {"max_batch_size": 4}  # kept
    dep = deploy("update", "upd", "--max-p99-ms", "250", "--window-s", "30")
    assert dep["rollback"] == {"max_error_rate": 0.3, "window_s": 30.0, "min_requests": 10, "max_p99_ms": 250.0,
                               "max_p99_ratio": None}  # the rate kept
    dep = deploy("update", "upd", "--max-p99-ratio", "1.5")
    assert dep["rollback"] == {"max_error_rate": 0.3, "window_s": 30.0, "min_requests": 10, "max_p99_ms": 250.0,
                               "max_p99_ratio": 1.5}
    result = runner.invoke(app, ["deploy", "show", "upd"])
    shown = " ".join(result.output.split())
    assert "its p99 latency passes 250 ms or 1.5x the primary's over 30 s" in shown, shown
    dep = deploy("update", "upd", "--no-shadow", "--no-rollback", "--description", "two routes")
    assert dep["shadow"] is None and dep["rollback"] is None and dep["description"] == "two routes"
    assert dep["revision"] == 6

    for bad, says in [((), "nothing to change"), (("--shadow", "u:2", "--no-shadow"), "not both"),
                      (("--max-p99-ms", "50", "--no-rollback"), "not both"),
                      (("--window-s", "30"), "goes with --max-error-rate"),  # no policy to change
                      (("--serving", "[1]"), "JSON object"), (("--serving", "{oops"), "JSON object"),
                      (("--shadow", "u"), "MODEL:VERSION")]:
        result = runner.invoke(app, ["deploy", "update", "upd", *bad])
        assert result.exit_code == 2 and says in result.output, result.output
    result = runner.invoke(app, ["deploy", "update", "upd", "--serving", '{"max_batch_size": 0}'])
    assert result.exit_code == ValidationFailed.exit_code, result.output
    for option, value in (("--max-p99-ms", "0"), ("--max-p99-ratio", "0.5")):
        result = runner.invoke(app, ["deploy", "update", "upd", option, value])
        assert result.exit_code == ValidationFailed.exit_code and option[2:].replace("-", "_") in result.output, result.output
    assert deploy("show", "upd")["revision"] == 6  # the refused changes changed nothing
