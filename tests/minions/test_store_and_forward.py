"""Store-and-forward: the schedule reaches the minion, polling goes on while cut off,
the replay records what happened with its real times."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from vigil.v1 import common_pb2, poll_pb2, sink_pb2

from minion.monitors.base import Status
from minion.sink_client import SinkClient
from minion.spool import DiskSpool
from services.core.natsserver import NatsServer
from services.core.timeutil import from_timestamp, parse_iso, set_timestamp
from services.scheduler.model import ServiceKey
from tests.helpers import EventCollector, Stack, TcpTarget, free_port, make_config, wait_for
from tests.minions.util import list_outages, noop_nodes, tcp_node
from tests.pki import material, minion_cert

KEY = ServiceKey("n1", "127.0.0.1", "Echo")


def sf_config(tmp_path: Path, nats_url: str, nodes: list[dict[str, Any]], **scheduler: Any) -> Any:
    return make_config(
        tmp_path,
        nats_url,
        nodes,
        scheduler={"listen": f"127.0.0.1:{free_port()}"} | scheduler,
        locations={"edge": {"store_and_forward": True}},
    )


def spooled(m: Any) -> list[poll_pb2.PollResult]:
    """What the minion has spooled and not replayed yet (read without consuming)."""
    return m.spool.read(100_000)[0]  # type: ignore[no-any-return]


async def test_schedule_reaches_the_minion_once_and_is_kept_on_disk(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    nodes = [
        tcp_node("n1", 9, "edge", interval="2s", timeout="1s", ttl="1500ms"),
        *noop_nodes(2, "other", prefix="o"),
    ]
    cfg = sf_config(tmp_path, nats_server.url, nodes)
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    assert stack.scheduler is not None
    spool = str(tmp_path / "spool")
    try:
        m = await stack.start_minion("edge", system_id="edge-1", spool_dir=spool)
        await wait_for(lambda: m.site.schedules_received == 1, what="the schedule")
        assert m.site.schedule is not None
        (entry,) = m.site.schedule.services  # only its own location's services
        assert (entry.service.node_id, entry.service.ip, entry.service.service) == (
            "n1",
            "127.0.0.1",
            "Echo",
        )
        assert entry.monitor == "tcp"
        assert entry.params["port"] == 9
        assert entry.interval.seconds == 2 and entry.ttl.ToMilliseconds() == 1500
        assert (tmp_path / "spool" / "edge-1" / "schedule.pb").exists()
        # A new session (same minion) holding the same digest is not sent it again.
        record = stack.scheduler.registry.get("edge-1")
        assert record is not None
        record.replaced.set()
        await wait_for(
            lambda: m.sink.sessions == 2 and m.sink.connected.is_set(), what="second session"
        )
        await asyncio.sleep(0.3)
        assert m.site.schedules_received == 1
        await stack.stop_minion(m)
        # A restarted minion has it from disk before any session.
        again = await stack.start_minion("edge", system_id="edge-1", spool_dir=spool)
        assert again.site.schedule is not None and again.site.digest == m.site.digest
    finally:
        await stack.stop()


async def test_store_and_forward_off_drops_the_schedule(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    nodes = [tcp_node("n1", 9, "edge")]
    spool = str(tmp_path / "spool")
    cfg = sf_config(tmp_path / "a", nats_server.url, nodes)
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    try:
        m = await stack.start_minion("edge", system_id="edge-1", spool_dir=spool)
        await wait_for(lambda: m.site.enabled, what="the schedule")
    finally:
        await stack.stop()
    off = make_config(tmp_path / "b", nats_server.url, nodes)  # the operator turned it off
    stack = await Stack(off, nats_server.url).start(events=False, minion_locations=())
    try:
        m = await stack.start_minion("edge", system_id="edge-1", spool_dir=spool)
        assert not m.site.enabled
        assert not (tmp_path / "spool" / "edge-1" / "schedule.pb").exists()
    finally:
        await stack.stop()


async def test_outage_during_a_partition_is_recorded_with_its_real_times(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    target = await TcpTarget().start()
    nodes = [tcp_node("n1", target.port, "edge", interval="300ms", timeout="1s", ttl="1s")]
    cfg = sf_config(tmp_path, nats_server.url, nodes)
    stack = await Stack(cfg, nats_server.url).start(minion_locations=())
    assert stack.scheduler is not None
    try:
        m = await stack.start_minion(
            "edge", system_id="edge-1", spool_dir=str(tmp_path / "spool"), autonomous_after="500ms"
        )
        rt = stack.scheduler.services[KEY]
        await wait_for(lambda: rt.status is Status.UP and m.site.enabled, what="UP, schedule held")

        # The central site goes away (the scheduler stops; its store stays).
        await stack.scheduler.stop()
        cut_at = time.time()
        await wait_for(lambda: m.site.autonomous, what="autonomous polling")
        assert not m.taking_shared  # not taking location requests meanwhile
        await wait_for(
            lambda: any(r.status == common_pb2.POLL_STATUS_UP for r in spooled(m)),
            what="spooled UP",
        )
        await target.stop()
        died_at = time.time()
        await wait_for(
            lambda: spooled(m)[-1].status == common_pb2.POLL_STATUS_DOWN, what="spooled DOWN"
        )
        await target.start()
        back_at = time.time()
        await wait_for(
            lambda: spooled(m)[-1].status == common_pb2.POLL_STATUS_UP, what="spooled UP again"
        )

        # The central site returns: the minion replays, the scheduler records the outage as it was.
        restored_at = time.time()
        scheduler = await stack.start_scheduler()
        await wait_for(
            lambda: m.spool.pending == 0 and m.sink.replayed > 0, timeout=20, what="replay done"
        )
        await wait_for(
            lambda: not m.site.autonomous and m.taking_shared, what="back to taking requests"
        )

        async def closed_outage() -> list[Any]:
            return [
                o
                for o in await list_outages(stack)
                if o.HasField("closed_at") and o.closed_at.seconds
            ]

        (outage,) = await wait_for(closed_outage, what="the outage, closed")
        opened, closed = from_timestamp(outage.opened_at), from_timestamp(outage.closed_at)
        assert cut_at < died_at <= opened < back_at <= closed < restored_at
        assert "refused" in outage.reason
        lost = await wait_for(
            lambda: events_seen.find(type="service", action="lost"), what="service lost"
        )
        regained = await wait_for(
            lambda: events_seen.find(type="service", action="regained"), what="regained"
        )
        assert died_at <= parse_iso(lost[0]["createdAt"]) + 0.001 < back_at
        assert back_at <= parse_iso(regained[0]["createdAt"]) + 0.001 < restored_at
        await wait_for(lambda: scheduler.services[KEY].status is Status.UP, what="UP after all")
        assert len(events_seen.find(type="service", action="lost")) == 1
    finally:
        await stack.stop()
        await target.stop()


async def test_replayed_results_are_checked(tmp_path: Path, nats_server: NatsServer) -> None:
    """Unknown services, other locations, the future and stale results are ignored; the rest applied in order."""
    nodes = [tcp_node("n1", 9, "edge", interval="1h"), tcp_node("n2", 9, "far", interval="1h")]
    cfg = sf_config(tmp_path, nats_server.url, nodes)
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    assert stack.scheduler is not None
    wall = time.time()

    def res(node: str, status: int, at: float) -> poll_pb2.PollResult:
        r = poll_pb2.PollResult(
            request_id="local-x",
            service=common_pb2.ServiceRef(node_id=node, ip="127.0.0.1", service="Echo"),
            status=status,  # type: ignore[arg-type]
            reason="replayed",
            system_id="edge-x",
        )
        set_timestamp(r.finished_at, at)
        return r

    spool = DiskSpool(tmp_path / "spool", max_bytes=1 << 20, max_age=3600)
    up, down = common_pb2.POLL_STATUS_UP, common_pb2.POLL_STATUS_DOWN
    for r in [
        res("n1", up, wall - 50),
        res("ghost", down, wall - 45),  # not configured
        res("n2", down, wall - 44),  # another location's service
        res("n1", down, wall - 40),
        res("n1", down, wall - 42),  # older than the one before: stale
        res("n1", up, wall + 3600),  # from the future
        res("n1", up, wall - 30),
    ]:
        spool.append(r)
    hello = sink_pb2.MinionHello(system_id="edge-x", location="edge", version="test")
    # The scheduler believes the certificate, not the hello: they agree here.
    tls = material(minion_cert("edge", "edge-x"))
    sink = SinkClient(
        stack.scheduler.grpc_address,
        hello,
        lambda: sink_pb2.Heartbeat(nats_connected=True),
        spool=spool,
        credentials=tls.channel_credentials,
    )
    session = asyncio.create_task(sink.run())
    try:
        await wait_for(lambda: spool.pending == 0, what="replayed")
        assert sink.replayed == 7
        assert sink.acked == 3 and sink.late == 4
        rt = stack.scheduler.services[KEY]
        await wait_for(lambda: rt.last_poll_at is not None, what="applied")
        (outage,) = await wait_for(lambda: list_outages(stack), what="outage")
        assert abs(from_timestamp(outage.opened_at) - (wall - 40)) < 0.01
        assert abs(from_timestamp(outage.closed_at) - (wall - 30)) < 0.01
        assert stack.scheduler.services[ServiceKey("n2", "127.0.0.1", "Echo")].last_poll_at is None
    finally:
        session.cancel()
        await asyncio.gather(session, return_exceptions=True)
        await stack.stop()
