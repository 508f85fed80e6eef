"""vigil.v1.Inventory: changes take effect at once; bad input is refused whole."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from vigil.v1 import inventory_pb2, inventory_pb2_grpc, poller_pb2, poller_pb2_grpc

from minion.monitors.base import Status
from services.core.natsserver import NatsServer
from services.scheduler.model import ServiceKey
from tests.helpers import EventCollector, Stack, TcpTarget, make_config, wait_for
from tests.pki import operator_channel

CONFIG_NODE = {
    "id": "from-file",
    "interfaces": [{"ip": "127.0.0.1", "services": [{"name": "Noop", "monitor": "noop"}]}],
}
PACKAGES = [
    {
        "name": "fast",
        "downtime": [{"begin": "0s", "interval": "0.5s"}],
        "services": [
            {"name": "Web", "monitor": "http", "params": {"path": "/health"}, "interval": "30s"}
        ],
    },
    {
        "name": "lab",
        "filter": {"include_ranges": ["192.0.2.0/24"]},
        "critical_service": None,
        "services": [{"name": "Web", "monitor": "http", "params": {"path": "/lab"}}],
    },
]


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    cfg = make_config(tmp_path, nats_server.url, [CONFIG_NODE], packages=PACKAGES)
    s = await Stack(cfg, nats_server.url).start(events=False)
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    assert stack.scheduler is not None
    async with operator_channel(stack.scheduler.grpc_address) as ch:
        yield ch


def node(node_id: str, port: int, *services: str) -> inventory_pb2.Node:
    n = inventory_pb2.Node(id=node_id, label="api node", location="Default")
    itf = n.interfaces.add(ip="127.0.0.1")
    for name in services or ("Echo",):
        svc = itf.services.add(name=name, monitor="tcp", interval=Duration(nanos=500_000_000))
        svc.params.update({"port": port})
    return n


async def test_put_get_list_delete_take_effect_at_once(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    inv = inventory_pb2_grpc.InventoryStub(channel)
    target = await TcpTarget().start()
    try:
        created = await inv.PutNode(
            inventory_pb2.PutNodeRequest(node=node("api-1", target.port, "Echo", "Echo2"))
        )
        assert created.source == inventory_pb2.NODE_SOURCE_API
        resolved = created.interfaces[0].services[0].resolved
        assert resolved.monitor == "tcp" and resolved.package == "fast"
        assert resolved.ttl.ToTimedelta().total_seconds() == 0.5  # its own interval
        services = stack.scheduler.services  # type: ignore[union-attr]
        echo = ServiceKey("api-1", "127.0.0.1", "Echo")
        await wait_for(
            lambda: echo in services and services[echo].status is Status.UP,
            what="new service polled",
        )

        # Replace: Echo2 goes away while DOWN with an open outage.
        await target.stop()
        await wait_for(
            lambda: services[ServiceKey("api-1", "127.0.0.1", "Echo2")].open_outage_id,
            what="outage",
        )
        await inv.PutNode(inventory_pb2.PutNodeRequest(node=node("api-1", target.port, "Echo")))
        assert ServiceKey("api-1", "127.0.0.1", "Echo2") not in services
        poller = poller_pb2_grpc.PollerStub(channel)
        closed = await poller.ListOutages(
            poller_pb2.ListOutagesRequest(state=poller_pb2.OUTAGE_STATE_CLOSED, service="Echo2")
        )
        assert closed.outages[0].close_reason == "deleted"

        got = await inv.GetNode(inventory_pb2.GetNodeRequest(id="api-1"))
        assert [s.name for s in got.interfaces[0].services] == ["Echo"]
        listed = await inv.ListNodes(inventory_pb2.ListNodesRequest(page_size=1))
        assert listed.total_size == 2 and listed.next_page_token
        page2 = await inv.ListNodes(
            inventory_pb2.ListNodesRequest(page_size=1, page_token=listed.next_page_token)
        )
        assert {listed.nodes[0].id, page2.nodes[0].id} == {"api-1", "from-file"}

        deleted = await inv.DeleteNode(inventory_pb2.DeleteNodeRequest(id="api-1"))
        assert deleted.services_removed == 1 and deleted.outages_closed == 1
        assert echo not in services
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await inv.GetNode(inventory_pb2.GetNodeRequest(id="api-1"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await target.stop()


async def test_package_provides_monitor_and_last_match_wins(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    inv = inventory_pb2_grpc.InventoryStub(channel)
    n = inventory_pb2.Node(id="pkg-1")
    n.interfaces.add(ip="192.0.2.10").services.add(name="Web")
    n.interfaces.add(ip="198.51.100.10").services.add(name="Web")
    got = await inv.PutNode(inventory_pb2.PutNodeRequest(node=n))
    lab, other = (itf.services[0].resolved for itf in got.interfaces)
    assert (lab.package, lab.params["path"]) == (
        "lab",
        "/lab",
    )  # both match 192.0.2.10: the last wins
    assert (other.package, other.params["path"]) == ("fast", "/health")
    assert other.interval.ToTimedelta().total_seconds() == 30


@pytest.mark.parametrize(
    ("mutate", "code", "field"),
    [
        (lambda n: setattr(n, "id", ""), grpc.StatusCode.INVALID_ARGUMENT, "node.id"),
        (
            lambda n: setattr(n, "location", "paris.east"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "node.location",
        ),
        (
            lambda n: setattr(n.interfaces[0], "ip", "10.0.0.300"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "node.interfaces[0].ip",
        ),
        (
            lambda n: setattr(n.interfaces[0].services[0], "monitor", "pign"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "node.interfaces[0].services[0].monitor",
        ),
        (
            lambda n: n.interfaces[0].services[0].params.update({"port": 70000}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "node.interfaces[0].services[0].params.port",
        ),
        (
            lambda n: n.interfaces[0].services.add(name="Echo", monitor="noop"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "duplicate service 'Echo'",
        ),
        (
            lambda n: n.interfaces[0].services.add(name="Mystery"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "names no monitor",
        ),
        (
            lambda n: setattr(n, "id", "from-file"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "configuration file",
        ),
    ],
)
async def test_bad_put_is_refused_and_nothing_changes(
    stack: Stack, channel: grpc.aio.Channel, mutate: object, code: grpc.StatusCode, field: str
) -> None:
    inv = inventory_pb2_grpc.InventoryStub(channel)
    before = dict(stack.scheduler.services)  # type: ignore[union-attr]
    n = node("bad-1", 9)
    mutate(n)  # type: ignore[operator]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inv.PutNode(inventory_pb2.PutNodeRequest(node=n))
    assert err.value.code() == code
    assert field in (err.value.details() or "")
    assert stack.scheduler.services == before  # type: ignore[union-attr]
    listed = await inv.ListNodes(inventory_pb2.ListNodesRequest())
    assert [x.id for x in listed.nodes] == ["from-file"]


async def test_config_node_cannot_be_deleted(channel: grpc.aio.Channel) -> None:
    inv = inventory_pb2_grpc.InventoryStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inv.DeleteNode(inventory_pb2.DeleteNodeRequest(id="from-file"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inv.DeleteNode(inventory_pb2.DeleteNodeRequest(id="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_api_nodes_survive_a_restart(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    cfg = make_config(tmp_path, nats_server.url, [CONFIG_NODE], packages=PACKAGES)
    stack = await Stack(cfg, nats_server.url).start(events=False)
    try:
        async with operator_channel(stack.scheduler.grpc_address) as ch:  # type: ignore[union-attr]
            await inventory_pb2_grpc.InventoryStub(ch).PutNode(
                inventory_pb2.PutNodeRequest(node=node("api-9", 9))
            )
    finally:
        await stack.stop()
    stack = await Stack(cfg, nats_server.url).start(events=False)
    try:
        assert ServiceKey("api-9", "127.0.0.1", "Echo") in stack.scheduler.services  # type: ignore[union-attr]
    finally:
        await stack.stop()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda n: setattr(n, "label", "x" * 1_000_000), "node.label"),
        (lambda n: setattr(n, "foreign_id", "f" * 129), "node.foreign_id"),
        (
            lambda n: setattr(n.interfaces[0].services[0], "monitor", "m" * 65),
            "node.interfaces[0].services[0].monitor",
        ),
        (lambda n: n.maintenance.add(name="w" * 65, weekly=False), "node.maintenance[0].name"),
    ],
)
async def test_text_that_flows_into_events_is_bounded(
    channel: grpc.aio.Channel, mutate: object, field: str
) -> None:
    """Issue 10, defect 1: each is INVALID_ARGUMENT naming the field, not an event too large."""
    inv = inventory_pb2_grpc.InventoryStub(channel)
    n = node("long-1", 9)
    mutate(n)  # type: ignore[operator]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inv.PutNode(inventory_pb2.PutNodeRequest(node=n))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
    assert len(err.value.details() or "") < 1000
