"""Settings: the only module that reads the environment.

Build one :class:`Settings` in ``main()`` (flags override environment, environment overrides an
optional ``modelyard.toml``-free ``.env`` file) and pass it down; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "INLINE_COMPUTE_US", "INLINE_COMPUTE_ONE_CORE_US"]

#: batches faster than this compute on the event loop (a thread hop would cost more)
INLINE_COMPUTE_US = 500.0
#: the same on a server with one core, where a thread adds no parallelism, only preemption of
#: the model by the loop (and cache refills); bounded so that a slow batch still leaves the loop
#: answering health checks and other models within a few tens of milliseconds
INLINE_COMPUTE_ONE_CORE_US = 25_000.0


def _usable_cores() -> int:
    """The cores this process may run on (``taskset``, cpusets); all of them where the platform
    cannot say (macOS)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


class Settings(BaseSettings):
    """Every knob of a ModelYard server, read from ``MODELYARD_*`` variables."""

    model_config = SettingsConfigDict(
        env_prefix="MODELYARD_", env_file=".env", extra="ignore", frozen=True
    )

    home: Path = Field(default=Path("./modelyard-data"), description="data folder")
    host: str = Field(default="127.0.0.1", description="address to bind")
    http_port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    grpc_enabled: bool = True
    listen_sockets: int = Field(
        default=8, ge=1, le=64,
        description="listening sockets per port (Linux: SO_REUSEPORT; elsewhere one). The event loop accepts "
                    "one new connection per socket per turn, so a burst of connections reaching a busy server "
                    "is accepted this many times sooner",
    )
    grpc_transport: Literal["native", "grpcio"] = Field(
        default="native",
        description="native: this package's HTTP/2 transport (fast); grpcio: grpcio's grpc.aio server",
    )
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite in home")
    artifact_root: Path | None = Field(default=None, description="artifact folder; default: home/artifacts")
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    response_cache_bytes: int = Field(
        default=64 * 1024 * 1024, ge=0,
        description="bytes of answers the response cache keeps for versions whose serving settings turn it on; 0: off",
    )
    shared_memory: bool = Field(
        default=False,
        description="let callers register system shared-memory regions for inference tensors (Triton's "
        "system_shared_memory); off by default: the server then reads and writes objects its callers name",
    )
    admin_key: SecretStr | None = Field(default=None, description="admin key for scripted installs")
    cores: int = Field(
        default_factory=_usable_cores, ge=1,
        description="cores the server may use; default: those this process may run on (taskset, cpuset)",
    )
    instances: int = Field(default=1, ge=1, le=64, description="executors per model version")
    memory_budget_bytes: int = Field(default=4 * 1024**3, ge=1)
    max_batch_size: int = Field(default=64, ge=1)
    max_queue_delay_ms: float = Field(default=2.0, ge=0)
    max_queue_size: int = Field(default=256, ge=1)
    request_timeout_s: float = Field(default=30.0, gt=0)
    idle_unload_s: float = Field(
        default=0.0, ge=0, le=30 * 86_400,
        description="unload a version after this many seconds without a request (0: never; a pinned one stays)",
    )
    inline_compute_us: float | None = Field(
        default=None, ge=0,
        description="batches of an in-process model that recently computed faster than this run on the "
        f"event loop instead of hopping to a thread (0: always a thread); default {INLINE_COMPUTE_US:g}, "
        f"or {INLINE_COMPUTE_ONE_CORE_US:g} when the server has one core (a thread would only share it)",
    )
    max_in_flight: int = Field(
        default=4096, ge=1, description="requests queued or computing in all versions; beyond it: 503"
    )
    drain_timeout_s: float = Field(default=20.0, ge=0)
    keep_alive_s: float = Field(
        default=5.0, gt=0, le=3600,
        description="how long an idle HTTP/1.1 keep-alive connection stays open (behind a load balancer: "
                    "longer than its idle timeout, so the server never closes a connection it is reusing)",
    )
    rollout_check_s: float = Field(
        default=1.0, ge=0,
        description="how often the server takes the rollout steps that are due (0: this server takes none)",
    )
    traffic_share_s: float = Field(
        default=1.0, ge=0,
        description="how often the server shares what it counted of the deployments' traffic with the other servers "
                    "of its cluster and reads theirs, so that rollbacks, rollout steps and statistics count the "
                    "cluster's requests (0: each server judges by its own)",
    )
    rate_share_s: float = Field(
        default=1.0, ge=0,
        description="how often the server shares what it was asked of each rate-limited API key with the other "
                    "servers of its cluster and reads theirs, so that a key's requests/second holds over the "
                    "cluster rather than on each server (0: each server gives every key all of its rate)",
    )
    pin_sync_s: float = Field(
        default=5.0, ge=0,
        description="how often the server takes the pins made on the other servers of its cluster (0: only at start)",
    )
    demo_model: bool = Field(default=False, description="register the digits demo model at start")
    price_per_core_hour: float = Field(
        default=0.05, ge=0, description="price of one core-hour, for compare's cost per million predictions"
    )
    compare_max_rows: int = Field(default=10_000, ge=1, description="most dataset rows one evaluation uses")
    upstream_allow_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost"],
        description="hosts an upstream OpenAI-compatible engine may live on (JSON list)",
    )
    upstream_timeout_s: float = Field(default=120.0, gt=0, description="timeout of one upstream call")
    builtin_models: bool = Field(default=True, description="serve the built-in all-minilm-l6-v2 embeddings")
    console: bool = Field(default=True, description="serve the web console at /console/ (and send / there)")
    log_level: str = "info"
    # -- training: datasets and jobs ---------------------------------------------------------
    max_dataset_bytes: int = Field(default=256 * 1024 * 1024, ge=1, description="largest dataset upload")
    job_workers: int = Field(default=1, ge=0, le=64, description="jobs run at a time by this server (0: none)")
    job_lease_s: float = Field(default=30.0, gt=0, description="a running job's lease; renewed by heartbeats")
    job_poll_s: float = Field(default=0.5, gt=0, description="how often an idle job worker looks for work")
    max_train_workers: int | None = Field(
        default=None, ge=1, description="most data-parallel workers one training job may ask for (default: cores)"
    )
    # -- tenancy, security, metering ---------------------------------------------------------
    master_key: SecretStr | None = Field(
        default=None, description="master key (base64 of 32 bytes, or any passphrase) that turns on encryption at rest"
    )
    master_key_file: Path | None = Field(default=None, description="file holding the master key")
    tls_certfile: Path | None = Field(default=None, description="PEM certificate: serve HTTPS")
    tls_keyfile: Path | None = Field(default=None, description="PEM private key of tls_certfile")
    fetch_allow_hosts: list[str] = Field(
        default_factory=list, description="hosts the server may fetch URLs from (JSON list); empty: none"
    )
    prices: dict[str, float] = Field(
        default_factory=lambda: {
            "request": 0.0, "input_token": 0.0, "output_token": 0.0, "compute_second": 0.0,
        },
        description="price table (per request, per token, per compute-second) used by usage reports",
    )
    usage_flush_s: float = Field(default=1.0, gt=0, description="how often metered usage is written")
    default_key_rate_limit: float | None = Field(
        default=None, gt=0, description="requests/second for keys created without their own limit"
    )

    @property
    def inline_below_s(self) -> float:
        """``inline_compute_us`` in seconds, its default resolved by ``cores``."""
        if self.inline_compute_us is not None:
            return self.inline_compute_us / 1e6
        return (INLINE_COMPUTE_ONE_CORE_US if self.cores == 1 else INLINE_COMPUTE_US) / 1e6

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_home / 'modelyard.db'}"

    @property
    def resolved_artifact_root(self) -> Path:
        return (self.artifact_root or self.resolved_home / "artifacts").expanduser().resolve()

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given fields replaced (``None`` values are ignored): how flags win."""
        data = self.model_dump()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return Settings.model_validate(data)
