"""Job execution: the worker processes that claim jobs from the database queue and run them.

``JOB_RUNNERS`` maps a job type to its :class:`~modelyard.jobs.runners.JobRunner`; a new kind of
job (``optimize``, ``evaluate``) adds one entry there and nothing else changes. Nothing here is
imported by the CLI or the SDK; torch is imported only when a training job runs.
"""

from modelyard.jobs.context import JobContext
from modelyard.jobs.runners import JOB_RUNNERS, JobRunner, Reporter, runner_for

__all__ = ["JOB_RUNNERS", "JobRunner", "JobContext", "Reporter", "runner_for"]
