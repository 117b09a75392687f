"""The composition root: builds every core service from :class:`~modelyard.config.Settings`.

REST, gRPC and local CLI commands share one :class:`Platform`; tests build one per temp folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from modelyard.config import Settings
from modelyard.core.deployments import Deployments
from modelyard.core.audit import AuditLog
from modelyard.core.datasets import DatasetService
from modelyard.core.inference import DataPlane
from modelyard.core.jobs import JobQueue
from modelyard.core.keys import KeyService
from modelyard.core.limits import Limits
from modelyard.core.llm import LanguageModels
from modelyard.core.optimization import Optimization
from modelyard.core.registry import Registry
from modelyard.core.log_settings import LogSettings
from modelyard.core.response_cache import ResponseCache
from modelyard.core.shared_memory import SharedMemory
from modelyard.core.tracing import Tracer
from modelyard.core.residency import Residency
from modelyard.core.statistics import Statistics
from modelyard.core.tenants import TenantService
from modelyard.core.usage import UsageMeter
from modelyard.engine.manager import ModelManager, ServingOptions
from modelyard.metrics import Metrics
from modelyard.runtimes.base import RuntimeOptions
from modelyard.store.artifacts import ArtifactStore
from modelyard.store.db import Database
from modelyard.store.encryption import open_encryption

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
    tenants: TenantService = field(init=False)
    limits: Limits = field(init=False)
    usage: UsageMeter = field(init=False)
    audit: AuditLog = field(init=False)
    deployments: Deployments = field(init=False)
    datasets: DatasetService = field(init=False)
    jobs: JobQueue = field(init=False)
    optimization: Optimization = field(init=False)
    residency: Residency = field(init=False)
    statistics: Statistics = field(init=False)
    log_settings: LogSettings = field(init=False)
    shared_memory: SharedMemory = field(init=False)
    tracer: Tracer = field(init=False)

    @classmethod
    def open(cls, settings: Settings) -> Platform:
        """Create folders, migrate the database, and wire the services (no network)."""
        home = settings.resolved_home
        home.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url)
        db.migrate()
        master = settings.master_key.get_secret_value() if settings.master_key else None
        artifacts = ArtifactStore(
            settings.resolved_artifact_root,
            encryption=open_encryption(
                settings.resolved_artifact_root, master_key=master, master_key_file=settings.master_key_file
            ),
        )
        keys = KeyService(db)
        registry = Registry(db, artifacts)
        metrics = Metrics()
        threads = max(1, settings.cores // max(1, settings.instances))
        manager = ModelManager(
            options=RuntimeOptions(intra_op_threads=threads, inter_op_threads=1),
            memory_budget_bytes=settings.memory_budget_bytes,
            metrics=metrics,
            cores=settings.cores,
            defaults=ServingOptions(
                max_batch_size=settings.max_batch_size, max_queue_delay_ms=settings.max_queue_delay_ms,
                max_queue_size=settings.max_queue_size, instances=settings.instances,
                timeout_s=settings.request_timeout_s, idle_unload_s=settings.idle_unload_s,
            ),
            max_in_flight=settings.max_in_flight,
            drain_timeout_s=settings.drain_timeout_s,
            inline_below_s=settings.inline_below_s,
        )
        deployments = Deployments(db, registry)
        dataplane = DataPlane(
            registry=registry, artifacts=artifacts, manager=manager, metrics=metrics, deployments=deployments
        )
        platform = cls(settings, db, artifacts, keys, registry, metrics, manager, dataplane)
        platform.residency = Residency(dataplane, registry)
        platform.statistics = Statistics(dataplane, registry, platform.residency)
        platform.log_settings = LogSettings()
        platform.shared_memory = dataplane.shared_memory = SharedMemory(settings.shared_memory)
        dataplane.response_cache = cache = ResponseCache(settings.response_cache_bytes, metrics)
        registry.on_version_removed.append(lambda v: cache.forget(v.key))
        platform.tracer = dataplane.tracer = Tracer(
            home / "traces", dropped=lambda reason, lines: metrics.traces_dropped.labels(reason).inc(lines)
        )
        platform.tenants = TenantService(db, keys)
        platform.limits = Limits(
            db=db, tenants=platform.tenants, default_rate=settings.default_key_rate_limit,
            refusals=metrics.limit_refusals,
        )
        platform.usage = UsageMeter(db, prices=settings.prices, flush_s=settings.usage_flush_s)
        platform.audit = AuditLog(db)
        dataplane.limits, dataplane.usage = platform.limits, platform.usage
        platform.usage.start()
        platform.audit.start()
        platform.deployments = deployments
        platform.datasets = DatasetService(db, artifacts)
        platform.jobs = JobQueue(db, lease_s=settings.job_lease_s)
        registry.admit = platform.datasets.admit = platform.limits.check_storage
        registry.referenced_elsewhere = platform.datasets.referenced_elsewhere = (
            lambda sha256: sha256 in platform.referenced_blobs()
        )
        platform.jobs.admit = platform.limits.admit_job
        platform.optimization = Optimization(registry=registry, datasets=platform.datasets, artifacts=artifacts, settings=settings)
        platform.llm = LanguageModels(
            settings=settings, registry=registry, artifacts=artifacts, manager=manager, metrics=metrics
        )
        dataplane.folders.update(dict.fromkeys(platform.llm.folder_formats, platform.llm.folder))
        platform.collect_garbage()
        return platform

    def referenced_blobs(self) -> set[str]:
        return self.registry.referenced_blobs() | self.datasets.referenced_blobs() | self.jobs.referenced_blobs()

    def collect_garbage(self, grace_s: float = 600.0) -> list[str]:
        """Remove artifact files that no row references (left by a crash between the two)."""
        removed = self.artifacts.gc(self.referenced_blobs(), grace_s=grace_s)
        if removed:
            log.warning("removed %d unreferenced artifact(s)", len(removed))
        return removed

    async def aclose(self) -> None:
        await self.llm.aclose()
        await self.manager.close()
        self.shared_memory.close()
        self.tracer.close()
        self.usage.close()
        self.audit.close()
        self.db.dispose()
