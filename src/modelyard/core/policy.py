"""The safe-loading policy, in one place.

- **Formats**: :data:`ACCEPTED_FORMATS` are the artifact and dataset formats ModelYard loads.
  None of them is loaded with pickle: no ``pickle``, ``joblib`` or ``torch.load`` without
  ``weights_only=True``, and never ``trust_remote_code``.
- **Sniffing**: :func:`sniff_unsafe` looks at an upload's bytes (whatever its name says) and
  names pickle content: a pickle protocol header (``0x80 0x02..0x05``), a zip holding ``*.pkl``
  (a ``torch.save`` file), an ``.npy``/``.npz`` array of Python objects, a joblib/zlib-wrapped
  pickle. :func:`refuse_unsafe` raises :class:`~modelyard.errors.UnsafeContent` for them.
- **Archives**: extraction is confined by :func:`modelyard.store.archives.extract_archive`
  (re-exported here as :func:`extract_archive`): no absolute paths, ``..``, links or devices.
- **URLs**: the server fetches a URL only when its host is in ``Settings.fetch_allow_hosts``
  (:func:`check_fetch_url`).
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from modelyard.errors import UnsafeContent
from modelyard.store.archives import extract_archive

__all__ = [
    "ACCEPTED_FORMATS",
    "ACCEPTED_DATASET_EXTENSIONS",
    "sniff_unsafe",
    "refuse_unsafe",
    "check_fetch_url",
    "check_relative_path",
    "extract_archive",
]

#: artifact formats that load without executing code from the artifact.
ACCEPTED_FORMATS: frozenset[str] = frozenset(
    {"onnx", "safetensors", "hf", "hf-text-generation", "hf-embeddings", "hf-text-classification",
     "upstream", "pytorch-export", "sklearn-onnx"}
)
#: dataset file extensions accepted for upload.
ACCEPTED_DATASET_EXTENSIONS: frozenset[str] = frozenset({".csv", ".parquet", ".npz", ".jsonl"})

_PICKLE_OPS = {0x80}  # PROTO opcode that starts protocol 2+ pickles
_OBJECT_DTYPE = re.compile(rb"'descr':\s*'\|O'")
_SNIFF_BYTES = 64 * 1024


def _pickle_header(head: bytes) -> bool:
    return len(head) >= 2 and head[0] in _PICKLE_OPS and 2 <= head[1] <= 5


def _protocol0_pickle(head: bytes) -> bool:
    # protocol 0/1 pickles that reach for a callable start with GLOBAL 'c' module\nname\n
    return bool(re.match(rb"^c[A-Za-z_][\w.]*\n[\w.]+\n", head[:256]))


def sniff_unsafe(head: bytes, path: Path | None = None) -> str | None:
    """Why ``head`` (the first bytes of an upload; with ``path`` the whole file for zips) would
    need unpickling, or ``None`` when it does not look like pickle content."""
    if _pickle_header(head) or _protocol0_pickle(head):
        return "pickle data"
    if head[:2] in (b"\x78\x01", b"\x78\x9c", b"\x78\xda"):  # joblib's zlib-compressed pickle
        try:
            inner = zlib.decompressobj().decompress(head, 16)
        except zlib.error:
            inner = b""
        if _pickle_header(inner):
            return "compressed pickle data (joblib)"
    if head.startswith(b"\x93NUMPY") and _OBJECT_DTYPE.search(head[:1024]):
        return "a numpy array of Python objects (needs pickle)"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path if path is not None else io.BytesIO(head)) as zf:
                for info in zf.infolist()[:10_000]:
                    name = info.filename.lower()
                    if name.endswith((".pkl", ".pickle", ".joblib")) or name.endswith("data.pkl"):
                        return f"a pickle inside the zip ({info.filename})"
                    if name.endswith(".npy") and info.file_size:
                        with zf.open(info) as member:
                            reason = sniff_unsafe(member.read(1024))
                        if reason:
                            return f"{reason} in {info.filename}"
        except (zipfile.BadZipFile, OSError, ValueError):
            return None
    return None


def refuse_unsafe(path: Path) -> None:
    """Raise ``UnsafeContent`` when the file at ``path`` holds pickle content of any kind."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    reason = sniff_unsafe(head, path)
    if reason:
        raise UnsafeContent(f"refused: the upload contains {reason}; ModelYard never unpickles uploads")


def check_fetch_url(url: str, allow_hosts: Iterable[str]) -> str:
    """Return ``url`` if its scheme is http(s) and its host is allow-listed, else ``UnsafeContent``."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    allowed = {h.lower() for h in allow_hosts}
    if parts.scheme not in ("http", "https") or not host:
        raise UnsafeContent(f"refused URL {url!r}: only http(s) URLs with a host may be fetched")
    if parts.username or parts.password:
        raise UnsafeContent("refused URL: credentials in URLs are not accepted")
    if host not in allowed:
        raise UnsafeContent(
            f"refused URL: host {host!r} is not in the allow-list (MODELYARD_FETCH_ALLOW_HOSTS)"
        )
    return url


def check_relative_path(value: str, *, field: str = "path") -> str:
    """A caller-named relative path: refuse absolute paths, ``..``, backslashes and NUL bytes."""
    bad = (
        not value or "\x00" in value or "\\" in value or value.startswith("/")
        or any(part == ".." for part in value.split("/")) or re.match(r"^[A-Za-z]:", value)
    )
    if bad:
        raise UnsafeContent(f"refused {field} {value!r}: must be a relative path inside its folder")
    return value
