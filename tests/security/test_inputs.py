"""Hostile input on every route of the live OpenAPI document: mass assignment, path traversal
in names and paths, pickle canaries disguised as every accepted format on every upload route,
and error bodies that never show stack traces, file paths or SQL."""

from __future__ import annotations

import io
import pickle
import tarfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from tests.security.conftest import Operation, World, assert_clean

TRAVERSAL = [
    "..", "../etc/passwd", "..%2f..%2fetc%2fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%2e%2e",
    "..%5c..%5cwindows%5cwin.ini", "..\\..\\x", "a%00b", "x%00.onnx", "%252e%252e%252f", "....//....//etc",
    "/etc/passwd", "%2fetc%2fpasswd",
]
MASS = {
    "tenant_id": "TENANT", "tenant": "TENANT", "owner": "mallory", "stage": "production", "id": "forged-id",
    "sha256": "0" * 64, "path": "/etc/passwd", "file": "../../../etc/passwd", "filename": "../../x.onnx",
    "artifact_path": "/etc/shadow", "created_at": "1999-01-01T00:00:00Z", "role": "admin",
}
EXTENSIONS = [".onnx", ".csv", ".parquet", ".npz", ".jsonl", ".safetensors", ".tar.gz", ".zip"]
FORMAT_FOR = {".onnx": "onnx", ".safetensors": "safetensors", ".tar.gz": "hf", ".zip": "hf",
              ".csv": "csv", ".parquet": "parquet", ".npz": "npz", ".jsonl": "jsonl"}


def _report(failures: list[str]) -> None:
    assert not failures, f"{len(failures)} failure(s):\n" + "\n".join(failures[:60])


def _resolve(doc_schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    ref = doc_schema.get("$ref")
    if ref:
        return _resolve(components["schemas"][ref.rsplit("/", 1)[1]], components)
    return doc_schema


def _declared(world: World, op: Operation) -> set[str]:
    schema = op.spec["requestBody"]["content"]["application/json"].get("schema", {})
    components = world.http.get("/openapi.json").json().get("components", {})
    resolved = _resolve(schema, components)
    props = set(resolved.get("properties", {}))
    for alt in resolved.get("anyOf", []) + resolved.get("oneOf", []):
        props |= set(_resolve(alt, components).get("properties", {}))
    return props


def _key_for(world: World, op: Operation) -> str:
    return world.server.admin_key if op.path.startswith("/api/v1/tenants") else world.red.keys["owner"]


def test_mass_assignment_is_refused_or_ignored(world: World) -> None:
    failures = []
    for op in world.operations:
        if "application/json" not in op.body_types or op.method not in ("POST", "PUT", "PATCH"):
            continue
        declared = _declared(world, op)
        injected = {k: (world.blue.id if v == "TENANT" else v) for k, v in MASS.items() if k not in declared}
        params = world.params_for(op, world.red)
        resp = world.call(op, _key_for(world, op), params, json=injected)
        assert_clean(resp, str(op))
        if resp.status_code >= 500:
            failures.append(f"{op}: {resp.status_code}")
        elif resp.status_code < 300:
            text = resp.text
            for field in injected:
                if str(injected[field]) in text:
                    failures.append(f"{op}: accepted injected {field!r}: {text[:150]}")
    # the shared fixtures are untouched: red still owns its model, blue cannot see it
    model = world.http.get(f"/api/v1/models/{world.red.model}",
                           headers={"Authorization": f"Bearer {world.red.keys['owner']}"})
    assert model.status_code == 200
    assert world.http.get(f"/api/v1/models/{world.red.model}",
                          headers={"Authorization": f"Bearer {world.blue.keys['owner']}"}).status_code == 404
    _report(failures)


def test_mass_assignment_of_tenant_on_keys_and_versions(world: World) -> None:
    owner = {"Authorization": f"Bearer {world.red.keys['owner']}"}
    r = world.http.post("/api/v1/keys", headers=owner, json={"role": "viewer", "tenant_id": world.blue.id})
    assert r.status_code == 422
    r = world.http.patch(f"/api/v1/models/{world.red.model}/versions/1", headers=owner,
                         json={"description": "x", "tenant_id": world.blue.id, "sha256": "0" * 64})
    assert r.status_code == 422
    r = world.http.patch(f"/api/v1/models/{world.red.model}", headers=owner, json={"owner": "mallory"})
    assert r.status_code == 422


def test_path_traversal_in_every_path_parameter(world: World) -> None:
    failures = []
    for op in world.operations:
        if op.public or not op.path_params:
            continue
        for bad in TRAVERSAL:
            for name in op.path_params:
                target = op.path
                for k, v in {**world.params_for(op, world.red), name: bad}.items():
                    target = target.replace("{" + k + "}", v.replace("\\", "%5c"))
                content = b"a,b\n1,2\n" if op.body_types == ["application/octet-stream"] else None
                resp = world.raw(op.method, target, _key_for(world, op), content)
                assert_clean(resp, f"{op} {name}={bad}")
                if not 400 <= resp.status_code < 500:
                    failures.append(f"{op} {name}={bad!r}: {resp.status_code} {resp.text[:100]}")
                if "root:x:0:0" in resp.text:
                    failures.append(f"{op} {name}={bad!r}: served /etc/passwd")
    _report(failures)


_NAMEY = ("name", "filename", "path", "file", "model", "tenant", "format", "task", "object")


def _fill_query(op: Operation, overrides: dict[str, Any]) -> dict[str, Any]:
    query = {}
    for p in op.query_params:
        if p["name"] in overrides:
            query[p["name"]] = overrides[p["name"]]
        elif p.get("required"):
            query[p["name"]] = "safe-name"
    return query


def test_path_traversal_in_name_and_path_query_fields(world: World) -> None:
    failures = []
    for op in world.operations:
        names = [p["name"] for p in op.query_params if p["name"] in _NAMEY]
        if op.public or not names:
            continue
        for bad in TRAVERSAL:
            for field in names:
                params = world.params_for(op, world.red)
                if op.method == "POST":
                    params = {k: f"trav-{uuid.uuid4().hex[:8]}" if k in ("name",) else v for k, v in params.items()}
                content = b"a,b\n1,2\n" if "application/octet-stream" in op.body_types else None
                resp = world.call(op, _key_for(world, op), params, content=content,
                                  query=_fill_query(op, {field: bad.replace("%2f", "/").replace("%00", "\x00")}))
                assert_clean(resp, f"{op} ?{field}={bad}")
                if resp.status_code >= 500:
                    failures.append(f"{op} ?{field}={bad!r}: {resp.status_code}")
                if op.method == "POST" and field in ("name", "filename", "path", "file") and resp.status_code < 300:
                    failures.append(f"{op} ?{field}={bad!r}: accepted ({resp.status_code})")
    _report(failures)


class Canary:
    """Unpickling this creates the canary file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def _disguised(ext: str, canary: Path) -> bytes:
    raw = pickle.dumps(Canary(canary), protocol=4)
    if ext == ".zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("archive/data.pkl", raw)
            zf.writestr("pytorch_model.bin", raw)
        return buf.getvalue()
    if ext == ".tar.gz":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for name in ("model.pkl", "pytorch_model.bin", "config.json"):
                info = tarfile.TarInfo(name)
                info.size = len(raw)
                tf.addfile(info, io.BytesIO(raw))
        return buf.getvalue()
    if ext == ".npz":
        buf = io.BytesIO()
        np.savez(buf, x=np.array([Canary(canary)], dtype=object))
        return buf.getvalue()
    return raw


def _upload_operations(world: World) -> list[Operation]:
    return [
        op for op in world.operations
        if op.method in ("POST", "PUT") and ({"application/octet-stream", "multipart/form-data"} & set(op.body_types))
    ]


def test_pickle_canaries_never_execute(world: World, tmp_path: Path) -> None:
    canary = tmp_path / "canary-was-unpickled"
    uploads = _upload_operations(world)
    assert any(op.path == "/api/v1/models/{name}/versions" for op in uploads)
    failures = []
    for op in uploads:
        for ext in EXTENSIONS:
            blob = _disguised(ext, canary)
            params = {k: f"canary-{uuid.uuid4().hex[:8]}" for k in op.path_params}
            if "/infer" in op.path:
                params = world.params_for(op, world.red)
            query = _fill_query(op, {"format": FORMAT_FOR[ext], "filename": f"canary{ext}",
                                     "name": f"canary-{uuid.uuid4().hex[:8]}"})
            if "multipart/form-data" in op.body_types and "application/octet-stream" not in op.body_types:
                resp = world.http.post(op.path.format(**params), params=query,
                                       headers={"Authorization": f"Bearer {world.red.keys['owner']}"},
                                       files={"file": (f"canary{ext}", blob)})
            else:
                resp = world.call(op, world.red.keys["owner"], params, content=blob, query=query)
            try:
                assert_clean(resp, f"{op} {ext}")
            except AssertionError as exc:
                failures.append(str(exc).splitlines()[0])
            if resp.status_code >= 500 or resp.status_code < 400:
                failures.append(f"{op} {ext}: {resp.status_code} {resp.text[:120]}")
            if canary.exists():
                failures.append(f"{op} {ext}: THE CANARY WAS CREATED: an upload was unpickled")
                canary.unlink()
    _report(failures)
    # the canary really would fire if unpickled: the check is not vacuous
    pickle.loads(_disguised(".onnx", canary))
    assert canary.exists()
