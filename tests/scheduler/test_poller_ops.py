"""PollNow, SetPaused, ListResults, and a hung poll that delays nobody else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from vigil.v1 import common_pb2, poller_pb2, poller_pb2_grpc

from minion.monitors.base import Status
from services.core.natsserver import NatsServer
from services.scheduler.model import ServiceKey
from tests.helpers import Stack, TcpTarget, make_config, wait_for
from tests.pki import operator_channel

KEY = ServiceKey("n1", "127.0.0.1", "Echo")
REF = common_pb2.ServiceRef(node_id="n1", ip="127.0.0.1", service="Echo")


@pytest.fixture
async def target() -> AsyncIterator[TcpTarget]:
    t = await TcpTarget().start()
    yield t
    await t.stop()


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer, target: TcpTarget) -> AsyncIterator[Stack]:
    node = {
        "id": "n1",
        "interfaces": [
            {
                "ip": "127.0.0.1",
                "services": [{"name": "Echo", "monitor": "tcp", "params": {"port": target.port}}],
            }
        ],
    }
    # A long interval: anything polled within the test was polled on demand.
    cfg = make_config(
        tmp_path,
        nats_server.url,
        [node],
        defaults={"interval": "1h", "timeout": "1s", "retries": 0},
    )
    s = await Stack(cfg, nats_server.url).start(events=False)
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def poller(stack: Stack) -> AsyncIterator[poller_pb2_grpc.PollerStub]:
    assert stack.scheduler is not None
    async with operator_channel(stack.scheduler.grpc_address) as ch:
        yield poller_pb2_grpc.PollerStub(ch)


async def test_poll_now_returns_the_fresh_result(
    stack: Stack, poller: poller_pb2_grpc.PollerStub, target: TcpTarget
) -> None:
    up = await poller.PollNow(poller_pb2.PollNowRequest(service=REF))
    assert up.service.last_poll_status == common_pb2.POLL_STATUS_UP
    assert up.service.status == common_pb2.POLL_STATUS_UP
    await target.stop()
    down = await poller.PollNow(poller_pb2.PollNowRequest(service=REF))
    assert down.service.last_poll_status == common_pb2.POLL_STATUS_DOWN
    assert "connection refused" in down.service.last_reason
    assert down.service.open_outage_id > 0
    assert down.request_id != up.request_id


async def test_poll_now_bad_requests(poller: poller_pb2_grpc.PollerStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await poller.PollNow(poller_pb2.PollNowRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await poller.PollNow(
            poller_pb2.PollNowRequest(
                service=common_pb2.ServiceRef(node_id="n1", ip="127.0.0.1", service="X")
            )
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_pause_stops_scheduled_polls_and_survives_restart(
    tmp_path: Path, stack: Stack, poller: poller_pb2_grpc.PollerStub
) -> None:
    assert stack.scheduler is not None and stack.scheduler.dispatcher is not None
    paused = await poller.SetPaused(poller_pb2.SetPausedRequest(service=REF, paused=True))
    assert paused.paused
    assert KEY not in stack.scheduler.dispatcher.schedule
    # PollNow still works on a paused service.
    polled = await poller.PollNow(poller_pb2.PollNowRequest(service=REF))
    assert polled.service.last_poll_status == common_pb2.POLL_STATUS_UP and polled.service.paused
    await stack.scheduler.journal.flush()
    await stack.scheduler.stop()
    await stack.start_scheduler()
    rt = stack.scheduler.services[KEY]
    assert rt.paused
    assert KEY not in stack.scheduler.dispatcher.schedule  # type: ignore[union-attr]
    async with operator_channel(stack.scheduler.grpc_address) as ch:
        resumed = await poller_pb2_grpc.PollerStub(ch).SetPaused(
            poller_pb2.SetPausedRequest(service=REF, paused=False)
        )
    assert not resumed.paused
    assert KEY in stack.scheduler.dispatcher.schedule  # type: ignore[union-attr]


async def test_list_results_keeps_history_with_paging(
    stack: Stack, poller: poller_pb2_grpc.PollerStub, target: TcpTarget
) -> None:
    # Only the three polls below: the service's first scheduled poll (within the
    # 0.2 s start splay) must not land among them (seen once under CI load).
    await poller.SetPaused(poller_pb2.SetPausedRequest(service=REF, paused=True))
    await poller.PollNow(poller_pb2.PollNowRequest(service=REF))
    await target.stop()
    await poller.PollNow(poller_pb2.PollNowRequest(service=REF))
    await target.start()
    await poller.PollNow(poller_pb2.PollNowRequest(service=REF))
    await stack.scheduler.journal.flush()
    seen = []
    token = ""
    while True:
        page = await poller.ListResults(
            poller_pb2.ListResultsRequest(node_id="n1", page_size=2, page_token=token)
        )
        assert page.total_size == 3
        seen += list(page.results)
        token = page.next_page_token
        if not token:
            break
    assert [r.status for r in seen] == [
        common_pb2.POLL_STATUS_UP,
        common_pb2.POLL_STATUS_DOWN,
        common_pb2.POLL_STATUS_UP,
    ]  # newest first
    assert seen[1].reason.startswith("connection refused")
    assert seen[0].system_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await poller.ListResults(
            poller_pb2.ListResultsRequest(node_id="n2", page_token=page.next_page_token or "x")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_hung_poll_delays_no_other_service(tmp_path: Path, nats_server: NatsServer) -> None:
    held: list[asyncio.StreamWriter] = []

    async def hang(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)  # accept, then say nothing: a banner check waits

    hung = await asyncio.start_server(hang, "127.0.0.1", 0)
    fast = await TcpTarget().start()
    nodes = [
        {
            "id": "slow",
            "interfaces": [
                {
                    "ip": "127.0.0.1",
                    "services": [
                        {
                            "name": "Hung",
                            "monitor": "tcp",
                            "timeout": "20s",
                            "ttl": "30s",
                            "params": {"port": hung.sockets[0].getsockname()[1], "banner": "^SSH"},
                        }
                    ],
                }
            ],
        },
        {
            "id": "quick",
            "interfaces": [
                {
                    "ip": "127.0.0.1",
                    "services": [{"name": "Fast", "monitor": "tcp", "params": {"port": fast.port}}],
                }
            ],
        },
    ]
    cfg = make_config(tmp_path, nats_server.url, nodes)
    stack = await Stack(cfg, nats_server.url).start(events=False)
    try:
        assert stack.scheduler is not None
        fast_rt = stack.scheduler.services[ServiceKey("quick", "127.0.0.1", "Fast")]
        hung_rt = stack.scheduler.services[ServiceKey("slow", "127.0.0.1", "Hung")]
        await wait_for(lambda: hung_rt.in_flight is not None, what="hung poll in flight")
        polls_at_start = fast_rt.last_poll_at
        await wait_for(lambda: fast_rt.last_poll_at != polls_at_start, what="a fast poll")
        for _ in range(4):  # the fast service keeps its 0.5 s rhythm
            before = fast_rt.last_poll_at
            await wait_for(
                lambda b=before: fast_rt.last_poll_at != b, timeout=5, what="next fast poll"
            )
        assert hung_rt.in_flight is not None and hung_rt.last_poll_at is None
        assert fast_rt.status is Status.UP
    finally:
        for w in held:  # the hung poll ends (DOWN) and the minion stops at once
            w.close()
        await stack.stop()
        await fast.stop()
        hung.close()


def banner_node(node_id: str, server: asyncio.Server, count: int) -> dict[str, Any]:
    """A node with ``count`` services S0.. expecting an "X" banner from ``server`` (30 s each)."""
    port = server.sockets[0].getsockname()[1]
    services = [
        {
            "name": f"S{i}",
            "monitor": "tcp",
            "timeout": "30s",
            "ttl": "60s",
            "params": {"port": port, "banner": "^X"},
        }
        for i in range(count)
    ]
    return {"id": node_id, "interfaces": [{"ip": "127.0.0.1", "services": services}]}


async def test_a_saturated_location_gets_no_more_than_its_minions_can_run(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Back-pressure: polls wait for room instead of expiring UNKNOWN at the minion."""
    held: list[asyncio.StreamWriter] = []
    answering = False

    async def hang(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)
        if answering:
            w.write(b"X-banner\r\n")

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    cfg = make_config(tmp_path, nats_server.url, [banner_node("n", server, 6)])
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    try:
        assert stack.scheduler is not None and stack.scheduler.dispatcher is not None
        await stack.start_minion(max_in_flight=2)
        dispatcher = stack.scheduler.dispatcher
        await wait_for(
            lambda: dispatcher.pending.per_location("Default") == 2, what="two polls in flight"
        )
        await asyncio.sleep(1.5)  # several intervals: the others keep waiting, in order
        assert dispatcher.pending.per_location("Default") == 2
        assert len(held) == 2
        waiting = [rt for rt in stack.scheduler.services.values() if rt.in_flight is None]
        assert len(waiting) == 4 and all(rt.last_poll_status is None for rt in waiting)
        # The peer answers: room frees up and the waiting services are polled.
        answering = True
        for w in held:
            w.write(b"X-banner\r\n")
        await wait_for(
            lambda: all(
                rt.last_poll_status is Status.UP for rt in stack.scheduler.services.values()
            ),  # type: ignore[union-attr]
            timeout=20,
            what="every service polled",
        )
    finally:
        await stack.stop()
        for w in held:
            w.close()
        server.close()


async def test_polls_that_waited_for_room_still_respect_the_per_node_bound(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """A saturated location frees room: what waited is sent, but never past a node's bound."""
    held: list[asyncio.StreamWriter] = []

    async def hang(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)  # node "n": accepted, never answered

    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"X-banner\r\n")
        await w.drain()
        w.close()

    hung = await asyncio.start_server(hang, "127.0.0.1", 0)
    quick = await asyncio.start_server(answer, "127.0.0.1", 0)

    cfg = make_config(
        tmp_path,
        nats_server.url,
        [banner_node("n", hung, 4), banner_node("m", quick, 4)],
        scheduler={"max_in_flight_per_node": 1},
    )
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    try:
        assert stack.scheduler is not None and stack.scheduler.dispatcher is not None
        await stack.start_minion(max_in_flight=2)
        dispatcher = stack.scheduler.dispatcher
        m_services = [rt for key, rt in stack.scheduler.services.items() if key.node_id == "m"]
        highest = 0

        def m_polled() -> bool:
            nonlocal highest
            highest = max(highest, dispatcher.pending.per_node("n"))
            return all(rt.last_poll_status is Status.UP for rt in m_services)

        # Node m's polls come back at once, freeing room for what waited (node n's too).
        await wait_for(m_polled, timeout=20, what="node m's services polled")
        await asyncio.sleep(1.0)  # a few more rounds of room freed and taken
        assert highest <= 1
        assert dispatcher.pending.per_node("n") == 1
        assert len(held) == 1  # node n's first poll still hangs; no second one went out
    finally:
        for w in held:  # the hung poll ends (DOWN) and the minion stops at once
            w.close()
        await stack.stop()
        hung.close()
        quick.close()
