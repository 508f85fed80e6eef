"""Scoped visibility (issue 12, item 3), against the real servers.

A caller whose token (or role) is scoped to ``location=paris`` sees only what
belongs to paris: services, outages, results, minions, nodes, events; a summary
names no other location (they are summed into ``unauthorized``); a lyon service
is NOT_FOUND to it, exactly like a missing one; its hooks carry only paris
events; a page token issued to one identity is refused for another; audit
events are for admins only. docs/security.md, "Scopes".

The deployment: nodes ``web-1`` and ``db-1`` at paris, ``web-2`` at lyon, one
minion per location. ``Down`` services poll a closed port (an outage each);
``Noop`` services are polled once (interval 1 h), so their results stay put.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from vigil.v1 import (
    common_pb2,
    events_pb2,
    events_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    poller_pb2,
    poller_pb2_grpc,
)

from services.core.access.permissions import ANYWHERE, Grant, Scope
from services.core.access.principal import Principal, Visibility
from services.core.access.visibility import (
    UNAUTHORIZED,
    EventScope,
    describe,
    sanitize_summary,
    sees_audit,
)
from services.core.events import make_event
from services.core.natsserver import NatsServer
from tests.access import bearer, create_token
from tests.events.util import Receiver
from tests.helpers import Stack, free_port, make_config, wait_for
from tests.pki import operator_channel

CALL = 10.0
PARIS = {"web-1", "db-1"}
WEB = {"web-1", "web-2"}
ALL = {"web-1", "db-1", "web-2"}


# -- the rules, without servers ---------------------------------------------------------------


def principal(*grants: Grant, restriction: Scope = ANYWHERE) -> Principal:
    return Principal(kind="token", name="t", role="r", grants=grants, restriction=restriction)


def test_audit_events_are_for_whoever_may_list_users_unscoped() -> None:
    admin = principal(Grant("vigil.v1.Access/*"))
    assert sees_audit(admin)
    assert not sees_audit(principal(Grant("vigil.v1.Events/*")))
    assert not sees_audit(principal(Grant("vigil.v1.Access/*", Scope(location="paris"))))
    assert not sees_audit(principal(Grant("vigil.v1.*/*"), restriction=Scope(location="paris")))
    audit = make_event("audit", "put-node", source="scheduler", principal="x")
    assert EventScope.of(admin, "vigil.v1.Events/ListEvents").admits(audit) is False  # no grant
    reader = principal(Grant("vigil.v1.*/*"))
    assert EventScope.of(reader).admits(audit)
    assert not EventScope.of(principal(Grant("vigil.v1.Events/*"))).admits(audit)


def test_a_summary_names_only_visible_locations_and_still_adds_up() -> None:
    data = {
        "locations": {"paris": {"up": 1, "down": 2}, "lyon": {"up": 3}, "rome": {"down": 4}},
        "total": {"up": 4, "down": 6},
    }
    paris = Visibility(everything=True, restriction=Scope(location="paris"))
    shown = sanitize_summary(data, paris)
    assert shown == {
        "locations": {"paris": {"up": 1, "down": 2}, UNAUTHORIZED: {"up": 3, "down": 4}},
        "total": {"up": 4, "down": 6},
    }
    # A caller limited to some nodes sees no location as a whole.
    nodes = Visibility(everything=False, scopes=(Scope(node="web-*"),))
    assert sanitize_summary(data, nodes)["locations"] == {UNAUTHORIZED: {"up": 4, "down": 6}}
    # Nothing hidden: unchanged (the same object).
    assert sanitize_summary(data, Visibility(everything=True)) is data
    both = Visibility(everything=False, scopes=(Scope("paris"), Scope("lyon"), Scope("rome")))
    assert sanitize_summary(data, both) is data


def test_an_event_scope_round_trips_canonically_and_is_described() -> None:
    vis = Visibility(
        everything=False,
        scopes=(Scope(location="lyon", node="db-*"), Scope(location="paris")),
        restriction=Scope(node="[a-z,]*"),
    )
    same = Visibility(
        everything=False, scopes=tuple(reversed(vis.scopes)), restriction=vis.restriction
    )
    scope = EventScope(vis, audit=False)
    assert scope.to_json() == EventScope(same, audit=False).to_json()
    back = EventScope.from_json(scope.to_json())
    assert back.audit is False and back.visibility.restriction == vis.restriction
    assert set(back.visibility.scopes) == set(vis.scopes)
    assert describe(vis) == "(location=lyon,node=db-* or location=paris) and node=[a-z,]*"
    assert describe(Visibility(everything=True, restriction=Scope("paris"))) == "location=paris"
    with pytest.raises(ValueError, match="not a stored event scope"):
        EventScope.from_json('{"v": 2}')


# -- against the servers ----------------------------------------------------------------------


def node(node_id: str, location: str, closed_port: int) -> dict[str, Any]:
    services: list[dict[str, Any]] = [{"name": "Noop", "monitor": "noop", "interval": "1h"}]
    if node_id.startswith("web"):
        services.append({"name": "Down", "monitor": "tcp", "params": {"port": closed_port}})
    return {
        "id": node_id,
        "location": location,
        "interfaces": [{"ip": "127.0.0.1", "services": services}],
    }


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    port = free_port()  # nothing listens there: connection refused, an outage
    cfg = make_config(
        tmp_path,
        nats_server.url,
        [node("web-1", "paris", port), node("db-1", "paris", port), node("web-2", "lyon", port)],
        events={"summary_interval": "0.3s", "subscribe_keepalive": "0.5s"},
    )
    s = await Stack(cfg, nats_server.url).start(minion_locations=("paris", "lyon"))
    try:
        yield s
    finally:
        await s.stop()


class Client:
    """One caller: a bearer token (or none: the admin certificate) on both servers."""

    def __init__(self, stack: Stack, token: str | None) -> None:
        assert stack.scheduler is not None and stack.events is not None
        self.metadata = bearer(token) if token else None
        self._sched = operator_channel(stack.scheduler.grpc_address)
        self._events = operator_channel(stack.events.grpc_address)
        self.poller = poller_pb2_grpc.PollerStub(self._sched)
        self.inventory = inventory_pb2_grpc.InventoryStub(self._sched)
        self.events = events_pb2_grpc.EventsStub(self._events)

    async def close(self) -> None:
        await self._sched.close()
        await self._events.close()

    def kw(self) -> dict[str, Any]:
        return {"metadata": self.metadata, "timeout": CALL}


@pytest.fixture
async def clients(stack: Stack) -> AsyncIterator[dict[str, Client]]:
    made = {
        "admin": Client(stack, None),
        "all": Client(stack, await create_token(stack, "viewer", name="all-viewer")),
        "paris": Client(
            stack, await create_token(stack, "viewer", name="paris-viewer", location="paris")
        ),
        "web": Client(stack, await create_token(stack, "viewer", name="web-viewer", node="web-*")),
    }
    try:
        yield made
    finally:
        for c in made.values():
            await c.close()


def ref(node_id: str, service: str = "Noop") -> common_pb2.ServiceRef:
    return common_pb2.ServiceRef(node_id=node_id, ip="127.0.0.1", service=service)


async def settled(admin: Client) -> None:
    """Both outages open, every Noop result stored, both minions known."""

    async def ready() -> bool:
        outages = await admin.poller.ListOutages(poller_pb2.ListOutagesRequest(), **admin.kw())
        results = await admin.poller.ListResults(
            poller_pb2.ListResultsRequest(service="Noop"), **admin.kw()
        )
        minions = await admin.poller.ListMinions(poller_pb2.ListMinionsRequest(), **admin.kw())
        return outages.total_size == 2 and results.total_size == 3 and minions.total_size == 2

    await wait_for(ready, timeout=30, interval=0.2, what="outages, results and minions")


async def test_lists_show_a_scoped_caller_only_its_scope_counted_before_paging(
    stack: Stack, clients: dict[str, Client]
) -> None:
    await settled(clients["admin"])
    for who, nodes in (("all", ALL), ("paris", PARIS), ("web", WEB)):
        c = clients[who]
        services = await c.poller.ListServices(
            poller_pb2.ListServicesRequest(page_size=100), **c.kw()
        )
        got = {s.service.node_id for s in services.services}
        assert got == nodes, who
        want = sum(2 if n.startswith("web") else 1 for n in nodes)
        assert services.total_size == len(services.services) == want, who
        # Page by page: full pages, the same total, every item once.
        seen, token = [], ""
        while True:
            page = await c.poller.ListServices(
                poller_pb2.ListServicesRequest(page_size=2, page_token=token), **c.kw()
            )
            assert page.total_size == want
            assert len(page.services) == 2 or not page.next_page_token
            seen += [(s.service.node_id, s.service.service) for s in page.services]
            token = page.next_page_token
            if not token:
                break
        assert len(seen) == len(set(seen)) == want, who

        outages = await c.poller.ListOutages(poller_pb2.ListOutagesRequest(page_size=1), **c.kw())
        want_outages = {n for n in nodes if n.startswith("web")}
        assert outages.total_size == len(want_outages), who
        assert {o.service.node_id for o in outages.outages} <= want_outages
        assert bool(outages.next_page_token) == (len(want_outages) > 1)

        results = await c.poller.ListResults(
            poller_pb2.ListResultsRequest(service="Noop", page_size=100), **c.kw()
        )
        assert {r.service.node_id for r in results.results} == nodes, who
        assert results.total_size == len(nodes), who

        listed = await c.inventory.ListNodes(inventory_pb2.ListNodesRequest(), **c.kw())
        assert {n.id for n in listed.nodes} == nodes and listed.total_size == len(nodes), who

    minions = {
        who: await clients[who].poller.ListMinions(
            poller_pb2.ListMinionsRequest(), **clients[who].kw()
        )
        for who in ("all", "paris", "web")
    }
    assert {m.location for m in minions["all"].minions} == {"paris", "lyon"}
    assert [m.location for m in minions["paris"].minions] == ["paris"]
    assert minions["paris"].total_size == 1
    # A minion serves its whole location: a caller limited to node ids sees none.
    assert minions["web"].total_size == 0 and not minions["web"].minions


async def test_outside_the_scope_is_not_found_like_a_missing_service_or_node(
    stack: Stack, clients: dict[str, Client]
) -> None:
    paris = clients["paris"]
    ok = await paris.poller.GetService(
        poller_pb2.GetServiceRequest(service=ref("web-1")), **paris.kw()
    )
    assert ok.location == "paris"
    errors = []
    for r in (ref("web-2"), ref("nope")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await paris.poller.GetService(poller_pb2.GetServiceRequest(service=r), **paris.kw())
        errors.append(err.value)
    assert [e.code() for e in errors] == [grpc.StatusCode.NOT_FOUND] * 2
    assert [(e.details() or "").split(" ", 2)[2] for e in errors] == ["is not monitored"] * 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await paris.inventory.GetNode(inventory_pb2.GetNodeRequest(id="web-2"), **paris.kw())
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "node web-2 does not exist"

    operator = Client(
        stack, await create_token(stack, "operator", name="paris-operator", location="paris")
    )
    try:
        for call in (
            operator.poller.PollNow(
                poller_pb2.PollNowRequest(service=ref("web-2")), **operator.kw()
            ),
            operator.poller.SetPaused(
                poller_pb2.SetPausedRequest(service=ref("web-2"), paused=True), **operator.kw()
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert "is not monitored" in (err.value.details() or "")
        assert stack.scheduler is not None
        assert not any(rt.paused for rt in stack.scheduler.services.values())
        # Inside its scope it acts as usual.
        polled = await operator.poller.PollNow(
            poller_pb2.PollNowRequest(service=ref("db-1")), **operator.kw()
        )
        assert polled.service.last_poll_status == common_pb2.POLL_STATUS_UP
    finally:
        await operator.close()


async def test_a_scoped_admin_puts_and_deletes_nodes_only_inside_its_scope(
    stack: Stack, clients: dict[str, Client]
) -> None:
    paris_admin = Client(
        stack, await create_token(stack, "admin", name="paris-admin", location="paris")
    )

    def put(c: Client, node_id: str, location: str) -> Any:
        return c.inventory.PutNode(
            inventory_pb2.PutNodeRequest(
                node=inventory_pb2.Node(id=node_id, label=node_id, location=location)
            ),
            **c.kw(),
        )

    try:
        await put(clients["admin"], "api-lyon", "lyon")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await put(paris_admin, "api-1", "lyon")
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "location=paris" in (err.value.details() or "")
        # An id taken by a node outside the scope cannot be taken over (moved in).
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await put(paris_admin, "api-lyon", "paris")
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "location=paris" in (err.value.details() or "")
        created = await put(paris_admin, "api-1", "paris")
        assert created.location == "paris"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await paris_admin.inventory.DeleteNode(
                inventory_pb2.DeleteNodeRequest(id="api-lyon"), **paris_admin.kw()
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "node api-lyon does not exist"
        await paris_admin.inventory.DeleteNode(
            inventory_pb2.DeleteNodeRequest(id="api-1"), **paris_admin.kw()
        )
        everything = await clients["admin"].inventory.ListNodes(
            inventory_pb2.ListNodesRequest(), **clients["admin"].kw()
        )
        assert {n.id for n in everything.nodes} == ALL | {"api-lyon"}
        assert (
            await clients["admin"].inventory.GetNode(
                inventory_pb2.GetNodeRequest(id="api-lyon"), **clients["admin"].kw()
            )
        ).location == "lyon"
    finally:
        await paris_admin.close()


async def test_a_page_token_is_refused_to_another_identity(clients: dict[str, Client]) -> None:
    all_, paris = clients["all"], clients["paris"]
    first = await all_.poller.ListServices(poller_pb2.ListServicesRequest(page_size=1), **all_.kw())
    assert first.next_page_token
    again = await all_.poller.ListServices(
        poller_pb2.ListServicesRequest(page_size=1, page_token=first.next_page_token), **all_.kw()
    )
    assert again.services
    for c in (paris, clients["admin"]):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.poller.ListServices(
                poller_pb2.ListServicesRequest(page_size=1, page_token=first.next_page_token),
                **c.kw(),
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (err.value.details() or "")


# -- events -----------------------------------------------------------------------------------


async def publish(admin: Client, node_id: str | None, location: str | None, **kw: Any) -> str:
    event = events_pb2.Event(type="node", action="down", node_id=node_id or "", **kw)
    if location:
        event.location = location
    resp = await admin.events.Publish(events_pb2.PublishRequest(event=event), **admin.kw())
    return str(resp.event.id)


def data_of(event: events_pb2.Event) -> dict[str, Any]:
    return json_format.MessageToDict(event.data)


async def listed(c: Client, **filters: Any) -> events_pb2.ListEventsResponse:
    return await c.events.ListEvents(
        events_pb2.ListEventsRequest(page_size=1000, **filters), **c.kw()
    )


async def test_events_history_subscribe_and_summaries_follow_the_scope(
    stack: Stack, clients: dict[str, Client]
) -> None:
    admin, paris, web, all_ = clients["admin"], clients["paris"], clients["web"], clients["all"]
    ids = {
        ("paris", "web-1"): await publish(admin, "web-1", "paris"),
        ("paris", "db-1"): await publish(admin, "db-1", "paris"),
        ("lyon", "web-2"): await publish(admin, "web-2", "lyon"),
        (None, None): await publish(admin, None, None),
    }

    async def stored() -> bool:
        return (await listed(admin, type="node")).total_size == 4

    await wait_for(stored, timeout=15, what="the published events in the history")
    for c, want in (
        (all_, set(ids)),
        (paris, {("paris", "web-1"), ("paris", "db-1")}),
        (web, {("paris", "web-1"), ("lyon", "web-2")}),
    ):
        page = await listed(c, type="node")
        assert {e.id for e in page.events} == {ids[k] for k in want}
        assert page.total_size == len(want)

    # Audit events (the Publish calls above were audited) are for admins only.
    async def audited() -> bool:
        return (await listed(admin, type="audit")).total_size > 0

    await wait_for(audited, timeout=15, what="audit events")
    for c in (all_, paris, web):
        assert (await listed(c, type="audit")).total_size == 0
    everything = await listed(all_)
    assert all(e.type != "audit" for e in everything.events)

    # The summary (two Down services: one at paris, one at lyon) names no other location.
    async def summary() -> dict[str, Any] | None:
        page = await listed(admin, type="summary")
        if not page.events:
            return None
        data = data_of(page.events[0])
        if {"paris", "lyon"} - set(data.get("locations", {})):
            return None
        return data

    full = await wait_for(summary, timeout=20, interval=0.2, what="a summary of both locations")
    shown = await listed(paris, type="summary")
    assert shown.total_size == (await listed(admin, type="summary")).total_size
    data = data_of(shown.events[0])
    assert set(data["locations"]) == {"paris", UNAUTHORIZED}
    assert data["locations"]["paris"] == full["locations"]["paris"]
    for state, n in data["total"].items():
        assert sum(per.get(state, 0) for per in data["locations"].values()) == n

    # Subscribe: replayed from the start and live, only paris events come.
    call = paris.events.Subscribe(
        events_pb2.SubscribeRequest(
            after_sequence=0, filters=[events_pb2.EventFilter(type="node")]
        ),
        metadata=paris.metadata,
    )
    got: list[events_pb2.Event] = []

    async def read_until(event_id: str) -> None:
        async for resp in call:
            if resp.HasField("event"):
                got.append(resp.event)
                if resp.event.id == event_id:
                    return

    try:
        async with asyncio.timeout(20):
            await read_until(ids[("paris", "db-1")])
        lyon_live = await publish(admin, "web-2", "lyon")
        paris_live = await publish(admin, "db-1", "paris")
        async with asyncio.timeout(20):
            await read_until(paris_live)
    finally:
        call.cancel()
    assert {e.location for e in got} == {"paris"}
    assert lyon_live not in {e.id for e in got}
    assert [e.id for e in got] == [ids[("paris", "web-1")], ids[("paris", "db-1")], paris_live]

    # The summaries a scoped Subscribe replays are sanitized too.
    call = paris.events.Subscribe(
        events_pb2.SubscribeRequest(
            after_sequence=0, filters=[events_pb2.EventFilter(type="summary")]
        ),
        metadata=paris.metadata,
    )
    try:
        async with asyncio.timeout(20):
            async for resp in call:
                if resp.HasField("event"):
                    replayed = data_of(resp.event)
                    break
    finally:
        call.cancel()
    assert "lyon" not in replayed["locations"]


async def test_a_hook_created_by_a_paris_token_carries_only_paris_events(
    stack: Stack, clients: dict[str, Client]
) -> None:
    admin = clients["admin"]
    receiver = await Receiver().start()
    paris_op = Client(
        stack, await create_token(stack, "operator", name="paris-hooks", location="paris")
    )
    paris_op2 = Client(
        stack, await create_token(stack, "operator", name="paris-hooks-2", location="paris")
    )
    lyon_op = Client(
        stack, await create_token(stack, "operator", name="lyon-hooks", location="lyon")
    )
    try:
        hook = await paris_op.events.CreateHook(
            events_pb2.CreateHookRequest(
                name="paris-only",
                url=receiver.url,
                secret="s3cret-s3cret",
                filters=[
                    events_pb2.EventFilter(type="node"),
                    events_pb2.EventFilter(type="summary"),
                ],
            ),
            **paris_op.kw(),
        )
        lyon = await publish(admin, "web-2", "lyon")
        paris = await publish(admin, "web-1", "paris")
        # A service lost at lyon changes the counts: a summary follows.
        lost = events_pb2.Event(
            type="service",
            action="lost",
            node_id="web-2",
            location="lyon",
            type_id="web-2/127.0.0.1/Extra",
        )
        await admin.events.Publish(events_pb2.PublishRequest(event=lost), **admin.kw())

        def delivered(kind: str) -> list[dict[str, Any]]:
            return [b for b in receiver.bodies() if b["type"] == kind]

        await wait_for(
            lambda: any(b["id"] == paris for b in receiver.bodies()),
            timeout=20,
            what="the paris event at the hook",
        )
        await wait_for(
            lambda: any(b["data"]["total"].get("down", 0) >= 3 for b in delivered("summary")),
            timeout=20,
            what="a summary counting the lyon loss at the hook",
        )
        assert lyon not in {b["id"] for b in receiver.bodies()}
        assert {b["location"] for b in delivered("node")} == {"paris"}
        for body in delivered("summary"):
            assert set(body["data"]["locations"]) <= {"paris", UNAUTHORIZED}
            assert body["data"]["locations"][UNAUTHORIZED]["down"] >= 1

        # Hooks are managed within the scope: the same scope sees it, lyon does not.
        def names(resp: events_pb2.ListHooksResponse) -> list[str]:
            return [h.name for h in resp.hooks]

        req = events_pb2.ListHooksRequest()
        assert names(await paris_op2.events.ListHooks(req, **paris_op2.kw())) == ["paris-only"]
        seen_by_lyon = await lyon_op.events.ListHooks(req, **lyon_op.kw())
        assert names(seen_by_lyon) == [] and seen_by_lyon.total_size == 0
        assert names(await admin.events.ListHooks(req, **admin.kw())) == ["paris-only"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await lyon_op.events.DeleteHook(
                events_pb2.DeleteHookRequest(id=hook.id), **lyon_op.kw()
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        await paris_op2.events.DeleteHook(
            events_pb2.DeleteHookRequest(id=hook.id), **paris_op2.kw()
        )
    finally:
        for c in (paris_op, paris_op2, lyon_op):
            await c.close()
        await receiver.stop()
