"""Fair limits per identity (issue 12, item 6): one caller cannot take what all share.

Against the real servers, with small limits in the test configuration and
rates so low (one token per 1000 s) that no refill happens within a test:
nothing here depends on how fast the machine is. Two operator certificates
(``alice``, ``bob``) are two identities. The token bucket and the stream
counter are also tested alone, with an injected clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from vigil.v1 import (
    common_pb2,
    events_pb2,
    events_pb2_grpc,
    poller_pb2,
    poller_pb2_grpc,
    sink_pb2,
    sink_pb2_grpc,
)

from services.core.access.principal import CURRENT, Principal
from services.core.limits import (
    RETRY_AFTER,
    LimitExceeded,
    RateLimit,
    StreamLimit,
    caller_key,
    retry_hint,
)
from services.core.natsserver import NatsServer
from services.core.pki import Identity
from services.events.app import EventService
from tests.events.util import events_config
from tests.helpers import Stack, TcpTarget, make_config, wait_for
from tests.minions.util import tcp_node
from tests.pki import material, minion_cert, operator_channel

#: Every read of a raw stream is bounded by this (seconds).
STEP = 10.0
#: A rate that does not refill within any test (one token per 1000 s).
NO_REFILL = 0.001


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Context:
    """What a limit reads from a call: the trailing metadata it sets is kept."""

    def __init__(self) -> None:
        self.trailing: tuple[tuple[str, str], ...] = ()

    def set_trailing_metadata(self, md: tuple[tuple[str, str], ...]) -> None:
        self.trailing = md


def counted(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- the token bucket alone ------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    limit = RateLimit("t", "Test", rate=2.0, burst=3, clock=clock)
    assert [limit.wait("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.wait("a") == pytest.approx(0.5)  # one token every 0.5 s
    clock.now += 0.25
    assert limit.wait("a") == pytest.approx(0.25)  # refused calls take nothing
    clock.now += 0.25
    assert limit.wait("a") == 0.0
    assert limit.wait("a") > 0
    # Idle for long: refilled up to the burst, not beyond.
    clock.now += 3600
    assert [limit.wait("a") for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert limit.wait("a") > 0
    # Another identity has a bucket of its own.
    assert limit.wait("b") == 0.0


def test_forgetting_buckets_prefers_full_ones_and_stays_bounded() -> None:
    clock = Clock()
    limit = RateLimit("t", "Test", rate=1.0, burst=2, clock=clock, max_identities=3)
    limit.wait("busy")
    limit.wait("busy")  # empty now
    limit.wait("idle-1")
    limit.wait("idle-2")
    clock.now += 1.0  # idle-1 and idle-2 are full again; busy has one token
    limit.wait("new")
    assert len(limit) == 3
    # The least recently used full bucket went (idle-1), not busy, whose state
    # still counts: it has spent its refilled token and is refused again.
    assert limit.wait("busy") == 0.0
    assert limit.wait("busy") > 0
    assert limit.evicted_busy == 0
    # Only busy buckets left: the least recently used goes anyway (memory stays bounded).
    for key in ("x", "y", "z"):
        limit.wait(key)
        limit.wait(key)
    assert len(limit) == 3
    assert limit.evicted_busy > 0


def test_no_rate_means_no_limit() -> None:
    limit = RateLimit("t", "Test", rate=None, burst=1)
    ctx = Context()
    for _ in range(1000):
        limit.admit(ctx)
    assert len(limit) == 0


def test_a_refusal_names_the_limit_the_identity_and_when_to_retry() -> None:
    clock = Clock()
    limit = RateLimit(
        "t", "PollNow", rate=5.0, burst=20, clock=clock, key=lambda _: "certificate:operator/alice"
    )
    ctx = Context()
    for _ in range(20):
        limit.admit(ctx)
    clock.now += 0.01  # 0.05 token back: the next one in 0.19 s
    before = counted("vigil_limit_refused_total", {"limit": "t"})
    with pytest.raises(LimitExceeded) as info:
        limit.admit(ctx)
    assert str(info.value) == (
        "PollNow rate limit for certificate:operator/alice: 5/s, burst 20; retry in 0.2 s"
    )
    assert info.value.retry_after == 0.2
    assert ctx.trailing == ((RETRY_AFTER, "0.2"),)
    assert counted("vigil_limit_refused_total", {"limit": "t"}) == before + 1


def test_retry_hints_round_up_to_a_tenth() -> None:
    assert retry_hint(0.31) == 0.4
    assert retry_hint(0.4) == 0.4
    assert retry_hint(0.00001) == 0.1
    assert retry_hint(12.01) == 12.1


def test_the_key_is_the_principal_when_the_interceptor_set_one() -> None:
    principal = Principal(kind="token", name="grafana", role="viewer", grants=())
    token = CURRENT.set(principal)
    try:
        assert caller_key(object()) == "token:grafana"
    finally:
        CURRENT.reset(token)


# -- the stream counter alone ----------------------------------------------------------------


def test_streams_are_capped_per_identity_and_in_total() -> None:
    limit = StreamLimit("s", "Subscribe stream", per_identity=2, total=3)
    a1, a2 = limit.hold_key("a"), limit.hold_key("a")
    with pytest.raises(LimitExceeded, match="Subscribe stream limit for a: 2 open at once"):
        limit.hold_key("a")
    b1 = limit.hold_key("b")
    with pytest.raises(LimitExceeded, match="3 open at once over all callers"):
        limit.hold_key("c")
    assert (limit.open, limit.open_for("a")) == (3, 2)
    with a1:
        pass  # released at the end of the block
    a1.release()  # twice is once
    assert (limit.open, limit.open_for("a")) == (2, 1)
    limit.hold_key("c").release()
    a2.release()
    b1.release()
    assert limit.open == 0


async def test_a_stream_beyond_the_cap_can_replace_the_oldest() -> None:
    limit = StreamLimit("r", "ResultSink session", per_identity=2, replace_oldest=True)
    first, second = limit.hold_key("m"), limit.hold_key("m")
    linked = asyncio.Event()
    first.link(linked)
    third = limit.hold_key("m")
    assert first.ended.is_set() and linked.is_set() and "replaced by a newer one" in first.reason
    assert not second.ended.is_set()
    assert limit.open_for("m") == 2
    # An ended slot's wait ends at once, with the reason.
    with pytest.raises(LimitExceeded, match="replaced"):
        await first.unless_ended(asyncio.sleep(STEP))
    assert await second.unless_ended(asyncio.sleep(0, "hello")) == "hello"
    first.release()  # no longer counted: releasing it changes nothing
    assert limit.open_for("m") == 2
    second.release()
    third.release()
    assert limit.open == 0


# -- Subscribe -------------------------------------------------------------------------------


@asynccontextmanager
async def events_as(address: str, name: str) -> AsyncIterator[events_pb2_grpc.EventsStub]:
    async with operator_channel(address, name) as ch:
        yield events_pb2_grpc.EventsStub(ch)


async def first_message(call: Any) -> Any:
    async with asyncio.timeout(STEP):
        return await call.read()


async def test_one_identity_at_its_subscribe_cap_does_not_starve_another(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    cfg = events_config(tmp_path, nats_server.url, subscribe_per_identity=2, max_subscribers=5)
    svc = EventService(cfg, nats_url=nats_server.url)
    await svc.start()
    calls: list[Any] = []

    async def subscribed(stub: events_pb2_grpc.EventsStub) -> None:
        calls.append(stub.Subscribe(events_pb2.SubscribeRequest()))
        assert (await first_message(calls[-1])).WhichOneof("kind") == "keep_alive"

    async def refused(stub: events_pb2_grpc.EventsStub) -> str:
        call = stub.Subscribe(events_pb2.SubscribeRequest())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await first_message(call)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return info.value.details() or ""

    try:
        async with (
            events_as(svc.grpc_address, "alice") as alice,
            events_as(svc.grpc_address, "bob") as bob,
            events_as(svc.grpc_address, "carol") as carol,
        ):
            await subscribed(alice)
            await subscribed(alice)
            details = await refused(alice)
            assert "Subscribe stream limit for" in details and "alice" in details, details
            assert "2 open at once" in details, details
            # Bob still gets in, up to his own cap.
            await subscribed(bob)
            await subscribed(bob)
            assert "bob" in await refused(bob)
            # The total (max_subscribers) still holds over everyone.
            await subscribed(carol)
            assert "too many subscribers (limit 5)" in await refused(carol)
            # One of alice's streams ends: there is room again.
            calls[0].cancel()
            assert svc.servicer is not None
            servicer = svc.servicer
            await wait_for(lambda: servicer.subscribers == 4, what="alice's stream gone")
            await subscribed(alice)
            for call in calls:
                call.cancel()
            await wait_for(lambda: servicer.subscribers == 0, what="every stream gone")
    finally:
        await svc.stop()


# -- Publish and hook writes -----------------------------------------------------------------


async def test_publish_and_hook_writes_are_rate_limited_per_identity(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    cfg = events_config(
        tmp_path,
        nats_server.url,
        publish_rate=NO_REFILL,
        publish_burst=3,
        hook_write_rate=NO_REFILL,
        hook_write_burst=2,
    )
    svc = EventService(cfg, nats_url=nats_server.url)
    await svc.start()
    try:
        async with (
            events_as(svc.grpc_address, "alice") as alice,
            events_as(svc.grpc_address, "bob") as bob,
        ):
            publish = events_pb2.PublishRequest(event=events_pb2.Event(type="node", action="up"))
            for _ in range(3):
                await alice.Publish(publish)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await alice.Publish(publish)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = info.value.details() or ""
            assert "Publish rate limit for" in details and "alice" in details, details
            assert "0.001/s, burst 3; retry in" in details, details
            retry = dict(info.value.trailing_metadata() or ())[RETRY_AFTER]
            assert float(retry) > 0
            assert (await bob.Publish(publish)).event.id

            # CreateHook and UpdateHook share one bucket per identity.
            request = events_pb2.CreateHookRequest(
                name="a", url="http://127.0.0.1:9/a", secret="correct-horse-battery"
            )
            hook = await alice.CreateHook(request)
            update = events_pb2.UpdateHookRequest(id=hook.id, name="a2")
            update.update_mask.paths.append("name")
            await alice.UpdateHook(update)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await alice.UpdateHook(update)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "CreateHook/UpdateHook rate limit for" in (info.value.details() or "")
            request.name, request.url = "b", "http://127.0.0.1:9/b"
            assert (await bob.CreateHook(request)).name == "b"
    finally:
        await svc.stop()


# -- PollNow ---------------------------------------------------------------------------------


@pytest.fixture
async def target() -> AsyncIterator[TcpTarget]:
    t = await TcpTarget().start()
    yield t
    await t.stop()


async def test_poll_now_beyond_the_burst_is_refused_while_another_identity_polls(
    tmp_path: Path, nats_server: NatsServer, target: TcpTarget
) -> None:
    cfg = make_config(
        tmp_path,
        nats_server.url,
        [tcp_node("n1", target.port, interval="1h")],
        scheduler={"poll_now_rate": NO_REFILL, "poll_now_burst": 2},
    )
    stack = await Stack(cfg, nats_server.url).start(events=False)
    ref = common_pb2.ServiceRef(node_id="n1", ip="127.0.0.1", service="Echo")
    try:
        assert stack.scheduler is not None
        address = stack.scheduler.grpc_address
        async with operator_channel(address, "alice") as a, operator_channel(address, "bob") as b:
            alice, bob = poller_pb2_grpc.PollerStub(a), poller_pb2_grpc.PollerStub(b)
            for _ in range(2):
                up = await alice.PollNow(poller_pb2.PollNowRequest(service=ref))
                assert up.service.last_poll_status == common_pb2.POLL_STATUS_UP
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await alice.PollNow(poller_pb2.PollNowRequest(service=ref))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = info.value.details() or ""
            assert details.startswith("PollNow rate limit for") and "alice" in details, details
            assert "0.001/s, burst 2; retry in" in details and details.endswith(" s"), details
            retry = dict(info.value.trailing_metadata() or ())[RETRY_AFTER]
            assert float(retry) > 0
            polled = await bob.PollNow(poller_pb2.PollNowRequest(service=ref))
            assert polled.service.last_poll_status == common_pb2.POLL_STATUS_UP
    finally:
        await stack.stop()


# -- ResultSink sessions ---------------------------------------------------------------------


class RawStream:
    """A raw ``ResultSink/Connect`` stream that sends only what it is told to."""

    def __init__(self, address: str, identity: Identity) -> None:
        self.identity = identity
        self.channel = grpc.aio.secure_channel(address, material(identity).channel_credentials())
        self._out: asyncio.Queue[sink_pb2.MinionMessage | None] = asyncio.Queue()
        self.call = sink_pb2_grpc.ResultSinkStub(self.channel).Connect(self._messages())

    async def _messages(self) -> AsyncIterator[sink_pb2.MinionMessage]:
        while (msg := await self._out.get()) is not None:
            yield msg

    async def hello(self) -> sink_pb2.Welcome:
        hello = sink_pb2.MinionHello(version="test")
        self._out.put_nowait(sink_pb2.MinionMessage(hello=hello))
        async with asyncio.timeout(STEP):
            msg = await self.call.read()
        assert msg is not grpc.aio.EOF and msg.WhichOneof("kind") == "welcome", msg
        return msg.welcome

    async def end(self) -> grpc.StatusCode:
        """How the scheduler ended this stream (it must, within a step)."""
        async with asyncio.timeout(STEP):
            try:
                while (await self.call.read()) is not grpc.aio.EOF:
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return await self.call.code()

    async def close(self) -> None:
        self._out.put_nowait(None)
        self.call.cancel()
        await self.channel.close()


async def test_a_third_sink_stream_of_one_minion_replaces_its_oldest_and_spares_others(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    cfg = make_config(tmp_path, nats_server.url, scheduler={"sink_sessions_per_minion": 2})
    stack = Stack(cfg, nats_server.url)
    scheduler = await stack.start_scheduler()
    sessions = scheduler.limits.sink_sessions
    paris, lyon = minion_cert("paris", "m1"), minion_cert("lyon", "l1")
    key = "certificate:minion/paris/m1"
    address = scheduler.grpc_address
    streams: list[RawStream] = []

    def open_stream(identity: Identity) -> RawStream:
        streams.append(RawStream(address, identity))
        return streams[-1]

    replaced = counted("vigil_limit_streams_replaced_total", {"limit": "sink_sessions"})
    try:
        a = open_stream(paris)
        await a.hello()
        other = open_stream(lyon)
        await other.hello()
        b = open_stream(paris)  # no hello yet: a reconnect under way
        await wait_for(lambda: sessions.open_for(key) == 2, what="two streams of m1")
        # A third stream of m1 gets in: the oldest (a, its session) is told to end.
        c = open_stream(paris)
        assert await a.end() == grpc.StatusCode.OK
        assert sessions.open_for(key) == 2
        # And a fourth: b (waiting for its hello) ends, saying why.
        d = open_stream(paris)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async with asyncio.timeout(STEP):
                await b.call.read()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "replaced by a newer one (limit 2 per identity)" in (info.value.details() or "")
        assert sessions.open_for(key) == 2
        assert (
            counted("vigil_limit_streams_replaced_total", {"limit": "sink_sessions"})
            == replaced + 2
        )
        # The newest streams say hello and get their session; the lyon minion never noticed.
        await c.hello()
        await d.hello()
        assert await c.end() == grpc.StatusCode.OK  # replaced by d's hello, as always
        session = scheduler.registry.get("m1")
        assert session is not None and session.open
        lyon_session = scheduler.registry.get("l1")
        assert lyon_session is not None and lyon_session.open
        assert sessions.open_for("certificate:minion/lyon/l1") == 1
    finally:
        for s in streams:
            await s.close()
        await stack.stop()
