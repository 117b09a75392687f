"""API keys: ``/api/v1/keys``. Owners manage their own tenant's keys, admins any tenant's.

The secret is in the answer of ``POST`` only; lists show its prefix. ``DELETE`` revokes at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.routing import JsonBodyRoute
from modelyard.api.routes.tenants import requires
from modelyard.api.schemas import ERRORS, StrictBody
from modelyard.core.keys import KeyInfo
from modelyard.core.principal import ROLES, Principal
from modelyard.errors import PermissionDenied, ValidationFailed

__all__ = ["router", "key_out"]

router = APIRouter(prefix="/api/v1/keys", tags=["keys"], responses=ERRORS, route_class=JsonBodyRoute)

_ROLE_PATTERN = "^(" + "|".join(ROLES) + ")$"
_SCOPE = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]


class KeyCreate(StrictBody):
    role: str = Field(pattern=_ROLE_PATTERN, description=" | ".join(ROLES))
    name: str = Field(default="", max_length=128)
    tenant: str | None = Field(default=None, max_length=64, description="admins: the tenant (name) of the key")
    scopes: list[_SCOPE] = Field(default_factory=list, max_length=100, description="model/deployment names")
    rate_limit: float | None = Field(default=None, gt=0, le=1_000_000, description="requests per second, over the whole cluster")
    expires_at: datetime | None = None
    expires_in_s: float | None = Field(default=None, gt=0, le=10 * 365 * 86400)


class KeyOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    prefix: str
    role: str
    scopes: list[str]
    rate_limit: float | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    secret: str = Field(description="the API key; shown only in this answer")


class KeyList(BaseModel):
    items: list[KeyOut]
    total: int


def key_out(k: KeyInfo) -> dict[str, Any]:
    return {
        "id": k.id, "tenant_id": k.tenant_id, "name": k.name, "prefix": k.prefix, "role": k.role,
        "scopes": list(k.scopes), "rate_limit": k.rate_limit, "created_at": k.created_at,
        "expires_at": k.expires_at, "revoked_at": k.revoked_at,
    }


def _scope_tenant(principal: Principal) -> str | None:
    """Admins see every tenant's keys; others only their own tenant's."""
    return None if principal.is_admin else principal.tenant_id


@router.post(
    "", response_model=KeyCreated, status_code=status.HTTP_201_CREATED, summary="Create an API key",
    dependencies=[requires("keys:write")],
)
async def create_key(body: KeyCreate, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("keys:write")
    if body.role == "admin" and not principal.is_admin:
        raise PermissionDenied("only an admin may create admin keys")
    expires = body.expires_at
    if body.expires_in_s is not None:
        expires = datetime.now(timezone.utc) + timedelta(seconds=body.expires_in_s)
    if expires is not None:
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=timezone.utc)
        if expires <= datetime.now(timezone.utc):
            raise ValidationFailed("expires_at must be in the future", details={"field": "expires_at"})

    def work() -> tuple[KeyInfo, str]:
        tenant_id = principal.tenant_id
        if body.tenant is not None and body.tenant not in (principal.tenant_name, principal.tenant_id):
            if not principal.is_admin:
                raise PermissionDenied("keys can only be created in your own tenant")
            tenant_id = platform.tenants.get(body.tenant).id
        return platform.keys.create(
            tenant_id=tenant_id, role=body.role, name=body.name, scopes=list(body.scopes),
            rate_limit=body.rate_limit, expires_at=expires,
        )

    info, secret = await anyio.to_thread.run_sync(work)
    return {**key_out(info), "secret": secret}


@router.get("", response_model=KeyList, summary="List API keys (prefixes only)")
async def list_keys(
    platform: PlatformDep, principal: PrincipalDep,
    tenant: Annotated[str | None, Query(max_length=64, description="admins: only this tenant")] = None,
    include_revoked: bool = False,
) -> Any:
    principal.require("keys:read")

    def work() -> list[KeyInfo]:
        scope = _scope_tenant(principal)
        if scope is None and tenant is not None:
            scope = platform.tenants.get(tenant).id
        return platform.keys.list(scope, include_revoked=include_revoked)

    items = await anyio.to_thread.run_sync(work)
    return {"items": [key_out(k) for k in items], "total": len(items)}


@router.get("/{key_id}", response_model=KeyOut, summary="Get an API key (prefix only)")
async def get_key(key_id: str, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("keys:read")
    return key_out(await anyio.to_thread.run_sync(platform.keys.get, _scope_tenant(principal), key_id))


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke an API key (at once)")
async def revoke_key(key_id: str, platform: PlatformDep, principal: PrincipalDep) -> None:
    principal.require("keys:write")

    def work() -> None:
        found = platform.keys.get(_scope_tenant(principal), key_id)
        if found.role == "admin" and not principal.is_admin:
            raise PermissionDenied("only an admin may revoke admin keys")
        platform.keys.revoke(found.tenant_id, found.id)

    await anyio.to_thread.run_sync(work)
