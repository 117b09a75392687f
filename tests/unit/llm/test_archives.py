"""extract_archive: good archives extract; every attack is refused and leaves nothing on disk."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from modelyard.errors import Conflict, InvalidArtifact, PayloadTooLarge, UnsafeContent
from modelyard.store.archives import extract_archive

LIMITS = {"max_bytes": 1_000_000, "max_files": 100}


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], *, gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def _nothing_left(tmp_path: Path, dest: Path) -> None:
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["upload"]


@pytest.fixture()
def upload(tmp_path: Path):
    def write(data: bytes) -> Path:
        path = tmp_path / "upload"
        path.write_bytes(data)
        return path

    return write


def test_tar_gz_extracts_files_and_folders(tmp_path: Path, upload) -> None:
    dirinfo = tarfile.TarInfo("model")
    dirinfo.type = tarfile.DIRTYPE
    data = _tar(
        [(dirinfo, None), _file("model/config.json", b"{}"), _file("model/sub/w.bin2", b"abc")],
        gz=True,
    )
    dest = tmp_path / "out"
    files = extract_archive(upload(data), dest, **LIMITS)
    assert files == sorted([dest / "model/config.json", dest / "model/sub/w.bin2"])
    assert (dest / "model/sub/w.bin2").read_bytes() == b"abc"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_zip_and_binary_stream_sources(tmp_path: Path) -> None:
    data = _zip([("a/b.txt", b"hello"), ("c.txt", b"")])
    dest = tmp_path / "out"
    files = extract_archive(io.BytesIO(data), dest, **LIMITS)
    assert [f.relative_to(dest).as_posix() for f in files] == ["a/b.txt", "c.txt"]
    assert (dest / "a/b.txt").read_text() == "hello"


def test_plain_tar_from_a_non_seekable_stream(tmp_path: Path) -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
            chunk = self._inner.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    dest = tmp_path / "out"
    extract_archive(Pipe(_tar([_file("x.txt", b"1")])), dest, **LIMITS)  # type: ignore[arg-type]
    assert (dest / "x.txt").read_text() == "1"


@pytest.mark.parametrize(
    ("member", "fragment"),
    [
        (_file("../evil.txt"), "../evil.txt"),
        (_file("ok/../../evil.txt"), "ok/../../evil.txt"),
        (_file("/etc/evil"), "/etc/evil"),
        (_file("C:/evil"), "C:/evil"),
        (_file("dir\\evil"), "backslash"),
        (_special("link", tarfile.SYMTYPE, "/etc/passwd"), "'link' is a symbolic link"),
        (_special("hard", tarfile.LNKTYPE, "config.json"), "'hard' is a hard link"),
        (_special("dev", tarfile.CHRTYPE), "'dev' is a device file"),
        (_special("blk", tarfile.BLKTYPE), "'blk' is a device file"),
        (_special("fifo", tarfile.FIFOTYPE), "'fifo' is a device file or fifo"),
    ],
)
def test_tar_attacks_are_refused_and_cleaned_up(tmp_path: Path, upload, member, fragment) -> None:
    # a good file first, so there is something written that must be removed again
    data = _tar([_file("config.json", b"{}"), member])
    dest = tmp_path / "out"
    with pytest.raises(UnsafeContent) as err:
        extract_archive(upload(data), dest, **LIMITS)
    assert fragment in err.value.message
    _nothing_left(tmp_path, dest)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_zip_traversal_absolute_and_symlink_are_refused(tmp_path: Path, upload) -> None:
    link = zipfile.ZipInfo("innocent")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    fifo = zipfile.ZipInfo("pipe")
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    for entry, fragment in [
        ("../../evil", "'../../evil'"),
        ("/abs/evil", "'/abs/evil'"),
        (link, "'innocent' is a symbolic link"),
        (fifo, "'pipe' is a device file, fifo"),
    ]:
        dest = tmp_path / "out"
        with pytest.raises(UnsafeContent) as err:
            extract_archive(upload(_zip([("ok.txt", b"1"), (entry, b"/etc/passwd")])), dest, **LIMITS)
        assert fragment in err.value.message
        _nothing_left(tmp_path, dest)


def test_duplicate_members_are_refused(tmp_path: Path, upload) -> None:
    data = _tar([_file("a.txt", b"1"), _file("./a.txt", b"2")])
    with pytest.raises(UnsafeContent, match="appears twice"):
        extract_archive(upload(data), tmp_path / "out", **LIMITS)
    _nothing_left(tmp_path, tmp_path / "out")


def test_too_many_bytes_stops_while_streaming(tmp_path: Path, upload) -> None:
    # 5 MB of zeros compresses to a few KB: the declared archive size says nothing
    data = _tar([_file("zeros", b"\0" * 5_000_000)], gz=True)
    assert len(data) < 50_000
    with pytest.raises(PayloadTooLarge) as err:
        extract_archive(upload(data), tmp_path / "out", max_bytes=1_000_000, max_files=10)
    assert err.value.details == {"limit": 1_000_000}
    _nothing_left(tmp_path, tmp_path / "out")


def test_zip_bomb_stops_at_the_limit(tmp_path: Path, upload) -> None:
    data = _zip([("zeros", b"\0" * 5_000_000)])
    with pytest.raises(PayloadTooLarge):
        extract_archive(upload(data), tmp_path / "out", max_bytes=1_000_000, max_files=10)
    _nothing_left(tmp_path, tmp_path / "out")


def test_too_many_files(tmp_path: Path, upload) -> None:
    tar_data = _tar([_file(f"f{i}") for i in range(11)])
    with pytest.raises(PayloadTooLarge, match="more than 10 members"):
        extract_archive(upload(tar_data), tmp_path / "out", max_bytes=10**6, max_files=10)
    _nothing_left(tmp_path, tmp_path / "out")
    zip_data = _zip([(f"f{i}", b"") for i in range(11)])
    with pytest.raises(PayloadTooLarge):
        extract_archive(upload(zip_data), tmp_path / "out", max_bytes=10**6, max_files=10)
    _nothing_left(tmp_path, tmp_path / "out")


def test_not_an_archive_and_corrupt_archives(tmp_path: Path, upload) -> None:
    with pytest.raises(InvalidArtifact, match="not a .tar"):
        extract_archive(upload(b"just some text" * 100), tmp_path / "out", **LIMITS)
    _nothing_left(tmp_path, tmp_path / "out")
    whole = gzip.compress(_tar([_file("a", os.urandom(10_000)), _file("b", b"y")]))
    for cut in (200, len(whole) // 2, len(whole) - 6):  # the last cut only loses the CRC
        with pytest.raises(InvalidArtifact, match="corrupt"):
            extract_archive(upload(whole[:cut]), tmp_path / "out", **LIMITS)
        _nothing_left(tmp_path, tmp_path / "out")


def test_existing_destination_is_a_conflict(tmp_path: Path, upload) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(Conflict):
        extract_archive(upload(_tar([_file("a")])), dest, **LIMITS)
    assert (dest / "keep").read_text() == "mine"
