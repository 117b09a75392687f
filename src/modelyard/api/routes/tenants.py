"""Tenants (admins only): ``/api/v1/tenants``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, Field

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.routing import JsonBodyRoute
from modelyard.api.schemas import ERRORS, PageOut, StrictBody, page_out
from modelyard.core.pages import PageRequest
from modelyard.core.tenants import Quotas, TenantInfo

__all__ = ["router", "tenant_out", "requires"]


def requires(action: str) -> Any:
    """A dependency that checks ``action`` before the body is validated, so a caller whose role
    may not act gets 403 whatever it sends (not a 422 that hints at the schema)."""

    async def check(principal: PrincipalDep) -> None:
        principal.require(action)

    return Depends(check)


router = APIRouter(
    prefix="/api/v1/tenants", tags=["tenants"], responses=ERRORS, dependencies=[requires("tenants:manage")],
    route_class=JsonBodyRoute,
)


_BIG = 2**62


class QuotasBody(StrictBody):
    """Quotas; ``null`` (or absent on create) means unlimited."""

    requests_per_second: float | None = Field(
        default=None, gt=0, le=1_000_000, description="requests a second over all the tenant's keys, over the cluster")
    requests_per_day: int | None = Field(default=None, ge=0, le=_BIG)
    tokens_per_day: int | None = Field(default=None, ge=0, le=_BIG)
    stored_bytes: int | None = Field(default=None, ge=0, le=_BIG)
    concurrent_jobs: int | None = Field(default=None, ge=0, le=1_000_000)
    training_hours_per_month: float | None = Field(default=None, ge=0, le=1e9)


class TenantCreate(StrictBody):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    quotas: QuotasBody | None = None


class TenantPatch(StrictBody):
    disabled: bool | None = None
    quotas: QuotasBody | None = Field(default=None, description="quotas to change; null values mean unlimited")


class QuotasOut(BaseModel):
    requests_per_second: float | None
    requests_per_day: int | None
    tokens_per_day: int | None
    stored_bytes: int | None
    concurrent_jobs: int | None
    training_hours_per_month: float | None


class TenantOut(BaseModel):
    id: str
    name: str
    disabled: bool
    created_at: datetime
    quotas: QuotasOut


def tenant_out(t: TenantInfo) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "disabled": t.disabled, "created_at": t.created_at,
            "quotas": t.quotas.to_dict()}


@router.post("", response_model=TenantOut, status_code=status.HTTP_201_CREATED, summary="Create a tenant")
async def create_tenant(body: TenantCreate, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("tenants:manage")
    quotas = Quotas(**body.quotas.model_dump()) if body.quotas else None
    info = await anyio.to_thread.run_sync(lambda: platform.tenants.create(body.name, quotas=quotas))
    return tenant_out(info)


@router.get("", response_model=PageOut[TenantOut], summary="List tenants")
async def list_tenants(
    platform: PlatformDep, principal: PrincipalDep,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1, page_size: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Any:
    principal.require("tenants:manage")
    result = await anyio.to_thread.run_sync(platform.tenants.list, PageRequest(page, page_size))
    return page_out(result, tenant_out)


@router.get("/{name}", response_model=TenantOut, summary="Get a tenant")
async def get_tenant(name: str, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("tenants:manage")
    return tenant_out(await anyio.to_thread.run_sync(platform.tenants.get, name))


@router.patch("/{name}", response_model=TenantOut, summary="Disable/enable a tenant or change its quotas")
async def patch_tenant(name: str, body: TenantPatch, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("tenants:manage")
    quotas = body.quotas.model_dump(exclude_unset=True) if body.quotas else None

    def work() -> TenantInfo:
        info = platform.tenants.update(name, disabled=body.disabled, quotas=quotas)
        platform.limits.forget()
        return info

    return tenant_out(await anyio.to_thread.run_sync(work))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a tenant")
async def delete_tenant(
    name: str, platform: PlatformDep, principal: PrincipalDep,
    force: Annotated[bool, Query(description="also delete the tenant's models and keys")] = False,
) -> None:
    principal.require("tenants:manage")
    await anyio.to_thread.run_sync(lambda: platform.tenants.delete(name, force=force))
