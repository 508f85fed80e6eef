"""Hands events from the store's outbox to the event service through JetStream.

At-least-once: an event leaves the outbox only after JetStream acknowledged
it; a publish repeated after a crash is discarded by JetStream's duplicate
window (``Nats-Msg-Id`` = event id) and by the event service's id check.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from nats.js import JetStreamContext

from services.core.backoff import Backoff
from services.core.events import (
    FIT_EVENT_BYTES,
    INGEST_SUBJECT_PREFIX,
    MAX_EVENT_BYTES,
    fit_document,
)
from services.core.tasks import finish_writing, wait_set
from services.scheduler import metrics
from services.scheduler.store import SchedulerStore

log = logging.getLogger(__name__)

BATCH = 256


def fit(payload: bytes) -> bytes:
    """``payload`` within the event service's size limit, its data cut with the marker.

    Events are cut when they are made (``make_event``); this catches rows written
    before that, so no outbox row is ever published only to be rejected.
    """
    if len(payload) <= MAX_EVENT_BYTES:
        return payload
    try:
        doc = json.loads(payload)
    except ValueError:
        return payload  # not ours to judge: the event service rejects it, announced
    if not isinstance(doc, dict):
        return payload
    log.warning("outbox event %s is %d bytes; its data is cut to fit", doc.get("id"), len(payload))
    out = fit_document(doc, FIT_EVENT_BYTES)
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()


class OutboxRelay:
    """Publishes outbox events in order of creation."""

    def __init__(
        self, store: SchedulerStore, js: JetStreamContext, source: str = "scheduler"
    ) -> None:
        self.store = store
        self.js = js
        self.subject = f"{INGEST_SUBJECT_PREFIX}.{source}"
        self._wake = asyncio.Event()
        self.published = 0
        #: Called when JetStream refused events (the ingest stream may be gone).
        self.on_stream_trouble: Callable[[], None] | None = None

    def wake(self) -> None:
        """New events are in the outbox."""
        self._wake.set()

    async def run(self) -> None:
        """Relay for ever; backs off while NATS or the store is unavailable."""
        backoff = Backoff()
        while True:
            try:
                sent = await self.relay_once()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next()
                log.warning("event relay: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            if sent < BATCH:
                self._wake.clear()
                await wait_set(self._wake, 5.0)

    async def relay_once(self) -> int:
        """Publish one batch; returns how many events left the outbox."""
        rows = await self.store.outbox_batch(BATCH)
        if not rows:
            metrics.OUTBOX.set(0)
            return 0
        acks = await asyncio.gather(
            *(
                self.js.publish(
                    self.subject, fit(payload), timeout=5.0, headers={"Nats-Msg-Id": event_id}
                )
                for _, event_id, payload in rows
            ),
            return_exceptions=True,
        )
        done = [
            seq
            for (seq, _, _), ack in zip(rows, acks, strict=True)
            if not isinstance(ack, BaseException)
        ]
        await finish_writing(self.store.outbox_done(done), "outbox")
        self.published += len(done)
        failed = [a for a in acks if isinstance(a, BaseException)]
        # The gauge before any raise: a batch JetStream refused is exactly when an
        # operator needs to see the backlog (it used to stay at its last value).
        if failed:
            if self.on_stream_trouble is not None:
                self.on_stream_trouble()
            try:
                metrics.OUTBOX.set(await self.store.outbox_size())
            except Exception:
                # The store cannot count: what we know is what is still unsent here.
                metrics.OUTBOX.set(len(rows) - len(done))
            raise ConnectionError(
                f"{len(failed)} of {len(rows)} event(s) not acknowledged: {failed[0]!r}"
            )
        metrics.OUTBOX.set(await self.store.outbox_size())
        return len(done)
