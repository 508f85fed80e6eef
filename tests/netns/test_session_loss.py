"""Issue 10, defect 8: store-and-forward starts ``autonomous_after`` after the cut, not after TCP notices.

A site's link is cut in a network namespace. The minion must notice the dead
scheduler session within a bounded time (heartbeats unanswered) and count
``autonomous_after`` from the last word it heard, so that it polls on its
own ``autonomous_after`` (plus a little) after the cut; a target that dies
during the cut then leaves an outage with its real times after the heal.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from minion.monitors.base import Status
from services.core.timeutil import from_timestamp
from services.scheduler.model import ServiceKey
from tests.helpers import wait_for
from tests.minions.util import MinionProcess
from tests.netns.conftest import Sites
from tests.netns.test_sites import (
    LOC_A,
    LOC_B,
    SLOW,
    central,
    outage_during_cut,
    peek_spool,
    tcp_services,
    up_with_schedule,
)

pytestmark = pytest.mark.netns

#: Production-like proportions, scaled down: the scheduler's heartbeat interval and the
#: minion's autonomous_after (defaults 5 s and 15 s).
HEARTBEAT = 2.0
AUTONOMOUS_AFTER = 6.0
#: The service's phase in its 500 ms grid, the site poller's tick, the poll itself.
SLACK = 2.0


async def test_a_cut_makes_the_minion_autonomous_autonomous_after_the_cut(
    tmp_path: Path, sites: Sites, minion_processes: list[MinionProcess]
) -> None:
    port = 7011
    sites.a.start_target(port, tmp_path / "target-a.log")
    target_b = sites.b.start_target(port, tmp_path / "target-b.log")
    nodes = [
        tcp_services("a", sites.a.target_addr, port, LOC_A, ["Echo"]),
        tcp_services("b", sites.b.target_addr, port, LOC_B, ["Echo"]),
    ]
    async with central(
        tmp_path,
        sites,
        nodes,
        scheduler={"heartbeat_interval": f"{HEARTBEAT}s", "heartbeat_misses": 3},
        locations={LOC_B: {"store_and_forward": True}},
    ) as c:
        c.minion(tmp_path, minion_processes, sites.a, LOC_A, "a-1")
        b = c.minion(
            tmp_path,
            minion_processes,
            sites.b,
            LOC_B,
            "b-1",
            autonomous_after=f"{AUTONOMOUS_AFTER}s",
        )
        b_rt = c.services[ServiceKey("b", sites.b.target_addr, "Echo")]
        spool = tmp_path / "spool" / "b-1"
        await up_with_schedule(b_rt, spool)
        await c.settled("a-1", "b-1")

        sites.b.cut()
        cut_at = time.time()
        first = await wait_for(
            lambda: peek_spool(spool)[:1],
            timeout=SLOW,
            what="site B polls on its own",
            interval=0.1,
        )
        started = from_timestamp(first[0].started_at)
        # Counted from the last contact (results are acknowledged every 500 ms), not
        # from the moment the silence was noticed (seconds later).
        assert started - cut_at < AUTONOMOUS_AFTER + SLACK, f"{started - cut_at:.1f}s"
        assert started - cut_at > AUTONOMOUS_AFTER - HEARTBEAT - 1.0, f"{started - cut_at:.1f}s"

        # A target that dies during the cut leaves its outage, with the site's times.
        outage = await outage_during_cut(c, sites.b, target_b, port, spool, cut_at, b_rt)
        assert outage.service.node_id == "b"

        # The minion says how many results it spooled, not what was left after the replay.
        ends = await wait_for(
            lambda: re.search(r"autonomous polling ends \((\d+) result\(s\) spooled", b.output()),
            timeout=SLOW,
            what="the end of autonomous polling logged",
        )
        assert int(ends.group(1)) >= 3, ends.group(0)


#: Defect 7: a 30 s cut (longer than a flush's or a drain's timeout during it).
LONG_CUT = 30.0
#: After the heal, live requests reach the minion again within this long (39-41 s before).
LIVE_AGAIN = 20.0


async def test_after_a_long_cut_the_minion_gets_live_requests_soon(
    tmp_path: Path, sites: Sites, minion_processes: list[MinionProcess]
) -> None:
    port = 7012
    sites.b.start_target(port, tmp_path / "target-b.log")
    nodes = [tcp_services("b", sites.b.target_addr, port, LOC_B, ["Echo"])]
    async with central(tmp_path, sites, nodes, locations={LOC_B: {"store_and_forward": True}}) as c:
        c.minion(tmp_path, minion_processes, sites.b, LOC_B, "b-1", autonomous_after="1s")
        b_rt = c.services[ServiceKey("b", sites.b.target_addr, "Echo")]
        spool = tmp_path / "spool" / "b-1"
        await up_with_schedule(b_rt, spool)
        await c.settled("b-1")
        sites.b.cut()
        await asyncio.sleep(LONG_CUT)
        sites.b.restore()
        restored_at = time.time()
        assert c.stack.scheduler is not None
        registry = c.stack.scheduler.registry

        # A live result: polled after the heal by a minion taking requests again (not one
        # of its own polls, spooled and replayed, while it still counts itself cut off).
        def live() -> bool:
            rec = registry.get("b-1")
            return (
                rec is not None
                and rec.up
                and rec.nats_connected
                and not rec.autonomous
                and not rec.intake_paused
                and (b_rt.last_poll_at or 0) > restored_at + 1.0
                and b_rt.last_poll_status is Status.UP
            )

        await wait_for(live, timeout=LIVE_AGAIN, what=f"a live result within {LIVE_AGAIN}s")
        done = b_rt.last_poll_at or 0
        # And results keep coming: the scheduler is not told of a minion it cannot reach.
        await wait_for(
            lambda: (b_rt.last_poll_at or 0) > done + 1.0 and b_rt.last_poll_status is Status.UP,
            timeout=5.0,
            what="live results keep coming",
        )
