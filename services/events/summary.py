"""``summary updated``: counts of services per state per location (core4 lineage).

The event service derives the states from the events it normalizes itself
(the projection, :mod:`services.events.projection`), so producers emit
nothing extra for it:

* ``service lost`` / ``outage opened`` put a service (its ``typeId``) *down*,
  ``service regained`` / ``outage closed`` put it *up*; ``service deleted`` and
  ``outage closed`` with reason ``unmanaged`` or ``deleted`` forget it;
* ``interface down|up`` and ``node down|up`` are tracked too: a service whose
  node or interface is down counts as *down* (node-outage processing opens
  those services' outages without an event of their own).

The states live in the ``service_states`` table, written in the same
transaction as the events (a restart neither loses nor double-counts
anything), seeded from the history by the migrations that introduced them.

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

from services.core.events import INGEST_SUBJECT_PREFIX, make_event
from services.core.ids import DEFAULT_LOCATION
from services.events import metrics
from services.events.projection import ServiceState
from services.events.store.history import HistoryStore
from services.events.store.states import StateStore

log = logging.getLogger(__name__)

SOURCE = "events"
SUBJECT = f"{INGEST_SUBJECT_PREFIX}.{SOURCE}"
STATES = ("up", "down")

Counts = dict[str, dict[str, int]]


class SummaryTracker:
    """Keeps every known service's state in memory and emits summaries when counts change."""

    def __init__(
        self,
        states: StateStore,
        history: HistoryStore,
        js: JetStreamContext,
        interval: float | None,
    ) -> None:
        self.state_store = states
        self.history = history
        self.js = js
        self.interval = interval
        self.states: dict[str, ServiceState] = {}
        self.last: Counts | None = None
        self.emitted = 0
        self.ticks = 0

    async def load(self) -> None:
        """Seed from the store: the states, and the counts of the newest summary."""
        self.states = {s.key: s for s in await self.state_store.service_states()}
        latest = await self.history.latest("summary", "updated")
        self.last = _counts_of(latest.event.data) if latest is not None else None

    def apply(self, changes: Sequence[ServiceState | str]) -> None:
        """Take the state changes of a stored batch (called by the ingestor)."""
        for c in changes:
            if isinstance(c, str):
                self.states.pop(c, None)
            else:
                self.states[c.key] = c

    def counts(self) -> Counts:
        """``{location: {"up": n, "down": n}}`` over the known services."""
        down_nodes = {
            s.node_id for s in self.states.values() if s.kind == "node" and s.state == "down"
        }
        down_itfs = {
            s.key.split(":", 1)[1]
            for s in self.states.values()
            if s.kind == "interface" and s.state == "down"
        }
        out: Counts = {}
        for s in self.states.values():
            if s.kind != "service":
                continue
            interface = s.key.rsplit("/", 1)[0]  # node/ip/service → node/ip
            down = s.state == "down" or s.node_id in down_nodes or interface in down_itfs
            per = out.setdefault(s.location or DEFAULT_LOCATION, dict.fromkeys(STATES, 0))
            per["down" if down else "up"] += 1
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
