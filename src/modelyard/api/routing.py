"""How the API reads a JSON body that came without a JSON ``Content-Type``.

curl's ``-d`` and ``--data-binary`` send ``application/x-www-form-urlencoded`` unless told
otherwise, and some clients send ``text/plain`` or no type at all. FastAPI reads such a body as
bytes, and the caller got ``Input should be a valid dictionary``, which does not say what was
wrong. No ModelYard route takes a form, so a route that expects a JSON body
(:class:`JsonBodyRoute`) reads those types as JSON; a body that is not JSON then gets the usual
400 ``malformed JSON``. Any other type (``multipart/form-data``, ``application/xml``, ...) gets 415
``unsupported_media_type`` saying what to send instead. Routes without a JSON body (uploads read
as bytes, reads) are left as they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response, params
from fastapi.routing import APIRoute

from modelyard.errors import BadRequest, UnsupportedMediaType

__all__ = ["JsonBodyRoute", "as_json_request", "read_json_object"]

#: media types read as JSON by a route that expects a JSON body ("": no Content-Type at all)
_READ_AS_JSON = frozenset({"", "application/x-www-form-urlencoded", "text/plain"})
_JSON = (b"content-type", b"application/json")


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def as_json_request(request: Request) -> Request:
    """``request`` as a route that expects a JSON body should read it: as it is when its
    ``Content-Type`` is JSON (``application/json`` or ``application/*+json``), with the type set
    to JSON when it is one of the types curl and friends send by default (see the module); else
    :class:`UnsupportedMediaType`."""
    given = request.headers.get("content-type", "")
    kind = _media_type(given)
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return request
    if kind not in _READ_AS_JSON:
        raise UnsupportedMediaType(
            f"this endpoint reads a JSON body, not {given!r}: send it with Content-Type: application/json"
        )
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    headers.append(_JSON)
    return Request({**request.scope, "headers": headers}, request.receive)


async def read_json_object(request: Request, example: str = '{"ready": true}') -> dict[str, Any]:
    """The optional JSON object body of a route that reads its body itself (Triton's repository
    and logging calls, whatever their ``Content-Type``): ``{}`` when there is none; 400 for
    malformed JSON or another JSON value, with ``example`` of what to send."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"malformed JSON in the request body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, e.g. {example}")
    return body


class JsonBodyRoute(APIRoute):
    """An ``APIRoute`` that reads its JSON body whatever form-like type it was sent with (see
    the module). Every ``/api/v1`` router uses it; the inference routes (OIP v2 and OpenAI)
    read their bodies themselves, as JSON whatever the type."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        field = self.body_field
        if field is None or isinstance(field.field_info, params.Form):
            return handler

        async def route(request: Request) -> Response:
            return await handler(as_json_request(request))

        return route
