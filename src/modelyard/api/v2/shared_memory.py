"""Triton's shared-memory extensions over REST (gRPC: ``SystemSharedMemory*`` and
``CudaSharedMemory*`` in ``grpc/servicer.py``), so ``tritonclient``'s ``register_system_shared_memory``,
``get_system_shared_memory_status`` and ``unregister_system_shared_memory`` work:

* ``GET /v2/systemsharedmemory[/region/{name}]/status``: the caller's regions;
* ``POST /v2/systemsharedmemory/region/{name}/register`` ``{"key", "offset", "byte_size"}``;
* ``POST /v2/systemsharedmemory[/region/{name}]/unregister`` (a name the caller has no region of:
  404).

What a region is and who may use it: ``core/shared_memory.py``. CUDA shared memory: the status
is empty, unregistering all of them does nothing (a named one: 404), registering is refused (this
server keeps tensors in host memory), so clients that clean both kinds up at start work
unchanged.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from modelyard.api.deps import PlatformDep, PrincipalDep
from modelyard.api.errors import ERROR_SCHEMA
from modelyard.api.routing import read_json_object

__all__ = ["router"]

router = APIRouter(prefix="/v2", tags=["OIP v2"], responses={code: ERROR_SCHEMA for code in (400, 401, 403, 404, 409)})

_EXAMPLE = '{"key": "/my_input", "offset": 0, "byte_size": 256}'


@router.get("/systemsharedmemory/status", summary="Your system shared-memory regions (Triton)")
async def system_status(platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    return JSONResponse(platform.shared_memory.status(principal))


@router.get("/systemsharedmemory/region/{name}/status", summary="One of your system shared-memory regions (Triton)")
async def system_region_status(name: str, platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    return JSONResponse(platform.shared_memory.status(principal, name))


@router.post("/systemsharedmemory/region/{name}/register", summary="Register a system shared-memory region (Triton)")
async def system_register(name: str, request: Request, platform: PlatformDep, principal: PrincipalDep) -> Response:
    body = await read_json_object(request, example=_EXAMPLE)
    platform.shared_memory.register(principal, name, body.get("key"), body.get("offset", 0), body.get("byte_size"))
    return Response(status_code=200)


@router.post("/systemsharedmemory/unregister", summary="Unregister all your system shared-memory regions (Triton)")
async def system_unregister_all(platform: PlatformDep, principal: PrincipalDep) -> Response:
    platform.shared_memory.unregister(principal)
    return Response(status_code=200)


@router.post("/systemsharedmemory/region/{name}/unregister", summary="Unregister a system shared-memory region (Triton)")
async def system_unregister(name: str, platform: PlatformDep, principal: PrincipalDep) -> Response:
    platform.shared_memory.unregister(principal, name)
    return Response(status_code=200)


@router.get("/cudasharedmemory/status", summary="CUDA shared-memory regions: none here (Triton)")
async def cuda_status(platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    return JSONResponse(platform.shared_memory.cuda_status(principal))


@router.get("/cudasharedmemory/region/{name}/status", summary="A CUDA shared-memory region: none here (Triton)")
async def cuda_region_status(name: str, platform: PlatformDep, principal: PrincipalDep) -> JSONResponse:
    return JSONResponse(platform.shared_memory.cuda_status(principal, name))


@router.post("/cudasharedmemory/region/{name}/register", summary="Refused: tensors stay in host memory here (Triton)")
async def cuda_register(name: str, platform: PlatformDep, principal: PrincipalDep) -> Response:
    platform.shared_memory.cuda_register(principal, name)
    return Response(status_code=200)


@router.post("/cudasharedmemory/unregister", summary="Nothing to unregister (Triton)")
async def cuda_unregister_all(platform: PlatformDep, principal: PrincipalDep) -> Response:
    platform.shared_memory.cuda_status(principal)  # the same permission as the system regions
    return Response(status_code=200)


@router.post("/cudasharedmemory/region/{name}/unregister", summary="No such CUDA region here: 404 (Triton)")
async def cuda_unregister(name: str, platform: PlatformDep, principal: PrincipalDep) -> Response:
    platform.shared_memory.cuda_status(principal, name)
    return Response(status_code=200)
