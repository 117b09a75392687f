"""The composition root: builds every core service from :class:`~modelyard.config.Settings`.

REST, gRPC and local CLI commands share one :class:`Platform`; tests build one per temp folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from modelyard.config import Settings
from modelyard.core.inference import DataPlane
from modelyard.core.keys import KeyService
from modelyard.core.llm import LanguageModels
from modelyard.core.registry import Registry
from modelyard.engine.manager import ModelManager
from modelyard.metrics import Metrics
from modelyard.runtimes.base import RuntimeOptions
from modelyard.store.artifacts import ArtifactStore
from modelyard.store.db import Database

__all__ = ["Platform"]

log = logging.getLogger(__name__)


@dataclass
class Platform:
    settings: Settings
    db: Database
    artifacts: ArtifactStore
    keys: KeyService
    registry: Registry
    metrics: Metrics
    manager: ModelManager
    dataplane: DataPlane
    llm: LanguageModels = field(init=False)

    @classmethod
    def open(cls, settings: Settings) -> Platform:
        """Create folders, migrate the database, and wire the services (no network)."""
        home = settings.resolved_home
        home.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url)
        db.migrate()
        artifacts = ArtifactStore(settings.resolved_artifact_root)
        keys = KeyService(db)
        registry = Registry(db, artifacts)
        metrics = Metrics()
        threads = max(1, settings.cores // max(1, settings.instances))
        manager = ModelManager(
            options=RuntimeOptions(intra_op_threads=threads, inter_op_threads=1),
            memory_budget_bytes=settings.memory_budget_bytes,
            metrics=metrics,
        )
        dataplane = DataPlane(registry=registry, artifacts=artifacts, manager=manager, metrics=metrics)
        platform = cls(settings, db, artifacts, keys, registry, metrics, manager, dataplane)
        platform.llm = LanguageModels(
            settings=settings, registry=registry, artifacts=artifacts, manager=manager, metrics=metrics
        )
        dataplane.folders.update(dict.fromkeys(platform.llm.folder_formats, platform.llm.folder))
        platform.collect_garbage()
        return platform

    def referenced_blobs(self) -> set[str]:
        return self.registry.referenced_blobs()

    def collect_garbage(self, grace_s: float = 600.0) -> list[str]:
        """Remove artifact files that no row references (left by a crash between the two)."""
        removed = self.artifacts.gc(self.referenced_blobs(), grace_s=grace_s)
        if removed:
            log.warning("removed %d unreferenced artifact(s)", len(removed))
        return removed

    async def aclose(self) -> None:
        await self.manager.close()
        self.db.dispose()
