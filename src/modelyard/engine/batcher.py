"""Dynamic batching of inference requests to one model version.

A :class:`DynamicBatcher` lives on the server's event loop. Callers ``await submit(...)`` with
numpy arrays whose first dimension is the batch dimension; the batcher groups compatible requests
(same input names, non-batch shapes, dtypes and requested outputs), concatenates them along axis 0
up to ``max_batch_size`` rows, runs the runtime's blocking ``predict`` once in a thread pool and
hands every caller its own rows back.

When to dispatch. A request never waits for a batch that will not fill: while no batch of this
version is computing, whatever is queued is dispatched at once (one loop turn, so requests that
arrive together still share a batch). A version whose batches compute on the loop (below) waits
further, until a loop turn queues no new request: answers just written bring their clients' next
requests a moment later, and those that arrive while a batch computes on the loop could not be
read before it ends; without the wait they would make small batches of their own (on one core,
64 clients of the medium model: batches of about 20 rows without the wait, about 60 with it).
The quiet turn can come before those callers are back (the loop spends it writing their answers):
after a batch computed on the loop, the next one also waits for as many requests as that batch
answered, for at most what a small batch of the version costs and ``max_queue_delay_ms``, where
its batches take at least :data:`_RETURNS_WORTH_S` (a large model: otherwise its first caller
back got a batch of its own, whose one row cost an eighth of what 63 rows did).
``max_queue_delay_ms`` applies only under load: while other batches are computing, a free
executor waits until its batch is full or its oldest request has waited that long (the wait for
a quiet turn is bounded by it too). With ``instances=1`` requests that queue while a batch
computes are dispatched together as soon as it finishes, so batches fill by themselves as load
grows.

Where a batch computes. ``predict`` runs in the executor (a thread), so the event loop keeps
moving bytes while a model computes. A thread hop costs two context switches and a loop wake-up
(tens of microseconds), more than a small model's whole batch; so when ``inline_below_s`` is set
and the recent batches of this version computed faster than that, a batch runs on the loop
itself, one batch per loop turn (responses and new requests go between two batches). A version
whose batches grow slower goes back to the executor at its next batch. On a server with one core
the thread buys no parallelism at all (it shares the loop's core), only preemption: the loop
wakes for every request that arrives mid-batch and evicts the model's weights from the cache, so
there ``inline_below_s`` is large by default (see :class:`~modelyard.config.Settings`).

Backpressure. A transport that stops reading a connection whose next request would only be refused
(see :meth:`DynamicBatcher.when_room`) is called back, one per free slot (an HTTP/2 connection
takes as many slots as the calls it may bring), as the queue gets room: newest first (adaptive
LIFO: waiters exist only while the queue is full), except that waiters that have waited half a
second go first, oldest first. The excess waits unread in the client's socket and costs the
server nothing; refusals (429) remain for whatever is read while the queue is full (a connection
is read after a second of waiting in any case). While waiters exist, the room a batch computed on
the loop makes goes to those that have aged, then is kept for the callers that batch answers
(:meth:`DynamicBatcher.claim_return`): they read on rather than wait for the next batch, as
newest-first would have them do, which spares each request of a flood the wait's bookkeeping.

Priorities. A request may carry a priority (Triton's: 1 is the highest, then 2, ...; 0, the
default, comes after every level). Requests of different priorities do not share a batch; of the
groups due, the highest priority goes first, then the oldest. A priority does not jump the
queue's bound (a full queue refuses any request), and a request kept waiting by higher ones
meets its deadline like any other. A level may have a bound of its own (``level_limit``: Triton's
per-level ``max_queue_size``), so that one level cannot fill the queue the others need.

Failure isolation: if a batched ``predict`` raises (or returns outputs that cannot be split by
rows), every request of that batch is re-run alone, so one bad request fails only itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import Any, Protocol

import numpy as np

from modelyard.errors import DeadlineExceeded, QueueFull, Unavailable
from modelyard.tensors import TensorSpec

__all__ = ["DynamicBatcher", "BatchObserver", "PredictFn", "Queued", "batching_default"]

#: A runtime's blocking ``predict(inputs, output_names) -> outputs``.
PredictFn = Callable[[dict[str, np.ndarray], "list[str] | None"], dict[str, np.ndarray]]

_QUEUED, _RUNNING, _DROPPED = 0, 1, 2
#: Timers may fire a hair early; a request this close to its delay counts as due.
_TIMER_SLACK_S = 1e-4
#: batches measured in the executor before a version may compute on the loop
_MEASURED_BEFORE_INLINE = 3
#: a transport waiting for room is called back after this long even if the queue never had any
ROOM_WAIT_MAX_S = 1.0
#: waiters for room are let in newest first, except those that have waited this long: they go
#: first, oldest first
ROOM_AGED_S = 0.5
#: a batch computed on the loop makes the next one wait for its callers' next requests only when
#: the version's batches take at least this long (moving average): a client's round trip on
#: loopback is well under it, so the wait pays; for a small model (tens of microseconds a batch)
#: waiting costs more than a short batch does (a tiny model's flood lost a tenth of its goodput)
_RETURNS_WORTH_S = 0.001
#: how long a slot is kept for the request of a waiter let in (its socket is read well before)
_ROOM_RECOUNT_S = 0.005
#: waiters for room are let in while the queue holds fewer than this many full batches per
#: instance (and at least :data:`LET_IN_MIN` requests): enough to keep every instance busy (a
#: batch queued while another computes on its thread; on the loop, the next batch forms while
#: the callers of the last one send their next requests), and no more: requests in flight cost
#: the loop more the more there are (docs/benchmarks.md, "Many connections")
LET_IN_BATCHES = 2
LET_IN_MIN = 64


class BatchObserver(Protocol):
    """Metrics hooks; called on the event loop, so they must be cheap and must not block.

    ``on_batch``: one batch finished; ``size`` is its number of rows, ``requests`` its number of
    requests, ``queue_wait_s`` the wait of its oldest request, ``queue_total_s`` its requests'
    waits together, ``compute_s`` the time spent in ``predict`` (including re-runs).
    ``on_reject``: ``n`` requests were refused because the queue was full. The queue depth is
    not pushed on every change: read :attr:`DynamicBatcher.queue_depth` when it is wanted (the
    manager's gauge reads it at scrape time).
    """

    def on_batch(
        self, size: int, requests: int, queue_wait_s: float, queue_total_s: float, compute_s: float
    ) -> None: ...

    def on_reject(self, n: int = 1) -> None: ...


def batching_default(inputs: Sequence[TensorSpec]) -> bool:
    """Whether a version should be batched by default: every input's first dim is dynamic."""
    return bool(inputs) and all(len(s.shape) >= 1 and s.shape[0] == -1 for s in inputs)


class Queued:
    """One caller's pending work (mutable state owned by the event loop)."""

    __slots__ = (
        "inputs",
        "output_names",
        "rows",
        "key",
        "future",
        "enqueued",
        "since",
        "deadline",
        "state",
        "ran",
    )

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        output_names: list[str] | None,
        rows: int,
        key: Hashable,
        future: asyncio.Future[dict[str, np.ndarray]],
        enqueued: float,
        since: float,
    ) -> None:
        self.inputs = inputs
        self.output_names = output_names
        self.rows = rows
        self.key = key
        self.future = future
        self.enqueued = enqueued  # the loop's clock (deadlines, delays): uvloop's ticks are milliseconds
        self.since = since  # perf_counter, for the time it waited (metrics, statistics)
        self.deadline: float | None = None
        self.state = _QUEUED
        #: (its batch's launch, its compute seconds), both perf_counter, once it ran (for traces)
        self.ran: tuple[float, float] | None = None


#: the rank of requests without a priority (0): after every level a request may ask for
_UNRANKED = 2**64


class _Group:
    """Queued requests that can share a batch, oldest first; ``rank``: their priority (lower
    first)."""

    __slots__ = ("key", "items", "rows", "rank")

    def __init__(self, key: Hashable, rank: int) -> None:
        self.key = key
        self.items: deque[Queued] = deque()
        self.rows = 0
        self.rank = rank


_solo_ids = itertools.count()


def _group_key(
    inputs: dict[str, np.ndarray], output_names: list[str] | None
) -> tuple[Hashable, int]:
    """The batching key and row count of a request; requests that cannot batch get a unique key."""
    rows = -1
    parts = []
    for name, array in inputs.items():
        shape = array.shape
        if not shape or (rows != -1 and shape[0] != rows):
            return ("solo", next(_solo_ids)), max(rows, 1)
        rows = shape[0]
        parts.append((name, shape[1:], array.dtype))
    if rows <= 0:
        return ("solo", next(_solo_ids)), 1
    return (tuple(parts), None if output_names is None else tuple(output_names)), rows


class DynamicBatcher:
    """Batches concurrent ``submit`` calls for one model version; see the module docstring.

    At most ``instances`` batches compute at once. At most ``max_queue_size`` requests wait;
    beyond that ``submit`` raises :class:`QueueFull` at once, with ``retry_after`` estimated from
    recent batch times. Transports waiting for room (:meth:`when_room`) are let in only while
    the queue is below :attr:`let_in_level`. ``executor`` runs ``predict``; when omitted the
    batcher owns a thread pool of ``instances`` threads and shuts it down in :meth:`close`.
    ``inline_below_s``: batches expected to compute in less than this run on the event loop (0:
    never); only for a ``predict`` that computes in the calling thread (never one that waits on
    another thread or process: see ``runtimes.base.computes_in_caller``).
    """

    def __init__(
        self,
        *,
        predict: PredictFn,
        max_batch_size: int,
        max_queue_delay_ms: float,
        max_queue_size: int,
        instances: int = 1,
        executor: concurrent.futures.Executor | None = None,
        observer: BatchObserver | None = None,
        inline_below_s: float = 0.0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if instances < 1:
            raise ValueError("instances must be >= 1")
        if max_queue_size < 1:
            raise ValueError("max_queue_size must be >= 1")
        if max_queue_delay_ms < 0:
            raise ValueError("max_queue_delay_ms must be >= 0")
        self._predict = predict
        self._max_rows = max_batch_size
        self._delay_s = max_queue_delay_ms / 1000.0
        self._max_queue = max_queue_size
        self._instances = instances
        self._let_in_level = min(
            max_queue_size, max(LET_IN_MIN, LET_IN_BATCHES * max_batch_size * instances)
        )
        self._owns_executor = executor is None
        self._executor: concurrent.futures.Executor = executor or (
            concurrent.futures.ThreadPoolExecutor(
                max_workers=instances, thread_name_prefix="modelyard-batch"
            )
        )
        self._observer = observer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._groups: dict[Hashable, _Group] = {}
        self._queued = 0
        self._computing = 0
        self._busy = 0
        self._running: set[tuple[Queued, ...]] = set()
        self._dispatch_pending = False
        self._arrived = 0  # requests queued since the last _dispatch
        self._wake: asyncio.TimerHandle | None = None
        self._closing = False
        self._drained: asyncio.Event | None = None
        self._batch_s = 0.0  # moving average of recent batch compute times
        self._batches = 0  # batches computed so far
        # what a small batch computed on the loop costs (at most a quarter of max_batch_size
        # rows; see _learn_small_batch): mostly a batch's fixed cost, which a batch formed too
        # early wastes
        self._small_rows = max(1, max_batch_size // 4)
        self._small_batch_s = 0.0
        # after a batch computed on the loop: how many of its callers' next requests have not
        # arrived yet, and until when (perf_counter; 0: from the next dispatch on) the next
        # batch waits for them
        self._returning = 0
        self._returns_by = 0.0
        # Deadlines: one FIFO per timeout value (so each is in deadline order) and one timer for
        # the earliest, instead of a timer per request; answered requests leave from the front.
        self._deadlines: dict[float, deque[Queued]] = {}
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = math.inf
        self._inline_below_s = inline_below_s
        # when_room callbacks in the order they came, with the time each is called back at the
        # latest; let in from the newest end, expired from the oldest
        self._room_waiters: deque[tuple[float, Callable[[], int]]] = deque()
        self._room_timer: asyncio.TimerHandle | None = None
        self._promised = 0  # slots given to waiters let in whose request has not come yet
        # of those, slots kept for the callers of the batch just taken, not claimed yet (see
        # claim_return)
        self._returns = 0

    # -- state -------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Requests waiting to be dispatched."""
        return self._queued

    @property
    def in_flight(self) -> int:
        """Requests queued or computing; a version with ``in_flight > 0`` is busy."""
        return self._queued + self._computing

    @property
    def let_in_level(self) -> int:
        """Queued requests below which transports waiting for room are let in (see
        :meth:`when_room`): two full batches per instance, at least 64, at most
        ``max_queue_size``."""
        return self._let_in_level

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has begun; ``submit`` then raises :class:`Unavailable`."""
        return self._closing

    # -- submit ------------------------------------------------------------------------------

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        output_names: list[str] | None = None,
        *,
        timeout_s: float | None = None,
        priority: int = 0,
        level_limit: int | None = None,
        watch: Callable[[Queued], object] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``inputs`` (arrays with a leading batch dim) and return this request's outputs.

        Raises :class:`QueueFull` when the queue is full, :class:`Unavailable` once closing,
        :class:`DeadlineExceeded` when ``timeout_s`` passes first (work not yet started is
        dropped and never runs), and whatever ``predict`` raised for this request alone.
        Cancelling the awaiting task removes queued work. ``priority``: 1 first, then 2, ...; 0
        (none) last; ``level_limit``: at most that many requests of its priority queued (else
        :class:`QueueFull`). ``watch``: called with the queued entry (its times, for a trace).
        """
        queued = self.enqueue(
            inputs, output_names, timeout_s=timeout_s, priority=priority, level_limit=level_limit
        )
        if watch is not None:
            watch(queued)
        try:
            return await queued.future
        except asyncio.CancelledError:
            self.withdraw(queued)
            raise

    def enqueue(
        self,
        inputs: dict[str, np.ndarray],
        output_names: list[str] | None = None,
        *,
        timeout_s: float | None = None,
        priority: int = 0,
        level_limit: int | None = None,
    ) -> Queued:
        """:meth:`submit` without a coroutine, for a transport that answers from a callback:
        queue the request (raising as ``submit`` does) and return it; its ``future`` gets the
        outputs or the error. :meth:`withdraw` it if its caller goes away."""
        if self._closing:
            raise Unavailable("this model version is shutting down", retry_after=1.0)
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and self.in_flight:
                raise RuntimeError("DynamicBatcher is bound to another event loop")
            self._loop = loop
        refused = self.refusal()
        if refused is not None:
            raise refused
        if timeout_s is not None and timeout_s <= 0:
            raise DeadlineExceeded("the request deadline passed before it was queued")

        key, rows = _group_key(inputs, output_names)
        if priority:
            if level_limit is not None and self._queued_at(priority) >= level_limit:
                self.count_rejections(1)
                raise QueueFull(
                    f"the queue of this model version is full for priority level {priority} "
                    f"({level_limit} requests)",
                    retry_after=self._retry_after(),
                )
            key = (key, priority)
        now = loop.time()
        item = Queued(inputs, output_names, rows, key, loop.create_future(), now, time.perf_counter())
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key, priority or _UNRANKED)
        group.items.append(item)
        group.rows += rows
        self._queued += 1
        self._arrived += 1
        if self._returning:
            self._returning -= 1
        if self._promised:
            self._promised -= 1  # most likely the request of a waiter let in (none is lost)
        if timeout_s is not None:
            item.deadline = now + timeout_s
            waiting = self._deadlines.get(timeout_s)
            if waiting is None:
                waiting = self._deadlines[timeout_s] = deque()
            waiting.append(item)
            if item.deadline < self._deadline_at:
                self._arm_deadline(item.deadline)
        if self._busy < self._instances and not self._dispatch_pending:
            # One loop turn later, so requests arriving together land in one batch.
            self._dispatch_pending = True
            loop.call_soon(self._dispatch)
        return item

    def withdraw(self, queued: Queued) -> None:
        """Its caller went away: drop ``queued`` (from :meth:`enqueue`) if it has not started
        computing, and cancel its future (a computing batch still answers the others)."""
        if queued.state == _QUEUED:
            self._unqueue(queued, remove=True)
        queued.future.cancel()

    def refusal(self) -> QueueFull | None:
        """When the queue is full: the :class:`QueueFull` a request would get now (counted as a
        rejection), so a transport can refuse before it even reads the request; else ``None``."""
        if self._queued < self._max_queue:
            return None
        self.count_rejections(1)
        return self.queue_full()

    @property
    def full(self) -> bool:
        """True while the queue holds ``max_queue_size`` requests: new ones are refused."""
        return self._queued >= self._max_queue

    def queue_full(self) -> QueueFull:
        """The error a request refused now gets, with its ``Retry-After`` (not counted)."""
        return QueueFull(
            f"the queue of this model version is full ({self._max_queue} requests)",
            retry_after=self._retry_after(),
        )

    def count_rejections(self, n: int) -> None:
        """Count ``n`` requests refused because the queue was full (for refusals made outside
        :meth:`submit`, which a caller may count in bundles)."""
        if self._observer is not None:
            self._observer.on_reject(n)

    @property
    def no_room(self) -> bool:
        """True while the queue (with the slots promised to waiters let in) is at
        :attr:`let_in_level` or over, or waiters for room (see :meth:`when_room`) wait: a
        transport whose caller was refused should wait for room rather than read now."""
        return self._queued + self._promised >= self._let_in_level or bool(self._room_waiters)

    def when_room(self, callback: Callable[[], int]) -> None:
        """Call ``callback()`` once, when the queue has room for one more request, when the
        batcher closes, or after :data:`ROOM_WAIT_MAX_S` at the latest. For a transport that
        stops reading a connection while its next request would be refused: waiters are let in
        while there are free slots, newest first except that those that have waited
        :data:`ROOM_AGED_S` go first (oldest first). ``callback()`` reads its connection again
        and returns how many requests that may bring (1 for HTTP/1.1; an HTTP/2 connection may
        carry many calls at once; 0: it has gone or is busy): that many slots are kept for
        them, for :data:`_ROOM_RECOUNT_S` (a connection whose next request is for another
        model, or that sends none, does not keep the others waiting). ``callback`` must be
        cheap and must not raise.

        Waiters are let in only while the queue is below :attr:`let_in_level` (two full batches
        per instance by default), not up to ``max_queue_size``: that keeps every instance busy,
        and a flood that has been refused once is then served from a short queue, while callers
        not refused yet can still fill the queue to ``max_queue_size`` (a burst is absorbed).
        A longer queue adds only waiting, and more requests in flight, each of which costs the
        server more the more there are (``docs/benchmarks.md``, "Many connections").

        Why newest first: waiters exist only while the queue is full (overload). The connection
        answered last is the one whose client is surely still there; served oldest first, a
        flood's goodput was lower (``docs/serving.md``). Aged waiters going first bound the
        wait, and keep them from reaching :data:`ROOM_WAIT_MAX_S`, after which a connection is
        read even into a full queue (and refused). See ``docs/benchmarks-history.md`` for what it
        changed."""
        loop = self._loop or asyncio.get_running_loop()
        self._room_waiters.append((loop.time() + ROOM_WAIT_MAX_S, callback))
        if self._closing or self._queued + self._promised < self._let_in_level:
            self._let_in()
        elif self._room_timer is None:
            self._room_timer = loop.call_at(self._room_waiters[0][0], self._on_room_timer)

    def claim_return(self) -> bool:
        """For a transport about to wait for room (:meth:`when_room`) right after answering:
        True when a slot is kept for it, as the caller of a batch just computed, so it reads
        its connection on instead of waiting (then its request takes the slot).

        Why: while waiters exist, the batch taken from the queue makes room for as many
        requests as it holds, and waiters let in newest first would be the connections that
        batch answers: instead of each of them stopping its reading and being let in again at
        the next batch (about 4 µs of bookkeeping a request), those slots are kept for them
        (after the waiters that have aged), and they go on reading."""
        if self._returns > 0:
            self._returns -= 1
            return True
        return False

    def must_wait(self) -> bool:
        """For a transport that just answered a caller refused lately: True when it should stop
        reading and wait for room (:meth:`when_room`); False when the queue has room (or is
        closing), or a slot was kept for this caller (:meth:`claim_return`, taken here). One
        call for what a flood asks after every answer (:attr:`no_room`, :attr:`closed`,
        :meth:`claim_return`)."""
        if self._closing or (self._queued + self._promised < self._let_in_level and not self._room_waiters):
            return False
        return not self.claim_return()

    def spent_elsewhere(self) -> None:
        """A request that may have been let in on a slot of this queue (a waiter's, or one kept
        for a batch's callers) went to another queue: a deployment's lighter route, whose
        callers wait for room on this queue (see ``DeploymentGate``). Its slot is free again,
        and the next batch does not wait for it. Without this, a slot kept for a request that
        never came was lost until the recount (:data:`_ROOM_RECOUNT_S`), which every batch
        computed on the loop pushes back: in a flood of a 90/10 canary the slots lost piled up,
        and the heaviest route's batches shrank to a third."""
        if self._returning:
            self._returning -= 1
        if self._promised:
            self._promised -= 1
            if self._room_waiters and self._queued + self._promised < self._let_in_level:
                self._let_in()

    @property
    def kept_slots(self) -> int:
        """Slots kept for the callers of the batch just taken and not claimed yet (see
        :meth:`claim_return`)."""
        return self._returns

    @property
    def waiting_for_room(self) -> int:
        """Callbacks registered with :meth:`when_room` and not called yet."""
        return len(self._room_waiters)

    def _let_in(self, returns: int = 0) -> None:
        """Call back as many room waiters as the queue has slots below :attr:`let_in_level` that
        are not promised (all of them once closing): those that have waited :data:`ROOM_AGED_S`
        first, oldest first; then keep up to ``returns`` slots for the callers of the batch
        just taken (see :meth:`claim_return`); then the newest waiters."""
        waiters = self._room_waiters
        room = len(waiters) if self._closing else self._let_in_level - self._queued - self._promised
        if waiters and room > 0:
            loop = self._loop or asyncio.get_running_loop()
            aged = loop.time() + ROOM_WAIT_MAX_S - ROOM_AGED_S  # waiters due before this have aged
            while waiters and room > 0 and waiters[0][0] <= aged:
                room -= self._call_waiter(waiters.popleft())
            if returns and room > 0 and not self._closing:
                kept = min(returns, room)
                self._returns += kept
                self._promised += kept
                room -= kept
            while waiters and room > 0:
                room -= self._call_waiter(waiters.pop())
        self._arm_room_timer()

    def _call_waiter(self, entry: tuple[float, Callable[[], int]]) -> int:
        brings = entry[1]()
        self._promised += brings
        return brings

    def _arm_room_timer(self) -> None:
        waiters = self._room_waiters
        if self._room_timer is not None:
            self._room_timer.cancel()
            self._room_timer = None
        if waiters or self._promised:
            loop = self._loop or asyncio.get_running_loop()
            at = waiters[0][0] if waiters else math.inf
            if self._promised:
                at = min(at, loop.time() + _ROOM_RECOUNT_S)
            self._room_timer = loop.call_at(at, self._on_room_timer)

    def _on_room_timer(self) -> None:
        """Promises not kept by now are void; waiters that waited :data:`ROOM_WAIT_MAX_S` are
        let in, room or not; then as many more as there is room for."""
        self._room_timer = None
        self._promised = self._returns = 0
        waiters = self._room_waiters
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time() + _TIMER_SLACK_S
        while waiters and waiters[0][0] <= now:
            waiters.popleft()[1]()
        if waiters:
            self._let_in()

    def _retry_after(self) -> float:
        batches_ahead = math.ceil(self._queued / self._max_rows) / self._instances + 1
        return round(max(0.01, self._batch_s * batches_ahead), 3)

    # -- queue bookkeeping -------------------------------------------------------------------

    def _unqueue(self, item: Queued, *, remove: bool) -> None:
        """Take ``item`` out of the queue accounting (and out of its group when ``remove``)."""
        group = self._groups[item.key]
        if remove:
            group.items.remove(item)
        group.rows -= item.rows
        if not group.items:
            self._groups.pop(item.key, None)
        self._queued -= 1
        item.state = _DROPPED
        if self._room_waiters:
            self._let_in()
        self._check_drained()

    def _arm_deadline(self, at: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        assert self._loop is not None
        self._deadline_at = at
        self._deadline_timer = self._loop.call_at(at, self._on_deadline)

    def _on_deadline(self) -> None:
        """Fail every request whose deadline passed; re-arm for the next one."""
        self._deadline_timer = None
        self._deadline_at = math.inf
        assert self._loop is not None
        now = self._loop.time() + _TIMER_SLACK_S
        for timeout, waiting in list(self._deadlines.items()):
            while waiting:
                item = waiting[0]
                if item.future.done():
                    waiting.popleft()
                elif item.deadline is not None and item.deadline <= now:
                    waiting.popleft()
                    self._expire(item)
                else:
                    if item.deadline is not None and item.deadline < self._deadline_at:
                        self._arm_deadline(item.deadline)
                    break
            if not waiting:
                del self._deadlines[timeout]

    def _forget_answered(self) -> None:
        """Drop answered requests from the front of the deadline queues (keeps them short)."""
        for waiting in self._deadlines.values():
            while waiting and waiting[0].future.done():
                waiting.popleft()

    def _expire(self, item: Queued) -> None:
        if item.future.done():
            return
        if item.state == _QUEUED:
            self._unqueue(item, remove=True)
            item.future.set_exception(
                DeadlineExceeded("the request deadline passed while it was queued")
            )
        else:
            item.future.set_exception(
                DeadlineExceeded("the request deadline passed while it was computing")
            )

    def _check_drained(self) -> None:
        if self._drained is not None and self.in_flight == 0:
            self._drained.set()

    # -- dispatch ----------------------------------------------------------------------------

    @property
    def _computes_inline(self) -> bool:
        """Whether the next batch computes on the loop (recent batches were fast enough)."""
        return self._batch_s < self._inline_below_s and self._batches >= _MEASURED_BEFORE_INLINE

    def _is_due(self, group: _Group, now: float, settled: bool, awaiting: bool) -> bool:
        if self._closing or group.rows >= self._max_rows:
            return True
        if awaiting:
            return False
        return (self._busy == 0 and settled) or now - group.items[0].enqueued >= self._delay_s - _TIMER_SLACK_S

    def _learn_small_batch(self, compute_s: float) -> None:
        """Fold a small batch computed on the loop into :attr:`_small_batch_s` (only those: on
        a thread, a batch's time includes whatever else ran on the core meanwhile): the lowest
        seen, rising by at most 5% a batch, so a stall (a busy host, a collection) does not
        count and a version that got slower is followed."""
        small = self._small_batch_s
        self._small_batch_s = compute_s if small == 0.0 else min(compute_s, 1.05 * small)

    def _awaits_returns(self) -> bool:
        """Whether the next batch still waits for the next requests of the last batch computed
        on the loop (see :meth:`_launch`); its time starts at the first dispatch after that
        batch, once its answers have been written."""
        if not self._returning:
            return False
        clock = time.perf_counter()
        if self._returns_by == 0.0:
            self._returns_by = clock + min(self._delay_s, self._small_batch_s)
        if clock < self._returns_by and self._computes_inline:
            return True
        self._returning = 0
        return False

    def _dispatch(self) -> None:
        """Start batches while executors are free and some group is due."""
        self._dispatch_pending = False
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        # A batch that will compute on the loop waits for a loop turn that queues nothing new,
        # and for the next requests of the last batch's callers (see _launch).
        settled = not self._arrived or not self._computes_inline
        self._arrived = 0
        awaiting = self._awaits_returns()
        while self._busy < self._instances and self._groups:
            chosen: _Group | None = None
            for group in self._groups.values():
                if self._is_due(group, now, settled, awaiting) and (
                    chosen is None
                    or group.rank < chosen.rank
                    or group.rank == chosen.rank and group.items[0].enqueued < chosen.items[0].enqueued
                ):
                    chosen = group
            if chosen is None:
                break
            batch = self._take(chosen, now)
            if self._room_waiters:
                # A batch computed on the loop is answered right after it: slots can be kept for
                # its callers (claim_return); a batch on a thread may outlast such a slot.
                self._let_in(returns=len(batch) if self._computes_inline else 0)
            if batch and self._launch(batch):
                # Computed on the loop: let answers and new requests through before the next one.
                if self._groups:
                    self._dispatch_pending = True
                    loop.call_soon(self._dispatch)
                return
        if (awaiting or not settled) and self._busy == 0 and self._groups:
            self._dispatch_pending = True
            loop.call_soon(self._dispatch)
        elif self._groups and self._busy < self._instances:
            oldest = min(g.items[0].enqueued for g in self._groups.values())
            self._wake = loop.call_at(oldest + self._delay_s, self._dispatch)

    def _take(self, group: _Group, now: float) -> tuple[Queued, ...]:
        """Pop up to ``max_batch_size`` rows of live requests (always at least one request)."""
        batch: list[Queued] = []
        rows = 0
        items = group.items
        while items:
            item = items[0]
            if item.future.done():  # cancelled; its task has not run its handler yet
                items.popleft()
                self._unqueue(item, remove=False)
                continue
            if item.deadline is not None and now >= item.deadline:
                items.popleft()
                self._unqueue(item, remove=False)
                item.future.set_exception(
                    DeadlineExceeded("the request deadline passed while it was queued")
                )
                continue
            if batch and rows + item.rows > self._max_rows:
                break
            items.popleft()
            group.rows -= item.rows
            item.state = _RUNNING
            batch.append(item)
            rows += item.rows
        if not items:
            self._groups.pop(group.key, None)
        self._queued -= len(batch)
        return tuple(batch)

    def _queued_at(self, rank: int) -> int:
        """Requests of priority ``rank`` queued (its groups' items: a version has few groups)."""
        return sum(len(g.items) for g in self._groups.values() if g.rank == rank)

    def _launch(self, batch: tuple[Queued, ...]) -> bool:
        """Start computing ``batch``; True when it was computed on the loop (already finished)."""
        loop = self._loop
        assert loop is not None
        self._busy += 1
        self._computing += len(batch)
        self._running.add(batch)
        launched = time.perf_counter()  # its requests' wait ends here
        if self._computes_inline:
            outcomes, compute_s = self._run(batch)
            self._complete(batch, launched, outcomes, compute_s)
            # (the length first: a full batch is not summed)
            if len(batch) <= self._small_rows and sum(item.rows for item in batch) <= self._small_rows:
                self._learn_small_batch(compute_s)
            # Its callers' next requests come a moment after their answers, and the loop could
            # read none while it computed: the next batch waits for as many requests as this one
            # answered (a closed loop's clients come back), for at most what a small batch costs
            # (what forming the next one too early would waste) and max_queue_delay_ms, when its
            # batches take long enough for the wait to pay (_RETURNS_WORTH_S). Without
            # it, on one core, 64 clients of a 40 MB model fell into batches of 63 rows and of 1
            # (docs/serving.md, "Batching").
            if self._batch_s >= _RETURNS_WORTH_S and self._small_batch_s:
                self._returning = len(batch)
                self._returns_by = 0.0  # counted from the next dispatch: the answers are written by then
            if self._promised:
                # The loop read nothing while it computed: the requests of waiters let in could
                # not arrive, so their slots are kept for another _ROOM_RECOUNT_S from now.
                self._arm_room_timer()
            return True
        try:
            afut = loop.run_in_executor(self._executor, self._run, batch)
        except RuntimeError as exc:  # the executor was shut down under us
            err = Unavailable("this model version is shutting down")
            err.__cause__ = exc
            self._finish(batch, launched, None, err)
            return False
        afut.add_done_callback(partial(self._on_done, batch, launched))
        return False

    # -- compute (runs in the executor, off the loop) ----------------------------------------

    def _run(self, batch: tuple[Queued, ...]) -> tuple[list[Any], float]:
        started = time.perf_counter()
        if len(batch) == 1:
            outcomes = [self._call_one(batch[0])]
        else:
            outcomes = self._call_batch(batch)
        return outcomes, time.perf_counter() - started

    def _call_one(self, item: Queued) -> dict[str, np.ndarray] | BaseException:
        try:
            return self._predict(item.inputs, item.output_names)
        except Exception as exc:
            return exc

    def _call_batch(self, batch: tuple[Queued, ...]) -> list[Any]:
        first = batch[0]
        total = sum(item.rows for item in batch)
        try:
            merged = {
                name: np.concatenate([item.inputs[name] for item in batch], axis=0)
                for name in first.inputs
            }
            outputs = self._predict(merged, first.output_names)
            results: list[dict[str, np.ndarray]] = [{} for _ in batch]
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != total:
                    raise ValueError(f"output {name!r} does not have one row per input row")
                start = 0
                for result, item in zip(results, batch):
                    result[name] = array[start : start + item.rows]
                    start += item.rows
            return results
        except Exception:
            # Isolate the failure: each request runs alone and gets its own result or error.
            # Requests whose caller already gave up (timed out, cancelled) are not re-run.
            return [None if item.future.done() else self._call_one(item) for item in batch]

    # -- completion (back on the loop) -------------------------------------------------------

    def _on_done(
        self, batch: tuple[Queued, ...], launched: float, afut: asyncio.Future[Any]
    ) -> None:
        try:
            outcomes, compute_s = afut.result()
        except BaseException as exc:  # cancelled by executor shutdown
            err = Unavailable("this model version is shutting down")
            err.__cause__ = exc
            self._finish(batch, launched, None, err)
            return
        self._complete(batch, launched, outcomes, compute_s)
        if self._groups and not self._dispatch_pending:
            self._dispatch()

    def _complete(
        self, batch: tuple[Queued, ...], launched: float, outcomes: list[Any], compute_s: float
    ) -> None:
        ran = (launched, compute_s)
        for item, outcome in zip(batch, outcomes):
            item.ran = ran
            if item.future.done():
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
        self._batch_s = compute_s if self._batch_s == 0.0 else 0.8 * self._batch_s + 0.2 * compute_s
        self._batches += 1
        if self._deadlines:
            self._forget_answered()
        self._finish(batch, launched, compute_s, None)

    def _finish(
        self,
        batch: tuple[Queued, ...],
        launched: float,
        compute_s: float | None,
        error: BaseException | None,
    ) -> None:
        if batch in self._running:
            self._running.discard(batch)
            self._busy -= 1
            self._computing -= len(batch)
        if error is not None:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            if self._groups and not self._dispatch_pending:
                self._dispatch()
        if compute_s is not None and self._observer is not None:
            waited = 0.0
            rows = 0
            for item in batch:
                waited += launched - item.since
                rows += item.rows
            self._observer.on_batch(rows, len(batch), launched - batch[0].since, waited, compute_s)
        self._check_drained()

    # -- close -------------------------------------------------------------------------------

    async def close(self, drain_timeout_s: float = 30.0) -> bool:
        """Stop accepting work and finish queued and computing requests.

        Returns True when everything finished within ``drain_timeout_s``; otherwise the requests
        left get :class:`Unavailable` (a computing ``predict`` cannot be interrupted; it finishes
        in its thread and its result is discarded) and False is returned.
        """
        self._closing = True
        drained = True
        self._let_in()  # waiting transports read their requests now (and are refused: closed)
        if self._loop is not None and self.in_flight:
            self._drained = asyncio.Event()
            if self._groups and not self._dispatch_pending:
                self._dispatch()  # everything is due now
            self._check_drained()
            try:
                await asyncio.wait_for(self._drained.wait(), drain_timeout_s)
            except TimeoutError:
                drained = False
                self._abandon()
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        return drained

    def _abandon(self) -> None:
        err = Unavailable("this model version shut down before the request finished")
        for group in list(self._groups.values()):
            for item in list(group.items):
                self._unqueue(item, remove=True)
                if not item.future.done():
                    item.future.set_exception(err)
        for batch in list(self._running):
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
