"""Issue 10, defect 15: what a clean stop and a scheduler restart must not say.

Real parts: nats-server, the scheduler, the event service and a minion, all
in process over mutual TLS (tests/helpers.py's Stack).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from minion.monitors.base import Status
from services.core.natsserver import NatsServer
from tests.helpers import EventCollector, Stack, make_config, wait_for
from tests.minions.util import noop_nodes

SERVICES = 6


async def test_a_scheduler_restart_longer_than_two_intervals_is_not_poller_stale(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    """The scheduler's own absence is not a poller failure: no ``poller stale`` per service."""
    cfg = make_config(tmp_path, nats_server.url, noop_nodes(SERVICES, "Default"))
    stack = await Stack(cfg, nats_server.url).start()
    try:
        assert stack.scheduler is not None
        services = stack.scheduler.services
        await wait_for(
            lambda: all(rt.status is Status.UP for rt in services.values()), what="all UP"
        )
        await stack.scheduler.stop()
        await asyncio.sleep(3.0)  # six 0.5 s intervals without a scheduler
        restarted = time.time()
        await stack.start_scheduler()
        services = stack.scheduler.services
        # Polled again well past two intervals after the restart: the minion is
        # back, and the time the old code took to call every service stale passed.
        await wait_for(
            lambda: all(
                (rt.last_poll_at or 0.0) > restarted + 2.5 and rt.status is Status.UP
                for rt in services.values()
            ),
            what="polls of every service after the restart",
            timeout=15,
        )
        await asyncio.sleep(1.0)  # a sweep of the stale sweeper, an event's way to NATS
        assert events_seen.find(type="poller", action="stale") == []
    finally:
        await stack.stop()
