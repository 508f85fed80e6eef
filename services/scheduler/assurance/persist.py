"""Writing transitions to the store: one transaction per batch, retried until it commits.

While the store is unavailable the write is retried with back-off; the
keeper's task waits meanwhile, so its bounded mailbox fills and pushes back on
the result streams instead of dropping anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from services.core.backoff import Backoff
from services.core.events import Event
from services.core.tasks import finish_writing
from services.scheduler import metrics
from services.scheduler.assurance.transitions import (
    ElementDown,
    ElementUp,
    EventsQueued,
    OutageClosed,
    OutageOpened,
    Transition,
)
from services.scheduler.store import SchedulerStore, Transaction

log = logging.getLogger(__name__)


class Persister:
    """The one writer of assurance transitions and events to the store."""

    def __init__(self, store: SchedulerStore, on_events: Callable[[], None]) -> None:
        self.store = store
        #: Called once events are in the outbox (wakes the relay).
        self._on_events = on_events

    async def write(self, transitions: Sequence[Transition]) -> None:
        """Write a batch's transitions in one transaction, retrying until it commits."""
        backoff = Backoff()
        emitted: list[Event] = []
        while True:
            try:
                emitted = await finish_writing(self._write_all(transitions), "state transitions")
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next()
                log.error("store write failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
        self._emitted(emitted)

    async def emit(self, events: list[Event]) -> None:
        """Durably queue events that no service transition carries (minions, locations, ...)."""
        if not events:
            return

        async def write() -> None:
            async with self.store.transaction() as tx:
                await tx.enqueue(events)

        await finish_writing(write(), "events")
        self._emitted(events)

    def announce(self) -> None:
        """Events were written to the outbox outside :meth:`write` and :meth:`emit`."""
        self._on_events()

    def _emitted(self, events: list[Event]) -> None:
        for e in events:
            metrics.EVENTS_EMITTED.labels(e.type, e.action).inc()
        if events:
            self._on_events()

    async def _write_all(self, transitions: Sequence[Transition]) -> list[Event]:
        emitted: list[Event] = []
        async with self.store.transaction() as tx:
            for t in transitions:
                emitted += await _write(tx, t)
        return emitted


async def _write(tx: Transaction, t: Transition) -> list[Event]:
    match t:
        case OutageOpened():
            t.ref.id = await tx.open_outage(
                t.key, t.at, t.reason, t.event_id, t.cause, t.cause_event_id
            )
        case OutageClosed():
            if t.ref.id is not None:
                await tx.close_outage(t.ref.id, t.at, t.event_id, t.reason)
        case ElementDown():
            await tx.mark_down(t.element)
        case ElementUp():
            await tx.mark_up(t.kind, t.node_id, t.ip)
        case EventsQueued():
            for event, name, ref in t.patch:
                event.data[name] = ref.id
            events = list(t.events)
            await tx.enqueue(events)
            return events
    return []
