"""The inference data plane: one implementation behind OIP v2 REST, gRPC and the SDK.

Transports decode their wire format into :class:`~modelyard.tensors.InferenceRequest`, call
:meth:`DataPlane.infer`, and encode the :class:`~modelyard.tensors.InferenceResponse`. Validation
against the version's signature, tenant scoping, metrics and error mapping happen here once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from modelyard import __version__
from modelyard.core.principal import Principal
from modelyard.core.registry import Registry, VersionInfo
from modelyard.engine.manager import ModelManager, ModelSource
from modelyard.errors import InvalidInput, ModelNotFound, ModelYardError
from modelyard.metrics import Metrics
from modelyard.store.artifacts import ArtifactStore
from modelyard.tensors import InferenceRequest, InferenceResponse, Tensor, TensorSpec

__all__ = ["DataPlane", "SERVER_NAME", "EXTENSIONS"]

SERVER_NAME = "modelyard"
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]


def validate_inputs(specs: list[TensorSpec], tensors: list[Tensor]) -> None:
    """Check names, datatypes and shapes of request tensors against a signature."""
    by_name = {s.name: s for s in specs}
    seen: set[str] = set()
    for t in tensors:
        spec = by_name.get(t.name)
        if spec is None:
            raise InvalidInput(
                f"unexpected input {t.name!r}; the model takes {', '.join(sorted(by_name))}"
            )
        if t.name in seen:
            raise InvalidInput(f"input {t.name!r} is given twice")
        seen.add(t.name)
        if t.datatype != spec.datatype:
            raise InvalidInput(f"input {t.name!r} has datatype {t.datatype}; the model expects {spec.datatype}")
        if not spec.accepts_shape(tuple(t.shape)):
            raise InvalidInput(
                f"input {t.name!r} has shape {list(t.shape)}; the model expects {list(spec.shape)} (-1 = any)"
            )
    missing = set(by_name) - seen
    if missing:
        raise InvalidInput(f"missing input(s): {', '.join(sorted(missing))}")


class DataPlane:
    """Resolves what a request names, checks it, and runs it through the model manager."""

    def __init__(
        self,
        *,
        registry: Registry,
        artifacts: ArtifactStore,
        manager: ModelManager,
        metrics: Metrics,
    ) -> None:
        self.registry = registry
        self.artifacts = artifacts
        self.manager = manager
        self.metrics = metrics
        self.accepting = True
        #: format -> how a version of it becomes a loadable folder (e.g. extracted HF archives)
        self.folders: dict[str, Callable[[VersionInfo], Path]] = {}
        registry.on_version_removed.append(lambda v: manager.unload(v.key))

    # -- server ----------------------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.accepting

    # -- models ----------------------------------------------------------------------------
    async def resolve(self, principal: Principal, name: str, version: str | None) -> VersionInfo:
        principal.require("infer")
        if not principal.in_scope(name):
            raise ModelNotFound(f"model {name!r} not found")
        return await anyio.to_thread.run_sync(self.registry.resolve, principal.tenant_id, name, version)

    def source(self, info: VersionInfo) -> ModelSource:
        return ModelSource(
            key=info.key,
            name=info.model_name,
            version=str(info.version),
            format=info.format,
            path=self._path_of(info),
            config=info.config,
            size_hint=info.size_bytes,
        )

    def _path_of(self, info: VersionInfo) -> Callable[[], Path]:
        folder = self.folders.get(info.format)
        if folder is not None:
            return lambda: folder(info)
        return lambda: self.artifacts.verified_path(info.sha256)

    async def model_metadata(self, principal: Principal, name: str, version: str | None) -> dict[str, Any]:
        info = await self.resolve(principal, name, version)
        return {
            "name": info.model_name,
            "versions": [str(info.version)],
            "platform": _platform(info.format),
            "inputs": [s.to_dict() for s in info.inputs],
            "outputs": [s.to_dict() for s in info.outputs],
        }

    async def model_ready(self, principal: Principal, name: str, version: str | None) -> bool:
        info = await self.resolve(principal, name, version)
        if not self.accepting:
            return False
        await self.manager.acquire(self.source(info))
        return True

    # -- inference -------------------------------------------------------------------------
    async def infer(
        self,
        principal: Principal,
        name: str,
        version: str | None,
        request: InferenceRequest,
        *,
        protocol: str = "rest",
    ) -> InferenceResponse:
        started = time.perf_counter()
        info = await self.resolve(principal, name, version)
        labels = (info.model_name, str(info.version))
        self.metrics.requests.labels(*labels, protocol).inc()
        try:
            validate_inputs(info.inputs, request.inputs)
            output_names = self._output_names(info, request)
            arrays = {t.name: t.data for t in request.inputs}
            results = await self.manager.predict(self.source(info), arrays, output_names)
        except ModelYardError as exc:
            self.metrics.errors.labels(*labels, exc.code).inc()
            raise
        except Exception:
            self.metrics.errors.labels(*labels, "internal").inc()
            raise
        self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
        outputs = [Tensor.from_array(n, results[n]) for n in (output_names or list(results))]
        return InferenceResponse(
            model_name=info.model_name, model_version=str(info.version), outputs=outputs, id=request.id
        )

    @staticmethod
    def _output_names(info: VersionInfo, request: InferenceRequest) -> list[str] | None:
        if not request.outputs:
            return None
        known = {o.name for o in info.outputs}
        names = [o.name for o in request.outputs]
        for n in names:
            if n not in known:
                raise InvalidInput(f"unknown output {n!r}; the model has {', '.join(sorted(known))}")
        return names


def _platform(fmt: str) -> str:
    return {"onnx": "onnxruntime_onnx"}.get(fmt, fmt)
