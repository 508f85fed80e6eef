"""Durable ingestion: nothing lost while the event service is down, nothing published twice."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from minion.monitors.base import Status
from services.core.events import EVENTS_STREAM, INGEST_STREAM
from services.core.natsserver import NatsServer
from services.core.streams import ensure_stream, events_stream_config, ingest_stream_config
from services.events.app import EventService
from services.events.ingest import Ingestor
from services.events.normalize import normalize
from services.events.store import EventStore
from services.events.store.history import EventFilter
from services.scheduler.model import ServiceKey
from tests.events.util import events_config, jetstream, publish_raw, raw_event
from tests.helpers import (
    EVENTS,
    OPERATOR,
    EventCollector,
    Stack,
    TcpTarget,
    make_config,
    nats_client,
    wait_for,
)


async def stream_events(url: str) -> list[tuple[int, dict[str, Any]]]:
    """Every message in VIGIL_EVENTS with its sequence (an independent JetStream reader)."""
    async with jetstream(url, EVENTS) as js:
        info = await js.stream_info(EVENTS_STREAM)
        if info.state.messages == 0:
            return []
        sub = await js.pull_subscribe(
            "vigil.events.>",
            stream=EVENTS_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )
        out: list[tuple[int, dict[str, Any]]] = []
        while len(out) < info.state.messages:
            for m in await sub.fetch(256, timeout=5):
                out.append((m.metadata.sequence.stream, json.loads(m.data)))
        return out


async def stored(svc: EventService) -> list[tuple[int, str]]:
    rows, _ = await svc.store.list_events(EventFilter(), before_seq=None, limit=1000)
    return [(r.seq, r.event.id) for r in rows]


async def test_events_produced_while_the_event_service_is_down_are_published_once_after_restart(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    target = await TcpTarget().start()
    node = {
        "id": "node-1",
        "label": "test node",
        "interfaces": [
            {
                "ip": "127.0.0.1",
                "services": [{"name": "Echo", "monitor": "tcp", "params": {"port": target.port}}],
            }
        ],
    }
    cfg = make_config(tmp_path, nats_server.url, [node], events={"summary_interval": None})
    stack = await Stack(cfg, nats_server.url).start()
    try:
        assert stack.scheduler is not None
        assert stack.events is not None
        rt = stack.scheduler.services[ServiceKey("node-1", "127.0.0.1", "Echo")]
        await wait_for(lambda: rt.status is Status.UP, what="service UP")
        await stack.events.stop()
        seen_before = len(events_seen.events)
        relayed_before = stack.scheduler.relay.published

        # The scheduler keeps producing: an outage opens and closes while nobody normalizes.
        await target.stop()
        await wait_for(lambda: rt.status is Status.DOWN, what="service DOWN")
        await target.start()
        await wait_for(lambda: rt.status is Status.UP, what="service UP again")
        await wait_for(
            lambda: stack.scheduler and stack.scheduler.relay.published >= relayed_before + 4,
            what="4 raw events in JetStream",
        )
        assert len(events_seen.events) == seen_before  # nobody normalizes: nothing published

        def outage_events() -> list[dict[str, Any]]:
            return [e for e in events_seen.events if e["type"] in ("service", "outage")]

        stack.events = EventService(cfg, nats_url=nats_server.url)
        await stack.events.start()
        await wait_for(lambda: len(outage_events()) >= 4, what="the 4 events published")
        kinds = sorted((e["type"], e["action"]) for e in outage_events())
        assert kinds == [
            ("outage", "closed"),
            ("outage", "opened"),
            ("service", "lost"),
            ("service", "regained"),
        ]
        ids = [e["id"] for e in events_seen.events]
        assert len(set(ids)) == len(ids)  # each event once

        # The scheduler's outbox may hand an event over again (crash before its
        # bookkeeping): the event service must not publish it a second time.
        again = next(e for e in outage_events() if e["action"] == "lost")
        async with jetstream(nats_server.url) as js:
            await publish_raw(
                js,
                {k: v for k, v in again.items() if k != "reductionKey"},
                "scheduler",
                msg_id="x-1",
            )
            await publish_raw(js, raw_event("node", "down", "marker"), "scheduler")
        await wait_for(lambda: events_seen.find(nodeId="marker"), what="marker event")
        assert Counter(e["id"] for e in events_seen.events)[again["id"]] == 1

        in_stream = await stream_events(nats_server.url)
        assert sorted(e["id"] for _, e in in_stream) == sorted(e["id"] for e in events_seen.events)
        # History holds each once, under the sequence JetStream gave it.
        assert sorted(await stored(stack.events)) == sorted((seq, e["id"]) for seq, e in in_stream)
    finally:
        await stack.stop()
        await target.stop()


async def test_raw_events_wait_in_the_stream_until_the_service_starts(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector, store_url: str
) -> None:
    """(On SQLite and on PostgreSQL.)"""
    cfg = events_config(tmp_path, nats_server.url, store_url)
    first = EventService(cfg, nats_url=nats_server.url)
    await first.start()  # declares the streams and its durable consumer
    await first.stop()
    sent = [raw_event("node", "down", f"n{i}") for i in range(30)]
    async with jetstream(nats_server.url) as js:
        for e in sent:
            await publish_raw(js, e)
        await publish_raw(js, sent[3])  # a producer retry within the duplicate window
    svc = EventService(cfg, nats_url=nats_server.url)
    await svc.start()
    try:
        await wait_for(
            lambda: svc.ingestor and svc.ingestor.processed >= 30, what="30 events processed"
        )
        await wait_for(lambda: len(events_seen.events) >= 30, what="30 events on NATS")
        assert sorted(e["id"] for e in events_seen.events) == sorted(e["id"] for e in sent)
        seqs = [seq for seq, _ in await stored(svc)]
        assert sorted(seqs) == list(range(1, 31))  # one stream sequence per event, no gap
    finally:
        await svc.stop()


async def test_publish_then_crash_before_store_is_not_published_again(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """A raw event redelivered after its normalized form was published (but not stored).

    With a short duplicate window JetStream no longer recognises the repeat;
    the ingestor must find the earlier publication itself.
    """
    store = EventStore(f"sqlite:///{tmp_path}/events.db")
    await store.open()
    nc = await nats_client(nats_server.url, EVENTS)  # the ingestor's own identity
    try:
        js = nc.jetstream()
        await ensure_stream(js, ingest_stream_config())
        config = events_stream_config(60.0, 1 << 20)
        config.duplicate_window = 0.2
        await ensure_stream(js, config)
        ingestor = Ingestor(nc, js, store)  # driven by hand: its run() loop is not started

        raw = raw_event("node", "down", "crashy")
        event = normalize(raw, default_source="events")
        # The "previous life": published, then a crash before storing and acknowledging.
        first = await js.publish(event.subject, event.to_json(), headers={"Nats-Msg-Id": event.id})
        await asyncio.sleep(0.5)  # past the duplicate window

        # As the event service itself (its summaries): the source NATS lets this identity use.
        await js.publish("vigil.ingest.events", json.dumps(raw).encode())
        sub = await js.pull_subscribe(
            "vigil.ingest.>",
            durable="crash-test",
            stream=INGEST_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=0.5),
        )
        await sub.fetch(1, timeout=5)  # first delivery: "lost in the crash"
        again = await wait_for(lambda: _fetch(sub), timeout=10, what="redelivery")
        assert again[0].metadata.num_delivered == 2
        await ingestor.process(again)

        rows, _ = await store.list_events(EventFilter(), before_seq=None, limit=10)
        assert [(r.seq, r.event.id) for r in rows] == [(first.seq, event.id)]
        info = await js.stream_info(EVENTS_STREAM)
        assert info.state.last_seq == first.seq  # nothing published again
        assert ingestor.processed == 1
    finally:
        await nc.close()
        await store.close()


async def _fetch(sub: Any) -> list[Any]:
    try:
        return list(await sub.fetch(1, timeout=1))
    except (TimeoutError, nats.errors.TimeoutError):
        return []


async def test_invalid_raw_events_are_rejected_counted_and_the_service_keeps_running(
    nats_server: NatsServer, service: EventService, events_seen: EventCollector
) -> None:
    notices: list[dict[str, Any]] = []
    nc = await nats_client(nats_server.url, OPERATOR)

    async def on_notice(msg: Any) -> None:
        notices.append(json.loads(msg.data))

    await nc.subscribe("vigil.rejected.>", cb=on_notice)
    await nc.flush()
    try:
        async with jetstream(nats_server.url) as js:
            await publish_raw(js, b"{not json", "scheduler")
            await publish_raw(js, {"type": "volcano", "action": "erupted"}, "scheduler")
            # Oversized data is no longer a rejection: it is published cut (issue 10,
            # tests/hardening/test_event_bounds.py); a document NATS could carry but
            # no one should parse still is.
            await publish_raw(js, b'{"type": "node", "action": "up", "n": 1' + b"0" * 5000 + b"}")
            await publish_raw(js, {"type": "node", "action": "down", "nodeId": 5}, "scheduler")
            good = raw_event("node", "down", "after-junk")
            await publish_raw(js, good, "scheduler")
        await wait_for(lambda: events_seen.find(id=good["id"]), what="the good event")
        assert service.ingestor is not None
        # Published before stored: the row lands just after the event is on NATS.
        await wait_for(lambda: service.ingestor and service.ingestor.processed >= 1, what="stored")
        assert service.ingestor.rejected == 4
        await wait_for(lambda: len(notices) >= 4, what="4 rejection notices")
        reasons = {n["field"]: n["reason"] for n in notices}
        assert reasons["event"].startswith("event: ")
        assert "volcano" in reasons["type"]
        assert reasons["nodeId"] == "nodeId: must be a string, not int"
        assert any("4300 digits" in n["reason"] for n in notices)
        assert len(events_seen.events) == 1
        assert [i for _, i in await stored(service)] == [good["id"]]
        assert not service.tasks.failed.is_set()
    finally:
        await nc.close()


async def test_a_rejection_notice_names_the_event_and_its_node(
    nats_server: NatsServer, service: EventService, events_seen: EventCollector
) -> None:
    """Issue 10, defect 1: a rejected raw event is never silent for the outage it is about."""
    notices: list[dict[str, Any]] = []
    nc = await nats_client(nats_server.url, OPERATOR)

    async def on_notice(msg: Any) -> None:
        notices.append(json.loads(msg.data))

    await nc.subscribe("vigil.rejected.>", cb=on_notice)
    await nc.flush()
    try:
        bad = raw_event("service", "lost", "web-9", severity="apocalyptic")
        async with jetstream(nats_server.url) as js:
            await publish_raw(js, bad, "scheduler")
        await wait_for(lambda: notices, what="the rejection notice")
        notice = notices[0]
        assert notice["field"] == "severity"
        assert (notice["id"], notice["type"], notice["action"]) == (bad["id"], "service", "lost")
        assert (notice["nodeId"], notice["typeId"]) == ("web-9", bad["typeId"])
        assert service.ingestor is not None and service.ingestor.rejected == 1
    finally:
        await nc.close()
