"""Compare versions of a model: ``GET /api/v1/models/{name}/compare``."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query
from pydantic import BaseModel

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.routing import JsonBodyRoute
from modelyard.api.schemas import ERRORS
from modelyard.core.optimization import parse_versions

__all__ = ["router"]

router = APIRouter(
    prefix="/api/v1/models", tags=["models"], responses={**ERRORS, 503: ERRORS[429]}, route_class=JsonBodyRoute
)


class CompareRow(BaseModel):
    version: int
    stage: str
    method: str | None
    optimized_from: int | None
    metric: float
    file_bytes: int
    parameters: int
    nonzero_parameters: int
    sparsity: float
    latency: dict[str, dict[str, float]]
    throughput: float
    compute_seconds_per_million: float | None
    cost_per_million: float | None


class CompareOut(BaseModel):
    model: str
    dataset: str
    target: str
    metric: str
    higher_is_better: bool
    evaluation_rows: int
    price_per_core_hour: float
    rows: list[CompareRow]


@router.get(
    "/{name}/compare", response_model=CompareOut,
    summary="Evaluate and measure versions on one dataset (metric, size, latency, throughput, cost)",
)
async def compare_versions(
    name: str, platform: PlatformDep, principal: PrincipalDep,
    versions: Annotated[str, Query(description="comma-separated version numbers, e.g. 1,2,3")],
    dataset: Annotated[str, Query(description='a dataset name or "builtin:digits"')],
    target: Annotated[str | None, Query(description="target column (default: target, else label)")] = None,
    iterations: Annotated[int, Query(ge=5, le=1000, description="timed calls per version and batch size")] = 100,
) -> Any:
    """Latency is measured in-process on this server, one thread per model, the versions
    interleaved call by call; cost per million predictions = compute-seconds (at the best batch
    size measured) / 3600 x ``price_per_core_hour``. At most ``compare_max_rows`` rows are evaluated."""
    principal.require("models:read")
    numbers = parse_versions(versions)
    return await anyio.to_thread.run_sync(
        lambda: platform.optimization.compare(principal.tenant_id, name, numbers, dataset, target=target,
                                              iterations=iterations)
    )
