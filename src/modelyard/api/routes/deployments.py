"""Deployments: ``/api/v1/deployments``.

A deployment is served at ``/v2/models/{name}/infer`` (REST) and under its name over gRPC; these
routes create it, change its weights, shadow and serving settings, roll it forward or back, and
show its live traffic statistics (per-route requests, errors, latency; shadow agreement).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import anyio
from fastapi import APIRouter, status
from pydantic import BaseModel, Field, StrictBool, StrictInt

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.routing import JsonBodyRoute
from modelyard.api.schemas import ERRORS, PageOut, PageQ, SizeQ, StrictBody, page_out
from modelyard.core.deployment_spec import Deployment
from modelyard.core.pages import PageRequest
from modelyard.core.platform import Platform
from modelyard.core.principal import Principal
from modelyard.errors import DeploymentNotFound

__all__ = ["router", "deployment_out"]

router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"], responses=ERRORS, route_class=JsonBodyRoute)


class RouteIn(StrictBody):
    model: str = Field(description="model name")
    version: int = Field(ge=1, description="version number")
    weight: float = Field(default=100.0, ge=0, le=1e6, description="relative share of the traffic")


class ShadowIn(StrictBody):
    model: str
    version: int = Field(ge=1)
    share: float = Field(default=1.0, ge=0, le=1, description="share of requests mirrored (0..1)")


class ServingIn(StrictBody):
    batching: bool | None = Field(default=None, description="dynamic batching (default: on when the first dim is dynamic)")
    max_batch_size: int | None = Field(default=None, ge=1, le=4096)
    max_queue_delay_ms: float | None = Field(default=None, ge=0, le=10_000)
    max_queue_size: int | None = Field(default=None, ge=1, le=1_000_000)
    instances: int | None = Field(default=None, ge=1, le=64)
    isolation: str | None = Field(default=None, description="thread | process")
    timeout_s: float | None = Field(default=None, gt=0, le=3600)
    response_cache: StrictBool | None = Field(default=None, description="answer repeated requests from memory")
    priority_levels: StrictInt | None = Field(default=None, ge=0, lt=2**64, description="levels 1..N (Triton's)")
    default_priority_level: StrictInt | None = Field(
        default=None, ge=0, lt=2**64, description="the level of requests without one (0: the lowest)"
    )
    priority_queue_policy: dict[str, dict[str, Any]] | None = Field(
        default=None, description='per level: {"2": {"max_queue_size": 32, "timeout_s": 5}}'
    )
    idle_unload_s: float | None = Field(
        default=None, ge=0, le=30 * 86_400, description="unload a version after this long without a request (0: never)"
    )


class RollbackIn(StrictBody):
    max_error_rate: float = Field(default=0.5, ge=0, le=1)
    window_s: float = Field(default=60.0, gt=0, le=86_400)
    min_requests: int = Field(default=10, ge=1)
    max_p99_ms: float | None = Field(
        default=None, gt=0, le=3_600_000, description="roll back when the canary's p99 latency over the window is above this"
    )
    max_p99_ratio: float | None = Field(
        default=None, ge=1, le=1000, description="... or above this many times the primary's p99 over the window"
    )


class RolloutIn(StrictBody):
    steps: list[float] = Field(min_length=1, max_length=20, description="the canary's percent of the traffic at each step, rising; 100 promotes it")
    interval_s: float = Field(default=300.0, description="seconds between two steps (0.1 to 7 days)")
    min_requests: StrictInt = Field(
        default=0, description="canary answers without error a step waits for besides its time (0: time alone)"
    )


class DeploymentIn(StrictBody):
    name: str
    description: str = Field(default="", max_length=10_000)
    routes: list[RouteIn] = Field(min_length=1, max_length=16, description="the first route is the primary")
    shadow: ShadowIn | None = None
    serving: ServingIn | None = None
    rollback: RollbackIn | None = Field(default=None, description="automatic rollback of canaries")
    rollout: RolloutIn | None = Field(default=None, description="raise the canary's share on a schedule (two routes)")


class DeploymentPatch(StrictBody):
    description: str | None = Field(default=None, max_length=10_000)
    routes: list[RouteIn] | None = Field(default=None, min_length=1, max_length=16)
    weights: dict[str, float] | None = Field(default=None, description='{"model:version": weight}')
    shadow: ShadowIn | None = None
    remove_shadow: bool = False
    serving: ServingIn | None = None
    rollback: RollbackIn | None = None
    remove_rollback: bool = False
    rollout: RolloutIn | None = Field(default=None, description="start a rollout now, at its first step")
    remove_rollout: bool = Field(default=False, description="stop the rollout where it is")


class PromoteIn(StrictBody):
    model: str | None = None
    version: int | None = Field(default=None, ge=1)


class RollbackNow(StrictBody):
    reason: str = Field(default="manual", max_length=500)


class DeploymentOut(BaseModel):
    name: str
    description: str
    routes: list[dict[str, Any]]
    shadow: dict[str, Any] | None
    serving: dict[str, Any]
    rollback: dict[str, Any] | None
    rollout: dict[str, Any] | None = None
    revision: int
    events: list[dict[str, Any]]
    stats: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime


def deployment_out(d: Deployment, platform: Platform | None = None) -> dict[str, Any]:
    stats = platform.deployments.stats(d) if platform is not None else None
    return {
        "name": d.name,
        "description": d.description,
        "routes": [r.to_dict() for r in d.routes],
        "shadow": d.shadow.to_dict() if d.shadow else None,
        "serving": d.serving,
        "rollback": d.rollback.to_dict() if d.rollback else None,
        "rollout": d.rollout.to_dict() if d.rollout else None,
        "revision": d.revision,
        "events": list(d.events),
        "stats": stats,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
    }


def _visible(principal: Principal, name: str) -> None:
    if not principal.in_scope(name):
        raise DeploymentNotFound(f"deployment {name!r} not found")


def _serving(body: ServingIn | None) -> dict[str, Any] | None:
    return None if body is None else body.model_dump(exclude_none=True)




@router.get("", response_model=PageOut[DeploymentOut], summary="List deployments")
async def list_deployments(
    platform: PlatformDep, principal: PrincipalDep, page: PageQ = 1, page_size: SizeQ = 50
) -> Any:
    principal.require("deployments:read")
    result = await anyio.to_thread.run_sync(
        platform.deployments.list, principal.tenant_id, PageRequest(page, page_size)
    )
    if principal.scopes:
        result.items[:] = [d for d in result.items if principal.in_scope(d.name)]
    return page_out(result, lambda d: deployment_out(d, platform))


@router.post("", response_model=DeploymentOut, status_code=status.HTTP_201_CREATED, summary="Create a deployment")
async def create_deployment(body: DeploymentIn, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("deployments:write")
    _visible(principal, body.name)

    def work() -> Deployment:
        return platform.deployments.create(
            principal.tenant_id, body.name,
            routes=[r.model_dump() for r in body.routes],
            shadow=body.shadow.model_dump() if body.shadow else None,
            serving=_serving(body.serving),
            rollback=body.rollback.model_dump() if body.rollback else None,
            rollout=body.rollout.model_dump() if body.rollout else None,
            description=body.description,
        )

    return deployment_out(await anyio.to_thread.run_sync(work), platform)


@router.get("/{name}", response_model=DeploymentOut, summary="Get a deployment and its live statistics")
async def get_deployment(name: str, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("deployments:read")
    _visible(principal, name)
    deployment = await anyio.to_thread.run_sync(platform.deployments.get, principal.tenant_id, name)
    return deployment_out(deployment, platform)


@router.patch("/{name}", response_model=DeploymentOut, summary="Change routes, weights, shadow or settings")
async def patch_deployment(name: str, body: DeploymentPatch, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("deployments:write")
    _visible(principal, name)

    def work() -> Deployment:
        deployments = platform.deployments
        tenant = principal.tenant_id
        changes: dict[str, Any] = {}
        if body.routes is not None:
            changes["routes"] = [r.model_dump() for r in body.routes]
        if body.shadow is not None or body.remove_shadow:
            changes["shadow"] = None if body.remove_shadow else body.shadow.model_dump()  # type: ignore[union-attr]
        if body.serving is not None:
            changes["serving"] = _serving(body.serving)
        if body.rollback is not None or body.remove_rollback:
            changes["rollback"] = None if body.remove_rollback else body.rollback.model_dump()  # type: ignore[union-attr]
        if body.rollout is not None or body.remove_rollout:
            changes["rollout"] = None if body.remove_rollout else body.rollout.model_dump()  # type: ignore[union-attr]
        if body.description is not None:
            changes["description"] = body.description
        result: Deployment | None = None
        if changes:
            result = deployments.update(tenant, name, **changes)
        if body.weights is not None:
            result = deployments.set_weights(tenant, name, body.weights)
        return result or deployments.get(tenant, name)

    return deployment_out(await anyio.to_thread.run_sync(work), platform)


@router.post("/{name}/promote", response_model=DeploymentOut, summary="Roll forward: one route takes all traffic")
async def promote(name: str, body: PromoteIn, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("deployments:write")
    _visible(principal, name)
    result = await anyio.to_thread.run_sync(
        lambda: platform.deployments.promote(principal.tenant_id, name, body.model, body.version)
    )
    return deployment_out(result, platform)


@router.post("/{name}/rollback", response_model=DeploymentOut, summary="Roll back: all traffic to the primary")
async def rollback(name: str, body: RollbackNow, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("deployments:write")
    _visible(principal, name)
    result = await anyio.to_thread.run_sync(
        lambda: platform.deployments.rollback(principal.tenant_id, name, reason=body.reason)
    )
    return deployment_out(result, platform)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a deployment")
async def delete_deployment(name: str, platform: PlatformDep, principal: PrincipalDep) -> None:
    principal.require("deployments:write")
    _visible(principal, name)
    await anyio.to_thread.run_sync(platform.deployments.delete, principal.tenant_id, name)
