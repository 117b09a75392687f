"""Open Inference Protocol v2 over REST (KServe spec; Triton's binary tensor extension).

Routes translate and authenticate; everything else is the data plane's job. Inference bodies are
read raw and decoded by :mod:`modelyard.api.v2.codec` (no pydantic on the hot path).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from modelyard.api.deps import PlatformDep, PrincipalDep, platform_of
from modelyard.api.errors import ERROR_SCHEMA
from modelyard.api.v2.infer import ClientGone, read_body, run_infer, unless_disconnected
from modelyard.core.principal import Principal

__all__ = ["router", "health_router"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: ERROR_SCHEMA for code in (400, 401, 403, 404, 413, 429, 503, 504)
}

health_router = APIRouter(prefix="/v2/health", tags=["OIP v2"])
router = APIRouter(prefix="/v2", tags=["OIP v2"], responses=_ERRORS)



@health_router.get("/live", summary="Server liveness (no key needed)")
async def live(platform: PlatformDep) -> JSONResponse:
    return JSONResponse({"live": platform.dataplane.live()})


@health_router.get("/ready", summary="Server readiness (no key needed)")
async def ready(platform: PlatformDep) -> JSONResponse:
    is_ready = platform.dataplane.ready()
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("", summary="Server metadata")
async def server_metadata(platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    principal.require("server:read")
    return JSONResponse(platform.dataplane.server_metadata())


@router.get("/models/{model_name}", summary="Model metadata (latest production, else latest)")
async def model_metadata(model_name: str, platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    return JSONResponse(await platform.dataplane.model_metadata(principal, model_name, None))


@router.get("/models/{model_name}/versions/{model_version}", summary="Model version metadata")
async def version_metadata(
    model_name: str, model_version: str, platform: PlatformDep, principal: PrincipalDep
) -> JSONResponse:
    return JSONResponse(await platform.dataplane.model_metadata(principal, model_name, model_version))


@router.get("/models/{model_name}/config", summary="Model configuration (Triton's shape)")
async def model_config(model_name: str, platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    return JSONResponse(await platform.dataplane.model_config(principal, model_name, None))


@router.get("/models/{model_name}/versions/{model_version}/config", summary="Model version configuration (Triton's shape)")
async def version_config(
    model_name: str, model_version: str, platform: PlatformDep, principal: PrincipalDep
) -> JSONResponse:
    return JSONResponse(await platform.dataplane.model_config(principal, model_name, model_version))


async def _ready(platform: PlatformDep, principal: PrincipalDep, name: str, version: str | None) -> JSONResponse:
    ok = await platform.dataplane.model_ready(principal, name, version)
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)


@router.get("/models/{model_name}/ready", summary="Model readiness")
async def model_ready(model_name: str, platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    return await _ready(platform, principal, model_name, None)


@router.get("/models/{model_name}/versions/{model_version}/ready", summary="Model version readiness")
async def version_ready(
    model_name: str, model_version: str, platform: PlatformDep, principal: PrincipalDep
) -> JSONResponse:
    return await _ready(platform, principal, model_name, model_version)


async def _infer(request: Request, principal: Principal, name: str, version: str | None) -> Response:
    platform = platform_of(request)
    try:
        body = await read_body(
            request.receive, request.headers.get("content-length"), platform.settings.max_request_bytes
        )
        status, headers, payload = await unless_disconnected(request.receive, run_infer(
            platform, principal, name, version, body, request.headers.get("inference-header-content-length"),
        ))
    except ClientGone:
        return Response(status_code=499)  # nobody reads it; the work was cancelled
    return Response(payload, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


_INFER_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {"type": "array", "items": {"type": "object"}},
                "outputs": {"type": "array", "items": {"type": "object"}},
            }}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post("/models/{model_name}/infer", summary="Inference (JSON or binary tensors)", openapi_extra=_INFER_DOC)
async def infer(model_name: str, request: Request, principal: PrincipalDep) -> Response:
    return await _infer(request, principal, model_name, None)


@router.post(
    "/models/{model_name}/versions/{model_version}/infer",
    summary="Inference on a given version",
    openapi_extra=_INFER_DOC,
)
async def infer_version(
    model_name: str, model_version: str, request: Request, principal: PrincipalDep
) -> Response:
    return await _infer(request, principal, model_name, model_version)
