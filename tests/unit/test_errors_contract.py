"""Contract: every ModelYardError subclass renders the same on REST, gRPC and the CLI."""

from __future__ import annotations

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modelyard import errors
from modelyard.api.errors import install_error_handlers
from modelyard.errors import ModelYardError

SECRET = "db password is hunter2 at /srv/secret/path"


def _all(cls: type[ModelYardError]) -> list[type[ModelYardError]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all(sub))
    return out


ERROR_CLASSES = [ModelYardError, *_all(ModelYardError)]
PUBLIC = [c for c in ERROR_CLASSES if not c.__name__.startswith("_")]


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/raise/{name}")
    async def raise_it(name: str) -> None:
        cls = next(c for c in ERROR_CLASSES if c.__name__ == name)
        raise cls(SECRET, details={"field": "x"}, retry_after=2.2)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(SECRET)

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(_app(), raise_server_exceptions=False)


def test_every_public_error_is_exported() -> None:
    defined_here = {c.__name__ for c in PUBLIC if c.__module__ == "modelyard.errors"}
    assert defined_here <= set(errors.__all__)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_rest_body_and_status(client: TestClient, cls: type[ModelYardError]) -> None:
    resp = client.get(f"/raise/{cls.__name__}")
    assert resp.status_code == cls.http_status
    body = resp.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == cls.code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if cls.http_status >= 500:
        if not issubclass(cls, errors._SafeServerError):
            assert SECRET not in resp.text
        assert "details" not in body["error"]
    else:
        assert body["error"]["message"] == SECRET
        assert body["error"]["details"] == {"field": "x"}
    if cls.http_status == 401:
        assert resp.headers["www-authenticate"] == "Bearer"
    assert resp.headers.get("retry-after") == "2"


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_grpc_status_and_exit_code(cls: type[ModelYardError]) -> None:
    assert cls.grpc_status in grpc.StatusCode.__members__
    assert isinstance(cls.exit_code, int) and 0 < cls.exit_code < 126
    assert 400 <= cls.http_status < 600
    assert isinstance(cls.code, str) and cls.code.islower()


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_sdk_rebuilds_the_class_from_its_code(cls: type[ModelYardError]) -> None:
    rebuilt = errors.error_for_code(cls.code, cls.http_status)
    assert rebuilt.code == cls.code and rebuilt.http_status == cls.http_status


def test_codes_are_unique_per_public_class() -> None:
    seen: dict[str, str] = {}
    for cls in ERROR_CLASSES:
        if cls.__name__.startswith("_") or cls.__module__ != "modelyard.errors":
            continue
        if cls.code in seen and cls.__name__ != "InternalError":
            pytest.fail(f"{cls.__name__} and {seen[cls.code]} share code {cls.code}")
        seen.setdefault(cls.code, cls.__name__)


def test_unexpected_exception_is_generic_500(client: TestClient) -> None:
    resp = client.get("/boom")
    assert resp.status_code == 500
    assert resp.json() == {"error": {"code": "internal", "message": "internal server error; see the server log"}}
    assert SECRET not in resp.text


def test_framework_errors_share_the_shape(client: TestClient) -> None:
    resp = client.get("/no/such/route")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = client.post("/boom")
    assert resp.status_code == 405 and set(resp.json()["error"]) == {"code", "message"}
