"""``hf-*`` formats through the registry: archives are inspected in a temporary folder that is
always removed, and the task must fit the format."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from modelyard.errors import InvalidArtifact, UnsafeContent
from modelyard.runtimes.base import inspect_artifact
from tests.unit.llm_api.builders import build_tiny_gpt2, tar_gz, tar_with

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2") / "tiny")


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    return path


def test_archive_is_inspected_and_the_temp_folder_removed(tmp_path: Path, folder: Path) -> None:
    info = inspect_artifact("hf-text-generation", _write(tmp_path, tar_gz(folder)), {"task": "text-generation"})
    assert [t.name for t in info.inputs] == ["text", "max_tokens", "temperature"]
    assert info.extra["task"] == "text-generation" and info.extra["max_context"] == 256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload.bin"]
    folder_info = inspect_artifact("hf-text-generation", folder, {})
    assert folder_info.extra["task"] == "text-generation"


def test_bad_archives_leave_no_temp_folder(tmp_path: Path, folder: Path) -> None:
    link = tarfile.TarInfo("evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(UnsafeContent):
        inspect_artifact("hf-text-generation", _write(tmp_path, tar_with(folder, extra=[link])), {})
    with pytest.raises(InvalidArtifact):
        inspect_artifact("hf-text-generation", _write(tmp_path, b"not an archive"), {})
    with pytest.raises(InvalidArtifact):
        inspect_artifact("hf-text-generation", _write(tmp_path, tar_gz(folder)), {"task": "painting"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload.bin"]
