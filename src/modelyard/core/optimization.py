"""Optimization as a gated stage: the ``optimize`` job runner and the version comparison.

``optimize`` jobs (``POST /api/v1/jobs`` with ``"type": "optimize"``), request fields:

* ``model_name`` and ``version`` (a number, ``"latest"`` or ``"production"``): the source version;
* ``method`` + ``options`` for one step, or ``steps``: ``[{"method": ..., "options": {...}}, ...]``
  (``quantize-dynamic``, ``quantize-static``, ``prune``, ``fp16``; see docs/optimization.md);
* ``dataset``: the evaluation dataset (required); ``calibration_dataset`` and
  ``fine_tune_dataset`` (default: the evaluation dataset); ``target`` (default ``target``, else
  ``label`` when the dataset has that column);
* ``max_metric_drop`` (default 0.01): absolute accuracy, or relative MSE increase;
* ``force`` (default false): register even when the guard fails; ``stage`` of the new version
  (default ``none``); ``description``.

Bad requests fail at submission with ``ValidationFailed`` (422) naming the field. A job whose
guard fails ends ``failed`` with the report in ``error.details.report`` and registers nothing;
the source version is never modified. A successful job registers the next version of the model
with ``lineage.optimized_from``, the steps and datasets, and the report in ``metrics`` and
``lineage``; its result is the report plus the new version.

:class:`Optimization` also compares versions (:meth:`Optimization.compare`) on one dataset.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from modelyard.core.job_inputs import (
    check_fits, dataset_ref, job_dataset, resolve_version, target_column, torch_source,
)
from modelyard.core.jobs import ClaimedJob
from modelyard.core.names import check_name
from modelyard.core.registry import VersionInfo
from modelyard.errors import ModelNotFound, Unavailable, ValidationFailed, VersionNotFound

__all__ = ["OptimizeRunner", "Optimization", "DEFAULT_PRICE_PER_CORE_HOUR", "DEFAULT_COMPARE_MAX_ROWS",
           "MAX_COMPARE_VERSIONS"]

#: Used when ``Settings`` has no ``price_per_core_hour`` (USD per core-hour).
DEFAULT_PRICE_PER_CORE_HOUR = 0.05
#: Used when ``Settings`` has no ``compare_max_rows``: rows of the dataset a comparison evaluates.
DEFAULT_COMPARE_MAX_ROWS = 10_000
MAX_COMPARE_VERSIONS = 10
_STAGES = ("none", "staging", "production", "archived")
_FIELDS = ("model_name", "model", "version", "method", "options", "steps", "dataset", "calibration_dataset",
           "fine_tune_dataset", "target", "max_metric_drop", "force", "stage", "description")


def _setting(settings: Any, name: str, default: Any) -> Any:
    value = getattr(settings, name, None)
    return default if value is None else value


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class OptimizeRunner:
    """Runner of ``optimize`` jobs (request fields: see the module docstring)."""

    type = "optimize"

    def prepare(self, ctx: Any, tenant_id: str, body: dict[str, Any]) -> dict[str, Any]:
        from modelyard.engine.optimizer import check_max_metric_drop, parse_steps

        body = dict(body)
        unknown = sorted(set(body) - set(_FIELDS))
        if unknown:
            raise ValidationFailed(f"unknown field {unknown[0]!r} for an optimize job", details={"field": unknown[0]})
        name = body.get("model_name") or body.get("model")
        if not name:
            raise ValidationFailed("model_name is required: the model whose version is optimized",
                                   details={"field": "model_name"})
        check_name(name, field="model_name")
        if "version" not in body:
            raise ValidationFailed("version is required: the version to optimize", details={"field": "version"})
        source = resolve_version(ctx.registry, tenant_id, name, body["version"])
        if source.format != "onnx":
            raise ValidationFailed(f"version {source.version} is a {source.format!r} model; optimization works on "
                                   "ONNX versions", details={"field": "version"})
        if body.get("steps") is not None:
            if body.get("method") is not None:
                raise ValidationFailed("give either method (+ options) or steps, not both", details={"field": "steps"})
            if not isinstance(body["steps"], list):
                raise ValidationFailed("steps must be a list", details={"field": "steps"})
            raw_steps = body["steps"]
        else:
            if body.get("method") is None:
                raise ValidationFailed("method (or steps) is required", details={"field": "method"})
            options = body.get("options") or {}
            if not isinstance(options, dict):
                raise ValidationFailed("options must be an object", details={"field": "options"})
            raw_steps = [{"method": body["method"], "options": options}]
        try:
            steps = parse_steps(raw_steps)
        except ValidationFailed as exc:
            field_name = str(exc.details.get("field", "steps"))
            if body.get("steps") is None:
                field_name = field_name.replace("steps[0].", "").replace("steps[0]", "method")
            raise ValidationFailed(exc.message, details={**exc.details, "field": field_name}) from exc
        methods = [s.method for s in steps]
        torch_src = torch_source(ctx, source)
        if "prune" in methods and torch_src is None:
            raise ValidationFailed(
                f"prune needs the PyTorch source of the version; {name} version {source.version} is ONNX-only "
                "(uploaded). Prune a platform-trained version, or use quantize-dynamic / quantize-static / fp16",
                details={"field": "method"},
            )
        if any(m != "prune" for m in methods) and source.extra.get("quantized"):
            raise ValidationFailed(f"{name} version {source.version} is already quantized (int8)",
                                   details={"field": "method"})
        max_drop = check_max_metric_drop(body.get("max_metric_drop", 0.01))
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise ValidationFailed("force must be true or false", details={"field": "force"})
        stage = body.get("stage") or "none"
        if stage not in _STAGES:
            raise ValidationFailed(f"unknown stage {stage!r}; expected one of {', '.join(_STAGES)}",
                                   details={"field": "stage"})
        description = body.get("description") or ""
        if not isinstance(description, str) or len(description) > 10_000:
            raise ValidationFailed("description must be a string of at most 10000 characters",
                                   details={"field": "description"})
        if "dataset" not in body:
            raise ValidationFailed("dataset is required: the evaluation dataset", details={"field": "dataset"})
        evaluation = job_dataset(ctx, tenant_id, body["dataset"], "dataset")
        target = target_column(evaluation, body.get("target"))
        onnx_path = ctx.artifacts.verified_path(source.sha256)
        architecture = torch_src[0] if torch_src else None
        check_fits(onnx_path, ctx.datasets.load_table(evaluation), target, architecture, "dataset")
        extra: dict[str, Any] = {}
        for key, used in (("calibration_dataset", "quantize-static" in methods),
                          ("fine_tune_dataset", any(s.method == "prune" and s.options.get("fine_tune_epochs")
                                                    for s in steps))):
            if body.get(key) is None:
                if used:
                    extra[key] = dataset_ref(evaluation)
                continue
            info = job_dataset(ctx, tenant_id, body[key], key)
            check_fits(onnx_path, ctx.datasets.load_table(info), target, architecture, key)
            extra[key] = dataset_ref(info)
        return {
            "model_name": name,
            "version": source.version,
            "source_sha256": source.sha256,
            "steps": [s.to_dict() for s in steps],
            "dataset": dataset_ref(evaluation),
            **extra,
            "target": target,
            "max_metric_drop": max_drop,
            "force": force,
            "stage": stage,
            "description": description,
        }

    def run(self, ctx: Any, job: ClaimedJob, reporter: Any) -> dict[str, Any]:
        from modelyard.engine.optimizer import Source, Step, optimize
        from modelyard.engine.trainer.errors import TrainingCancelled

        params = job.params
        name = params["model_name"]
        source = resolve_version(ctx.registry, job.tenant_id, name, params["version"])
        if source.sha256 != params["source_sha256"]:
            raise ValidationFailed("the source version changed since the job was submitted",
                                   details={"field": "version"})
        existing = _version_of_job(ctx, job.tenant_id, name, job.id)
        if existing is not None:  # a resumed job that registered before its worker died
            return {"model_name": name, "version": existing.version, "stage": existing.stage,
                    "report": existing.lineage.get("report"), "registered": True,
                    "blobs": _blobs_of(existing)}
        tables = {}
        for key in ("dataset", "calibration_dataset", "fine_tune_dataset"):
            ref = params.get(key)
            if ref is None:
                continue
            info = ctx.datasets.resolve(job.tenant_id, ref["id"])
            if info.sha256 != ref["sha256"]:
                raise ValidationFailed(f"the {key.replace('_', ' ')} changed since the job was submitted",
                                       details={"field": key})
            tables[key] = ctx.datasets.load_table(info)
        torch_src = torch_source(ctx, source)
        src = Source(onnx_path=ctx.artifacts.verified_path(source.sha256),
                     architecture=torch_src[0] if torch_src else None,
                     weights_path=torch_src[1] if torch_src else None)
        steps = [Step(method=s["method"], options=s.get("options") or {}) for s in params["steps"]]
        reporter.log(f"optimizing {name} version {source.version}: "
                     + " -> ".join(s.method for s in steps))

        def on_progress(stage: str, fraction: float) -> None:
            if reporter.should_stop():
                raise TrainingCancelled(f"optimization was cancelled before {stage}")
            reporter.progress({"stage": stage, "fraction": round(fraction, 4)})

        workdir = ctx.workdir(job.id)
        result = optimize(
            src, steps, evaluation=tables["dataset"], workdir=workdir, max_metric_drop=params["max_metric_drop"],
            target=params["target"], calibration=tables.get("calibration_dataset"),
            fine_tune=tables.get("fine_tune_dataset"),
            max_eval_rows=int(_setting(ctx.settings, "compare_max_rows", DEFAULT_COMPARE_MAX_ROWS)),
            on_progress=on_progress,
        )
        report = {"source": {"model": name, "version": source.version}, **_jsonable(result.report)}
        reporter.log(
            f"{report['metric']}: {report['before']['metric']:.4g} -> {report['after']['metric']:.4g} "
            f"(drop {report['metric_drop']:.4g}, allowed {report['max_metric_drop']:.4g}); "
            f"size {report['before']['file_bytes']} -> {report['after']['file_bytes']} bytes"
        )
        if not result.guard_held and not params["force"]:
            raise ValidationFailed(
                f"the metric guard failed: {report['metric']} got worse by {report['metric_drop']:.4g} "
                f"(max_metric_drop {report['max_metric_drop']:.4g}); nothing was registered",
                details={"report": report},
            )
        version = self._register(ctx, job, source, result, report)
        reporter.log(f"registered {name} version {version.version} ({version.stage})")
        return {"model_name": name, "version": version.version, "stage": version.stage, "sha256": version.sha256,
                "report": report, "registered": True, "blobs": _blobs_of(version)}

    @staticmethod
    def _register(ctx: Any, job: ClaimedJob, source: VersionInfo, result: Any, report: dict[str, Any]) -> VersionInfo:
        params = job.params
        methods = [s["method"] for s in params["steps"]]
        lineage: dict[str, Any] = {
            "source": "optimization",
            "job_id": job.id,
            "optimized_from": {"model": source.model_name, "version": source.version, "sha256": source.sha256},
            "method": "+".join(methods),
            "steps": params["steps"],
            "datasets": {k: params[k] for k in ("dataset", "calibration_dataset", "fine_tune_dataset") if params.get(k)},
            "target": params["target"],
            "max_metric_drop": params["max_metric_drop"],
            "forced": bool(params["force"] and not result.guard_held),
            "report": report,
        }
        for key in ("task", "classes", "features", "recipe"):
            if key in source.lineage:
                lineage[key] = source.lineage[key]
        if result.weights_path is not None and result.architecture is not None:
            weights = _store(ctx, result.weights_path)
            arch_path = Path(result.weights_path).parent / "architecture.json"
            arch_sha = _store(ctx, arch_path)
            lineage["torch"] = {"weights_sha256": weights, "architecture_sha256": arch_sha, "format": "safetensors",
                                "architecture": result.architecture}
        metrics = {
            report["metric"]: report["after"]["metric"],
            "optimization": {
                "metric": report["metric"], "before": report["before"]["metric"], "after": report["after"]["metric"],
                "metric_drop": report["metric_drop"], "guard_held": report["guard_held"],
                "file_bytes": report["after"]["file_bytes"], "parameters": report["after"]["parameters"],
                "sparsity": report["after"]["sparsity"], "latency": report["after"]["latency"],
                "ratios": report["ratios"],
            },
        }
        with open(result.onnx_path, "rb") as fh:
            staged = ctx.artifacts.stage_stream(fh, max_bytes=1 << 40)
        return cast(VersionInfo, ctx.registry.register_version(
            tenant_id=job.tenant_id, model_name=source.model_name, staged=staged, fmt="onnx",
            description=params.get("description") or f"{'+'.join(methods)} of version {source.version} (job {job.id})",
            metrics=_jsonable(metrics), lineage=_jsonable(lineage), stage=params["stage"],
        ))


def _store(ctx: Any, path: Path) -> str:
    with open(path, "rb") as fh:
        staged = ctx.artifacts.stage_stream(fh, max_bytes=1 << 40)
    ctx.artifacts.commit(staged)
    return str(staged.sha256)


def _blobs_of(version: VersionInfo) -> list[str]:
    torch_ref = version.lineage.get("torch") or {}
    return [s for s in (torch_ref.get("weights_sha256"), torch_ref.get("architecture_sha256")) if s]


def _version_of_job(ctx: Any, tenant_id: str, name: str, job_id: str) -> VersionInfo | None:
    from modelyard.core.pages import PageRequest

    try:
        page = ctx.registry.list_versions(tenant_id, name, PageRequest(1, 50))
    except ModelNotFound:
        return None
    return next((v for v in page.items if v.lineage.get("job_id") == job_id), None)


def parse_versions(value: str | list[Any]) -> list[int]:
    """``"1,2,3"`` (or a list) as distinct version numbers, in the given order."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    out: list[int] = []
    for part in parts:
        text = str(part).strip()
        if not text:
            continue
        if not text.isdigit() or int(text) < 1:
            raise ValidationFailed(f"{text!r} is not a version number", details={"field": "versions"})
        if int(text) not in out:
            out.append(int(text))
    if not out:
        raise ValidationFailed("list the versions to compare, e.g. versions=1,2,3", details={"field": "versions"})
    if len(out) > MAX_COMPARE_VERSIONS:
        raise ValidationFailed(f"compare at most {MAX_COMPARE_VERSIONS} versions at once", details={"field": "versions"})
    return out


@dataclass
class Optimization:
    """Compares versions of a model on one dataset; at most ``concurrent`` comparisons at a time
    (more answer 503 with Retry-After), each bounded to ``max_rows`` rows of the dataset."""

    registry: Any
    datasets: Any
    artifacts: Any
    settings: Any
    concurrent: int = 1
    _gate: threading.BoundedSemaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._gate = threading.BoundedSemaphore(max(1, self.concurrent))

    @property
    def price_per_core_hour(self) -> float:
        return float(_setting(self.settings, "price_per_core_hour", DEFAULT_PRICE_PER_CORE_HOUR))

    @property
    def max_rows(self) -> int:
        return int(_setting(self.settings, "compare_max_rows", DEFAULT_COMPARE_MAX_ROWS))

    def compare(self, tenant_id: str, name: str, versions: list[int], dataset: Any, *, target: str | None = None,
                iterations: int = 100) -> dict[str, Any]:
        """Evaluate and measure ``versions`` of ``name`` on ``dataset`` in one run (blocking: call it
        off the event loop). Returns the table: per version metric, size, parameters, sparsity,
        latency p50/p99 at batch 1 and 32, throughput, compute-seconds and cost per million
        predictions (at batch 32, one core, ``price_per_core_hour``)."""
        from modelyard.engine.optimizer import evaluate_onnx, measure_many, model_facts
        from modelyard.engine.optimizer.evaluate import feed_from_table, limit_rows
        from modelyard.engine.optimizer.measure import session

        infos = []
        for v in versions:
            try:
                info = self.registry.get_version(tenant_id, name, v)
            except VersionNotFound as exc:
                raise ValidationFailed(exc.message, details={"field": "versions"}) from exc
            if info.format != "onnx":
                raise ValidationFailed(f"version {v} is a {info.format!r} model; compare works on ONNX versions",
                                       details={"field": "versions"})
            infos.append(info)
        ds = job_dataset(self, tenant_id, dataset, "dataset")
        target = target_column(ds, target)
        if not self._gate.acquire(timeout=1.0):
            raise Unavailable("another comparison is running; try again shortly", retry_after=5)
        try:
            table = limit_rows(self.datasets.load_table(ds), self.max_rows)
            if target not in table:
                raise ValidationFailed(f"the dataset has no target column {target!r}", details={"field": "target"})
            paths, archs, evals = {}, {}, {}
            for info in infos:
                key = str(info.version)
                paths[key] = self.artifacts.verified_path(info.sha256)
                torch_ref = info.lineage.get("torch") or {}
                archs[key] = torch_ref.get("architecture")
                try:
                    evals[key] = evaluate_onnx(paths[key], table, target=target, architecture=archs[key])
                except ValidationFailed as exc:
                    raise ValidationFailed(f"version {info.version}: {exc.message}",
                                           details={**exc.details, "version": info.version}) from exc
            first = str(infos[0].version)
            feed = feed_from_table(session(paths[first]).get_inputs(), limit_rows(table, 64), target=target,
                                   architecture=archs[first])
            timings = measure_many(paths, feed, iterations=iterations, budget_s=10.0)
        finally:
            self._gate.release()
        price = self.price_per_core_hour
        rows = []
        for info in infos:
            key = str(info.version)
            lat = {str(t.batch): t.to_dict() for t in timings[key]}
            best = max(timings[key], key=lambda t: t.throughput)
            compute_s = 1e6 / best.throughput if best.throughput else None  # one thread = one core
            rows.append({
                "version": info.version, "stage": info.stage, "method": info.lineage.get("method"),
                "optimized_from": (info.lineage.get("optimized_from") or {}).get("version"),
                "metric": evals[key].value, **model_facts(paths[key]).to_dict(), "latency": lat,
                "throughput": best.throughput,
                "compute_seconds_per_million": compute_s,
                "cost_per_million": None if compute_s is None else compute_s / 3600.0 * price,
            })
        return {
            "model": name, "dataset": ds.reference, "target": target, "metric": evals[first].metric,
            "higher_is_better": evals[first].higher_is_better, "evaluation_rows": table.n_rows,
            "price_per_core_hour": price, "rows": rows,
        }
