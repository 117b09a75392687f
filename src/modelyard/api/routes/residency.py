"""Versions in memory: ``GET /api/v1/loaded``, and ``POST
/api/v1/models/{name}/versions/{version}/load`` (``{"pin": true}`` keeps it loaded) and ``.../unload``
(see ``core/residency.py``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.routing import JsonBodyRoute
from modelyard.api.schemas import ERRORS, StrictBody
from modelyard.core.platform import Platform
from modelyard.core.registry import VersionInfo
from modelyard.core.residency import LoadedVersion

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["models"], responses=ERRORS, route_class=JsonBodyRoute)


class LoadIn(StrictBody):
    pin: bool = Field(default=False, description="keep it loaded whatever the memory budget (administrators)")


class LoadedPage(BaseModel):
    budget_bytes: int = Field(description="the server's memory budget for models, all tenants together")
    in_use_bytes: int = Field(description="memory of the versions loaded, all tenants together")
    items: list[LoadedVersion]


class ResidencyOut(BaseModel):
    model: str
    version: int
    loaded: bool
    pinned: bool


def _state(platform: Platform, info: VersionInfo) -> dict[str, Any]:
    manager = platform.manager
    return {"model": info.model_name, "version": info.version, "loaded": manager.is_loaded(info.key),
            "pinned": manager.is_pinned(info.key)}


@router.get("/loaded", response_model=LoadedPage, summary="Your model versions in memory, and the budget")
async def loaded(platform: PlatformDep, principal: PrincipalDep) -> Any:
    residency = platform.residency
    items = await residency.loaded(principal)
    return {"budget_bytes": residency.budget_bytes, "in_use_bytes": residency.in_use_bytes, "items": items}


@router.post("/models/{name}/versions/{version}/load", response_model=ResidencyOut,
             summary="Load a version now (warm-up included); pin: keep it loaded (administrators)")
async def load(name: str, version: int, platform: PlatformDep, principal: PrincipalDep, body: LoadIn | None = None) -> Any:
    info = await platform.residency.load(principal, name, str(version), pin=bool(body and body.pin))
    return _state(platform, info)


@router.post("/models/{name}/versions/{version}/unload", response_model=ResidencyOut,
             summary="Unload a version now (requests in flight finish; its next request loads it again)")
async def unload(name: str, version: int, platform: PlatformDep, principal: PrincipalDep) -> Any:
    info = await platform.residency.unload(principal, name, str(version))
    return _state(platform, info)
