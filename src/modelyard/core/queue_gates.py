"""Gates that refuse a flood's requests before they are read: while a version's queue is full, a
caller that was just refused gets the same 429 (``Retry-After``) at the cost of a comparison,
counted as a request refused by the full queue would be.

A transport (the HTTP/1.1 protocol, the gRPC servicer) keeps a :class:`QueueGates` table of the
callers it refused lately; the data plane makes each gate (``DataPlane.queue_gate``): a
:class:`QueueGate` on a model version's queue, or a :class:`DeploymentGate` on a deployment's
heaviest route. See ``docs/serving.md`` ("Backpressure and time").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from modelyard.core.deployment_traffic import DeploymentTraffic
from modelyard.core.principal import Principal
from modelyard.core.registry import VersionInfo
from modelyard.errors import ModelYardError

if TYPE_CHECKING:
    from modelyard.core.inference import DataPlane

__all__ = ["GATE_BUNDLE", "QueueGate", "DeploymentGate", "QueueGates"]

#: Refusals a :class:`QueueGate` answers with one error object and counts at once.
GATE_BUNDLE = 32


class QueueGate:
    """Refuses requests to one version while its queue is full, at the cost of a comparison,
    with the same answer (429, ``Retry-After``) and the same accounting as a request that went
    all the way to the queue.

    Built for floods: while the queue stays full :meth:`refusal` returns the same error object
    (renewed every :data:`GATE_BUNDLE` refusals, so its ``Retry-After`` follows the queue), which
    lets a transport reuse the answer it encoded; the refusals are counted (metrics, usage) in
    bundles of that size, when the queue has room again, and on :meth:`flush`."""

    __slots__ = (
        "_usage", "_principal", "_model", "_errors", "_statistics", "_batcher", "_refused", "_uncounted",
        "must_wait", "when_room", "seen", "secret",
    )

    def __init__(self, plane: DataPlane, principal: Principal, info: VersionInfo, batcher: Any) -> None:
        self._usage = plane.usage
        self._principal = principal
        self._model = info.model_name
        labels = (info.tenant_name, info.model_name, str(info.version))
        self._errors = plane.metrics.errors.labels(*labels, "queue_full")
        self._statistics = plane.metrics.version_statistics(info.key, *labels)
        self._batcher = batcher
        self._refused: ModelYardError | None = None
        self._uncounted = 0
        #: ``must_wait()``: whether a transport that just answered this caller should stop reading
        #: and wait for room, ``when_room(callback)``: call back once there is room (see
        #: ``DynamicBatcher.must_wait`` and ``when_room``). The queue's own methods: a flood asks
        #: after every answer, and a call through the gate would double what that costs.
        self.must_wait: Callable[[], bool] = batcher.must_wait
        self.when_room: Callable[[Callable[[], int]], None] = batcher.when_room
        #: when the table that holds it put it, or its caller last found no room (the transport
        #: sets it then): the table keeps a gate ``ttl_s`` from this, so while a flood goes on its
        #: gate stays even when the queue never fills up again (its connections wait for room)
        self.seen = 0.0
        #: the key its caller authenticated with, set by the transport that keeps the gate: a
        #: request is refused from the gate only while the key service still remembers that key
        #: (``KeyService.remembers_key``), so a key revoked since is authenticated again
        self.secret: str | None = None

    def refusal(self) -> ModelYardError | None:
        """The error for a request arriving now, or ``None``: let it through."""
        batcher = self._batcher
        if not batcher.full or batcher.closed:
            if self._uncounted:
                self.flush()
            return None
        self._uncounted += 1
        refused = self._refused
        if refused is None or self._uncounted >= GATE_BUNDLE:
            self.flush()
            refused = self._refused = batcher.queue_full()
        return refused

    def flush(self) -> None:
        """Count the refusals not counted yet (call when the gate is dropped)."""
        n, self._uncounted = self._uncounted, 0
        if n:
            self._errors.inc(n)
            self._statistics.on_fail(n)  # refused before any work
            self._batcher.count_rejections(n)
            if self._usage is not None:
                self._usage.record(self._principal.tenant_id, self._model, requests=n, errors=n)


class DeploymentGate(QueueGate):
    """A :class:`QueueGate` for a deployment, on the queue of its heaviest route: while that
    queue is full the deployment's callers are refused unread, the share that would have gone to
    a lighter route too (those let through still pick their route by weight; waiting for every
    route's queue to fill, a canary's flood was never refused: its small queue did not fill), and
    once the deployment changed everything is let through (a new 429 then makes a new gate).
    Refusals are counted on that version's errors and on the deployment's usage, as a request
    refused by a full queue after it was read."""

    __slots__ = ("_deployments", "_key", "_revision")

    def __init__(
        self, plane: DataPlane, principal: Principal, traffic: DeploymentTraffic, info: VersionInfo, batcher: Any
    ) -> None:
        super().__init__(plane, principal, info, batcher)
        assert plane.deployments is not None, "a deployment's traffic comes from the plane's deployments"
        deployment = traffic.deployment
        self._model = deployment.name
        self._deployments = plane.deployments
        self._key = (deployment.tenant_id, deployment.name)
        self._revision = (deployment.id, deployment.revision)

    def refusal(self) -> ModelYardError | None:
        if self._current():
            return super().refusal()
        if self._uncounted:
            self.flush()
        return None

    def _current(self) -> bool:
        """Whether the deployment is still the revision the gate was made for."""
        hit = self._deployments.cached(*self._key)
        traffic = None if hit is None else hit[1]
        return traffic is not None and (traffic.deployment.id, traffic.deployment.revision) == self._revision


class QueueGates:
    """The gates a transport keeps for the callers it just refused: ``key`` (e.g. path and
    ``Authorization``) -> :class:`QueueGate`, each for ``ttl_s`` (so a revoked key is not answered
    from here for long), at most ``max_entries`` at once. A gate that leaves the table (expired,
    replaced, or the table full) counts its pending refusals first."""

    __slots__ = ("_entries", "_ttl_s", "_max")

    def __init__(self, ttl_s: float = 1.0, max_entries: int = 4096) -> None:
        self._entries: dict[Any, QueueGate] = {}  # each gate's ``seen``: when put or last renewed
        self._ttl_s = ttl_s
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Any, now: float) -> QueueGate | None:
        """``key``'s gate at ``now``, if it has one that has not expired."""
        if not self._entries:
            return None
        gate = self._entries.get(key)
        if gate is None:
            return None
        if now - gate.seen > self._ttl_s:
            del self._entries[key]
            gate.flush()
            return None
        return gate

    def put(self, key: Any, gate: QueueGate, now: float) -> None:
        """Refuse ``key``'s next requests through ``gate`` while its queue stays full."""
        entries = self._entries
        if len(entries) >= self._max:
            for dropped in entries.values():
                dropped.flush()
            entries.clear()
        replaced = entries.get(key)
        if replaced is not None and replaced is not gate:
            replaced.flush()
        gate.seen = now
        entries[key] = gate

