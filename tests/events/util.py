"""Helpers for the event-service tests: raw events, gRPC stubs, real HTTP receivers."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from nats.js import JetStreamContext
from vigil.v1 import events_pb2_grpc

from services.core.config import VigilConfig
from services.core.events import INGEST_SUBJECT_PREFIX
from services.core.pki import Identity
from tests import pki as test_pki
from tests.helpers import SCHEDULER, make_config, nats_client

#: Events settings that keep tests fast; each test overrides what it exercises.
FAST_EVENTS: dict[str, Any] = {
    "summary_interval": None,
    "subscribe_keepalive": "0.5s",
    "subscribe_stall_timeout": "1s",
    "hook_timeout": "2s",
    "hook_ack_wait": "3s",
    "hook_backoff_initial": "50ms",
    "hook_backoff_max": "200ms",
    "hook_max_age": "1h",
}


def events_config(
    tmp_path: Path, nats_url: str, store_url: str | None = None, **events: Any
) -> VigilConfig:
    """A test config whose ``events`` section is :data:`FAST_EVENTS` plus ``events``."""
    section = dict(FAST_EVENTS)
    if store_url is not None:
        section["store_url"] = store_url
    section.update(events)
    return make_config(tmp_path, nats_url, events=section)


def raw_event(
    type_: str = "service",
    action: str = "lost",
    node: str | None = "node-1",
    *,
    location: str | None = "Default",
    service: str = "HTTP",
    ip: str = "10.0.0.1",
    **fields: Any,
) -> dict[str, Any]:
    """A raw event as a producer would send it (fresh id)."""
    event: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "type": type_,
        "action": action,
        "typeId": f"{node}/{ip}/{service}"
        if node and type_ in ("service", "outage")
        else (node or ""),
        "nodeId": node,
        "location": location,
        "data": {"ip": ip, "service": service},
    }
    event.update(fields)
    return event


async def publish_raw(
    js: JetStreamContext,
    event: dict[str, Any] | bytes,
    source: str = "scheduler",
    msg_id: str | None = None,
) -> None:
    """Hand one raw event to the ingest stream, as the scheduler's outbox does."""
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    if msg_id is None and isinstance(event, dict):
        msg_id = event.get("id")
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    await js.publish(f"{INGEST_SUBJECT_PREFIX}.{source}", body, timeout=5.0, headers=headers)


@asynccontextmanager
async def jetstream(url: str, identity: Identity = SCHEDULER) -> AsyncIterator[JetStreamContext]:
    """A separate NATS connection (a producer or consumer that is not the service).

    As the scheduler by default: the one producer of raw events NATS lets in.
    """
    nc = await nats_client(url, identity)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


@asynccontextmanager
async def events_stub(address: str, **options: Any) -> AsyncIterator[events_pb2_grpc.EventsStub]:
    """A ``vigil.v1.Events`` client, as the operator (mutual TLS)."""
    async with grpc.aio.secure_channel(
        address, test_pki.operator_credentials(), options=list(options.items())
    ) as ch:
        yield events_pb2_grpc.EventsStub(ch)


class Receiver:
    """A real HTTP server receiving webhook POSTs.

    It can fail the first attempts, hang, stop and come back on the same port.
    """

    def __init__(self, *, fail_first: int = 0, hang: bool = False) -> None:
        self.fail_first = fail_first
        self.hang = hang
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.attempts = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    @property
    def url(self) -> str:
        """Where hooks should POST."""
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts += 1
        if self.hang:
            await self._release.wait()
            return web.Response(status=503)
        if self.attempts <= self.fail_first:
            return web.Response(status=503, text="not yet")
        self.requests.append((dict(request.headers), body))
        return web.Response(status=204)

    def bodies(self) -> list[dict[str, Any]]:
        """The events received (decoded)."""
        return [json.loads(b) for _, b in self.requests]

    async def start(self) -> Receiver:
        """Listen (on the same port as before, after a stop)."""
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            server: Any = site._server
            self.port = int(server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Stop listening: connections are refused from now on."""
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._release = asyncio.Event()
