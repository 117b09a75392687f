"""Usage reports: ``GET /api/v1/usage`` (JSON or ``?format=csv``). Admins see every tenant;
everyone else sees their own tenant only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.routing import JsonBodyRoute
from modelyard.api.schemas import ERRORS
from modelyard.core.usage import UsageRecord, price, to_csv
from modelyard.errors import PermissionDenied

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/usage", tags=["usage"], responses=ERRORS, route_class=JsonBodyRoute)


class UsageItem(BaseModel):
    tenant: str
    model: str
    hour: datetime
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    compute_s: float
    cost: float


class UsageTotals(BaseModel):
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    compute_s: float
    cost: float


class UsageOut(BaseModel):
    items: list[UsageItem]
    totals: UsageTotals
    prices: dict[str, float]


def totals(records: list[UsageRecord], prices: dict[str, float]) -> dict[str, Any]:
    sums = {
        "requests": sum(r.requests for r in records),
        "errors": sum(r.errors for r in records),
        "input_tokens": sum(r.input_tokens for r in records),
        "output_tokens": sum(r.output_tokens for r in records),
        "compute_s": round(sum(r.compute_s for r in records), 6),
    }
    sums["cost"] = price(prices, sums["requests"], sums["input_tokens"], sums["output_tokens"], sums["compute_s"])
    return sums


@router.get(
    "", response_model=UsageOut, summary="Usage per tenant, model and hour",
    responses={200: {"content": {"text/csv": {}}}},
)
async def get_usage(
    platform: PlatformDep,
    principal: PrincipalDep,
    tenant: Annotated[str | None, Query(max_length=64, description="admins: only this tenant (name)")] = None,
    model: Annotated[str | None, Query(max_length=128, description="only this model or deployment")] = None,
    start: Annotated[datetime | None, Query(description="from this time (ISO 8601)")] = None,
    end: Annotated[datetime | None, Query(description="before this time (ISO 8601)")] = None,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Any:
    principal.require("usage:read")

    def work() -> list[UsageRecord]:
        tenant_id: str | None = principal.tenant_id
        if principal.is_admin:
            tenant_id = platform.tenants.get(tenant).id if tenant is not None else None
        elif tenant is not None and tenant not in (principal.tenant_name, principal.tenant_id):
            raise PermissionDenied("only admins may read other tenants' usage")
        return platform.usage.query(tenant_id=tenant_id, model=model, start=start, end=end)

    records = await anyio.to_thread.run_sync(work)
    if format == "csv":
        return Response(to_csv(records), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="usage.csv"'})
    prices = platform.usage.prices
    return {"items": [r.to_dict() for r in records], "totals": totals(records, prices), "prices": prices}
