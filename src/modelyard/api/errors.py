"""Exception handlers: every HTTP error leaves as ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from modelyard.errors import ModelYardError

__all__ = ["install_error_handlers", "error_response", "ERROR_SCHEMA"]

log = logging.getLogger("modelyard.api")

_HTTP_CODES = {
    400: "bad_request", 401: "unauthenticated", 403: "permission_denied", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "validation_failed", 429: "rate_limited", 503: "unavailable",
}

ERROR_SCHEMA: dict[str, Any] = {
    "description": "Error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            }
        }
    },
}


def error_response(exc: ModelYardError) -> JSONResponse:
    headers = {}
    if exc.retry_after_header is not None:
        headers["Retry-After"] = exc.retry_after_header
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(exc.to_body(), status_code=exc.http_status, headers=headers)


async def _modelyard_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ModelYardError)
    if exc.http_status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message, exc_info=exc)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    field = ".".join(loc)
    msg = first.get("msg", "invalid request")
    status = 400 if first.get("type") == "json_invalid" else 422
    code = "bad_request" if status == 400 else "validation_failed"
    if status == 400:  # json_invalid: loc is ("body", offset), so "field" holds the offset
        reason = first.get("ctx", {}).get("error", msg)
        offset, field = field or "0", ""
        message = f"malformed JSON in the request body: {reason} (char {offset})"
    else:
        message = f"{field}: {msg}" if field else msg
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if field:
        body["error"]["details"] = {"field": field}
    return JSONResponse(body, status_code=status)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=exc.status_code, headers=exc.headers
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        {"error": {"code": "internal", "message": "internal server error; see the server log"}},
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ModelYardError, _modelyard_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
