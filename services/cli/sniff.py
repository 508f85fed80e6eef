"""``vigil sniff``: print what is published on a subject (like RackHD's sniff.js).

JSON lines by default (pipe them to ``jq``); ``--pretty`` prints one readable
line per event instead. Any subject under ``vigil.events.>`` (the default)
works: ``vigil.events.service.>``, ``vigil.events.*.*.critical.>``, and the
rejection notices (``vigil.rejected.>``).

It connects as the operator, with the certificate in ``.vigil/pki`` (or
``--pki-dir`` / ``VIGIL_PKI_DIR``): NATS lets an operator read
``vigil.events.>`` and ``vigil.rejected.>`` only, so other subjects (the raw
``vigil.ingest.>``, the poll requests) are refused by the server, and sniff
exits 2 saying so. ``--plaintext`` is for a server in the loopback-only
development mode.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.cli.runtime import until_signal
from services.core import natsconn
from services.core.config.fields import mask_url
from services.core.pki import Identity, Pki
from services.core.tls import PLAINTEXT, TlsError, TlsMaterial, Transport, require_loopback

DEFAULT_PKI_DIR = Path(".vigil/pki")
OPERATOR = Identity("operator", "operator")
log = logging.getLogger(__name__)


def operator_transport(url: str, pki_dir: Path | None, *, plaintext: bool = False) -> Transport:
    """The operator's TLS material for NATS (``plaintext``: loopback only); raises TlsError.

    From ``pki_dir``, else ``$VIGIL_PKI_DIR``, else ``.vigil/pki``.
    """
    if plaintext:
        require_loopback({"--nats": url})
        return PLAINTEXT
    pki = Pki(pki_dir or os.environ.get("VIGIL_PKI_DIR") or DEFAULT_PKI_DIR)
    return TlsMaterial.load(
        pki.ca_cert_path, pki.cert_path(OPERATOR), pki.key_path(OPERATOR), pki.revoked_path
    )


def _summary(data: dict[str, Any]) -> str:
    total = data.get("total") or {}
    places = data.get("locations") or {}
    parts = [
        f"{loc} {c.get('up', 0)} up/{c.get('down', 0)} down" for loc, c in sorted(places.items())
    ]
    return f"total {total.get('up', 0)} up/{total.get('down', 0)} down" + (
        f"  ({', '.join(parts)})" if parts else ""
    )


def pretty_line(subject: str, data: bytes) -> str:
    """One readable line for an event.

    ``2026-11-22T10:00:00.123Z major       service lost node-17/10.0.0.5/HTTP @paris  HTTP 503``
    """
    try:
        e = json.loads(data)
        if not isinstance(e, dict):
            raise ValueError
    except ValueError:
        return f"{subject}: {data[:200]!r}"
    if "type" not in e and "reason" in e:  # a rejection notice (vigil.rejected.>)
        return f"rejected from {e.get('source', '?')}: {e['reason']}"
    raw_data = e.get("data")
    payload: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    # A summary's news is its counts; any other event's is its reason, when it has one.
    detail = _summary(payload) if e.get("type") == "summary" else str(payload.get("reason", ""))
    where = f" @{e['location']}" if e.get("location") else ""
    kind = f"{e.get('type', '?')} {e.get('action', '?')}"
    head = f"{e.get('createdAt', '?')} {e.get('severity', '?'):<11} {kind}"
    what = e.get("typeId") or e.get("nodeId") or "-"
    return f"{head} {what}{where}" + (f"  {detail}" if detail else "")


#: How long sniff tries to reach NATS before it gives up (docs/operations.md).
CONNECT_TIMEOUT = 10.0
#: Bounds on the subscription's round trips and on closing the connection.
ROUND_TRIP_TIMEOUT = 5
CLOSE_TIMEOUT = 1.0


async def run_sniff(
    url: str,
    subject: str,
    *,
    pretty: bool,
    count: int,
    pki_dir: Path | None = None,
    plaintext: bool = False,
) -> int:
    """Subscribe as the operator and print until interrupted (or ``count`` messages).

    Exit codes: 0 after ``count`` messages or the first SIGINT/SIGTERM (even
    while still connecting), 1 when NATS cannot be reached within
    :data:`CONNECT_TIMEOUT` (one line saying why), 2 for a refused subject or
    missing certificates.
    """
    try:
        transport = operator_transport(url, pki_dir, plaintext=plaintext)
    except TlsError as exc:
        print(
            f"vigil sniff: {exc}\n  (an operator certificate: `vigil ca issue operator`; "
            "another directory: --pki-dir or VIGIL_PKI_DIR)",
            file=sys.stderr,
        )
        return 2
    code = await until_signal(
        _sniff(url, subject, transport, pretty=pretty, count=count), wind_down=CLOSE_TIMEOUT + 0.5
    )
    return 0 if code is None else code


async def _connect_quietly(
    url: str, transport: Transport, on_error: Callable[[Exception], Awaitable[None]]
) -> NATS:
    """The first connection, without a warning per failed attempt (the caller says it once)."""
    quiet = logging.getLogger(natsconn.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return await natsconn.connect(
            url,
            "vigil-sniff",
            transport=transport,
            first_attempt_timeout=CONNECT_TIMEOUT,
            on_error=on_error,
        )
    finally:
        quiet.setLevel(level)


async def _sniff(url: str, subject: str, transport: Transport, *, pretty: bool, count: int) -> int:
    stop = asyncio.Event()
    seen = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal seen
        if count and seen >= count:
            return
        line = (
            pretty_line(msg.subject, msg.data)
            if pretty
            else msg.data.decode("utf-8", "replace").strip()
        )
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        seen += 1
        if count and seen >= count:
            stop.set()

    refused: list[str] = []

    async def on_error(exc: Exception) -> None:
        # The server answers a subscription it does not allow with an error, not at once.
        if "permissions violation" in str(exc).lower():
            refused.append(str(exc))
            stop.set()

    try:
        nc = await _connect_quietly(url, transport, on_error)
    except ConnectionError as exc:
        print(f"vigil sniff: {exc} (gave up after {CONNECT_TIMEOUT:.0f}s)", file=sys.stderr)
        return 1
    try:
        await nc.subscribe(subject, cb=on_msg)
        await nc.flush(timeout=ROUND_TRIP_TIMEOUT)
        # nats-py hands the server's refusal (sent before the first PONG) to
        # the error callback in a task of its own: a second round trip lets it run.
        await nc.flush(timeout=ROUND_TRIP_TIMEOUT)
        if refused:
            print(
                f"vigil sniff: {refused[0]} (an operator may read vigil.events.> "
                "and vigil.rejected.>)",
                file=sys.stderr,
            )
            return 2
        print(f"vigil sniff: watching {subject} on {mask_url(url)}", file=sys.stderr, flush=True)
        await stop.wait()
    except (nats.errors.Error, TimeoutError) as exc:
        print(f"vigil sniff: NATS at {mask_url(url)} stopped answering: {exc!r}", file=sys.stderr)
        return 1
    finally:
        # Bounded: a connection that went dead must not hold the exit up.
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await nc.close()
        except Exception as exc:
            log.debug("closing NATS: %r", exc)
    return 0
