"""The security suite's world: one live server with two tenants, a model in each, keys of every
role, revoked and expired keys, and the live OpenAPI document that drives the tables."""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_sdk import tiny_onnx
from tests.support.live import LiveServer

ROLES = ("owner", "developer", "viewer", "inference")
METHODS = ("get", "post", "put", "patch", "delete")
#: routes that answer without a key; anything else must require one.
PUBLIC = {("GET", "/v2/health/live"), ("GET", "/v2/health/ready")}
#: what an error body must never contain.
LEAKS = re.compile(
    r"Traceback|File \"/|/work/|/tmp/|/home/|site-packages|sqlalchemy|sqlite3?\.|psycopg|"
    r"\bSELECT\b.+\bFROM\b|\bINSERT INTO\b|pydantic_core|line \d+, in ",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{([^}]+)}", self.path)

    @property
    def query_params(self) -> list[dict[str, Any]]:
        return [p for p in self.spec.get("parameters", []) if p.get("in") == "query"]

    @property
    def body_types(self) -> list[str]:
        return list((self.spec.get("requestBody") or {}).get("content", {}))

    @property
    def public(self) -> bool:
        return (self.method, self.path) in PUBLIC

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass
class Tenant:
    name: str
    id: str
    model: str
    keys: dict[str, str] = field(default_factory=dict)  # role -> secret
    key_ids: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    server: LiveServer
    operations: list[Operation]
    red: Tenant
    blue: Tenant
    revoked: str
    expired: str
    http: httpx.Client

    @property
    def url(self) -> str:
        return self.server.url

    def call(
        self, op: Operation, key: str | None, params: dict[str, str], *, raw_auth: str | None = None,
        json: Any = None, content: bytes | None = None, query: dict[str, Any] | None = None,
    ) -> httpx.Response:
        path = op.path
        for name, value in params.items():
            path = path.replace("{" + name + "}", value)
        headers = {}
        if raw_auth is not None:
            headers["Authorization"] = raw_auth
        elif key is not None:
            headers["Authorization"] = f"Bearer {key}"
        kwargs: dict[str, Any] = {"headers": headers, "params": query}
        if content is not None:
            kwargs["content"] = content
            headers["Content-Type"] = "application/octet-stream"
        elif json is not None:
            kwargs["json"] = json
        elif op.body_types and "application/json" in op.body_types:
            kwargs["json"] = {}
        return self.http.request(op.method, path, **kwargs)

    def raw(self, method: str, target: str, key: str | None, body: bytes | None = None) -> httpx.Response:
        """Send ``target`` byte for byte (no dot-segment normalisation, unlike httpx), so the
        server itself meets ``..`` and its encoded variants."""
        port = self.server.settings.http_port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        elif method in ("POST", "PUT", "PATCH"):
            body, headers["Content-Type"] = b"{}", "application/json"
        try:
            conn.request(method, target, body=body, headers=headers)
            answer = conn.getresponse()
            return httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())
        finally:
            conn.close()

    def params_for(self, op: Operation, owner: Tenant) -> dict[str, str]:
        """Path parameters naming ``owner``'s objects (its model, version 1, its owner key...)."""
        values = {}
        for name in op.path_params:
            if name in ("version", "model_version"):
                values[name] = "1"
            elif name == "key_id":
                values[name] = owner.key_ids["owner"]
            elif op.path.startswith("/api/v1/tenants"):
                values[name] = owner.name
            elif name in ("job_id",):
                values[name] = "00000000-0000-0000-0000-000000000000"
            else:
                values[name] = owner.model
        return values


def assert_clean(resp: httpx.Response, context: str) -> None:
    """Error bodies: the one error shape, no stack traces, file paths or SQL."""
    if resp.status_code < 400:
        return
    text = resp.text
    assert not LEAKS.search(text), f"{context}: error body leaks internals: {text[:300]}"
    if resp.headers.get("content-type", "").startswith("application/json"):
        body = resp.json()
        assert isinstance(body, dict) and "error" in body and {"code", "message"} <= set(body["error"]), (
            f"{context}: error body not in the standard shape: {text[:300]}"
        )


def _make_tenant(admin: httpx.Client, name: str, tmp: Path, add: float) -> Tenant:
    tenant = admin.post("/api/v1/tenants", json={"name": name}).json()
    t = Tenant(name=name, id=tenant["id"], model=f"{name}-model")
    for role in ROLES:
        created = admin.post("/api/v1/keys", json={"role": role, "tenant": name}).json()
        t.keys[role], t.key_ids[role] = created["secret"], created["id"]
    artifact = tiny_onnx(tmp / f"{name}.onnx", add=add)
    r = httpx.post(
        f"{admin.base_url}/api/v1/models/{t.model}/versions", params={"stage": "production"},
        content=artifact.read_bytes(), headers={"Authorization": f"Bearer {t.keys['owner']}"}, timeout=30,
    )
    assert r.status_code == 201, r.text
    return t


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("security")
    server = LiveServer.build(tmp / "home").start()
    try:
        with server.client() as admin:
            red = _make_tenant(admin, "red", tmp, 1.0)
            blue = _make_tenant(admin, "blue", tmp, 2.0)
            revoked = admin.post("/api/v1/keys", json={"role": "owner", "tenant": "red"}).json()
            assert admin.delete(f"/api/v1/keys/{revoked['id']}").status_code == 204
            expired = admin.post("/api/v1/keys", json={"role": "owner", "tenant": "red", "expires_in_s": 1}).json()
            doc = admin.get("/openapi.json").json()
        time.sleep(1.2)
        operations = [
            Operation(method.upper(), path, spec)
            for path, item in doc["paths"].items()
            for method, spec in item.items()
            if method in METHODS
        ]
        with httpx.Client(base_url=server.url, timeout=20) as http:
            yield World(server, operations, red, blue, revoked["secret"], expired["secret"], http)
    finally:
        server.stop()
