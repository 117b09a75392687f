"""The ``train`` job: validate a request, train with the engine, register the ONNX model.

Request fields (hyper-parameters flat, or nested under ``"hyperparameters"``; one given both ways
with different values is refused):
``model_name`` (required), ``dataset`` (required: a dataset name or id, ``"builtin:digits"`` or
``{"builtin": "digits"}``), ``stage`` (default: ``production`` when the model has no production
version yet, else ``none``), ``description``, and every :class:`~modelyard.engine.trainer.TrainSpec`
field (``target`` defaults to ``"target"``, else ``"label"`` when the dataset has such a column).

On success the exported ONNX file becomes the next version of ``model_name`` with lineage (dataset
hash, job id, recipe, hyper-parameters, library versions) and the PyTorch safetensors weights and
JSON architecture are stored as blobs named in ``lineage["torch"]``. A job that resumes after a
crash never registers twice: a version whose lineage names the job is reused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelyard.core.jobs import ClaimedJob
from modelyard.core.names import check_name
from modelyard.core.registry import VersionInfo
from modelyard.errors import DatasetNotFound, ModelNotFound, ValidationFailed
from modelyard.jobs.context import JobContext
from modelyard.jobs.runners import Reporter

__all__ = ["TrainRunner", "SERVICE_FIELDS"]

#: Request fields that are not training hyper-parameters.
SERVICE_FIELDS = ("model_name", "dataset", "stage", "description", "hyperparameters")
_STAGES = ("none", "staging", "production", "archived")


class TrainRunner:
    """Runner of ``train`` jobs (see the module docstring for the request fields)."""

    type = "train"

    def prepare(self, ctx: JobContext, tenant_id: str, body: dict[str, Any]) -> dict[str, Any]:
        from modelyard.engine.trainer.spec import TrainSpec

        body = dict(body)
        model_name = body.pop("model_name", None)
        if model_name is None:
            raise ValidationFailed("model_name is required: the model the trained version joins",
                                   details={"field": "model_name"})
        check_name(model_name, field="model_name")
        if "dataset" not in body:
            raise ValidationFailed("dataset is required", details={"field": "dataset"})
        reference = body.pop("dataset")
        stage = body.pop("stage", None)
        if stage is not None and stage not in _STAGES:
            raise ValidationFailed(f"unknown stage {stage!r}; expected one of {', '.join(_STAGES)}",
                                   details={"field": "stage"})
        description = body.pop("description", "") or ""
        if not isinstance(description, str) or len(description) > 10_000:
            raise ValidationFailed("description must be a string of at most 10000 characters",
                                   details={"field": "description"})
        nested = body.pop("hyperparameters", None) or {}
        if not isinstance(nested, dict):
            raise ValidationFailed("hyperparameters must be an object", details={"field": "hyperparameters"})
        for key in sorted(set(nested) & set(body)):
            if nested[key] != body[key]:
                raise ValidationFailed(f"{key} is given twice (flat and under hyperparameters) with different "
                                       "values", details={"field": key})
        fields = {**nested, **body}
        try:
            info = ctx.datasets.resolve(tenant_id, reference)
        except DatasetNotFound as exc:
            raise ValidationFailed(exc.message, details={"field": "dataset"}) from exc
        if "target" not in fields:
            names = {c["name"] for c in info.columns}
            fields["target"] = "label" if "target" not in names and "label" in names else "target"
        spec = TrainSpec(**fields)
        table = ctx.datasets.load_table(info)
        spec.plan(table, max_workers=ctx.max_train_workers)
        return {
            "model_name": model_name,
            "dataset": info.reference,
            "dataset_id": info.id,
            "dataset_sha256": info.sha256,
            "stage": stage,
            "description": description,
            "spec": spec.to_dict(),
        }

    def run(self, ctx: JobContext, job: ClaimedJob, reporter: Reporter) -> dict[str, Any]:
        from modelyard.engine.trainer import DDPLauncher, LocalLauncher, TrainSpec

        params = job.params
        spec = TrainSpec.from_dict(params["spec"])
        info = ctx.datasets.resolve(job.tenant_id, params["dataset_id"])
        if info.sha256 != params["dataset_sha256"]:
            raise ValidationFailed("the dataset changed since the job was submitted", details={"field": "dataset"})
        table = ctx.datasets.load_table(info)
        workdir = ctx.workdir(job.id)
        if job.attempts > 1 and any(workdir.glob("checkpoint*")):
            reporter.log(f"attempt {job.attempts}: resuming from the last checkpoint")
        reporter.log(f"training {spec.recipe} on {info.reference} ({table.n_rows} rows), {spec.epochs} epochs")
        launcher: Any
        if spec.workers == 1:
            launcher = LocalLauncher(threads=ctx.settings.cores)
        else:
            launcher = DDPLauncher(max_workers=ctx.max_train_workers)

        def on_event(event: Any) -> None:
            reporter.progress(event.to_dict())

        result = launcher.run(spec, table, workdir=workdir, on_event=on_event, should_stop=reporter.should_stop)
        version = self._register(ctx, job, info.to_dict(), result)
        reporter.log(f"registered {version.model_name} version {version.version} ({version.stage})")
        torch_ref = version.lineage.get("torch", {})
        return {
            "model_name": version.model_name,
            "version": version.version,
            "stage": version.stage,
            "sha256": version.sha256,
            "metrics": result.metrics,
            "curves": result.curves,
            "epochs_completed": result.epochs_completed,
            "stopped_early": result.stopped_early,
            "task": result.task,
            "classes": list(result.classes),
            "blobs": [torch_ref.get("weights_sha256"), torch_ref.get("architecture_sha256")],
        }

    @staticmethod
    def _register(ctx: JobContext, job: ClaimedJob, dataset: dict[str, Any], result: Any) -> VersionInfo:
        params = job.params
        name = params["model_name"]
        existing = _version_of_job(ctx, job.tenant_id, name, job.id)
        if existing is not None:
            return existing
        weights = _store(ctx, result.torch_weights_path)
        architecture = _store(ctx, result.architecture_path)
        stage = params.get("stage")
        if stage is None:
            try:
                model = ctx.registry.get_model(job.tenant_id, name)
                stage = "none" if model.production_version is not None else "production"
            except ModelNotFound:
                stage = "production"
        lineage = {
            **result.lineage,
            "source": "training",
            "job_id": job.id,
            "dataset": {"reference": params["dataset"], "id": params["dataset_id"],
                        "sha256": params["dataset_sha256"], "n_rows": dataset.get("n_rows")},
            "torch": {"weights_sha256": weights, "architecture_sha256": architecture,
                      "format": "safetensors", "architecture": result.architecture},
            "classes": list(result.classes),
        }
        with open(result.onnx_path, "rb") as fh:
            staged = ctx.artifacts.stage_stream(fh, max_bytes=max(ctx.settings.max_upload_bytes, 1 << 34))
        return ctx.registry.register_version(
            tenant_id=job.tenant_id, model_name=name, staged=staged, fmt="onnx",
            description=params.get("description") or f"trained by job {job.id}",
            metrics=_jsonable(result.metrics), lineage=_jsonable(lineage), stage=stage,
        )


def _store(ctx: JobContext, path: Path) -> str:
    with open(path, "rb") as fh:
        staged = ctx.artifacts.stage_stream(fh, max_bytes=1 << 40)
    ctx.artifacts.commit(staged)
    return staged.sha256


def _version_of_job(ctx: JobContext, tenant_id: str, name: str, job_id: str) -> VersionInfo | None:
    from modelyard.core.pages import PageRequest

    try:
        page = ctx.registry.list_versions(tenant_id, name, PageRequest(1, 50))
    except ModelNotFound:
        return None
    for version in page.items:
        if version.lineage.get("job_id") == job_id:
            return version
    return None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
