"""Encryption at rest: envelope encryption of artifact blobs with AES-256-GCM.

With a master key configured, every blob the :class:`~modelyard.store.artifacts.ArtifactStore`
commits is encrypted with its own random 256-bit *data key*; the data key is wrapped (AES-GCM)
by the master key and kept in a small sidecar ``keys/<2 hex>/<sha256>.json``. A blob's name stays
the sha256 of its *plaintext*. Rotating the master key re-wraps the sidecars only; the blobs are
not rewritten.

Blob format: ``MYENC1\\n`` + 8-byte nonce prefix, then chunks of ``4 + len(ciphertext)`` bytes
(big-endian length) each sealed with nonce ``prefix || counter`` and the associated data
``sha256 || counter || last-flag``, so chunks cannot be reordered, dropped or truncated unseen.

The runtime needs a plaintext file: :meth:`Encryption.plaintext` decrypts into a private cache
(folder 0700, files 0600), verifies the sha256, and reuses the file while it still matches.

A key-check value (an HMAC of a constant under the master key) is stored beside the blobs; a
different master key at start raises :class:`MasterKeyMismatch` instead of failing later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modelyard.errors import InternalError

__all__ = ["Encryption", "MasterKeyMismatch", "derive_master_key", "open_encryption", "MAGIC", "is_encrypted_file"]

MAGIC = b"MYENC1\n"
_CHUNK = 1024 * 1024
_KDF_SALT = b"modelyard-master-key-v1"


class MasterKeyMismatch(InternalError):
    """The configured master key is not the one the artifacts were encrypted with (or is missing)."""

    code = "master_key_mismatch"


def derive_master_key(value: str | bytes) -> bytes:
    """32 key bytes: ``value`` itself when it is base64 (or hex) of 32 bytes, else scrypt of it."""
    raw = value.encode() if isinstance(value, str) else value
    text = raw.strip()
    for decode in (base64.b64decode, base64.urlsafe_b64decode, binascii.unhexlify):
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) == 32:
            return key
    return hashlib.scrypt(text, salt=_KDF_SALT, n=2**14, r=8, p=1, dklen=32)


def key_check(master: bytes) -> str:
    return hmac.new(master, b"modelyard key check", hashlib.sha256).hexdigest()[:32]


def is_encrypted_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _aad(sha256: str, counter: int, last: bool) -> bytes:
    return sha256.encode() + struct.pack(">I?", counter, last)


class Encryption:
    """Encrypts blobs for an artifact store rooted at ``root`` under one master key."""

    def __init__(self, root: Path, master_key: bytes, *, cache: Path | None = None) -> None:
        if len(master_key) != 32:
            raise ValueError("the master key must be 32 bytes (see derive_master_key)")
        self.root = root
        self.keys = root / "keys"
        self.cache = cache or root / "plain-cache"
        self.check_file = root / "master-key-check.json"
        self._master = master_key
        self._kid = key_check(master_key)

    # -- start-up ----------------------------------------------------------------------------
    def verify(self) -> None:
        """Fail loudly when the master key differs from the one recorded; record it on first use."""
        if self.check_file.exists():
            recorded = json.loads(self.check_file.read_text()).get("kid")
            if not hmac.compare_digest(str(recorded), self._kid):
                raise MasterKeyMismatch(
                    "the configured master key does not match the one the artifacts were encrypted "
                    f"with (key check {self.check_file})"
                )
        else:
            _write_atomic(self.check_file, json.dumps({"kid": self._kid}).encode())
        self.cache.mkdir(parents=True, exist_ok=True)
        os.chmod(self.cache, 0o700)

    @staticmethod
    def refuse_unkeyed(root: Path) -> None:
        """Without a master key, refuse to start over a store holding encrypted blobs."""
        if (root / "master-key-check.json").exists():
            raise MasterKeyMismatch(
                "the artifact store is encrypted but no master key is configured "
                "(set MODELYARD_MASTER_KEY or MODELYARD_MASTER_KEY_FILE)"
            )

    # -- data keys ---------------------------------------------------------------------------
    def key_path(self, sha256: str) -> Path:
        return self.keys / sha256[:2] / f"{sha256}.json"

    def has_key(self, sha256: str) -> bool:
        return self.key_path(sha256).exists()

    @staticmethod
    def _wrap(master: bytes, kid: str, sha256: str, dek: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        wrapped = AESGCM(master).encrypt(nonce, dek, sha256.encode())
        return json.dumps({
            "v": 1, "kid": kid, "nonce": base64.b64encode(nonce).decode(),
            "wrapped": base64.b64encode(wrapped).decode(),
        }).encode()

    @staticmethod
    def _unwrap(master: bytes, sha256: str, data: bytes) -> bytes:
        doc = json.loads(data)
        try:
            return AESGCM(master).decrypt(
                base64.b64decode(doc["nonce"]), base64.b64decode(doc["wrapped"]), sha256.encode()
            )
        except InvalidTag:
            raise MasterKeyMismatch(f"cannot unwrap the data key of artifact {sha256}: wrong master key") from None

    def _data_key(self, sha256: str) -> bytes:
        return self._unwrap(self._master, sha256, self.key_path(sha256).read_bytes())

    # -- blobs -------------------------------------------------------------------------------
    def encrypt_file(self, src: Path, dest: Path, sha256: str) -> None:
        """Encrypt plaintext ``src`` into ``dest`` (atomically) and store its wrapped data key."""
        dek = AESGCM.generate_key(bit_length=256)
        aead = AESGCM(dek)
        prefix = secrets.token_bytes(8)
        tmp = self.root / "tmp" / f"{uuid.uuid4().hex}.enc.part"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                fout.write(MAGIC + prefix)
                counter = 0
                chunk = fin.read(_CHUNK)
                while True:
                    nxt = fin.read(_CHUNK) if chunk else b""
                    last = not nxt
                    sealed = aead.encrypt(prefix + struct.pack(">I", counter), chunk, _aad(sha256, counter, last))
                    fout.write(struct.pack(">I", len(sealed)) + sealed)
                    counter += 1
                    if last:
                        break
                    chunk = nxt
                fout.flush()
                os.fsync(fout.fileno())
            _write_atomic(self.key_path(sha256), self._wrap(self._master, self._kid, sha256, dek))
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def decrypt_chunks(self, path: Path, sha256: str) -> Iterator[bytes]:
        """The plaintext of an encrypted blob, chunk by chunk (authenticated)."""
        aead = AESGCM(self._data_key(sha256))
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise MasterKeyMismatch(f"artifact {sha256} is not an encrypted blob")
            prefix = f.read(8)
            counter = 0
            while True:
                head = f.read(4)
                if len(head) < 4:
                    raise MasterKeyMismatch(f"artifact {sha256} is truncated")
                sealed = f.read(struct.unpack(">I", head)[0])
                last = f.peek(1)[:1] == b"" if hasattr(f, "peek") else False
                try:
                    yield aead.decrypt(prefix + struct.pack(">I", counter), sealed, _aad(sha256, counter, last))
                except InvalidTag:
                    raise MasterKeyMismatch(f"artifact {sha256} failed authentication") from None
                if last:
                    return
                counter += 1

    def plaintext(self, path: Path, sha256: str) -> Path:
        """A private plaintext copy of the encrypted blob at ``path``, verified by its hash."""
        out = self.cache / sha256
        marker = out.with_suffix(".ok")
        stamp = f"{path.stat().st_mtime_ns}"
        if out.exists() and marker.exists() and marker.read_text() == stamp:
            return out
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = self.cache / f".{sha256}.{uuid.uuid4().hex}.tmp"
        digest = hashlib.sha256()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in self.decrypt_chunks(path, sha256):
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != sha256:
                raise MasterKeyMismatch(f"artifact {sha256} decrypted to different bytes")
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _write_atomic(marker, stamp.encode())
        return out

    def forget(self, sha256: str) -> None:
        """Remove the data key and the plaintext copy of a deleted blob."""
        self.key_path(sha256).unlink(missing_ok=True)
        (self.cache / sha256).unlink(missing_ok=True)
        (self.cache / f"{sha256}.ok").unlink(missing_ok=True)

    # -- rotation ----------------------------------------------------------------------------
    def rotate(self, new_master: bytes) -> int:
        """Re-wrap every data key under ``new_master`` (blobs untouched); returns how many.

        Idempotent: after a crash, run it again with the same keys: sidecars already wrapped by
        the new key are skipped. The key-check value is replaced last.
        """
        new_kid = key_check(new_master)
        count = 0
        for sidecar in sorted(self.keys.glob("*/*.json")) if self.keys.exists() else []:
            sha256 = sidecar.stem
            doc = json.loads(sidecar.read_bytes())
            if doc.get("kid") == new_kid:
                continue
            dek = self._unwrap(self._master, sha256, sidecar.read_bytes())
            _write_atomic(sidecar, self._wrap(new_master, new_kid, sha256, dek))
            count += 1
        _write_atomic(self.check_file, json.dumps({"kid": new_kid}).encode())
        self._master, self._kid = new_master, new_kid
        return count


def open_encryption(root: Path, *, master_key: str | None, master_key_file: Path | None) -> Encryption | None:
    """The store's :class:`Encryption` for the configured master key (``None`` when none is
    configured), verified against the recorded key check; refuses an encrypted store without one."""
    value: str | None = master_key
    if value is None and master_key_file is not None:
        value = Path(master_key_file).expanduser().read_text().strip()
    if not value:
        Encryption.refuse_unkeyed(root)
        return None
    root.mkdir(parents=True, exist_ok=True)
    enc = Encryption(root, derive_master_key(value))
    enc.verify()
    return enc
