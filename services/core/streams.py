"""The JetStream streams Vigil relies on, declared in one place.

``VIGIL_INGEST`` holds raw events from producers until the event service has
processed them (so none are lost while it is down); ``VIGIL_EVENTS`` holds the
normalized events for live consumers, resumable subscriptions and webhooks.
Both de-duplicate on the event id (``Nats-Msg-Id``) within the window.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from services.core.events import (
    EVENTS_STREAM,
    EVENTS_SUBJECT_PREFIX,
    INGEST_STREAM,
    INGEST_SUBJECT_PREFIX,
)
from services.core.httpstatus import HealthState
from services.core.tasks import wait_set

log = logging.getLogger(__name__)

DUPLICATE_WINDOW = 120.0


def ingest_stream_config() -> StreamConfig:
    """Raw events: kept until processed (limits guard the disk if nobody consumes)."""
    return StreamConfig(
        name=INGEST_STREAM,
        description="Vigil raw events awaiting normalization",
        subjects=[f"{INGEST_SUBJECT_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=7 * 86400.0,
        max_bytes=1 << 30,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW,
        max_msg_size=1 << 20,
    )


def events_stream_config(max_age: float, max_bytes: int) -> StreamConfig:
    """Normalized events with the configured retention."""
    return StreamConfig(
        name=EVENTS_STREAM,
        description="Vigil normalized events",
        subjects=[f"{EVENTS_SUBJECT_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=max_age,
        max_bytes=max_bytes,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW,
        max_msg_size=1 << 20,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one to ``config``."""
    try:
        await js.stream_info(config.name or "")
    except NotFoundError:
        try:
            await js.add_stream(config)
            log.info("created JetStream stream %s", config.name)
            return
        except BadRequestError as exc:
            # Another process created it between our two calls.
            if "already in use" not in str(exc):
                raise
    await js.update_stream(config)


#: How often a :class:`StreamKeeper` looks for its streams when nobody woke it.
STREAM_CHECK_INTERVAL = 5.0


class StreamKeeper:
    """Finds the service's streams gone (deleted, a fresh NATS) and re-creates them.

    Until every stream is back, ``health`` carries a ``stream <name>`` problem
    (so ``/healthz`` answers 503 and gRPC health NOT_SERVING). A part that sees
    a symptom (a publish without responders, a vanished consumer) calls
    :meth:`wake` for a check now instead of at the next interval.
    ``after_create`` runs after a stream was created again (the event service
    realigns ``VIGIL_EVENTS``' sequences with its history there).
    """

    def __init__(
        self,
        js: JetStreamContext,
        configs: Sequence[StreamConfig],
        health: HealthState,
        after_create: Callable[[str], Awaitable[None]] | None = None,
        interval: float = STREAM_CHECK_INTERVAL,
    ) -> None:
        self.js = js
        self.configs = list(configs)
        self.health = health
        self.after_create = after_create
        self.interval = interval
        self.recreated = 0
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Check the streams now (a caller saw one missing)."""
        self._wake.set()

    async def check(self) -> None:
        """Look for each stream once; re-create what is missing."""
        for config in self.configs:
            name = config.name or ""
            key = f"stream {name}"
            try:
                await self.js.stream_info(name)
            except NotFoundError:
                self.health.set(key, f"JetStream stream {name} is missing; re-creating it")
                try:
                    await ensure_stream(self.js, config)
                    if self.after_create is not None:
                        await self.after_create(name)
                except Exception as exc:
                    log.warning("cannot re-create JetStream stream %s: %s", name, exc)
                    continue
                self.recreated += 1
                log.warning("JetStream stream %s was missing; re-created it", name)
                self.health.clear(key)
            except Exception as exc:
                # NATS unreachable: not a missing stream (natsconn reconnects), so no
                # verdict either way; the next check decides.
                log.debug("stream check %s: %s", name, exc)
            else:
                self.health.clear(key)

    async def run(self) -> None:
        """Check at start, on :meth:`wake` and every ``interval`` seconds, for ever."""
        while True:
            self._wake.clear()
            await self.check()
            await wait_set(self._wake, self.interval)
