"""Safe extraction of uploaded archives (``.tar``, ``.tar.gz``, ``.zip``) into a folder.

An uploaded archive is hostile until proven otherwise. :func:`extract_archive` accepts only
regular files and directories whose names stay inside the destination; it refuses absolute
paths, ``..`` components, drive letters, backslashes, NUL bytes, duplicate names, symbolic and
hard links, device files and fifos. Sizes and member counts are counted while the bytes stream
(the sizes an archive *declares* are never trusted), so a compression bomb stops at the limit.

Extraction happens in a temporary folder beside ``dest`` that is renamed to ``dest`` only when
every member was accepted; on any failure that folder is removed, so nothing is left on disk.

Errors: :class:`~modelyard.errors.UnsafeContent` (names the offending member),
:class:`~modelyard.errors.PayloadTooLarge` (byte or member limit),
:class:`~modelyard.errors.InvalidArtifact` (not an archive, corrupt, encrypted),
:class:`~modelyard.errors.Conflict` (``dest`` exists and is not an empty folder).
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from modelyard.errors import Conflict, InvalidArtifact, PayloadTooLarge, UnsafeContent

__all__ = ["extract_archive", "archive_kind"]

_CHUNK = 1024 * 1024


def archive_kind(head: bytes) -> str | None:
    """``"zip"``, ``"gzip"`` or ``"tar"`` from the first 512 bytes of a file, else ``None``."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


class _Extractor:
    """Writes accepted members under ``root`` while counting bytes and members."""

    def __init__(self, root: Path, *, max_bytes: int, max_files: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.bytes_written = 0
        self.members = 0
        self.files: list[Path] = []
        self._seen: set[str] = set()

    def target(self, name: str) -> tuple[Path, str]:
        """The path under ``root`` for a member name, or ``UnsafeContent``."""
        if not name or "\x00" in name:
            raise UnsafeContent(f"archive member {name!r} has an invalid name")
        if "\\" in name:
            raise UnsafeContent(f"archive member {name!r} contains a backslash")
        if name.startswith("/") or (len(name) >= 2 and name[1] == ":"):
            raise UnsafeContent(f"archive member {name!r} has an absolute path")
        parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
        if ".." in parts:
            raise UnsafeContent(f"archive member {name!r} escapes the destination ('..')")
        if not parts:
            raise UnsafeContent(f"archive member {name!r} has an empty path")
        rel = "/".join(parts)
        if rel in self._seen:
            raise UnsafeContent(f"archive member {name!r} appears twice")
        self._seen.add(rel)
        path = self.root.joinpath(*parts)
        # Parents were all created by us as real directories, but check the final answer anyway.
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise UnsafeContent(f"archive member {name!r} escapes the destination")
        return path, rel

    def count_member(self, name: str) -> None:
        self.members += 1
        if self.members > self.max_files:
            raise PayloadTooLarge(
                f"the archive has more than {self.max_files} members (at {name!r})",
                details={"limit": self.max_files},
            )

    def directory(self, name: str) -> None:
        self.count_member(name)
        path, _ = self.target(name)
        if path.exists() and not path.is_dir():
            raise UnsafeContent(f"archive member {name!r} clashes with a file of the same name")
        path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str, stream: IO[bytes]) -> None:
        self.count_member(name)
        path, _ = self.target(name)
        if path.exists():
            raise UnsafeContent(f"archive member {name!r} clashes with an existing entry")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as out:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                self.bytes_written += len(chunk)
                if self.bytes_written > self.max_bytes:
                    raise PayloadTooLarge(
                        f"the archive expands to more than {self.max_bytes} bytes (at {name!r})",
                        details={"limit": self.max_bytes},
                    )
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        self.files.append(path)


def _extract_tar(fileobj: BinaryIO, ex: _Extractor, *, gz: bool) -> None:
    # Stream mode ("r|") reads members strictly in order and never seeks: the declared sizes
    # only bound how much tarfile reads per member; our own counter enforces the limits.
    # gzip is undone by GzipFile (not tarfile's stream) so the CRC and the end are checked.
    source: BinaryIO = gzip.GzipFile(fileobj=fileobj, mode="rb") if gz else fileobj  # type: ignore[assignment]
    with tarfile.open(fileobj=source, mode="r|") as tar:
        for member in tar:
            if member.issym() or member.islnk():
                kind = "symbolic" if member.issym() else "hard"
                raise UnsafeContent(
                    f"archive member {member.name!r} is a {kind} link; links are refused"
                )
            if member.isdev():
                raise UnsafeContent(
                    f"archive member {member.name!r} is a device file or fifo; refused"
                )
            if member.isdir():
                ex.directory(member.name)
            elif member.isreg():
                stream = tar.extractfile(member)
                if stream is None:  # pragma: no cover - isreg() members always have data
                    raise InvalidArtifact(f"archive member {member.name!r} has no data")
                ex.file(member.name, stream)
            else:
                raise UnsafeContent(
                    f"archive member {member.name!r} has an unsupported type; refused"
                )
    if gz:
        # read what follows the end-of-archive blocks so a truncated or corrupt gzip is caught
        while chunk := source.read(_CHUNK):
            ex.bytes_written += len(chunk)
            if ex.bytes_written > ex.max_bytes:
                raise PayloadTooLarge(
                    f"the archive expands to more than {ex.max_bytes} bytes",
                    details={"limit": ex.max_bytes},
                )


def _extract_zip(fileobj: BinaryIO, ex: _Extractor) -> None:
    with zipfile.ZipFile(fileobj) as zf:
        infos = zf.infolist()
        if len(infos) > ex.max_files:
            raise PayloadTooLarge(
                f"the archive has {len(infos)} members, more than {ex.max_files}",
                details={"limit": ex.max_files},
            )
        for info in infos:
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if kind == stat.S_IFLNK:
                raise UnsafeContent(
                    f"archive member {info.filename!r} is a symbolic link; links are refused"
                )
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeContent(
                    f"archive member {info.filename!r} is a device file, fifo or socket; refused"
                )
            if info.flag_bits & 0x1:
                raise InvalidArtifact(f"archive member {info.filename!r} is encrypted")
            if info.is_dir() or kind == stat.S_IFDIR:
                ex.directory(info.filename)
            else:
                with zf.open(info) as stream:
                    ex.file(info.filename, stream)


def _seekable(src: BinaryIO) -> BinaryIO:
    try:
        if src.seekable():
            return src
    except (AttributeError, OSError):
        pass
    spool = tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024)
    shutil.copyfileobj(src, spool, _CHUNK)
    spool.seek(0)
    return spool  # type: ignore[return-value]


def extract_archive(
    src: Path | BinaryIO, dest: Path, *, max_bytes: int, max_files: int
) -> list[Path]:
    """Extract a ``.tar``, ``.tar.gz`` or ``.zip`` archive into the new folder ``dest``.

    ``max_bytes`` bounds the total uncompressed size and ``max_files`` the number of members
    (files and folders), both counted while extracting. Returns the extracted regular files as
    paths under ``dest``, sorted. ``dest`` must not exist (an empty folder is replaced). On any
    error nothing is left on disk: neither ``dest`` nor the temporary folder.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise Conflict(f"the extraction target {dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)

    owned: BinaryIO | None = None
    if isinstance(src, (str, os.PathLike)):
        owned = open(src, "rb")
        fileobj: BinaryIO = owned
    else:
        fileobj = _seekable(src)
        owned = fileobj if fileobj is not src else None
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent)).resolve()
    try:
        start = fileobj.tell()
        head = fileobj.read(512)
        fileobj.seek(start)
        kind = archive_kind(head)
        ex = _Extractor(tmp, max_bytes=max_bytes, max_files=max_files)
        try:
            if kind == "zip":
                _extract_zip(fileobj, ex)
            elif kind in ("gzip", "tar"):
                _extract_tar(fileobj, ex, gz=kind == "gzip")
            else:
                raise InvalidArtifact("the upload is not a .tar, .tar.gz or .zip archive")
        except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError) as exc:
            raise InvalidArtifact(f"the archive is corrupt: {exc}") from exc
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidArtifact(f"the archive cannot be read: {exc}") from exc
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if owned is not None:
            owned.close()
    return sorted(dest / p.relative_to(tmp) for p in ex.files)

