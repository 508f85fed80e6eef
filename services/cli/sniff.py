"""``vigil sniff``: print what is published on a subject."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from nats.aio.msg import Msg

from services.common import natsconn


def pretty_line(subject: str, data: bytes) -> str:
    """``2026-11-22T10:00:00.123Z major    service lost node-17/10.0.0.5/HTTP  HTTP 503``."""
    try:
        e = json.loads(data)
        if not isinstance(e, dict):
            raise ValueError
    except ValueError:
        return f"{subject}: {data[:200]!r}"
    reason = (e.get("data") or {}).get("reason", "")
    return (
        f"{e.get('createdAt', '?')} {e.get('severity', '?'):<11} {e.get('type', '?')} {e.get('action', '?')} "
        f"{e.get('typeId') or e.get('nodeId') or '-'}" + (f"  {reason}" if reason else "")
    )


async def run_sniff(url: str, subject: str, *, pretty: bool, count: int) -> int:
    """Subscribe and print until interrupted (or ``count`` messages)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    seen = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal seen
        if pretty:
            line = pretty_line(msg.subject, msg.data)
        else:
            line = msg.data.decode("utf-8", "replace").strip()
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        seen += 1
        if count and seen >= count:
            stop.set()

    try:
        nc = await natsconn.connect(url, "vigil-sniff", first_attempt_timeout=10.0)
    except ConnectionError as exc:
        print(f"vigil sniff: {exc}", file=sys.stderr)
        return 1
    try:
        await nc.subscribe(subject, cb=on_msg)
        await nc.flush(timeout=5)
        print(f"vigil sniff: watching {subject} on {url}", file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        await nc.close()
    return 0
