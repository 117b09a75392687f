"""Server-level routes: ``/metrics`` (Prometheus) and ``/api/v1/info``."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from fastapi import APIRouter
from starlette.responses import Response

from modelyard import __version__
from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.routing import JsonBodyRoute
from modelyard.api.schemas import ERRORS

__all__ = ["router"]

log = logging.getLogger("modelyard.api")

router = APIRouter(responses=ERRORS, route_class=JsonBodyRoute)


@router.get("/metrics", tags=["server"], summary="Prometheus metrics (text format)")
async def metrics(platform: PlatformDep, principal: PrincipalDep) -> Response:
    principal.require("metrics:read")
    # the quotas' use is read from the database off the loop, then shown and rendered on it
    try:
        uses = await anyio.to_thread.run_sync(platform.limits.quota_use)
    except Exception:  # the database is down: every other series is still worth a scrape
        log.exception("reading the quotas' use for /metrics failed; it is left out of this scrape")
        uses = []
    platform.metrics.show_quota_use((u.tenant, u.quota, u.used, u.limit) for u in uses)
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
