"""End to end through real NATS, gRPC and SQLite: outages, events, UNKNOWN."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from vigil.v1 import poller_pb2, poller_pb2_grpc

from minion.monitors.base import Status
from services.core.natsserver import NatsServer
from services.scheduler.model import ServiceKey
from tests.helpers import EventCollector, Stack, TcpTarget, make_config, wait_for
from tests.pki import operator_channel


def tcp_node(
    port: int, location: str = "Default", node_id: str = "node-1", **svc: Any
) -> dict[str, Any]:
    return {
        "id": node_id,
        "label": "test node",
        "location": location,
        "interfaces": [
            {
                "ip": "127.0.0.1",
                "services": [{"name": "Echo", "monitor": "tcp", "params": {"port": port}, **svc}],
            }
        ],
    }


KEY = ServiceKey("node-1", "127.0.0.1", "Echo")


async def outages(stack: Stack, state: int = 0) -> list[poller_pb2.Outage]:
    assert stack.scheduler is not None
    async with operator_channel(stack.scheduler.grpc_address) as ch:
        resp = await poller_pb2_grpc.PollerStub(ch).ListOutages(
            poller_pb2.ListOutagesRequest(state=state)
        )
    return list(resp.outages)


async def test_target_down_then_up_opens_and_closes_outage_with_events(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    target = await TcpTarget().start()
    cfg = make_config(tmp_path, nats_server.url, [tcp_node(target.port)])
    stack = await Stack(cfg, nats_server.url).start()
    try:
        rt = stack.scheduler.services[KEY]  # type: ignore[union-attr]
        await wait_for(lambda: rt.status is Status.UP, what="service UP")

        await target.stop()
        lost = await wait_for(
            lambda: events_seen.find(type="service", action="lost"), what="service lost event"
        )
        event = lost[0]
        # The common event format, as the product contract shows it.
        assert event["version"] == "1"
        assert event["severity"] == "major"
        assert event["typeId"] == "node-1/127.0.0.1/Echo"
        assert event["nodeId"] == "node-1"
        assert event["location"] == "Default"
        assert event["source"] == "scheduler"
        assert event["createdAt"].endswith("Z")
        assert "connection refused" in event["data"]["reason"]
        open_outages = await outages(stack, poller_pb2.OUTAGE_STATE_OPEN)
        assert len(open_outages) == 1
        assert event["data"]["outageId"] == open_outages[0].id
        assert open_outages[0].lost_event_id == event["id"]
        assert "vigil.events.service.lost.major.node-1" in events_seen.subjects

        await target.start()
        regained = await wait_for(
            lambda: events_seen.find(type="service", action="regained"),
            what="service regained event",
        )
        assert regained[0]["data"]["outageId"] == open_outages[0].id
        closed = await wait_for(
            lambda: outages(stack, poller_pb2.OUTAGE_STATE_CLOSED), what="closed outage"
        )
        assert closed[0].id == open_outages[0].id
        assert closed[0].regained_event_id == regained[0]["id"]
        assert closed[0].closed_at.ToDatetime() >= closed[0].opened_at.ToDatetime()
        assert await outages(stack, poller_pb2.OUTAGE_STATE_OPEN) == []
        # One of each: flapping polls in between did not duplicate anything.
        assert len(events_seen.find(type="service", action="lost")) == 1
        assert len(events_seen.find(type="outage", action="opened")) == 1
    finally:
        await stack.stop()
        await target.stop()


async def test_no_minion_at_location_is_unknown_at_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    target = await TcpTarget().start()
    # A 10-minute TTL: the UNKNOWN must come from the missing minion, not from the TTL.
    node = tcp_node(target.port, location="paris", ttl="10m")
    cfg = make_config(
        tmp_path,
        nats_server.url,
        [node],
        scheduler={"heartbeat_interval": "0.2s", "heartbeat_misses": 1},
    )
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    try:
        rt = stack.scheduler.services[KEY]  # type: ignore[union-attr]
        await wait_for(lambda: rt.last_poll_status is Status.UNKNOWN, timeout=10, what="UNKNOWN")
        assert rt.last_reason == "no minion at location paris"
        assert rt.status is Status.UNKNOWN  # never known, never DOWN
        assert rt.open_outage_id is None
    finally:
        await stack.stop()
        await target.stop()


async def test_stopped_minion_gives_unknown_and_never_an_outage(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    target = await TcpTarget().start()
    cfg = make_config(tmp_path, nats_server.url, [tcp_node(target.port)])
    stack = await Stack(cfg, nats_server.url).start()
    try:
        rt = stack.scheduler.services[KEY]  # type: ignore[union-attr]
        await wait_for(lambda: rt.status is Status.UP, what="service UP")
        await stack.stop_minion(stack.minions[0])
        # The target dies too: without a minion nobody can tell, so no outage.
        await target.stop()
        await wait_for(
            lambda: rt.last_poll_status is Status.UNKNOWN and "no minion" in rt.last_reason,
            what="UNKNOWN",
        )
        await asyncio.sleep(1.5)  # several more intervals
        assert rt.status is Status.UP
        assert rt.open_outage_id is None
        assert await outages(stack) == []
        assert events_seen.find(type="service", action="lost") == []
    finally:
        await stack.stop()
        await target.stop()
