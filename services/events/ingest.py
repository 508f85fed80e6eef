"""Raw events from JetStream → normalized, published, stored.

A durable pull consumer on ``VIGIL_INGEST`` means events produced while this
service is down wait in the stream. Each batch is handled as:

1. normalize every raw event; an invalid one is rejected (counted, logged,
   announced on ``vigil.rejected.<source>``) and terminated, never retried;
2. drop events whose id is already in the history: a redelivery of something
   fully processed before;
3. publish the rest on their subject with ``Nats-Msg-Id`` = event id. The
   sequence JetStream assigns is the event's ``sequence``; a repeat within the
   stream's duplicate window gets the original's sequence back, and a raw
   event redelivered later than that is first looked up as the last message
   of its subject, so a crash between publish and store does not publish twice;
4. store the batch with those sequences (and apply it to the service states),
   and only then acknowledge the raw messages.

A crash at any point leads to a redelivery that changes nothing for the
outside world.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from services.core.backoff import Backoff
from services.core.events import (
    EVENTS_STREAM,
    INGEST_STREAM,
    INGEST_SUBJECT_PREFIX,
    REJECTED_SUBJECT_PREFIX,
    Event,
    subject_token,
)
from services.core.tasks import finish_writing
from services.events import metrics
from services.events.normalize import ID_RE, MAX_PARSE_BYTES, InvalidEvent, normalize
from services.events.projection import ServiceState
from services.events.store.history import HistoryStore, StoredEvent

log = logging.getLogger(__name__)

DURABLE = "vigil-event-service"
FETCH_BATCH = 256
#: Raw events without an id get one derived from their place in the ingest stream.
_ID_NAMESPACE = uuid.UUID("5d1c7a52-8f5e-4b8e-9a43-6f0f3b1f9a10")

StatesCallback = Callable[[Sequence[ServiceState | str]], None]


def _default_id(msg: Msg) -> str:
    """A stable id for a raw event that has none: the same on every redelivery."""
    header = (msg.headers or {}).get("Nats-Msg-Id")
    if header and len(header) <= 64 and ID_RE.fullmatch(header):
        return header
    meta = msg.metadata
    return str(uuid.uuid5(_ID_NAMESPACE, f"{meta.sequence.stream}@{meta.timestamp.isoformat()}"))


#: Fields of a rejected raw event repeated in its notice and log line.
_IDENTITY = ("id", "type", "action", "typeId", "nodeId", "location")


def _identity(raw: bytes) -> dict[str, str]:
    """The identifying fields of a rejected raw event, those that are plain strings.

    Best effort (the event was rejected, possibly for not being JSON): at most
    the parse ceiling is read, and each value is cut at 256 characters.
    """
    if len(raw) > MAX_PARSE_BYTES:
        return {}
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {k: v[:256] for k in _IDENTITY if isinstance(v := doc.get(k), str) and v}


class Ingestor:
    """Consumes raw events and publishes normalized ones (see the module docstring)."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        store: HistoryStore,
        on_states: StatesCallback | None = None,
    ) -> None:
        self.nc = nc
        self.js = js
        self.store = store
        self.on_states = on_states
        self.processed = 0
        self.duplicates = 0
        #: Called when fetching fails (a stream may be gone): the stream keeper checks now.
        self.on_stream_trouble: Callable[[], None] | None = None
        self.rejected = 0

    async def run(self) -> None:
        """Consume for ever; back off while NATS or the store is unavailable.

        When fetching fails (the stream and its consumer gone with a fresh NATS)
        the consumer is bound again, which creates it anew once the stream is back.
        """
        while True:
            await self._bind_and_consume()

    async def _bind_and_consume(self) -> None:
        backoff = Backoff()
        while True:
            try:
                sub = await self.js.pull_subscribe(
                    f"{INGEST_SUBJECT_PREFIX}.>",
                    durable=DURABLE,
                    stream=INGEST_STREAM,
                    config=ConsumerConfig(
                        ack_policy=AckPolicy.EXPLICIT,
                        deliver_policy=DeliverPolicy.ALL,
                        ack_wait=30,
                        max_ack_pending=4 * FETCH_BATCH,
                    ),
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next()
                log.warning("cannot bind the ingest consumer (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
        try:
            await self._consume(sub)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _consume(self, sub: Any) -> None:
        backoff = Backoff()
        while True:
            try:
                msgs = await sub.fetch(FETCH_BATCH, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fetching raw events failed: %s; binding the consumer again", exc)
                if self.on_stream_trouble is not None:
                    self.on_stream_trouble()
                # Back to binding: a consumer that no longer exists would fail for ever.
                await backoff.sleep()
                return
            try:
                await self.process(msgs)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Unacked messages come back (nak now, or after ack_wait); nothing is lost.
                log.error("processing %d raw event(s) failed: %s; retrying", len(msgs), exc)
                delay = backoff.next()
                for m in msgs:
                    with contextlib.suppress(Exception):
                        await m.nak(delay=delay)
                await asyncio.sleep(delay)

    async def process(self, msgs: Sequence[Msg]) -> None:
        """Handle one batch of raw messages (normalize, publish, store, ack)."""
        good: list[tuple[Msg, Event]] = []
        for m in msgs:
            source = m.subject[len(INGEST_SUBJECT_PREFIX) + 1 :][:64]
            try:
                good.append(
                    (
                        m,
                        normalize(
                            m.data,
                            default_source=source,
                            default_id=functools.partial(_default_id, m),
                            # oversized data is cut with a marker: published, not lost
                            truncate=True,
                        ),
                    )
                )
            except InvalidEvent as exc:
                await self._reject(m, source, exc)
        if not good:
            return
        known = await self.store.known_ids(e.id for _, e in good)
        fresh: list[tuple[Msg, Event]] = []
        seen: set[str] = set(known)
        for m, e in good:
            if e.id in seen:
                self.duplicates += 1
                metrics.DUPLICATES.inc()
                continue
            seen.add(e.id)
            fresh.append((m, e))
        if fresh:
            seqs = await asyncio.gather(
                *(self._publish(e, m.metadata.num_delivered > 1) for m, e in fresh)
            )
            stored = [StoredEvent(seq, e) for seq, (_, e) in zip(seqs, fresh, strict=True)]
            changes = await finish_writing(self.store.add(stored), "storing events")
            if changes and self.on_states is not None:
                self.on_states(changes)
            for e in (e for _, e in fresh):
                metrics.INGESTED.labels(e.type, e.action).inc()
            self.processed += len(fresh)
        for m, _ in good:
            await m.ack()

    async def _publish(self, event: Event, redelivered: bool) -> int:
        if redelivered:
            # Possibly published before a crash, longer ago than the duplicate window.
            try:
                last = await self.js.get_last_msg(EVENTS_STREAM, event.subject)
            except NotFoundError:
                last = None
            if (
                last is not None
                and (last.headers or {}).get("Nats-Msg-Id") == event.id
                and last.seq
            ):
                return int(last.seq)
        ack = await self.js.publish(
            event.subject, event.to_json(), timeout=5.0, headers={"Nats-Msg-Id": event.id}
        )
        if ack.duplicate:
            self.duplicates += 1
            metrics.DUPLICATES.inc()
        return int(ack.seq)

    async def _reject(self, m: Msg, source: str, exc: InvalidEvent) -> None:
        self.rejected += 1
        metrics.REJECTED.labels(exc.field[:32]).inc()
        about = _identity(m.data)
        log.warning(
            "rejected raw event from %s (%d bytes%s): %s",
            source,
            len(m.data),
            "".join(f", {k} {v!r}" for k, v in about.items()),
            exc,
        )
        notice = {
            "source": source,
            "field": exc.field,
            "reason": str(exc),
            "size": len(m.data),
            "sample": m.data[:256].decode("utf-8", "replace"),
            # What the event was about, so a rejection can be tied to its outage/node.
            **about,
        }
        try:
            await self.nc.publish(
                f"{REJECTED_SUBJECT_PREFIX}.{subject_token(source)}", json.dumps(notice).encode()
            )
        except Exception as err:  # the notice is a courtesy; the rejection stands
            log.debug("cannot announce a rejection: %s", err)
        await m.term()
