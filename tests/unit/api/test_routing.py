"""``JsonBodyRoute``: a JSON body is read whatever form-like type curl sent it with; other types get
415 in the error shape; routes without a JSON body are untouched."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from modelyard.api.errors import install_error_handlers
from modelyard.api.routing import JsonBodyRoute, read_json_object


class Body(BaseModel):
    name: str
    weight: float = 1.0


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter(route_class=JsonBodyRoute)

    @router.post("/things")
    async def create(body: Body) -> dict:
        return {"name": body.name, "weight": body.weight}

    @router.post("/raw")
    async def raw(request: Request) -> dict:
        return {"type": request.headers.get("content-type"), "size": len(await request.body())}

    @app.post("/settings")
    async def settings(request: Request) -> dict:
        return await read_json_object(request, example='{"level": 1}')

    app.include_router(router)
    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(_app())


@pytest.mark.parametrize("content_type", [
    None,                                         # no Content-Type at all
    "application/x-www-form-urlencoded",          # curl -d / --data-binary
    "text/plain; charset=utf-8",
    "application/json",
    "application/merge-patch+json",
    "Application/JSON; charset=utf-8",
])
def test_a_json_body_is_read_as_json(client: TestClient, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    r = client.post("/things", content=b'{"name": "a", "weight": 2}', headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "a", "weight": 2.0}


def test_a_form_that_is_not_json_is_malformed_json_with_where(client: TestClient) -> None:
    r = client.post("/things", content=b"name=a&weight=2",
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "bad_request"
    assert error["message"] == "malformed JSON in the request body: Expecting value (char 0)"


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=x", "application/xml", "image/png"])
def test_other_types_get_415_saying_what_to_send(client: TestClient, content_type: str) -> None:
    r = client.post("/things", content=b'{"name": "a"}', headers={"content-type": content_type})
    assert r.status_code == 415
    error = r.json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in error["message"] and content_type in error["message"]


def test_the_body_still_validates(client: TestClient) -> None:
    r = client.post("/things", content=b'{"weight": "heavy"}',
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "validation_failed"


def test_a_route_without_a_json_body_sees_what_was_sent(client: TestClient) -> None:
    r = client.post("/raw", content=b"\x00\x01\x02", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.json() == {"type": "application/x-www-form-urlencoded", "size": 3}
    r = client.post("/raw", content=b"<a/>", headers={"content-type": "application/xml"})
    assert r.status_code == 200 and r.json()["type"] == "application/xml"



@pytest.mark.parametrize(("body", "status", "answer"), [
    (b"", 200, {}),                                   # no body: nothing asked
    (b"  \n", 200, {}),
    (b'{"level": 2}', 200, {"level": 2}),
    (b"{not json", 400, "malformed JSON in the request body"),
    (b"[1, 2]", 400, 'must be a JSON object, e.g. {"level": 1}'),
])
def test_a_route_reading_its_own_body_gets_an_object_or_a_400(
    client: TestClient, body: bytes, status: int, answer: object
) -> None:
    r = client.post("/settings", content=body, headers={"content-type": "text/plain"})
    assert r.status_code == status, r.text
    if status == 200:
        assert r.json() == answer
    else:
        error = r.json()["error"]
        assert error["code"] == "bad_request" and str(answer) in error["message"]
