"""gRPC with mutual TLS everywhere (issue 11, items 2, 7, 8, 9), against real servers.

The scheduler and the event service of an in-process stack serve their main
ports with mutual TLS from the run's CA (tests/pki.py) and a health-only TLS
probe port each. What is checked is what a stranger, a holder of another
CA's certificate, a certificate of the wrong role and a revoked certificate
can do, and that a minion survives the renewal of its certificate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY
from typer.testing import CliRunner
from vigil.v1 import (
    events_pb2,
    events_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    poller_pb2,
    poller_pb2_grpc,
    sink_pb2_grpc,
)

from services.core.config import PkiSettings
from services.core.grpcauth import REVOKED_CUT_WITHIN
from services.core.grpcserver import GrpcServer
from services.core.natsserver import NatsServer
from services.core.pki import Identity, Pki
from services.core.tls import PLAINTEXT, PLAINTEXT_WARNING, TlsError, transport_for
from services.scheduler.app import Scheduler
from tests import pki as test_pki
from tests.helpers import Stack, make_config, wait_for

#: Calls that must fail fast: a refused handshake is UNAVAILABLE at once, not after a timeout.
CALL_TIMEOUT = 10.0


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    """Scheduler and event service with probe ports; no minion (tests start their own)."""
    cfg = make_config(
        tmp_path,
        nats_server.url,
        scheduler={"probe_listen": "127.0.0.1:0"},
        events={"probe_listen": "127.0.0.1:0"},
    )
    s = await Stack(cfg, nats_server.url).start(minion_locations=())
    try:
        yield s
    finally:
        await s.stop()


def addresses(stack: Stack) -> tuple[str, str]:
    assert stack.scheduler is not None and stack.events is not None
    return stack.scheduler.grpc_address, stack.events.grpc_address


def probe_addresses(stack: Stack) -> tuple[str, str]:
    assert stack.scheduler is not None and stack.scheduler.grpc is not None
    assert stack.events is not None and stack.events.grpc is not None
    sched, events = stack.scheduler.grpc.probe_address, stack.events.grpc.probe_address
    assert sched is not None and events is not None
    return sched, events


def ca_only() -> grpc.ChannelCredentials:
    """TLS that verifies the server but presents no certificate (a probe, a stranger)."""
    return grpc.ssl_channel_credentials(
        root_certificates=test_pki.current().ca_cert_path.read_bytes()
    )


def refused(key: str) -> float:
    value = REGISTRY.get_sample_value("vigil_grpc_refused_total", {"reason": key})
    return value or 0.0


async def test_no_client_certificate_reaches_health_on_the_probe_port_only(stack: Stack) -> None:
    for address in addresses(stack):
        async with grpc.aio.secure_channel(address, ca_only()) as ch:
            # The main port's handshake refuses a client without a certificate.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    sched_probe, events_probe = probe_addresses(stack)
    for address in (sched_probe, events_probe):
        async with grpc.aio.secure_channel(address, ca_only()) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
            )
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    before = refused("no_credentials")
    async with grpc.aio.secure_channel(sched_probe, ca_only()) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await poller_pb2_grpc.PollerStub(ch).ListServices(
                poller_pb2.ListServicesRequest(), timeout=CALL_TIMEOUT
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _refused_connect(ch)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Not even reflection: it needs an identity.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _list_services(ch)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with grpc.aio.secure_channel(events_probe, ca_only()) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await events_pb2_grpc.EventsStub(ch).ListEvents(
                events_pb2.ListEventsRequest(), timeout=CALL_TIMEOUT
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused("no_credentials") >= before + 4


async def test_a_certificate_from_another_ca_is_refused(stack: Stack, tmp_path: Path) -> None:
    other = Pki(tmp_path / "other-ca")
    other.init()
    stranger = Identity("operator", "operator")
    other.issue(stranger)
    creds = grpc.ssl_channel_credentials(
        root_certificates=test_pki.current().ca_cert_path.read_bytes(),
        private_key=other.key_path(stranger).read_bytes(),
        certificate_chain=other.cert_path(stranger).read_bytes(),
    )
    for address in addresses(stack):
        async with grpc.aio.secure_channel(address, creds) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # And a client that trusts only the other CA does not take our servers for its own.
    own = grpc.ssl_channel_credentials(
        root_certificates=other.ca_cert_path.read_bytes(),
        private_key=test_pki.current().key_path(stranger).read_bytes(),
        certificate_chain=test_pki.current().cert_path(stranger).read_bytes(),
    )
    async with grpc.aio.secure_channel(addresses(stack)[0], own) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def _refused_connect(ch: grpc.aio.Channel) -> object:
    """Open ResultSink/Connect and read its answer, writing nothing.

    The access check refuses the call before the handler reads a message; a
    hello written meanwhile would race that status, and grpcio reports a write
    that lost the race as INTERNAL on the client, whatever the server said.
    """
    call = sink_pb2_grpc.ResultSinkStub(ch).Connect(timeout=CALL_TIMEOUT)
    return await call.read()


async def _operator_call(ch: grpc.aio.Channel, *, events: bool) -> object:
    """One unary call an operator may make, on the event service or on the scheduler."""
    if events:
        return await events_pb2_grpc.EventsStub(ch).ListEvents(
            events_pb2.ListEventsRequest(), timeout=CALL_TIMEOUT
        )
    return await poller_pb2_grpc.PollerStub(ch).ListServices(
        poller_pb2.ListServicesRequest(), timeout=CALL_TIMEOUT
    )


async def _list_services(ch: grpc.aio.Channel) -> list[str]:
    """Reflection's ``list_services``."""
    call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(timeout=CALL_TIMEOUT)
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    await call.done_writing()
    resp = await call.read()
    assert isinstance(resp, reflection_pb2.ServerReflectionResponse)
    return [s.name for s in resp.list_services_response.service]


async def test_each_role_calls_only_its_services(stack: Stack) -> None:
    sched, events = addresses(stack)
    before = refused("permission_denied")
    # An operator is no minion: ResultSink is refused, naming who and the permission.
    async with test_pki.operator_channel(sched) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _refused_connect(ch)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "certificate:operator/" in (err.value.details() or "")
        assert "vigil.v1.ResultSink/Connect" in (err.value.details() or "")
        # Its own calls work.
        await poller_pb2_grpc.PollerStub(ch).ListServices(
            poller_pb2.ListServicesRequest(), timeout=CALL_TIMEOUT
        )
    # A minion may stream results, nothing else.
    minion = test_pki.minion_cert("paris", "paris-rogue")
    creds = test_pki.material(minion).channel_credentials()
    async with grpc.aio.secure_channel(sched, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await inventory_pb2_grpc.InventoryStub(ch).ListNodes(
                inventory_pb2.ListNodesRequest(), timeout=CALL_TIMEOUT
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        details = err.value.details() or ""
        assert "paris-rogue" in details and "vigil.v1.Inventory/ListNodes" in details
        assert "it holds: vigil.v1.ResultSink/Connect" in details
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await poller_pb2_grpc.PollerStub(ch).ListServices(
                poller_pb2.ListServicesRequest(), timeout=CALL_TIMEOUT
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Reflection and health are open to any identity.
        assert "vigil.v1.ResultSink" in await _list_services(ch)
        await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
        )
    async with grpc.aio.secure_channel(events, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await events_pb2_grpc.EventsStub(ch).ListEvents(
                events_pb2.ListEventsRequest(), timeout=CALL_TIMEOUT
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await events_pb2_grpc.EventsStub(ch).Publish(
                events_pb2.PublishRequest(
                    event=events_pb2.Event(type="node", action="down", source="scheduler")
                ),
                timeout=CALL_TIMEOUT,
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused("permission_denied") >= before + 5


async def test_a_revoked_certificate_is_refused_and_its_open_stream_cut(stack: Stack) -> None:
    assert stack.events is not None and stack.events.grpc is not None
    access = stack.events.grpc.access
    assert access is not None
    sched, events = addresses(stack)
    who = Identity("operator", "leaving-operator")
    creds = test_pki.material(who).channel_credentials()
    async with grpc.aio.secure_channel(events, creds) as ch:
        stub = events_pb2_grpc.EventsStub(ch)
        await stub.ListEvents(events_pb2.ListEventsRequest(), timeout=CALL_TIMEOUT)
        stream = stub.Subscribe(events_pb2.SubscribeRequest())
        await wait_for(lambda: access.open_streams >= 1, what="the Subscribe stream open")

        revoked_at = time.monotonic()
        test_pki.current().revoke(who)

        async def read_until_cut() -> grpc.aio.AioRpcError:
            while True:
                try:
                    msg = await stream.read()
                except grpc.aio.AioRpcError as exc:
                    return exc
                assert msg is not grpc.aio.EOF, "the stream ended without a status"

        async with asyncio.timeout(REVOKED_CUT_WITHIN + 5):
            cut = await read_until_cut()
        took = time.monotonic() - revoked_at
        assert cut.code() == grpc.StatusCode.UNAUTHENTICATED
        assert cut.details() == "certificate revoked"
        assert took <= REVOKED_CUT_WITHIN, f"cut after {took:.1f}s"

        # New calls too, on both servers (the deny list is read again within seconds).
        for address in (events, sched):
            async with grpc.aio.secure_channel(address, creds) as other:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await _operator_call(other, events=address == events)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert err.value.details() == "certificate revoked"
    assert refused("revoked_stream") >= 1
    # The other operator is untouched.
    async with test_pki.operator_channel(events) as ch:
        await events_pb2_grpc.EventsStub(ch).ListEvents(
            events_pb2.ListEventsRequest(), timeout=CALL_TIMEOUT
        )


async def test_a_renewed_minion_certificate_keeps_its_session(stack: Stack) -> None:
    assert stack.scheduler is not None
    sid = "renewed-1"
    identity = test_pki.minion_cert("Default", sid)
    pki = test_pki.current()
    first = await stack.start_minion("Default", sid)
    old_serial = pki.load(identity).serial_number  # type: ignore[union-attr]

    pki.issue(identity)  # renewal: a new certificate and key in place of the old
    assert pki.load(identity).serial_number != old_serial  # type: ignore[union-attr]
    # The session on the old certificate stays (renewal revokes nothing) past a revocation sweep.
    await asyncio.sleep(REVOKED_CUT_WITHIN)
    assert first.sink.connected.is_set()
    assert first.sink.sessions == 1
    session = stack.scheduler.registry.get(sid)
    assert session is not None and session.open

    # A new session (after a restart) presents the new certificate, and it is welcome.
    await stack.stop_minion(first)
    second = await stack.start_minion("Default", sid)
    assert second.sink.connected.is_set()
    async with test_pki.operator_channel(stack.scheduler.grpc_address) as ch:
        resp = await poller_pb2_grpc.PollerStub(ch).ListMinions(
            poller_pb2.ListMinionsRequest(location="Default")
        )
    assert [m.system_id for m in resp.minions if m.status == poller_pb2.MINION_STATUS_UP] == [sid]


async def test_the_cli_finds_the_operator_certificate_without_flags(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``vigil hooks`` reads ``.vigil/pki/{ca,operator,operator-key}.pem`` under the cwd."""
    from services.cli.main import app

    src = test_pki.current()
    operator = Identity("operator", "operator")
    local = tmp_path / "cwd" / ".vigil" / "pki"
    local.mkdir(parents=True)
    for path in (src.ca_cert_path, src.cert_path(operator), src.key_path(operator)):
        (local / path.name).write_bytes(path.read_bytes())
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.delenv(test_pki.ENV)
    _, events = addresses(stack)
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["hooks", "list", "--events", events, "--json"]
    )
    assert result.exit_code == 0, result.output
    # Without the files: one clear line, no traceback.
    result = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["hooks", "list", "--events", events, "--pki-dir", str(tmp_path / "none")],
    )
    assert result.exit_code == 2
    assert "operator.pem" in result.output or "ca.pem" in result.output
    # The CLI's plaintext mode is for a loopback server only.
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["hooks", "list", "--events", "192.0.2.1:50052", "--plaintext"]
    )
    assert result.exit_code == 2
    assert "not a loopback address" in result.output


async def test_plaintext_development_mode_is_loopback_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dev = PkiSettings(plaintext_loopback_dev=True)
    with caplog.at_level(logging.WARNING):
        transport = transport_for(
            dev, Identity("scheduler", "scheduler"), {"scheduler.listen": "127.0.0.1:0"}
        )
    assert transport is PLAINTEXT
    assert PLAINTEXT_WARNING in caplog.text
    server = GrpcServer("127.0.0.1:0", [], transport=transport)
    await server.start()
    try:
        assert server.access is None  # no identities, no checks
        async with grpc.aio.insecure_channel(server.address) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
            )
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(0)
    # The scheduler refuses it for an address others can reach, before it binds anything.
    cfg = make_config(
        tmp_path,
        "nats://127.0.0.1:4222",
        pki={"plaintext_loopback_dev": True},
        scheduler={"listen": "0.0.0.0:0"},
    )
    with pytest.raises(TlsError, match=r"scheduler\.listen.*not a loopback address"):
        Scheduler(cfg)
    loopback = make_config(tmp_path, "nats://127.0.0.1:4222", pki={"plaintext_loopback_dev": True})
    assert Scheduler(loopback).transport is PLAINTEXT
