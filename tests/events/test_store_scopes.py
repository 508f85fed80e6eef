"""Scoped reads of the event store, on SQLite and PostgreSQL (docs/security.md, "Scopes").

What a scoped reader lists and counts must be exactly what
:meth:`EventScope.admits` says, whatever the scope (a location, a node glob
with classes, alternatives, a token restriction) and however many nodes are
visible (beyond the inline parameter limit the set travels as JSON).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.core.access.permissions import ANYWHERE, Scope
from services.core.access.principal import Visibility
from services.core.access.visibility import INLINE_VALUES, EventScope
from services.core.events import Event, make_event
from services.events.store import EventStore
from services.events.store.history import EventFilter, StoredEvent
from services.events.store.hooks import LEGACY_SCOPE, HookRow, HookViewer, hook_scope


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[EventStore]:
    s = EventStore(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def scope(*alternatives: Scope, restriction: Scope = ANYWHERE, audit: bool = False) -> EventScope:
    if not alternatives:
        return EventScope(Visibility(everything=True, restriction=restriction), audit)
    return EventScope(
        Visibility(everything=False, scopes=alternatives, restriction=restriction), audit
    )


def history() -> list[Event]:
    out = []
    for location in ("paris", "lyon", None):
        for node in ("web-1", "web-2", "web-x", "db-1", "Web-3", None):
            out.append(make_event("node", "down", source="t", node_id=node, location=location))
    out.append(
        make_event(
            "summary",
            "updated",
            source="events",
            type_id="summary",
            locations={"paris": {"up": 1, "down": 2}, "lyon": {"up": 3, "down": 4}},
            total={"up": 4, "down": 6},
        )
    )
    out.append(
        make_event(
            "audit",
            "put-node",
            source="scheduler",
            node_id="web-1",
            location="paris",
            principal="x",
        )
    )
    return out


SCOPES = {
    "paris": scope(Scope(location="paris")),
    "web glob": scope(Scope(node="web-*")),
    "class glob in paris": scope(Scope(node="web-[0-9]"), restriction=Scope(location="paris")),
    "negated class": scope(Scope(location="lyon", node="[!w]*")),
    "alternatives": scope(Scope(location="paris"), Scope(location="lyon", node="db-*")),
    "token restriction": scope(restriction=Scope(location="lyon")),
    "unrestricted, no audit": scope(),
    "admin": scope(audit=True),
    "nothing": EventScope(Visibility(everything=False), audit=False),
}


@pytest.mark.parametrize("name", sorted(SCOPES))
async def test_a_scoped_page_lists_and_counts_exactly_what_the_scope_admits(
    store: EventStore, name: str
) -> None:
    events = history()
    await store.add([StoredEvent(i + 1, e) for i, e in enumerate(events)])
    sc = SCOPES[name]
    want = [i + 1 for i, e in reversed(list(enumerate(events))) if sc.admits(e)]
    got: list[int] = []
    before = None
    while True:
        rows, total = await store.list_events(EventFilter(), before_seq=before, limit=4, scope=sc)
        assert total == len(want)
        got += [r.seq for r in rows]
        if len(rows) < 4:
            break
        before = rows[-1].seq
    assert got == want
    # and with another filter on top
    rows, total = await store.list_events(
        EventFilter(location="paris"), before_seq=None, limit=100, scope=sc
    )
    assert [r.seq for r in rows] == [
        i + 1
        for i, e in reversed(list(enumerate(events)))
        if sc.admits(e) and e.location == "paris"
    ]
    assert total == len(rows)


async def test_many_visible_nodes_travel_as_one_parameter(store: EventStore) -> None:
    count = INLINE_VALUES + 150
    events = [
        make_event("node", "down", source="t", node_id=f"n-{i}", location="paris")
        for i in range(count)
    ] + [make_event("node", "down", source="t", node_id="m-1", location="paris")]
    await store.add([StoredEvent(i + 1, e) for i, e in enumerate(events)])
    sc = scope(Scope(location="paris", node="n-*"))
    rows, total = await store.list_events(EventFilter(), before_seq=None, limit=10, scope=sc)
    assert total == count
    assert [r.seq for r in rows] == list(range(count, count - 10, -1))


async def test_hooks_keep_their_owner_and_scope_and_a_viewer_sees_only_its_own(
    store: EventStore,
) -> None:
    paris = scope(restriction=Scope(location="paris"))
    lyon = scope(restriction=Scope(location="lyon"))
    rows = [
        HookRow("h1", "a-paris", "http://x/1", "s" * 8, [], 1.0, owner="token:p1", scope=paris),
        HookRow("h2", "b-paris", "http://x/2", "s" * 8, [], 1.0, owner="token:p2", scope=paris),
        HookRow("h3", "c-lyon", "http://x/3", "s" * 8, [], 1.0, owner="token:l", scope=lyon),
        HookRow("h4", "d-old", "http://x/4", "s" * 8, [], 1.0),
    ]
    for r in rows:
        assert await store.add_hook(r)
    got = await store.get_hook("h1")
    assert got is not None and got.owner == "token:p1" and got.scope == paris
    old = await store.get_hook("h4")
    assert old is not None and old.scope is None and hook_scope(old) == LEGACY_SCOPE
    # Another paris caller: the hooks of the same scope; the lyon one is unknown to it.
    viewer = HookViewer(owner="token:p3", scope=paris)
    page, total = await store.list_hooks(after_name=None, limit=1, seen_by=viewer)
    assert (total, [h.name for h in page]) == (2, ["a-paris"])
    page, _ = await store.list_hooks(after_name="a-paris", limit=5, seen_by=viewer)
    assert [h.name for h in page] == ["b-paris"]
    assert await store.get_hook("h3", seen_by=viewer) is None
    # Its owner sees a hook even if its own scope changed since.
    mine = HookViewer(owner="token:l", scope=paris)
    assert await store.get_hook("h3", seen_by=mine) is not None
    assert (await store.list_hooks(after_name=None, limit=9))[1] == 4
