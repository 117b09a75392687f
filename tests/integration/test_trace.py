"""Triton's trace extension through a real server: ``tritonclient`` (HTTP and gRPC) reads and
changes the settings; sampled requests are written to the trace file with their timestamps in
order (queue and compute for requests of a loaded version, a cache hit marked, a failure with its
code); the rate and count are kept; a model's settings go over the server's; only administrators
change them; bad settings get 400 and change nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from typer.testing import CliRunner

from modelyard.cli.main import app
from modelyard.client import Client, summarize
from tests.integration._serving import failing_model, infer_body, metric, register, scale_model
from tests.support.live import LiveServer

OFF = {"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1", "log_frequency": "0",
       "trace_file": "trace.jsonl", "trace_mode": "triton"}
FULL = ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_END", "REQUEST_END"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer.build(tmp_path / "home", builtin_models=False).start()
    try:
        register(live, "alpha", scale_model(tmp_path / "alpha.onnx", 2.0))
        register(live, "cached", scale_model(tmp_path / "cached.onnx", 2.0), config={"serving": {"response_cache": True}})
        register(live, "broken", failing_model(tmp_path / "broken.onnx"))
        yield live
    finally:
        live.stop()


def _written(server: LiveServer) -> None:
    """Wait until the server's trace thread wrote every line its requests queued."""
    assert server.platform is not None and server.platform.tracer.files.drain()


def _traces(server: LiveServer, name: str = "trace.jsonl") -> list[dict[str, Any]]:
    _written(server)
    path = server.settings.resolved_home / "traces" / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _infer(client: Any, model: str, value: float = 1.0) -> int:
    return client.post(f"/v2/models/{model}/infer", json=infer_body(np.full((1, 4), value, np.float32))).status_code


def test_tritonclient_http_turns_traces_on_and_they_are_written(server: LiveServer) -> None:
    triton = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    headers = server.headers
    assert triton.get_trace_settings(headers=headers) == OFF
    with server.client() as client:
        assert _infer(client, "alpha") == 200  # not traced: off
        settings = triton.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "2",
                                                          "trace_count": "3"}, headers=headers)
        assert settings == {**OFF, "trace_level": ["TIMESTAMPS"], "trace_rate": "2", "trace_count": "3"}
        assert [_infer(client, "alpha", float(i)) for i in range(8)] == [200] * 8  # every 2nd, 3 at most
    traces = _traces(server)
    assert len(traces) == 3 and len({t["id"] for t in traces}) == 3
    for trace in traces:
        assert (trace["model_name"], trace["model_version"], trace["tenant"], trace["outcome"]) == (
            "alpha", "1", "default", "ok")
        assert [s["name"] for s in trace["timestamps"]] == FULL  # the version is loaded: the fast path
        stamps = [s["ns"] for s in trace["timestamps"]]
        assert stamps == sorted(stamps) and 0 < stamps[-1] - stamps[0] < 10**10
    assert triton.get_trace_settings(headers=headers)["trace_count"] == "0"  # what is left
    triton.close()


def test_requests_that_wait_for_a_load_are_traced_with_their_queue_and_compute(server: LiveServer) -> None:
    """The first request to a version (it waits for the load) and to a deployment (it waits for
    the deployment's record) take the awaited path; their traces have every timestamp too."""
    with server.client() as client:
        client.post("/api/v1/deployments", json={"name": "front", "routes": [{"model": "alpha", "version": 1}]}
                    ).raise_for_status()
        r = client.post("/v2/trace/setting", json={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
        assert r.status_code == 200, r.text
        assert _infer(client, "alpha") == 200  # loads it
        assert _infer(client, "front") == 200  # reads the deployment
    traces = _traces(server)
    assert [(t["model_name"], t["outcome"]) for t in traces] == [("alpha", "ok"), ("alpha", "ok")]
    for trace in traces:
        assert [s["name"] for s in trace["timestamps"]] == FULL
        stamps = [s["ns"] for s in trace["timestamps"]]
        assert stamps == sorted(stamps)


def test_a_models_settings_go_over_the_servers(server: LiveServer) -> None:
    triton = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    headers = server.headers
    triton.update_trace_settings("cached", {"trace_level": ["TIMESTAMPS"], "trace_rate": "1",
                                            "trace_file": "cached.jsonl"}, headers=headers)
    triton.update_trace_settings("broken", {"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}, headers=headers)
    assert triton.get_trace_settings("cached", headers=headers)["trace_file"] == "cached.jsonl"
    assert triton.get_trace_settings(headers=headers) == OFF  # the server's are unchanged
    with server.client() as client:
        assert [_infer(client, "cached") for _ in range(2)] == [200, 200]
        assert _infer(client, "alpha") == 200  # not traced: the server's settings are off
        assert _infer(client, "broken", 50.0) >= 400
    cached = _traces(server, "cached.jsonl")
    assert [t["outcome"] for t in cached] == ["ok", "cache hit"]
    assert [s["name"] for s in cached[1]["timestamps"]] == ["REQUEST_START", "REQUEST_END"]
    (broken,) = _traces(server)
    assert broken["model_name"] == "broken" and broken["outcome"] != "ok"
    # null takes the server's setting again
    after = triton.update_trace_settings("cached", {"trace_level": None}, headers=headers)
    assert after["trace_level"] == ["OFF"] and after["trace_file"] == "cached.jsonl"
    triton.close()


def test_tritonclient_grpc_reads_and_changes_them(server: LiveServer) -> None:
    triton = triton_grpc.InferenceServerClient(server.grpc_url)
    headers = {"authorization": f"Bearer {server.admin_key}"}
    got = triton.get_trace_settings(headers=headers, as_json=True)
    assert got["settings"]["trace_level"]["value"] == ["OFF"]
    changed = triton.update_trace_settings(model_name="alpha", settings={"trace_level": "TIMESTAMPS", "trace_rate": "1"},
                                           headers=headers, as_json=True)
    assert changed["settings"]["trace_level"]["value"] == ["TIMESTAMPS"]
    inp = triton_grpc.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    triton.infer("alpha", [inp], headers=headers)
    triton.infer("alpha", [inp], headers=headers)
    assert [t["outcome"] for t in _traces(server)] == ["ok", "ok"]
    reset = triton.update_trace_settings(model_name="alpha", settings={"trace_level": None}, headers=headers,
                                         as_json=True)
    assert reset["settings"]["trace_level"]["value"] == ["OFF"]
    triton.close()


@pytest.mark.parametrize(("changes", "param"), [
    ({"trace_level": ["TENSORS"]}, "trace_level"),
    ({"trace_rate": "0"}, "trace_rate"),
    ({"trace_rate": "often"}, "trace_rate"),
    ({"trace_count": "-2"}, "trace_count"),
    ({"trace_file": "../../etc/x"}, "trace_file"),
    ({"trace_file": "/tmp/x"}, "trace_file"),
    ({"trace_mode": "opentelemetry"}, "trace_mode"),
    ({"trace_colour": "blue"}, "trace_colour"),
])
def test_bad_settings_change_nothing(server: LiveServer, changes: dict, param: str) -> None:
    with server.client() as admin:
        r = admin.post("/v2/trace/setting", json={"trace_rate": "5", **changes})
        assert r.status_code == 400 and r.json()["error"]["details"]["param"] == param, r.text
        assert admin.get("/v2/trace/setting").json() == OFF


def test_a_models_unknown_setting_is_refused_even_as_null(server: LiveServer) -> None:
    with server.client() as admin:
        r = admin.post("/v2/models/alpha/trace/setting", json={"trace_colour": None})
        assert r.status_code == 400 and r.json()["error"]["details"]["param"] == "trace_colour", r.text


def test_only_administrators_change_them(server: LiveServer) -> None:
    with server.client() as admin:
        developer = admin.post("/api/v1/keys", json={"role": "developer"}).json()["secret"]
    with server.client(developer) as dev:
        assert dev.get("/v2/trace/setting").json() == OFF
        assert dev.get("/v2/models/alpha/trace/setting").status_code == 200
        r = dev.post("/v2/trace/setting", json={"trace_level": ["TIMESTAMPS"]})
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied", r.text
        r = dev.get("/v2/models/nope/trace/setting")
        assert r.status_code == 404, r.text


def test_the_sdk_and_the_cli(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with Client(url=server.url, api_key=server.admin_key) as sdk:
        assert sdk.traces.settings() == OFF
        now = sdk.traces.update("alpha", trace_level="timestamps", trace_rate=1, trace_file="alpha.jsonl")
        assert (now["trace_level"], now["trace_rate"], now["trace_file"]) == (["TIMESTAMPS"], "1", "alpha.jsonl")
        with server.client() as client:
            assert [_infer(client, "alpha", float(i)) for i in range(4)] == [200] * 4
    _written(server)
    path = server.settings.resolved_home / "traces" / "alpha.jsonl"
    (alpha,) = summarize(path.read_text().splitlines())
    assert (alpha.model, alpha.version, alpha.traces, alpha.failed, alpha.cache_hits) == ("alpha", "1", 4, 0, 0)
    assert 0 < alpha.p50_ms <= alpha.p99_ms and alpha.mean_compute_ms > 0 and len(alpha.queue_ms) >= 3

    monkeypatch.setenv("MODELYARD_URL", server.url)
    monkeypatch.setenv("MODELYARD_API_KEY", server.admin_key)
    runner = CliRunner()
    result = runner.invoke(app, ["trace", "summary", str(path)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "traces" in line.split())
    row = next(line for line in result.output.splitlines() if line.split() and line.split()[0] == "alpha")
    assert dict(zip(header.split(), row.split()))["traces"] == "4", result.output
    result = runner.invoke(app, ["trace", "set", "--on", "--rate", "50", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["trace_rate"] == "50", result.output
    result = runner.invoke(app, ["trace", "set", "-m", "alpha", "--reset", "trace_file", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["trace_file"] == "trace.jsonl", result.output
    result = runner.invoke(app, ["trace", "show", "-m", "alpha"], env={"COLUMNS": "120"})
    assert result.exit_code == 0 and "TIMESTAMPS" in result.output, result.output

    result = runner.invoke(app, ["trace", "set"])  # nothing to change
    assert result.exit_code == 2 and "nothing to change" in result.output, result.output
    result = runner.invoke(app, ["trace", "set", "--reset", "trace_rate"])  # a reset needs a model
    assert result.exit_code == 2 and "--model" in result.output, result.output
    result = runner.invoke(app, ["trace", "set", "--file", "../x"])
    assert result.exit_code == 2 and "trace_file" in result.output, result.output
    result = runner.invoke(app, ["trace", "summary", str(path.parent / "none.jsonl")])
    assert result.exit_code == 2 and "no trace file" in result.output, result.output
    bad = path.parent / "bad.jsonl"
    bad.write_text(path.read_text() + "not json\n")
    result = runner.invoke(app, ["trace", "summary", str(bad)])
    assert result.exit_code == 2 and "line 5 is not a trace" in result.output, result.output


def test_a_trace_that_cannot_be_written_never_fails_its_request(server: LiveServer) -> None:
    """A traces folder that is a file: every traced request is still answered, its line is
    dropped and counted; once the file is gone, traces are written again without a restart."""
    folder = server.settings.resolved_home / "traces"
    folder.write_text("not a folder")
    with server.client() as client:
        client.post("/v2/trace/setting", json={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}).raise_for_status()
        assert [_infer(client, "alpha", float(i)) for i in range(3)] == [200] * 3
        _written(server)
        assert metric(client.get("/metrics").text, "modelyard_traces_dropped_total", reason="write") == 3
        folder.unlink()
        assert _infer(client, "alpha") == 200
        assert [t["outcome"] for t in _traces(server)] == ["ok"]
        assert metric(client.get("/metrics").text, "modelyard_traces_dropped_total", reason="write") == 3
