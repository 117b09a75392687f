"""A batcher stand-in for the queue gates' tests (``modelyard.core.queue_gates.QueueGate``)."""

from __future__ import annotations

from collections.abc import Callable

from modelyard.errors import QueueFull


class FullQueue:
    """A batcher stand-in whose queue is full until told otherwise; counts the refusal errors it
    made (``made``) and the rejections counted on it (``counted``)."""

    closed = False
    full = True

    def __init__(self) -> None:
        self.made = 0
        self.counted = 0
        self.waiting: list[Callable[[], int]] = []  # when_room callbacks

    def queue_full(self) -> QueueFull:
        self.made += 1
        return QueueFull("the queue is full", retry_after=0.5)

    def count_rejections(self, n: int) -> None:
        self.counted += n

    def must_wait(self) -> bool:
        return self.full and not self.closed

    def when_room(self, callback: Callable[[], int]) -> None:
        self.waiting.append(callback)
