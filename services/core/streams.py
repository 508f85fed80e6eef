"""The JetStream streams Vigil relies on, declared in one place.

``VIGIL_INGEST`` holds raw events from producers until the event service has
processed them (so none are lost while it is down); ``VIGIL_EVENTS`` holds the
normalized events for live consumers, resumable subscriptions and webhooks.
Both de-duplicate on the event id (``Nats-Msg-Id``) within the window.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from services.core.events import (
    EVENTS_STREAM,
    EVENTS_SUBJECT_PREFIX,
    INGEST_STREAM,
    INGEST_SUBJECT_PREFIX,
)

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
