"""gRPC: Publish validation and path, ListEvents paging and filters."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from vigil.v1 import events_pb2

from services.core.natsserver import NatsServer
from services.core.paging import encode_token
from services.events.app import EventService
from tests.events.test_ingest import stream_events
from tests.events.util import events_stub, jetstream, publish_raw, raw_event
from tests.helpers import EventCollector, wait_for


async def test_list_events_pages_every_event_exactly_once(service: EventService) -> None:
    sent = [raw_event("node", "down" if i % 3 else "up", f"n{i % 4}") for i in range(23)]
    async with jetstream(service.nats_url) as js:
        for e in sent:
            await publish_raw(js, e)
    assert service.ingestor is not None
    await wait_for(lambda: service.ingestor and service.ingestor.processed >= 23, what="23 events")
    async with events_stub(service.grpc_address) as stub:
        seen: list[events_pb2.Event] = []
        token = ""
        pages = 0
        while True:
            resp = await stub.ListEvents(
                events_pb2.ListEventsRequest(page_size=5, page_token=token)
            )
            assert resp.total_size == 23
            seen += resp.events
            pages += 1
            token = resp.next_page_token
            if not token:
                break
        assert pages == 5
        assert sorted(e.id for e in seen) == sorted(e["id"] for e in sent)
        seqs = [e.sequence for e in seen]
        assert seqs == sorted(seqs, reverse=True)  # newest first
        assert len(set(seqs)) == 23

        # Filters: total_size counts what matches, paging stays exact.
        ups = [e for e in sent if e["action"] == "up"]
        got: list[str] = []
        token = ""
        while True:
            resp = await stub.ListEvents(
                events_pb2.ListEventsRequest(
                    page_size=3, page_token=token, type="node", action="up"
                )
            )
            assert resp.total_size == len(ups)
            got += [e.id for e in resp.events]
            if not (token := resp.next_page_token):
                break
        assert sorted(got) == sorted(e["id"] for e in ups)
        resp = await stub.ListEvents(
            events_pb2.ListEventsRequest(node_id="n1", severity="critical")
        )
        assert {e.node_id for e in resp.events} == {"n1"}
        assert resp.total_size == sum(
            1 for e in sent if e["nodeId"] == "n1" and e["action"] == "down"
        )

        # The page token belongs to its filters and to this server.
        first = await stub.ListEvents(events_pb2.ListEventsRequest(page_size=2))
        for bad, field in (
            (
                events_pb2.ListEventsRequest(page_token=first.next_page_token, type="node"),
                "page_token",
            ),
            (events_pb2.ListEventsRequest(page_token="garbage!"), "page_token"),
            (events_pb2.ListEventsRequest(page_token=encode_token("x", [None] * 7)), "page_token"),
            (events_pb2.ListEventsRequest(page_size=-1), "page_size"),
            (events_pb2.ListEventsRequest(severity="urgent"), "severity"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListEvents(bad)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details().startswith(f"{field}:")


async def test_publish_validates_then_takes_the_ingest_path(
    nats_server: NatsServer, service: EventService, events_seen: EventCollector
) -> None:
    data = Struct()
    data.update({"reason": "disk full", "pct": 99})
    async with events_stub(service.grpc_address) as stub:
        resp = await stub.Publish(
            events_pb2.PublishRequest(
                event=events_pb2.Event(
                    type="node", action="down", node_id="ext-1", location="paris", data=data
                )
            )
        )
        assert resp.event.id
        assert resp.event.severity == "critical"
        # Who published it is the caller's certificate (tests/pki.py's operator).
        assert resp.event.source == "operator:operator"
        assert resp.event.reduction_key == "node:down:ext-1"
        got = await wait_for(lambda: events_seen.find(id=resp.event.id), what="published event")
        assert got[0]["data"] == {"reason": "disk full", "pct": 99}
        assert got[0]["source"] == "operator:operator"
        assert events_seen.subjects[-1] == "vigil.events.node.down.critical.ext-1"

        listed = await stub.ListEvents(events_pb2.ListEventsRequest(node_id="ext-1"))
        assert [e.id for e in listed.events] == [resp.event.id]
        assert listed.events[0].sequence > 0
        assert listed.events[0].data["reason"] == "disk full"

        huge = Struct()
        huge.update({"blob": "x" * 100_000})
        for event, field in (
            (events_pb2.Event(action="down"), "event.type"),
            (events_pb2.Event(type="node", action="exploded"), "event.action"),
            (events_pb2.Event(type="node", action="down", severity="meh"), "event.severity"),
            (events_pb2.Event(type="node", action="down", location="a b"), "event.location"),
            (events_pb2.Event(type="node", action="down", sequence=5), "event.sequence"),
            (events_pb2.Event(type="node", action="down", data=huge), "event"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Publish(events_pb2.PublishRequest(event=event))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert info.value.details().startswith(f"{field}:"), info.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Publish(events_pb2.PublishRequest())
        assert info.value.details().startswith("event:")

        # Publishing the same id twice publishes once.
        again = events_pb2.Event(id=resp.event.id, type="node", action="down", node_id="ext-1")
        await stub.Publish(events_pb2.PublishRequest(event=again))
        marker = await stub.Publish(
            events_pb2.PublishRequest(event=events_pb2.Event(type="node", action="up"))
        )
        await wait_for(lambda: events_seen.find(id=marker.event.id), what="marker")
    assert len(events_seen.find(id=resp.event.id)) == 1
    in_stream = [e for _, e in await stream_events(nats_server.url) if e["type"] != "audit"]
    assert len(in_stream) == 2  # besides the audit events of the test's own calls
    # It went through the ingest stream like every producer's events.
    async with jetstream(nats_server.url) as js:
        info = await js.stream_info("VIGIL_INGEST", subjects_filter="vigil.ingest.api")
        # (the repeated id was already dropped there, by JetStream's duplicate window)
        assert info.state.subjects == {"vigil.ingest.api": 2}
    assert not service.tasks.failed.is_set()


async def test_publish_source_is_the_callers_certificate(
    service: EventService, events_seen: EventCollector
) -> None:
    """An operator cannot pass an event off as the scheduler's: ``source`` is who called."""
    async with events_stub(service.grpc_address) as stub:
        forged = await stub.Publish(
            events_pb2.PublishRequest(
                event=events_pb2.Event(
                    type="node", action="down", node_id="ext-2", source="scheduler"
                )
            )
        )
    assert forged.event.source == "operator:operator"
    stored = await wait_for(
        lambda: events_seen.find(id=forged.event.id), what="the forged event published"
    )
    assert stored[0]["source"] == "operator:operator"
