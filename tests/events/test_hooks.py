"""Webhooks against real HTTP receivers.

Retries, signatures, restarts, isolation, parking, filters, bad input.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from vigil.v1 import events_pb2, events_pb2_grpc

from services.core.events import EVENTS_STREAM
from services.core.natsserver import NatsServer
from services.events.app import EventService
from services.events.hooks.signing import verify
from tests import pki as test_pki
from tests.events.test_ingest import stream_events
from tests.events.util import (
    Receiver,
    events_config,
    events_stub,
    jetstream,
    publish_raw,
    raw_event,
)
from tests.helpers import wait_for

SECRET = "correct-horse-battery"


async def create_hook(
    stub: events_pb2_grpc.EventsStub, name: str, url: str, filters: Sequence[dict[str, str]] = ()
) -> events_pb2.Hook:
    return await stub.CreateHook(
        events_pb2.CreateHookRequest(
            name=name,
            url=url,
            secret=SECRET,
            filters=[events_pb2.EventFilter(**f) for f in filters],
        )
    )


async def hook_status(stub: events_pb2_grpc.EventsStub, hook_id: str) -> events_pb2.Hook:
    resp = await stub.ListHooks(events_pb2.ListHooksRequest())
    return next(h for h in resp.hooks if h.id == hook_id)


async def send(url: str, *events: dict[str, Any]) -> None:
    async with jetstream(url) as js:
        for e in events:
            await publish_raw(js, e)


async def test_a_receiver_failing_at_first_gets_the_event_signed(service: EventService) -> None:
    receiver = await Receiver(fail_first=2).start()
    try:
        async with events_stub(service.grpc_address) as stub:
            hook = await create_hook(stub, "ops", receiver.url)
            assert hook.id
            assert hook.url == receiver.url
            event = raw_event("node", "down", "n1")
            await send(service.nats_url, event)
            await wait_for(lambda: receiver.requests, what="a successful delivery")
            headers, body = receiver.requests[0]
            assert receiver.attempts == 3
            assert headers["X-Vigil-Event-Id"] == event["id"]
            assert headers["X-Vigil-Hook-Id"] == hook.id
            assert headers["X-Vigil-Attempt"] == "3"
            assert headers["Content-Type"] == "application/json"
            assert verify(SECRET, body, headers["X-Vigil-Signature"])
            assert not verify("wrong-secret", body, headers["X-Vigil-Signature"])
            delivered = receiver.bodies()[0]
            assert delivered["id"] == event["id"]
            assert delivered["severity"] == "critical"
            # The stream sequence of the event (the audit of CreateHook came first).
            in_stream = {e["id"]: seq for seq, e in await stream_events(service.nats_url)}
            assert int(headers["X-Vigil-Event-Sequence"]) == in_stream[event["id"]]

            status = await wait_for(
                lambda: _delivered(stub, hook.id), what="status shows the delivery"
            )
            assert status.status.last_error.startswith("HTTP 503")
            assert status.status.last_success_at.seconds > 0
            assert status.status.backlog == 0
            assert status.status.failed == 0
            # The secret never comes back.
            listing = await stub.ListHooks(events_pb2.ListHooksRequest())
            assert SECRET.encode() not in listing.SerializeToString()
    finally:
        await receiver.stop()
    assert len(receiver.requests) == 1


async def _delivered(stub: events_pb2_grpc.EventsStub, hook_id: str) -> events_pb2.Hook | None:
    h = await hook_status(stub, hook_id)
    return h if h.status.delivered == 1 and h.status.backlog == 0 else None


async def test_a_receiver_down_across_a_restart_gets_the_event_after(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    cfg = events_config(tmp_path, nats_server.url)
    receiver = await Receiver().start()
    await receiver.stop()  # the port is known, nothing listens
    svc = EventService(cfg, nats_url=nats_server.url)
    await svc.start()
    try:
        async with events_stub(svc.grpc_address) as stub:
            hook = await create_hook(stub, "later", receiver.url)
            event = raw_event("service", "lost", "n1")
            await send(nats_server.url, event)
            failing = await wait_for(lambda: _errored(stub, hook.id), what="a failed attempt")
            # a generic class, never the exception text (docs/security.md, "Hook safety")
            assert failing.status.last_error == "connection failed"
    finally:
        await svc.stop()

    svc = EventService(cfg, nats_url=nats_server.url)
    await svc.start()
    try:
        await receiver.start()
        await wait_for(lambda: receiver.requests, timeout=20, what="delivery after the restart")
        assert [b["id"] for b in receiver.bodies()] == [event["id"]]
        async with events_stub(svc.grpc_address) as stub:
            await wait_for(lambda: _delivered(stub, hook.id), what="status after the restart")
            # The status survived the restart too.
            assert (await hook_status(stub, hook.id)).status.last_error_at.seconds > 0
    finally:
        await svc.stop()
        await receiver.stop()


async def _errored(stub: events_pb2_grpc.EventsStub, hook_id: str) -> events_pb2.Hook | None:
    h = await hook_status(stub, hook_id)
    return h if h.status.last_error else None


async def test_a_dead_receiver_does_not_slow_a_healthy_one(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    # The dead receiver accepts connections and never answers: each attempt waits the full timeout.
    cfg = events_config(tmp_path, nats_server.url, hook_timeout="60s", hook_ack_wait="120s")
    dead = await Receiver(hang=True).start()
    healthy = await Receiver().start()
    svc = EventService(cfg, nats_url=nats_server.url)
    await svc.start()
    try:
        async with events_stub(svc.grpc_address) as stub:
            dead_hook = await create_hook(stub, "dead", dead.url)
            await create_hook(stub, "healthy", healthy.url)
            events = [raw_event("node", "down", f"n{i}") for i in range(20)]
            await send(nats_server.url, *events)
            await wait_for(
                lambda: len(healthy.requests) == 20,
                timeout=15,
                what="all 20 delivered to the healthy hook",
            )
            assert sorted(b["id"] for b in healthy.bodies()) == sorted(e["id"] for e in events)
            # Meanwhile not one delivery to the dead receiver has completed.
            assert dead.requests == []
            assert dead.attempts >= 1
            status = await hook_status(stub, dead_hook.id)
            assert status.status.delivered == 0
            assert status.status.in_flight >= 1
            assert status.status.backlog == 20
    finally:
        await svc.stop()
        await dead.stop()
        await healthy.stop()


async def test_deliveries_are_parked_after_the_maximum_age(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    cfg = events_config(tmp_path, nats_server.url, hook_max_age="1s")
    receiver = await Receiver(fail_first=10**9).start()
    svc = EventService(cfg, nats_url=nats_server.url)
    await svc.start()
    try:
        async with events_stub(svc.grpc_address) as stub:
            hook = await create_hook(stub, "doomed", receiver.url, [{"type": "node"}])
            events = [
                raw_event("node", "down", "n1"),
                raw_event("service", "lost", "n1"),
                raw_event("node", "up", "n1"),
            ]
            await send(nats_server.url, *events)

            async def parked() -> events_pb2.ListHookFailuresResponse | None:
                resp = await stub.ListHookFailures(
                    events_pb2.ListHookFailuresRequest(hook_id=hook.id)
                )
                # (the count and the rows are two reads: wait for both to agree)
                return resp if resp.total_size == len(resp.failures) == 2 else None

            resp = await wait_for(parked, timeout=15, what="2 parked deliveries")
            assert sorted(f.event.id for f in resp.failures) == sorted(
                [events[0]["id"], events[2]["id"]]
            )
            for f in resp.failures:
                assert f.attempts >= 2
                assert f.last_error.startswith("HTTP 503")
                assert f.failed_at.ToDatetime() >= f.first_attempt_at.ToDatetime()
                assert f.event.sequence > 0
            page = await stub.ListHookFailures(
                events_pb2.ListHookFailuresRequest(hook_id=hook.id, page_size=1)
            )
            rest = await stub.ListHookFailures(
                events_pb2.ListHookFailuresRequest(
                    hook_id=hook.id, page_size=1, page_token=page.next_page_token
                )
            )
            assert {page.failures[0].id, rest.failures[0].id} == {f.id for f in resp.failures}
            status = await wait_for(lambda: _settled(stub, hook.id), what="backlog drained")
            assert status.status.failed == 2
            assert status.status.delivered == 0
            # Only node events were tried (the filter): 2 events, several attempts each.
            assert receiver.attempts >= 4
    finally:
        await svc.stop()
        await receiver.stop()


async def _settled(stub: events_pb2_grpc.EventsStub, hook_id: str) -> events_pb2.Hook | None:
    h = await hook_status(stub, hook_id)
    return h if h.status.backlog == 0 and h.status.in_flight == 0 else None


async def test_filters_and_deletion(service: EventService) -> None:
    receiver = await Receiver().start()
    try:
        async with events_stub(service.grpc_address) as stub:
            hook = await create_hook(
                stub,
                "paris-web",
                receiver.url,
                [{"type": "service", "node_id": "web-*"}, {"location": "paris"}],
            )
            want = [
                raw_event("service", "lost", "web-1", location="tokyo"),
                raw_event("node", "down", "db-1", location="paris"),
            ]
            other = [
                raw_event("node", "down", "db-2", location="tokyo"),
                raw_event("service", "lost", "db-3", location="x"),
            ]
            await send(service.nats_url, other[0], want[0], other[1], want[1])
            await wait_for(lambda: len(receiver.requests) == 2, what="2 matching deliveries")
            await wait_for(lambda: _settled(stub, hook.id), what="non-matching events skipped")
            # Deliveries run concurrently: the order is not guaranteed.
            assert sorted(b["id"] for b in receiver.bodies()) == sorted(e["id"] for e in want)

            await stub.DeleteHook(events_pb2.DeleteHookRequest(id=hook.id))
            assert (await stub.ListHooks(events_pb2.ListHooksRequest())).total_size == 0
            infos = await service.js.consumers_info(EVENTS_STREAM)
            assert not [c for c in infos if (c.name or "").startswith("vigil-hook-")]
            marker = raw_event("node", "down", "web-9", location="paris")
            await send(service.nats_url, marker)
            assert service.ingestor is not None
            await wait_for(
                lambda: service.ingestor and service.ingestor.processed >= 5,
                what="marker processed",
            )
            assert len(receiver.requests) == 2

            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.DeleteHook(events_pb2.DeleteHookRequest(id=hook.id))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListHookFailures(events_pb2.ListHookFailuresRequest(hook_id=hook.id))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await receiver.stop()


async def test_bad_hook_requests_get_clear_errors(service: EventService) -> None:
    good = {"name": "x", "url": "http://127.0.0.1:9/hook", "secret": SECRET}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"url": "ftp://127.0.0.1/x"}, "url:"),
        ({"url": "http://user:pw@127.0.0.1/x"}, "url:"),
        ({"url": "not a url"}, "url:"),
        ({"url": ""}, "url:"),
        ({"name": ""}, "name:"),
        ({"name": "has space"}, "name:"),
        ({"secret": "short"}, "secret:"),
        ({"secret": ""}, "secret:"),
        ({"filters": [events_pb2.EventFilter(type="nope")]}, "filters[0].type:"),
    ]
    async with events_stub(service.grpc_address) as stub:
        for change, prefix in cases:
            req = events_pb2.CreateHookRequest(**(good | change))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CreateHook(req)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, change
            assert info.value.details().startswith(prefix), info.value.details()
        await stub.CreateHook(events_pb2.CreateHookRequest(**good))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateHook(events_pb2.CreateHookRequest(**good))
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.DeleteHook(events_pb2.DeleteHookRequest(id="no-such-hook"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.DeleteHook(events_pb2.DeleteHookRequest())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (await stub.ListHooks(events_pb2.ListHooksRequest())).total_size == 1
    assert not service.tasks.failed.is_set()


async def test_nats_losing_its_data_keeps_sequences_and_hooks_going(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """The history and the hooks survive a NATS server that starts empty."""
    cfg = events_config(tmp_path, nats_server.url)
    receiver = await Receiver().start()
    svc = EventService(cfg, nats_url=nats_server.url)
    await svc.start()
    try:
        async with events_stub(svc.grpc_address) as stub:
            hook = await create_hook(stub, "keeper", receiver.url)
        await send(nats_server.url, *(raw_event("node", "down", f"n{i}") for i in range(3)))
        await wait_for(lambda: len(receiver.requests) == 3, what="3 deliveries")
    finally:
        await svc.stop()

    fresh = NatsServer(tmp_path / "nats-fresh", pki=test_pki.current()).start(preexec_fn=None)
    try:
        svc = EventService(cfg, nats_url=fresh.url)
        await svc.start()
        try:
            late = raw_event("node", "up", "n9")
            await send(fresh.url, late)
            await wait_for(
                lambda: len(receiver.requests) == 4, what="delivery through the new NATS"
            )
            headers, body = receiver.requests[-1]
            assert json.loads(body)["id"] == late["id"]
            # Numbering continues after the history instead of starting again at 1
            # (the history: the audit event of CreateHook, then the three events).
            assert headers["X-Vigil-Event-Sequence"] == "5"
            assert headers["X-Vigil-Hook-Id"] == hook.id
            async with events_stub(svc.grpc_address) as stub:
                listed = await stub.ListEvents(events_pb2.ListEventsRequest())
                assert [e.sequence for e in listed.events] == [5, 4, 3, 2]  # 1: the audit
                audit = await stub.ListEvents(events_pb2.ListEventsRequest(type="audit"))
                assert [(e.sequence, e.action) for e in audit.events] == [(1, "create-hook")]
        finally:
            await svc.stop()
    finally:
        fresh.stop()
        await receiver.stop()
