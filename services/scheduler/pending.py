"""Polls sent and not yet answered, with their TTL deadlines.

Each pending request records the location it was sent to: its result counts
only from a session whose certificate names that location (see
:meth:`services.scheduler.dispatcher.Dispatcher.claim`), so looking a request
up (:meth:`PendingPolls.get`) is apart from claiming it (:meth:`PendingPolls.pop`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from services.scheduler.model import ServiceKey


@dataclass(frozen=True, slots=True)
class PendingPoll:
    """One request in flight."""

    request_id: str
    key: ServiceKey
    #: Where it was sent: only a session of this location may answer it.
    location: str
    #: Loop-clock time at which the request expires.
    expires: float
    ttl: float


class PendingPolls:
    """Requests in flight. At most one per service, so its size is bounded by the inventory."""

    def __init__(self) -> None:
        self._by_id: dict[str, PendingPoll] = {}
        self._heap: list[tuple[float, str]] = []
        self._per_node: dict[str, int] = {}
        self._per_location: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def per_node(self, node_id: str) -> int:
        """Requests in flight for one node."""
        return self._per_node.get(node_id, 0)

    def per_location(self, location: str) -> int:
        """Requests in flight at one location."""
        return self._per_location.get(location, 0)

    def add(self, poll: PendingPoll) -> None:
        """Track a request until its result arrives or it expires."""
        self._by_id[poll.request_id] = poll
        self._per_node[poll.key.node_id] = self._per_node.get(poll.key.node_id, 0) + 1
        self._per_location[poll.location] = self._per_location.get(poll.location, 0) + 1
        heapq.heappush(self._heap, (poll.expires, poll.request_id))

    def _forget(self, poll: PendingPoll) -> None:
        for counts, key in (
            (self._per_node, poll.key.node_id),
            (self._per_location, poll.location),
        ):
            left = counts.get(key, 1) - 1
            if left:
                counts[key] = left
            else:
                counts.pop(key, None)

    def get(self, request_id: str) -> PendingPoll | None:
        """The pending request ``request_id``, left pending (``None`` if unknown or expired)."""
        return self._by_id.get(request_id)

    def pop(self, request_id: str) -> PendingPoll | None:
        """Claim a request for its result; ``None`` if unknown or already expired."""
        poll = self._by_id.pop(request_id, None)
        if poll is not None:
            self._forget(poll)
        return poll

    def next_expiry(self) -> float | None:
        """When the earliest live request expires."""
        while self._heap:
            expires, rid = self._heap[0]
            if rid in self._by_id:
                return expires
            heapq.heappop(self._heap)
        return None

    def take_location(self, location: str) -> list[PendingPoll]:
        """Remove and return every request sent to ``location``."""
        out = [p for p in self._by_id.values() if p.location == location]
        for p in out:
            del self._by_id[p.request_id]
            self._forget(p)
        return out

    def expire(self, now: float) -> list[PendingPoll]:
        """Remove and return every request whose deadline has passed."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            _, rid = heapq.heappop(self._heap)
            poll = self._by_id.pop(rid, None)
            if poll is not None:
                self._forget(poll)
                out.append(poll)
        return out
