"""The minion's session with the scheduler's ResultSink.

Results are queued (bounded: the oldest are dropped, and counted, when the
scheduler stays unreachable for long), sent in batches, and kept until the
scheduler acknowledges them; a batch unacknowledged when the session breaks
is sent again on the next one. A result whose request has expired by the
time it could be sent is dropped and counted (``late_dropped``): the
scheduler has already recorded that poll as UNKNOWN.

The session also carries heartbeats, which is how the scheduler knows this
minion's location can be polled, and, for a store-and-forward location, the
location's schedule (scheduler → minion) and the replay of results spooled
on disk while the central site was unreachable (minion → scheduler, one
batch at a time, committed on acknowledgement, and before any live result so
that the scheduler sees each service's results in time order).

Sessions are re-established for ever with jittered exponential back-off. A
minion that stops says goodbye (:meth:`SinkClient.goodbye`) so that the
scheduler marks it down at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import grpc
from vigil.v1 import poll_pb2, sink_pb2

from minion.spool import DiskSpool, Position
from services.core.backoff import Backoff
from services.core.tasks import wait_set
from services.core.timeutil import from_duration, set_timestamp

log = logging.getLogger(__name__)

BATCH_MAX = 500
LINGER = 0.02
#: A replayed batch not acknowledged within this long ends the session (it is sent again).
REPLAY_ACK_TIMEOUT = 30.0
#: The shortest silence that ends a session (see :func:`silence_limit`).
MIN_SILENCE = 3.0
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 10_000),
]

#: The session's stream (grpc.aio.StreamStreamCall[MinionMessage | bytes, SinkMessage]).
Call = Any
#: A result: a message, or one already serialized (a worker's, see :mod:`minion.workers`).
Result = poll_pb2.PollResult | bytes
#: A queued result and its request's ``expires_at`` (wall clock; ``None``: never).
Entry = tuple[Result, float | None]
#: The ResultSink's one method (the generated stub, but writing pre-encoded messages too).
CONNECT = "/vigil.v1.ResultSink/Connect"


def _serialize(message: sink_pb2.MinionMessage | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


#: Wire tags (field number << 3 | length-delimited) of ``MinionMessage.results`` and
#: ``ResultBatch.results``, and of the varint ``ResultBatch.seq``.
_TAG_MESSAGE_RESULTS = b"\x1a"
_TAG_BATCH_RESULTS = b"\x12"
_TAG_BATCH_SEQ = b"\x08"


def encode_results(seq: int, results: list[Result]) -> bytes:
    """``MinionMessage(results=ResultBatch(seq=seq, results=results))``, serialized.

    Built from each result's own bytes: results that arrive serialized (from a
    worker) are never parsed and built again, and none is copied into a
    batch message first.
    """
    parts = [_TAG_BATCH_SEQ, _varint(seq)]
    for r in results:
        data = r if isinstance(r, bytes) else r.SerializeToString()
        parts += (_TAG_BATCH_RESULTS, _varint(len(data)), data)
    body = b"".join(parts)
    return _TAG_MESSAGE_RESULTS + _varint(len(body)) + body


class SinkClient:
    """Keeps a session open and delivers results through it."""

    def __init__(
        self,
        address: str,
        hello: sink_pb2.MinionHello,
        heartbeat: Callable[[], sink_pb2.Heartbeat],
        *,
        buffer_size: int = 100_000,
        spool: DiskSpool | None = None,
        on_welcome: Callable[[sink_pb2.Welcome], None] | None = None,
        on_schedule: Callable[[sink_pb2.LocationSchedule], None] | None = None,
        schedule_digest: Callable[[], str] | None = None,
        credentials: Callable[[], grpc.ChannelCredentials] | None = None,
    ) -> None:
        self.address = address
        #: Builds the channel's mutual-TLS credentials, once per session, so a certificate
        #: renewed on disk is used from the next session on; ``None``: plaintext (dev mode).
        self._credentials = credentials
        self.hello = hello
        self._heartbeat = heartbeat
        self.buffer_size = buffer_size
        self.spool = spool
        self._on_welcome = on_welcome
        self._on_schedule = on_schedule
        self._schedule_digest = schedule_digest
        self._queue: deque[Entry] = deque()
        self._have = asyncio.Event()
        self._beat_due = False
        self._unacked: OrderedDict[int, list[Entry]] = OrderedDict()
        self._replay: tuple[int, Position, int] | None = None
        self._seq = 0
        self._goodbye: str | None = None
        self._silence_limit = 15.0
        self._heard_heartbeat_ack = False
        self._last_read = 0.0
        #: Loop-clock time of the last message from the scheduler (``None``: never heard):
        #: a cut began no later than this, whenever the session's end is noticed.
        self.last_heard: float | None = None
        self.connected = asyncio.Event()
        #: Set when a session ends (cleared when one starts).
        self._ended = asyncio.Event()
        #: Set on every acknowledgement (for :meth:`flush`).
        self._progress = asyncio.Event()
        #: Loop-clock time since when there has been no session (``None`` while connected).
        self.disconnected_since: float | None = _loop_time()
        #: Wall-clock time of the last sign that a session worked (0: never).
        self.last_contact = 0.0
        self.sessions = 0
        self.heartbeats_sent = 0
        self.dropped = 0
        self.sent = 0
        self.acked = 0
        self.late = 0
        #: Results not sent because their request expired while they waited.
        self.late_dropped = 0
        self.replayed = 0

    # -- intake ----------------------------------------------------------------------

    def submit(self, result: Result, expires_at: float | None = None) -> None:
        """Queue a result (never blocks; the oldest goes when the buffer is full)."""
        self._queue.append((result, expires_at))
        if len(self._queue) + self._unacked_count() > self.buffer_size:
            self._queue.popleft()
            self.dropped += 1
        self._have.set()

    def wake(self) -> None:
        """Something was spooled: have the session look at it."""
        self._have.set()

    def beat_now(self) -> None:
        """Send a heartbeat at once (the minion's NATS intake changed)."""
        self._beat_due = True
        self._have.set()

    def _unacked_count(self) -> int:
        return sum(len(b) for b in self._unacked.values())

    @property
    def backlog(self) -> int:
        """Results not yet acknowledged by the scheduler (spooled ones included)."""
        spooled = self.spool.pending if self.spool is not None else 0
        return len(self._queue) + self._unacked_count() + spooled

    # -- sessions --------------------------------------------------------------------

    async def run(self) -> None:
        """Hold a session for ever (until :meth:`goodbye`), reconnecting with jittered back-off."""
        backoff = Backoff()
        while True:
            try:
                await self._session()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "scheduler session at %s: %s %s", self.address, exc.code().name, exc.details()
                )
            except Exception as exc:
                log.warning("scheduler session at %s failed: %r", self.address, exc)
            finally:
                if self.connected.is_set():
                    self.disconnected_since = _loop_time()
                self.connected.clear()
                self._ended.set()
                self._replay = None  # not committed: read again from the spool next time
                self._requeue_unacked()
            if self._goodbye is not None:
                return
            await backoff.sleep()

    def _requeue_unacked(self) -> None:
        if self._unacked:
            pending = [r for batch in self._unacked.values() for r in batch]
            self._unacked.clear()
            self._queue.extendleft(reversed(pending))
            self._have.set()

    def _hello(self) -> sink_pb2.MinionHello:
        hello = sink_pb2.MinionHello()
        hello.CopyFrom(self.hello)
        if self.last_contact:
            set_timestamp(hello.last_connected_at, self.last_contact)
        if self._schedule_digest is not None:
            hello.schedule_digest = self._schedule_digest()
        return hello

    def _channel(self) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        return grpc.aio.secure_channel(self.address, self._credentials(), options=CHANNEL_OPTIONS)

    async def _session(self) -> None:
        async with self._channel() as channel:
            connect = channel.stream_stream(
                CONNECT,
                request_serializer=_serialize,
                response_deserializer=sink_pb2.SinkMessage.FromString,
            )
            call = connect()
            await call.write(sink_pb2.MinionMessage(hello=self._hello()))
            async with asyncio.timeout(15.0):
                first = await call.read()
            if not isinstance(first, sink_pb2.SinkMessage) or first.WhichOneof("kind") != "welcome":
                raise ConnectionError("scheduler did not welcome this minion")
            interval = from_duration(first.welcome.heartbeat_interval) or 5.0
            self._silence_limit = silence_limit(interval)
            self._heard_heartbeat_ack = False
            self._last_read = asyncio.get_running_loop().time()
            self.last_heard = self._last_read
            log.info("connected to scheduler %s at %s", first.welcome.scheduler_id, self.address)
            if self._on_welcome is not None:
                self._on_welcome(first.welcome)
            self.last_contact = time.time()
            self.sessions += 1
            self._ended.clear()
            self.connected.set()
            self.disconnected_since = None
            reader = asyncio.create_task(self._read(call))
            try:
                await self._write_loop(call, interval, reader)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                call.cancel()

    async def _read(self, call: Call) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            self.last_contact = time.time()
            self._last_read = self.last_heard = asyncio.get_running_loop().time()
            kind = msg.WhichOneof("kind")
            if kind == "ack":
                await self._on_ack(msg.ack)
            elif kind == "heartbeat_ack":
                self._heard_heartbeat_ack = True
            elif kind == "schedule" and self._on_schedule is not None:
                self._on_schedule(msg.schedule)

    async def _on_ack(self, ack: sink_pb2.BatchAck) -> None:
        self._progress.set()
        if self._replay is not None and self._replay[0] == ack.seq:
            _, pos, count = self._replay
            if self.spool is not None:
                # Committed before the next replay read is allowed (``_replay`` still set).
                await self.spool.commit_async(pos)
            self._replay = None
            self.replayed += count
            self.acked += ack.accepted
            self.late += ack.late
            self._have.set()
            return
        batch = self._unacked.pop(ack.seq, None)
        if batch is not None:
            self.acked += len(batch)
        self.late += ack.late
        if self._goodbye is not None:
            self._have.set()  # the goodbye waits for this

    def _replay_pending(self) -> bool:
        return self._replay is not None or (self.spool is not None and self.spool.pending > 0)

    async def _write_loop(
        self, call: Call, heartbeat_interval: float, reader: asyncio.Task[None]
    ) -> None:
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time()
        replay_sent = 0.0
        while not reader.done():
            now = loop.time()
            if now >= next_heartbeat or self._beat_due:
                self._beat_due = False
                await self._send(call, sink_pb2.MinionMessage(heartbeat=self._heartbeat()))
                self.heartbeats_sent += 1
                self.last_contact = time.time()
                next_heartbeat = now + heartbeat_interval
            if self._replay is not None and now - replay_sent > REPLAY_ACK_TIMEOUT:
                raise ConnectionError("the scheduler did not acknowledge a replayed batch")
            if self._heard_heartbeat_ack and now - self._last_read > self._silence_limit:
                # A silent partition: TCP (and gRPC keepalive) would take far longer to
                # notice, and store-and-forward waits for this session to end.
                raise ConnectionError(
                    f"no word from the scheduler for {now - self._last_read:.1f}s: the link is down"
                )
            if self._replay is None and self.spool is not None and self.spool.pending:
                # Spooled results first, one batch at a time: the scheduler must see
                # each service's results in time order.
                results, pos = await self.spool.read_async(BATCH_MAX)
                if results:
                    self._seq += 1
                    self._replay = (self._seq, pos, len(results))
                    replay_sent = now
                    await self._send(
                        call,
                        sink_pb2.MinionMessage(
                            results=sink_pb2.ResultBatch(
                                seq=self._seq, results=results, replayed=True
                            )
                        ),
                    )
                    continue
                await self.spool.commit_expired_async(pos)
            if (
                self._goodbye is not None
                and not self._queue
                and not self._unacked
                and not self._replay_pending()
            ):
                await self._send(
                    call, sink_pb2.MinionMessage(goodbye=sink_pb2.Goodbye(reason=self._goodbye))
                )
                await call.done_writing()
                # Cancelling the call now could overtake the goodbye: wait for the
                # scheduler to end the stream, which it does once it has read it.
                await asyncio.wait({reader}, timeout=5.0)
                log.info("said goodbye to the scheduler (%s)", self._goodbye)
                return
            if not self._queue or self._replay_pending():
                self._have.clear()
                if not await wait_set(self._have, max(0.0, min(1.0, next_heartbeat - loop.time()))):
                    continue
                await asyncio.sleep(LINGER)  # let a batch fill up
                continue
            batch = self._take_live()
            if not batch:
                continue
            self._seq += 1
            self._unacked[self._seq] = batch
            await self._send(call, encode_results(self._seq, [r for r, _ in batch]))
            self.sent += len(batch)
        # The scheduler ended the session.
        exc = reader.exception()
        if exc is not None:
            raise exc

    async def _send(self, call: Call, msg: sink_pb2.MinionMessage | bytes) -> None:
        """Write one message; a write stuck that long means the link is gone (the session ends)."""
        try:
            async with asyncio.timeout(self._silence_limit):
                await call.write(msg)
        except TimeoutError:
            raise ConnectionError(
                f"a write to the scheduler did not complete in {self._silence_limit:.1f}s"
            ) from None

    def _take_live(self) -> list[Entry]:
        """Up to a batch of queued results, without those whose request has expired."""
        wall = time.time()
        batch: list[Entry] = []
        while self._queue and len(batch) < BATCH_MAX:
            entry = self._queue.popleft()
            if entry[1] is not None and entry[1] <= wall:
                self.late_dropped += 1
                continue
            batch.append(entry)
        return batch

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued result is acknowledged (``False`` on timeout)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.backlog:
            remaining = end - loop.time()
            if remaining <= 0:
                return False
            self._progress.clear()
            # Woken by each acknowledgement; the bound re-checks now and then anyway.
            await wait_set(self._progress, min(remaining, 0.5))
        return True

    async def goodbye(self, reason: str, timeout: float) -> bool:
        """Tell the scheduler this minion is stopping (after what is queued), then end the session.

        Returns ``False`` when that could not be done within ``timeout`` (no
        session): the scheduler then notices from the missing heartbeats.
        """
        self._goodbye = reason
        self._have.set()
        if not self.connected.is_set():
            return False
        await wait_set(self._ended, timeout)
        return not self.connected.is_set()


def silence_limit(heartbeat_interval: float) -> float:
    """How long a session may go without a word from the scheduler before it is ended.

    The scheduler answers every heartbeat: two in a row unanswered (plus a
    second for the round trip) mean a dead link, not a busy scheduler. This
    bounds how late a cut is noticed (11 s at the default 5 s interval),
    well within the default ``autonomous_after`` of 15 s.
    """
    return max(MIN_SILENCE, 2 * heartbeat_interval + 1.0)


def _loop_time() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()
