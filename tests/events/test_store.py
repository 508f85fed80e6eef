"""The store on SQLite and PostgreSQL: history, paging keys, hooks, parked deliveries, service states."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.common.events import make_event
from services.events.store import EventFilter, EventStore, HookFailureRow, HookRow, ServiceState, StoredEvent


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[EventStore]:
    s = EventStore(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def svc_event(action: str, node: str = "n1", svc: str = "HTTP", location: str | None = "paris", **data: object):
    kind = "outage" if action in ("opened", "closed") else "service"
    return make_event(
        kind, action, source="scheduler", type_id=f"{node}/10.0.0.1/{svc}", node_id=node, location=location, **data
    )


async def test_history_is_stored_once_and_listed_newest_first(store: EventStore) -> None:
    batch = [StoredEvent(seq, make_event("node", "down", source="t", node_id=f"n{seq}")) for seq in (3, 4, 7)]
    await store.add(batch)
    await store.add(batch[:2])  # a redelivery changes nothing
    rows, total = await store.list_events(EventFilter(), before_seq=None, limit=10)
    assert total == 3
    assert [r.seq for r in rows] == [7, 4, 3]
    assert rows[0].event == batch[2].event
    assert await store.max_seq() == 7
    assert await store.known_ids([batch[0].event.id, "nope"]) == {batch[0].event.id: 3}
    assert [r.seq for r in await store.range(3, 7, 10)] == [4]
    assert [r.seq for r in await store.range(0, None, 2)] == [3, 4]


async def test_filters_and_time_range(store: EventStore) -> None:
    a = make_event("node", "down", source="t", node_id="a", location="paris", created_at=1000.0)
    b = make_event("node", "up", source="t", node_id="a", location="paris", created_at=2000.0)
    c = make_event("node", "down", source="t", node_id="b", location="london", created_at=3000.0)
    await store.add([StoredEvent(1, a), StoredEvent(2, b), StoredEvent(3, c)])

    async def seqs(**kw: object) -> list[int]:
        rows, total = await store.list_events(EventFilter(**kw), before_seq=None, limit=10)  # type: ignore[arg-type]
        assert total == len(rows)
        return [r.seq for r in rows]

    assert await seqs(action="down") == [3, 1]
    assert await seqs(node_id="a") == [2, 1]
    assert await seqs(location="london") == [3]
    assert await seqs(severity="critical") == [3, 1]
    assert await seqs(since=1500.0) == [3, 2]
    assert await seqs(since=1000.0, until=2000.0) == [1]


async def test_service_states_follow_events(store: EventStore) -> None:
    changes = await store.add([StoredEvent(1, svc_event("lost")), StoredEvent(2, svc_event("opened"))])
    assert changes == [ServiceState("n1/10.0.0.1/HTTP", "paris", "down")]
    # Regained, and an unmanaged close (no location) of another service first known as down.
    await store.add([StoredEvent(3, svc_event("lost", svc="DNS", location="london"))])
    changes = await store.add(
        [
            StoredEvent(4, svc_event("regained")),
            StoredEvent(5, svc_event("closed", svc="DNS", location=None, reason="unmanaged")),
        ]
    )
    assert changes == [ServiceState("n1/10.0.0.1/HTTP", "paris", "up"), "n1/10.0.0.1/DNS"]
    assert await store.service_states() == [ServiceState("n1/10.0.0.1/HTTP", "paris", "up")]
    # A late redelivery of an older event does not roll the state back.
    await store.add([StoredEvent(1, svc_event("lost"))])
    await store.add([StoredEvent(6, svc_event("opened", location=None))])
    assert await store.service_states() == [ServiceState("n1/10.0.0.1/HTTP", "paris", "down")]


async def test_hooks_and_parked_deliveries(store: EventStore) -> None:
    hook = HookRow(id="h1", name="ops", url="http://x/", secret="secret-1", filters=[{"type": "node"}], created_at=5.0)
    assert await store.add_hook(hook)
    assert not await store.add_hook(HookRow(id="h2", name="ops", url="u", secret="s", filters=[], created_at=1.0))
    await store.add_hook(HookRow(id="h3", name="aaa", url="u", secret="s" * 8, filters=[], created_at=1.0))
    page, total = await store.list_hooks(after_name=None, limit=1)
    assert total == 2
    assert [h.name for h in page] == ["aaa"]
    page, _ = await store.list_hooks(after_name="aaa", limit=5)
    assert [h.name for h in page] == ["ops"]
    assert page[0].filters == [{"type": "node"}]

    hook.last_error, hook.last_error_at, hook.delivered, hook.ack_floor = "HTTP 500", 9.0, 3, 42
    await store.save_hook_status(hook)
    event = make_event("node", "down", source="t", node_id="n")
    for i in range(3):
        failure = HookFailureRow(0, "h1", event.id, 10 + i, 4, 1.0, 2.0, f"HTTP 50{i}", event.to_json())
        await store.park(failure, keep=100)
    got = await store.get_hook("h1")
    assert got is not None
    assert (got.last_error, got.last_error_at, got.delivered, got.ack_floor, got.failed) == ("HTTP 500", 9.0, 3, 42, 3)
    rows, total = await store.list_failures("h1", before_id=None, limit=2)
    assert total == 3
    assert [r.last_error for r in rows] == ["HTTP 502", "HTTP 501"]
    rows2, _ = await store.list_failures("h1", before_id=rows[-1].id, limit=2)
    assert [r.seq for r in rows2] == [10]
    assert rows2[0].payload == event.to_json()

    assert await store.delete_hook("h1")
    assert not await store.delete_hook("h1")
    assert await store.get_hook("h1") is None
    assert (await store.list_failures("h1", before_id=None, limit=5))[1] == 0
