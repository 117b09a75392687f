"""``client.datasets``: upload, list, inspect and delete datasets (``/api/v1/datasets``).

A dataset is an immutable, validated CSV, Parquet, NPZ or JSONL file; the server describes it on
arrival (columns, dtypes, row count, missing values, a preview). Built-in datasets are named
``"builtin:digits"`` (also iris, wine, breast_cancer, diabetes) and need no upload.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from modelyard.client._models import ProgressCallback, _chunks
from modelyard.client._transport import Transport
from modelyard.errors import BadRequest

__all__ = ["Datasets", "Dataset", "BUILTIN_DATASETS"]

BUILTIN_DATASETS = ("digits", "iris", "wine", "breast_cancer", "diabetes")
_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz", ".jsonl": "jsonl",
            ".ndjson": "jsonl"}


@dataclass(frozen=True, slots=True)
class Dataset:
    """A dataset's identity, hash, size and description. ``reference`` is what a training job's
    ``dataset`` field takes (its name, or ``builtin:<name>``)."""

    id: str
    name: str
    reference: str
    format: str
    sha256: str
    size_bytes: int
    n_rows: int
    columns: list[dict[str, Any]] = field(default_factory=list)
    preview: list[dict[str, Any]] = field(default_factory=list)
    builtin: bool = False
    created_at: datetime | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Dataset:
        created = d.get("created_at")
        return cls(
            id=d["id"], name=d["name"], reference=d.get("reference", d["name"]), format=d["format"],
            sha256=d["sha256"], size_bytes=int(d["size_bytes"]), n_rows=int(d["n_rows"]),
            columns=list(d.get("columns") or []), preview=list(d.get("preview") or []),
            builtin=bool(d.get("builtin")), created_at=datetime.fromisoformat(created) if created else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat() if self.created_at else None
        return out


class Datasets:
    """The datasets of the caller's tenant. Get it as ``client.datasets``.

    Example::

        ds = client.datasets.push("iris.csv", name="iris")
        print(ds.n_rows, [c["name"] for c in ds.columns])
        client.datasets.get("builtin:digits").columns
    """

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def push(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        format: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> Dataset:
        """Upload the file at ``path`` as dataset ``name`` (default: the file name without its
        extension), streamed in 1 MiB chunks; ``progress(sent, total)`` after each chunk.

        ``format`` defaults to the file's extension. The server validates the file
        (``ValidationFailed`` naming the line or column), refuses it over its size limit
        (``PayloadTooLarge``) and answers ``Conflict`` for other bytes under an existing name.
        """
        file = Path(path)
        if not file.is_file():
            raise BadRequest(f"{file} is not a file; pass the path of the dataset to upload")
        fmt = format or _FORMATS.get(file.suffix.lower())
        if fmt is None:
            raise BadRequest(f"cannot tell the format of {file.name}; pass format= (csv, parquet, npz, jsonl)")
        total = file.stat().st_size
        params = {"name": name or file.stem, "format": fmt, "filename": file.name}
        with file.open("rb") as fh:
            response = self._t.request(
                "POST", "/api/v1/datasets", params=params, content=_chunks(fh, total, progress),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(total)},
            )
        return Dataset.from_json(response.json())

    def list(self, *, page_size: int = 50) -> Iterator[Dataset]:
        """Every uploaded dataset of the tenant, by name (pages lazily)."""
        for item in self._t.paginate("/api/v1/datasets", page_size=page_size):
            yield Dataset.from_json(item)

    def get(self, name: str) -> Dataset:
        """A dataset by name, id or ``builtin:<name>``; ``DatasetNotFound`` when absent."""
        return Dataset.from_json(self._t.get(f"/api/v1/datasets/{quote(name, safe=':')}"))

    def delete(self, name: str) -> None:
        """Delete an uploaded dataset (``Conflict`` while a queued or running job uses it)."""
        self._t.delete(f"/api/v1/datasets/{quote(name, safe='')}")
