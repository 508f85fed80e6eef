"""Running one long-lived component under asyncio with clean signal handling."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Protocol

from services.core.tasks import Supervisor
from services.core.tls import TlsError

log = logging.getLogger(__name__)


class Component(Protocol):
    tasks: Supervisor

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def serve(
    make: Callable[[], Component], on_started: Callable[[Component], Awaitable[None]] | None = None
) -> int:
    """Start the component, run until SIGINT/SIGTERM or a fatal task failure, stop it.

    Returns the process exit code: 0 after a requested stop, 1 after a failure.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        component = make()
    except TlsError as exc:  # missing or mismatched certificates: one clear line, no traceback
        log.error("start-up failed: %s", exc)
        return 1
    start = asyncio.ensure_future(component.start())
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if start not in done:
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
        await component.stop()
        return 0
    stopper.cancel()
    if start.exception() is not None:
        log.error("start-up failed: %s", start.exception())
        await component.stop()
        return 1
    if on_started is not None:
        await on_started(component)
    failed = asyncio.ensure_future(component.tasks.failed.wait())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({failed, stopper}, return_when=asyncio.FIRST_COMPLETED)
    code = 1 if failed.done() else 0
    failed.cancel()
    stopper.cancel()
    if code:
        log.error("stopping after a fatal error: %r", component.tasks.failure)
    # A second signal while stopping ends the process at once.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, os._exit, 130)
    await component.stop()
    return code
