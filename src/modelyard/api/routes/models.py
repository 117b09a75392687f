"""Models and versions: ``/api/v1/models``."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, Field

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.routing import JsonBodyRoute
from modelyard.api.schemas import ERRORS, PageOut, PageQ, SizeQ, StrictBody, page_out
from modelyard.api.uploads import stage_upload, upload_doc
from modelyard.core.llm import HF_FORMATS
from modelyard.core.pages import PageRequest
from modelyard.core.principal import Principal
from modelyard.core.registry import ModelInfo, VersionInfo
from modelyard.errors import ModelNotFound, ValidationFailed

__all__ = ["router", "version_out", "model_out"]

router = APIRouter(prefix="/api/v1/models", tags=["models"], responses=ERRORS, route_class=JsonBodyRoute)


class TensorOut(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class VersionOut(BaseModel):
    model: str
    version: int
    format: str
    sha256: str
    size_bytes: int
    inputs: list[TensorOut]
    outputs: list[TensorOut]
    description: str
    tags: dict[str, Any]
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    stage: str
    created_at: datetime


class ModelOut(BaseModel):
    name: str
    description: str
    tags: dict[str, Any]
    latest_version: int | None
    production_version: int | None
    created_at: datetime
    updated_at: datetime


class ModelPatch(StrictBody):
    description: str | None = Field(default=None, max_length=10_000)
    tags: dict[str, Any] | None = None


class VersionPatch(StrictBody):
    description: str | None = Field(default=None, max_length=10_000)
    tags: dict[str, Any] | None = None
    stage: str | None = Field(default=None, description="none | staging | production | archived")


def version_out(v: VersionInfo) -> dict[str, Any]:
    return {
        "model": v.model_name,
        "version": v.version,
        "format": v.format,
        "sha256": v.sha256,
        "size_bytes": v.size_bytes,
        "inputs": [t.to_dict() for t in v.inputs],
        "outputs": [t.to_dict() for t in v.outputs],
        "description": v.description,
        "tags": v.tags,
        "metrics": v.metrics,
        "lineage": v.lineage,
        "stage": v.stage,
        "created_at": v.created_at,
    }


def model_out(m: ModelInfo) -> dict[str, Any]:
    return {
        "name": m.name,
        "description": m.description,
        "tags": m.tags,
        "latest_version": m.latest_version,
        "production_version": m.production_version,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
    }


def _visible(principal: Principal, name: str) -> None:
    if not principal.in_scope(name):
        raise ModelNotFound(f"model {name!r} not found")




@router.get("", response_model=PageOut[ModelOut], summary="List models")
async def list_models(platform: PlatformDep, principal: PrincipalDep, page: PageQ = 1, page_size: SizeQ = 50) -> Any:
    principal.require("models:read")
    result = await anyio.to_thread.run_sync(
        lambda: platform.registry.list_models(
            principal.tenant_id, PageRequest(page, page_size), names=principal.scopes
        )
    )
    return page_out(result, model_out)


@router.get("/{name}", response_model=ModelOut, summary="Get a model")
async def get_model(name: str, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("models:read")
    _visible(principal, name)
    return model_out(await anyio.to_thread.run_sync(platform.registry.get_model, principal.tenant_id, name))


@router.patch("/{name}", response_model=ModelOut, summary="Update a model's description or tags")
async def patch_model(name: str, body: ModelPatch, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("models:write")
    _visible(principal, name)

    def work() -> ModelInfo:
        platform.registry.update_model(principal.tenant_id, name, description=body.description, tags=body.tags)
        return platform.registry.get_model(principal.tenant_id, name)

    return model_out(await anyio.to_thread.run_sync(work))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a model and all its versions")
async def delete_model(name: str, platform: PlatformDep, principal: PrincipalDep) -> None:
    principal.require("models:delete")
    _visible(principal, name)
    await anyio.to_thread.run_sync(platform.registry.delete_model, principal.tenant_id, name)


@router.get("/{name}/versions", response_model=PageOut[VersionOut], summary="List a model's versions, newest first")
async def list_versions(
    name: str, platform: PlatformDep, principal: PrincipalDep, page: PageQ = 1, page_size: SizeQ = 50
) -> Any:
    principal.require("models:read")
    _visible(principal, name)
    result = await anyio.to_thread.run_sync(
        platform.registry.list_versions, principal.tenant_id, name, PageRequest(page, page_size)
    )
    return page_out(result, version_out)


_UPLOAD_DOC = upload_doc("The artifact's bytes (e.g. an .onnx file): `curl --data-binary @model.onnx`")


@router.post(
    "/{name}/versions",
    response_model=VersionOut,
    status_code=status.HTTP_201_CREATED,
    summary="Upload an artifact as the model's next version",
    openapi_extra=_UPLOAD_DOC,
)
async def push_version(
    name: str,
    request: Request,
    platform: PlatformDep,
    principal: PrincipalDep,
    format: Annotated[str, Query(description="artifact format", pattern=r"^[a-z0-9-]{1,32}$")] = "onnx",
    description: Annotated[str, Query(max_length=10_000)] = "",
    stage: Annotated[str, Query(description="none | staging | production | archived")] = "none",
    tags: Annotated[str | None, Query(description="JSON object of tags")] = None,
    task: Annotated[
        str | None,
        Query(description="for Hugging Face archives (format hf, hf-*): text-generation, embeddings or "
                          "text-classification; default: detected from config.json"),
    ] = None,
) -> Any:
    principal.require("models:write")
    _visible(principal, name)
    if stage == "production":
        principal.require("models:promote")
    parsed_tags: dict[str, Any] | None = None
    if tags:
        try:
            parsed_tags = json.loads(tags)
        except ValueError:
            raise ValidationFailed("tags must be a JSON object", details={"field": "tags"}) from None
    staged = await stage_upload(request, platform, limit=platform.settings.max_upload_bytes, what="artifact")

    def register() -> VersionInfo:
        if format in HF_FORMATS:
            return platform.llm.push_hf(
                tenant_id=principal.tenant_id, model_name=name, staged=staged, fmt=format, task=task,
                description=description, tags=parsed_tags, stage=stage, lineage={"source": "upload"},
            )
        return platform.registry.register_version(
            tenant_id=principal.tenant_id, model_name=name, staged=staged, fmt=format,
            description=description, tags=parsed_tags, stage=stage,
            lineage={"source": "upload"},
        )

    return version_out(await anyio.to_thread.run_sync(register))


@router.get("/{name}/versions/{version}", response_model=VersionOut, summary="Get a version")
async def get_version(name: str, version: int, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("models:read")
    _visible(principal, name)
    return version_out(await anyio.to_thread.run_sync(platform.registry.get_version, principal.tenant_id, name, version))


@router.patch("/{name}/versions/{version}", response_model=VersionOut, summary="Update a version's metadata or stage")
async def patch_version(
    name: str, version: int, body: VersionPatch, platform: PlatformDep, principal: PrincipalDep
) -> Any:
    principal.require("models:write")
    if body.stage is not None:
        principal.require("models:promote")
    _visible(principal, name)

    def work() -> VersionInfo:
        return platform.registry.update_version(
            principal.tenant_id, name, version, description=body.description, tags=body.tags, stage=body.stage
        )

    return version_out(await anyio.to_thread.run_sync(work))


@router.delete("/{name}/versions/{version}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a version")
async def delete_version(name: str, version: int, platform: PlatformDep, principal: PrincipalDep) -> None:
    principal.require("models:delete")
    _visible(principal, name)
    await anyio.to_thread.run_sync(platform.registry.delete_version, principal.tenant_id, name, version)
