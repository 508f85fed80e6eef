"""Minions at two real sites (network namespaces): routing, partitions, store-and-forward, failover.

NATS and the scheduler run on the host side (the hub address); each site has
a minion process inside it and a target only the site can reach.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from vigil.v1 import common_pb2, poll_pb2

from minion.monitors.base import Status
from minion.spool import DB_FILE, DiskSpool
from services.core.natsserver import NatsServer
from services.core.pki import Identity
from services.core.timeutil import from_timestamp, parse_iso
from services.scheduler.model import ServiceKey, ServiceRuntime
from tests import pki as test_pki
from tests.helpers import EventCollector, Stack, free_port, make_config, wait_for
from tests.minions.util import MinionProcess, list_outages
from tests.netns.conftest import Site, Sites

pytestmark = pytest.mark.netns

LOC_A, LOC_B = "siteA", "siteB"
#: Generous: minions are processes and reconnect with back-off (up to 10 s).
SLOW = 60.0


@dataclass
class Central:
    """The central site on the hub: NATS, event service, scheduler; and the events seen."""

    stack: Stack
    nats: NatsServer
    events: EventCollector

    @property
    def services(self) -> Mapping[ServiceKey, ServiceRuntime]:
        assert self.stack.scheduler is not None
        return self.stack.scheduler.services

    @property
    def scheduler_address(self) -> str:
        assert self.stack.scheduler is not None
        return self.stack.scheduler.grpc_address

    def minion(
        self,
        tmp: Path,
        procs: list[MinionProcess],
        site: Site,
        location: str,
        system_id: str,
        **settings: Any,
    ) -> MinionProcess:
        """A minion process inside ``site``."""
        m = MinionProcess(
            tmp,
            nats_url=self.nats.url,
            scheduler=self.scheduler_address,
            location=location,
            system_id=system_id,
            prefix=site.exec_prefix,
            **settings,
        ).start()
        procs.append(m)
        return m

    async def settled(self, *system_ids: str) -> int:
        """Wait until these minions are UP and the events of their arrival have come in.

        Returns the number of events seen so far: what follows is the test's doing.
        """
        assert self.stack.scheduler is not None
        registry = self.stack.scheduler.registry

        def arrived() -> bool:
            for sid in system_ids:
                rec = registry.get(sid)
                if rec is None or not rec.up or not rec.nats_connected:
                    return False
                ups = [
                    e
                    for e in self.events.find(type="minion", action="up")
                    if e["data"]["systemId"] == sid
                ]
                if not ups:
                    return False
            # A location reported unreachable before its first minion came (the start-up
            # scan) must have its "reachable" in as well.
            for loc in {registry.get(sid).location for sid in system_ids}:  # type: ignore[union-attr]
                actions = [e["action"] for e in self.events.find(type="location", location=loc)]
                if actions and actions[-1] != "reachable":
                    return False
            return True

        await wait_for(arrived, timeout=SLOW, what=f"minions {system_ids} up and announced")
        return len(self.events.events)

    def of(self, *types: str, after: int = 0) -> list[tuple[str, str, str | None]]:
        """(type, action, location) of the events of these types, from index ``after``."""
        return [
            (e["type"], e["action"], e.get("location"))
            for e in self.events.events[after:]
            if e["type"] in types
        ]


@asynccontextmanager
async def central(
    tmp: Path, sites: Sites, nodes: list[dict[str, Any]], **sections: Any
) -> AsyncIterator[Central]:
    """NATS bound to the hub address only, and the scheduler's gRPC on it too.

    Both run as in production (TLS; for NATS a user per identity); their
    certificates name the hub address, which the sites' minions verify.
    """
    pki = test_pki.current()
    for server in (Identity("nats", "nats"), Identity("scheduler", "scheduler")):
        pki.ensure(server, hosts=[sites.hub])
    nats = NatsServer(tmp / "nats", host=sites.hub, pki=pki).start()
    unsubscribe = test_pki.on_change(nats.reload)  # minions' certificates, issued as they start
    events = await EventCollector().start(nats.url)
    scheduler = {
        "listen": f"{sites.hub}:{free_port()}",
        "heartbeat_interval": "0.5s",
        "heartbeat_misses": 3,
    }
    cfg = make_config(
        tmp, nats.url, nodes, scheduler=scheduler | sections.pop("scheduler", {}), **sections
    )
    stack = Stack(cfg, nats.url)
    try:
        await stack.start(minion_locations=())
        yield Central(stack, nats, events)
    finally:
        await stack.stop()
        await events.stop()
        unsubscribe()
        nats.stop()


def tcp_services(
    node_id: str, address: str, port: int, location: str, names: list[str], **svc: Any
) -> dict[str, Any]:
    return {
        "id": node_id,
        "location": location,
        "interfaces": [
            {
                "ip": address,
                "services": [
                    {
                        "name": n,
                        "monitor": "tcp",
                        "params": {"port": port},
                        "interval": "500ms",
                        "ttl": "1s",
                        **svc,
                    }
                    for n in names
                ],
            }
        ],
    }


def peek_spool(directory: Path) -> list[poll_pb2.PollResult]:
    """A minion's spool as it is on disk, read-only (the minion is writing it)."""
    path = directory / DB_FILE
    if not path.exists():
        return []
    # Read-only, through SQLite: the WAL lets us read while the minion writes.
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        try:
            rows = db.execute("SELECT payload FROM results ORDER BY seq").fetchall()
        except sqlite3.OperationalError:
            return []  # the minion has created the file, not its table yet
    return [poll_pb2.PollResult.FromString(payload) for (payload,) in rows]


async def up_with_schedule(rt: ServiceRuntime, spool: Path) -> None:
    """Wait until the site's service is UP and its minion holds the store-and-forward schedule."""
    await wait_for(
        lambda: rt.status is Status.UP and (spool / "schedule.pb").exists(),
        timeout=SLOW,
        what="UP, schedule",
    )


async def outage_during_cut(
    c: Central,
    site: Site,
    target: subprocess.Popen[bytes],
    port: int,
    spool: Path,
    cut_at: float,
    rt: ServiceRuntime,
) -> Any:
    """Kill ``site``'s target during its cut and bring it back, heal the link; the closed outage.

    The minion polls on its own already. Its open and close times must be
    those the site saw, inside the cut.
    """
    log = spool.parent.parent / f"target-{site.name}.log"
    target.kill()  # the target dies during the cut...
    target.wait(10)
    died_at = time.time()
    await wait_for(
        lambda: peek_spool(spool)[-1].status == common_pb2.POLL_STATUS_DOWN,
        timeout=SLOW,
        what="DOWN spooled",
    )
    site.start_target(port, log)  # ...and comes back, still during the cut
    back_at = time.time()
    await wait_for(
        lambda: peek_spool(spool)[-1].status == common_pb2.POLL_STATUS_UP,
        timeout=SLOW,
        what="UP spooled",
    )
    assert rt.open_outage_id is None  # centrally, nothing could be known meanwhile
    restored_at = time.time()
    site.restore()

    async def closed() -> list[Any]:
        return [o for o in await list_outages(c.stack) if o.closed_at.seconds]

    (outage,) = await wait_for(closed, timeout=SLOW, what="the outage of the cut, closed")
    opened_at, closed_at = from_timestamp(outage.opened_at), from_timestamp(outage.closed_at)
    assert cut_at < died_at <= opened_at < back_at <= closed_at < restored_at
    return outage


async def test_a_sites_target_is_up_only_through_its_own_minion(
    tmp_path: Path, sites: Sites, minion_processes: list[MinionProcess]
) -> None:
    port = 7001
    sites.a.start_target(port, tmp_path / "target-a.log")
    sites.b.start_target(port, tmp_path / "target-b.log")
    nodes = [
        tcp_services("a-own", sites.a.target_addr, port, LOC_A, ["Echo"]),
        tcp_services("b-own", sites.b.target_addr, port, LOC_B, ["Echo"]),
        # The same targets, polled from the wrong site.
        tcp_services("a-from-b", sites.a.target_addr, port, LOC_B, ["Echo"]),
        tcp_services("b-from-a", sites.b.target_addr, port, LOC_A, ["Echo"]),
    ]
    async with central(tmp_path, sites, nodes) as c:
        c.minion(tmp_path, minion_processes, sites.a, LOC_A, "a-1")
        c.minion(tmp_path, minion_processes, sites.b, LOC_B, "b-1")

        def rt(node: str, addr: str) -> ServiceRuntime:
            return c.services[ServiceKey(node, addr, "Echo")]

        own = [rt("a-own", sites.a.target_addr), rt("b-own", sites.b.target_addr)]
        wrong = [rt("a-from-b", sites.a.target_addr), rt("b-from-a", sites.b.target_addr)]
        await wait_for(
            lambda: all(r.status is Status.UP for r in own), timeout=SLOW, what="own targets UP"
        )
        await wait_for(
            lambda: all(r.status is Status.DOWN for r in wrong),
            timeout=SLOW,
            what="others' targets DOWN",
        )
        for r in wrong:
            assert "unreachable" in r.last_reason.lower(), r.last_reason
        # And the host (the central site) cannot reach either target at all.
        import socket

        for addr in (sites.a.target_addr, sites.b.target_addr):
            with pytest.raises(OSError, match="No route to host"):
                socket.create_connection((addr, port), timeout=2).close()


async def test_cutting_a_site_makes_its_services_unknown_with_one_event_and_no_outage(
    tmp_path: Path, sites: Sites, minion_processes: list[MinionProcess]
) -> None:
    port = 7002
    sites.a.start_target(port, tmp_path / "target-a.log")
    sites.b.start_target(port, tmp_path / "target-b.log")
    names = [f"Echo{i}" for i in range(5)]
    nodes = [
        tcp_services("a", sites.a.target_addr, port, LOC_A, names),
        tcp_services("b", sites.b.target_addr, port, LOC_B, names),
    ]
    async with central(tmp_path, sites, nodes) as c:
        c.minion(tmp_path, minion_processes, sites.a, LOC_A, "a-1")
        c.minion(tmp_path, minion_processes, sites.b, LOC_B, "b-1")
        a_rts = [c.services[ServiceKey("a", sites.a.target_addr, n)] for n in names]
        b_rts = [c.services[ServiceKey("b", sites.b.target_addr, n)] for n in names]
        await wait_for(
            lambda: all(r.status is Status.UP for r in a_rts + b_rts), timeout=SLOW, what="all UP"
        )
        before = await c.settled("a-1", "b-1")

        sites.b.cut()
        await wait_for(
            lambda: ("location", "unreachable", LOC_B) in c.of("location", after=before),
            timeout=SLOW,
            what="B unreachable",
        )
        await wait_for(
            lambda: all(r.last_poll_status is Status.UNKNOWN for r in b_rts),
            timeout=SLOW,
            what="B's polls UNKNOWN",
        )
        cut_seen = time.time()
        await wait_for(
            lambda: all(
                (r.last_poll_at or 0) > cut_seen and r.last_poll_status is Status.UP for r in a_rts
            ),
            timeout=SLOW,
            what="site A polled on",
        )
        assert all(r.status is Status.UP for r in b_rts)  # last known state kept
        assert all(r.open_outage_id is None for r in b_rts)
        assert all("siteB" in r.last_reason for r in b_rts)

        sites.b.restore()
        await wait_for(
            lambda: ("location", "reachable", LOC_B) in c.of("location", after=before),
            timeout=SLOW,
            what="B reachable again",
        )
        back = time.time()
        await wait_for(
            lambda: all(
                (r.last_poll_at or 0) > back and r.last_poll_status is Status.UP for r in b_rts
            ),
            timeout=SLOW,
            what="B polled again",
        )
        # One event per transition, none per service; nothing else happened.
        assert c.of(
            "minion", "location", "service", "outage", "interface", "node", after=before
        ) == [
            ("minion", "down", LOC_B),
            ("location", "unreachable", LOC_B),
            ("minion", "up", LOC_B),
            ("location", "reachable", LOC_B),
        ]
        assert await list_outages(c.stack) == []


async def test_store_and_forward_records_an_outage_during_the_cut_with_its_real_times(
    tmp_path: Path, sites: Sites, minion_processes: list[MinionProcess]
) -> None:
    port = 7003
    sites.a.start_target(port, tmp_path / "target-a.log")
    target_b = sites.b.start_target(port, tmp_path / "target-b.log")
    nodes = [
        tcp_services("a", sites.a.target_addr, port, LOC_A, ["Echo"]),
        tcp_services("b", sites.b.target_addr, port, LOC_B, ["Echo"]),
    ]
    async with central(tmp_path, sites, nodes, locations={LOC_B: {"store_and_forward": True}}) as c:
        c.minion(tmp_path, minion_processes, sites.a, LOC_A, "a-1")
        c.minion(tmp_path, minion_processes, sites.b, LOC_B, "b-1", autonomous_after="1s")
        b_rt = c.services[ServiceKey("b", sites.b.target_addr, "Echo")]
        spool = tmp_path / "spool" / "b-1"
        await up_with_schedule(b_rt, spool)
        before = await c.settled("a-1", "b-1")

        sites.b.cut()
        cut_at = time.time()
        await wait_for(
            lambda: any(r.status == common_pb2.POLL_STATUS_UP for r in peek_spool(spool)),
            timeout=SLOW,
            what="site B polls on its own",
        )
        outage = await outage_during_cut(c, sites.b, target_b, port, spool, cut_at, b_rt)
        assert outage.service.node_id == "b"
        await wait_for(
            lambda: ("location", "reachable", LOC_B) in c.of("location", after=before),
            timeout=SLOW,
            what="reachable",
        )
        seen = await wait_for(
            lambda: (
                (e := c.of("minion", "location", "service", after=before)) and len(e) >= 6 and e
            ),
            timeout=SLOW,
            what="the events of the cut",
        )
        # One of each; the replayed service events may come before or after the site's.
        assert sorted(seen) == sorted(
            [
                ("minion", "down", LOC_B),
                ("location", "unreachable", LOC_B),
                ("service", "lost", LOC_B),
                ("service", "regained", LOC_B),
                ("minion", "up", LOC_B),
                ("location", "reachable", LOC_B),
            ]
        )
        assert seen.index(("service", "lost", LOC_B)) < seen.index(("service", "regained", LOC_B))
        assert seen[:2] == [("minion", "down", LOC_B), ("location", "unreachable", LOC_B)]
        lost = c.events.find(type="service", action="lost")[0]
        assert lost["data"]["outageId"] == outage.id
        # The events carry the real times too.
        assert abs(parse_iso(lost["createdAt"]) - from_timestamp(outage.opened_at)) < 0.002
        regained = c.events.find(type="service", action="regained")[0]
        assert abs(parse_iso(regained["createdAt"]) - from_timestamp(outage.closed_at)) < 0.002


async def test_two_minions_share_a_site_and_one_takes_over_when_the_other_dies(
    tmp_path: Path, sites: Sites, minion_processes: list[MinionProcess]
) -> None:
    port = 7004
    sites.a.start_target(port, tmp_path / "target-a.log")
    names = [f"Echo{i}" for i in range(8)]
    nodes = [tcp_services("a", sites.a.target_addr, port, LOC_A, names)]
    async with central(tmp_path, sites, nodes) as c:
        first = c.minion(tmp_path, minion_processes, sites.a, LOC_A, "a-1")
        c.minion(tmp_path, minion_processes, sites.a, LOC_A, "a-2")
        assert c.stack.scheduler is not None
        registry = c.stack.scheduler.registry

        def polls(sid: str) -> int:
            rec = registry.get(sid)
            return rec.polls_done if rec is not None else 0

        await wait_for(
            lambda: polls("a-1") > 0 and polls("a-2") > 0, timeout=SLOW, what="both share the work"
        )
        rts = [c.services[ServiceKey("a", sites.a.target_addr, n)] for n in names]
        await wait_for(lambda: all(r.status is Status.UP for r in rts), timeout=SLOW, what="all UP")
        before = await c.settled("a-1", "a-2")
        done_before = polls("a-2")

        first.kill()
        killed_at = time.time()
        await wait_for(
            lambda: all(
                (r.last_poll_at or 0) > killed_at and r.last_poll_status is Status.UP for r in rts
            ),
            timeout=SLOW,
            what="a-2 polls everything",
        )
        await wait_for(lambda: c.of("minion", after=before), timeout=SLOW, what="minion down")
        await wait_for(
            lambda: polls("a-2") > done_before, timeout=SLOW, what="a-2 reports its polls"
        )
        assert all(r.status is Status.UP for r in rts)
        assert await list_outages(c.stack) == []
        assert c.of("minion", "location", "service", "outage", after=before) == [
            ("minion", "down", LOC_A)
        ]


def test_peek_reads_what_the_spool_writes(tmp_path: Path) -> None:
    """peek_spool reads the store minion/spool.py writes."""
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, max_age=3600)
    spool.append(poll_pb2.PollResult(request_id="r1"))
    assert [r.request_id for r in peek_spool(tmp_path)] == ["r1"]
    spool.close()
