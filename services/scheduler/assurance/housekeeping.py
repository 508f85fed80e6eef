"""The assurance side's background work: flushing state, stale detection, pruning results.

Service state rows and the poll history are not written with each result:
the :class:`Journal` collects them and the flusher writes them every few
seconds (an upsert, so a flush may be repeated). A service without any result
for two intervals emits ``poller stale`` once; after a (re)start the intervals
count from the end of a start-up grace (:data:`STARTUP_GRACE`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from services.core.events import Event
from services.core.status import Status
from services.core.tasks import finish_writing
from services.core.wire import clip_reason
from services.scheduler import metrics
from services.scheduler.assurance.eventbuild import service_event
from services.scheduler.model import Observation, ServiceKey, ServiceRuntime
from services.scheduler.store import SchedulerStore, StateRow
from services.scheduler.timing import effective_interval

log = logging.getLogger(__name__)

MAX_HISTORY_BUFFER = 200_000

#: After the scheduler (re)starts, or a service is added, its first results
#: need the minions to (re)connect and the first polls to go out: the default
#: minion grace (``heartbeat_interval`` 5 s times ``heartbeat_misses`` 3). The
#: two intervals of staleness count from its end, so that the scheduler's own
#: absence is not reported as a ``poller stale`` of every service.
STARTUP_GRACE = 15.0


def state_row(rt: ServiceRuntime) -> StateRow:
    """The stored form of a service's state."""
    return StateRow(
        key=rt.key,
        status=rt.status.value,
        status_since=rt.status_since,
        last_poll_status=rt.last_poll_status.value if rt.last_poll_status else None,
        last_reason=rt.last_reason,
        last_poll_at=rt.last_poll_at,
        response_time_ms=rt.response_time_ms,
        paused=rt.paused,
        flapping=rt.flapping,
    )


def history_row(obs: Observation) -> dict[str, Any]:
    """The stored form of one poll result."""
    return {
        "node_id": obs.key.node_id,
        "ip": obs.key.ip,
        "service": obs.key.service,
        "status": obs.status.value,
        "reason": clip_reason(obs.reason),
        "response_time_ms": obs.response_time_ms,
        "values": obs.values,
        "at": obs.at,
        "system_id": obs.system_id,
    }


class Journal:
    """Changed service states and poll results waiting for the next flush."""

    def __init__(
        self,
        services: Mapping[ServiceKey, ServiceRuntime],
        store: SchedulerStore,
        *,
        keep_history: bool = True,
    ) -> None:
        self.services = services
        self.store = store
        self.keep_history = keep_history
        self.history_dropped = 0
        self._dirty: set[ServiceKey] = set()
        self._history: deque[dict[str, Any]] = deque()

    def record(self, obs: Observation) -> None:
        """A result was applied: its service's row is dirty, the result goes to the history."""
        self._dirty.add(obs.key)
        if self.keep_history:
            if len(self._history) >= MAX_HISTORY_BUFFER:
                self._history.popleft()
                self.history_dropped += 1
            self._history.append(history_row(obs))

    def mark_dirty(self, key: ServiceKey) -> None:
        """Persist this service's state at the next flush."""
        self._dirty.add(key)

    def discard(self, key: ServiceKey) -> None:
        """The service is gone: nothing of it to flush."""
        self._dirty.discard(key)

    def take_dirty(self) -> list[StateRow]:
        """Rows for every service changed since the last call."""
        rows = [state_row(rt) for key in self._dirty if (rt := self.services.get(key)) is not None]
        self._dirty.clear()
        return rows

    async def flush(self) -> None:
        """Write changed service states and buffered results.

        On failure they stay queued for the next flush.
        """
        rows = self.take_dirty()
        try:
            await finish_writing(self.store.save_states(rows), "service states")
        except BaseException:  # cancelled too: the final flush writes them (an upsert)
            self._dirty.update(r.key for r in rows)
            raise
        history = list(self._history)
        self._history.clear()
        try:
            await finish_writing(self.store.add_results(history), "poll history")
        except Exception:
            self._history.extendleft(reversed(history))
            while len(self._history) > MAX_HISTORY_BUFFER:
                self._history.popleft()
                self.history_dropped += 1
            raise
        counts = dict.fromkeys(Status, 0)
        for rt in self.services.values():
            counts[rt.status] += 1
        for s, n in counts.items():
            metrics.SERVICES.labels(s.value).set(n)


async def run_flusher(journal: Journal, interval: float) -> None:
    """Flush every ``interval`` seconds for ever."""
    while True:
        await asyncio.sleep(interval)
        try:
            await journal.flush()
        except Exception as exc:
            log.warning("flushing service state failed: %s", exc)


def stale_event(rt: ServiceRuntime, now: float, startup_grace: float = 0.0) -> Event | None:
    """``poller stale`` if ``rt`` has just become stale (no result for 2 intervals).

    The intervals count from the last result, or from ``startup_grace`` after
    this process scheduled the service, whichever is later.
    """
    interval = effective_interval(rt, now)
    # Since the last result, or since this process scheduled the service and
    # its minions had time to reconnect: a restart after a long stop, and the
    # reconnects that follow it, are the scheduler's absence, not staleness.
    scheduled = rt.added + startup_grace if rt.added else 0.0
    reference = max(rt.last_poll_at or 0.0, scheduled)
    if interval is None or reference == 0.0:
        return None
    late = now - reference > 2 * interval
    if not late or rt.stale:
        return None
    rt.stale = True
    return service_event(
        "poller",
        "stale",
        rt,
        now,
        lastPollAt=rt.last_poll_at,
        interval=interval,
    )


class StaleSweeper:
    """Finds services without results; round-robin, so a large inventory costs a bounded slice."""

    def __init__(
        self,
        services: Mapping[ServiceKey, ServiceRuntime],
        polled: Callable[[ServiceRuntime], bool],
        emit: Callable[[list[Event]], Awaitable[None]],
        *,
        startup_grace: float = STARTUP_GRACE,
    ) -> None:
        self.services = services
        self._polled = polled
        self._emit = emit
        #: See :data:`STARTUP_GRACE`; the scheduler may pass its own minion grace.
        self.startup_grace = startup_grace
        self._keys: list[ServiceKey] = []

    async def sweep(self, now: float, limit: int | None = None) -> int:
        """Emit ``poller stale`` once for each service without a result for 2 intervals.

        With ``limit``, only that many services are checked per call, round-robin.
        Returns how many events were emitted.
        """
        if limit is None:
            batch = list(self.services.values())
        else:
            if not self._keys:
                self._keys = list(self.services)
            batch = []
            while self._keys and len(batch) < limit:
                rt_ = self.services.get(self._keys.pop())
                if rt_ is not None:
                    batch.append(rt_)
        events = []
        for rt in batch:
            if not self._polled(rt):
                rt.stale = False
            elif (event := stale_event(rt, now, self.startup_grace)) is not None:
                events.append(event)
        if events:
            await self._emit(events)
        return len(events)

    async def run(self, period: float = 1.0, per_tick: int = 5000) -> None:
        """Sweep for ever, ``per_tick`` services every ``period`` seconds.

        100k services are all checked every 20 s: plenty, since staleness is
        measured in intervals.
        """
        while True:
            await asyncio.sleep(period)
            try:
                await self.sweep(time.time(), limit=per_tick)
            except Exception as exc:
                log.warning("stale sweep failed: %s", exc)


async def run_pruner(store: SchedulerStore, retention: float, period: float = 300.0) -> None:
    """Delete results older than ``retention`` every ``period`` seconds."""
    while True:
        try:
            removed = await store.prune_results(time.time() - retention)
            if removed:
                log.info("pruned %d result(s) older than the retention", removed)
        except Exception as exc:
            log.warning("pruning results failed: %s", exc)
        await asyncio.sleep(period)
