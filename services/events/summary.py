"""``summary updated``: counts of services per state per location (core4 lineage).

The event service derives each service's state from the events it normalizes
itself, so the scheduler needs to emit nothing extra: ``service lost`` and
``outage opened`` put a service (its ``typeId``) *down*, ``service regained``
and ``outage closed`` put it *up*, and ``outage closed`` with reason
``unmanaged`` forgets it. The states live in the ``service_states`` table,
written in the same transaction as the events (so a restart neither loses nor
double-counts anything) and seeded from the history by migration 0002.

Every ``summary_interval`` the counts are compared with the last summary
emitted (after a restart: the newest one in the history); when they differ a
``summary updated`` event goes through the ingest stream like any other.

Limit: a service that has been up since monitoring began has produced no
event, so it is not counted; the counts cover services that changed state at
least once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from nats.js import JetStreamContext

from services.common.config import DEFAULT_LOCATION
from services.common.events import INGEST_SUBJECT_PREFIX, make_event
from services.events import metrics
from services.events.store import EventStore, ServiceState

log = logging.getLogger(__name__)

SOURCE = "events"
SUBJECT = f"{INGEST_SUBJECT_PREFIX}.{SOURCE}"
STATES = ("up", "down")

Counts = dict[str, dict[str, int]]


class SummaryTracker:
    """Keeps every known service's state in memory and emits summaries when counts change."""

    def __init__(self, store: EventStore, js: JetStreamContext, interval: float | None) -> None:
        self.store = store
        self.js = js
        self.interval = interval
        self.states: dict[str, tuple[str, str]] = {}
        self.last: Counts | None = None
        self.emitted = 0
        self.ticks = 0

    async def load(self) -> None:
        """Seed from the store: the states, and the counts of the newest summary."""
        self.states = {
            s.type_id: (s.location or DEFAULT_LOCATION, s.state)
            for s in await self.store.service_states()
        }
        latest = await self.store.latest("summary", "updated")
        self.last = _counts_of(latest.event.data) if latest is not None else None

    def apply(self, changes: Sequence[ServiceState | str]) -> None:
        """Take the state changes of a stored batch (called by the ingestor)."""
        for c in changes:
            if isinstance(c, str):
                self.states.pop(c, None)
            else:
                self.states[c.type_id] = (c.location or DEFAULT_LOCATION, c.state)

    def counts(self) -> Counts:
        """``{location: {"up": n, "down": n}}``."""
        out: Counts = {}
        for location, state in self.states.values():
            per = out.setdefault(location, dict.fromkeys(STATES, 0))
            per[state] = per.get(state, 0) + 1
        return out

    async def tick(self) -> bool:
        """Emit a summary if the counts changed since the last one; whether one was sent."""
        self.ticks += 1
        counts = self.counts()
        if counts == (self.last or {}):
            return False
        total = dict.fromkeys(STATES, 0)
        for per in counts.values():
            for state, n in per.items():
                total[state] = total.get(state, 0) + n
        event = make_event(
            "summary", "updated", source=SOURCE, type_id="summary", locations=counts, total=total
        )
        await self.js.publish(
            SUBJECT, event.to_json(), timeout=5.0, headers={"Nats-Msg-Id": event.id}
        )
        self.last = counts
        self.emitted += 1
        metrics.SUMMARIES.inc()
        return True

    async def run(self) -> None:
        """Tick every interval for ever (NATS trouble only delays a summary)."""
        assert self.interval is not None
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot emit a summary event (%s); will retry", exc)


def _counts_of(data: dict[str, Any]) -> Counts | None:
    raw = data.get("locations")
    if not isinstance(raw, dict):
        return None
    out: Counts = {}
    for location, per in raw.items():
        if isinstance(per, dict):
            out[str(location)] = {
                str(k): int(v) for k, v in per.items() if isinstance(v, int | float)
            }
    return out
