"""Hugging Face archives through the upload route: hostile ones are refused with 400 and leave
nothing on disk; the task can be named or detected; a lost cache folder is re-extracted."""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.support.live import LiveServer
from tests.unit.llm_api.builders import build_tiny_gpt2, remote_code_config, tar_gz, tar_with

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2") / "tiny")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer.build(tmp_path_factory.mktemp("uploads") / "home").start()
    try:
        yield live
    finally:
        live.stop()


def _push(server: LiveServer, name: str, data: bytes, **params: str):  # noqa: ANN202
    with server.client() as c:
        return c.post(f"/api/v1/models/{name}/versions", params={"format": "hf", **params}, content=data,
                      headers={"Content-Type": "application/octet-stream"})


def _disk_state(server: LiveServer) -> tuple[set[str], set[str]]:
    home = server.settings.resolved_home
    cache = home / "hf-cache"
    root = server.settings.resolved_artifact_root
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    return ({p.name for p in cache.iterdir()} if cache.exists() else set()), files


def _link(name: str, target: str, *, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info


def _zip(folder: Path, extra: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in folder.iterdir():
            z.write(p, p.name)
        for name, data in extra.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("case", [
    "traversal", "absolute", "symlink", "hardlink", "device", "pickle", "remote-code", "zip-traversal",
    "not-an-archive", "wrong-task",
])
def test_hostile_archives_are_refused_and_leave_nothing(server: LiveServer, gpt2_folder: Path, case: str) -> None:
    before = _disk_state(server)
    data = {
        "traversal": lambda: tar_with(gpt2_folder, extra=[tarfile.TarInfo("../escape.txt")],
                                      data={"../escape.txt": b"x"}),
        "absolute": lambda: tar_with(gpt2_folder, extra=[tarfile.TarInfo("/tmp/abs.txt")],
                                     data={"/tmp/abs.txt": b"x"}),
        "symlink": lambda: tar_with(gpt2_folder, extra=[_link("evil", "/etc/passwd")]),
        "hardlink": lambda: tar_with(gpt2_folder, extra=[_link("evil", "config.json", hard=True)]),
        "device": lambda: tar_with(gpt2_folder, extra=[_device("null")]),
        "pickle": lambda: tar_with(gpt2_folder, extra=[tarfile.TarInfo("pytorch_model.bin")],
                                   data={"pytorch_model.bin": b"\x80\x04K\x01."}),
        "remote-code": lambda: tar_with(gpt2_folder, extra=[],
                                        replace={"config.json": remote_code_config(gpt2_folder)}),
        "zip-traversal": lambda: _zip(gpt2_folder, {"../../evil.py": b"print(1)"}),
        "not-an-archive": lambda: b"just some bytes, not a model",
        "wrong-task": lambda: tar_gz(gpt2_folder),
    }[case]()
    params = {"format": "hf-embeddings"} if case == "wrong-task" else {}
    r = _push(server, f"bad-{case}", data, **params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] in ("unsafe_content", "invalid_artifact", "invalid_input")
    if case in ("pickle",):
        assert "safetensors" in r.json()["error"]["message"]
    if case == "remote-code":
        assert "remote code" in r.json()["error"]["message"]
    assert _disk_state(server) == before
    with server.client() as c:
        assert c.get(f"/api/v1/models/bad-{case}").status_code == 404
    assert not (server.settings.resolved_home.parent / "escape.txt").exists()


def test_task_can_be_named_and_the_cache_is_rebuilt(server: LiveServer, gpt2_folder: Path) -> None:
    r = _push(server, "named", tar_gz(gpt2_folder, prefix="x"), task="text-generation")
    assert r.status_code == 201, r.text
    version = r.json()
    assert version["format"] == "hf-text-generation"
    shutil.rmtree(server.settings.resolved_home / "hf-cache" / version["sha256"])
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.admin_key, max_retries=0)
    out = client.completions.create(model="named", prompt="hello", max_tokens=3, temperature=0)
    assert out.usage.completion_tokens >= 1
    assert (server.settings.resolved_home / "hf-cache" / version["sha256"]).is_dir()
    bad_task = _push(server, "named", tar_gz(gpt2_folder), task="painting")
    assert bad_task.status_code == 400


def test_deleting_the_last_version_removes_the_extracted_folder(server: LiveServer, gpt2_folder: Path) -> None:
    r = _push(server, "short-lived", tar_gz(gpt2_folder, prefix="short"))
    assert r.status_code == 201, r.text
    cache = server.settings.resolved_home / "hf-cache" / r.json()["sha256"]
    assert cache.is_dir()
    with server.client() as c:
        assert c.delete("/api/v1/models/short-lived/versions/1").status_code == 204
    assert not cache.exists()


def test_hf_versions_also_answer_oip_v2(server: LiveServer, gpt2_folder: Path) -> None:
    assert _push(server, "v2-gpt", tar_gz(gpt2_folder)).status_code == 201
    body = {"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["hello", "the quick"]},
        {"name": "max_tokens", "datatype": "INT32", "shape": [1], "data": [3]},
        {"name": "temperature", "datatype": "FP32", "shape": [1], "data": [0.0]},
    ]}
    with server.client() as c:
        r = c.post("/v2/models/v2-gpt/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "text_output" and out["shape"] == [2]
