"""Connecting to NATS the same way in every process.

nats-py reconnects on its own once connected, but gives up if the *first*
connection fails. Components started before their NATS server (a compose
deployment, a minion at a site whose link is down) must keep trying, so
:func:`connect` retries the first connection with capped exponential back-off.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

from services.core.backoff import Backoff

log = logging.getLogger(__name__)

#: Where ``vigil up`` writes the URL of its embedded server.
STATE_DIR = Path(".vigil")
NATS_URL_FILE = STATE_DIR / "nats-url"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def discover_nats_url(explicit: str | None = None) -> str:
    """The NATS URL: flag, else ``VIGIL_NATS_URL``, else ``.vigil/nats-url``, else the default."""
    if explicit:
        return explicit
    if env := os.environ.get("VIGIL_NATS_URL"):
        return env
    try:
        text = NATS_URL_FILE.read_text().strip()
    except OSError:
        text = ""
    return text or DEFAULT_NATS_URL


def _servers(url: str) -> list[str]:
    return [u.strip() for u in url.split(",") if u.strip()]


async def connect(
    url: str,
    name: str,
    *,
    first_attempt_timeout: float | None = None,
    max_backoff: float = 10.0,
) -> NATS:
    """Connect to NATS, retrying the first connection.

    ``first_attempt_timeout`` bounds the whole first-connect phase (``None``:
    keep trying until cancelled). Once connected, the client reconnects for
    ever with jittered back-off.
    """

    async def on_error(exc: Exception) -> None:
        log.warning("NATS (%s): %s", name, exc)

    async def on_disconnected() -> None:
        log.warning("NATS (%s): disconnected", name)

    async def on_reconnected() -> None:
        log.info(
            "NATS (%s): reconnected to %s",
            name,
            nc.connected_url.netloc if nc.connected_url else "?",
        )

    loop = asyncio.get_running_loop()
    give_up = None if first_attempt_timeout is None else loop.time() + first_attempt_timeout
    backoff = Backoff(initial=0.2, cap=max_backoff)
    while True:
        nc = NATS()
        try:
            await nc.connect(
                servers=_servers(url),
                name=name,
                connect_timeout=2,
                reconnect_time_wait=1,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                ping_interval=10,
                max_outstanding_pings=3,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            )
            return nc
        except (nats.errors.NoServersError, OSError, TimeoutError) as exc:
            delay = backoff.next()
            if give_up is not None and loop.time() + delay > give_up:
                raise ConnectionError(f"cannot connect to NATS at {url}: {exc}") from exc
            log.warning(
                "NATS (%s): cannot connect to %s (%s); retrying in %.1fs", name, url, exc, delay
            )
            await asyncio.sleep(delay)


async def close(nc: NATS | None, timeout: float = 5.0) -> None:
    """Drain (deliver what is buffered), else close; never raises: used on shutdown."""
    if nc is None:
        return
    try:
        async with asyncio.timeout(timeout):
            await nc.drain()
    except Exception:
        try:
            await nc.close()
        except Exception as exc:
            log.debug("closing NATS: %s", exc)
