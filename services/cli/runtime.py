"""Running one long-lived component under asyncio with clean signal handling."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from services.core.tasks import Supervisor
from services.core.tls import TlsError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a command's work may take to wind down after the first signal.
WIND_DOWN = 1.5


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


async def until_signal(work: Coroutine[Any, Any, T], *, wind_down: float = WIND_DOWN) -> T | None:
    """Run ``work`` until it returns or the first SIGINT/SIGTERM; ``None`` after a signal.

    For a command (``vigil sniff``) rather than a component: whatever ``work``
    awaits (a connection attempt, a subscription), the first signal cancels it,
    and its clean-up gets ``wind_down`` seconds before it is abandoned, so the
    command ends within that bound. A second signal ends the process at once.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    signalled = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, signalled.set)
    waiter = asyncio.ensure_future(signalled.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        for sig in signals:
            loop.add_signal_handler(sig, os._exit, 130)
        task.cancel()
        # The work's finally blocks (closing a connection) run now, bounded.
        await asyncio.wait({task}, timeout=wind_down)
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.debug("interrupted work failed while stopping: %r", task.exception())
        return None
    finally:
        waiter.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
