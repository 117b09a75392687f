"""The alerting rules and the dashboard that ship with ModelYard: valid for Prometheus, each alert
proved by promtool's unit tests (``tests/monitoring/alerts_test.yml``), and written by the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from modelyard.cli.main import app
from modelyard.monitoring import alert_rules, dashboard

TESTS = Path(__file__).resolve().parents[1] / "monitoring"
#: Grafana's variables, as a query sends them when every value is chosen
_GRAFANA = {"$__rate_interval": "5m", "$tenant": ".*", "$model": ".*"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: `make test` installs it (Debian's prometheus package)")
    return subprocess.run([tool, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def rules() -> list[dict[str, Any]]:
    (group,) = yaml.safe_load(alert_rules())["groups"]
    return list(group["rules"])


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in json.loads(dashboard())["panels"] for t in p["targets"]]


def test_promtool_proves_when_each_alert_fires() -> None:
    done = promtool("test", "rules", "alerts_test.yml", cwd=TESTS)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_explained() -> None:
    tested = yaml.safe_load((TESTS / "alerts_test.yml").read_text())
    fired = {case["alertname"] for test in tested["tests"] for case in test["alert_rule_test"] if case["exp_alerts"]}
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)) >= 10
    assert set(names) == fired, "every alert has a promtool test in which it fires"
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert re.fullmatch(r"ModelYard[A-Z]\w+", rule["alert"])


def test_promtool_accepts_the_rule_file(tmp_path: Path) -> None:
    (tmp_path / "alerts.yml").write_text(alert_rules())
    done = promtool("check", "rules", str(tmp_path / "alerts.yml"))
    assert done.returncode == 0 and f"SUCCESS: {len(rules())} rules found" in done.stdout, done.stdout + done.stderr


def test_every_dashboard_query_is_promql_prometheus_accepts(tmp_path: Path) -> None:
    """Each panel's query, with Grafana's variables as Grafana sends them, made a recording rule
    for promtool to parse; a broken one is refused (the check can fail)."""
    queries = dashboard_queries()
    assert len(queries) >= 12

    def check(exprs: list[str]) -> subprocess.CompletedProcess[str]:
        recorded = []
        for i, expr in enumerate(exprs):
            for variable, value in _GRAFANA.items():
                expr = expr.replace(variable, value)
            recorded.append({"record": f"modelyard:dashboard_query_{i}", "expr": expr})
        path = tmp_path / "queries.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
        return promtool("check", "rules", str(path))

    done = check(queries)
    assert done.returncode == 0, done.stdout + done.stderr
    assert check(["sum by (model (rate(modelyard_inference_requests_total[5m]))"]).returncode != 0


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    board = json.loads(dashboard())
    assert board["uid"] == "modelyard" and board["title"] == "ModelYard"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "tenant", "model"} and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]  # Grafana's grid is 24 wide
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_the_cli_writes_what_ships(tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["monitoring", "alerts"])
    assert done.exit_code == 0 and done.stdout == alert_rules()
    target = tmp_path / "board.json"
    done = runner.invoke(app, ["monitoring", "dashboard", "-o", str(target)])
    assert done.exit_code == 0, done.output
    assert target.read_text() == dashboard() and "wrote the dashboard" in done.output
    done = runner.invoke(app, ["monitoring", "alerts", "-o", str(tmp_path / "absent" / "alerts.yml")])
    assert done.exit_code == 2 and "cannot write" in done.output and "folder you may write" in done.output
    assert not (tmp_path / "absent").exists()
