"""The minion registry: ListMinions, minion up/down, location unreachable/reachable, reconnects."""

from __future__ import annotations

import asyncio
from pathlib import Path

from vigil.v1 import poller_pb2, sink_pb2

from minion.monitors.base import Status
from minion.sink_client import SinkClient
from services.core.natsserver import NatsServer
from services.scheduler.minions import MinionRegistry, MinionSession
from services.scheduler.model import ServiceKey
from tests import pki as test_pki
from tests.helpers import (
    EventCollector,
    Stack,
    TcpTarget,
    free_port,
    make_config,
    nats_client,
    wait_for,
)
from tests.minions.util import list_minions, list_outages, noop_nodes, tcp_node


def kinds(events: EventCollector, *types: str) -> list[tuple[str, str]]:
    """(type, action) of every event of these types, in order."""
    return [(e["type"], e["action"]) for e in events.events if e["type"] in types]


async def crash(m: object) -> None:
    """Stop an in-process minion the way a crash would: no drain, no goodbye."""
    from minion.app import Minion

    assert isinstance(m, Minion)
    for task in list(m.runner._tasks):
        task.cancel()
    await m.tasks.close()
    if m._nc is not None:
        await m._nc.close()
    await m.monitors.close()


async def test_list_minions_and_minion_events(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    cfg = make_config(tmp_path, nats_server.url, noop_nodes(3, "paris"))
    stack = await Stack(cfg, nats_server.url).start(minion_locations=())
    try:
        m = await stack.start_minion(
            "paris", system_id="paris-1", spool_dir=str(tmp_path / "spool")
        )
        await wait_for(lambda: events_seen.find(type="minion", action="up"), what="minion up")
        up = events_seen.find(type="minion", action="up")[0]
        assert up["location"] == "paris"
        assert up["data"]["systemId"] == "paris-1"
        assert up["source"] == "scheduler"
        await wait_for(lambda: m.runner.stats.done >= 3, what="polls done")

        async def listed_with_polls() -> list[poller_pb2.Minion]:
            found = await list_minions(stack, "paris")
            return found if found and found[0].polls_done > 0 else []

        (listed,) = await wait_for(listed_with_polls, what="ListMinions with polls done")
        assert listed.system_id == "paris-1"
        assert listed.location == "paris"
        assert listed.status == poller_pb2.MINION_STATUS_UP
        assert listed.version
        assert listed.nats_connected
        assert listed.last_heartbeat.seconds > 0
        assert {"tcp", "noop"} <= set(listed.monitors)

        # A crash: the heartbeats stop, and after heartbeat_misses the minion is DOWN.
        await crash(m)
        stack.minions.remove(m)
        down = await wait_for(
            lambda: events_seen.find(type="minion", action="down"), what="minion down"
        )
        assert down[0]["data"]["systemId"] == "paris-1"
        assert "no heartbeat" in down[0]["data"]["reason"]
        lost = await wait_for(
            lambda: events_seen.find(type="location", action="unreachable"),
            what="location unreachable",
        )
        # A crash, unlike a goodbye, is the critical the catalogue gives it.
        assert lost[0]["severity"] == "critical"
        assert lost[0]["data"]["reason"] == "location paris unreachable: no live minion"
        (listed,) = await list_minions(stack, "paris")
        assert listed.status == poller_pb2.MINION_STATUS_DOWN  # still known, now DOWN

        # It comes back: minion up, location reachable.
        await stack.start_minion("paris", system_id="paris-1", spool_dir=str(tmp_path / "spool"))
        await wait_for(
            lambda: events_seen.find(type="location", action="reachable"), what="location reachable"
        )
        (listed,) = await list_minions(stack, "paris")
        assert listed.status == poller_pb2.MINION_STATUS_UP
        await asyncio.sleep(0.5)  # room for duplicates to show up
        assert kinds(events_seen, "minion", "location") == [
            ("minion", "up"),
            ("minion", "down"),
            ("location", "unreachable"),
            ("minion", "up"),
            ("location", "reachable"),
        ]
        reachable = events_seen.find(type="location", action="reachable")[0]
        assert reachable["location"] == "paris"
        assert reachable["data"]["systemId"] == "paris-1"
        assert events_seen.find(type="service") == []
    finally:
        await stack.stop()


async def test_goodbye_marks_the_minion_down_at_once(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    # 100 missed heartbeats would take 50 s: a quick DOWN can only come from the goodbye.
    cfg = make_config(
        tmp_path, nats_server.url, noop_nodes(1, "lyon"), scheduler={"heartbeat_misses": 100}
    )
    stack = await Stack(cfg, nats_server.url).start(minion_locations=())
    try:
        m = await stack.start_minion("lyon", system_id="lyon-1", spool_dir=str(tmp_path / "spool"))
        await wait_for(lambda: m.runner.stats.done >= 1, what="a poll")
        await stack.stop_minion(m)
        down = await wait_for(
            lambda: events_seen.find(type="minion", action="down"), what="minion down"
        )
        assert down[0]["data"]["reason"] == "minion stopped: shutdown"
        unreachable = await wait_for(
            lambda: events_seen.find(type="location", action="unreachable"),
            what="location unreachable",
        )
        assert unreachable[0]["location"] == "lyon"
        # Issue 10, defect 15: the last minion said goodbye (a clean stop): the
        # location is unreachable, but nothing failed — not a critical.
        assert unreachable[0]["data"]["reason"] == "minions stopped"
        assert unreachable[0]["severity"] == "warning"
        assert m.sink.backlog == 0
    finally:
        await stack.stop()


async def test_quick_reconnect_of_a_live_minion_is_no_event(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    # A wide heartbeat window (5 s), so that the reconnect surely falls inside it.
    cfg = make_config(
        tmp_path, nats_server.url, noop_nodes(2, "Default"), scheduler={"heartbeat_misses": 10}
    )
    stack = await Stack(cfg, nats_server.url).start(minion_locations=())
    assert stack.scheduler is not None
    try:
        m = await stack.start_minion("Default", system_id="d-1", spool_dir=str(tmp_path / "spool"))
        await wait_for(lambda: events_seen.find(type="minion", action="up"), what="minion up")
        # The scheduler drops the stream (as a broken link would); the minion dials again.
        record = stack.scheduler.registry.get("d-1")
        assert record is not None
        record.replaced.set()
        await wait_for(
            lambda: m.sink.sessions == 2 and m.sink.connected.is_set(), what="second session"
        )
        done = m.runner.stats.done
        await wait_for(lambda: m.runner.stats.done > done + 2, what="polling goes on")
        await asyncio.sleep(0.5)
        assert kinds(events_seen, "minion", "location") == [("minion", "up")]
        (listed,) = await list_minions(stack)
        assert listed.status == poller_pb2.MINION_STATUS_UP
    finally:
        await stack.stop()


async def test_scheduler_restart_resumes_minions_without_events(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    port = free_port()
    cfg = make_config(
        tmp_path,
        nats_server.url,
        noop_nodes(2, "Default"),
        scheduler={"listen": f"127.0.0.1:{port}", "heartbeat_misses": 10},
    )
    stack = await Stack(cfg, nats_server.url).start(minion_locations=())
    assert stack.scheduler is not None
    try:
        m = await stack.start_minion("Default", system_id="d-1", spool_dir=str(tmp_path / "spool"))
        await wait_for(lambda: events_seen.find(type="minion", action="up"), what="minion up")
        await stack.scheduler.stop()
        await wait_for(lambda: not m.sink.connected.is_set(), what="session lost")
        scheduler = await stack.start_scheduler()
        await wait_for(
            lambda: m.sink.connected.is_set(), timeout=20, what="session with the new scheduler"
        )
        record = scheduler.registry.get("d-1")
        assert record is not None and record.up
        rt = scheduler.services[ServiceKey("n0", "127.0.0.1", "Noop")]
        await wait_for(lambda: rt.last_poll_status is Status.UP, what="polling resumes")
        # The minion never went away: no minion up, no location event.
        await asyncio.sleep(0.5)
        assert kinds(events_seen, "minion", "location") == [("minion", "up")]
        assert m.sink.sessions == 2
    finally:
        await stack.stop()


async def test_last_minion_gone_ends_pending_polls_unknown_at_once(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    """A 10-minute TTL: the UNKNOWN comes from the lost location, not from the TTL; no outage."""
    target = await TcpTarget().start()
    cfg = make_config(tmp_path, nats_server.url, [tcp_node("n1", target.port, "rome", ttl="10m")])
    stack = await Stack(cfg, nats_server.url).start(minion_locations=())
    assert stack.scheduler is not None
    # A minion that takes requests and never answers them, then vanishes.
    silent = test_pki.minion_cert("rome", "silent")
    nc = await nats_client(nats_server.url, silent)
    swallowed: list[bytes] = []

    async def swallow(msg: object) -> None:
        swallowed.append(msg.data)  # type: ignore[attr-defined]

    await nc.subscribe("vigil.poll.rome", queue="vigil-minions-rome", cb=swallow)
    await nc.flush()
    hello = sink_pb2.MinionHello(system_id="silent", location="rome", version="test")
    sink = SinkClient(
        stack.scheduler.grpc_address,
        hello,
        lambda: sink_pb2.Heartbeat(nats_connected=True),
        credentials=test_pki.material(silent).channel_credentials,
    )
    session = asyncio.create_task(sink.run())
    try:
        await wait_for(lambda: swallowed, what="a request in flight")
        assert stack.scheduler.dispatcher is not None
        assert len(stack.scheduler.dispatcher.pending) == 1
        session.cancel()
        await asyncio.gather(session, return_exceptions=True)
        rt = stack.scheduler.services[ServiceKey("n1", "127.0.0.1", "Echo")]
        await wait_for(
            lambda: rt.last_reason == "location rome unreachable: no live minion",
            what="UNKNOWN for the location",
        )
        assert rt.last_poll_status is Status.UNKNOWN
        assert rt.open_outage_id is None
        assert await list_outages(stack) == []
        await wait_for(
            lambda: events_seen.find(type="location", action="unreachable"),
            what="location unreachable",
        )
        await asyncio.sleep(1.0)  # several more intervals: still one event for the site
        assert len(events_seen.find(type="location", action="unreachable")) == 1
        assert events_seen.find(type="service") == []
        assert rt.last_poll_status is Status.UNKNOWN
        assert "rome" in rt.last_reason
    finally:
        session.cancel()
        await asyncio.gather(session, return_exceptions=True)
        await nc.close()
        await stack.stop()
        await target.stop()


async def test_location_without_any_minion_is_reported_once_after_the_grace(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    cfg = make_config(
        tmp_path, nats_server.url, noop_nodes(3, "oslo") + noop_nodes(1, "Default", prefix="d")
    )
    stack = await Stack(cfg, nats_server.url).start(minion_locations=("Default",))
    try:
        found = await wait_for(
            lambda: events_seen.find(type="location", action="unreachable"),
            what="location unreachable",
        )
        assert found[0]["location"] == "oslo"
        await asyncio.sleep(1.0)
        assert [e["location"] for e in events_seen.find(type="location")] == ["oslo"]
    finally:
        await stack.stop()


async def test_registry_rules_without_a_network() -> None:
    """Resumed sessions, moves between locations, retention."""
    import time

    reg = MinionRegistry(0.5, 3, retention=60.0, max_records=2)

    def session(sid: str, loc: str, last: float = 0.0) -> MinionSession:
        return MinionSession(
            system_id=sid, location=loc, version="t", monitors=[], last_connected_at=last
        )

    reg.register(session("a", "x", last=time.time() - 0.5))  # rode out a scheduler restart
    assert reg._events == type(reg._events)()
    reg.register(session("b", "x", last=time.time() - 3600))  # back after an hour: a real "up"
    assert [(e.type, e.action) for e in reg._events] == [("minion", "up")]
    reg._events.clear()
    # "a" moves to location y: y has a minion, and x still has "b".
    reg.register(session("a", "y"))
    assert [(e.type, e.action, e.location) for e in reg._events] == [("minion", "up", "y")]
    reg._events.clear()
    b = reg.get("b")
    assert b is not None
    reg.goodbye(b, "shutdown")
    assert [(e.type, e.action) for e in reg._events] == [
        ("minion", "down"),
        ("location", "unreachable"),
    ]
    assert reg.available("x") is False and reg.reachable("x") is False
    # Forgotten at most max_records, closed DOWN ones first.
    reg.unregister(b)
    reg.register(session("c", "z"))
    reg.sweep()
    assert {s.system_id for s in reg.sessions()} == {"a", "c"}


def test_a_live_minion_gets_a_periodic_heartbeat_event() -> None:
    """RackHD's heartbeat: one ``heartbeat updated`` per live minion per period, none when down."""
    reg = MinionRegistry(0.5, 3, heartbeat_events=60.0)
    session = MinionSession("hb-1", "paris", "0.1.0", ["tcp"])
    reg.register(session)
    reg.take_events()  # minion up, location reachable
    start = session.heartbeat_event_at
    session.last_seen = start + 59.0
    reg.sweep(loop_now=start + 59.0)
    assert reg.take_events() == []  # not yet a period since it came up
    session.in_flight, session.polls_done, session.last_seen = 3, 42, start + 61.0
    reg.sweep(loop_now=start + 61.0)
    (event,) = reg.take_events()
    assert (event.type, event.action, event.severity) == ("heartbeat", "updated", "information")
    assert event.data["systemId"] == "hb-1" and event.location == "paris"
    assert event.data["inFlight"] == 3 and event.data["pollsDone"] == 42
    session.last_seen = start + 90.0
    reg.sweep(loop_now=start + 90.0)
    assert reg.take_events() == []  # one per period
    session.last_seen = start + 122.0
    reg.sweep(loop_now=start + 122.0)
    assert [e.action for e in reg.take_events()] == ["updated"]
    # A minion that is down gets none.
    reg.sweep(loop_now=start + 200.0)
    assert [(e.type, e.action) for e in reg.take_events()][:1] == [("minion", "down")]
    reg.sweep(loop_now=start + 400.0)
    assert all(e.type != "heartbeat" for e in reg.take_events())
