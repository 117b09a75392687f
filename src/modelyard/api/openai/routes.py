"""Routes of the OpenAI-compatible API (``/v1``) and of upstream registration
(``POST /api/v1/models/{name}/upstream``).

``/v1`` routes authenticate with ModelYard keys (``Authorization: Bearer``, permission
``infer``) and answer every error in OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``, so the official ``openai`` package raises its usual typed exceptions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, StreamingResponse

from modelyard.api.deps import PlatformDep, PrincipalDep, platform_of
from modelyard.api.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    error_body,
)
from modelyard.api.openai.serving import OpenAIServing, Stream
from modelyard.api.routing import JsonBodyRoute
from modelyard.api.routes.models import version_out
from modelyard.api.schemas import ERRORS, StrictBody
from modelyard.core.principal import Principal
from modelyard.errors import ModelNotFound, ModelYardError

__all__ = ["router", "upstream_router", "OpenAIRoute"]

_Body = TypeVar("_Body", bound=BaseModel)


def _openai_error(exc: ModelYardError) -> JSONResponse:
    headers = {}
    if exc.retry_after_header is not None:
        headers["Retry-After"] = exc.retry_after_header
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    param = exc.details.get("param", exc.details.get("field")) if exc.http_status < 500 else None
    body = error_body(exc.http_status, exc.public_message, exc.code, param)
    return JSONResponse(body, status_code=exc.http_status, headers=headers)


class OpenAIRoute(APIRoute):
    """An ``APIRoute`` whose errors (authentication included) leave in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ModelYardError as exc:
                return _openai_error(exc)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
                return JSONResponse(error_body(400, str(first.get("msg", "invalid request")),
                                               "invalid_request", ".".join(loc) or None), status_code=400)
            except StarletteHTTPException as exc:
                return JSONResponse(error_body(exc.status_code, str(exc.detail), "error"),
                                    status_code=exc.status_code)

        return route


router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)


def _serving(request: Request) -> OpenAIServing:
    serving: OpenAIServing | None = getattr(request.app.state, "openai_serving", None)
    if serving is None:
        platform = platform_of(request)
        serving = OpenAIServing(
            llm=platform.llm, metrics=platform.metrics, usage=_usage_recorder(platform),
            check_limits=getattr(platform.dataplane, "check_limits", None),
            charge_tokens=_token_charger(platform),
        )
        request.app.state.openai_serving = serving
    return serving


def _usage_recorder(platform: Any) -> Callable[..., None] | None:
    """The usage meter's recorder (per tenant, model and hour) when the platform has one."""
    record = getattr(getattr(platform, "usage", None), "record", None)
    if record is None:
        return None

    def recorder(principal: Principal, served: Any, prompt: int, completion: int, seconds: float) -> None:
        record(principal.tenant_id, served.name, input_tokens=prompt, output_tokens=completion,
               compute_s=seconds)

    return recorder


def _token_charger(platform: Any) -> Callable[[str, int], None] | None:
    """Counts generated tokens against the tenant's daily token quota (only when it has one)."""
    limits = getattr(platform, "limits", None)
    if limits is None or not hasattr(limits, "charge_tokens"):
        return None

    def charge(tenant_id: str, tokens: int) -> None:
        if limits.quotas(tenant_id).tokens_per_day is not None:
            limits.charge_tokens(tenant_id, tokens)

    return charge


async def _body(request: Request, model: type[_Body]) -> _Body:
    from modelyard.errors import InvalidInput

    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first.get("loc", ())
        param = loc[0] if loc else None
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        raise InvalidInput(f"{path or 'body'}: {first.get('msg')}",
                           details={"param": str(param) if param is not None else None}) from None


def _answer(result: dict[str, Any] | Stream) -> Response:
    if isinstance(result, Stream):
        return StreamingResponse(
            result.chunks, media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return JSONResponse(result)


@router.get("/models", summary="List the models this key can call (OpenAI)")
async def list_models(request: Request, principal: PrincipalDep) -> Response:
    return JSONResponse(await _serving(request).list_models(principal))


@router.get("/models/{model}", summary="Get one model (OpenAI)")
async def get_model(model: str, request: Request, principal: PrincipalDep) -> Response:
    return JSONResponse(await _serving(request).get_model(principal, model))


def _json_doc(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.post("/chat/completions", summary="Chat completion (OpenAI)",
             openapi_extra=_json_doc(ChatCompletionRequest.model_json_schema()))
async def chat_completions(request: Request, principal: PrincipalDep) -> Response:
    body = await _body(request, ChatCompletionRequest)
    return _answer(await _serving(request).chat(principal, body))


@router.post("/completions", summary="Text completion (OpenAI)",
             openapi_extra=_json_doc(CompletionRequest.model_json_schema()))
async def completions(request: Request, principal: PrincipalDep) -> Response:
    body = await _body(request, CompletionRequest)
    return _answer(await _serving(request).completions(principal, body))


@router.post("/embeddings", summary="Embeddings (OpenAI)",
             openapi_extra=_json_doc(EmbeddingRequest.model_json_schema()))
async def embeddings(request: Request, principal: PrincipalDep) -> Response:
    body = await _body(request, EmbeddingRequest)
    return _answer(await _serving(request).embeddings(principal, body))


# -- upstream registration (management API) --------------------------------------------------
upstream_router = APIRouter(prefix="/api/v1/models", tags=["models"], responses=ERRORS, route_class=JsonBodyRoute)


class UpstreamIn(StrictBody):
    base_url: str = Field(max_length=2048, description="the engine's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    upstream_model: str = Field(min_length=1, max_length=512, description="the model name the engine knows")
    api_key: str | None = Field(default=None, max_length=4096, description="kept server-side; never returned")
    description: str = Field(default="", max_length=10_000)
    stage: str = Field(default="none", description="none | staging | production | archived")


@upstream_router.post(
    "/{name}/upstream", status_code=status.HTTP_201_CREATED,
    summary="Register an OpenAI-compatible engine (vLLM, Ollama, TGI, ModelYard) as the next version",
)
async def add_upstream(name: str, body: UpstreamIn, platform: PlatformDep, principal: PrincipalDep) -> Any:
    principal.require("models:write")
    if body.stage == "production":
        principal.require("models:promote")
    if not principal.in_scope(name):
        raise ModelNotFound(f"model {name!r} not found")

    def register() -> Any:
        return platform.llm.add_upstream(
            tenant_id=principal.tenant_id, model_name=name, base_url=body.base_url,
            upstream_model=body.upstream_model, api_key=body.api_key,
            description=body.description, stage=body.stage,
        )

    info = await anyio.to_thread.run_sync(register)
    out = version_out(info)
    out["upstream"] = {"base_url": info.config.get("base_url"), "upstream_model": body.upstream_model,
                       "has_api_key": bool(body.api_key)}
    return out

