"""Hook safety: webhooks cannot be turned inward (SSRF), nor read internal answers.

Against the real event service, real HTTP receivers on 127.0.0.1 and real
sockets. Name lookups go through a resolver the test controls (the guard's
``resolver``), so DNS rebinding can be staged; the connections are real.
See docs/security.md, "Hook safety".
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from google.protobuf.field_mask_pb2 import FieldMask
from vigil.v1 import events_pb2, events_pb2_grpc

from services.core.config import ConfigError, parse_config
from services.core.natsserver import NatsServer
from services.events.app import EventService
from services.events.hooks.guard import shown_error
from tests.events.util import (
    Receiver,
    events_config,
    events_stub,
    jetstream,
    publish_raw,
    raw_event,
)
from tests.helpers import free_port, wait_for

SECRET = "correct-horse-battery"


class FakeDns:
    """A resolver whose answers the test sets: ``names[host]`` is the list of answers,
    one per lookup (the last one repeats); an unknown name does not resolve."""

    def __init__(self, names: dict[str, Sequence[Sequence[str]]] | None = None) -> None:
        self.names = dict(names or {})
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        answers = self.names.get(host)
        if answers is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        n = sum(1 for h in self.lookups if h == host)
        self.lookups.append(host)
        return list(answers[min(n, len(answers) - 1)])


@asynccontextmanager
async def running(
    tmp_path: Path, nats_url: str, dns: FakeDns | None = None, **events: Any
) -> AsyncIterator[tuple[EventService, events_pb2_grpc.EventsStub]]:
    """An event service whose ``events`` settings are the fast test ones plus ``events``
    (``hooks_allow_networks`` empty unless given), and a client of it."""
    events.setdefault("hooks_allow_networks", [])
    svc = EventService(events_config(tmp_path, nats_url, **events), nats_url=nats_url)
    await svc.start()
    if dns is not None:
        svc.hooks.guard.resolver = dns
    try:
        async with events_stub(svc.grpc_address) as stub:
            yield svc, stub
    finally:
        await svc.stop()


def create(name: str, url: str) -> events_pb2.CreateHookRequest:
    return events_pb2.CreateHookRequest(name=name, url=url, secret=SECRET)


async def refused(stub: events_pb2_grpc.EventsStub, request: Any) -> str:
    """The details of an INVALID_ARGUMENT on ``url``."""
    call = stub.CreateHook if isinstance(request, events_pb2.CreateHookRequest) else stub.UpdateHook
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    details = info.value.details() or ""
    assert details.startswith("url: "), details
    return details


async def hook_status(stub: events_pb2_grpc.EventsStub, hook_id: str) -> events_pb2.Hook:
    resp = await stub.ListHooks(events_pb2.ListHooksRequest())
    return next(h for h in resp.hooks if h.id == hook_id)


async def last_error(stub: events_pb2_grpc.EventsStub, hook_id: str) -> str | None:
    return (await hook_status(stub, hook_id)).status.last_error or None


async def send(url: str, *events: dict[str, Any]) -> None:
    async with jetstream(url) as js:
        for e in events:
            await publish_raw(js, e)


#: URL → what the refusal must say.
INWARD = [
    ("http://127.0.0.1:{port}/admin", "loopback address 127.0.0.1"),
    ("http://[::1]:{port}/admin", "loopback address ::1"),
    ("http://0.0.0.0:{port}/", "unspecified address 0.0.0.0"),
    ("http://2130706433:{port}/", "loopback address 127.0.0.1"),
    ("http://0x7f.1:{port}/", "loopback address 127.0.0.1"),
    ("http://127.1:{port}/", "loopback address 127.0.0.1"),
    ("http://[::ffff:127.0.0.1]:{port}/", "loopback address ::ffff:7f00:1 (IPv4 127.0.0.1)"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata address 169.254.169.254"),
    ("http://[fd00:ec2::254]/latest/", "cloud metadata address fd00:ec2::254"),
    (
        "http://metadata.google.internal/computeMetadata/v1/",
        "metadata.google.internal is a cloud metadata host",
    ),
    ("http://METADATA/", "metadata is a cloud metadata host"),
    ("http://localhost:{port}/", "localhost is a loopback host"),
    ("http://10.0.0.1:6379/", "private address 10.0.0.1"),
    ("http://192.168.1.1/", "private address 192.168.1.1"),
    ("http://172.16.5.4/", "private address 172.16.5.4"),
    ("http://[fc00::1]/", "private address fc00::1"),
    ("http://100.64.0.1/", "shared (CGNAT) address 100.64.0.1"),
    ("http://169.254.10.1/", "link-local address 169.254.10.1"),
    ("http://[fe80::1]/", "link-local address fe80::1"),
    ("http://224.0.0.1/", "multicast address 224.0.0.1"),
    ("http://255.255.255.255/", "broadcast address 255.255.255.255"),
    ("http://240.0.0.1/", "reserved address 240.0.0.1"),
    ("http://203.0.113.5/", "non-public address 203.0.113.5"),
]


async def test_create_and_update_refuse_inward_urls(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    port = free_port()
    dns = FakeDns(
        {
            "receiver.example.com": [["198.51.100.7"]],
            "mixed.example.com": [["203.0.113.9", "127.0.0.1"]],
            "intranet.example.com": [["10.1.2.3"]],
        }
    )
    async with running(
        tmp_path, nats_server.url, dns, hooks_allow_networks=["198.51.100.0/24", "203.0.113.0/24"]
    ) as (_svc, stub):
        for template, why in INWARD:
            if "203.0.113" in template:
                continue  # allowed here (below: refused without the allow-list)
            url = template.format(port=port)
            details = await refused(stub, create("inward", url))
            assert why in details, (url, details)
            assert "events.hooks_allow_" in details, details
        # A name is refused if ANY of its addresses is forbidden.
        details = await refused(stub, create("mixed", "http://mixed.example.com/h"))
        assert "mixed.example.com resolves to a loopback address 127.0.0.1" in details
        details = await refused(stub, create("intra", "https://intranet.example.com/h"))
        assert "resolves to a private address 10.1.2.3" in details
        # A name that does not resolve now is accepted (checked at every delivery).
        later = await stub.CreateHook(create("later", "https://not-yet.example.com/h"))
        assert later.id

        # UpdateHook checks a new URL the same way; the hook stays as it was.
        hook = await stub.CreateHook(create("ok", "https://receiver.example.com/h"))
        details = await refused(
            stub,
            events_pb2.UpdateHookRequest(
                id=hook.id, url="http://169.254.169.254/", update_mask=FieldMask(paths=["url"])
            ),
        )
        assert "cloud metadata address 169.254.169.254" in details
        assert (await hook_status(stub, hook.id)).url == "https://receiver.example.com/h"
        listed = await stub.ListHooks(events_pb2.ListHooksRequest())
        assert sorted(h.name for h in listed.hooks) == ["later", "ok"]

    # Without the allow-list, a documentation address is not public either.
    async with running(tmp_path / "2", nats_server.url) as (_svc, stub):
        details = await refused(stub, create("doc", "http://203.0.113.5/h"))
        assert "non-public address 203.0.113.5" in details


async def test_allow_lists_exempt_addresses_and_names(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    receiver = await Receiver().start()
    allowed = ["127.0.0.0/8", "::1/128", "10.0.0.0/8"]
    try:
        async with running(
            tmp_path,
            nats_server.url,
            hooks_allow_networks=allowed,
            hooks_allow_hosts=["Metadata.Google.Internal"],
        ) as (svc, stub):
            for i, url in enumerate(
                [
                    f"http://[::1]:{receiver.port}/hook",
                    f"http://[::ffff:127.0.0.1]:{receiver.port}/hook",
                    "http://10.0.0.1:6379/",
                    "http://metadata.google.internal/computeMetadata/v1/",
                ]
            ):
                assert (await stub.CreateHook(create(f"h{i}", url))).id
            # Still refused: another network; and a legacy number form, even if allowed.
            details = await refused(stub, create("other", "http://192.168.1.1/"))
            assert "private address 192.168.1.1" in details
            details = await refused(stub, create("decimal", f"http://2130706433:{receiver.port}/"))
            assert "dotted quad (127.0.0.1)" in details
            # An allowed loopback receiver gets its events.
            await stub.CreateHook(create("local", receiver.url))
            event = raw_event("node", "down", "n1")
            await send(svc.nats_url, event)
            await wait_for(lambda: receiver.requests, what="delivery to the allowed receiver")
            assert receiver.bodies()[0]["id"] == event["id"]
    finally:
        await receiver.stop()


def test_bad_allow_lists_are_config_errors_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"events\.hooks_allow_networks: '10\.0\.0\.0/33'"):
        parse_config({"events": {"hooks_allow_networks": ["10.0.0.0/33"]}}, "<t>", env={})
    with pytest.raises(ConfigError, match=r"events\.hooks_allow_networks: 'intranet'"):
        parse_config({"events": {"hooks_allow_networks": ["intranet"]}}, "<t>", env={})
    with pytest.raises(
        ConfigError, match=r"events\.hooks_allow_hosts: '10\.0\.0\.1' is an address"
    ):
        parse_config({"events": {"hooks_allow_hosts": ["10.0.0.1"]}}, "<t>", env={})
    with pytest.raises(ConfigError, match=r"events\.hooks_allow_hosts: 'a b'"):
        parse_config({"events": {"hooks_allow_hosts": ["a b"]}}, "<t>", env={})
    cfg = parse_config(
        {"events": {"hooks_allow_networks": ["10.1.2.3/8", "::1"], "hooks_allow_hosts": ["A.b."]}},
        "<t>",
        env={},
    )
    assert [str(n) for n in cfg.events.hooks_allow_networks] == ["10.0.0.0/8", "::1/128"]
    assert cfg.events.hooks_allow_hosts == ["a.b"]
    defaults = parse_config({}, "<t>", env={}).events
    assert defaults.hooks_allow_networks == [] and defaults.hooks_allow_hosts == []


async def test_dns_rebinding_is_refused_at_connection(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Public-looking at creation, loopback at delivery: refused; nothing reaches the receiver."""
    receiver = await Receiver().start()
    dns = FakeDns({"rebind.example.com": [["203.0.113.5"], ["127.0.0.1"]]})
    url = f"http://rebind.example.com:{receiver.port}/hook"
    try:
        async with running(
            tmp_path, nats_server.url, dns, hooks_allow_networks=["203.0.113.0/24"]
        ) as (svc, stub):
            hook = await stub.CreateHook(create("rebind", url))
            assert dns.lookups == ["rebind.example.com"]  # checked at creation: 203.0.113.5
            await send(svc.nats_url, raw_event("node", "down", "n1"))
            error = await wait_for(lambda: last_error(stub, hook.id), what="a refused attempt")
            assert error == "address not allowed"
            assert len(dns.lookups) >= 2  # resolved again for the connection
            listing = await stub.ListHooks(events_pb2.ListHooksRequest())
            assert b"127.0.0.1" not in listing.SerializeToString()
        assert receiver.attempts == 0
        assert receiver.requests == []
    finally:
        await receiver.stop()


async def test_the_connection_goes_to_the_checked_address(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """The guard's answer is the address connected to: no second resolution (the
    system's DNS does not know this name)."""
    receiver = await Receiver().start()
    dns = FakeDns({"receiver.example.com": [["127.0.0.1"]]})
    url = f"http://receiver.example.com:{receiver.port}/hook"
    try:
        async with running(
            tmp_path, nats_server.url, dns, hooks_allow_networks=["127.0.0.0/8"]
        ) as (svc, stub):
            await stub.CreateHook(create("named", url))
            await send(svc.nats_url, raw_event("node", "down", "n1"), raw_event("node", "up", "n1"))
            await wait_for(lambda: len(receiver.requests) == 2, what="2 deliveries by name")
            assert receiver.requests[0][0]["Host"] == f"receiver.example.com:{receiver.port}"
            assert dns.lookups.count("receiver.example.com") >= 2
    finally:
        await receiver.stop()


async def test_a_stored_inward_hook_is_refused_at_every_delivery(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """A hook stored while its address was allowed (or by an older version) is kept, but
    its deliveries are refused without a connection once the address is not allowed."""
    receiver = await Receiver().start()
    try:
        async with running(tmp_path, nats_server.url, hooks_allow_networks=["127.0.0.0/8"]) as (
            _svc,
            stub,
        ):
            hook = await stub.CreateHook(create("old", receiver.url))
        async with running(tmp_path, nats_server.url) as (svc, stub):
            await send(svc.nats_url, raw_event("node", "down", "n1"))
            error = await wait_for(lambda: last_error(stub, hook.id), what="a refused attempt")
            assert error == "address not allowed"
        assert receiver.attempts == 0
    finally:
        await receiver.stop()


class Answering:
    """A real HTTP server answering every POST with a fixed status, reason and body."""

    def __init__(
        self, status: int, reason: str, body: str, headers: dict[str, str] | None = None
    ) -> None:
        self.status, self.reason, self.body, self.headers = status, reason, body, headers or {}
        self.hits = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.hits += 1
        return web.Response(
            status=self.status, reason=self.reason, text=self.body, headers=self.headers
        )

    async def start(self) -> Answering:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server
        self.port = int(server.sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_errors_shown_are_classes_never_the_receivers_text(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    failing = await Answering(500, "Secret Reason", "secret internal text").start()
    target = await Answering(204, "No Content", "").start()
    redirecting = await Answering(
        302, "Found", "moved to the secret place", {"Location": target.url}
    ).start()
    closed = free_port()
    try:
        async with running(
            tmp_path, nats_server.url, hooks_allow_networks=["127.0.0.0/8"], hook_max_age="1s"
        ) as (svc, stub):
            h500 = await stub.CreateHook(create("h500", failing.url))
            h302 = await stub.CreateHook(create("h302", redirecting.url))
            dead = await stub.CreateHook(create("dead", f"http://127.0.0.1:{closed}/hook"))
            await send(svc.nats_url, raw_event("node", "down", "n1"))

            async def settled() -> dict[str, str] | None:
                got = {}
                for h in (h500, h302, dead):
                    resp = await stub.ListHookFailures(
                        events_pb2.ListHookFailuresRequest(hook_id=h.id)
                    )
                    if len(resp.failures) != 1:
                        return None
                    got[h.name] = resp.failures[0].last_error
                return got

            parked = await wait_for(settled, timeout=10, what="one parked delivery per hook")
            assert parked == {
                "h500": "HTTP 500",
                "h302": "redirect not followed",
                "dead": "connection failed",
            }
            listing = await stub.ListHooks(events_pb2.ListHooksRequest())
            shown = {h.name: h.status.last_error for h in listing.hooks}
            assert shown == parked
            wire = listing.SerializeToString()
            for leak in (b"secret", b"Secret", b"moved", b"Connect", b"Errno"):
                assert leak not in wire
        assert failing.hits >= 1
        assert redirecting.hits >= 1
        assert target.hits == 0  # the redirect was not followed
    finally:
        for s in (failing, target, redirecting):
            await s.stop()


def test_errors_stored_by_an_older_version_are_shown_as_classes() -> None:
    assert shown_error("HTTP 405 Method Not Allowed") == "HTTP 405"
    assert shown_error("HTTP 503 Service Unavailable: secret") == "HTTP 503"
    assert shown_error("HTTP 301 Moved Permanently") == "redirect not followed"
    assert shown_error("no answer within 5s") == "timeout"
    assert (
        shown_error("ClientConnectorError: Cannot connect to host 10.0.0.1:6379")
        == "delivery failed"
    )
    assert shown_error("connection failed") == "connection failed"
    assert shown_error(None) is None
