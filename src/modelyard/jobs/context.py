"""What a job runner may use: settings, the database-backed services and the artifact store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.config import Settings
from modelyard.core.datasets import DatasetService
from modelyard.core.jobs import JobQueue
from modelyard.core.registry import Registry
from modelyard.store.artifacts import ArtifactStore
from modelyard.store.db import Database

__all__ = ["JobContext"]


@dataclass(frozen=True, kw_only=True)
class JobContext:
    """The services a job needs, in the API process (to validate a submission) or in a worker."""

    settings: Settings
    db: Database
    artifacts: ArtifactStore
    registry: Registry
    datasets: DatasetService
    jobs: JobQueue

    @classmethod
    def open(cls, settings: Settings) -> JobContext:
        """Connect to an already migrated database and artifact store (a worker process)."""
        from modelyard.store.encryption import open_encryption

        db = Database(settings.resolved_database_url)
        master = settings.master_key.get_secret_value() if settings.master_key else None
        artifacts = ArtifactStore(
            settings.resolved_artifact_root,
            encryption=open_encryption(
                settings.resolved_artifact_root, master_key=master, master_key_file=settings.master_key_file
            ),
        )
        return cls(
            settings=settings, db=db, artifacts=artifacts, registry=Registry(db, artifacts),
            datasets=DatasetService(db, artifacts), jobs=JobQueue(db, lease_s=settings.job_lease_s),
        )

    @classmethod
    def of(cls, platform: Any) -> JobContext:
        """The context of an open :class:`~modelyard.core.platform.Platform` (the API process)."""
        return cls(
            settings=platform.settings, db=platform.db, artifacts=platform.artifacts, registry=platform.registry,
            datasets=platform.datasets, jobs=platform.jobs,
        )

    def workdir(self, job_id: str) -> Path:
        """The job's folder (checkpoints, exported artifacts): ``home/jobs/<id>``."""
        return self.settings.resolved_home / "jobs" / job_id

    @property
    def max_train_workers(self) -> int:
        return self.settings.max_train_workers or self.settings.cores

    def close(self) -> None:
        self.db.dispose()
