"""``modelyard monitoring``: the Prometheus alerting rules and the Grafana dashboard for ModelYard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelyard.cli._common import err, handles_errors
from modelyard.errors import InvalidInput
from modelyard.monitoring import alert_rules, dashboard

__all__ = ["app"]

app = typer.Typer(
    name="monitoring",
    help=(
        "Watch ModelYard with Prometheus and Grafana: write the alerting rules and the dashboard "
        "that ship with it. Neither needs a server; point Prometheus at the server's `/metrics` "
        "(docs/monitoring.md)."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

OutputOption = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write to this file instead of standard output.", dir_okay=False)
]


def _write(text: str, output: Path | None, what: str) -> None:
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write {output}: {exc.strerror}; choose a file in a folder you may write") from None
    err().print(f"wrote {what} to {output}", highlight=False)


@app.command("alerts")
@handles_errors
def alerts(output: OutputOption = None) -> None:
    """Write the Prometheus rule file of ModelYard's alerts (server down, server errors, full queues,
    saturation, slow answers, long queue waits, canary rollbacks, shadow disagreement, dead workers,
    memory budget, eviction churn, quotas nearly or wholly used, slow first tokens).

        modelyard monitoring alerts -o /etc/prometheus/modelyard-alerts.yml

    Then name it under `rule_files:` in prometheus.yml, and check it with
    `promtool check rules /etc/prometheus/modelyard-alerts.yml`.
    """
    _write(alert_rules(), output, "the alerting rules")


@app.command("dashboard")
@handles_errors
def dashboard_(output: OutputOption = None) -> None:
    """Write the Grafana dashboard (JSON): traffic, errors, latency, queueing, batching, overload,
    memory, deployments, cache, tokens, quotas and time to the first token, filtered by tenant and model.

        modelyard monitoring dashboard -o modelyard-dashboard.json

    Import it in Grafana (Dashboards, New, Import) and pick your Prometheus data source.
    """
    _write(dashboard(), output, "the dashboard")
