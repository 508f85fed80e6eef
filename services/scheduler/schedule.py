"""When each service is due next: a heap with lazy invalidation."""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Generic, TypeVar

K = TypeVar("K")


class Schedule(Generic[K]):
    """Due times (on the loop clock) per key.

    Re-adding a key replaces its due time; the old heap entry is skipped when
    it surfaces. Memory stays proportional to the number of keys because stale
    entries are purged whenever they outnumber live ones.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: K) -> bool:
        return key in self._due

    def add(self, key: K, due: float) -> None:
        """Schedule (or reschedule) ``key`` at ``due``."""
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key))
        if len(self._heap) > 2 * len(self._due) + 1024:
            self._compact()

    def remove(self, key: K) -> None:
        """Unschedule ``key`` (no-op when absent)."""
        self._due.pop(key, None)

    def next_due(self) -> float | None:
        """The earliest due time, or ``None`` when empty."""
        while self._heap:
            due, _, key = self._heap[0]
            if self._due.get(key) == due:
                return due
            heapq.heappop(self._heap)
        return None

    def pop_due(self, now: float, limit: int) -> list[tuple[K, float]]:
        """Remove and return up to ``limit`` keys due at or before ``now``, earliest first."""
        out: list[tuple[K, float]] = []
        while self._heap and len(out) < limit:
            due, _, key = self._heap[0]
            if due > now:
                break
            heapq.heappop(self._heap)
            if self._due.get(key) == due:
                del self._due[key]
                out.append((key, due))
        return out

    def _compact(self) -> None:
        self._heap = [(d, next(self._seq), k) for k, d in self._due.items()]
        heapq.heapify(self._heap)


def next_slot(previous_due: float, interval: float, now: float) -> float:
    """The next due time on a fixed-rate grid: ``previous_due + k·interval`` after ``now``.

    Poll duration never shifts the grid; slots missed while the scheduler was
    busy are skipped, not bunched.
    """
    nxt = previous_due + interval
    if nxt <= now:
        nxt = previous_due + math.ceil((now - previous_due) / interval + 1e-9) * interval
    return nxt
