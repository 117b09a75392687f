"""The audit log: ``GET /api/v1/audit``. Admins see every tenant (and unauthenticated
failures); owners see their own tenant's entries."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query
from pydantic import BaseModel

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.routing import JsonBodyRoute
from modelyard.api.schemas import ERRORS, PageOut, page_out
from modelyard.core.audit import AuditEntry
from modelyard.core.pages import Page, PageRequest
from modelyard.errors import PermissionDenied

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], responses=ERRORS, route_class=JsonBodyRoute)


class AuditOut(BaseModel):
    id: int | None
    at: datetime | None
    request_id: str
    tenant_id: str | None
    tenant: str | None
    key_id: str | None
    role: str | None
    action: str
    object: str
    result: int
    client: str


@router.get("", response_model=PageOut[AuditOut], summary="Query the audit log, newest first")
async def get_audit(
    platform: PlatformDep,
    principal: PrincipalDep,
    tenant: Annotated[str | None, Query(max_length=64, description="admins: only this tenant (name)")] = None,
    action: Annotated[str | None, Query(pattern="^[A-Za-z]{1,16}$", description="HTTP method")] = None,
    object: Annotated[str | None, Query(max_length=512, description="path prefix")] = None,
    since: datetime | None = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Any:
    principal.require("audit:read")

    def work() -> Page[AuditEntry]:
        tenant_id: str | None = principal.tenant_id
        if principal.is_admin:
            tenant_id = platform.tenants.get(tenant).id if tenant is not None else None
        elif tenant is not None and tenant not in (principal.tenant_name, principal.tenant_id):
            raise PermissionDenied("only admins may read other tenants' audit entries")
        return platform.audit.query(
            tenant_id=tenant_id, page=PageRequest(page, page_size), since=since, action=action,
            object_prefix=object,
        )

    return page_out(await anyio.to_thread.run_sync(work), lambda e: e.to_dict())
