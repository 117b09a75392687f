"""Datasets over the REST API and the SDK: upload, describe, dedupe, bad files, limits, delete."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelyard.client import Client
from modelyard.errors import Conflict, DatasetNotFound, PayloadTooLarge, ValidationFailed
from tests.support.live import LiveServer

CSV = b"a,b,label\n1,2.5,x\n3,,y\n5,6.5,x\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer.build(
        tmp_path_factory.mktemp("datasets") / "home", grpc_enabled=False, job_workers=0, max_dataset_bytes=64 * 1024
    ).start()
    try:
        yield s
    finally:
        s.stop()


def _blobs(server: LiveServer) -> set[str]:
    root = server.settings.resolved_artifact_root / "blobs"
    return {p.name for p in root.rglob("*") if p.is_file()}


def _staged(server: LiveServer) -> list[Path]:
    return list((server.settings.resolved_artifact_root / "tmp").glob("*.part"))


def test_csv_upload_is_described_and_content_addressed(server: LiveServer) -> None:
    with server.client() as c:
        r = c.post("/api/v1/datasets", params={"name": "small", "filename": "small.csv"}, content=CSV)
        assert r.status_code == 201, r.text
        d = r.json()
        assert d["format"] == "csv" and d["n_rows"] == 3 and d["reference"] == "small"
        cols = {col["name"]: col for col in d["columns"]}
        assert cols["a"]["dtype"] == "int64" and cols["b"]["dtype"] == "float64" and cols["b"]["missing"] == 1
        assert cols["label"]["dtype"] == "string"
        assert d["preview"][1] == {"a": 3, "b": None, "label": "y"}
        import hashlib

        assert d["sha256"] == hashlib.sha256(CSV).hexdigest() and d["sha256"] in _blobs(server)
        again = c.post("/api/v1/datasets", params={"name": "small", "format": "csv"}, content=CSV)
        assert again.status_code == 200 and again.json()["id"] == d["id"]
        other = c.post("/api/v1/datasets", params={"name": "small", "format": "csv"}, content=CSV + b"7,8,y\n")
        assert other.status_code == 409 and other.json()["error"]["code"] == "conflict"
        assert c.get("/api/v1/datasets/small").json()["id"] == d["id"]
        assert c.get(f"/api/v1/datasets/{d['id']}").json()["name"] == "small"
        listed = c.get("/api/v1/datasets", params={"page_size": 500}).json()
        assert "small" in [i["name"] for i in listed["items"]]


def test_npz_parquet_jsonl_uploads(server: LiveServer, tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((4, 8, 8), np.float32), y=np.arange(4))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"f": [1.0, 2.0], "g": ["u", "v"]}), tmp_path / "t.parquet")
    jsonl = b'{"text": "good film", "label": "pos"}\n{"text": "bad film", "label": "neg"}\n'
    with server.client() as c:
        npz = c.post("/api/v1/datasets", params={"name": "images", "format": "npz"}, content=buf.getvalue()).json()
        assert npz["n_rows"] == 4 and {col["name"]: col["shape"] for col in npz["columns"]}["x"] == [8, 8]
        par = c.post("/api/v1/datasets", params={"name": "tbl", "filename": "t.parquet"},
                     content=(tmp_path / "t.parquet").read_bytes()).json()
        assert par["format"] == "parquet" and par["n_rows"] == 2
        text = c.post("/api/v1/datasets", params={"name": "reviews", "format": "jsonl"}, content=jsonl).json()
        assert text["n_rows"] == 2 and [col["name"] for col in text["columns"]] == ["text", "label"]


@pytest.mark.parametrize(
    ("fmt", "body", "needle"),
    [
        ("csv", b"a,b\n1,2\n3\n", "csv"),  # mismatched row lengths
        ("jsonl", b'{"a": 1}\n{"a": 2', "line 2"),  # truncated
        ("npz", b"PK\x03\x04garbage", "npz"),  # malformed
        ("jsonl", b'{"a": 1}\n{"a": "x"}\n', "'a'"),  # mixed types in a column
        ("csv", b"a,b\n", "no rows"),  # header only
    ],
)
def test_bad_files_are_422_and_leave_nothing(server: LiveServer, fmt: str, body: bytes, needle: str) -> None:
    before = _blobs(server)
    with server.client() as c:
        r = c.post("/api/v1/datasets", params={"name": "bad", "format": fmt}, content=body)
    assert r.status_code == 422, r.text
    assert needle.lower() in r.json()["error"]["message"].lower()
    assert _blobs(server) == before and _staged(server) == []
    with server.client() as c:
        assert c.get("/api/v1/datasets/bad").status_code == 404


def test_empty_unknown_format_and_pickle(server: LiveServer) -> None:
    with server.client() as c:
        assert c.post("/api/v1/datasets", params={"name": "e", "format": "csv"}, content=b"").status_code == 422
        r = c.post("/api/v1/datasets", params={"name": "e", "format": "xlsx"}, content=b"x")
        assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "format"
        buf = io.BytesIO()
        np.savez(buf, obj=np.array([{"a": 1}], dtype=object))
        r = c.post("/api/v1/datasets", params={"name": "pick", "format": "npz"}, content=buf.getvalue())
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsafe_content"
        assert c.post("/api/v1/datasets", params={"name": "../x", "format": "csv"}, content=CSV).status_code == 422


def test_over_the_limit_is_413_and_leaves_nothing(server: LiveServer) -> None:
    before = _blobs(server)
    big = b"a,b\n" + b"1,2\n" * 20_000  # 80 KB > 64 KiB
    with server.client() as c:
        r = c.post("/api/v1/datasets", params={"name": "big", "format": "csv"}, content=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the stream itself is cut
            for _ in range(20):
                yield b"1,2\n" * 1000

        r = c.post("/api/v1/datasets", params={"name": "big", "format": "csv"}, content=chunks())
        assert r.status_code == 413
    assert _blobs(server) == before and _staged(server) == []


def test_builtin_datasets_and_delete(server: LiveServer) -> None:
    with server.client() as c:
        assert "builtin:digits" in c.get("/api/v1/datasets/builtin").json()
        digits = c.get("/api/v1/datasets/builtin:digits").json()
        assert digits["builtin"] and digits["n_rows"] == 1797 and len(digits["columns"]) == 65
        assert c.get("/api/v1/datasets/builtin:nope").status_code == 404
        c.post("/api/v1/datasets", params={"name": "gone", "format": "csv"}, content=b"q,r\n1,2\n9,9\n")
        sha = c.get("/api/v1/datasets/gone").json()["sha256"]
        assert c.delete("/api/v1/datasets/gone").status_code == 204
        assert c.get("/api/v1/datasets/gone").status_code == 404
        assert c.delete("/api/v1/datasets/gone").status_code == 404
    assert sha not in _blobs(server)


def test_sdk_datasets(server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "sdk.csv"
    path.write_bytes(b"x,y\n1,0\n2,1\n3,0\n")
    seen: list[int] = []
    with Client(url=server.url, api_key=server.admin_key) as client:
        ds = client.datasets.push(path, progress=lambda sent, total: seen.append(sent))
        assert ds.name == "sdk" and ds.n_rows == 3 and seen[-1] == path.stat().st_size
        assert client.datasets.get("sdk").sha256 == ds.sha256
        assert "sdk" in [d.name for d in client.datasets.list()]
        assert client.datasets.get("builtin:iris").n_rows == 150
        path.write_bytes(b"x,y\n1,0\n")
        with pytest.raises(Conflict):
            client.datasets.push(path)
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"a": 1}\n[1]\n')
        with pytest.raises(ValidationFailed):
            client.datasets.push(bad)
        client.datasets.delete("sdk")
        with pytest.raises(DatasetNotFound):
            client.datasets.get("sdk")
        big = tmp_path / "big.csv"
        big.write_bytes(b"a\n" + b"1\n" * 40_000)
        with pytest.raises(PayloadTooLarge):
            client.datasets.push(big)


def test_viewer_cannot_upload(server: LiveServer) -> None:
    with server.client() as c:
        r = c.post("/api/v1/keys", json={"name": "v", "role": "viewer"})
        if r.status_code != 201:
            pytest.skip("key creation API not available")
        key = r.json().get("key") or r.json().get("secret")
    with server.client(key=key) as v:
        assert v.get("/api/v1/datasets").status_code == 200
        assert v.post("/api/v1/datasets", params={"name": "x", "format": "csv"}, content=CSV).status_code == 403


def test_cli_datasets_push_list_show_delete(server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from modelyard.cli.main import app

    monkeypatch.setenv("MODELYARD_URL", server.url)
    monkeypatch.setenv("MODELYARD_API_KEY", server.admin_key)
    path = tmp_path / "cli.csv"
    path.write_bytes(b"p,q,label\n1,2,a\n3,4,b\n")
    runner = CliRunner()
    pushed = runner.invoke(app, ["datasets", "push", str(path), "--name", "cli-ds"])
    assert pushed.exit_code == 0, pushed.output
    assert "2 rows" in pushed.output and "label" in pushed.output
    listed = runner.invoke(app, ["datasets", "list"])
    assert listed.exit_code == 0 and "cli-ds" in listed.output
    shown = runner.invoke(app, ["datasets", "show", "builtin:iris", "--json"])
    assert shown.exit_code == 0 and '"n_rows": 150' in shown.output
    missing = runner.invoke(app, ["datasets", "show", "nope"])
    assert missing.exit_code == 4 and "not found" in missing.output
    assert runner.invoke(app, ["datasets", "delete", "cli-ds", "--yes"]).exit_code == 0
