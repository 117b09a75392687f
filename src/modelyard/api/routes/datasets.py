"""Datasets: ``/api/v1/datasets`` (upload, list, get, delete; built-ins as ``builtin:<name>``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.routing import JsonBodyRoute
from modelyard.api.schemas import ERRORS, PageOut, PageQ, SizeQ, page_out
from modelyard.api.uploads import stage_upload, upload_doc
from modelyard.core.datasets import BUILTIN_DATASETS, DatasetInfo, format_from_name
from modelyard.core.names import check_name
from modelyard.core.pages import PageRequest

__all__ = ["router", "dataset_out"]

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"], responses=ERRORS, route_class=JsonBodyRoute)


class ColumnOut(BaseModel):
    name: str
    dtype: str
    shape: list[int]
    missing: int


class DatasetOut(BaseModel):
    id: str
    name: str
    reference: str
    format: str
    sha256: str
    size_bytes: int
    n_rows: int
    columns: list[ColumnOut]
    preview: list[dict[str, Any]]
    builtin: bool
    created_at: datetime | None


def dataset_out(d: DatasetInfo) -> dict[str, Any]:
    return d.to_dict()



_UPLOAD_DOC = upload_doc("The file's bytes (CSV, Parquet, NPZ or JSONL): `curl --data-binary @iris.csv`")


@router.post(
    "",
    response_model=DatasetOut,
    status_code=status.HTTP_201_CREATED,
    summary="Upload a dataset (validated and described on arrival; 200 if the same bytes exist)",
    openapi_extra=_UPLOAD_DOC,
)
async def upload_dataset(
    request: Request,
    response: Response,
    platform: PlatformDep,
    principal: PrincipalDep,
    name: Annotated[str, Query(description="dataset name (letters, digits, '_', '-', '.')")],
    format: Annotated[
        str | None, Query(description="csv | parquet | npz | jsonl; default: from `filename`")
    ] = None,
    filename: Annotated[str | None, Query(max_length=255, description="original file name")] = None,
) -> Any:
    principal.require("datasets:write")
    check_name(name, field="name")
    fmt = format_from_name(filename or name, format)
    staged = await stage_upload(request, platform, limit=platform.settings.max_dataset_bytes, what="dataset")
    info, created = await anyio.to_thread.run_sync(
        lambda: platform.datasets.create(tenant_id=principal.tenant_id, name=name, staged=staged, fmt=fmt)
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return dataset_out(info)


@router.get("", response_model=PageOut[DatasetOut], summary="List uploaded datasets")
async def list_datasets(
    platform: PlatformDep, principal: PrincipalDep, page: PageQ = 1, page_size: SizeQ = 50
) -> Any:
    principal.require("datasets:read")
    result = await anyio.to_thread.run_sync(
        platform.datasets.list, principal.tenant_id, PageRequest(page, page_size)
    )
    return page_out(result, dataset_out)


@router.get("/builtin", response_model=list[str], summary="Names of the built-in datasets")
async def list_builtin(principal: PrincipalDep) -> Any:
    principal.require("datasets:read")
    return [f"builtin:{n}" for n in BUILTIN_DATASETS]


@router.get("/{name}", response_model=DatasetOut, summary="Get a dataset (name, id, or builtin:<name>)")
async def get_dataset(name: str, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("datasets:read")
    return dataset_out(await anyio.to_thread.run_sync(platform.datasets.get, principal.tenant_id, name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete an uploaded dataset")
async def delete_dataset(name: str, platform: PlatformDep, principal: PrincipalDep) -> None:
    principal.require("datasets:write")
    await anyio.to_thread.run_sync(platform.datasets.delete, principal.tenant_id, name)
