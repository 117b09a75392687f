"""What a job's request names, resolved and checked at submission, for the job runners that
read models and datasets (``optimize``, ``evaluate``): a model's version, a dataset, its target
column, a platform-trained version's PyTorch source, and whether a table fits a model's inputs.
Each failure is a :class:`ValidationFailed` naming the request's field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from modelyard.core.registry import VersionInfo
from modelyard.errors import DatasetNotFound, ModelNotFound, ValidationFailed, VersionNotFound

__all__ = ["check_fits", "dataset_ref", "job_dataset", "resolve_version", "target_column", "torch_source"]


def resolve_version(registry: Any, tenant_id: str, name: str, version: Any, field_name: str = "version") -> VersionInfo:
    """The version ``version`` names: a number, ``"latest"`` (the highest number),
    ``"production"`` (the latest in that stage) or ``None`` (the one the model serves: its
    production version, else its latest)."""
    if version is not None and (isinstance(version, bool) or not isinstance(version, (int, str))):
        raise ValidationFailed("version must be a number, 'latest' or 'production'", details={"field": field_name})
    try:
        if version == "latest":
            latest = registry.get_model(tenant_id, name).latest_version
            if latest is None:
                raise VersionNotFound(f"model {name!r} has no versions")
            return cast(VersionInfo, registry.get_version(tenant_id, name, latest))
        served = version is None or version == "production"
        info = cast(VersionInfo, registry.resolve(tenant_id, name, None if served else str(version)))
    except ModelNotFound as exc:
        raise ValidationFailed(exc.message, details={"field": "model_name"}) from exc
    except VersionNotFound as exc:
        raise ValidationFailed(exc.message, details={"field": field_name}) from exc
    if version == "production" and info.stage != "production":
        raise ValidationFailed(f"model {name!r} has no version in stage production", details={"field": field_name})
    return info


def job_dataset(ctx: Any, tenant_id: str, reference: Any, field_name: str) -> Any:
    try:
        return ctx.datasets.resolve(tenant_id, reference)
    except DatasetNotFound as exc:
        raise ValidationFailed(exc.message, details={"field": field_name}) from exc
    except ValidationFailed as exc:
        raise ValidationFailed(exc.message, details={"field": field_name}) from exc


def dataset_ref(info: Any) -> dict[str, Any]:
    return {"reference": info.reference, "id": info.id, "sha256": info.sha256, "n_rows": info.n_rows}


def target_column(info: Any, requested: Any) -> str:
    if requested is not None:
        if not isinstance(requested, str) or not requested:
            raise ValidationFailed("target must be a column name", details={"field": "target"})
        return requested
    names = {c["name"] for c in info.columns}
    return "label" if "target" not in names and "label" in names else "target"


def torch_source(ctx: Any, version: VersionInfo) -> tuple[dict[str, Any], Path] | None:
    torch_ref = version.lineage.get("torch") or {}
    weights = torch_ref.get("weights_sha256")
    if not weights:
        return None
    architecture = torch_ref.get("architecture")
    if architecture is None and torch_ref.get("architecture_sha256"):
        architecture = json.loads(ctx.artifacts.verified_path(torch_ref["architecture_sha256"]).read_text())
    if architecture is None:
        return None
    return architecture, ctx.artifacts.verified_path(weights)


def check_fits(onnx_path: Path, table: Any, target: str, architecture: dict[str, Any] | None, field_name: str) -> None:
    from modelyard.engine.optimizer.evaluate import feed_from_table, limit_rows
    from modelyard.engine.optimizer.measure import session

    if target not in table:
        raise ValidationFailed(f"the {field_name.replace('_', ' ')} has no target column {target!r}",
                               details={"field": "target" if field_name == "dataset" else field_name})
    try:
        feed_from_table(session(onnx_path).get_inputs(), limit_rows(table, 8), target=target, architecture=architecture)
    except ValidationFailed as exc:
        raise ValidationFailed(f"the {field_name.replace('_', ' ')} does not fit the model's inputs: {exc.message}",
                               details={**exc.details, "field": field_name}) from exc
