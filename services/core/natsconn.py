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
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from services.core.backoff import Backoff
from services.core.config.fields import mask_url
from services.core.natsauth import inbox_prefix
from services.core.tls import TlsError, TlsMaterial, Transport

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


def tls_options(transport: Transport) -> dict[str, Any]:
    """The nats-py ``connect`` options for ``transport``: TLS and the identity's inbox."""
    if not isinstance(transport, TlsMaterial):
        return {}
    # Handshake first: without it nats-py reads the server's INFO in plaintext
    # and upgrades only if asked to, so a man in the middle posing as a server
    # without TLS would be believed (and could feed a minion forged requests).
    options: dict[str, Any] = {"tls": transport.client_context(), "tls_handshake_first": True}
    # Replies come to an inbox only this identity may subscribe to.
    if (prefix := inbox_prefix(transport.identity)) is not None:
        options["inbox_prefix"] = prefix
    return options


def refreshed_context(material: TlsMaterial, name: str) -> ssl.SSLContext:
    """A client context from ``material``'s files as they are now.

    The loaded one when they no longer hold a usable certificate for the same
    identity (a half-copied bundle, another identity's certificate).
    """
    try:
        fresh = TlsMaterial.load(
            material.ca_path, material.cert_path, material.key_path, material.revoked_path
        )
        if fresh.identity == material.identity:
            return fresh.client_context()
        log.warning(
            "NATS (%s): %s now names %s, not %s; keeping the certificate loaded at start",
            name,
            material.cert_path,
            fresh.identity,
            material.identity,
        )
    except (TlsError, OSError, ssl.SSLError) as exc:
        log.warning("NATS (%s): cannot re-read the TLS material (%s); keeping it", name, exc)
    return material.client_context()


async def connect(
    url: str,
    name: str,
    *,
    transport: Transport,
    first_attempt_timeout: float | None = None,
    max_backoff: float = 10.0,
    on_error: Callable[[Exception], Awaitable[None]] | None = None,
    ping_interval: int = 10,
    max_outstanding_pings: int = 3,
) -> NATS:
    """Connect to NATS as ``transport``'s identity, retrying the first connection.

    ``first_attempt_timeout`` bounds the whole first-connect phase (``None``:
    keep trying until cancelled). Once connected, the client reconnects for
    ever with jittered back-off, presenting the certificate as it is on disk
    then (renewal needs no restart). A refused certificate (unknown, revoked,
    another CA) is retried like an unreachable server: an operator may fix
    the server's configuration meanwhile. ``on_error`` is told of every error
    the client reports (a permissions violation, for one), after it is logged.
    A connection whose ``max_outstanding_pings`` pings, sent every
    ``ping_interval`` seconds, went unanswered is taken for dead and replaced.
    """
    tls = tls_options(transport)
    told = on_error
    last_error: list[Exception] = []

    async def logged(exc: Exception) -> None:
        last_error[:] = [exc]
        log.warning("NATS (%s): %s", name, exc)
        if told is not None:
            await told(exc)

    async def on_disconnected() -> None:
        log.warning("NATS (%s): disconnected", name)
        if isinstance(transport, TlsMaterial) and nc.options.get("tls") is not None:
            # nats-py takes the context anew for every connection: a certificate
            # renewed on disk is presented from the next one on, without a restart.
            nc.options["tls"] = refreshed_context(transport, name)

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
            # One attempt per round: nats-py would retry a failed first connection
            # itself, for ever and without our deadline, when reconnecting is on.
            async with asyncio.timeout_at(give_up):
                await nc.connect(
                    servers=_servers(url),
                    name=name,
                    connect_timeout=2,
                    reconnect_time_wait=1,
                    max_reconnect_attempts=-1,
                    allow_reconnect=False,
                    ping_interval=ping_interval,
                    max_outstanding_pings=max_outstanding_pings,
                    error_cb=logged,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                    **tls,
                )
            # Connected: from now on nats-py reconnects on its own, for ever (it
            # reads this option whenever a connection is lost).
            nc.options["allow_reconnect"] = True
            return nc
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            await _abandon(nc)
            delay = backoff.next()
            if give_up is not None and loop.time() + delay > give_up:
                why = exc if str(exc) or not last_error else last_error[0]
                raise ConnectionError(f"cannot connect to NATS at {mask_url(url)}: {why}") from exc
            log.warning(
                "NATS (%s): cannot connect to %s (%s); retrying in %.1fs", name, url, exc, delay
            )
            await asyncio.sleep(delay)


async def _abandon(nc: NATS) -> None:
    """Release what a failed first connection left (its socket, its tasks)."""
    try:
        async with asyncio.timeout(2.0):
            await nc.close()
    except Exception as exc:
        log.debug("closing a failed NATS connection: %s", exc)


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


# --- nats-py 2.16 workarounds ---------------------------------------------------------
# The only place in Vigil that reaches into nats-py's internals: a flush that times
# out (a drain or a round trip during a partition) cancels its PONG future but leaves
# it queued; the late PONG, once the link is back, raises InvalidStateError in
# ``_process_pong``, which ends the read loop while the client still says it is
# connected (nats.py #624/#129). Remove these once nats-py fixes it.


def is_reading(nc: NATS) -> bool:
    """Connected, and the client's read loop still runs (so messages can arrive)."""
    reading = nc._reading_task
    return nc.is_connected and reading is not None and not reading.done()


def repair_pongs(nc: NATS) -> None:
    """Swap cancelled PONG futures for fresh ones before their late PONG arrives."""
    loop = asyncio.get_running_loop()
    pongs = nc._pongs
    for i, future in enumerate(pongs):
        if future.cancelled():
            pongs[i] = loop.create_future()


async def reconnect_stale(nc: NATS) -> None:
    """Hand a connection whose read loop died to nats-py's own reconnect, as a stale one."""
    await nc._process_op_err(nats.errors.StaleConnectionError())
