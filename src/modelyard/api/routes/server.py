"""Server-level routes: ``/metrics`` (Prometheus) and ``/api/v1/info``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from modelyard import __version__
from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.routing import JsonBodyRoute
from modelyard.api.schemas import ERRORS

__all__ = ["router"]

router = APIRouter(responses=ERRORS, route_class=JsonBodyRoute)


@router.get("/metrics", tags=["server"], summary="Prometheus metrics (text format)")
async def metrics(platform: PlatformDep, principal: PrincipalDep) -> Response:
    principal.require("metrics:read")
    return Response(platform.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/api/v1/whoami", tags=["server"], summary="The caller's tenant and role")
async def whoami(principal: PrincipalDep) -> dict[str, Any]:
    return {
        "tenant": principal.tenant_name,
        "role": principal.role,
        "key_id": principal.key_id,
        "scopes": list(principal.scopes),
        "server_version": __version__,
    }
