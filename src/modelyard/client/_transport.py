"""The SDK's HTTP transport: base URL, API key, JSON helpers, pagination and typed errors.

Every resource of the SDK (``client.models``, ...) takes a :class:`Transport` and calls its
helpers, so authentication, timeouts and error translation live in one place:

- the base URL comes from ``url=`` or ``$MODELYARD_URL`` (default ``http://127.0.0.1:8000``);
- the API key from ``api_key=`` or ``$MODELYARD_API_KEY`` (sent as ``Authorization: Bearer``);
- an error body ``{"error": {"code", "message"}}`` is rebuilt into the typed
  :mod:`modelyard.errors` class for its code (``retry_after`` from ``Retry-After``);
- a server that cannot be reached raises :class:`~modelyard.errors.Unavailable` (with
  ``details["reason"] == "connect"``) and a timeout :class:`~modelyard.errors.DeadlineExceeded`,
  each ``from`` the httpx exception.

Tests inject an ``httpx.BaseTransport`` (e.g. ``httpx.MockTransport``) instead of patching.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx

from modelyard import __version__
from modelyard.errors import DeadlineExceeded, ModelYardError, Unavailable, error_for_code

__all__ = ["Transport", "DEFAULT_URL", "error_from_response"]

#: The server a client talks to when neither ``url=`` nor ``$MODELYARD_URL`` says otherwise.
DEFAULT_URL = "http://127.0.0.1:8000"


class Transport:
    """An authenticated HTTP session to one ModelYard server (thread-safe, like ``httpx.Client``).

    ``request`` returns the ``httpx.Response`` of a 2xx answer and raises the typed
    :class:`~modelyard.errors.ModelYardError` for anything else.
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = (url or os.environ.get("MODELYARD_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("MODELYARD_API_KEY")
        all_headers = {"User-Agent": f"modelyard-python/{__version__}", **dict(headers or {})}
        if key:
            all_headers["Authorization"] = f"Bearer {key}"
        self.has_key = bool(key)
        self._http = httpx.Client(
            base_url=self.url, headers=all_headers, timeout=timeout, transport=transport
        )

    # -- the one place requests are sent -----------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; the 2xx response, or the typed error rebuilt from the body."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(
                method, path, params=clean or None, json=json, content=content, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise DeadlineExceeded(
                f"{method} {self.url}{path} timed out: {exc or type(exc).__name__}"
            ) from exc
        except httpx.TransportError as exc:
            raise Unavailable(
                f"cannot reach the ModelYard server at {self.url}: {exc or type(exc).__name__}",
                details={"reason": "connect", "url": self.url},
            ) from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def get(self, path: str, *, params: Mapping[str, Any] | None = None) -> Any:
        """GET ``path`` and return its JSON body."""
        return self.json_body(self.request("GET", path, params=params))

    def post(self, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        """POST a JSON body; return the JSON answer (``None`` for an empty one)."""
        return self.json_body(self.request("POST", path, json=json, params=params))

    def patch(self, path: str, *, json: Any) -> Any:
        """PATCH a JSON body; return the JSON answer."""
        return self.json_body(self.request("PATCH", path, json=json))

    def delete(self, path: str, *, params: Mapping[str, Any] | None = None) -> None:
        """DELETE ``path`` (204 expected)."""
        self.request("DELETE", path, params=params)

    def paginate(
        self, path: str, *, params: Mapping[str, Any] | None = None, page_size: int = 50
    ) -> Iterator[dict[str, Any]]:
        """Yield every item of a paginated list endpoint (``{"items", "total", "page",
        "page_size"}``), fetching page after page lazily."""
        page = 1
        seen = 0
        while True:
            body = self.get(path, params={**dict(params or {}), "page": page, "page_size": page_size})
            items = body.get("items", [])
            yield from items
            seen += len(items)
            if not items or seen >= int(body.get("total", seen)):
                return
            page += 1

    def json_body(self, response: httpx.Response) -> Any:
        """The JSON body of a 2xx answer (``None`` when empty); ``Unavailable`` when the answer
        is not JSON, which means the URL is not a ModelYard server."""
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise Unavailable(
                f"{response.request.method} {response.request.url} answered with something that "
                f"is not JSON ({response.headers.get('content-type', 'no content type')})",
                details={"reason": "protocol", "url": self.url},
            ) from exc

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()


def error_from_response(response: httpx.Response) -> ModelYardError:
    """The typed error for a non-2xx response, from its ``{"error": {"code", "message"}}`` body.

    A body that is not in that shape (a proxy's HTML page, say) still gives the class for the
    HTTP status, with the start of the body as message.
    """
    code, message, details = "", "", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = str(err.get("code") or "")
        message = str(err.get("message") or "")
        if isinstance(err.get("details"), dict):
            details = err["details"]
    if not message:
        text = response.text.strip()[:200]
        message = f"HTTP {response.status_code}" + (f": {text}" if text else "")
    cls = error_for_code(code, response.status_code)
    return cls(message, details=details, retry_after=_retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: not sent by ModelYard; ignored rather than guessed


