"""The event service under load (in this process, real nats-server, SQLite store).

Figures (no pass/fail):
* normalized events/s: raw events through JetStream ingest → normalize →
  publish on ``vigil.events.…`` → store, both draining a backlog (events
  produced while the service was down) and with a producer running alongside;
* webhook deliveries/s: signed POSTs acknowledged by a local aiohttp receiver,
  for one hook and for several hooks at once.

``python -m bench.events [--quick] [--store-url URL]`` runs it alone;
:func:`main` returns the rows for ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bench.common import bench_nats, bench_pki
from services.core import natsconn
from services.core.pki import Identity
from services.core.tls import TlsMaterial
from services.events.app import EventService
from services.scheduler.config import parse_config

#: Raw events as the scheduler sends them (the one raw-event producer NATS lets in).
SOURCE_SUBJECT = "vigil.ingest.scheduler"


def _raw(i: int) -> bytes:
    node = f"bench-{i % 500:04d}"
    return json.dumps(
        {
            "id": str(uuid.uuid4()),
            "type": "service",
            "action": "lost" if i % 2 else "regained",
            "typeId": f"{node}/10.0.{i % 250}.1/HTTP",
            "nodeId": node,
            "location": f"site-{i % 4}",
            "data": {
                "ip": f"10.0.{i % 250}.1",
                "service": "HTTP",
                "monitor": "http",
                "reason": "HTTP 503",
            },
        }
    ).encode()


async def _produce(js: JetStreamContext, count: int, start: int = 0) -> None:
    """Publish raw events to the ingest stream, 256 in flight at a time."""
    for base in range(start, start + count, 256):
        batch = []
        for i in range(base, min(base + 256, start + count)):
            body = _raw(i)
            batch.append(js.publish(SOURCE_SUBJECT, body, timeout=10.0))
        await asyncio.gather(*batch)


async def _producer(url: str) -> NATS:
    """A NATS client as the scheduler (TLS with its certificate from the bench PKI)."""
    pki = bench_pki()
    scheduler = Identity("scheduler", "scheduler")
    material = TlsMaterial.load(pki.ca_cert_path, pki.cert_path(scheduler), pki.key_path(scheduler))
    return await natsconn.connect(
        url, "bench-producer", transport=material, first_attempt_timeout=10.0
    )


def _config(work: Path, nats_url: str, store_url: str | None, **events: Any) -> Any:
    section: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "probe_listen": None,
        "metrics_listen": None,
        "store_url": store_url or f"sqlite:///{work}/events.db",
        "summary_interval": None,
        # The bench's webhook receivers listen on loopback: allowed explicitly (hook safety).
        "hooks_allow_networks": ["127.0.0.0/8"],
    }
    section.update(events)
    return parse_config(
        {"pki": {"dir": str(bench_pki().dir)}, "nats": {"url": nats_url}, "events": section},
        "<bench>",
        env={},
    )


async def _wait(predicate: Any, limit: float, what: str) -> None:
    end = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"bench: timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _row(scenario: str, count: int, seconds: float, unit: str) -> dict[str, object]:
    return {
        "scenario": scenario,
        "count": count,
        "seconds": f"{seconds:.2f}",
        "rate": f"{count / seconds:,.0f} {unit}/s" if seconds > 0 else "-",
    }


async def ingest(work: Path, count: int, store_url: str | None) -> list[dict[str, object]]:
    """Backlog drain and live ingestion rates."""
    rows = []
    with bench_nats(work / "nats-ingest") as server:
        cfg = _config(work, server.url, store_url)
        nc = await _producer(server.url)
        js = nc.jetstream()
        try:
            svc = EventService(cfg, nats_url=server.url)
            await svc.start()  # streams and the durable consumer exist from now on
            await svc.stop()
            await _produce(js, count)
            svc = EventService(cfg, nats_url=server.url)
            t0 = time.monotonic()
            await svc.start()
            try:
                assert svc.ingestor is not None
                ing = svc.ingestor
                await _wait(lambda: ing.processed >= count, 600, "the backlog")
                rows.append(_row("ingest: backlog drain", count, time.monotonic() - t0, "events"))

                t0 = time.monotonic()
                await _produce(js, count, start=count)
                await _wait(lambda: ing.processed >= 2 * count, 600, "live events")
                rows.append(
                    _row("ingest: producer alongside", count, time.monotonic() - t0, "events")
                )
            finally:
                await svc.stop()
        finally:
            await nc.close()
    return rows


class _Receiver:
    """Counts POSTs; answers 204."""

    def __init__(self) -> None:
        self.count = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.count += 1
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def webhooks(work: Path, count: int, hooks: int, store_url: str | None) -> dict[str, object]:
    """Deliveries/s to local receivers (one per hook), events produced as fast as ingest allows."""
    from services.events.filters import Interest

    with bench_nats(work / f"nats-hooks-{hooks}") as server:
        cfg = _config(work / f"h{hooks}", server.url, store_url)
        receivers = [_Receiver() for _ in range(hooks)]
        for r in receivers:
            await r.start()
        svc = EventService(cfg, nats_url=server.url)
        await svc.start()
        nc = await _producer(server.url)
        try:
            for i, r in enumerate(receivers):
                await svc.hooks.create(
                    f"bench-{i}-{uuid.uuid4().hex[:6]}", r.url, [Interest()], "bench-secret-key"
                )
            t0 = time.monotonic()
            await _produce(nc.jetstream(), count)
            await _wait(lambda: all(r.count >= count for r in receivers), 600, "webhook deliveries")
            elapsed = time.monotonic() - t0
        finally:
            await nc.close()
            await svc.stop()
            for r in receivers:
                await r.stop()
    in_flight = cfg.events.hook_max_in_flight
    return _row(
        f"webhooks: {hooks} hook(s), {in_flight} in flight each",
        count * hooks,
        elapsed,
        "deliveries",
    )


async def main(quick: bool = False, store_url: str | None = None) -> list[dict[str, object]]:
    """Run every scenario; returns table rows."""
    # Reconnect chatter of the services under test is not a figure.
    logging.getLogger("services").setLevel(logging.ERROR)
    n = 2000 if quick else 10_000
    m = 500 if quick else 2000
    with tempfile.TemporaryDirectory(prefix="vigil-bench-events-") as tmp:
        work = Path(tmp)
        rows = await ingest(work, n, store_url)
        rows.append(await webhooks(work, m, 1, store_url))
        rows.append(await webhooks(work, m, 4, store_url))
    return rows


def _cli() -> None:
    from bench.common import table

    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--store-url", help="database URL (default: a temporary SQLite file)")
    ns = parser.parse_args()
    print("## events (raw → normalized → NATS + store; webhooks to a local receiver)")
    print(table(asyncio.run(main(ns.quick, ns.store_url))))


if __name__ == "__main__":
    _cli()
