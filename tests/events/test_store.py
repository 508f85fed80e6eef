"""The store on SQLite and PostgreSQL.

History, paging keys, hooks, parked deliveries, service states.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from services.core.events import make_event
from services.events.projection import ServiceState
from services.events.store import EventStore
from services.events.store.history import EventFilter, StoredEvent
from services.events.store.hooks import HookFailureRow, HookRow


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[EventStore]:
    s = EventStore(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def svc_event(
    action: str, node: str = "n1", svc: str = "HTTP", location: str | None = "paris", **data: object
):
    kind = "outage" if action in ("opened", "closed") else "service"
    return make_event(
        kind,
        action,
        source="scheduler",
        type_id=f"{node}/10.0.0.1/{svc}",
        node_id=node,
        location=location,
        **data,
    )


async def test_history_is_stored_once_and_listed_newest_first(store: EventStore) -> None:
    batch = [
        StoredEvent(seq, make_event("node", "down", source="t", node_id=f"n{seq}"))
        for seq in (3, 4, 7)
    ]
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


def state(key: str, location: str | None, st: str, kind: str = "service") -> ServiceState:
    return ServiceState(key, location, st, kind, "n1")


async def test_service_states_follow_events(store: EventStore) -> None:
    http, dns = "n1/10.0.0.1/HTTP", "n1/10.0.0.1/DNS"
    changes = await store.add(
        [StoredEvent(1, svc_event("lost")), StoredEvent(2, svc_event("opened"))]
    )
    assert changes == [state(http, "paris", "down")]
    # Regained, and an unmanaged close (no location) of another service first known as down.
    await store.add([StoredEvent(3, svc_event("lost", svc="DNS", location="london"))])
    changes = await store.add(
        [
            StoredEvent(4, svc_event("regained")),
            StoredEvent(5, svc_event("closed", svc="DNS", location=None, reason="unmanaged")),
        ]
    )
    assert changes == [state(http, "paris", "up"), dns]
    assert await store.service_states() == [state(http, "paris", "up")]
    # A late redelivery of an older event does not roll the state back.
    await store.add([StoredEvent(1, svc_event("lost"))])
    await store.add([StoredEvent(6, svc_event("opened", location=None))])
    assert await store.service_states() == [state(http, "paris", "down")]


async def test_interface_and_node_states_and_forgetting_a_node(store: EventStore) -> None:
    seqs = itertools.count(1)

    async def add(kind: str, action: str, type_id: str, **data: object) -> list[ServiceState | str]:
        e = make_event(
            kind, action, source="t", type_id=type_id, node_id="n1", location="paris", **data
        )
        return await store.add([StoredEvent(next(seqs), e)])

    await add("service", "regained", "n1/10.0.0.1/HTTP")
    assert await add("node", "down", "n1") == [state("node:n1", "paris", "down", "node")]
    await add("interface", "down", "n1/10.0.0.1")
    keys = {s.key: (s.kind, s.state) for s in await store.service_states()}
    assert keys == {
        "n1/10.0.0.1/HTTP": ("service", "up"),
        "node:n1": ("node", "down"),
        "interface:n1/10.0.0.1": ("interface", "down"),
    }
    # The node's last service deleted: its node and interface states go with it.
    assert await add("service", "deleted", "n1/10.0.0.1/HTTP", reason="deleted") == [
        "n1/10.0.0.1/HTTP"
    ]
    assert await store.service_states() == []


async def test_hooks_and_parked_deliveries(store: EventStore) -> None:
    hook = HookRow(
        id="h1",
        name="ops",
        url="http://x/",
        secret="secret-1",
        filters=[{"type": "node"}],
        created_at=5.0,
    )
    assert await store.add_hook(hook)
    assert not await store.add_hook(
        HookRow(id="h2", name="ops", url="u", secret="s", filters=[], created_at=1.0)
    )
    await store.add_hook(
        HookRow(id="h3", name="aaa", url="u", secret="s" * 8, filters=[], created_at=1.0)
    )
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
        failure = HookFailureRow(
            0, "h1", event.id, 10 + i, 4, 1.0, 2.0, f"HTTP 50{i}", event.to_json()
        )
        await store.park(failure, keep=100)
    got = await store.get_hook("h1")
    assert got is not None
    assert (got.last_error, got.last_error_at, got.delivered, got.ack_floor, got.failed) == (
        "HTTP 500",
        9.0,
        3,
        42,
        3,
    )
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


async def test_migrations_seed_states_from_an_existing_history(store_url: str) -> None:
    """A history written before the state tables existed (revision 0001) is taken into account."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import Connection

    from services.core import db
    from services.events.store import MIGRATIONS, VERSION_TABLE
    from services.events.store.history import events

    def upgrade_to(conn: Connection, revision: str) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", MIGRATIONS)
        cfg.attributes["connection"] = conn
        cfg.attributes["version_table"] = VERSION_TABLE
        command.upgrade(cfg, revision)

    history = [
        svc_event("lost", svc="HTTP"),
        svc_event("lost", svc="DNS", location="london"),
        svc_event("regained", svc="DNS", location="london"),
        svc_event("lost", svc="SSH"),
        svc_event("closed", svc="SSH", location=None, reason="unmanaged"),
        make_event("node", "down", source="t", type_id="n1", node_id="n1", location="paris"),
    ]
    engine = db.create_engine(store_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to, "0001")
            for i, e in enumerate(history, 1):
                await conn.execute(
                    sa.insert(events).values(
                        seq=i,
                        id=e.id,
                        type=e.type,
                        action=e.action,
                        severity=e.severity,
                        type_id=e.type_id,
                        node_id=e.node_id,
                        location=e.location,
                        source=e.source,
                        created_at=db.utc(1.0),
                        payload=e.to_json(),
                    )
                )
    finally:
        await engine.dispose()
    store = EventStore(store_url)
    await store.open()
    try:
        got = {s.key: (s.kind, s.location, s.state) for s in await store.service_states()}
        assert got == {
            "n1/10.0.0.1/HTTP": ("service", "paris", "down"),
            "n1/10.0.0.1/DNS": ("service", "london", "up"),
            "node:n1": ("node", "paris", "down"),
        }
        assert await store.max_seq() == len(history)
    finally:
        await store.close()
