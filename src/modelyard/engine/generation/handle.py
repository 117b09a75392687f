"""The caller's side of a submitted request: a stream of events, sync or async, and a result.

The engine thread pushes :class:`GenerationEvent` objects; a consumer reads them either with
``for event in handle`` (blocking) or ``async for event in handle`` (from an event loop; the
loop is woken with ``call_soon_threadsafe`` and never blocks). One consumer per handle.
``result()`` / ``await aresult()`` wait for the end and return the whole completion whether or
not the events were read.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator

from modelyard.engine.generation.request import Choice, GenerationEvent, GenerationResult, Usage

__all__ = ["GenerationHandle"]


class GenerationHandle:
    """One submitted request. ``cancel()`` frees its batch slots at the next engine step."""

    def __init__(self, *, request_id: str, n: int, prompt_tokens: int) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self._n = n
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._events: deque[GenerationEvent] = deque()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._texts = [""] * n
        self._tokens: list[list[int]] = [[] for _ in range(n)]
        self._finish: list[str | None] = [None] * n
        self._error: BaseException | None = None
        self._done = False
        self._cancelled = threading.Event()
        #: ``perf_counter`` when the first token came, and the last; the engine steps that gave
        #: tokens (``n`` choices share a step): the time to the first token and between tokens
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.token_steps = 0
        self._last_step: int | None = None

    # --- engine side -------------------------------------------------------------------------

    def _push(self, event: GenerationEvent) -> None:
        now = time.perf_counter()
        with self._lock:
            if event.token_ids:
                if self.first_token_at is None:
                    self.first_token_at = now
                self.last_token_at = now
                if event.step != self._last_step:
                    self._last_step = event.step
                    self.token_steps += 1
            self._texts[event.index] += event.text
            self._tokens[event.index].extend(event.token_ids)
            if event.finish_reason is not None:
                self._finish[event.index] = event.finish_reason
                self._done = all(f is not None for f in self._finish)
            self._events.append(event)
            self._cond.notify_all()
            waiters = list(self._waiters)
        for loop, ev in waiters:
            loop.call_soon_threadsafe(ev.set)

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self._done:
                return
            self._error = error
            self._done = True
            self._cond.notify_all()
            waiters = list(self._waiters)
        for loop, ev in waiters:
            loop.call_soon_threadsafe(ev.set)

    # --- caller side -------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop generating; the engine frees the slots at its next step and ends the stream
        with ``finish_reason="cancelled"``."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        with self._lock:
            return self._done

    @property
    def usage(self) -> Usage:
        """Prompt tokens and the completion tokens generated so far (all choices)."""
        with self._lock:
            return Usage(self.prompt_tokens, sum(len(t) for t in self._tokens))

    def _take(self) -> GenerationEvent | None:
        """Next event, ``None`` at the end; raises the engine's error. Caller holds the lock."""
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise self._error
        return None

    def __iter__(self) -> Iterator[GenerationEvent]:
        while True:
            with self._cond:
                while not self._events and not self._done:
                    self._cond.wait()
                event = self._take()
            if event is None:
                return
            yield event

    async def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        with self._lock:
            self._waiters.append((loop, wake))
        try:
            while True:
                wake.clear()
                with self._lock:
                    pending = bool(self._events) or self._done
                    event = self._take() if pending else None
                if pending:
                    if event is None:
                        return
                    yield event
                    continue
                await wake.wait()
        finally:
            with self._lock:
                self._waiters.remove((loop, wake))

    def _result(self) -> GenerationResult:
        if self._error is not None:
            raise self._error
        choices = [
            Choice(i, self._texts[i], tuple(self._tokens[i]), self._finish[i] or "cancelled")
            for i in range(self._n)
        ]
        return GenerationResult(
            choices=choices,
            usage=Usage(self.prompt_tokens, sum(len(t) for t in self._tokens)),
        )

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Block until every choice has finished; raises the engine's error, or
        ``TimeoutError`` after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._done, timeout):
                raise TimeoutError("the generation did not finish in time")
            return self._result()

    async def aresult(self) -> GenerationResult:
        """``result()`` for an event loop (never blocks the loop)."""
        async for _ in self:
            pass
        with self._lock:
            return self._result()
