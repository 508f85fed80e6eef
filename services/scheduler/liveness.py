"""The liveness sweeper of minions: marks silent minions down and acts on it.

It runs :meth:`MinionRegistry.sweep` about twice per heartbeat interval and
then does what the registry decided but cannot do itself: it looks for
locations with services and no minion once the start-up grace is over, ends
the pending polls of a location whose last minion went (UNKNOWN at once, not
at their TTLs), and writes the minion/location events to the outbox,
retrying while the store is unavailable so that no event is lost to a store
hiccup.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol

from services.core.backoff import Backoff
from services.core.events import Event
from services.scheduler.minions import MinionRegistry, unreachable_reason
from services.scheduler.model import ServiceKey, ServiceRuntime

log = logging.getLogger(__name__)

#: How often locations without any minion are looked for (seconds).
LOCATION_SCAN_PERIOD = 30.0


class Polls(Protocol):
    """What the sweeper needs of the dispatcher."""

    #: Until then (loop clock), a location without a minion is not news.
    grace_until: float

    async def expire_location(self, location: str, reason: str) -> int:
        """End every pending poll at ``location`` as UNKNOWN now; returns how many."""


async def run_liveness(
    registry: MinionRegistry,
    services: Mapping[ServiceKey, ServiceRuntime],
    polls: Polls,
    emit: Callable[[list[Event]], Awaitable[None]],
) -> None:
    """The sweeper, for ever: liveness, location scans, events, UNKNOWN for lost locations' polls."""
    loop = asyncio.get_running_loop()
    period = max(0.05, min(1.0, registry.heartbeat_interval / 2))
    next_scan = 0.0
    backoff = Backoff()
    while True:
        registry.sweep()
        loop_now = loop.time()
        if loop_now >= polls.grace_until and loop_now >= next_scan:
            # Only services' locations: a minion-less location nobody polls is no news.
            registry.scan_locations(_locations(services))
            next_scan = loop_now + LOCATION_SCAN_PERIOD
        while (location := registry.lost_location()) is not None:
            n = await polls.expire_location(location, unreachable_reason(location))
            if n:
                log.info("location %s: %d pending poll(s) ended UNKNOWN", location, n)
        batch = registry.take_events()
        if batch:
            try:
                await emit(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                registry.return_events(batch)
                log.warning(
                    "writing %d minion/location event(s) failed (%s); retrying", len(batch), exc
                )
                await backoff.sleep()
                continue
            backoff.reset()
        await registry.idle(period)


def _locations(services: Mapping[ServiceKey, ServiceRuntime]) -> Iterable[str]:
    return (rt.spec.location for rt in list(services.values()))
