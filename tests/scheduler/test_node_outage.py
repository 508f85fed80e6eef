"""Node-outage processing: one interface/node event instead of a storm of service events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vigil.v1 import poller_pb2, poller_pb2_grpc

from minion.monitors.base import Status
from services.core.natsserver import NatsServer
from services.scheduler.model import ServiceKey
from tests.helpers import EventCollector, Stack, TcpTarget, make_config, wait_for
from tests.pki import operator_channel
from tests.scheduler.util import T0, all_outages, make_keeper, obs, outbox_events, policy


class Polls:
    """Records what the keeper asks the dispatcher to do."""

    def __init__(self) -> None:
        self.now: list[tuple[ServiceKey, bool]] = []

    def reschedule(self, key: ServiceKey) -> None:
        pass

    def poll_now(self, key: ServiceKey, *, urgent: bool) -> str | None:
        self.now.append((key, urgent))
        return "r"

    def resume(self, key: ServiceKey) -> None:
        pass


IP1, IP2 = "10.0.0.1", "10.0.0.2"
ICMP1, HTTP1 = ServiceKey("n1", IP1, "ICMP"), ServiceKey("n1", IP1, "HTTP")
ICMP2, HTTP2 = ServiceKey("n1", IP2, "ICMP"), ServiceKey("n1", IP2, "HTTP")


async def test_interface_then_node_down_and_back(tmp_path: Path) -> None:
    polls = Polls()
    keeper = await make_keeper(
        f"sqlite:///{tmp_path}/s.db",
        [ICMP1, HTTP1, ICMP2, HTTP2],
        policy(),
        critical={("n1", IP1): ICMP1, ("n1", IP2): ICMP2},
        scheduling=polls,
    )
    await keeper.apply([obs(k, Status.UP, T0) for k in (ICMP1, HTTP1, ICMP2, HTTP2)])

    # HTTP fails: before anything is reported, the interface's critical service is checked.
    await keeper.apply([obs(HTTP1, Status.DOWN, T0 + 1, "HTTP 503")])
    assert polls.now == [(ICMP1, True)]
    assert await outbox_events(keeper) == []
    # The critical service is down too: the interface is down, one event.
    await keeper.apply([obs(ICMP1, Status.DOWN, T0 + 2, "no echo reply")])
    events = await outbox_events(keeper)
    assert [(e["type"], e["action"]) for e in events] == [("interface", "down")]
    assert events[0]["typeId"] == "n1/10.0.0.1" and events[0]["data"]["outages"] == 2
    outages = await all_outages(keeper)
    assert {(o.key, o.cause, o.lost_event_id) for o in outages} == {
        (ICMP1, "interface", events[0]["id"]),
        (HTTP1, "interface", events[0]["id"]),
    }
    assert not keeper.topology.polled(keeper.topology.services[HTTP1]) and keeper.topology.polled(
        keeper.topology.services[ICMP1]
    )

    # The second interface's critical service goes: the node is down.
    await keeper.apply([obs(ICMP2, Status.DOWN, T0 + 3)])
    events = await outbox_events(keeper)
    assert [(e["type"], e["action"]) for e in events][1:] == [("node", "down")]
    assert keeper.topology.nodes["n1"].down
    assert {o.cause for o in await all_outages(keeper) if o.key in (ICMP2, HTTP2)} == {"node"}

    # One interface comes back: node up, and the other interface is said to be still down.
    polls.now.clear()
    await keeper.apply([obs(ICMP2, Status.UP, T0 + 10)])
    kinds = [(e["type"], e["action"]) for e in await outbox_events(keeper)][2:]
    assert kinds == [("node", "up"), ("interface", "down")]
    assert (HTTP2, False) in polls.now  # the rest is re-polled at once
    assert keeper.topology.services[HTTP2].status is Status.UP
    await keeper.apply([obs(ICMP1, Status.UP, T0 + 11)])
    kinds = [(e["type"], e["action"]) for e in await outbox_events(keeper)][4:]
    assert kinds == [("interface", "up")]
    assert all(o.closed_at is not None for o in await all_outages(keeper))
    # Not one individual service event in all of this.
    assert not [e for e in await outbox_events(keeper) if e["type"] == "service"]
    await keeper.persister.store.close()


async def test_service_down_with_critical_up_is_reported_alone(tmp_path: Path) -> None:
    keeper = await make_keeper(
        f"sqlite:///{tmp_path}/s.db",
        [ICMP1, HTTP1],
        policy(),
        critical={("n1", IP1): ICMP1},
        scheduling=Polls(),
    )
    await keeper.apply([obs(k, Status.UP, T0) for k in (ICMP1, HTTP1)])
    await keeper.apply([obs(HTTP1, Status.DOWN, T0 + 1, "HTTP 503")])
    await keeper.apply([obs(ICMP1, Status.UP, T0 + 2)])
    events = await outbox_events(keeper)
    assert [(e["type"], e["action"]) for e in events] == [("service", "lost"), ("outage", "opened")]
    assert events[0]["data"]["reason"] == "HTTP 503"
    [outage] = await all_outages(keeper)
    assert outage.cause == "service" and outage.opened_at == T0 + 1
    await keeper.persister.store.close()


def _node(ports: dict[str, int]) -> dict[str, Any]:
    return {
        "id": "web-1",
        "label": "web server",
        "interfaces": [
            {
                "ip": "127.0.0.1",
                "services": [
                    {"name": name, "monitor": "tcp", "params": {"port": port}}
                    for name, port in ports.items()
                ],
            }
        ],
    }


async def test_node_outage_end_to_end(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    targets = {name: await TcpTarget().start() for name in ("Ping", "Web", "Db")}
    packages = [
        {
            "name": "servers",
            "critical_service": "Ping",
            "downtime": [{"begin": "0s", "interval": "0.5s"}],
            "retry_interval": "0.2s",
        }
    ]
    cfg = make_config(
        tmp_path,
        nats_server.url,
        [_node({n: t.port for n, t in targets.items()})],
        packages=packages,
    )
    stack = await Stack(cfg, nats_server.url).start()
    try:
        assert stack.scheduler is not None
        services = stack.scheduler.services
        await wait_for(
            lambda: all(rt.status is Status.UP for rt in services.values()), what="all UP"
        )

        for t in targets.values():
            await t.stop()
        node_down = await wait_for(
            lambda: events_seen.find(type="node", action="down"), what="node down"
        )
        await wait_for(
            lambda: all(rt.outage is not None and rt.open_outage_id for rt in services.values()),
            what="outages",
        )
        assert len(node_down) == 1
        assert (
            node_down[0]["nodeId"] == "web-1" and node_down[0]["data"]["criticalService"] == "Ping"
        )
        assert events_seen.find(type="service") == []

        async with operator_channel(stack.scheduler.grpc_address) as ch:
            resp = await poller_pb2_grpc.PollerStub(ch).ListOutages(
                poller_pb2.ListOutagesRequest(state=poller_pb2.OUTAGE_STATE_OPEN)
            )
        assert {(o.service.service, o.cause, o.cause_event_id) for o in resp.outages} == {
            (name, "node", node_down[0]["id"]) for name in targets
        }

        for t in targets.values():
            await t.start()
        node_up = await wait_for(lambda: events_seen.find(type="node", action="up"), what="node up")
        assert len(node_up) == 1
        await wait_for(
            lambda: all(rt.status is Status.UP for rt in services.values()), what="all UP again"
        )
        assert events_seen.find(type="service") == []
        assert len(events_seen.find(type="node", action="down")) == 1
    finally:
        await stack.stop()
        for t in targets.values():
            await t.stop()
