"""Results are bound to the request and to the certificate (issue 11, items 2 and 4).

A rogue minion here holds a *valid* certificate from the CA, for another
location: it is a raw ``ResultSink`` client, so it can say anything in its
hello and its batches. It must not get a result accepted for a request sent
elsewhere (a sniffed id), a guessed id, or a forged replay; it must not get
another location's schedule, nor a session under another system id or
location than its certificate names.

The rogue talks mutual TLS to the scheduler's main port once that port runs
TLS; until then (the in-process stack still serving plaintext) to a
mutual-TLS port serving a ResultSink over the same scheduler's registry,
dispatcher and state keeper, so what is checked is the same code either way.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from vigil.v1 import common_pb2, poll_pb2, sink_pb2, sink_pb2_grpc

from minion.monitors.base import Status
from services.core.natsserver import NatsServer
from services.core.pki import Identity
from services.core.timeutil import set_timestamp
from services.core.tls import TlsMaterial
from services.scheduler.model import ServiceKey
from services.scheduler.sink import ResultSinkServicer
from services.scheduler.site_sync import SiteSync
from tests.helpers import Stack, TcpTarget, make_config, wait_for
from tests.minions.util import list_outages, tcp_node
from tests.pki import material, minion_cert

#: Every read and call of a rogue session is bounded by this (seconds).
STEP = 10.0
PARIS_KEY = ServiceKey("p1", "127.0.0.1", "Echo")
LYON_KEY = ServiceKey("l1", "127.0.0.1", "Echo")


def refused(metric: str, reason: str) -> float:
    """The current value of a refusal counter (0 before its first use)."""
    return REGISTRY.get_sample_value(metric, {"reason": reason}) or 0.0


class RawSession:
    """A raw ``ResultSink/Connect`` stream: says exactly what the test tells it to."""

    def __init__(self, address: str, identity: Identity) -> None:
        self.channel = grpc.aio.secure_channel(address, material(identity).channel_credentials())
        self._out: asyncio.Queue[sink_pb2.MinionMessage | None] = asyncio.Queue()
        self.call = sink_pb2_grpc.ResultSinkStub(self.channel).Connect(self._messages())
        self.schedules: list[sink_pb2.LocationSchedule] = []
        self._seq = 0

    async def _messages(self) -> AsyncIterator[sink_pb2.MinionMessage]:
        while (msg := await self._out.get()) is not None:
            yield msg

    async def read(self) -> sink_pb2.SinkMessage:
        """The next message from the scheduler (schedules are kept aside and returned too)."""
        async with asyncio.timeout(STEP):
            msg = await self.call.read()
        assert msg is not grpc.aio.EOF, "the scheduler ended the session"
        assert isinstance(msg, sink_pb2.SinkMessage)
        if msg.WhichOneof("kind") == "schedule":
            self.schedules.append(msg.schedule)
        return msg

    async def hello(self, location: str, system_id: str) -> sink_pb2.Welcome:
        """Open the session claiming ``location``/``system_id``; the Welcome."""
        self._out.put_nowait(
            sink_pb2.MinionMessage(
                hello=sink_pb2.MinionHello(system_id=system_id, location=location, version="rogue")
            )
        )
        msg = await self.read()
        assert msg.WhichOneof("kind") == "welcome", msg
        return msg.welcome

    async def heartbeat(self) -> None:
        """A heartbeat, and wait for its ack (anything sent before it has been read)."""
        self._out.put_nowait(
            sink_pb2.MinionMessage(heartbeat=sink_pb2.Heartbeat(nats_connected=True))
        )
        while (await self.read()).WhichOneof("kind") != "heartbeat_ack":
            pass

    async def send(
        self, results: list[poll_pb2.PollResult], *, replayed: bool = False
    ) -> sink_pb2.BatchAck:
        """One batch; its ack."""
        self._seq += 1
        batch = sink_pb2.ResultBatch(seq=self._seq, results=results, replayed=replayed)
        self._out.put_nowait(sink_pb2.MinionMessage(results=batch))
        while True:
            msg = await self.read()
            if msg.WhichOneof("kind") == "ack" and msg.ack.seq == self._seq:
                return msg.ack

    async def denied(self, location: str, system_id: str) -> str:
        """Send a hello that must be refused: the PERMISSION_DENIED details."""
        self._out.put_nowait(
            sink_pb2.MinionMessage(
                hello=sink_pb2.MinionHello(system_id=system_id, location=location)
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with asyncio.timeout(STEP):
                await self.call.read()
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED, err.value
        return err.value.details() or ""

    async def ended(self) -> bool:
        """Whether the scheduler ended this stream (replaced) within a step."""
        try:
            async with asyncio.timeout(STEP):
                while (await self.call.read()) is not grpc.aio.EOF:
                    pass
        except grpc.aio.AioRpcError:
            pass
        return True

    async def close(self) -> None:
        self._out.put_nowait(None)
        self.call.cancel()
        await self.channel.close()


@asynccontextmanager
async def sink_port(stack: Stack) -> AsyncIterator[str]:
    """The address of a mutual-TLS ResultSink of the stack's scheduler."""
    sched = stack.scheduler
    assert sched is not None and sched.dispatcher is not None and sched.keeper is not None
    if isinstance(getattr(sched.grpc, "transport", None), TlsMaterial):
        yield sched.grpc_address
        return
    # The stack still serves plaintext: the same scheduler's parts behind an mTLS port.
    servicer = ResultSinkServicer(
        sched.registry,
        sched.dispatcher,
        sched.keeper,
        sched.id,
        sites=SiteSync(sched.services, sched.cfg.locations),
    )
    server = grpc.aio.server()
    sink_pb2_grpc.add_ResultSinkServicer_to_server(servicer, server)
    creds = material(Identity("scheduler", "scheduler")).server_credentials()
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0.5)


@asynccontextmanager
async def rogue(address: str, location: str, system_id: str) -> AsyncIterator[RawSession]:
    """A raw session with a valid certificate for ``location``/``system_id``."""
    session = RawSession(address, minion_cert(location, system_id))
    try:
        yield session
    finally:
        await session.close()


def result(
    rid: str, status: int, key: ServiceKey = PARIS_KEY, reason: str = "forged"
) -> poll_pb2.PollResult:
    r = poll_pb2.PollResult(
        request_id=rid,
        service=common_pb2.ServiceRef(node_id=key.node_id, ip=key.ip, service=key.service),
        status=status,  # type: ignore[arg-type]
        reason=reason,
    )
    set_timestamp(r.finished_at, time.time())
    return r


def two_sites(tmp_path: Path, nats_url: str, port: int, **paris: Any) -> Any:
    """``p1`` at paris (store-and-forward on), ``l1`` at lyon, both on ``port``."""
    nodes = [
        tcp_node("p1", port, "paris", ip="127.0.0.1", **paris),
        tcp_node("l1", port, "lyon", interval="1h"),
    ]
    return make_config(tmp_path, nats_url, nodes, locations={"paris": {"store_and_forward": True}})


async def test_a_sniffed_id_from_another_location_is_refused_and_the_real_answer_counts(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """A lyon minion answers DOWN to a paris request: ignored, counted; paris's UP applies."""
    # Slow but UP: each request stays pending about a second, time to "sniff" it.
    target = await TcpTarget(banner=b"OK\r\n", delay=1.0).start()
    cfg = two_sites(
        tmp_path,
        nats_server.url,
        target.port,
        params={"banner": "^OK"},
        interval="1h",
        timeout="4s",
        ttl="6s",
    )
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    assert stack.scheduler is not None and stack.scheduler.dispatcher is not None
    pending = stack.scheduler.dispatcher.pending
    rt = stack.scheduler.services[PARIS_KEY]
    try:
        await stack.start_minion("paris", system_id="paris-1")
        async with sink_port(stack) as address, rogue(address, "lyon", "lyon-1") as lyon:
            await lyon.hello("lyon", "lyon-1")
            # What a sniffer on vigil.poll.paris would read: the request id in flight.
            rid = await wait_for(lambda: rt.in_flight, what="a paris request in flight")
            before = refused("vigil_scheduler_results_refused_total", "wrong_location")
            ack = await lyon.send([result(rid, common_pb2.POLL_STATUS_DOWN)])
            assert (ack.accepted, ack.late) == (0, 1)
            assert refused("vigil_scheduler_results_refused_total", "wrong_location") == before + 1
            # Not used up: the request still waits for the minion that was asked.
            assert pending.get(rid) is not None
            await wait_for(lambda: rt.last_poll_status is Status.UP, what="paris's own UP")
        assert rt.status is Status.UP
        assert rt.last_reason != "forged"
        assert rt.open_outage_id is None
        assert await list_outages(stack) == []
    finally:
        await stack.stop()
        await target.stop()


async def test_guessed_ids_are_refused(tmp_path: Path, nats_server: NatsServer) -> None:
    """Ids are 128 random bits, unrelated to the scheduler id: guesses match nothing."""
    target = await TcpTarget(banner=b"OK\r\n", delay=1.0).start()
    cfg = two_sites(
        tmp_path, nats_server.url, target.port, params={"banner": "^OK"}, timeout="4s", ttl="6s"
    )
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    assert stack.scheduler is not None and stack.scheduler.dispatcher is not None
    rt = stack.scheduler.services[PARIS_KEY]
    try:
        await stack.start_minion("paris", system_id="paris-1")
        # Even a paris certificate (the right location) cannot guess an id.
        async with sink_port(stack) as address, rogue(address, "paris", "paris-9") as guesser:
            welcome = await guesser.hello("paris", "paris-9")
            rid = await wait_for(lambda: rt.in_flight, what="a paris request in flight")
            assert len(rid) == 32 and int(rid, 16) >= 0  # 128 bits, hex
            assert welcome.scheduler_id not in rid
            guesses = [f"{welcome.scheduler_id}-{n:x}" for n in range(1, 201)]
            guesses += [secrets.token_hex(16) for _ in range(50)]
            guesses += [rid[:-1], rid.upper(), ""]
            down = common_pb2.POLL_STATUS_DOWN
            ack = await guesser.send([result(g, down) for g in guesses])
            assert (ack.accepted, ack.late) == (0, len(guesses))
            await wait_for(lambda: rt.last_poll_status is Status.UP, what="the real UP")
        assert rt.open_outage_id is None and rt.last_reason != "forged"
    finally:
        await stack.stop()
        await target.stop()


async def test_a_forged_replay_is_refused(tmp_path: Path, nats_server: NatsServer) -> None:
    """Replays only where store-and-forward is on, from that location, for its services."""
    target = await TcpTarget().start()
    cfg = two_sites(tmp_path, nats_server.url, target.port, interval="1h")
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    assert stack.scheduler is not None
    lyon_rt = stack.scheduler.services[LYON_KEY]
    paris_rt = stack.scheduler.services[PARIS_KEY]
    down = common_pb2.POLL_STATUS_DOWN
    metric = "vigil_scheduler_results_refused_total"
    try:
        async with sink_port(stack) as address:
            async with rogue(address, "lyon", "lyon-1") as lyon:
                welcome = await lyon.hello("lyon", "lyon-1")
                assert not welcome.store_and_forward
                before = refused(metric, "replay_not_allowed")
                # Lyon has no store-and-forward: not for its own service, nor paris's.
                ack = await lyon.send(
                    [result("x", down, LYON_KEY), result("y", down, PARIS_KEY)], replayed=True
                )
                assert (ack.accepted, ack.late) == (0, 2)
                assert refused(metric, "replay_not_allowed") == before + 2
            async with rogue(address, "paris", "paris-1") as paris:
                assert (await paris.hello("paris", "paris-1")).store_and_forward
                before = refused(metric, "replay_wrong_location")
                # Paris may replay, but only its own services.
                ack = await paris.send([result("z", down, LYON_KEY)], replayed=True)
                assert (ack.accepted, ack.late) == (0, 1)
                assert refused(metric, "replay_wrong_location") == before + 1
                # The control: paris's own service, replayed by a paris certificate.
                ack = await paris.send(
                    [result("w", down, PARIS_KEY, reason="replayed")], replayed=True
                )
                assert (ack.accepted, ack.late) == (1, 0)
                await wait_for(lambda: paris_rt.last_reason == "replayed", what="applied")
        assert lyon_rt.last_reason != "forged" and lyon_rt.open_outage_id is None
        assert lyon_rt.last_poll_status is not Status.DOWN
    finally:
        await stack.stop()
        await target.stop()


async def test_a_lyon_certificate_gets_no_paris_schedule(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    target = await TcpTarget().start()
    cfg = two_sites(tmp_path, nats_server.url, target.port, interval="1h")
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    try:
        async with sink_port(stack) as address:
            async with rogue(address, "lyon", "lyon-1") as lyon:
                details = await lyon.denied("paris", "lyon-1")
                assert "location" in details and "paris" in details
            async with rogue(address, "lyon", "lyon-2") as lyon:
                await lyon.hello("lyon", "lyon-2")
                await lyon.heartbeat()
                await lyon.heartbeat()
                assert lyon.schedules == []
            # The control: paris's certificate is sent paris's schedule, and only it.
            async with rogue(address, "paris", "paris-1") as paris:
                await paris.hello("paris", "paris-1")
                await paris.heartbeat()
                assert [s.location for s in paris.schedules] == ["paris"]
                services = [e.service.node_id for s in paris.schedules for e in s.services]
                assert services == ["p1"]
    finally:
        await stack.stop()
        await target.stop()


async def test_a_hello_must_match_the_certificate(tmp_path: Path, nats_server: NatsServer) -> None:
    """Another system id or location: PERMISSION_DENIED, counted; no record is made."""
    cfg = make_config(tmp_path, nats_server.url)
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    assert stack.scheduler is not None
    registry = stack.scheduler.registry
    metric = "vigil_scheduler_hellos_refused_total"
    try:
        async with sink_port(stack) as address:
            for claim, reason in [
                (("lyon", "paris-1"), "system_id_mismatch"),
                (("paris", "lyon-1"), "location_mismatch"),
            ]:
                before = refused(metric, reason)
                async with rogue(address, "lyon", "lyon-1") as session:
                    await session.denied(*claim)
                assert refused(metric, reason) == before + 1
            assert registry.get("paris-1") is None and registry.get("lyon-1") is None
            # Not a minion at all (an operator's certificate).
            before = refused(metric, "not_a_minion")
            operator = RawSession(address, Identity("operator", "operator"))
            try:
                await operator.denied("lyon", "lyon-1")
            finally:
                await operator.close()
            assert registry.sessions() == []
            # Empty claims: the certificate says who it is.
            async with rogue(address, "lyon", "lyon-3") as session:
                await session.hello("", "")
                record = registry.get("lyon-3")
                assert record is not None and record.location == "lyon"
                assert record.identity == Identity.minion("lyon", "lyon-3")
    finally:
        await stack.stop()
    if not isinstance(getattr(stack.scheduler.grpc, "transport", None), TlsMaterial):
        # Our own port has no access interceptor: the sink refused it itself.
        assert refused(metric, "not_a_minion") == before + 1


async def test_one_certificate_one_session_and_no_takeover(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """The same identity replaces its session; another location's cert cannot take the id."""
    cfg = make_config(tmp_path, nats_server.url)
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    assert stack.scheduler is not None
    registry = stack.scheduler.registry
    try:
        async with sink_port(stack) as address, rogue(address, "paris", "edge-7") as first:
            await first.hello("paris", "edge-7")
            holder = registry.get("edge-7")
            assert holder is not None and holder.open
            # A lyon certificate naming the same system id: refused, the holder stays.
            async with rogue(address, "lyon", "edge-7") as thief:
                details = await thief.denied("lyon", "edge-7")
                assert "edge-7" in details
            assert registry.get("edge-7") is holder and holder.open
            assert not holder.replaced.is_set()
            # Nor while the holder's stream is broken and it is not yet down.
            holder.open = False
            async with rogue(address, "lyon", "edge-7") as thief:
                await thief.denied("lyon", "edge-7")
            holder.open = True
            # The same identity again (a reconnect): it replaces the first session.
            async with rogue(address, "paris", "edge-7") as second:
                await second.hello("paris", "edge-7")
                assert await first.ended()
                now_held = registry.get("edge-7")
                assert now_held is not None and now_held is not holder
                assert now_held.location == "paris"
    finally:
        await stack.stop()


async def test_tls_without_a_client_certificate_is_refused(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """A TLS peer that proved no identity is no minion (never the hello's word for it)."""
    cfg = make_config(tmp_path, nats_server.url)
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    sched = stack.scheduler
    assert sched is not None and sched.dispatcher is not None and sched.keeper is not None
    servicer = ResultSinkServicer(sched.registry, sched.dispatcher, sched.keeper, sched.id)
    server = grpc.aio.server()
    sink_pb2_grpc.add_ResultSinkServicer_to_server(servicer, server)
    # TLS that asks for no client certificate (what the probe port offers).
    tls = material(Identity("scheduler", "scheduler"))
    port = server.add_secure_port("127.0.0.1:0", tls.probe_credentials())
    await server.start()
    before = refused("vigil_scheduler_hellos_refused_total", "no_identity")
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=tls.ca_pem)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            hello = sink_pb2.MinionHello(system_id="paris-1", location="paris")
            call = sink_pb2_grpc.ResultSinkStub(channel).Connect(
                iter([sink_pb2.MinionMessage(hello=hello)])
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async with asyncio.timeout(STEP):
                    await call.read()
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert refused("vigil_scheduler_hellos_refused_total", "no_identity") == before + 1
        assert sched.registry.get("paris-1") is None
    finally:
        await server.stop(0.5)
        await stack.stop()
