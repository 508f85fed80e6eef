"""Subscribe: live and resumed streams (no gap, no duplicate), filters, keep-alives, stalls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from vigil.v1 import events_pb2, events_pb2_grpc

from services.core.events import EVENTS_STREAM
from services.core.natsserver import NatsServer
from services.events.app import EventService
from tests.events.util import events_config, events_stub, jetstream, publish_raw, raw_event
from tests.helpers import wait_for


class Stream:
    """A running Subscribe call whose responses are collected in the background."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.events: list[events_pb2.Event] = []
        self.keepalives: list[events_pb2.KeepAlive] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for resp in self.call:
                if resp.WhichOneof("kind") == "event":
                    self.events.append(resp.event)
                else:
                    self.keepalives.append(resp.keep_alive)
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    @property
    def seqs(self) -> list[int]:
        return [e.sequence for e in self.events]

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.events]


@asynccontextmanager
async def subscribe(
    stub: events_pb2_grpc.EventsStub,
    filters: Sequence[dict[str, str]] = (),
    after: int | None = None,
) -> AsyncIterator[Stream]:
    req = events_pb2.SubscribeRequest(filters=[events_pb2.EventFilter(**f) for f in filters])
    if after is not None:
        req.after_sequence = after
    stream = Stream(stub.Subscribe(req))
    try:
        # The first message is a keep-alive: the subscription is in place.
        await wait_for(lambda: stream.keepalives or stream.error, what="subscription established")
        yield stream
    finally:
        stream.call.cancel()
        await asyncio.wait([stream.task], timeout=5)


async def publish(service: EventService, events: Sequence[dict[str, Any]]) -> None:
    assert service.ingestor is not None
    target = service.ingestor.processed + len(events)
    async with jetstream(service.nats_url) as js:
        for e in events:
            await publish_raw(js, e)
    await wait_for(
        lambda: service.ingestor and service.ingestor.processed >= target, what="events processed"
    )


async def test_live_then_resume_after_a_sequence_has_no_gap_and_no_duplicate(
    service: EventService,
) -> None:
    first = [raw_event("node", "down", f"n{i}") for i in range(10)]
    async with events_stub(service.grpc_address) as stub:
        async with subscribe(stub) as live:
            assert live.keepalives[0].sequence == 0  # nothing published yet
            await publish(service, first)
            await wait_for(lambda: len(live.events) == 10, what="10 live events")
            assert live.ids == [e["id"] for e in first]
            assert live.seqs == list(range(1, 11))

        # A client that saw up to sequence 4 reconnects: 5.. from history, then live.
        async with subscribe(stub, after=4) as resumed:
            await wait_for(lambda: len(resumed.events) == 6, what="6 resumed events")
            more = [raw_event("node", "up", f"n{i}") for i in range(5)]
            await publish(service, more)
            await wait_for(lambda: len(resumed.events) == 11, what="11 events")
            await asyncio.sleep(0.3)  # anything extra would show up now
            assert resumed.seqs == list(range(5, 16))
            assert resumed.ids == [e["id"] for e in first[4:] + more]

        # Resuming after the newest event: only what comes next.
        async with subscribe(stub, after=15) as tail:
            await publish(service, [last := raw_event("node", "down", "z")])
            await wait_for(lambda: tail.events, what="next event")
            assert tail.ids == [last["id"]]
            assert tail.seqs == [16]


async def test_resume_from_before_the_stream_retention_is_served_from_history(
    service: EventService,
) -> None:
    sent = [raw_event("node", "down", f"n{i}") for i in range(12)]
    await publish(service, sent)
    # Retention removed the oldest events from the stream (as max_age/max_bytes would).
    await service.js.purge_stream(EVENTS_STREAM, seq=9)
    async with events_stub(service.grpc_address) as stub:
        async with subscribe(stub, after=2) as stream:
            await wait_for(lambda: len(stream.events) == 10, what="10 events")
            assert stream.seqs == list(range(3, 13))
        # Retention removed every event: the history alone serves the resume, at once.
        await service.js.purge_stream(EVENTS_STREAM, seq=13)
        async with subscribe(stub, after=5) as stream:
            await wait_for(lambda: len(stream.events) == 7, what="7 events from history")
            assert stream.ids == [e["id"] for e in sent[5:]]
    async with events_stub(service.grpc_address) as stub, subscribe(stub, after=2) as stream:
        await wait_for(lambda: len(stream.events) == 10, what="10 events")
        more = [raw_event("node", "up", "late")]
        await publish(service, more)
        await wait_for(lambda: len(stream.events) == 11, what="11 events")
        assert stream.seqs == list(range(3, 14))
        assert stream.ids == [e["id"] for e in sent[2:] + more]
        assert stream.events[0].node_id == "n2"


async def test_filters_select_exactly_what_they_say(service: EventService) -> None:
    events = [
        raw_event("service", "lost", "web-1", location="paris"),  # 0: f1
        raw_event("service", "lost", "db-1", location="paris"),  # 1: neither
        raw_event("service", "regained", "web-2", location="london"),  # 2: f1
        raw_event("node", "down", "db-2", location="paris"),  # 3: f2 (critical)
        raw_event("node", "down", "web-3", location="london"),  # 4: f1? no (type); f2 yes
        raw_event("node", "up", "web-4", location="paris"),  # 5: neither
        raw_event("outage", "opened", "web-5", location="paris"),  # 6: neither (outage)
        raw_event("service", "lost", "web-10", location="tokyo"),  # 7: f1 glob web-* matches
    ]
    f1 = {"type": "service", "node_id": "web-*"}
    f2 = {"severity": "critical", "location": "[pl]*"}
    async with events_stub(service.grpc_address) as stub:
        async with (
            subscribe(stub, [f1, f2]) as both,
            subscribe(stub, [{"node_id": "web-?", "action": "lost"}]) as one,
        ):
            await publish(service, events)
            want_both = [events[i]["id"] for i in (0, 2, 3, 4, 7)]
            await wait_for(lambda: len(both.events) == len(want_both), what="filtered events")
            await wait_for(
                lambda: one.keepalives[-1].sequence >= 8 or len(one.events) > 1,
                what="scan to the end",
            )
            await asyncio.sleep(0.3)
            assert both.ids == want_both
            assert one.ids == [events[0]["id"]]

        for bad, field in (
            ({"type": "servcie"}, "filters[0].type"),
            ({"severity": "loud"}, "filters[0].severity"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.Subscribe(
                    events_pb2.SubscribeRequest(filters=[events_pb2.EventFilter(**bad)])
                ):
                    pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details().startswith(field)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Subscribe(events_pb2.SubscribeRequest(after_sequence=999)):
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("after_sequence:")


async def test_keepalives_report_progress_when_nothing_matches(service: EventService) -> None:
    async with (
        events_stub(service.grpc_address) as stub,
        subscribe(stub, [{"type": "minion"}]) as stream,
    ):
        await publish(service, [raw_event("node", "down", f"n{i}") for i in range(5)])
        await wait_for(
            lambda: stream.keepalives[-1].sequence == 5, what="a keep-alive at sequence 5"
        )
        assert stream.events == []
        assert all(k.time.seconds > 0 for k in stream.keepalives)


async def test_a_subscriber_that_stops_reading_is_cut_off(service: EventService) -> None:
    # No BDP probing: the client's flow-control window stays small, so the
    # server's writes block as soon as the unread data fills it.
    async with events_stub(service.grpc_address, **{"grpc.http2.bdp_probe": 0}) as stub:
        call = stub.Subscribe(events_pb2.SubscribeRequest())
        first = await call.read()
        assert first.WhichOneof("kind") == "keep_alive"
        big = "x" * 8000
        await publish(
            service, [raw_event("node", "down", f"n{i}", data={"pad": big}) for i in range(40)]
        )
        await wait_for(
            lambda: service.subscribers_cut >= 1, timeout=20, what="the subscriber cut off"
        )
        received = 0

        async def drain() -> None:
            nonlocal received
            while (resp := await call.read()) is not grpc.aio.EOF:
                received += resp.WhichOneof("kind") == "event"

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await drain()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "subscriber too slow" in (info.value.details() or "")
        assert 0 < received < 40
    # The service is fine and the consumer of the cut subscriber is gone.
    infos = await service.js.consumers_info(EVENTS_STREAM)
    assert not [c for c in infos if (c.name or "").startswith("vigil-sub-")]
    assert not service.tasks.failed.is_set()


async def test_the_number_of_subscribers_is_bounded(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    svc = EventService(
        events_config(tmp_path, nats_server.url, max_subscribers=1), nats_url=nats_server.url
    )
    await svc.start()
    try:
        async with events_stub(svc.grpc_address) as stub, subscribe(stub):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.Subscribe(events_pb2.SubscribeRequest()):
                    pass
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "too many subscribers" in (info.value.details() or "")
        # The first one ended: there is room again.
        await wait_for(
            lambda: svc.servicer is not None and svc.servicer.subscribers == 0,
            what="the subscriber gone",
        )
        async with events_stub(svc.grpc_address) as stub, subscribe(stub) as again:
            assert again.keepalives
    finally:
        await svc.stop()
