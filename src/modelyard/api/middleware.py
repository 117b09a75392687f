"""Pure ASGI middleware: request ids and the audit trail.

``RequestIdMiddleware`` echoes a caller's ``X-Request-ID`` (when it is a short token) or makes
one, stores it in ``scope["state"]["request_id"]`` and sends it back on every response.

``AuditMiddleware`` records every mutating call (anything but GET, HEAD, OPTIONS) and every
authentication or authorisation failure (401/403 on any method) in the platform's
:class:`~modelyard.core.audit.AuditLog`: who (key id, role, tenant), action (HTTP method), object
(path), result (status), time and request id. Reads that succeed cost one dict lookup, so the
inference hot path stays cheap. Both are plain ASGI (no ``BaseHTTPMiddleware``), so streaming
responses pass through untouched.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.core.audit import AuditEntry

__all__ = ["RequestIdMiddleware", "AuditMiddleware", "REQUEST_ID_HEADER", "request_id", "audit_entry"]

REQUEST_ID_HEADER = "x-request-id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
#: made ids: a random per-process prefix and a counter (unique, and cheap on the hot path)
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def request_id(given: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is a short safe token, else a new unique id."""
    if given and _SAFE_ID.match(given):
        return given
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class RequestIdMiddleware:
    """Give every HTTP request an id and echo it as ``X-Request-ID``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(_header(scope, REQUEST_ID_HEADER.encode()))
        scope.setdefault("state", {})["request_id"] = rid
        raw = rid.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", raw))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


def _is_data_plane(path: str) -> bool:
    """Inference calls change nothing: they are metered as usage, not audited as mutations."""
    return (path.startswith("/v2/") and path.endswith("/infer")) or path in _OPENAI_INFERENCE


_OPENAI_INFERENCE = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})


class AuditMiddleware:
    """Record mutations and auth failures; ``scope["app"].state.platform.audit`` receives them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        status: list[int] = [500]

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            code = status[0]
            if code in (401, 403) or (method not in _READS and not _is_data_plane(scope["path"])):
                self._record(scope, method, code)

    @staticmethod
    def _record(scope: Scope, method: str, code: int) -> None:
        app: Any = scope.get("app")
        platform = getattr(getattr(app, "state", None), "platform", None)
        audit = getattr(platform, "audit", None)
        if audit is None:
            return
        state = scope.get("state") or {}
        path = scope.get("path", "")
        query = scope.get("query_string", b"")
        audit.append(audit_entry(
            method, path + ("?" + query.decode("latin-1") if query else ""), code,
            str(state.get("request_id", "")), state.get("principal"), scope.get("client"),
        ))


def audit_entry(
    method: str, target: str, code: int, rid: str, principal: Any, client: tuple[str, int] | None
) -> AuditEntry:
    """The audit record of one HTTP call (``principal`` is ``None`` when unauthenticated)."""
    return AuditEntry(
        action=method,
        object=target,
        result=code,
        request_id=rid,
        tenant_id=getattr(principal, "tenant_id", None),
        key_id=getattr(principal, "key_id", None),
        role=getattr(principal, "role", None),
        client=f"{client[0]}" if client else "",
    )
