"""Raw events from JetStream → normalized, stored, published.

A durable pull consumer on ``VIGIL_INGEST`` means events produced while this
service is down wait in the stream. Each batch is stored (ignoring ids already
stored), published on its subject with ``Nats-Msg-Id`` = event id (JetStream
drops repeats within its window), and only then acknowledged: a crash at any
point leads to a redelivery that changes nothing for the outside world.
"""

from __future__ import annotations

import asyncio
import logging
import random

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.common.events import INGEST_STREAM, INGEST_SUBJECT_PREFIX, Event
from services.events import metrics
from services.events.normalize import InvalidEvent, normalize
from services.events.store import EventStore

log = logging.getLogger(__name__)

DURABLE = "vigil-event-service"
FETCH_BATCH = 256


class Ingestor:
    """Consumes raw events and publishes normalized ones."""

    def __init__(self, js: JetStreamContext, store: EventStore) -> None:
        self.js = js
        self.store = store
        self.processed = 0
        self.rejected = 0

    async def run(self) -> None:
        """Consume for ever; back off while NATS or the store is unavailable."""
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
        delay = 0.5
        while True:
            try:
                msgs = await sub.fetch(FETCH_BATCH, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fetching raw events failed: %s", exc)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2) * random.uniform(0.8, 1.2)
                continue
            try:
                await self._process(msgs)
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Unacked messages are redelivered after ack_wait; nothing is lost.
                log.error("processing %d raw event(s) failed: %s; retrying", len(msgs), exc)
                for m in msgs:
                    try:
                        await m.nak(delay=delay)
                    except Exception:
                        pass
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2) * random.uniform(0.8, 1.2)

    async def _process(self, msgs: list[object]) -> None:
        good: list[tuple[object, Event]] = []
        for m in msgs:
            source = m.subject[len(INGEST_SUBJECT_PREFIX) + 1 :]  # type: ignore[attr-defined]
            try:
                good.append((m, normalize(m.data, default_source=source)))  # type: ignore[attr-defined]
            except InvalidEvent as exc:
                self.rejected += 1
                field = str(exc).split(":", 1)[0]
                metrics.REJECTED.labels(field[:32]).inc()
                log.warning("rejected raw event from %s: %s", source, exc)
                await m.term()  # type: ignore[attr-defined]
        if not good:
            return
        batch = [e for _, e in good]
        await self.store.add(batch)
        await asyncio.gather(
            *(self.js.publish(e.subject, e.to_json(), timeout=5.0, headers={"Nats-Msg-Id": e.id}) for e in batch)
        )
        for m, e in good:
            await m.ack()  # type: ignore[attr-defined]
            metrics.INGESTED.labels(e.type, e.action).inc()
        self.processed += len(good)
