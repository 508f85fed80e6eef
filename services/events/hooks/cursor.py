"""A hook's cursor: its durable consumer on ``VIGIL_EVENTS``, kept by NATS across restarts."""

from __future__ import annotations

import logging
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from services.core.config import EventsSettings
from services.core.events import EVENTS_STREAM, EVENTS_SUBJECT_PREFIX
from services.events.store.hooks import HookRow

log = logging.getLogger(__name__)

CONSUMER_PREFIX = "vigil-hook-"


def consumer_name(hook_id: str) -> str:
    """The durable consumer that is the hook's cursor."""
    return f"{CONSUMER_PREFIX}{hook_id}"


async def ensure_consumer(
    js: JetStreamContext, row: HookRow, settings: EventsSettings, *, new: bool
) -> None:
    """Create the hook's durable consumer if missing.

    A new hook starts with the events published from now on. A missing
    consumer of an existing hook (NATS lost its data) restarts after the
    last acknowledged sequence the store remembers.
    """
    name = consumer_name(row.id)
    try:
        await js.consumer_info(EVENTS_STREAM, name)
        return
    except NotFoundError:
        pass
    if new or row.ack_floor <= 0:
        if not new:
            log.warning("hook %s: cursor lost; delivering events published from now on", row.name)
        policy: dict[str, Any] = {"deliver_policy": DeliverPolicy.NEW}
    else:
        log.warning("hook %s: cursor lost; resuming after sequence %d", row.name, row.ack_floor)
        policy = {
            "deliver_policy": DeliverPolicy.BY_START_SEQUENCE,
            "opt_start_seq": row.ack_floor + 1,
        }
    config = ConsumerConfig(
        name=name,
        durable_name=name,
        description=f"Vigil webhook {row.name}",
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.hook_ack_wait,
        max_ack_pending=max(64, 4 * settings.hook_max_in_flight),
        max_deliver=-1,
        filter_subject=f"{EVENTS_SUBJECT_PREFIX}.>",
        **policy,
    )
    await js.add_consumer(EVENTS_STREAM, config=config)


async def position(js: JetStreamContext, hook_id: str) -> tuple[int, int]:
    """``(backlog, ack floor)`` of the hook's cursor: events still to deliver, last one done."""
    info = await js.consumer_info(EVENTS_STREAM, consumer_name(hook_id), timeout=2.0)
    backlog = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    floor = int(info.ack_floor.stream_seq) if info.ack_floor is not None else 0
    return backlog, floor
