"""Encryption at rest: envelope-encrypted blobs, transparent verified plaintext, key rotation,
and a loud failure for a wrong or missing master key."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from modelyard.store.artifacts import ArtifactStore
from modelyard.store.encryption import (
    Encryption,
    MasterKeyMismatch,
    derive_master_key,
    is_encrypted_file,
    open_encryption,
)

KEY_A = base64.b64encode(b"a" * 32).decode()
KEY_B = "a long passphrase for the second master key"


def _store(root: Path, key: str | None) -> ArtifactStore:
    return ArtifactStore(root, encryption=open_encryption(root, master_key=key, master_key_file=None))


@pytest.mark.parametrize("size", [0, 10, 1024 * 1024, 2 * 1024 * 1024 + 7])
def test_round_trip_and_no_plaintext_on_disk(tmp_path: Path, size: int) -> None:
    data = (b"SECRET-MODEL-BYTES" * (size // 18 + 1))[:size]
    store = _store(tmp_path / "a", KEY_A)
    staged = store.stage_bytes(data)
    blob = store.commit(staged)
    assert is_encrypted_file(blob)
    if size:
        assert b"SECRET-MODEL-BYTES" not in blob.read_bytes()
    plain = store.verified_path(staged.sha256)
    assert plain != blob and plain.read_bytes() == data
    assert stat.S_IMODE(plain.stat().st_mode) == 0o600
    assert stat.S_IMODE(plain.parent.stat().st_mode) == 0o700
    assert store.verified_path(staged.sha256) == plain  # cached


def test_tampering_is_detected(tmp_path: Path) -> None:
    store = _store(tmp_path / "a", KEY_A)
    staged = store.stage_bytes(b"x" * 5000)
    blob = store.commit(staged)
    raw = bytearray(blob.read_bytes())
    raw[-5] ^= 1
    blob.write_bytes(bytes(raw))
    with pytest.raises(MasterKeyMismatch):
        store.verified_path(staged.sha256)


def test_wrong_or_missing_master_key_fails_at_start(tmp_path: Path) -> None:
    root = tmp_path / "a"
    _store(root, KEY_A).commit(_store(root, KEY_A).stage_bytes(b"hello"))
    with pytest.raises(MasterKeyMismatch, match="does not match"):
        _store(root, KEY_B)
    with pytest.raises(MasterKeyMismatch, match="no master key"):
        _store(root, None)
    keyfile = tmp_path / "master.key"
    keyfile.write_text(KEY_A + "\n")
    assert open_encryption(root, master_key=None, master_key_file=keyfile) is not None


def test_rotation_rewraps_keys_without_touching_blobs(tmp_path: Path) -> None:
    root = tmp_path / "a"
    store = _store(root, KEY_A)
    shas = []
    for i in range(3):
        staged = store.stage_bytes(f"model {i}".encode() * 100)
        store.commit(staged)
        shas.append(staged.sha256)
    before = {s: store.path_for(s).read_bytes() for s in shas}
    enc = Encryption(root, derive_master_key(KEY_A))
    enc.verify()
    assert enc.rotate(derive_master_key(KEY_B)) == 3
    assert enc.rotate(derive_master_key(KEY_B)) == 0  # idempotent
    with pytest.raises(MasterKeyMismatch):
        _store(root, KEY_A)
    rotated = _store(root, KEY_B)
    for s in shas:
        assert rotated.path_for(s).read_bytes() == before[s]
        (rotated.encryption.cache / s).unlink(missing_ok=True)  # force a fresh decrypt
        assert rotated.verified_path(s).read_bytes().startswith(b"model ")


def test_delete_forgets_key_and_plaintext(tmp_path: Path) -> None:
    store = _store(tmp_path / "a", KEY_A)
    staged = store.stage_bytes(b"abc")
    store.commit(staged)
    plain = store.verified_path(staged.sha256)
    store.delete(staged.sha256)
    assert not plain.exists() and not store.encryption.has_key(staged.sha256)


def test_plain_store_unchanged(tmp_path: Path) -> None:
    store = _store(tmp_path / "p", None)
    staged = store.stage_bytes(b"plain")
    blob = store.commit(staged)
    assert blob.read_bytes() == b"plain" and store.verified_path(staged.sha256) == blob


def test_derive_master_key() -> None:
    assert derive_master_key(KEY_A) == b"a" * 32
    assert derive_master_key((b"\x01" * 32).hex()) == b"\x01" * 32
    assert len(derive_master_key("passphrase")) == 32
    assert derive_master_key("passphrase") != derive_master_key("passphrase2")
