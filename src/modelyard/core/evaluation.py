"""The ``evaluate`` job: a model version scored on a dataset, in the background.

``POST /api/v1/jobs`` with ``"type": "evaluate"``, request fields:

* ``model_name`` (or ``model``) and ``version`` (a number, ``"latest"`` or ``"production"``;
  default: the version the model serves, its production one, else its latest);
* ``dataset``: the dataset to score it on (a name, an id or ``"builtin:digits"``), and
  ``target``: its column of true values (default ``target``, else ``label`` when the dataset has
  that column);
* ``max_rows`` (optional): score only the first that many rows.

The version's inputs are fed from the dataset's columns as an optimization's guard feeds them
(``engine/optimizer/evaluate.py``): classification is scored by ``accuracy``, regression by
``mse``. Bad requests fail at submission with 422 naming the field (an unknown model, version or
dataset, a target the dataset lacks, columns that do not fit the model's inputs); the job
remembers the version's and the dataset's hashes, and fails rather than score another version
or dataset than the one asked for. Its result: the metric, its value, whether higher is better,
the rows scored, the task, the model's name and version, the dataset, and the seconds it took.
Evaluating changes nothing: the version, its metrics and the dataset stay as they are.
"""

from __future__ import annotations

import time
from typing import Any

from modelyard.core.job_inputs import check_fits, dataset_ref, job_dataset, resolve_version, target_column, torch_source
from modelyard.core.jobs import ClaimedJob
from modelyard.core.names import check_name
from modelyard.errors import ValidationFailed

__all__ = ["EvaluateRunner"]

_FIELDS = ("model_name", "model", "version", "dataset", "target", "max_rows")


class EvaluateRunner:
    """Runner of ``evaluate`` jobs (request fields: see the module docstring)."""

    type = "evaluate"

    def prepare(self, ctx: Any, tenant_id: str, body: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(body) - set(_FIELDS))
        if unknown:
            raise ValidationFailed(f"unknown field {unknown[0]!r} for an evaluate job; expected "
                                   f"{', '.join(_FIELDS)}", details={"field": unknown[0]})
        name = body.get("model_name") or body.get("model")
        if not name:
            raise ValidationFailed("model_name is required: the model whose version is evaluated",
                                   details={"field": "model_name"})
        check_name(name, field="model_name")
        version = resolve_version(ctx.registry, tenant_id, name, body.get("version"))
        if version.format != "onnx":
            raise ValidationFailed(f"version {version.version} is a {version.format!r} model; evaluation scores "
                                   "ONNX versions on tables", details={"field": "version"})
        max_rows = body.get("max_rows")
        if max_rows is not None and (type(max_rows) is not int or max_rows < 1):
            raise ValidationFailed(f"max_rows must be a whole number of rows, at least 1, not {max_rows!r}",
                                   details={"field": "max_rows"})
        if body.get("dataset") is None:
            raise ValidationFailed("dataset is required: the data to score the version on", details={"field": "dataset"})
        dataset = job_dataset(ctx, tenant_id, body["dataset"], "dataset")
        target = target_column(dataset, body.get("target"))
        source = torch_source(ctx, version)
        check_fits(ctx.artifacts.verified_path(version.sha256), ctx.datasets.load_table(dataset), target,
                   source[0] if source else None, "dataset")
        return {"model_name": name, "version": version.version, "sha256": version.sha256,
                "dataset": dataset_ref(dataset), "target": target, "max_rows": max_rows}

    def run(self, ctx: Any, job: ClaimedJob, reporter: Any) -> dict[str, Any]:
        from modelyard.engine.optimizer.evaluate import evaluate_onnx

        params = job.params
        name = params["model_name"]
        version = resolve_version(ctx.registry, job.tenant_id, name, params["version"])
        if version.sha256 != params["sha256"]:
            raise ValidationFailed("the version changed since the job was submitted", details={"field": "version"})
        ref = params["dataset"]
        dataset = ctx.datasets.resolve(job.tenant_id, ref["id"])
        if dataset.sha256 != ref["sha256"]:
            raise ValidationFailed("the dataset changed since the job was submitted", details={"field": "dataset"})
        rows = min(ref["n_rows"], params["max_rows"] or ref["n_rows"])
        reporter.log(f"evaluating {name} version {version.version} on {ref['reference']} ({rows:,} rows)")
        reporter.progress({"stage": "evaluating", "fraction": 0.0})
        started = time.perf_counter()
        source = torch_source(ctx, version)
        evaluation = evaluate_onnx(
            ctx.artifacts.verified_path(version.sha256), ctx.datasets.load_table(dataset), target=params["target"],
            architecture=source[0] if source else None, max_rows=params["max_rows"],
        )
        seconds = round(time.perf_counter() - started, 3)
        reporter.progress({"stage": "evaluated", "fraction": 1.0})
        reporter.log(f"{evaluation.metric}: {evaluation.value:.6g} over {evaluation.n_rows:,} rows in {seconds} s")
        return {**evaluation.to_dict(), "model_name": name, "version": version.version, "dataset": ref,
                "target": params["target"], "seconds": seconds}
