"""The virtual clock: one event heap, ordered by (time, insertion sequence), no wall clock anywhere."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

Callback = Callable[[Any, float], None]


class EventQueue:
    """Timers as (time, seq, callback, argument); equal times fire in the order they were scheduled."""

    __slots__ = ("_heap", "_seq", "now")

    def __init__(self, start: float = 0.0) -> None:
        self._heap: list[tuple[float, int, Callback, Any]] = []
        self._seq = 0
        self.now = start

    def at(self, when: float, callback: Callback, arg: Any = None) -> None:
        if when < self.now:
            when = self.now
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, callback, arg))

    def after(self, delay: float, callback: Callback, arg: Any = None) -> None:
        now = self.now
        when = now + delay
        if when < now:
            when = now
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, callback, arg))

    def next_time(self) -> float:
        return self._heap[0][0] if self._heap else float("inf")

    def pop_and_run(self) -> None:
        when, _, callback, arg = heapq.heappop(self._heap)
        self.now = when
        callback(arg, when)

    def compact(self, stale: Callable[[Callback, Any], bool]) -> None:
        """Drop timers `stale(callback, arg)` says will do nothing (order of the others is kept)."""
        self._heap[:] = [e for e in self._heap if not stale(e[2], e[3])]  # in place: callers hold the list
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._heap)
