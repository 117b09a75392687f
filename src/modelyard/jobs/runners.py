"""The job-runner contract and the registry of runners by job type.

A runner has two halves: ``prepare`` runs in the API process when a job is submitted (validate
the request against the datasets and limits, return the JSON parameters to queue, raising
``ValidationFailed`` naming the field or column), and ``run`` runs in a worker process (do the
work, report through the :class:`Reporter`, return the JSON result or raise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from modelyard.core.jobs import ClaimedJob
from modelyard.errors import ValidationFailed
from modelyard.jobs.context import JobContext

__all__ = ["JobRunner", "Reporter", "JOB_RUNNERS", "runner_for"]


class Reporter(Protocol):
    """How a running job talks back: progress events, log lines, and whether to stop."""

    def progress(self, data: dict[str, Any]) -> None: ...

    def log(self, message: str, *, level: str = "info") -> None: ...

    def should_stop(self) -> bool: ...


class JobRunner(Protocol):
    type: str

    def prepare(self, ctx: JobContext, tenant_id: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def run(self, ctx: JobContext, job: ClaimedJob, reporter: Reporter) -> dict[str, Any]: ...


def _train() -> JobRunner:
    from modelyard.jobs.train import TrainRunner

    return TrainRunner()


#: job type -> factory of its runner (imported lazily)
JOB_RUNNERS: dict[str, Callable[[], JobRunner]] = {
    "train": _train,
    "optimize": lambda: __import__("modelyard.core.optimization", fromlist=["OptimizeRunner"]).OptimizeRunner(),
    "evaluate": lambda: __import__("modelyard.core.evaluation", fromlist=["EvaluateRunner"]).EvaluateRunner(),
}


def runner_for(job_type: str) -> JobRunner:
    """The runner of ``job_type``; ``ValidationFailed`` naming ``type`` when there is none."""
    factory = JOB_RUNNERS.get(job_type)
    if factory is None:
        raise ValidationFailed(
            f"unknown job type {job_type!r}; expected one of {', '.join(sorted(JOB_RUNNERS))}",
            details={"field": "type"},
        )
    return factory()
