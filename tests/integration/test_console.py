"""The web console's files through a real server: what is served, with which headers, and what
is refused. (What the page does with them: ``tests/browser/test_console_browser.py``.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.live import LiveServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer.build(tmp_path_factory.mktemp("console"), builtin_models=False, grpc_enabled=False).start()
    yield live
    live.stop()


def _get(server: LiveServer, path: str, **kwargs: object) -> httpx.Response:
    return httpx.get(server.url + path, timeout=30, **kwargs)  # type: ignore[arg-type]


def test_the_server_root_and_the_bare_path_lead_to_the_console(server: LiveServer) -> None:
    for path in ("/", "/console"):
        r = _get(server, path)
        assert r.status_code == 307, path
        assert r.headers["location"] == "/console/"


def test_the_page_and_its_files_need_no_key_and_keep_to_their_own_origin(server: LiveServer) -> None:
    page = _get(server, "/console/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="console.js"></script>' in page.text
    csp = page.headers["content-security-policy"]
    for rule in ("default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"):
        assert rule in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    scripts = {}
    for name in ("console.js", "pages.js", "api.js", "dom.js", "charts.js"):  # console.js imports the others
        script = _get(server, f"/console/{name}")
        assert script.status_code == 200 and script.headers["content-type"] == "text/javascript; charset=utf-8"
        scripts[name] = script.text
    assert 'from "./pages.js"' in scripts["console.js"]
    code = "".join(scripts.values())
    for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert unsafe not in code  # values from the server go in as text only
    assert "sessionStorage" in code and "localStorage" not in code
    style = _get(server, "/console/console.css")
    assert style.status_code == 200 and style.headers["content-type"] == "text/css; charset=utf-8"
    # The data behind the page still needs a key.
    assert _get(server, "/api/v1/models").status_code == 401


def test_a_file_not_changed_since_it_was_read_is_not_sent_again(server: LiveServer) -> None:
    first = _get(server, "/console/console.js")
    etag = first.headers["etag"]
    again = _get(server, "/console/console.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    other = _get(server, "/console/console.js", headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200 and other.content == first.content


@pytest.mark.parametrize("path", [
    "/console/index.htm",
    "/console/..%2Fconfig.py",
    "/console/%2E%2E/%2E%2E/config.py",
    "/console/console.js.map",
    "/console/ConSole.js",
])
def test_nothing_else_is_served_from_the_console(server: LiveServer, path: str) -> None:
    r = _get(server, path)
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "not_found"
    assert error["message"]


def test_the_console_can_be_turned_off(tmp_path: Path) -> None:
    live = LiveServer.build(tmp_path, builtin_models=False, grpc_enabled=False, console=False).start()
    try:
        for path in ("/", "/console", "/console/", "/console/console.js"):
            r = _get(live, path)
            assert r.status_code == 404, path
            assert r.json()["error"]["code"] == "not_found"
        with live.client() as http:  # the API itself is unaffected
            assert http.get("/api/v1/whoami").status_code == 200
    finally:
        live.stop()
