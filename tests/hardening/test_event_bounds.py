"""Hardening (issue 10), defect 1: a long node label must not make events vanish.

Every text of the inventory that flows into events has a bound, enforced by
``PutNode`` (INVALID_ARGUMENT naming the field) and by the configuration loader
(a configuration error naming the key). What can still make an event too
large is cut with the marker ``…[truncated]`` and published, never rejected:
when the scheduler makes it (``make_event``), when its outbox relays a row
written before that, and when the event service normalizes a raw event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from vigil.v1 import inventory_pb2, inventory_pb2_grpc

from services.core.config import ConfigError
from services.core.config.inventory import MAX_LABEL_CHARS
from services.core.events import MAX_EVENT_BYTES, TRUNCATED, Event, make_event
from services.core.natsserver import NatsServer
from services.scheduler.config import load_config
from tests.events.util import jetstream, publish_raw, raw_event
from tests.helpers import EventCollector, Stack, free_port, make_config, wait_for
from tests.pki import operator_channel

HUGE = 1_000_000


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    """Event service, scheduler and a minion, with no node yet."""
    s = await Stack(make_config(tmp_path, nats_server.url), nats_server.url).start()
    try:
        yield s
    finally:
        await s.stop()


def closed_port_node(label: str) -> inventory_pb2.Node:
    """A node whose one TCP service is on a port nothing listens on (DOWN at once)."""
    n = inventory_pb2.Node(id="long-1", label=label, location="Default")
    svc = n.interfaces.add(ip="127.0.0.1").services.add(name="Echo", monitor="tcp")
    svc.params.update({"port": free_port()})
    return n


async def test_put_node_with_a_million_character_label_is_invalid_argument(stack: Stack) -> None:
    assert stack.scheduler is not None
    async with operator_channel(stack.scheduler.grpc_address) as ch:
        inv = inventory_pb2_grpc.InventoryStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await inv.PutNode(inventory_pb2.PutNodeRequest(node=closed_port_node("x" * HUGE)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = err.value.details() or ""
        assert "node.label" in details
        assert str(MAX_LABEL_CHARS) in details
        assert len(details) < 1000  # the refused value is not echoed back
        listed = await inv.ListNodes(inventory_pb2.ListNodesRequest())
        assert list(listed.nodes) == []


def test_config_file_with_a_million_character_label_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text(
        "nodes:\n  - id: long-1\n    label: " + "x" * HUGE + "\n"
        "    interfaces:\n      - ip: 127.0.0.1\n        services: [{name: Echo, monitor: noop}]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert "nodes[0].label" in message
    assert len(message) < 1000


@pytest.mark.parametrize(
    ("node", "key"),
    [
        ({"id": "n", "foreign_id": "f" * 129}, "nodes[0].foreign_id"),
        (
            {
                "id": "n",
                "interfaces": [
                    {"ip": "10.0.0.1", "services": [{"name": "S", "monitor": "m" * 65}]}
                ],
            },
            "nodes[0].interfaces[0].services[0].monitor",
        ),
        (
            {
                "id": "n",
                "maintenance": [
                    {
                        "name": "w" * 65,
                        "start": "2026-01-01T00:00:00Z",
                        "end": "2026-01-02T00:00:00Z",
                    }
                ],
            },
            "nodes[0].maintenance[0].name",
        ),
    ],
)
def test_other_event_fields_are_bounded_in_the_config(
    tmp_path: Path, node: dict[str, Any], key: str
) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text(json.dumps({"nodes": [node]}))
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert key in str(err.value)


async def test_the_longest_label_allowed_reaches_every_event_of_the_outage(
    stack: Stack, events_seen: EventCollector
) -> None:
    assert stack.scheduler is not None
    label = "l" * MAX_LABEL_CHARS
    async with operator_channel(stack.scheduler.grpc_address) as ch:
        inv = inventory_pb2_grpc.InventoryStub(ch)
        await inv.PutNode(inventory_pb2.PutNodeRequest(node=closed_port_node(label)))
    for action in (("service", "lost"), ("outage", "opened")):
        found = await wait_for(
            lambda a=action: events_seen.find(type=a[0], action=a[1], nodeId="long-1"),
            20,
            what=f"{action} of long-1",
        )
        assert found[0]["data"]["nodeLabel"] == label


def test_make_event_cuts_oversized_data_with_the_marker() -> None:
    event = make_event(
        "service", "lost", source="scheduler", nodeLabel="x" * HUGE, reason="connection refused"
    )
    assert len(event.to_json()) < MAX_EVENT_BYTES
    assert event.data["nodeLabel"].endswith(TRUNCATED)
    assert event.data["nodeLabel"].startswith("x" * 1000)
    assert event.data["reason"] == "connection refused"  # small fields are kept whole


async def test_an_oversized_outbox_row_is_published_cut_not_rejected(
    stack: Stack, events_seen: EventCollector
) -> None:
    """A row written before the bounds (the 1,000,401-byte event of the issue) still leaves."""
    assert stack.scheduler is not None and stack.events is not None
    event = Event(
        type="service",
        action="lost",
        type_id="old-1/10.0.0.9/TCP",
        node_id="old-1",
        location="Default",
        source="scheduler",
        data={"ip": "10.0.0.9", "service": "TCP", "nodeLabel": "y" * HUGE, "reason": "refused"},
    )
    assert len(event.to_json()) > HUGE  # as the old scheduler wrote it
    store = stack.scheduler.store
    async with store.transaction() as tx:
        await tx.enqueue([event])
    assert stack.scheduler.relay is not None
    stack.scheduler.relay.wake()
    found = await wait_for(lambda: events_seen.find(id=event.id), 20, what="the cut service lost")
    data = found[0]["data"]
    assert (found[0]["type"], found[0]["action"]) == ("service", "lost")
    assert data["nodeLabel"].endswith(TRUNCATED) and data["nodeLabel"].startswith("y" * 1000)
    assert data["reason"] == "refused"
    assert stack.events.ingestor is not None and stack.events.ingestor.rejected == 0


async def test_the_event_service_cuts_an_oversized_raw_event_and_publishes_it(
    nats_server: NatsServer, stack: Stack, events_seen: EventCollector
) -> None:
    """Another producer's (or a plugin's) oversized field: `service lost` arrives, cut."""
    assert stack.events is not None and stack.events.ingestor is not None
    raw = raw_event("service", "lost", "plug-1", data={"ip": "10.0.0.1", "reason": "r" * 300_000})
    async with jetstream(nats_server.url) as js:
        await publish_raw(js, raw, "scheduler")
    found = await wait_for(lambda: events_seen.find(id=raw["id"]), 20, what="the cut raw event")
    assert found[0]["data"]["reason"].endswith(TRUNCATED)
    assert found[0]["data"]["ip"] == "10.0.0.1"
    assert len(json.dumps(found[0]).encode()) <= MAX_EVENT_BYTES
    assert stack.events.ingestor.rejected == 0
