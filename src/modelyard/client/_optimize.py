"""Optimization from the SDK: ``client.optimize.run(...)``, ``.wait(...)``, ``.compare(...)``.

Optimize jobs run on the server's job workers (``POST /api/v1/jobs`` with ``type: optimize``);
this resource submits them, polls them and returns frozen dataclasses. A job that failed (its
metric guard refused the result, say) raises the typed error it failed with, whose ``details``
carry the report (``exc.details["report"]``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from modelyard.client._transport import Transport
from modelyard.errors import DeadlineExceeded, ModelYardError, error_for_code

__all__ = ["Optimize", "OptimizeJob", "Comparison"]

_TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class OptimizeJob:
    """An optimize job: ``state`` queued | running | succeeded | failed | cancelled; ``result``
    (on success: ``version``, ``report``...), ``error`` (on failure: ``code``, ``message``,
    ``details.report`` when the guard refused), ``progress`` (latest ``{"stage", "fraction"}``)."""

    id: str
    state: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    progress: dict[str, Any] | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OptimizeJob:
        return cls(id=d["id"], state=d["state"], params=d.get("params") or {}, result=d.get("result"),
                   error=d.get("error"), progress=d.get("progress"))

    @property
    def done(self) -> bool:
        return self.state in _TERMINAL

    @property
    def version(self) -> int | None:
        """The registered version (when the job succeeded)."""
        return None if self.result is None else self.result.get("version")

    @property
    def report(self) -> dict[str, Any] | None:
        """Sizes, parameters, latency, metric before/after, drop and guard, on success or refusal."""
        if self.result is not None:
            return self.result.get("report")
        if self.error is not None:
            return (self.error.get("details") or {}).get("report")
        return None

    def raise_for_state(self) -> OptimizeJob:
        """Raise the typed error of a failed/cancelled job; return ``self`` otherwise."""
        if self.state == "failed" and self.error:
            cls = error_for_code(str(self.error.get("code", "internal")))
            raise cls(str(self.error.get("message", "the job failed")), details=self.error.get("details"))
        if self.state == "cancelled":
            raise ModelYardError(f"job {self.id} was cancelled")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "params": self.params, "result": self.result,
                "error": self.error, "progress": self.progress}


@dataclass(frozen=True)
class Comparison:
    """One table comparing versions on one dataset (``rows``: one dict per version with
    ``metric``, ``file_bytes``, ``parameters``, ``sparsity``, ``latency``, ``throughput``,
    ``compute_seconds_per_million``, ``cost_per_million``)."""

    model: str
    dataset: str
    metric: str
    higher_is_better: bool
    evaluation_rows: int
    price_per_core_hour: float
    rows: list[dict[str, Any]]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Comparison:
        return cls(model=d["model"], dataset=d["dataset"], metric=d["metric"],
                   higher_is_better=bool(d["higher_is_better"]), evaluation_rows=int(d["evaluation_rows"]),
                   price_per_core_hour=float(d["price_per_core_hour"]), rows=list(d["rows"]))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "metric": self.metric,
                "higher_is_better": self.higher_is_better, "evaluation_rows": self.evaluation_rows,
                "price_per_core_hour": self.price_per_core_hour, "rows": self.rows}


class Optimize:
    """Optimize versions and compare them. Get it as ``client.optimize``.

    Example::

        job = client.optimize.run("digits", version=1, method="quantize-dynamic",
                                  dataset="builtin:digits", max_metric_drop=0.01)
        print(job.version, job.report["ratios"])
        table = client.optimize.compare("digits", [1, job.version], dataset="builtin:digits")
        client.models.promote("digits", job.version)
    """

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def submit(
        self,
        model: str,
        *,
        version: int | str,
        dataset: str,
        method: str | None = None,
        options: dict[str, Any] | None = None,
        steps: Sequence[dict[str, Any]] | None = None,
        max_metric_drop: float = 0.01,
        calibration_dataset: str | None = None,
        fine_tune_dataset: str | None = None,
        target: str | None = None,
        force: bool = False,
        stage: str | None = None,
        description: str | None = None,
    ) -> OptimizeJob:
        """Queue an optimize job (validated at once: bad input raises ``ValidationFailed``)."""
        body: dict[str, Any] = {"type": "optimize", "model_name": model, "version": version, "dataset": dataset,
                                "max_metric_drop": max_metric_drop, "force": force}
        if steps is not None:
            body["steps"] = [dict(s) for s in steps]
        else:
            body["method"] = method
            body["options"] = dict(options or {})
        for key, value in (("calibration_dataset", calibration_dataset), ("fine_tune_dataset", fine_tune_dataset),
                           ("target", target), ("stage", stage), ("description", description)):
            if value is not None:
                body[key] = value
        return OptimizeJob.from_json(self._t.post("/api/v1/jobs", json=body))

    def get(self, job_id: str) -> OptimizeJob:
        """The job now."""
        return OptimizeJob.from_json(self._t.get(f"/api/v1/jobs/{quote(job_id, safe='')}"))

    def wait(self, job_id: str, *, timeout: float = 3600.0, poll: float = 0.5) -> OptimizeJob:
        """Poll until the job ends; ``DeadlineExceeded`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.done:
                return job
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"job {job_id} did not finish within {timeout:g} s (state {job.state})")
            time.sleep(poll)

    def run(self, model: str, *, timeout: float = 3600.0, **kwargs: Any) -> OptimizeJob:
        """:meth:`submit` then :meth:`wait`; raises the job's typed error when it failed."""
        job = self.submit(model, **kwargs)
        return self.wait(job.id, timeout=timeout).raise_for_state()

    def compare(self, model: str, versions: Sequence[int], *, dataset: str, target: str | None = None,
                iterations: int | None = None) -> Comparison:
        """Evaluate and measure ``versions`` of ``model`` on ``dataset`` on the server, in one run."""
        params = {"versions": ",".join(str(int(v)) for v in versions), "dataset": dataset, "target": target,
                  "iterations": iterations}
        return Comparison.from_json(self._t.get(f"/api/v1/models/{quote(model, safe='')}/compare", params=params))
