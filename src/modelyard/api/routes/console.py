"""The web console (``docs/console.md``): a page over the REST API, served at ``/console/``.

Static files from ``api/console/`` (the page, its script's modules, its style sheet, its icon) and
nothing rendered here: the page signs in with an API key typed into it and reads everything through the
same ``/api/v1`` routes as the CLI and the SDK, as far as that key's role allows. The files are
public (they hold no data). Their headers keep the page from being framed, from running any
script but its own and from talking to any server but this one; it never writes a value from
the server into the page as markup.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from modelyard.errors import NotFound

__all__ = ["router", "PATH"]

#: where the console lives
PATH = "/console/"

router = APIRouter(include_in_schema=False)

#: file served -> its media type ("" is the page itself)
_FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    **{name: (name, "text/javascript; charset=utf-8") for name in ("console.js", "pages.js", "api.js", "dom.js", "charts.js")},
    "console.css": ("console.css", "text/css; charset=utf-8"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
}

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated with the ETag: a new release shows at the next load
}


@cache
def _file(name: str) -> tuple[bytes, str]:
    """A console file's bytes and ETag (read once)."""
    data = resources.files("modelyard.api").joinpath("console", name).read_bytes()
    return data, f'"{hashlib.sha256(data).hexdigest()[:32]}"'


@router.get("/console")
async def console_root() -> RedirectResponse:
    return RedirectResponse(PATH, status_code=307)


@router.get("/")
async def server_root() -> RedirectResponse:
    """A browser pointed at the server finds the console."""
    return RedirectResponse(PATH, status_code=307)


@router.get(PATH + "{name}")
@router.get(PATH)
async def console_file(request: Request, name: str = "") -> Response:
    if name not in _FILES:
        raise NotFound(f"the console has no file {name!r}; open {PATH}")
    filename, media_type = _FILES[name]
    data, etag = _file(filename)
    headers = {**_HEADERS, "ETag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)
