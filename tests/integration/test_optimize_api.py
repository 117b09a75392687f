"""Optimization through a real server: optimize jobs (each method), the guard, compare, promote."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.live import LiveServer

pytestmark = pytest.mark.slow

DIGITS = "builtin:digits"


def _wait(c: httpx.Client, job_id: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/api/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def _submit(c: httpx.Client, **body: Any) -> httpx.Response:
    return c.post("/api/v1/jobs", json={"type": "optimize", "dataset": DIGITS, **body})


def _run(c: httpx.Client, **body: Any) -> dict[str, Any]:
    r = _submit(c, **body)
    assert r.status_code == 202, r.text
    return _wait(c, r.json()["id"])


def _versions(c: httpx.Client, name: str) -> list[dict[str, Any]]:
    return c.get(f"/api/v1/models/{name}/versions").json()["items"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = LiveServer.build(tmp_path_factory.mktemp("optimize") / "home", job_poll_s=0.1).start()
    try:
        with srv.client() as c:
            r = c.post("/api/v1/jobs", json={"type": "train", "model_name": "digits", "dataset": DIGITS,
                                             "hidden_sizes": [64, 32], "epochs": 8, "seed": 1})
            assert r.status_code == 202, r.text
            job = _wait(c, r.json()["id"])
            assert job["state"] == "succeeded", job
            # An uploaded, ONNX-only copy of a model (no PyTorch source in the registry).
            from modelyard.engine.dataframes import load_builtin
            from modelyard.engine.trainer import TrainSpec, train

            work = tmp_path_factory.mktemp("upload")
            result = train(TrainSpec(target="target", hidden_sizes=(32,), epochs=5), load_builtin("digits"), workdir=work)
            r = c.post("/api/v1/models/uploaded/versions", content=Path(result.onnx_path).read_bytes(),
                       params={"format": "onnx", "stage": "production"},
                       headers={"Content-Type": "application/octet-stream"})
            assert r.status_code in (200, 201), r.text
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def c(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def test_quantize_dynamic_registers_a_version_with_report_and_lineage(c):
    before = c.get("/api/v1/models/digits/versions/1").json()
    job = _run(c, model_name="digits", version=1, method="quantize-dynamic", max_metric_drop=0.02)
    assert job["state"] == "succeeded", job
    result = job["result"]
    report = result["report"]
    assert report["guard_held"] and report["metric"] == "accuracy"
    assert report["source"] == {"model": "digits", "version": 1}
    for side in ("before", "after"):
        assert {"file_bytes", "parameters", "sparsity", "latency", "metric"} <= set(report[side])
        assert set(report[side]["latency"]) == {"1", "32"}
        assert {"p50_ms", "p99_ms", "throughput"} <= set(report[side]["latency"]["32"])
    assert report["after"]["file_bytes"] < report["before"]["file_bytes"]
    new = c.get(f"/api/v1/models/digits/versions/{result['version']}").json()
    assert new["lineage"]["optimized_from"]["version"] == 1
    assert new["lineage"]["method"] == "quantize-dynamic"
    assert new["lineage"]["datasets"]["dataset"]["reference"] == DIGITS
    assert new["metrics"]["optimization"]["guard_held"] is True
    assert new["stage"] == "none"
    # the source version is untouched
    assert c.get("/api/v1/models/digits/versions/1").json() == before


def test_static_int8_and_fp16_on_an_uploaded_onnx_model(c):
    job = _run(c, model_name="uploaded", version=1, method="quantize-static", options={"samples": 64},
               calibration_dataset=DIGITS, max_metric_drop=0.03)
    assert job["state"] == "succeeded", job
    v = c.get(f"/api/v1/models/uploaded/versions/{job['result']['version']}").json()
    assert v["lineage"]["datasets"]["calibration_dataset"]["reference"] == DIGITS
    assert "torch" not in v["lineage"]
    job = _run(c, model_name="uploaded", version=1, method="fp16", max_metric_drop=0.01)
    assert job["state"] == "succeeded", job
    assert job["result"]["report"]["ratios"]["size"] < 0.7


def test_prune_then_quantize_chain_and_prune_keeps_torch_source(c):
    job = _run(c, model_name="digits", version=1, max_metric_drop=0.05, steps=[
        {"method": "prune", "options": {"sparsity": 0.5, "fine_tune_epochs": 3}},
        {"method": "quantize-dynamic"},
    ])
    assert job["state"] == "succeeded", job
    report = job["result"]["report"]
    assert report["after"]["parameters"] < 0.6 * report["before"]["parameters"]
    v = c.get(f"/api/v1/models/digits/versions/{job['result']['version']}").json()
    assert v["lineage"]["method"] == "prune+quantize-dynamic"
    assert v["lineage"]["datasets"]["fine_tune_dataset"]["reference"] == DIGITS
    pruned = _run(c, model_name="digits", version=1, method="prune", max_metric_drop=0.05,
                  options={"sparsity": 0.25, "fine_tune_epochs": 2})
    assert pruned["state"] == "succeeded", pruned
    pv = c.get(f"/api/v1/models/digits/versions/{pruned['result']['version']}").json()
    assert pv["lineage"]["torch"]["architecture"]["layers"][0]["out_features"] == 48
    # the pruned version can itself be pruned again (its PyTorch source is kept)
    again = _run(c, model_name="digits", version=pruned["result"]["version"], method="prune",
                 max_metric_drop=0.1, options={"sparsity": 0.25, "fine_tune_epochs": 2})
    assert again["state"] == "succeeded", again


def test_the_guard_refuses_a_harmful_setting_and_registers_nothing(c):
    count = len(_versions(c, "digits"))
    job = _run(c, model_name="digits", version=1, method="prune", options={"sparsity": 0.99}, max_metric_drop=0.01)
    assert job["state"] == "failed"
    assert job["error"]["code"] == "validation_failed"
    assert "guard" in job["error"]["message"]
    report = job["error"]["details"]["report"]
    assert report["guard_held"] is False and report["metric_drop"] > 0.3
    assert len(_versions(c, "digits")) == count
    forced = _run(c, model_name="digits", version=1, method="prune", options={"sparsity": 0.99},
                  max_metric_drop=0.01, force=True)
    assert forced["state"] == "succeeded"
    v = c.get(f"/api/v1/models/digits/versions/{forced['result']['version']}").json()
    assert v["lineage"]["forced"] is True and v["metrics"]["optimization"]["guard_held"] is False


@pytest.mark.parametrize("body, field, words", [
    ({"version": 99, "method": "quantize-dynamic"}, "version", "no version 99"),
    ({"version": 1, "method": "distill"}, "method", "unknown optimization method"),
    ({"version": 1, "method": "prune", "options": {"sparsity": 1.5}}, "options.sparsity", "between 0 and 1"),
    ({"version": 1, "method": "prune", "options": {"sparsity": 0}}, "options.sparsity", "between 0 and 1"),
    ({"version": 1}, "method", "method"),
    ({"version": 1, "method": "quantize-dynamic", "max_metric_drop": -1}, "max_metric_drop", "max_metric_drop"),
    ({"version": 1, "method": "quantize-dynamic", "dataset": "builtin:iris"}, "dataset", "does not fit the model's inputs"),
])
def test_bad_requests_are_refused_with_422(c, body, field, words):
    r = _submit(c, model_name="digits", **body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["details"]["field"] == field
    assert words in error["message"]


def test_prune_on_onnx_only_and_requantizing_are_refused(c):
    r = _submit(c, model_name="uploaded", version=1, method="prune", options={"sparsity": 0.5})
    assert r.status_code == 422 and "ONNX-only" in r.json()["error"]["message"]
    int8 = next(v for v in _versions(c, "digits") if v["lineage"].get("method") == "quantize-dynamic")
    r = _submit(c, model_name="digits", version=int8["version"], method="quantize-dynamic")
    assert r.status_code == 422 and "already quantized" in r.json()["error"]["message"]


def test_calibration_dataset_whose_columns_do_not_match(c):
    csv = "a,b,target\n" + "\n".join(f"{i},{i * 2},{i % 10}" for i in range(20)) + "\n"
    r = c.post("/api/v1/datasets", params={"name": "two-columns", "format": "csv"}, content=csv.encode())
    assert r.status_code in (200, 201), r.text
    r = _submit(c, model_name="digits", version=1, method="quantize-static", calibration_dataset="two-columns")
    assert r.status_code == 422
    assert r.json()["error"]["details"]["field"] == "calibration_dataset"


def test_compare_three_versions(c, server, tmp_path, monkeypatch):
    r = c.get("/api/v1/models/digits/compare", params={"versions": "1,2,3", "dataset": DIGITS, "iterations": 10})
    assert r.status_code == 200, r.text
    table = r.json()
    assert table["metric"] == "accuracy" and [row["version"] for row in table["rows"]] == [1, 2, 3]
    for row in table["rows"]:
        assert row["metric"] > 0.5 and row["file_bytes"] > 0 and row["throughput"] > 0
        assert row["cost_per_million"] is not None and row["cost_per_million"] >= 0
    assert table["rows"][1]["method"] == "quantize-dynamic"
    bad = c.get("/api/v1/models/digits/compare", params={"versions": "1,999", "dataset": DIGITS})
    assert bad.status_code == 422
    # SDK and CLI: the table and a PNG chart
    from typer.testing import CliRunner

    from modelyard.cli.main import app

    monkeypatch.setenv("MODELYARD_URL", server.url)
    monkeypatch.setenv("MODELYARD_API_KEY", server.admin_key)
    chart = tmp_path / "chart.png"
    res = CliRunner().invoke(app, ["compare", "digits", "--versions", "1,2,3", "--dataset", DIGITS,
                                   "--chart", str(chart)])
    assert res.exit_code == 0, res.output
    assert "quantize-dynamic" in res.output and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sdk_and_cli_optimize_then_promote_serves_the_new_version(c, server, monkeypatch):
    from typer.testing import CliRunner

    from modelyard.cli.main import app
    from modelyard.client import Client

    with Client(url=server.url, api_key=server.admin_key) as sdk:
        job = sdk.optimize.run("digits", version=1, method="quantize-dynamic", dataset=DIGITS, max_metric_drop=0.02)
        assert job.state == "succeeded" and job.report["guard_held"]
        with pytest.raises(Exception) as info:
            sdk.optimize.run("digits", version=1, method="prune", options={"sparsity": 0.99}, dataset=DIGITS)
        assert info.value.details["report"]["guard_held"] is False
        sdk.models.promote("digits", job.version)
        versions = {v.version: v.stage for v in sdk.models.versions("digits")}
    assert versions[job.version] == "production" and versions[1] == "archived"
    x = np.asarray([[0.0] * 64], dtype=np.float32)
    r = c.post("/v2/models/digits/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x.ravel().tolist()}]})
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == str(job.version)
    monkeypatch.setenv("MODELYARD_URL", server.url)
    monkeypatch.setenv("MODELYARD_API_KEY", server.admin_key)
    res = CliRunner().invoke(app, ["optimize", "digits", "--version", "1", "--method", "fp16", "--dataset", DIGITS,
                                   "--max-metric-drop", "0.01", "--follow"])
    assert res.exit_code == 0, res.output
    assert "guard held" in res.output and "Registered digits version" in res.output
    res = CliRunner().invoke(app, ["optimize", "digits", "--version", "1", "--method", "prune", "-o", "sparsity=0.99",
                                   "--dataset", DIGITS, "--follow"])
    assert res.exit_code == 2 and "guard FAILED" in res.output


def _evaluate(c: httpx.Client, **body: Any) -> httpx.Response:
    return c.post("/api/v1/jobs", json={"type": "evaluate", "dataset": DIGITS, **body})


def test_an_evaluate_job_scores_a_version_as_compare_does(c, server, monkeypatch):
    """An ``evaluate`` job scores a version on a dataset in the background: the same accuracy as
    the synchronous comparison; ``max_rows`` scores fewer rows; an uploaded ONNX-only version
    too; the version the model serves by default. The SDK and the CLI submit it and wait."""
    r = _evaluate(c, model_name="digits", version=1)
    assert r.status_code == 202, r.text
    job = _wait(c, r.json()["id"])
    assert job["state"] == "succeeded", job
    result = job["result"]
    compared = c.get("/api/v1/models/digits/compare", params={"versions": "1", "dataset": DIGITS}).json()
    assert (result["metric"], result["task"], result["n_rows"]) == ("accuracy", "classification", 1797)
    assert result["value"] == pytest.approx(compared["rows"][0]["metric"]) and result["higher_is_better"]
    assert (result["model_name"], result["version"], result["dataset"]["reference"]) == ("digits", 1, DIGITS)
    assert any("accuracy" in line["message"] for line in c.get(f"/api/v1/jobs/{job['id']}/logs").json()["items"])

    few = _wait(c, _evaluate(c, model_name="digits", version=1, max_rows=100).json()["id"])
    assert few["state"] == "succeeded" and few["result"]["n_rows"] == 100
    uploaded = _wait(c, _evaluate(c, model_name="uploaded").json()["id"])  # the version it serves
    assert uploaded["state"] == "succeeded" and uploaded["result"]["version"] == 1, uploaded
    assert uploaded["result"]["value"] > 0.5
    production = _wait(c, _evaluate(c, model_name="uploaded", version="production", max_rows=10).json()["id"])
    assert production["result"]["version"] == 1
    latest = _wait(c, _evaluate(c, model_name="digits", version="latest", max_rows=10).json()["id"])
    assert latest["result"]["version"] == max(v["version"] for v in _versions(c, "digits"))

    from typer.testing import CliRunner

    from modelyard.cli.main import app
    from modelyard.client import Client

    with Client(url=server.url, api_key=server.admin_key) as sdk:
        done = sdk.jobs.wait(sdk.jobs.evaluate("digits", dataset=DIGITS, version=1, max_rows=50).id, timeout=120)
    assert done.state == "succeeded" and done.result is not None and done.result["n_rows"] == 50
    monkeypatch.setenv("MODELYARD_URL", server.url)
    monkeypatch.setenv("MODELYARD_API_KEY", server.admin_key)
    shown = CliRunner().invoke(app, ["evaluate", "digits", "-v", "1", "--dataset", DIGITS], env={"COLUMNS": "160"})
    assert shown.exit_code == 0, shown.output
    assert "accuracy" in shown.output and f"{result['value']:.4f}" in shown.output and "1,797" in shown.output
    refused = CliRunner().invoke(app, ["evaluate", "nope", "--dataset", DIGITS])
    assert refused.exit_code == 2 and "nope" in refused.output


@pytest.mark.parametrize("body, field", [
    ({"model_name": "digits", "epochs": 3}, "epochs"),
    ({"dataset": DIGITS}, "model_name"),
    ({"model_name": "nope"}, "model_name"),
    ({"model_name": "digits", "version": 99}, "version"),
    ({"model_name": "digits", "version": True}, "version"),
    ({"model_name": "digits", "version": "newest"}, "version"),
    ({"model_name": "digits", "max_rows": 0}, "max_rows"),
    ({"model_name": "digits", "dataset": "no-such-dataset"}, "dataset"),
    ({"model_name": "digits", "target": "species"}, "target"),
    ({"model_name": "digits", "dataset": "builtin:iris"}, "dataset"),  # its columns do not fit the inputs
])
def test_a_bad_evaluate_request_is_refused_with_422_naming_the_field(c, body, field):
    r = c.post("/api/v1/jobs", json={"type": "evaluate", "dataset": DIGITS, **body})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["field"] == field, r.json()
