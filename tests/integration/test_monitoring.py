"""The alerting rules and the dashboard against a real server: every series they name is one the
server serves, with the labels they use; and a real Prometheus, scraping a live server with the
rules loaded, fires the queue-full alert while a model's queue refuses, and the down alert once the
server stops."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modelyard.monitoring import alert_rules, dashboard
from tests.integration._serving import HOLDING_ROWS, SLOW_WIDTH, infer_body, metric, register, slow_model
from tests.support.live import LiveServer, free_port, wait_until

#: the series a family's samples are named (prometheus_client's suffixes)
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
             "gauge": ("",)}
#: labels Prometheus adds to every series (the target's), and the histogram's bucket bound
_TARGET_LABELS = {"instance", "job", "le"}


def _queries() -> list[str]:
    (group,) = yaml.safe_load(alert_rules())["groups"]
    rules = [rule["expr"] for rule in group["rules"]]
    return rules + [t["expr"] for p in json.loads(dashboard())["panels"] for t in p["targets"]]


def _served(text: str) -> dict[str, set[str]]:
    """Every series name a /metrics ``text`` exposes -> its family's label names."""
    served: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        for suffix in _SUFFIXES.get(family.type, ("",)):
            served[family.name + suffix] = labels
    return served


def test_every_series_the_rules_and_the_dashboard_name_is_served_with_their_labels(tmp_path: Path) -> None:
    srv = LiveServer.build(tmp_path / "home").start()
    assert srv.platform is not None
    try:
        # a child of each labelled family of the server's, so that /metrics shows its label names
        for family in vars(srv.platform.metrics).values():
            names = getattr(family, "_labelnames", None) or getattr(family, "labelnames", None)
            if names:
                family.labels(*("x" for _ in names))
        with srv.client() as client:
            # the quotas' series come from the database at each scrape: give the tenant one
            r = client.patch("/api/v1/tenants/default", json={"quotas": {"requests_per_day": 1000}})
            assert r.status_code == 200, r.text
            text = client.get("/metrics").text
            served = _served(text)
            # a database that fails costs the scrape its quota series, not the others
            def broken() -> list[object]:
                raise OSError("the database is down")

            srv.platform.limits.quota_use = broken  # type: ignore[method-assign]
            without = client.get("/metrics")
        assert metric(text, "modelyard_quota_limit", tenant="default", quota="requests_per_day") == 1000
        assert metric(text, "process_resident_memory_bytes") > 10e6 and "python_info{" in text
        assert without.status_code == 200 and "modelyard_memory_budget_bytes " in without.text
        assert metric(without.text, "modelyard_quota_limit") == 0 and "modelyard_quota_limit{" not in without.text
    finally:
        srv.stop()
    for query in _queries():
        names = set(re.findall(r"\b((?:modelyard|process)_[a-z_]+)\b", query))
        assert names or query.startswith("up{"), query  # `up`: Prometheus's own, of every target
        allowed = set(_TARGET_LABELS)
        for name in names:
            assert name in served, f"{name} (in {query!r}) is no series of the server's /metrics"
            labels = served[name]
            allowed |= labels
            for selector in re.findall(rf"\b{name}\{{([^}}]*)\}}", query):
                used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
                assert used <= labels | _TARGET_LABELS, f"{name} has no label {used - labels} ({query!r})"
        for grouping in re.findall(r"\b(?:by|on|without)\s*\(([^)]*)\)", query):
            used = {label.strip() for label in grouping.split(",") if label.strip()}
            assert used <= allowed, f"no series of {query!r} has the labels {used - allowed}"


def _firing(port: int) -> dict[str, list[dict[str, Any]]]:
    r = httpx.get(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=10)
    r.raise_for_status()
    firing: dict[str, list[dict[str, Any]]] = {}
    for alert in r.json()["data"]["alerts"]:
        if alert["state"] == "firing":
            firing.setdefault(alert["labels"]["alertname"], []).append(alert)
    return firing


@pytest.mark.slow
def test_a_real_prometheus_fires_the_alerts_on_a_live_server(tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("prometheus is missing: `make test` installs it (Debian's prometheus package)")
    srv = LiveServer.build(tmp_path / "home").start()
    register(srv, "tight", slow_model(tmp_path / "tight.onnx", 160_000),
             config={"serving": {"batching": False, "max_queue_size": 1}})
    # the rules as shipped, but firing at once (no `for:`) so that the test takes seconds
    rules = tmp_path / "alerts.yml"
    rules.write_text(re.sub(r"(?m)^(\s+)for: \d+m$", r"\1for: 0s", alert_rules()))
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{
            "job_name": "modelyard", "static_configs": [{"targets": [f"127.0.0.1:{srv.settings.http_port}"]}],
            "authorization": {"type": "Bearer", "credentials": srv.admin_key},
        }],
    }))
    port = free_port()
    log = tmp_path / "prometheus.log"
    proc = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    stop = threading.Event()
    statuses: list[int] = []

    def call(rows: int) -> None:
        body = infer_body(np.ones((rows, SLOW_WIDTH), np.float32) * 0.01)
        # a connection each: a keep-alive one refused once is held unread while the queue is full
        # (backpressure, docs/serving.md), and would wait rather than be refused again
        with httpx.Client(base_url=srv.url, headers={**srv.headers, "Connection": "close"}, timeout=60) as client:
            while not stop.is_set():
                statuses.append(client.post("/v2/models/tight/infer", json=body).status_code)
                time.sleep(0.005)

    threads = [threading.Thread(target=call, args=(rows,), daemon=True) for rows in (HOLDING_ROWS, HOLDING_ROWS, 1, 1)]
    try:
        def up() -> bool:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5)
            except httpx.HTTPError:
                r = None
            if r is None or r.status_code != 200:  # not listening yet, or 503 while it starts
                assert proc.poll() is None, log.read_text()[-3000:]
                return False
            return [t["health"] for t in r.json()["data"]["activeTargets"]] == ["up"]

        wait_until(up, timeout=60)
        for thread in threads:
            thread.start()
        wait_until(lambda: "ModelYardQueueFull" in _firing(port), timeout=60)
        (alert,) = _firing(port)["ModelYardQueueFull"]
        assert {k: alert["labels"][k] for k in ("tenant", "model", "version", "severity")} == {
            "tenant": "default", "model": "tight", "version": "1", "severity": "warning"}
        assert alert["annotations"]["summary"].startswith("default/tight v1 refuses ")
        assert 429 in statuses and set(statuses) <= {200, 429}
        firing = _firing(port)
        assert "ModelYardServerErrors" not in firing and "ModelYardDown" not in firing, firing
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        srv.stop()  # the scrapes now fail
        wait_until(lambda: "ModelYardDown" in _firing(port), timeout=60)
        (down,) = _firing(port)["ModelYardDown"]
        assert down["labels"]["instance"] == f"127.0.0.1:{srv.settings.http_port}"
        assert down["labels"]["severity"] == "critical"
    finally:
        stop.set()
        proc.terminate()
        proc.wait(timeout=30)
        srv.stop()
