"""The state keeper: turns poll results into service state, outages and events.

A single task applies every observation in arrival order, so no two results
for one service ever race, and transitions are written in batches: one
transaction carries the outages and the events of a whole batch. While the
store is unavailable the keeper retries and its bounded queue fills, which
pushes back on the result streams instead of dropping anything.

Rules (DESIGN.md):
* UP → DOWN (or first-ever DOWN) opens an outage: ``service lost`` + ``outage opened``.
* DOWN → UP closes it: ``service regained`` + ``outage closed``.
* UNKNOWN only updates the last-poll fields: it never opens or closes an outage.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable

from minion.monitors.base import Status
from services.common.events import Event, make_event
from services.scheduler import metrics
from services.scheduler.model import Observation, ServiceKey, ServiceRuntime
from services.scheduler.store import OutageRow, SchedulerStore, StateRow, Transaction

log = logging.getLogger(__name__)

SOURCE = "scheduler"
MAX_BATCH = 2000


class StateKeeper:
    """Owns the assured state of every service (see the module docstring)."""

    def __init__(
        self,
        services: dict[ServiceKey, ServiceRuntime],
        store: SchedulerStore,
        on_events: Callable[[], None],
        queue_size: int = 20_000,
    ) -> None:
        self.services = services
        self.store = store
        self._on_events = on_events
        self._queue: asyncio.Queue[Observation] = asyncio.Queue(maxsize=queue_size)
        self._dirty: set[ServiceKey] = set()
        self.applied = 0

    # -- intake ----------------------------------------------------------------------

    async def submit(self, obs: Observation) -> None:
        """Queue an observation; waits while the queue is full (back-pressure)."""
        await self._queue.put(obs)

    @property
    def backlog(self) -> int:
        """Observations waiting to be applied."""
        return self._queue.qsize()

    async def run(self) -> None:
        """Apply observations for ever, in batches."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self.apply(batch)

    # -- transitions -----------------------------------------------------------------

    async def apply(self, batch: Iterable[Observation]) -> None:
        """Apply observations in order; persist the transitions they cause."""
        transitions: list[tuple[str, ServiceRuntime, Observation, int | None]] = []
        for obs in batch:
            rt = self.services.get(obs.key)
            if rt is None:
                continue  # unconfigured since the poll was sent
            self.applied += 1
            metrics.RESULTS.labels(obs.status.value).inc()
            rt.last_poll_status = obs.status
            rt.last_reason = obs.reason
            rt.last_poll_at = obs.at
            if obs.status is not Status.UNKNOWN:
                rt.response_time_ms = obs.response_time_ms
                rt.values = dict(obs.values)
            self._dirty.add(obs.key)
            if obs.status is Status.DOWN and rt.status is not Status.DOWN:
                rt.status, rt.status_since = Status.DOWN, obs.at
                transitions.append(("lost", rt, obs, None))
            elif obs.status is Status.UP and rt.status is Status.DOWN:
                rt.status, rt.status_since = Status.UP, obs.at
                transitions.append(("regained", rt, obs, rt.open_outage_id))
                rt.open_outage_id = None
            elif obs.status is Status.UP and rt.status is Status.UNKNOWN:
                rt.status, rt.status_since = Status.UP, obs.at
        if transitions:
            await self._persist(transitions)

    async def _persist(
        self, transitions: list[tuple[str, ServiceRuntime, Observation, int | None]]
    ) -> None:
        delay = 0.5
        while True:
            emitted: list[Event] = []
            # Outages opened in this batch and still open at its end.
            opened: dict[ServiceKey, int] = {}
            try:
                async with self.store.transaction() as tx:
                    for kind, rt, obs, outage_id in transitions:
                        if kind == "lost":
                            new_id, events = await self._open(tx, rt, obs)
                            opened[rt.key] = new_id
                        else:
                            if outage_id is None:
                                outage_id = opened.pop(rt.key, None)
                            events = await self._close(tx, rt, obs, outage_id)
                        emitted += events
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("store write failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2) * random.uniform(0.8, 1.2)
        for key, outage_id in opened.items():
            if (rt := self.services.get(key)) is not None:
                rt.open_outage_id = outage_id
        for e in emitted:
            metrics.EVENTS_EMITTED.labels(e.type, e.action).inc()
        self._on_events()

    async def _open(
        self, tx: Transaction, rt: ServiceRuntime, obs: Observation
    ) -> tuple[int, list[Event]]:
        lost = self._event("service", "lost", rt, obs.at, reason=obs.reason)
        outage_id = await tx.open_outage(rt.key, obs.at, obs.reason, lost.id)
        lost.data["outageId"] = outage_id
        opened = self._event("outage", "opened", rt, obs.at, reason=obs.reason, outageId=outage_id)
        opened.data["lostEventId"] = lost.id
        events = [lost, opened]
        await tx.enqueue(events)
        return outage_id, events

    async def _close(
        self, tx: Transaction, rt: ServiceRuntime, obs: Observation, outage_id: int | None
    ) -> list[Event]:
        regained = self._event("service", "regained", rt, obs.at, outageId=outage_id)
        events = [regained]
        if outage_id is not None:
            await tx.close_outage(outage_id, obs.at, regained.id, "service regained")
            events.append(
                self._event(
                    "outage", "closed", rt, obs.at,
                    outageId=outage_id, regainedEventId=regained.id, reason="service regained",
                )
            )
        await tx.enqueue(events)
        return events

    @staticmethod
    def _event(kind: str, action: str, rt: ServiceRuntime, at: float, **data: object) -> Event:
        return make_event(
            kind,
            action,
            source=SOURCE,
            type_id=str(rt.key),
            node_id=rt.key.node_id,
            location=rt.spec.location,
            created_at=at,
            ip=rt.key.ip,
            service=rt.key.service,
            monitor=rt.spec.monitor,
            nodeLabel=rt.spec.node_label or None,
            **data,
        )

    async def emit(self, events: list[Event]) -> None:
        """Durably queue events that no service transition carries (minions, locations, ...)."""
        if not events:
            return
        async with self.store.transaction() as tx:
            await tx.enqueue(events)
        for e in events:
            metrics.EVENTS_EMITTED.labels(e.type, e.action).inc()
        self._on_events()

    # -- start-up and persistence ----------------------------------------------------

    async def restore(self, states: dict[ServiceKey, StateRow], open_outages: list[OutageRow]) -> list[OutageRow]:
        """Load the last known state; returns open outages of services no longer configured.

        A service with an open outage starts DOWN with that outage; no event
        is emitted for the restored state.
        """
        for key, row in states.items():
            rt = self.services.get(key)
            if rt is None:
                continue
            rt.status = Status(row.status) if row.status in Status.__members__ else Status.UNKNOWN
            rt.status_since = row.status_since
            rt.last_poll_status = Status(row.last_poll_status) if row.last_poll_status else None
            rt.last_reason = row.last_reason
            rt.last_poll_at = row.last_poll_at
            rt.response_time_ms = row.response_time_ms
        orphans = []
        for outage in open_outages:
            rt = self.services.get(outage.key)
            if rt is None:
                orphans.append(outage)
                continue
            rt.status = Status.DOWN
            rt.status_since = rt.status_since or outage.opened_at
            rt.open_outage_id = outage.id
            if not rt.last_reason:
                rt.last_reason = outage.reason
        return orphans

    async def close_unmanaged(self, orphans: list[OutageRow], at: float) -> None:
        """Close outages of services that are no longer configured (reason "unmanaged")."""
        if not orphans:
            return
        async with self.store.transaction() as tx:
            for o in orphans:
                if await tx.close_outage(o.id, at, None, "unmanaged"):
                    await tx.enqueue(
                        [
                            make_event(
                                "outage", "closed", source=SOURCE, type_id=str(o.key),
                                node_id=o.key.node_id, created_at=at, ip=o.key.ip,
                                service=o.key.service, outageId=o.id, reason="unmanaged",
                            )
                        ]
                    )
        log.info("closed %d outage(s) of services no longer configured", len(orphans))
        self._on_events()

    def take_dirty(self) -> list[StateRow]:
        """Rows for every service changed since the last call."""
        rows = []
        for key in self._dirty:
            rt = self.services.get(key)
            if rt is None:
                continue
            rows.append(
                StateRow(
                    key=key,
                    status=rt.status.value,
                    status_since=rt.status_since,
                    last_poll_status=rt.last_poll_status.value if rt.last_poll_status else None,
                    last_reason=rt.last_reason,
                    last_poll_at=rt.last_poll_at,
                    response_time_ms=rt.response_time_ms,
                )
            )
        self._dirty.clear()
        return rows

    async def flush(self) -> None:
        """Write changed service states; on failure they stay dirty for the next flush."""
        rows = self.take_dirty()
        try:
            await self.store.save_states(rows)
        except Exception:
            self._dirty.update(r.key for r in rows)
            raise
        counts = {s: 0 for s in Status}
        for rt in self.services.values():
            counts[rt.status] += 1
        for s, n in counts.items():
            metrics.SERVICES.labels(s.value).set(n)

    async def run_flusher(self, interval: float) -> None:
        """Flush every ``interval`` seconds for ever."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("flushing service state failed: %s", exc)
