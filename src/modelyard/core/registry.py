"""The model registry: models and their immutable, content-addressed versions, per tenant.

Registering a version validates the staged artifact with its format's runtime *before* anything
is committed; the blob is then moved into the artifact store and the rows are inserted in one
transaction. If the transaction fails, the blob is removed again unless another version shares
it. Every query is scoped by tenant here, in the core, so no interface can forget to.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelyard.core.classification import LABELS_TAG, check_labels, parse_labels
from modelyard.core.names import check_name
from modelyard.core.pages import Page, PageRequest
from modelyard.core.policy import refuse_unsafe
from modelyard.engine.manager import parse_serving
from modelyard.errors import ModelNotFound, ValidationFailed, VersionNotFound
from modelyard.runtimes.base import inspect_artifact
from modelyard.store.artifacts import ArtifactStore, StagedFile
from modelyard.store.db import Database
from modelyard.store.tables import ModelRow, TenantRow, VersionRow, utcnow
from modelyard.tensors import TensorSpec

__all__ = ["Registry", "ModelInfo", "VersionInfo", "STAGES"]

STAGES = ("none", "staging", "production", "archived")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    tenant_id: str
    name: str
    description: str
    tags: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    latest_version: int | None = None
    production_version: int | None = None


@dataclass(frozen=True, slots=True)
class VersionInfo:
    id: str
    model_id: str
    model_name: str
    tenant_id: str
    version: int
    format: str
    sha256: str
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    description: str
    tags: dict[str, Any]
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    config: dict[str, Any]
    stage: str
    created_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)
    #: the model's serving settings (its ``serving`` tag): under the version's own
    model_serving: dict[str, Any] = field(default_factory=dict)
    #: the model's labels of its versions' output classes (its ``labels`` tag): under the version's
    model_labels: dict[str, list[str]] = field(default_factory=dict)
    #: the tenant's name (metric labels)
    tenant_name: str = ""
    #: kept in memory whatever the budget, and loaded when the server starts
    pinned: bool = False

    @property
    def key(self) -> str:
        """A process-wide identity of this version (used by the model manager)."""
        return self.id


def _version_info(row: VersionRow, model: ModelRow, tenant_name: str = "") -> VersionInfo:
    sig = row.signature or {}
    return VersionInfo(
        id=row.id,
        model_id=model.id,
        model_name=model.name,
        tenant_id=model.tenant_id,
        version=row.version,
        format=row.format,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        inputs=[TensorSpec.from_dict(d) for d in sig.get("inputs", [])],
        outputs=[TensorSpec.from_dict(d) for d in sig.get("outputs", [])],
        description=row.description,
        tags=dict(row.tags or {}),
        metrics=dict(row.metrics or {}),
        lineage=dict(row.lineage or {}),
        config=dict(row.config or {}),
        stage=row.stage,
        created_at=row.created_at,
        extra=dict(sig.get("extra", {})),
        model_serving=dict((model.tags or {}).get("serving") or {}),
        model_labels=_labels_tag(model.tags),
        tenant_name=tenant_name,
        pinned=bool(row.pinned),
    )


def _labels_tag(tags: dict[str, Any] | None) -> dict[str, Any]:
    """A model's ``labels`` tag; one written before labels were checked may be anything: none."""
    labels = (tags or {}).get(LABELS_TAG)
    return dict(labels) if isinstance(labels, dict) else {}


def _model_info(row: ModelRow, latest: int | None = None, production: int | None = None) -> ModelInfo:
    return ModelInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        description=row.description,
        tags=dict(row.tags or {}),
        created_at=row.created_at,
        updated_at=row.updated_at,
        latest_version=latest,
        production_version=production,
    )


def _check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValidationFailed(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}", details={"field": "stage"})
    return stage


def _check_tags(tags: dict[str, Any] | None, outputs: list[TensorSpec] | None = None) -> dict[str, Any]:
    """Tags are free-form, except ``serving``: the serving settings, and ``labels``: the labels
    of output classes (``core/classification.py``), checked here so that a bad one is refused
    when written rather than failing every request to the version. A version's labels are
    checked against its ``outputs`` too."""
    if tags is None:
        return {}
    if not isinstance(tags, dict) or not all(isinstance(k, str) for k in tags):
        raise ValidationFailed("tags must be an object with string keys", details={"field": "tags"})
    if "serving" in tags:
        tags = {**tags, "serving": parse_serving(tags["serving"], where="tags.serving")}
    if LABELS_TAG in tags:
        labels = parse_labels(tags[LABELS_TAG], where=f"tags.{LABELS_TAG}")
        if outputs is not None:
            check_labels(labels, outputs, where=f"tags.{LABELS_TAG}")
    return tags


class Registry:
    """Models and versions of every tenant; all methods take the tenant explicitly."""

    def __init__(self, db: Database, artifacts: ArtifactStore, *, resolve_ttl_s: float = 1.0) -> None:
        self._db = db
        self._artifacts = artifacts
        self._ttl = resolve_ttl_s
        self._resolve_cache: dict[tuple[str, str, str | None], tuple[float, VersionInfo]] = {}
        self._tenant_names: dict[str, str] = {}
        self._lock = threading.Lock()
        # Orders "blob committed + row inserted" against "no row references it + blob deleted":
        # without it a delete can remove a blob that an identical upload is registering.
        self._blob_lock = threading.Lock()
        #: called with each version after it has been removed (the model manager unloads it).
        self.on_version_removed: list[Callable[[VersionInfo], None]] = []
        #: called after any change of which version a name resolves to.
        self.on_change: list[Callable[[], None]] = []
        #: called with (tenant_id, bytes) before anything is stored; raises to refuse (quotas).
        self.admit: Callable[[str, int], None] | None = None
        #: whether something outside the registry (datasets, job results) holds a blob too.
        self.referenced_elsewhere: Callable[[str], bool] | None = None

    # -- helpers ---------------------------------------------------------------------------
    def _changed(self) -> None:
        with self._lock:
            self._resolve_cache.clear()
        for hook in self.on_change:
            hook()

    def _info(self, s: Session, row: VersionRow, model: ModelRow) -> VersionInfo:
        return _version_info(row, model, self._tenant_name(s, model.tenant_id))

    def _tenant_name(self, s: Session, tenant_id: str) -> str:
        """A tenant's name (names never change: read once per tenant)."""
        name = self._tenant_names.get(tenant_id)
        if name is None:
            row = s.get(TenantRow, tenant_id)
            name = row.name if row is not None else tenant_id
            self._tenant_names[tenant_id] = name
        return name

    @staticmethod
    def _model_row(s: Session, tenant_id: str, name: str) -> ModelRow:
        row = s.scalar(select(ModelRow).where(ModelRow.tenant_id == tenant_id, ModelRow.name == name))
        if row is None:
            raise ModelNotFound(f"model {name!r} not found")
        return row

    @staticmethod
    def _version_row(s: Session, model: ModelRow, version: int) -> VersionRow:
        row = s.scalar(select(VersionRow).where(VersionRow.model_id == model.id, VersionRow.version == version))
        if row is None:
            raise VersionNotFound(f"model {model.name!r} has no version {version}")
        return row

    # -- writing ---------------------------------------------------------------------------
    def register_version(
        self,
        *,
        tenant_id: str,
        model_name: str,
        staged: StagedFile,
        fmt: str = "onnx",
        description: str = "",
        tags: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        stage: str = "none",
    ) -> VersionInfo:
        """Validate ``staged`` as ``fmt`` and register it as the model's next version.

        On any failure the staged file is discarded and nothing is registered.
        """
        try:
            check_name(model_name, field="model_name")
            _check_stage(stage)
            tags = _check_tags(tags)
            if self.admit is not None:
                self.admit(tenant_id, staged.size)
            refuse_unsafe(staged.path)
            info = inspect_artifact(fmt, staged.path, config)
            _check_tags(tags, info.outputs)  # labels name the artifact's outputs
        except BaseException:
            staged.discard()
            raise
        signature = {
            "inputs": [t.to_dict() for t in info.inputs],
            "outputs": [t.to_dict() for t in info.outputs],
            "extra": info.extra,
        }
        with self._blob_lock:
            blob_existed = self._artifacts.exists(staged.sha256)
            self._artifacts.commit(staged)
            try:
                result = self._insert_version(
                    tenant_id, model_name, staged, fmt, signature,
                    description, tags, metrics or {}, lineage or {}, config or {}, stage,
                )
            except BaseException:
                if not blob_existed and not self._blob_referenced(staged.sha256):
                    self._artifacts.delete(staged.sha256)
                raise
        self._changed()
        return result

    def _insert_version(
        self, tenant_id: str, model_name: str, staged: StagedFile, fmt: str, signature: dict[str, Any],
        description: str, tags: dict[str, Any], metrics: dict[str, Any], lineage: dict[str, Any],
        config: dict[str, Any], stage: str,
    ) -> VersionInfo:
        for attempt in range(3):
            try:
                with self._db.transaction() as s:
                    model = s.scalar(
                        select(ModelRow).where(ModelRow.tenant_id == tenant_id, ModelRow.name == model_name)
                    )
                    if model is None:
                        model = ModelRow(
                            id=str(uuid.uuid4()), tenant_id=tenant_id, name=model_name,
                            description="", tags={}, next_version=1,
                        )
                        s.add(model)
                        s.flush()
                    # The UPDATE takes the row (or database) write lock first, so concurrent
                    # registrations get distinct numbers on SQLite and PostgreSQL alike.
                    s.execute(
                        update(ModelRow)
                        .where(ModelRow.id == model.id)
                        .values(next_version=ModelRow.next_version + 1, updated_at=utcnow())
                    )
                    number = s.scalar(select(ModelRow.next_version).where(ModelRow.id == model.id)) - 1
                    if stage == "production":
                        self._archive_production(s, model.id)
                    row = VersionRow(
                        id=str(uuid.uuid4()), model_id=model.id, version=number, format=fmt,
                        sha256=staged.sha256, size_bytes=staged.size, signature=signature,
                        description=description, tags=tags, metrics=metrics, lineage=lineage,
                        config=config, stage=stage,
                    )
                    s.add(row)
                    s.flush()
                    s.refresh(model)
                    return self._info(s, row, model)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _archive_production(s: Session, model_id: str) -> None:
        # Take the model row's write lock first: concurrent promotions of one model then run one
        # after another, and each archives the production version the previous one committed
        # (on PostgreSQL's READ COMMITTED the archive UPDATE alone would not see it).
        s.execute(update(ModelRow).where(ModelRow.id == model_id).values(updated_at=utcnow()))
        s.execute(
            update(VersionRow)
            .where(VersionRow.model_id == model_id, VersionRow.stage == "production")
            .values(stage="archived")
        )

    def update_model(
        self, tenant_id: str, name: str, *, description: str | None = None, tags: dict[str, Any] | None = None
    ) -> ModelInfo:
        with self._db.transaction() as s:
            row = self._model_row(s, tenant_id, name)
            if description is not None:
                row.description = description
            if tags is not None:
                row.tags = _check_tags(tags)
            row.updated_at = utcnow()
            s.flush()
            info = _model_info(row)
        self._changed()  # the model's serving tag is part of its versions' records
        return info

    def set_model_serving(self, tenant_id: str, name: str, serving: dict[str, Any]) -> ModelInfo:
        """Replace the model's serving settings (its ``serving`` tag), its other tags kept: one
        transaction that holds the model's row, so a concurrent change of its tags is not lost."""
        with self._db.transaction() as s:
            row = s.scalar(
                select(ModelRow).where(ModelRow.tenant_id == tenant_id, ModelRow.name == name).with_for_update()
            )
            if row is None:
                raise ModelNotFound(f"model {name!r} not found")
            row.tags = _check_tags({**(row.tags or {}), "serving": serving})
            row.updated_at = utcnow()
            s.flush()
            info = _model_info(row)
        self._changed()
        return info

    def update_version(
        self,
        tenant_id: str,
        name: str,
        version: int,
        *,
        description: str | None = None,
        tags: dict[str, Any] | None = None,
        stage: str | None = None,
    ) -> VersionInfo:
        """Change a version's description, tags or stage (the artifact never changes).

        Promoting to ``production`` archives the model's previous production version.
        """
        with self._db.transaction() as s:
            model = self._model_row(s, tenant_id, name)
            row = self._version_row(s, model, version)
            outputs = [TensorSpec.from_dict(d) for d in (row.signature or {}).get("outputs", [])]
            tags = _check_tags(tags, outputs) if tags is not None else None
            if stage is not None and stage != row.stage:
                _check_stage(stage)
                if stage == "production":  # locks the model row before any version row
                    self._archive_production(s, model.id)
                row.stage = stage
            if description is not None:
                row.description = description
            if tags is not None:
                row.tags = tags
            s.flush()
            s.refresh(row)
            info = self._info(s, row, model)
        self._changed()
        return info

    def set_pinned(self, tenant_id: str, name: str, version: int, pinned: bool) -> VersionInfo:
        """Record whether a version is pinned (see ``core/residency.py``): the server loads the
        pinned versions when it starts."""
        with self._db.transaction() as s:
            model = self._model_row(s, tenant_id, name)
            row = self._version_row(s, model, version)
            row.pinned = pinned
            s.flush()
            info = self._info(s, row, model)
        self._changed()
        return info

    def pinned_versions(self) -> list[VersionInfo]:
        """Every pinned version, of every tenant."""
        with self._db.read() as s:
            rows = s.execute(
                select(VersionRow, ModelRow).join(ModelRow, VersionRow.model_id == ModelRow.id).where(VersionRow.pinned)
            ).all()
            return [self._info(s, version, model) for version, model in rows]

    def set_metrics(self, tenant_id: str, name: str, version: int, metrics: dict[str, Any]) -> VersionInfo:
        with self._db.transaction() as s:
            model = self._model_row(s, tenant_id, name)
            row = self._version_row(s, model, version)
            row.metrics = {**(row.metrics or {}), **metrics}
            s.flush()
            return self._info(s, row, model)

    def delete_version(self, tenant_id: str, name: str, version: int) -> VersionInfo:
        with self._db.transaction() as s:
            model = self._model_row(s, tenant_id, name)
            row = self._version_row(s, model, version)
            info = self._info(s, row, model)
            s.delete(row)
        self._after_removal([info])
        return info

    def delete_model(self, tenant_id: str, name: str) -> list[VersionInfo]:
        with self._db.transaction() as s:
            model = self._model_row(s, tenant_id, name)
            rows = s.scalars(select(VersionRow).where(VersionRow.model_id == model.id)).all()
            infos = [self._info(s, r, model) for r in rows]
            s.execute(delete(VersionRow).where(VersionRow.model_id == model.id))
            s.delete(model)
        self._after_removal(infos)
        return infos

    def _after_removal(self, infos: list[VersionInfo]) -> None:
        self._changed()
        for info in infos:
            for hook in self.on_version_removed:
                hook(info)
            with self._blob_lock:
                if not self._blob_referenced(info.sha256):
                    self._artifacts.delete(info.sha256)

    def _blob_referenced(self, sha256: str) -> bool:
        with self._db.read() as s:
            if s.scalar(select(VersionRow.id).where(VersionRow.sha256 == sha256).limit(1)) is not None:
                return True
        return self.referenced_elsewhere is not None and self.referenced_elsewhere(sha256)

    def referenced_blobs(self) -> set[str]:
        with self._db.read() as s:
            return set(s.scalars(select(VersionRow.sha256).distinct()).all())

    # -- reading ---------------------------------------------------------------------------
    def list_models(
        self, tenant_id: str | None, page: PageRequest = PageRequest(), *, names: tuple[str, ...] = ()
    ) -> Page[ModelInfo]:
        """Models of ``tenant_id`` (``None``: every tenant, for admins) by name; with ``names``
        (a key's scope) only those."""
        with self._db.read() as s:
            q = select(ModelRow)
            count = select(func.count()).select_from(ModelRow)
            if tenant_id is not None:
                q = q.where(ModelRow.tenant_id == tenant_id)
                count = count.where(ModelRow.tenant_id == tenant_id)
            if names:
                q = q.where(ModelRow.name.in_(names))
                count = count.where(ModelRow.name.in_(names))
            total = s.scalar(count) or 0
            rows = s.scalars(q.order_by(ModelRow.name).offset(page.offset).limit(page.page_size)).all()
            items = []
            for row in rows:
                latest = s.scalar(select(func.max(VersionRow.version)).where(VersionRow.model_id == row.id))
                prod = s.scalar(
                    select(func.max(VersionRow.version)).where(
                        VersionRow.model_id == row.id, VersionRow.stage == "production"
                    )
                )
                items.append(_model_info(row, latest, prod))
        return Page(items, total, page.page, page.page_size)

    def get_model(self, tenant_id: str, name: str) -> ModelInfo:
        with self._db.read() as s:
            row = self._model_row(s, tenant_id, name)
            latest = s.scalar(select(func.max(VersionRow.version)).where(VersionRow.model_id == row.id))
            prod = s.scalar(
                select(func.max(VersionRow.version)).where(
                    VersionRow.model_id == row.id, VersionRow.stage == "production"
                )
            )
            return _model_info(row, latest, prod)

    def list_versions(self, tenant_id: str, name: str, page: PageRequest = PageRequest()) -> Page[VersionInfo]:
        with self._db.read() as s:
            model = self._model_row(s, tenant_id, name)
            total = s.scalar(select(func.count()).select_from(VersionRow).where(VersionRow.model_id == model.id)) or 0
            rows = s.scalars(
                select(VersionRow)
                .where(VersionRow.model_id == model.id)
                .order_by(VersionRow.version.desc())
                .offset(page.offset)
                .limit(page.page_size)
            ).all()
            return Page([self._info(s, r, model) for r in rows], total, page.page, page.page_size)

    def tenant_versions(self, tenant_id: str, names: tuple[str, ...] = ()) -> list[VersionInfo]:
        """Every version of every model of ``tenant_id`` (with ``names``, a key's scope: of
        those models only), by model name then version, in one query."""
        with self._db.read() as s:
            q = select(VersionRow, ModelRow).join(ModelRow, VersionRow.model_id == ModelRow.id)
            q = q.where(ModelRow.tenant_id == tenant_id)
            if names:
                q = q.where(ModelRow.name.in_(names))
            rows = s.execute(q.order_by(ModelRow.name, VersionRow.version)).all()
            return [self._info(s, version, model) for version, model in rows]

    def get_version(self, tenant_id: str, name: str, version: int) -> VersionInfo:
        with self._db.read() as s:
            model = self._model_row(s, tenant_id, name)
            return self._info(s, self._version_row(s, model, version), model)

    def resolve(self, tenant_id: str, name: str, version: str | None = None) -> VersionInfo:
        """The version a request names: an explicit number, else the latest ``production``
        version, else the latest one. Cached for ``resolve_ttl_s``; local changes clear it."""
        key = (tenant_id, name, version)
        now = time.monotonic()
        hit = self._resolve_cache.get(key)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        info = self._resolve(tenant_id, name, version)
        with self._lock:
            if len(self._resolve_cache) > 10_000:
                self._resolve_cache.clear()
            self._resolve_cache[key] = (now, info)
        return info

    def _resolve(self, tenant_id: str, name: str, version: str | None) -> VersionInfo:
        if version not in (None, ""):
            try:
                number = int(version)  # type: ignore[arg-type]
            except ValueError:
                raise VersionNotFound(f"version {version!r} is not a version number") from None
            return self.get_version(tenant_id, name, number)
        with self._db.read() as s:
            model = self._model_row(s, tenant_id, name)
            base = select(VersionRow).where(VersionRow.model_id == model.id)
            row = s.scalar(base.where(VersionRow.stage == "production").order_by(VersionRow.version.desc()).limit(1))
            if row is None:
                row = s.scalar(base.where(VersionRow.stage != "archived").order_by(VersionRow.version.desc()).limit(1))
            if row is None:
                row = s.scalar(base.order_by(VersionRow.version.desc()).limit(1))
            if row is None:
                raise VersionNotFound(f"model {name!r} has no versions")
            return self._info(s, row, model)
