"""What a team needs to watch ModelYard with the tools it already runs: Prometheus alerting rules
(``alerts.yml``) and a Grafana dashboard (``dashboard.json``) over the server's ``/metrics``.

Shipped with the package, so ``modelyard monitoring alerts`` and ``modelyard monitoring
dashboard`` write them wherever it is installed. ``docs/monitoring.md`` says what each alert
means and what to do about it; ``tests/monitoring/alerts_test.yml`` proves, with ``promtool``,
when each one fires.
"""

from __future__ import annotations

from importlib.resources import files

__all__ = ["alert_rules", "dashboard"]


def alert_rules() -> str:
    """The Prometheus rule file (YAML) of ModelYard's alerts."""
    return files(__package__).joinpath("alerts.yml").read_text(encoding="utf-8")


def dashboard() -> str:
    """The Grafana dashboard (JSON, for Grafana's import) of ModelYard's metrics."""
    return files(__package__).joinpath("dashboard.json").read_text(encoding="utf-8")
