"""The artifact store: content-addressed blobs on a local folder.

Every blob is named by the sha256 of its bytes and written atomically: bytes go to a temp file in
the store's own ``tmp/`` folder (same filesystem), are fsynced, then renamed into place. A blob
that already exists is not written twice. Reads verify the hash once per process (and again after
the file changes). ``gc`` removes staged files and blobs that nothing references, so a crash
between "file written" and "row committed" leaves nothing behind for long.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import anyio

from modelyard.errors import InternalError, PayloadTooLarge

if TYPE_CHECKING:
    from modelyard.store.encryption import Encryption

__all__ = ["ArtifactStore", "StagedFile", "CorruptArtifact"]

_CHUNK = 1024 * 1024


class CorruptArtifact(InternalError):
    """A blob's bytes no longer match its name."""

    code = "corrupt_artifact"


@dataclass(frozen=True, slots=True)
class StagedFile:
    """Bytes written to a temp file, hashed, not yet part of the store."""

    path: Path
    sha256: str
    size: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"upload is larger than the limit of {limit} bytes")


class ArtifactStore:
    """Blobs under ``root/blobs/<2 hex>/<sha256>``; staging under ``root/tmp``.

    With ``encryption`` (see :mod:`modelyard.store.encryption`), committed blobs are stored
    encrypted and :meth:`verified_path` returns a verified plaintext copy; names stay the sha256
    of the plaintext.
    """

    def __init__(self, root: Path, *, encryption: Encryption | None = None) -> None:
        self.root = root
        self.encryption = encryption
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._verified: dict[str, tuple[int, int]] = {}

    # -- writing ---------------------------------------------------------------------------
    def _new_temp(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}.part"

    def stage_stream(self, stream: BinaryIO | Iterable[bytes], *, max_bytes: int) -> StagedFile:
        """Copy a file object or an iterable of chunks to a temp file, hashing as it goes.

        Reads no further than ``max_bytes + 1`` bytes; over the limit, the temp file is removed
        and ``PayloadTooLarge`` is raised.
        """
        chunks: Iterator[bytes]
        if hasattr(stream, "read"):
            reader = stream  # type: ignore[assignment]
            chunks = iter(lambda: reader.read(min(_CHUNK, max_bytes + 1)), b"")  # type: ignore[union-attr]
        else:
            chunks = iter(stream)  # type: ignore[arg-type]
        path = self._new_temp()
        digest = hashlib.sha256()
        size = 0
        try:
            with open(path, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise _too_large(max_bytes)
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return StagedFile(path, digest.hexdigest(), size)

    async def stage_async(self, chunks: AsyncIterator[bytes], *, max_bytes: int) -> StagedFile:
        """Like :meth:`stage_stream` for an async byte stream; file I/O runs in a thread."""
        path = self._new_temp()
        digest = hashlib.sha256()
        size = 0
        out = await anyio.to_thread.run_sync(open, path, "wb")
        try:
            pending: list[bytes] = []
            pending_size = 0
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                digest.update(chunk)
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= _CHUNK:
                    await anyio.to_thread.run_sync(out.write, b"".join(pending))
                    pending, pending_size = [], 0
            if pending:
                await anyio.to_thread.run_sync(out.write, b"".join(pending))
            await anyio.to_thread.run_sync(out.flush)
            await anyio.to_thread.run_sync(os.fsync, out.fileno())
        except BaseException:
            out.close()
            path.unlink(missing_ok=True)
            raise
        out.close()
        return StagedFile(path, digest.hexdigest(), size)

    def stage_bytes(self, data: bytes) -> StagedFile:
        return self.stage_stream([data], max_bytes=len(data))

    def commit(self, staged: StagedFile) -> Path:
        """Move a staged file into the store under its hash (atomic; dedups identical blobs)."""
        final = self.path_for(staged.sha256)
        if final.exists():
            staged.discard()
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        if self.encryption is not None:
            try:
                self.encryption.encrypt_file(staged.path, final, staged.sha256)
            finally:
                staged.discard()
        else:
            os.replace(staged.path, final)
        _fsync_dir(final.parent)
        return final

    # -- reading ---------------------------------------------------------------------------
    def path_for(self, sha256: str) -> Path:
        if not _is_sha256(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.blobs / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).exists()

    def verified_path(self, sha256: str) -> Path:
        """The blob's path after checking its bytes still hash to its name."""
        path = self.path_for(sha256)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise CorruptArtifact(f"artifact {sha256} is missing from the store") from None
        if self.encryption is not None and self.encryption.has_key(sha256):
            return self.encryption.plaintext(path, sha256)
        stamp = (st.st_size, st.st_mtime_ns)
        if self._verified.get(sha256) != stamp:
            if file_sha256(path) != sha256:
                raise CorruptArtifact(f"artifact {sha256} does not match its hash")
            self._verified[sha256] = stamp
        return path

    # -- removing --------------------------------------------------------------------------
    def delete(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)
        self._verified.pop(sha256, None)
        if self.encryption is not None:
            self.encryption.forget(sha256)

    def all_blobs(self) -> Iterator[str]:
        """The hashes of every blob in the store (files not named by a sha256 are skipped)."""
        for sub in self.blobs.iterdir():
            if sub.is_dir():
                for blob in sub.iterdir():
                    if _is_sha256(blob.name) and blob.name[:2] == sub.name:
                        yield blob.name

    def gc(self, referenced: set[str], *, grace_s: float = 600.0) -> list[str]:
        """Remove staged files and unreferenced blobs older than ``grace_s`` seconds."""
        now = time.time()
        removed: list[str] = []
        for part in self.tmp.iterdir():
            if now - _mtime(part, default=now) > grace_s:
                part.unlink(missing_ok=True)
        for sha in list(self.all_blobs()):
            path = self.blobs / sha[:2] / sha
            if sha not in referenced and now - _mtime(path, default=now) > grace_s:
                self.delete(sha)
                removed.append(sha)
        return removed


def _is_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _mtime(path: Path, *, default: float) -> float:
    """A file's mtime, or ``default`` when it vanished meanwhile (a staged file committed)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return default


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
