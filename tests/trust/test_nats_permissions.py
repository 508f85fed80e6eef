"""NATS permissions per identity, against a real nats-server with the generated configuration.

Each identity may do what its role needs and nothing else (services/core/natsauth.py):
a ``paris`` minion reads only its location's requests (in its queue group) and its own,
publishes nothing and never touches the JetStream API; an operator only reads events;
nobody deletes a stream; a client without a certificate, with another CA's, or with a
revoked one is refused.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import APIError

from services.cli.sniff import run_sniff
from services.core import natsconn
from services.core.natsauth import SENTINEL_USER, permissions, server_config
from services.core.natsserver import NatsServer
from services.core.pki import Identity, Pki, PkiError
from services.core.streams import ensure_stream, events_stream_config, ingest_stream_config
from services.core.tls import PLAINTEXT, TlsMaterial
from tests import pki as test_pki
from tests.helpers import EVENTS, OPERATOR, SCHEDULER, wait_for

PARIS = ("paris", "paris-1")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    """A server of its own: these tests provoke the violations the shared fixture forbids."""
    srv = NatsServer(tmp_path / "nats", pki=test_pki.current()).start()
    unsubscribe = test_pki.on_change(srv.reload)
    try:
        yield srv
    finally:
        unsubscribe()
        srv.stop()


class Client:
    """A connection as one identity that keeps the errors the server sends it."""

    def __init__(self, nc: NATS, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors
        self._checked = 0

    async def refused(self, what: str) -> str:
        """Wait (bounded) for a new permissions violation from the server naming ``what``."""
        await self.nc.flush(timeout=10)
        wanted = what.lower()  # nats-py lower-cases the server's message

        def seen() -> int | None:
            for i in range(self._checked, len(self.errors)):
                if wanted in self.errors[i] and "permissions" in self.errors[i]:
                    return i + 1
            return None

        # Generous: the machine is shared, and a refusal that never comes fails anyway.
        self._checked = await wait_for(seen, timeout=15, what=f"a permissions violation: {what}")
        return self.errors[self._checked - 1]


@pytest.fixture
async def connect(server: NatsServer) -> AsyncIterator[Any]:
    opened: list[NATS] = []

    async def as_identity(identity: Identity) -> Client:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        nc = await natsconn.connect(
            server.url,
            f"test-{identity.stem}",
            transport=test_pki.material(identity),
            first_attempt_timeout=10.0,
            on_error=on_error,
        )
        opened.append(nc)
        return Client(nc, errors)

    try:
        yield as_identity
    finally:
        for nc in opened:
            await nc.close()


async def test_a_minion_reads_its_own_subjects_only(connect: Any) -> None:
    minion = await connect(test_pki.minion_cert(*PARIS))
    scheduler = await connect(SCHEDULER)
    got: list[str] = []

    async def keep(msg: Any) -> None:
        got.append(msg.subject)

    await minion.nc.subscribe("vigil.poll.paris", queue="vigil-minions-paris", cb=keep)
    await minion.nc.subscribe("vigil.poll.paris.paris-1", cb=keep)
    await minion.nc.flush(timeout=5)
    for subject in ("vigil.poll.paris", "vigil.poll.paris.paris-1", "vigil.poll.lyon"):
        await scheduler.nc.publish(subject, b"batch")
    await scheduler.nc.flush(timeout=5)
    await wait_for(lambda: len(got) == 2, what="the location's and its own request")
    assert sorted(got) == ["vigil.poll.paris", "vigil.poll.paris.paris-1"]
    assert minion.errors == []

    # Another location, every location, another minion's subject, the shared subject
    # outside the location's queue group (it would see every request of paris).
    for subject, queue in (
        ("vigil.poll.lyon", ""),
        ("vigil.poll.>", ""),
        ("vigil.poll.paris.paris-2", ""),
        ("vigil.poll.paris", ""),
        ("vigil.poll.paris", "vigil-minions-lyon"),
        ("vigil.events.>", ""),
        ("_INBOX.>", ""),
    ):
        await minion.nc.subscribe(subject, queue=queue)
        await minion.refused(f'subscription to "{subject}"')


async def test_a_minion_publishes_nothing_and_cannot_touch_jetstream(
    connect: Any, server: NatsServer
) -> None:
    events = await connect(EVENTS)
    await ensure_stream(events.nc.jetstream(), ingest_stream_config())
    minion = await connect(test_pki.minion_cert(*PARIS))
    for subject in ("vigil.ingest.scheduler", "vigil.poll.paris.paris-1", "vigil.events.x"):
        await minion.nc.publish(subject, b"{}")
        await minion.refused(f'publish to "{subject}"')
    await minion.nc.publish("$JS.API.STREAM.DELETE.VIGIL_INGEST", b"")
    await minion.refused('publish to "$JS.API.STREAM.DELETE.VIGIL_INGEST"')
    with pytest.raises((nats.errors.Error, TimeoutError)):
        await minion.nc.jetstream(timeout=1).stream_info("VIGIL_INGEST")
    assert (await events.nc.jetstream().stream_info("VIGIL_INGEST")).config.name == "VIGIL_INGEST"


async def test_an_operator_only_reads_events(connect: Any) -> None:
    operator = await connect(OPERATOR)
    events = await connect(EVENTS)
    got: list[bytes] = []

    async def keep(msg: Any) -> None:
        got.append(msg.data)

    await operator.nc.subscribe("vigil.events.>", cb=keep)
    await operator.nc.subscribe("vigil.rejected.>", cb=keep)
    await operator.nc.flush(timeout=5)

    async def both_arrived() -> bool:
        # Published again until seen: what is asserted is that the operator may
        # read both, not how fast a loaded machine delivers one message.
        if {b"e", b"r"} <= set(got):
            return True
        await events.nc.publish("vigil.events.node.down.major.n1", b"e")
        await events.nc.publish("vigil.rejected.scheduler", b"r")
        await events.nc.flush(timeout=5)
        await asyncio.sleep(0.2)
        return {b"e", b"r"} <= set(got)

    await wait_for(both_arrived, timeout=20, what="an event and a notice")
    assert set(got) == {b"e", b"r"}
    assert not operator.errors, operator.errors

    await operator.nc.publish("vigil.ingest.scheduler", b"{}")
    await operator.refused('publish to "vigil.ingest.scheduler"')
    await operator.nc.subscribe("vigil.poll.>")
    await operator.refused('subscription to "vigil.poll.>"')
    await operator.nc.subscribe("vigil.ingest.>")
    await operator.refused('subscription to "vigil.ingest.>"')


async def test_only_the_scheduler_publishes_requests_and_its_raw_events(connect: Any) -> None:
    events = await connect(EVENTS)
    await ensure_stream(events.nc.jetstream(), ingest_stream_config())
    scheduler = await connect(SCHEDULER)
    ack = await scheduler.nc.jetstream().publish("vigil.ingest.scheduler", b"{}", timeout=5)
    assert ack.stream == "VIGIL_INGEST"
    for subject in ("vigil.ingest.api", "vigil.events.node.down.major.n1"):
        await scheduler.nc.publish(subject, b"{}")
        await scheduler.refused(f'publish to "{subject}"')
    # The event service cannot pose as the scheduler either.
    await events.nc.publish("vigil.ingest.scheduler", b"{}")
    await events.refused('publish to "vigil.ingest.scheduler"')
    await events.nc.publish("vigil.poll.paris", b"batch")
    await events.refused('publish to "vigil.poll.paris"')


async def test_nobody_deletes_or_purges_the_streams(connect: Any) -> None:
    events = await connect(EVENTS)
    js = events.nc.jetstream()
    await ensure_stream(js, ingest_stream_config())
    await ensure_stream(js, events_stream_config(3600.0, 1 << 20))
    scheduler = await connect(SCHEDULER)
    for who in (events, scheduler):
        for stream in ("VIGIL_EVENTS", "VIGIL_INGEST"):
            with pytest.raises((nats.errors.Error, APIError, TimeoutError)):
                await who.nc.jetstream(timeout=1).delete_stream(stream)
            await who.refused(f'publish to "$JS.API.STREAM.DELETE.{stream}"')
    with pytest.raises((nats.errors.Error, APIError, TimeoutError)):
        await events.nc.jetstream(timeout=1).purge_stream("VIGIL_INGEST")
    await events.refused('publish to "$JS.API.STREAM.PURGE.VIGIL_INGEST"')
    for stream in ("VIGIL_EVENTS", "VIGIL_INGEST"):
        assert (await js.stream_info(stream)).config.name == stream


async def _connect_raw(server: NatsServer, tls: ssl.SSLContext | None) -> None:
    options: dict[str, Any] = {"tls": tls, "tls_handshake_first": True} if tls else {}
    nc = await nats.connect(
        server.url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0, **options
    )
    await nc.close()


async def _refused(server: NatsServer, tls: ssl.SSLContext | None) -> None:
    """Connecting with ``tls`` (``None``: plaintext) fails."""
    with pytest.raises((nats.errors.Error, OSError, TimeoutError)):
        await _connect_raw(server, tls)


async def test_no_certificate_or_another_cas_is_refused(server: NatsServer, tmp_path: Path) -> None:
    await _refused(server, None)
    # TLS that trusts the server, but no client certificate.
    anonymous = ssl.create_default_context(cafile=str(test_pki.current().ca_cert_path))
    await _refused(server, anonymous)
    # A certificate naming the operator, from a CA of someone else's.
    other = Pki(tmp_path / "other-ca")
    other.init()
    other.issue(OPERATOR)
    forged = ssl.create_default_context(cafile=str(test_pki.current().ca_cert_path))
    forged.load_cert_chain(other.cert_path(OPERATOR), other.key_path(OPERATOR))
    await _refused(server, forged)
    # natsconn in the plaintext mode against this server: refused too (bounded).
    with pytest.raises(ConnectionError):
        await natsconn.connect(server.url, "plain", transport=PLAINTEXT, first_attempt_timeout=1.5)


async def test_a_revoked_minion_is_cut_off_and_refused(server: NatsServer) -> None:
    identity = test_pki.minion_cert("paris", "paris-revoked")
    material = test_pki.material(identity)
    nc = await natsconn.connect(server.url, "doomed", transport=material, first_attempt_timeout=10)
    try:
        await nc.subscribe("vigil.poll.paris.paris-revoked")
        await nc.flush(timeout=5)
        test_pki.revoke(identity)  # the server has reloaded when this returns
        await wait_for(lambda: not nc.is_connected, timeout=10, what="the connection closed")
    finally:
        await nc.close()
    with pytest.raises(ConnectionError, match="Authorization Violation"):
        await natsconn.connect(server.url, "again", transport=material, first_attempt_timeout=1.5)


async def test_a_minion_issued_during_the_run_connects_at_once(server: NatsServer) -> None:
    # tests.pki tells the running server, which reloads before minion_cert returns.
    identity = test_pki.minion_cert("lyon", "lyon-new")
    nc = await natsconn.connect(
        server.url, "new", transport=test_pki.material(identity), first_attempt_timeout=2
    )
    try:
        await nc.subscribe("vigil.poll.lyon", queue="vigil-minions-lyon")
        await nc.flush(timeout=5)
    finally:
        await nc.close()


def test_the_configuration_holds_no_anonymous_access(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    pki.init()
    for identity in (Identity("nats", "nats"), Identity.minion("paris", "p1"), SCHEDULER):
        pki.issue(identity)
    pki.revoke(SCHEDULER)
    text = server_config(pki, host="127.0.0.1", port=4222, store_dir=tmp_path / "js")
    assert "no_auth_user" not in text
    assert '"verify_and_map": true' in text
    assert Identity.minion("paris", "p1").subject in text
    assert SCHEDULER.subject not in text  # revoked
    assert "CN=nats," not in text  # the server's own identity is nobody's user
    assert SENTINEL_USER["user"] in text  # never an empty user list (= no authentication)
    minion = permissions(Identity.minion("paris", "p1"))
    assert minion["publish"] == {"deny": [">"]}
    assert minion["subscribe"] == {
        "allow": ["vigil.poll.paris vigil-minions-paris", "vigil.poll.paris.p1"]
    }


async def test_an_embedded_server_waits_for_reload_to_take_effect(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    pki.init()
    pki.issue(Identity("nats", "nats"))
    with NatsServer(tmp_path / "nats", pki=pki) as srv:
        identity = Identity.minion("oslo", "o1")
        pki.issue(identity)
        material = TlsMaterial.load(
            pki.ca_cert_path, pki.cert_path(identity), pki.key_path(identity)
        )
        srv.reload()
        nc = await natsconn.connect(srv.url, "o1", transport=material, first_attempt_timeout=2)
        await nc.close()


async def test_sniff_says_when_a_subject_is_not_the_operators(
    server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # As the operator, from the run's PKI (VIGIL_PKI_DIR), like `vigil sniff` without flags.
    code = await run_sniff(server.url, "vigil.poll.>", pretty=False, count=1)
    assert code == 2
    assert 'permissions violation for subscription to "vigil.poll.>"' in capsys.readouterr().err


def test_the_configuration_needs_the_servers_certificate(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    pki.init()
    with pytest.raises(PkiError, match="vigil ca issue nats"):
        server_config(pki, host="127.0.0.1", port=4222, store_dir=tmp_path / "js")


async def test_a_renewed_certificate_is_presented_on_the_next_connection(
    server: NatsServer,
) -> None:
    identity = test_pki.minion_cert("paris", "paris-renewed")
    nc = await natsconn.connect(
        server.url, "renewed", transport=test_pki.material(identity), first_attempt_timeout=10
    )
    try:
        first = nc.options["tls"]
        test_pki.current().issue(identity)  # renewed on disk: a new key, the same identity
        test_pki.changed()
        port = server.port
        server.stop()  # the connection is lost ...
        server.port = port
        server.start()  # ... and made again, on the same address
        await wait_for(
            lambda: nc.stats["reconnects"] >= 1 and nc.is_connected,
            timeout=20,
            what="the client reconnected",
        )
        await nc.subscribe("vigil.poll.paris.paris-renewed")
        await nc.flush(timeout=5)
        assert nc.options["tls"] is not first  # the context was built from the new files
    finally:
        await nc.close()


async def test_only_the_scheduler_writes_the_access_snapshot(connect: Any) -> None:
    """Whoever could write it could let any token in: only the scheduler may, the event
    service only reads it, and nobody else touches it."""
    from services.core.access.replication import STREAM, SUBJECT, bucket_config

    scheduler = await connect(SCHEDULER)
    js = scheduler.nc.jetstream()
    await ensure_stream(js, bucket_config())
    await js.publish(SUBJECT, b'{"v": 1}', timeout=5)
    events = await connect(EVENTS)
    msg = await events.nc.jetstream().get_last_msg(STREAM, SUBJECT, direct=True)
    assert msg.data == b'{"v": 1}'
    await events.nc.publish(SUBJECT, b"{}")
    await events.refused(f'publish to "{SUBJECT}"')
    operator = await connect(OPERATOR)
    await operator.nc.publish(SUBJECT, b"{}")
    await operator.refused(f'publish to "{SUBJECT}"')
    minion = await connect(test_pki.minion_cert(*PARIS))
    await minion.nc.publish(f"$JS.API.DIRECT.GET.{STREAM}.{SUBJECT}", b"")
    await minion.refused("publish to")
