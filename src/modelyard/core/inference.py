"""The inference data plane: one implementation behind OIP v2 REST, gRPC and the SDK.

Transports decode their wire format into :class:`~modelyard.tensors.InferenceRequest`, call
:meth:`DataPlane.infer`, and encode the :class:`~modelyard.tensors.InferenceResponse`. Validation
against the version's signature, tenant scoping, metrics and error mapping happen here once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from modelyard import __version__
from modelyard.core.limits import Limits
from modelyard.core.model_config import triton_config, triton_platform
from modelyard.core.cache import AsyncTTLCache, SingleFlight
from modelyard.core.classification import PARAMETER as CLASSIFICATION
from modelyard.core.classification import classification_count, classify, labels_of
from modelyard.core.principal import Principal
from modelyard.core.queue_gates import DeploymentGate, QueueGate
from modelyard.core.registry import Registry, VersionInfo
from modelyard.core.usage import UsageMeter
from modelyard.core.deployment_spec import Route
from modelyard.core.deployment_traffic import DeploymentTraffic, Trip
from modelyard.core.deployments import Deployments
from modelyard.core.response_cache import CacheKey, ResponseCache
from modelyard.core.routing import outputs_agree
from modelyard.core.scheduling import routing_key, scheduling
from modelyard.core.shared_memory import SharedMemory
from modelyard.core.tenants import Quotas
from modelyard.core.tracing import Trace, Tracer
from modelyard.engine.batcher import DynamicBatcher, Queued
from modelyard.engine.manager import LoadedModel, ModelManager, ModelSource, ServingOptions
from modelyard.errors import Conflict, InvalidInput, ModelNotFound, ModelYardError, NotEnabled, RateLimited
from modelyard.metrics import Metrics
from modelyard.store.artifacts import ArtifactStore
from modelyard.tensors import InferenceRequest, InferenceResponse, Tensor, TensorSpec

__all__ = ["DataPlane", "PendingInference", "SERVER_NAME", "EXTENSIONS"]

log = logging.getLogger(__name__)

SERVER_NAME = "modelyard"
#: shadow requests running at once, at most; beyond it mirrored traffic is skipped (counted)
MAX_SHADOW_IN_FLIGHT = 64
#: how long a resolved name is reused without asking the registry (local changes clear it)
_RESOLVE_TTL_S = 1.0
#: the Triton extensions the server implements, over REST and gRPC: binary tensor data (gRPC:
#: raw contents), outputs as classes (``core/classification.py``), the model repository (index,
#: load, unload: ``api/v2/repository.py`` and ``grpc/servicer.py``), the model configuration
#: (``core/model_config.py``), request parameters (custom ones accepted; ``timeout`` and
#: ``priority``, the schedule policy, honoured: ``core/scheduling.py``),
#: per-version statistics (``core/statistics.py``), traces (``core/tracing.py``) and log settings
#: (``core/log_settings.py``); and ``system_shared_memory`` when it is on
#: (``core/shared_memory.py``, see ``server_metadata``).
EXTENSIONS = [
    "binary_tensor_data", "classification", "model_repository", "model_configuration", "parameters",
    "schedule_policy", "statistics", "trace", "logging",
]


def validate_inputs(specs: list[TensorSpec], tensors: list[Tensor]) -> None:
    """Check names, datatypes and shapes of request tensors against a signature."""
    if len(specs) == len(tensors):
        for spec, t in zip(specs, tensors):
            if t.name != spec.name or t.datatype != spec.datatype or not spec.accepts_shape(t.shape):
                break
        else:
            return  # every input once, in the signature's order, as declared: the usual request
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
        deployments: Deployments | None = None,
    ) -> None:
        self.registry = registry
        self.deployments = deployments
        self.artifacts = artifacts
        self.manager = manager
        self.metrics = metrics
        self.accepting = True
        #: rate limits/quotas and usage metering (set by the Platform; ``None`` when built bare)
        self.limits: Limits | None = None
        self.usage: UsageMeter | None = None
        #: registered shared-memory regions (set by the Platform; ``None`` when built bare)
        self.shared_memory: SharedMemory | None = None
        #: answers remembered for versions that ask for it (set by the Platform; ``None``: none)
        self.response_cache: ResponseCache | None = None
        #: request traces (set by the Platform; ``None``: none)
        self.tracer: Tracer | None = None
        #: format -> how a version of it becomes a loadable folder (e.g. extracted HF archives)
        self.folders: dict[str, Callable[[VersionInfo], Path]] = {}
        registry.on_version_removed.append(lambda v: manager.unload(v.key))
        registry.on_version_removed.append(lambda v: metrics.statistics.forget(v.key))
        self._options: dict[tuple[str, str, int], tuple[VersionInfo, ServingOptions]] = {}
        self._sources: dict[tuple[str, bool], ModelSource] = {}
        self._shadows: set[asyncio.Task[None]] = set()
        self._rollbacks: set[asyncio.Task[None]] = set()
        self._resolved: AsyncTTLCache[tuple[str, str, str | None], VersionInfo] = AsyncTTLCache(
            ttl_s=_RESOLVE_TTL_S
        )
        self._metric_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        #: database reads of deployments and quotas, one at a time per key
        self._lookups: SingleFlight[tuple[str, str], Any] = SingleFlight()
        registry.on_change.append(self._resolved.clear)
        registry.on_change.append(self._sources.clear)

    # -- server ----------------------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        extensions = list(EXTENSIONS)
        if self.shared_memory is not None and self.shared_memory.enabled:
            extensions.append("system_shared_memory")
        return {"name": SERVER_NAME, "version": __version__, "extensions": extensions}

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.accepting

    # -- models ----------------------------------------------------------------------------
    async def resolve(self, principal: Principal, name: str, version: str | None) -> VersionInfo:
        known = self._known(principal, name, version)
        if known is not None:
            return known
        tenant = principal.tenant_id
        return await self._resolved.get(
            (tenant, name, version), lambda: self.registry.resolve(tenant, name, version)
        )

    def _known(self, principal: Principal, name: str, version: str | None) -> VersionInfo | None:
        """:meth:`resolve` from memory (a stale answer is refreshed in the background, as
        ``resolve`` does; ``None``: await ``resolve``). The caller's permission and scope are
        checked either way. Per request, a coroutine fewer."""
        self._may_infer(principal, name)
        return self._remembered(principal, name, version)

    @staticmethod
    def _may_infer(principal: Principal, name: str) -> None:
        """403 without the permission to infer; 404 for a model outside the caller's scopes."""
        principal.require("infer")
        if not principal.in_scope(name):
            raise ModelNotFound(f"model {name!r} not found")

    def _remembered(self, principal: Principal, name: str, version: str | None) -> VersionInfo | None:
        """:meth:`_known` before the caller's permission and scope are checked."""
        tenant = principal.tenant_id
        return self._resolved.now((tenant, name, version), lambda: self.registry.resolve(tenant, name, version))

    async def deployment(self, principal: Principal, name: str) -> DeploymentTraffic | None:
        """The deployment ``name`` of the caller's tenant, or ``None``: answered from memory once
        known (a stale answer is refreshed in the background, one database read at a time)."""
        deployments = self.deployments
        if deployments is None:
            return None
        known, traffic = self._deployment_now(principal, name)
        if known:
            return traffic
        key = (principal.tenant_id, name)
        traffic = await self._lookups.run(key, partial(deployments.refresh, *key))
        return self._may_use(principal, name, traffic)

    def _deployment_now(self, principal: Principal, name: str) -> tuple[bool, DeploymentTraffic | None]:
        """``(True, what deployment() answers)`` when memory answers it, without a coroutine (a
        stale answer is refreshed in the background, as ``deployment()`` does); ``(False,
        None)``: await :meth:`deployment`."""
        known, traffic = self._cached_deployment(principal, name)
        return known, self._may_use(principal, name, traffic)

    def _cached_deployment(self, principal: Principal, name: str) -> tuple[bool, DeploymentTraffic | None]:
        """:meth:`_deployment_now` before the caller's permission and scope are checked."""
        deployments = self.deployments
        assert deployments is not None
        key = (principal.tenant_id, name)
        hit = deployments.cached(*key)
        if hit is None:
            return False, None
        fresh, traffic = hit
        if not fresh:
            self._lookups.refresh(key, partial(deployments.refresh, *key))
        return True, traffic

    @staticmethod
    def _may_use(principal: Principal, name: str, traffic: DeploymentTraffic | None) -> DeploymentTraffic | None:
        if traffic is not None:
            principal.require("infer")
            if not principal.in_scope(name):
                raise ModelNotFound(f"model {name!r} not found")
        return traffic

    async def _route_info(self, principal: Principal, route: Route) -> VersionInfo:
        return await self.resolve(principal, route.model, str(route.version))

    def options(self, info: VersionInfo, deployment: DeploymentTraffic | None = None) -> ServingOptions:
        """Serving settings: server defaults < the model's ``serving`` tag < the version's
        ``serving`` tag and config < the deployment's ``serving``. Remembered per version and
        deployment revision for as long as ``info`` is the version's current record: a record
        read again (after a change here, or after the resolve cache's TTL, for a change made on
        another server) has its settings merged again."""
        dep = deployment.deployment if deployment is not None else None
        key = (info.id, dep.id if dep else "", dep.revision if dep else 0)
        hit = self._options.get(key)
        if hit is not None and hit[0] is info:
            return hit[1]
        options = (
            self.manager.defaults.merged(info.model_serving)
            .merged(info.tags.get("serving"))
            .merged(info.config.get("serving"))
        )
        if dep is not None:
            options = options.merged(dep.serving)
        if len(self._options) > 10_000:
            self._options.clear()
        self._options[key] = (info, options)
        return options

    def source(self, info: VersionInfo, options: ServingOptions | None = None) -> ModelSource:
        """What the manager needs to load ``info`` (made once per version and isolation mode)."""
        isolated = (options or self.options(info)).isolation == "process"
        key = (info.id, isolated)
        source = self._sources.get(key)
        if source is None or source.key != info.key:
            source = ModelSource(
                key=info.key,
                name=info.model_name,
                version=str(info.version),
                format=info.format,
                path=self._path_of(info),
                config=info.config,
                size_hint=info.size_bytes,
                inputs=tuple(info.inputs),
                isolated=isolated,
                tenant=info.tenant_name,
            )
            if len(self._sources) > 10_000:
                self._sources.clear()
            self._sources[key] = source
        return source

    def _path_of(self, info: VersionInfo) -> Callable[[], Path]:
        folder = self.folders.get(info.format)
        if folder is not None:
            return lambda: folder(info)
        return lambda: self.artifacts.verified_path(info.sha256)

    async def _target(
        self, principal: Principal, name: str, version: str | None
    ) -> tuple[VersionInfo, DeploymentTraffic | None]:
        if version is None:
            traffic = await self.deployment(principal, name)
            if traffic is not None:
                return await self._route_info(principal, traffic.deployment.primary), traffic
        return await self.resolve(principal, name, version), None

    async def model_metadata(self, principal: Principal, name: str, version: str | None) -> dict[str, Any]:
        info, traffic = await self._target(principal, name, version)
        return {
            "name": name if traffic is not None else info.model_name,
            "versions": [str(info.version)],
            "platform": triton_platform(info.format),
            "inputs": [s.to_dict() for s in info.inputs],
            "outputs": [s.to_dict() for s in info.outputs],
        }

    async def model_config(self, principal: Principal, name: str, version: str | None) -> dict[str, Any]:
        """The version ``name`` ``version`` names as Triton's model configuration, with the
        serving settings it is called with (through a deployment's, when ``name`` is one)."""
        info, traffic = await self._target(principal, name, version)
        shown = name if traffic is not None else info.model_name
        return triton_config(shown, info.version, info.format, info.inputs, info.outputs, self.options(info, traffic))

    async def model_ready(self, principal: Principal, name: str, version: str | None) -> bool:
        info, traffic = await self._target(principal, name, version)
        if not self.accepting:
            return False
        await self.load(info, traffic)
        return True

    async def load(self, info: VersionInfo, deployment: DeploymentTraffic | None = None) -> None:
        """Load ``info`` (warm-up included) with the serving settings it would be called with,
        through ``deployment`` when given; nothing to do when it is loaded already."""
        options = self.options(info, deployment)
        await self.manager.acquire(self.source(info, options), options)

    # -- admission -------------------------------------------------------------------------
    def queue_gate(self, principal: Principal, name: str, version: str | None) -> QueueGate | None:
        """What a transport needs to refuse the next requests of this caller for this model
        before reading them, while its queue stays full: from memory only (``None`` when the
        target is a deployment, or anything is not known without a lookup)."""
        tenant = principal.tenant_id
        if version is None and self.deployments is not None:
            hit = self.deployments.cached(tenant, name)
            if hit is None:
                return None
            if hit[1] is not None:
                return self._deployment_gate(principal, hit[1])
        queue = self._loaded_queue(tenant, name, version)
        if queue is None:
            return None
        return QueueGate(self, principal, *queue)

    def _deployment_gate(self, principal: Principal, traffic: DeploymentTraffic) -> QueueGate | None:
        """:meth:`queue_gate` for a deployment: on the queue of its heaviest route (the primary
        while it rolls back), where most of its traffic goes."""
        route = traffic.gate_route
        queue = self._loaded_queue(principal.tenant_id, route.model, str(route.version), traffic)
        if queue is None:
            return None
        return DeploymentGate(self, principal, traffic, *queue)

    def _loaded_queue(
        self, tenant: str, name: str, version: str | None, traffic: DeploymentTraffic | None = None
    ) -> tuple[VersionInfo, DynamicBatcher] | None:
        """The version ``name`` ``version`` resolves to and its batcher, from memory only."""
        info = self._resolved.peek((tenant, name, version))
        if info is None:
            return None
        options = self.options(info, traffic)
        batcher = self.manager.loaded_batcher(self.source(info, options), options)
        if batcher is None:
            return None
        return info, batcher

    def _route(self, principal: Principal, traffic: DeploymentTraffic, request: InferenceRequest) -> Route:
        """The route of a deployment's request: by weight, the same one for the same
        ``routing_key`` parameter. One that goes to another route than the one
        whose queue holds back the deployment's callers in an overload (``gate_route``, see
        :class:`DeploymentGate`) frees the slot that queue may have kept for it."""
        route = traffic.next_route(routing_key(request) if request.parameters else None)  # (most have none)
        gate = traffic.gate_route
        if route is not gate:
            queue = self._loaded_queue(principal.tenant_id, gate.model, str(gate.version), traffic)
            if queue is not None:
                queue[1].spent_elsewhere()
        return route

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
        """Run ``request`` on model ``name`` (a deployment's routed version when ``name`` is a
        deployment and no version is given). Overload: 429 (queue full) or 503 (saturated);
        the deadline (``timeout_s`` of the serving settings): 504."""
        started = time.perf_counter()
        # What memory answers is answered without a coroutine (the usual request).
        if not self._within_limits(principal):
            await self._check_daily(principal)
        if version is None and self.deployments is not None:
            known, traffic = self._deployment_now(principal, name)
            if not known:
                traffic = await self.deployment(principal, name)
            if traffic is not None:
                return await self._infer_deployment(principal, name, traffic, request, protocol, started)
        info = self._known(principal, name, version)
        if info is None:
            info = await self.resolve(principal, name, version)
        options = self.options(info)
        children = self._children(info, protocol)
        children[0].inc()
        trace = self._trace(info, started)
        watched: list[Queued] = []  # the batcher's entry, for a trace's times
        try:
            output_names, arrays = self._prepare(principal, info, request)
            timeout_s, priority, level_limit = scheduling(request, options)
            remember, results = self._from_cache(info, options, arrays, output_names)
            hit = results is not None
            if results is None:
                results = await self.manager.predict(
                    self.source(info, options), arrays, output_names, options=options, timeout_s=timeout_s,
                    priority=priority, level_limit=level_limit, watch=None if trace is None else watched.append,
                )
        except BaseException as exc:
            self._failed(principal, info, exc, started=started)
            self._end_trace(trace, exc, queued=_first(watched))
            raise
        return self._answered(
            principal, info, children[1], started, results, output_names, request, remember=remember,
            trace=trace, hit=hit, queued=_first(watched),
        )

    def start(
        self,
        principal: Principal,
        name: str,
        version: str | None,
        request: InferenceRequest,
        *,
        protocol: str = "rest",
    ) -> PendingInference | None:
        """:meth:`infer` without a coroutine, for a transport that answers from a callback:
        when memory answers everything the request needs and its version is loaded (the usual
        request, to a model or to a deployment), it is queued and returned; ``None``: await
        :meth:`infer` instead (nothing was done or counted). Raises what ``infer`` raises before
        the model answers, in the same order."""
        started = time.perf_counter()
        traffic = route = None
        if version is None and self.deployments is not None:
            known, traffic = self._cached_deployment(principal, name)
            if not known:
                return None
        if traffic is None:
            info = self._remembered(principal, name, version)
        else:
            route = self._route(principal, traffic, request)
            info = self._remembered(principal, route.model, str(route.version))
        if info is None:
            _the_slow_way(traffic, route, request)
            return None
        options = self.options(info, traffic)
        source = self.source(info, options)
        manager = self.manager
        if manager.loaded_batcher(source, options) is None:
            _the_slow_way(traffic, route, request)
            return None
        limits = self.limits
        if limits is not None:
            quotas = self._memory_quotas(limits, principal)
            if quotas is None or limits.has_daily(quotas):
                _the_slow_way(traffic, route, request)
                return None
            limits.check_rate(principal, quotas)
        # checked in infer's order (the rate limit first), and only once nothing is left to infer
        if traffic is None or route is None:
            self._may_infer(principal, name)
        else:
            self._may_use(principal, name, traffic)
            self._may_infer(principal, route.model)  # as infer's resolve of the route does
        children = self._children(info, protocol)
        children[0].inc()
        tracer = self.tracer  # _trace inlined: this is every request's path
        trace = tracer.sample(info, started) if tracer is not None and tracer.on else None
        remember = results = None
        try:
            output_names, arrays = self._prepare(principal, info, request)
            # (the parameters checked here: this is every request's path, and most have none)
            if request.parameters or options.priority_queue_policy:
                timeout_s, priority, level_limit = scheduling(request, options)
            else:
                timeout_s, priority, level_limit = options.timeout_s, options.default_priority, None
            if options.response_cache:  # (checked here: this is every request's path)
                remember, results = self._from_cache(info, options, arrays, output_names)
        except BaseException as exc:
            self._failed(principal, info, exc, None if route is None else name, started=started)
            self._end_trace(trace, exc)
            raise
        served = None if traffic is None or route is None else _Served(name, traffic, route, arrays)
        if results is not None:
            return RememberedInference(results, self, principal, info, children[1], started, output_names, request,
                                       served=served, trace=trace)
        try:
            queued = manager.enqueue(
                source, arrays, output_names, options=options, timeout_s=timeout_s, priority=priority,
                level_limit=level_limit,
            )
            assert queued is not None, "loaded above, and nothing was awaited since"
        except BaseException as exc:
            self._failed(principal, info, exc, served=served, started=started)
            self._end_trace(trace, exc)
            raise
        return PendingInference(
            self, principal, info, children[1], started, output_names, request, queued, served, remember, trace
        )

    def _failed(
        self,
        principal: Principal,
        info: VersionInfo,
        exc: BaseException,
        name: str | None = None,
        served: _Served | None = None,
        *,
        started: float,
    ) -> None:
        """Count a request that failed (it started at ``started``, ``perf_counter``): on its
        version's errors and statistics, and on the usage of ``name`` (the deployment, for its
        request refused before it was queued), else of its model. A deployment's request that
        reached its version (``served``) counts on the deployment's usage and against its route
        (see :meth:`_record`), unless it was refused for a rate or cancelled by its caller."""
        elapsed = time.perf_counter() - started
        self._count_error(info, exc, elapsed)
        if served is None:
            self._meter(principal, name or info.model_name, errors=1)
            return
        self._meter(principal, served.name, errors=1)
        if not isinstance(exc, (RateLimited, asyncio.CancelledError)):
            self._record(principal, served.traffic, served.route, False, elapsed)

    def _answered(
        self,
        principal: Principal,
        info: VersionInfo,
        latency: Any,
        started: float,
        results: dict[str, Any],
        output_names: list[str] | None,
        request: InferenceRequest,
        served: _Served | None = None,
        *,
        remember: CacheKey | None = None,
        trace: Trace | None = None,
        hit: bool = False,
        queued: Queued | None = None,
    ) -> InferenceResponse:
        """Count a request its version answered and make its response. A deployment's request
        (``served``) is counted on the deployment, recorded on its route (the canary's error
        window), mirrored to the shadow for its share, and answered in the deployment's name.
        Outputs asked into shared-memory regions are written first: one that does not fit fails
        the request (counted as failed, as a bad input is). ``remember``: the response cache's
        key for the answer, when it was looked up there and missed. ``trace`` (if any) is
        written either way (``hit``: answered from the cache; ``queued``: its batcher entry)."""
        elapsed = time.perf_counter() - started
        name = info.model_name if served is None else served.name
        response = self._response(name, info, results, output_names, request)
        if request.shared_memory:
            try:
                response = self._shared_memory().write_outputs(principal, response, request.outputs)
            except BaseException as exc:
                self._failed(principal, info, exc, name, started=started)
                self._end_trace(trace, exc, queued=queued)
                raise
        if remember is not None and self.response_cache is not None:
            self.response_cache.remember(info, remember, results)
        latency.observe(elapsed)
        self._meter(principal, name, compute_s=elapsed)
        if served is not None:
            traffic = served.traffic
            self._record(principal, traffic, served.route, True, elapsed)
            shadow = traffic.deployment.shadow
            if shadow is not None and (shadow.share >= 1.0 or random.random() < shadow.share):
                self._mirror(principal, traffic, served.arrays, results, elapsed)
        if trace is not None:
            self._end_trace(trace, hit=hit, queued=queued)
        return response

    def _from_cache(
        self, info: VersionInfo, options: ServingOptions, arrays: dict[str, Any], output_names: list[str] | None
    ) -> tuple[CacheKey | None, dict[str, Any] | None]:
        """For a version with the response cache on: the request's cache key, and its remembered
        answer (``None``: compute it, then remember it under the key). Else ``(None, None)``."""
        cache = self.response_cache
        if not options.response_cache or cache is None or not cache.enabled:
            return None, None
        return cache.lookup(info, arrays, output_names)

    def _trace(self, info: VersionInfo, started: float) -> Trace | None:
        """A trace of this request when it is one to trace (see ``core/tracing.py``)."""
        tracer = self.tracer
        return tracer.sample(info, started) if tracer is not None and tracer.on else None

    def _end_trace(
        self, trace: Trace | None, exc: BaseException | None = None, *, hit: bool = False, queued: Queued | None = None
    ) -> None:
        """Write ``trace`` (if any): the request failed with ``exc``, or was answered (from the
        response cache: ``hit``; ``queued``: its batcher entry, whose batch ran)."""
        if trace is None:
            return
        assert self.tracer is not None, "a trace is made by the tracer"
        ran = None if queued is None or queued.ran is None else (queued.since, *queued.ran)
        outcome = "cache hit" if hit else "ok" if exc is None else _error_code(exc)
        self.tracer.end(trace, ran=ran, outcome=outcome)

    def _shared_memory(self) -> SharedMemory:
        if self.shared_memory is None:
            raise NotEnabled("system shared memory is off on this server; start it with MODELYARD_SHARED_MEMORY=true")
        return self.shared_memory

    async def _infer_deployment(
        self,
        principal: Principal,
        name: str,
        traffic: DeploymentTraffic,
        request: InferenceRequest,
        protocol: str,
        started: float,
    ) -> InferenceResponse:
        route = self._route(principal, traffic, request)
        info = await self._route_info(principal, route)
        options = self.options(info, traffic)
        children = self._children(info, protocol)
        children[0].inc()
        trace = self._trace(info, started)
        try:
            output_names, arrays = self._prepare(principal, info, request)
            timeout_s, priority, level_limit = scheduling(request, options)
            remember, results = self._from_cache(info, options, arrays, output_names)
        except BaseException as exc:
            self._failed(principal, info, exc, name, started=started)
            self._end_trace(trace, exc)
            raise
        served = _Served(name, traffic, route, arrays)
        hit = results is not None
        watched: list[Queued] = []  # the batcher's entry, for a trace's times
        if results is None:
            try:
                results = await self.manager.predict(
                    self.source(info, options), arrays, output_names, options=options, timeout_s=timeout_s,
                    priority=priority, level_limit=level_limit, watch=None if trace is None else watched.append,
                )
            except BaseException as exc:
                self._failed(principal, info, exc, served=served, started=started)
                self._end_trace(trace, exc, queued=_first(watched))
                raise
        return self._answered(
            principal, info, children[1], started, results, output_names, request, served, remember=remember,
            trace=trace, hit=hit, queued=_first(watched),
        )

    def _record(self, principal: Principal, traffic: DeploymentTraffic, route: Route, ok: bool, latency_s: float) -> None:
        trip = traffic.record(route, ok, latency_s)
        if trip is not None:
            self.roll_back(traffic, route, trip, principal.tenant_name)

    def roll_back(self, traffic: DeploymentTraffic, route: Route, trip: Trip, tenant_name: str) -> None:
        """Canary ``route`` of ``traffic``'s deployment tripped its rollback policy (seen in an
        outcome here, or in the cluster's figures): count it and roll the deployment back (in a
        task; once for the cluster, see ``Deployments.rollback``)."""
        deployments = self.deployments
        if deployments is None:
            return
        tenant_id, name = traffic.deployment.tenant_id, traffic.deployment.name
        reason = f"automatic: canary {route.label} {trip.how}"
        self.metrics.automatic_rollbacks.labels(tenant_name, name, trip.limit).inc()
        log.warning("deployment %s: rolling back (%s)", name, reason)

        async def roll_back() -> None:
            try:
                await anyio.to_thread.run_sync(
                    lambda: deployments.rollback(tenant_id, name, reason=reason, canary=route.label)
                )
            except Conflict:  # another server of the cluster rolled it back first
                log.info("deployment %s: canary %s was already rolled back", name, route.label)
            except Exception:
                log.exception("automatic rollback of deployment %s failed", name)
                traffic.rolling_back = False

        task = asyncio.get_running_loop().create_task(roll_back())
        self._rollbacks.add(task)
        task.add_done_callback(self._rollbacks.discard)

    def _mirror(
        self,
        principal: Principal,
        traffic: DeploymentTraffic,
        arrays: dict[str, Any],
        primary: dict[str, Any],
        primary_latency_s: float,
    ) -> None:
        stats = traffic.shadow
        shadow = traffic.deployment.shadow
        assert shadow is not None
        if len(self._shadows) >= MAX_SHADOW_IN_FLIGHT:
            stats.skipped += 1
            return
        dep_name = traffic.deployment.name

        async def run() -> None:
            started = time.perf_counter()
            stats.requests += 1
            try:
                info = await self.resolve(principal, shadow.model, str(shadow.version))
                validate_inputs(info.inputs, [Tensor.from_array(n, a) for n, a in arrays.items()])
                options = self.options(info, None)
                answer = await self.manager.predict(self.source(info, options), arrays, None, options=options)
            except Exception as exc:
                stats.errors += 1
                self.metrics.shadow_results.labels(principal.tenant_name, dep_name, "error").inc()
                stats.recent.append({"result": "error", "code": getattr(exc, "code", "internal")})
                return
            elapsed = time.perf_counter() - started
            agree = outputs_agree(primary, answer)
            result = "agree" if agree else "disagree"
            if agree:
                stats.agreements += 1
            else:
                stats.disagreements += 1
            stats.shadow_latency_s += elapsed
            stats.primary_latency_s += primary_latency_s
            stats.recent.append({"result": result, "shadow_ms": round(elapsed * 1000, 3)})
            self.metrics.shadow_results.labels(principal.tenant_name, dep_name, result).inc()
            self.metrics.shadow_latency.labels(principal.tenant_name, dep_name).observe(elapsed)

        task = asyncio.get_running_loop().create_task(run())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    # -- helpers ---------------------------------------------------------------------------
    def _children(self, info: VersionInfo, protocol: str) -> tuple[Any, Any]:
        """The request counter and latency histogram children of a version (looked up once)."""
        key = (info.id, protocol)
        children = self._metric_children.get(key)
        if children is None:
            labels = (info.tenant_name, info.model_name, str(info.version))
            children = (self.metrics.requests.labels(*labels, protocol), self.metrics.latency.labels(*labels))
            if len(self._metric_children) > 10_000:
                self._metric_children.clear()
            self._metric_children[key] = children
        return children

    async def check_limits(self, principal: Principal) -> None:
        """Apply the key's and the tenant's requests/second and the tenant's daily quotas (429
        ``RateLimited``).

        The token buckets run inline; the tenant's quotas come from memory (refreshed in the
        background); quota counters (database writes) run in a thread, only when the tenant has
        a daily quota. gRPC and the OpenAI API go through this too."""
        if not self._within_limits(principal):
            await self._check_daily(principal)

    def _within_limits(self, principal: Principal) -> bool:
        """The key's and the tenant's requests/second (raises), and whether that is all: the
        tenant's quotas are known and none is per day. False: await :meth:`_check_daily` (which
        checks the rates itself when the quotas were not known yet)."""
        limits = self.limits
        if limits is None:
            return True
        quotas = self._memory_quotas(limits, principal)
        if quotas is None:
            return False
        limits.check_rate(principal, quotas)
        return not limits.has_daily(quotas)

    def _memory_quotas(self, limits: Limits, principal: Principal) -> Quotas | None:
        """The tenant's quotas as memory knows them (a stale copy is refreshed in the
        background), or ``None`` before they were first loaded."""
        tenant = principal.tenant_id
        hit = limits.cached_quotas(tenant)
        if hit is None:
            return None
        fresh, quotas = hit
        if not fresh:
            self._lookups.refresh(("quotas", tenant), partial(limits.refresh_quotas, tenant))
        return quotas

    async def _check_daily(self, principal: Principal) -> None:
        """The tenant's daily quotas, counted in the database; when memory did not know the
        tenant's quotas yet, they are loaded first and the rates checked with them."""
        limits = self.limits
        assert limits is not None
        tenant = principal.tenant_id
        hit = limits.cached_quotas(tenant)
        if hit is None:
            quotas = await self._lookups.run(("quotas", tenant), partial(limits.refresh_quotas, tenant))
            limits.check_rate(principal, quotas)
        else:
            quotas = hit[1]
        if limits.has_daily(quotas):
            await anyio.to_thread.run_sync(limits.check_daily, principal)

    def _meter(self, principal: Principal, model: str, *, errors: int = 0, compute_s: float = 0.0) -> None:
        """Usage: one request (and an error) on ``model`` with its measured compute time."""
        if self.usage is not None:
            self.usage.record(principal.tenant_id, model, errors=errors, compute_s=compute_s)

    def _count_error(self, info: VersionInfo, exc: BaseException, elapsed_s: float) -> None:
        code = _error_code(exc)
        labels = (info.tenant_name, info.model_name, str(info.version))
        self.metrics.errors.labels(*labels, code).inc()
        self.metrics.version_statistics(info.key, *labels).on_fail(1, elapsed_s)

    def _prepare(
        self, principal: Principal, info: VersionInfo, request: InferenceRequest
    ) -> tuple[list[str] | None, dict[str, Any]]:
        if request.shared_memory:
            self._shared_memory().read_inputs(principal, request)
        validate_inputs(info.inputs, request.inputs)
        return self._output_names(info, request), {t.name: t.data for t in request.inputs}

    @staticmethod
    def _response(
        name: str, info: VersionInfo, results: dict[str, Any], output_names: list[str] | None, request: InferenceRequest
    ) -> InferenceResponse:
        outputs = [Tensor.from_array(n, results[n]) for n in (output_names or list(results))]
        for out in request.outputs or ():  # (most ask for none as classes: no call for them)
            if out.parameters and CLASSIFICATION in out.parameters:
                outputs = _classified(info, outputs, request)
                break
        return InferenceResponse(model_name=name, model_version=str(info.version), outputs=outputs, id=request.id)

    @staticmethod
    def _output_names(info: VersionInfo, request: InferenceRequest) -> list[str] | None:
        if not request.outputs:
            return None
        known = {o.name: o for o in info.outputs}
        names = [o.name for o in request.outputs]
        for out in request.outputs:
            spec = known.get(out.name)
            if spec is None:
                raise InvalidInput(f"unknown output {out.name!r}; the model has {', '.join(sorted(known))}")
            # asked as classes: checked before the model runs
            if (out.parameters and CLASSIFICATION in out.parameters
                    and classification_count(out.name, out.parameters) and spec.datatype == "BYTES"):
                raise InvalidInput(
                    f"requested output {out.name!r} is BYTES: only numbers can be ranked as classes",
                    details={"field": f"outputs.{out.name}.parameters.classification"},
                )
        return names


def _classified(info: VersionInfo, outputs: list[Tensor], request: InferenceRequest) -> list[Tensor]:
    """``outputs`` with those asked for as classes (``core/classification.py``) replaced by them."""
    counts: dict[str, int] = {}
    for out in request.outputs or ():
        count = classification_count(out.name, out.parameters) if out.parameters else None
        if count is not None:
            counts[out.name] = count
    if not counts:
        return outputs
    specs = {s.name: s for s in info.outputs}
    return [
        Tensor.from_array(t.name, classify(t.data, counts[t.name], specs.get(t.name), labels_of(info, t.name)))
        if t.name in counts else t
        for t in outputs
    ]


def _the_slow_way(traffic: DeploymentTraffic | None, route: Route | None, request: InferenceRequest) -> None:
    """``DataPlane.start`` leaves the request to ``DataPlane.infer``; a deployment's route picked
    for it is owed to the next pick (``DeploymentTraffic.owe``)."""
    if traffic is not None and route is not None:
        traffic.owe(route, routing_key(request))


def _first(watched: list[Queued]) -> Queued | None:
    return watched[0] if watched else None


def _error_code(exc: BaseException) -> str:
    """The code an error is counted (and traced) under."""
    if isinstance(exc, ModelYardError):
        return exc.code
    return "cancelled" if isinstance(exc, asyncio.CancelledError) else "internal"


class _Served:
    """What a deployment's request needs once its version answered: the deployment's name,
    its traffic (route statistics, shadow), the route taken and the inputs (for the shadow)."""

    __slots__ = ("name", "traffic", "route", "arrays")

    def __init__(self, name: str, traffic: DeploymentTraffic, route: Route, arrays: dict[str, Any]) -> None:
        self.name, self.traffic, self.route, self.arrays = name, traffic, route, arrays


class PendingInference:
    """A request :meth:`DataPlane.start` queued: once its ``future`` is done, :meth:`finish`
    (exactly once) returns the response or raises what the request failed with, and does the
    accounting ``infer`` does after the model answered. :meth:`cancel` if the caller went away
    (``finish`` then raises ``CancelledError``)."""

    __slots__ = ("_plane", "_principal", "_info", "_latency", "_started", "_output_names", "_request", "_model",
                 "_batcher", "_queued", "_served", "_remember", "_trace")

    def __init__(
        self,
        plane: DataPlane,
        principal: Principal,
        info: VersionInfo,
        latency: Any,
        started: float,
        output_names: list[str] | None,
        request: InferenceRequest,
        queued: tuple[LoadedModel, DynamicBatcher, Queued],
        served: _Served | None = None,
        remember: CacheKey | None = None,
        trace: Trace | None = None,
    ) -> None:
        self._plane = plane
        self._principal = principal
        self._info = info
        self._latency = latency
        self._started = started
        self._output_names = output_names
        self._request = request
        self._model, self._batcher, self._queued = queued
        self._served = served  # sent to a deployment
        self._remember = remember  # the response cache's key for its answer
        self._trace = trace

    @property
    def future(self) -> asyncio.Future[dict[str, Any]]:
        return self._queued.future

    @property
    def request(self) -> InferenceRequest:
        return self._request

    def cancel(self) -> None:
        self._batcher.withdraw(self._queued)

    def finish(self) -> InferenceResponse:
        plane = self._plane
        plane.manager.release(self._model)
        served = self._served
        try:
            results = self._queued.future.result()
        except BaseException as exc:
            plane._failed(self._principal, self._info, exc, served=served, started=self._started)
            plane._end_trace(self._trace, exc, queued=self._queued)
            raise
        return plane._answered(
            self._principal, self._info, self._latency, self._started, results, self._output_names, self._request,
            served, remember=self._remember, trace=self._trace, queued=self._queued,
        )


#: what a request answered without queueing holds for its batcher entry
_NOTHING_QUEUED: Any = (None, None, None)


class RememberedInference(PendingInference):
    """A request :meth:`DataPlane.start` answered from the response cache: nothing was queued,
    its ``future`` is done already, and :meth:`finish` counts and makes the answer.
    ``request_args``: the first seven arguments of :class:`PendingInference`."""

    __slots__ = ("_done",)

    def __init__(
        self, results: dict[str, Any], *request_args: Any, served: _Served | None = None, trace: Trace | None = None
    ) -> None:
        super().__init__(*request_args, _NOTHING_QUEUED, served, None, trace)
        self._done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._done.set_result(results)

    @property
    def future(self) -> asyncio.Future[dict[str, Any]]:
        return self._done

    def cancel(self) -> None:
        return None  # nothing is queued

    def finish(self) -> InferenceResponse:
        return self._plane._answered(
            self._principal, self._info, self._latency, self._started, self._done.result(), self._output_names,
            self._request, self._served, trace=self._trace, hit=True,
        )
