"""``Subscribe``: one resumable, filtered, live stream of events per call.

Each call reads ``VIGIL_EVENTS`` through an ephemeral pull consumer starting
right after its position (the ``after_sequence`` asked for, or the newest
event for a live start). Sequences of that stream are contiguous (it holds
only events, and de-duplicated publishes take no sequence), so a jump between
two delivered sequences means retention removed events the subscriber still
needs: they are read from the history store instead, in order, before the
message that revealed the gap. The result has no gap and no duplicate, from
any resume point the history still covers.

Memory is bounded per subscriber: at most one fetched batch is held, and the
gRPC stream's own flow control pushes back. A subscriber whose stream accepts
nothing for ``subscribe_stall_timeout`` is cut off with ``RESOURCE_EXHAUSTED``
rather than holding a consumer for ever; it can resume after the last
sequence it received.

A scoped caller (docs/security.md, "Scopes") is sent only the events its
:class:`~services.core.access.visibility.EventScope` admits, summaries
sanitized; the others advance the position like events its filters skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError
from vigil.v1 import events_pb2

from services.core.access.visibility import EVERYTHING, EventScope
from services.core.backoff import Backoff
from services.core.events import EVENTS_STREAM, EVENTS_SUBJECT_PREFIX, Event
from services.core.timeutil import now, set_timestamp
from services.events import metrics
from services.events.convert import event_pb
from services.events.filters import Interest, matches_any
from services.events.store.history import HistoryStore

log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[Any, Any]

FETCH_BATCH = 128
STORE_PAGE = 500
#: An abandoned consumer (process killed mid-stream) is removed by the server after this.
INACTIVE_THRESHOLD = 60.0


class TooSlow(Exception):
    """The subscriber did not accept a message within the stall timeout."""


class Subscription:
    """Streams events after ``position`` matching ``interests`` to one gRPC call."""

    def __init__(
        self,
        js: JetStreamContext,
        store: HistoryStore,
        context: Ctx,
        interests: Sequence[Interest],
        position: int,
        *,
        keepalive: float,
        stall_timeout: float,
        scope: EventScope = EVERYTHING,
    ) -> None:
        self.js = js
        self.store = store
        self.context = context
        self.interests = interests
        self.position = position
        self.keepalive = keepalive
        self.stall_timeout = stall_timeout
        #: What the caller may see (fixed when the stream starts).
        self.scope = scope
        self.sent = 0
        self._last_write = 0.0
        self._consumer: str | None = None

    async def _write(self, msg: events_pb2.SubscribeResponse) -> None:
        try:
            async with asyncio.timeout(self.stall_timeout):
                await self.context.write(msg)
        except TimeoutError:
            raise TooSlow from None
        self._last_write = asyncio.get_running_loop().time()

    async def _keepalive(self) -> None:
        ka = events_pb2.KeepAlive(sequence=self.position)
        set_timestamp(ka.time, now())
        await self._write(events_pb2.SubscribeResponse(keep_alive=ka))

    async def _send(self, seq: int, event: Event) -> None:
        if self.scope.admits(event) and matches_any(self.interests, event):
            shown = self.scope.shown(event)
            await self._write(events_pb2.SubscribeResponse(event=event_pb(shown, seq)))
            self.sent += 1
        self.position = seq
        if asyncio.get_running_loop().time() - self._last_write >= self.keepalive:
            # A long run of events that do not match: tell the client how far we got.
            await self._keepalive()

    async def _bind(self) -> Any:
        """A fresh ephemeral consumer starting right after the position."""
        await self._unbind()
        name = f"vigil-sub-{uuid.uuid4().hex}"
        config = ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.position + 1,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=INACTIVE_THRESHOLD,
            mem_storage=True,
            num_replicas=1,
            filter_subject=f"{EVENTS_SUBJECT_PREFIX}.>",
        )
        await self.js.add_consumer(EVENTS_STREAM, config=config)
        self._consumer = name
        return await self.js.pull_subscribe_bind(consumer=name, stream=EVENTS_STREAM)

    async def _unbind(self, sub: Any = None) -> None:
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._consumer is not None:
            name, self._consumer = self._consumer, None
            try:
                async with asyncio.timeout(2.0):
                    await self.js.delete_consumer(EVENTS_STREAM, name)
            except Exception as exc:  # it expires on its own (inactive_threshold)
                log.debug("cannot delete consumer %s: %s", name, exc)

    async def _fill_from_store(self, before: int) -> None:
        """Send what retention removed from the stream: history with position < seq < before."""
        while self.position + 1 < before:
            rows = await self.store.range(self.position, before, STORE_PAGE)
            if not rows:
                log.warning(
                    "events %d..%d are neither in the stream nor in the history",
                    self.position + 1,
                    before - 1,
                )
                return
            for row in rows:
                await self._send(row.seq, row.event)
            if len(rows) < STORE_PAGE:
                return

    async def _catch_up_expired(self) -> None:
        """Before reading the stream: what retention already removed comes from the history.

        (Without this, a resume point older than the stream's first event would
        only be noticed when the next event arrives.)
        """
        info = await self.js.stream_info(EVENTS_STREAM)
        first = int(info.state.first_seq or 0)
        if self.position + 1 < first:
            await self._fill_from_store(first)

    async def _handle(self, m: Msg) -> None:
        seq = m.metadata.sequence.stream
        if seq <= self.position:
            return  # a redelivery after a re-bind
        if seq > self.position + 1:
            await self._fill_from_store(seq)
        try:
            event = Event.model_validate_json(m.data)
        except ValidationError:
            log.warning(
                "%s seq %d is not an event in the common format; skipped", EVENTS_STREAM, seq
            )
            self.position = seq
            return
        await self._send(seq, event)

    async def run(self) -> None:
        """Stream until the client goes away; raises :class:`TooSlow` for a stalled client."""
        loop = asyncio.get_running_loop()
        await self._keepalive()
        sub = None
        backoff = Backoff(initial=0.2, cap=5.0)
        try:
            while True:
                if sub is None:
                    try:
                        await self._catch_up_expired()
                        sub = await self._bind()
                        backoff.reset()
                    except (asyncio.CancelledError, TooSlow):
                        raise
                    except Exception as exc:
                        log.warning("subscriber cannot read %s (%s); retrying", EVENTS_STREAM, exc)
                        await backoff.sleep()
                        if loop.time() - self._last_write >= self.keepalive:
                            await self._keepalive()  # still here, position unchanged
                        continue
                idle = self.keepalive - (loop.time() - self._last_write)
                msgs: list[Msg] = []
                if idle > 0.01:
                    try:
                        msgs = await sub.fetch(FETCH_BATCH, timeout=min(idle, 5.0))
                    except (TimeoutError, NatsTimeoutError):
                        pass
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        # The consumer may be gone (NATS restarted): bind again at the position.
                        log.info(
                            "subscriber fetch failed (%s); re-binding after %d", exc, self.position
                        )
                        await self._unbind(sub)
                        sub = None
                        continue
                for m in msgs:
                    await self._handle(m)
                if loop.time() - self._last_write >= self.keepalive:
                    await self._keepalive()
        finally:
            await self._unbind(sub)


async def start_position(js: JetStreamContext, after: int | None) -> tuple[int, int]:
    """``(position, last)``: where a subscription starts and the stream's newest sequence."""
    info = await js.stream_info(EVENTS_STREAM)
    last = int(info.state.last_seq)
    return (last if after is None else after), last


def cut_off(sub: Subscription) -> str:
    """The status message for a stalled subscriber."""
    metrics.SUBSCRIBERS_CUT.inc()
    return (
        f"subscriber too slow: nothing accepted for {sub.stall_timeout:g}s; "
        "subscribe again with after_sequence = the last sequence received"
    )
