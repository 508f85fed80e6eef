"""Issue 10, defect 6: Events/Publish and the hook calls refuse nonsense.

Against a real event service (real nats-server, real gRPC with mutual TLS, real
HTTP receivers): Publish refuses ids that are not UUIDs, dates outside
2000-01-01 .. now + 1 day and node ids that are not one subject token, and says
when an id is a duplicate; a hook filter that is not a valid pattern and a URL
another hook already has are refused; UpdateHook changes a hook through a field
mask.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from vigil.v1 import events_pb2, events_pb2_grpc

from services.core.natsserver import NatsServer
from services.events.app import EventService
from services.events.hooks.signing import verify
from tests.events import conftest as events_conftest
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


#: The running event service of the event-service tests (SQLite store, fast settings).
service = events_conftest.service


def at(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


async def history(stub: events_pb2_grpc.EventsStub, count: int) -> object:
    """The history when it holds ``count`` events, else ``None`` (for wait_for).

    The audit events of the test's own calls (``audit publish``, ...) are left out.
    """
    resp = await stub.ListEvents(events_pb2.ListEventsRequest())
    mine = [e for e in resp.events if e.type != "audit"]
    del resp.events[:]
    resp.events.extend(mine)
    return resp if len(resp.events) == count else None


async def refused(call: object, code: grpc.StatusCode, field: str) -> str:
    """Await ``call``; it must fail with ``code`` and a message naming ``field`` first."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    details = info.value.details() or ""
    assert details.startswith(f"{field}:"), details
    return details


async def test_publish_refuses_bad_ids_dates_and_subject_tokens(service: EventService) -> None:
    ahead = datetime.now(UTC) + timedelta(days=2)
    cases: list[tuple[events_pb2.Event, str]] = [
        (events_pb2.Event(type="node", action="down", id="not-a-uuid"), "event.id"),
        (events_pb2.Event(type="node", action="down", id=f"urn:uuid:{uuid.uuid4()}"), "event.id"),
        (events_pb2.Event(type="node", action="down", id=uuid.uuid4().hex), "event.id"),
        (
            events_pb2.Event(
                type="node", action="down", created_at=at(datetime(1970, 1, 2, tzinfo=UTC))
            ),
            "event.createdAt",
        ),
        (
            events_pb2.Event(
                type="node", action="down", created_at=at(datetime(9999, 1, 1, tzinfo=UTC))
            ),
            "event.createdAt",
        ),
        (events_pb2.Event(type="node", action="down", created_at=at(ahead)), "event.createdAt"),
    ]
    for bad in (">", "*", "a b", "a.b", "-x"):
        cases.append((events_pb2.Event(type="node", action="down", node_id=bad), "event.nodeId"))
    async with events_stub(service.grpc_address) as stub:
        for event, field in cases:
            await refused(
                stub.Publish(events_pb2.PublishRequest(event=event)),
                grpc.StatusCode.INVALID_ARGUMENT,
                field,
            )
        # What is sane still passes: a UUID, a recent date, an hour of clock skew.
        ok = await stub.Publish(
            events_pb2.PublishRequest(
                event=events_pb2.Event(
                    type="node",
                    action="down",
                    id=str(uuid.uuid4()),
                    node_id="web_1-a",
                    created_at=at(datetime.now(UTC) + timedelta(hours=1)),
                )
            )
        )
        assert not ok.duplicate
        listed = await wait_for(
            lambda: history(stub, 1),
            what="the one sane event stored",
        )
        assert listed.events[0].id == ok.event.id
    assert not service.tasks.failed.is_set()


async def test_publish_says_when_an_id_is_a_duplicate(service: EventService) -> None:
    async with events_stub(service.grpc_address) as stub:
        first = await stub.Publish(
            events_pb2.PublishRequest(event=events_pb2.Event(type="node", action="down"))
        )
        assert not first.duplicate
        again = events_pb2.Event(id=first.event.id, type="node", action="down")
        # At once (JetStream's de-duplication window) ...
        soon = await stub.Publish(events_pb2.PublishRequest(event=again))
        assert soon.duplicate
        assert soon.event.id == first.event.id
        await wait_for(
            lambda: history(stub, 1),
            what="the event stored",
        )
        # ... and once it is in the history.
        later = await stub.Publish(events_pb2.PublishRequest(event=again))
        assert later.duplicate
        other = await stub.Publish(
            events_pb2.PublishRequest(event=events_pb2.Event(type="node", action="up"))
        )
        assert not other.duplicate
        listed = await wait_for(
            lambda: history(stub, 2),
            what="the second event stored",
        )
        assert sorted(e.id for e in listed.events) == sorted([first.event.id, other.event.id])


def hook_request(
    name: str, url: str, *filters: events_pb2.EventFilter
) -> events_pb2.CreateHookRequest:
    """A hook for the test's events (by default every type but the audit of its own calls)."""
    chosen = list(filters) or [
        events_pb2.EventFilter(type=t) for t in ("node", "service", "outage", "interface")
    ]
    return events_pb2.CreateHookRequest(name=name, url=url, secret=SECRET, filters=chosen)


async def test_a_hook_filter_that_is_not_a_pattern_is_refused(service: EventService) -> None:
    async with events_stub(service.grpc_address) as stub:
        for value, field in (
            ("[unclosed", "node_id"),
            ("web-[0-9", "node_id"),
            ("[!", "location"),
        ):
            await refused(
                stub.CreateHook(
                    hook_request(
                        "h", "http://127.0.0.1:9/h", events_pb2.EventFilter(**{field: value})
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                f"filters[0].{field}",
            )
        # Closed classes are patterns (a ']' first is a member, as fnmatch reads it).
        hook = await stub.CreateHook(
            hook_request(
                "h",
                "http://127.0.0.1:9/h",
                events_pb2.EventFilter(node_id="[mc]*"),
                events_pb2.EventFilter(node_id="[]x]?"),
            )
        )
        assert [f.node_id for f in hook.filters] == ["[mc]*", "[]x]?"]

        # Subscribe shares the validation.
        async def subscribe() -> None:
            request = events_pb2.SubscribeRequest(filters=[events_pb2.EventFilter(type="[x")])
            async for _ in stub.Subscribe(request):
                break

        await refused(subscribe(), grpc.StatusCode.INVALID_ARGUMENT, "filters[0].type")


async def test_one_url_under_two_hook_names_is_already_exists(service: EventService) -> None:
    async with events_stub(service.grpc_address) as stub:
        await stub.CreateHook(hook_request("first", "http://127.0.0.1:9/same"))
        details = await refused(
            stub.CreateHook(hook_request("second", "http://127.0.0.1:9/same")),
            grpc.StatusCode.ALREADY_EXISTS,
            "url",
        )
        assert "'first'" in details
        listed = await stub.ListHooks(events_pb2.ListHooksRequest())
        assert [h.name for h in listed.hooks] == ["first"]
        # Another path on the same host is another URL.
        await stub.CreateHook(hook_request("second", "http://127.0.0.1:9/other"))


async def send(url: str, event: dict[str, object]) -> None:
    async with jetstream(url) as js:
        await publish_raw(js, event)


def update(hook_id: str, *paths: str, **fields: object) -> events_pb2.UpdateHookRequest:
    return events_pb2.UpdateHookRequest(
        id=hook_id,
        update_mask=FieldMask(paths=list(paths)),
        **fields,  # type: ignore[arg-type]
    )


async def test_update_hook_moves_deliveries_and_checks_its_mask(service: EventService) -> None:
    old, new = await Receiver().start(), await Receiver().start()
    try:
        async with events_stub(service.grpc_address) as stub:
            hook = await stub.CreateHook(hook_request("ops", old.url))
            other = await stub.CreateHook(hook_request("other", "http://127.0.0.1:9/x"))
            first = raw_event("node", "down", "n1")
            await send(service.nats_url, first)
            await wait_for(lambda: old.requests, what="the first delivery, to the old URL")

            changed = await stub.UpdateHook(
                update(hook.id, "url", "secret", url=new.url, secret="a-brand-new-secret")
            )
            assert changed.id == hook.id
            assert changed.url == new.url
            assert changed.name == "ops"
            assert "secret" not in str(changed).lower()
            second = raw_event("node", "up", "n1")
            await send(service.nats_url, second)
            await wait_for(lambda: new.requests, what="the next delivery, to the new URL")
            headers, body = new.requests[-1]
            assert new.bodies()[-1]["id"] == second["id"]
            assert verify("a-brand-new-secret", body, headers["X-Vigil-Signature"])
            assert [b["id"] for b in old.bodies()] == [first["id"]]

            # The new secret is sealed at rest, like CreateHook's.
            async with service.store.engine.connect() as conn:
                stored = (
                    await conn.execute(
                        sa.text("select secret from hooks where id = :id"), {"id": hook.id}
                    )
                ).scalar_one()
            assert stored.startswith("aesgcm1:")
            assert "a-brand-new-secret" not in stored

            renamed = await stub.UpdateHook(
                update(
                    hook.id,
                    "name",
                    "filters",
                    name="ops-2",
                    filters=[events_pb2.EventFilter(type="node")],
                )
            )
            assert renamed.name == "ops-2"
            assert renamed.url == new.url
            assert [f.type for f in renamed.filters] == ["node"]

            invalid = grpc.StatusCode.INVALID_ARGUMENT
            await refused(stub.UpdateHook(update(hook.id, "bogus")), invalid, "update_mask")
            await refused(stub.UpdateHook(update(hook.id)), invalid, "update_mask")
            await refused(stub.UpdateHook(update(hook.id, "id")), invalid, "update_mask")
            await refused(stub.UpdateHook(update("", "url", url=new.url)), invalid, "id")
            await refused(stub.UpdateHook(update(hook.id, "url", url="ftp://x/")), invalid, "url")
            await refused(
                stub.UpdateHook(update(hook.id, "secret", secret="short")), invalid, "secret"
            )
            await refused(stub.UpdateHook(update(hook.id, "name", name="a b")), invalid, "name")
            await refused(
                stub.UpdateHook(
                    update(hook.id, "filters", filters=[events_pb2.EventFilter(node_id="[x")])
                ),
                invalid,
                "filters[0].node_id",
            )
            await refused(
                stub.UpdateHook(update(uuid.uuid4().hex, "url", url=new.url)),
                grpc.StatusCode.NOT_FOUND,
                "id",
            )
            details = await refused(
                stub.UpdateHook(update(other.id, "url", url=new.url)),
                grpc.StatusCode.ALREADY_EXISTS,
                "url",
            )
            assert "'ops-2'" in details
            await refused(
                stub.UpdateHook(update(other.id, "name", name="ops-2")),
                grpc.StatusCode.ALREADY_EXISTS,
                "name",
            )
            # Refused updates changed nothing.
            listed = await stub.ListHooks(events_pb2.ListHooksRequest())
            assert {(h.name, h.url) for h in listed.hooks} == {
                ("ops-2", new.url),
                ("other", "http://127.0.0.1:9/x"),
            }
    finally:
        await old.stop()
        await new.stop()
    assert not service.tasks.failed.is_set()


async def test_update_hook_survives_a_restart(tmp_path: Path, nats_server: NatsServer) -> None:
    receiver = await Receiver().start()
    cfg = events_config(tmp_path, nats_server.url)
    try:
        svc = EventService(cfg, nats_url=nats_server.url)
        await svc.start()
        try:
            async with events_stub(svc.grpc_address) as stub:
                hook = await stub.CreateHook(hook_request("ops", "http://127.0.0.1:9/old"))
                await stub.UpdateHook(update(hook.id, "url", url=receiver.url))
        finally:
            await svc.stop()
        svc = EventService(cfg, nats_url=nats_server.url)
        await svc.start()
        try:
            event = raw_event("node", "down", "n2")
            await send(svc.nats_url, event)
            await wait_for(lambda: receiver.requests, what="a delivery to the updated URL")
            assert receiver.bodies()[0]["id"] == event["id"]
        finally:
            await svc.stop()
    finally:
        await receiver.stop()
