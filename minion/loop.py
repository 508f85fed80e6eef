"""The event loop a minion process runs on (``minion.event_loop``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(name: str) -> LoopFactory | None:
    """A factory for ``asyncio.Runner``: uvloop's, or ``None`` for the standard loop.

    uvloop (libuv) makes a TCP connect and close about half the CPU of the
    standard selector loop; everything the minion runs (NATS over TLS,
    grpc.aio, the monitors) runs on either. Without the package installed,
    the standard loop is used, with a warning.
    """
    if name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        log.warning("minion.event_loop is uvloop, but uvloop is not installed: using asyncio")
        return None
    factory: LoopFactory = uvloop.new_event_loop
    return factory
