"""Datasets: uploaded files (CSV, Parquet, NPZ, JSONL) and the built-in scikit-learn sets.

An upload is streamed to the artifact store's staging area (size-limited), read and described
(:func:`modelyard.engine.dataframes.describe_dataset`) *before* anything is committed, then kept
as an immutable, content-addressed blob with one row per (tenant, name). A file that fails to
read raises ``ValidationFailed`` naming the line or column, and nothing is left behind.

A training job names its dataset with a *reference*: an uploaded dataset's name or id, or a
built-in one as ``"builtin:digits"`` (or ``{"builtin": "digits"}``); see :func:`parse_reference`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, or_, select

from modelyard.core.names import check_name
from modelyard.core.pages import Page, PageRequest
from modelyard.errors import Conflict, DatasetNotFound, ValidationFailed
from modelyard.store.artifacts import ArtifactStore, StagedFile
from modelyard.store.db import Database
from modelyard.store.tables import DatasetRow, JobRow

if TYPE_CHECKING:
    from modelyard.engine.dataframes import Table

__all__ = [
    "DatasetService",
    "DatasetInfo",
    "DatasetRef",
    "BUILTIN_DATASETS",
    "BUILTIN_PREFIX",
    "parse_reference",
    "format_from_name",
]

#: The built-in datasets (scikit-learn's bundled ones), named ``builtin:<name>``.
BUILTIN_DATASETS = ("digits", "iris", "wine", "breast_cancer", "diabetes")
BUILTIN_PREFIX = "builtin:"
_FORMATS = ("csv", "parquet", "npz", "jsonl")
_ACTIVE_STATES = ("queued", "running")


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """One dataset: identity, content hash, size and its description (columns, preview...)."""

    id: str
    tenant_id: str
    name: str
    format: str
    sha256: str
    size_bytes: int
    n_rows: int
    columns: list[dict[str, Any]]
    preview: list[dict[str, Any]]
    created_at: datetime | None
    builtin: bool = False

    @property
    def reference(self) -> str:
        return f"{BUILTIN_PREFIX}{self.name}" if self.builtin else self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "format": self.format, "sha256": self.sha256,
            "size_bytes": self.size_bytes, "n_rows": self.n_rows, "columns": self.columns,
            "preview": self.preview, "created_at": self.created_at, "builtin": self.builtin,
            "reference": self.reference,
        }


@dataclass(frozen=True, slots=True)
class DatasetRef:
    """A parsed reference: ``builtin`` names a built-in set, else ``name`` an uploaded one."""

    name: str
    builtin: bool = False

    def to_json(self) -> str:
        return f"{BUILTIN_PREFIX}{self.name}" if self.builtin else self.name


def parse_reference(value: Any) -> DatasetRef:
    """``"builtin:iris"``, ``{"builtin": "iris"}``, ``{"name": "mine"}`` or ``"mine"`` (a name or id)."""
    if isinstance(value, dict):
        if set(value) == {"builtin"} and isinstance(value["builtin"], str):
            return _builtin(value["builtin"])
        if set(value) <= {"name", "id"} and len(value) == 1 and isinstance(next(iter(value.values())), str):
            return DatasetRef(name=next(iter(value.values())))
        raise ValidationFailed(
            'dataset must be a name, "builtin:<name>" or {"builtin": "<name>"}', details={"field": "dataset"}
        )
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed(
            'dataset must be a name, "builtin:<name>" or {"builtin": "<name>"}', details={"field": "dataset"}
        )
    value = value.strip()
    if value.startswith(BUILTIN_PREFIX):
        return _builtin(value[len(BUILTIN_PREFIX):])
    return DatasetRef(name=value)


def _builtin(name: str) -> DatasetRef:
    if name not in BUILTIN_DATASETS:
        raise DatasetNotFound(
            f"unknown built-in dataset {name!r}; expected one of {', '.join(BUILTIN_DATASETS)}",
            details={"field": "dataset"},
        )
    return DatasetRef(name=name, builtin=True)


def format_from_name(filename: str | None, fmt: str | None) -> str:
    """The dataset format: ``fmt`` if given, else the file name's extension."""
    value = (fmt or (Path(filename).suffix if filename else "")).lower().lstrip(".")
    if value == "pq":
        value = "parquet"
    if value == "ndjson":
        value = "jsonl"
    if value not in _FORMATS:
        raise ValidationFailed(
            f"unknown dataset format {value or '(none)'!r}; expected one of {', '.join(_FORMATS)} "
            "(set format= or use a file name with that extension)",
            details={"field": "format"},
        )
    return value


def _info(row: DatasetRow) -> DatasetInfo:
    desc = row.description or {}
    return DatasetInfo(
        id=row.id, tenant_id=row.tenant_id, name=row.name, format=row.format, sha256=row.sha256,
        size_bytes=row.size_bytes, n_rows=row.n_rows, columns=list(desc.get("columns", [])),
        preview=list(desc.get("preview", [])), created_at=row.created_at,
    )


class DatasetService:
    """The datasets of every tenant; every method takes the tenant explicitly."""

    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self._db = db
        self._artifacts = artifacts
        self._builtin_cache: dict[str, DatasetInfo] = {}
        #: called with (tenant_id, bytes) before a dataset is stored; raises to refuse (quotas).
        self.admit: Callable[[str, int], None] | None = None
        #: whether something outside the datasets (model versions, job results) holds a blob too.
        self.referenced_elsewhere: Callable[[str], bool] | None = None

    # -- writing ---------------------------------------------------------------------------
    def create(self, *, tenant_id: str, name: str, staged: StagedFile, fmt: str) -> tuple[DatasetInfo, bool]:
        """Validate and describe ``staged`` as ``fmt`` and store it as dataset ``name``.

        Returns ``(info, created)``: the same bytes pushed again under the same name return the
        existing dataset with ``created=False``; other bytes under an existing name raise
        ``Conflict`` (datasets are immutable). On any failure the staged file is discarded.
        """
        from modelyard.engine.dataframes import describe_dataset

        try:
            check_name(name, field="name")
            if staged.size == 0:
                raise ValidationFailed("the dataset file is empty")
            if self.admit is not None:
                self.admit(tenant_id, staged.size)
            description = describe_dataset(staged.path, fmt)
            with self._db.read() as s:
                existing = s.scalar(select(DatasetRow).where(DatasetRow.tenant_id == tenant_id, DatasetRow.name == name))
                if existing is not None:
                    if existing.sha256 == staged.sha256:
                        staged.discard()
                        return _info(existing), False
                    raise Conflict(
                        f"dataset {name!r} already exists with other content; datasets are immutable, "
                        "choose another name or delete it first",
                        details={"field": "name"},
                    )
        except BaseException:
            staged.discard()
            raise
        blob_existed = self._artifacts.exists(staged.sha256)
        self._artifacts.commit(staged)
        body = description.to_dict()
        row = DatasetRow(
            id=str(uuid.uuid4()), tenant_id=tenant_id, name=name, format=fmt, sha256=staged.sha256,
            size_bytes=staged.size, n_rows=description.n_rows,
            description={"columns": body["columns"], "preview": body["preview"]},
        )
        try:
            with self._db.transaction() as s:
                s.add(row)
                s.flush()
                info = _info(row)
        except Exception as exc:
            if not blob_existed and not self._blob_referenced(staged.sha256):
                self._artifacts.delete(staged.sha256)
            from sqlalchemy.exc import IntegrityError

            if isinstance(exc, IntegrityError):
                raise Conflict(f"dataset {name!r} already exists", details={"field": "name"}) from exc
            raise
        return info, True

    def delete(self, tenant_id: str, name: str) -> DatasetInfo:
        """Delete a dataset (``Conflict`` while a queued or running job uses it)."""
        with self._db.transaction() as s:
            row = self._row(s, tenant_id, name)
            info = _info(row)
            jobs = s.scalars(
                select(JobRow.params).where(JobRow.tenant_id == tenant_id, JobRow.state.in_(_ACTIVE_STATES))
            ).all()
            if any((p or {}).get("dataset_id") == row.id for p in jobs):
                raise Conflict(f"dataset {row.name!r} is used by a queued or running job")
            s.execute(delete(DatasetRow).where(DatasetRow.id == row.id))
        if not self._blob_referenced(info.sha256):
            self._artifacts.delete(info.sha256)
        return info

    def _blob_referenced(self, sha256: str) -> bool:
        if sha256 in self.referenced_blobs():
            return True
        return self.referenced_elsewhere is not None and self.referenced_elsewhere(sha256)

    # -- reading ---------------------------------------------------------------------------
    @staticmethod
    def _row(s: Any, tenant_id: str, name: str) -> DatasetRow:
        row = s.scalar(
            select(DatasetRow).where(
                DatasetRow.tenant_id == tenant_id, or_(DatasetRow.name == name, DatasetRow.id == name)
            )
        )
        if row is None:
            raise DatasetNotFound(f"dataset {name!r} not found", details={"field": "dataset"})
        return row  # type: ignore[no-any-return]

    def get(self, tenant_id: str, name: str) -> DatasetInfo:
        """An uploaded dataset by name or id, or a built-in one by ``builtin:<name>``."""
        if name.startswith(BUILTIN_PREFIX):
            return self.builtin(parse_reference(name).name)
        with self._db.read() as s:
            return _info(self._row(s, tenant_id, name))

    def list(self, tenant_id: str, page: PageRequest = PageRequest()) -> Page[DatasetInfo]:
        with self._db.read() as s:
            total = s.scalar(select(func.count()).select_from(DatasetRow).where(DatasetRow.tenant_id == tenant_id)) or 0
            rows = s.scalars(
                select(DatasetRow).where(DatasetRow.tenant_id == tenant_id)
                .order_by(DatasetRow.name).offset(page.offset).limit(page.page_size)
            ).all()
            return Page([_info(r) for r in rows], int(total), page.page, page.page_size)

    def builtin(self, name: str) -> DatasetInfo:
        """The description of a built-in dataset (computed once per process)."""
        ref = _builtin(name)
        cached = self._builtin_cache.get(ref.name)
        if cached is not None:
            return cached
        from modelyard.engine.dataframes import describe_table, load_builtin
        from modelyard.engine.trainer.data import table_fingerprint

        table = load_builtin(ref.name)
        body = describe_table(table, fmt="builtin").to_dict()
        info = DatasetInfo(
            id=f"{BUILTIN_PREFIX}{ref.name}", tenant_id="", name=ref.name, format="builtin",
            sha256=table_fingerprint(table), size_bytes=0, n_rows=table.n_rows,
            columns=body["columns"], preview=body["preview"], created_at=None, builtin=True,
        )
        self._builtin_cache[ref.name] = info
        return info

    def resolve(self, tenant_id: str, reference: Any) -> DatasetInfo:
        """The dataset a job's ``dataset`` field names (``DatasetNotFound`` naming the field)."""
        ref = parse_reference(reference)
        if ref.builtin:
            return self.builtin(ref.name)
        return self.get(tenant_id, ref.name)

    def load_table(self, info: DatasetInfo) -> Table:
        """Read the dataset's rows (its blob's hash is verified first)."""
        from modelyard.engine.dataframes import load_builtin, read_table

        if info.builtin:
            return load_builtin(info.name)
        return read_table(self._artifacts.verified_path(info.sha256), info.format)

    def referenced_blobs(self) -> set[str]:
        """Blobs that uploaded datasets (of any tenant) hold."""
        with self._db.read() as s:
            return set(s.scalars(select(DatasetRow.sha256)).all())
