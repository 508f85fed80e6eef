"""The minion's session with the scheduler's ResultSink.

Results are queued (bounded: the oldest are dropped, and counted, when the
scheduler stays unreachable for long), sent in batches, and kept until the
scheduler acknowledges them; a batch unacknowledged when the session breaks
is sent again on the next one. The session also carries heartbeats, which is
how the scheduler knows this minion's location can be polled.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Callable

import grpc
from vigil.v1 import poll_pb2, sink_pb2, sink_pb2_grpc

from services.common.timeutil import from_duration

log = logging.getLogger(__name__)

BATCH_MAX = 500
LINGER = 0.02
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 10_000),
]


class SinkClient:
    """Keeps a session open and delivers results through it."""

    def __init__(
        self,
        address: str,
        hello: sink_pb2.MinionHello,
        heartbeat: Callable[[], sink_pb2.Heartbeat],
        *,
        buffer_size: int = 100_000,
    ) -> None:
        self.address = address
        self.hello = hello
        self._heartbeat = heartbeat
        self.buffer_size = buffer_size
        self._queue: deque[poll_pb2.PollResult] = deque()
        self._have = asyncio.Event()
        self._unacked: OrderedDict[int, list[poll_pb2.PollResult]] = OrderedDict()
        self._seq = 0
        self.connected = asyncio.Event()
        self.dropped = 0
        self.sent = 0
        self.acked = 0
        self.late = 0

    # -- intake ----------------------------------------------------------------------

    def submit(self, result: poll_pb2.PollResult) -> None:
        """Queue a result (never blocks; the oldest goes when the buffer is full)."""
        self._queue.append(result)
        if len(self._queue) + self._unacked_count() > self.buffer_size:
            self._queue.popleft()
            self.dropped += 1
        self._have.set()

    def _unacked_count(self) -> int:
        return sum(len(b) for b in self._unacked.values())

    @property
    def backlog(self) -> int:
        """Results not yet acknowledged by the scheduler."""
        return len(self._queue) + self._unacked_count()

    # -- sessions --------------------------------------------------------------------

    async def run(self) -> None:
        """Hold a session for ever, reconnecting with jittered back-off."""
        delay = 0.5
        while True:
            try:
                await self._session()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning("scheduler session at %s: %s %s", self.address, exc.code().name, exc.details())
            except Exception as exc:
                log.warning("scheduler session at %s failed: %r", self.address, exc)
            finally:
                self.connected.clear()
                self._requeue_unacked()
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(10.0, delay * 2)

    def _requeue_unacked(self) -> None:
        if self._unacked:
            pending = [r for batch in self._unacked.values() for r in batch]
            self._unacked.clear()
            self._queue.extendleft(reversed(pending))
            self._have.set()

    async def _session(self) -> None:
        async with grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS) as channel:
            stub = sink_pb2_grpc.ResultSinkStub(channel)
            call = stub.Connect()
            await call.write(sink_pb2.MinionMessage(hello=self.hello))
            first = await asyncio.wait_for(call.read(), timeout=15.0)
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
                raise ConnectionError("scheduler did not welcome this minion")
            interval = from_duration(first.welcome.heartbeat_interval) or 5.0
            log.info("connected to scheduler %s at %s", first.welcome.scheduler_id, self.address)
            self.connected.set()
            reader = asyncio.create_task(self._read_acks(call))
            try:
                await self._write_loop(call, interval, reader)
            finally:
                reader.cancel()
                call.cancel()

    async def _read_acks(self, call: grpc.aio.StreamStreamCall[sink_pb2.MinionMessage, sink_pb2.SinkMessage]) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            if msg.WhichOneof("kind") == "ack":
                batch = self._unacked.pop(msg.ack.seq, None)
                if batch is not None:
                    self.acked += len(batch)
                self.late += msg.ack.late

    async def _write_loop(
        self,
        call: grpc.aio.StreamStreamCall[sink_pb2.MinionMessage, sink_pb2.SinkMessage],
        heartbeat_interval: float,
        reader: asyncio.Task[None],
    ) -> None:
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time()
        while not reader.done():
            now = loop.time()
            if now >= next_heartbeat:
                await call.write(sink_pb2.MinionMessage(heartbeat=self._heartbeat()))
                next_heartbeat = now + heartbeat_interval
            if not self._queue:
                self._have.clear()
                try:
                    await asyncio.wait_for(self._have.wait(), timeout=max(0.0, next_heartbeat - loop.time()))
                except TimeoutError:
                    continue
                await asyncio.sleep(LINGER)  # let a batch fill up
            results = [self._queue.popleft() for _ in range(min(BATCH_MAX, len(self._queue)))]
            if not results:
                continue
            self._seq += 1
            self._unacked[self._seq] = results
            await call.write(sink_pb2.MinionMessage(results=sink_pb2.ResultBatch(seq=self._seq, results=results)))
            self.sent += len(results)
        # The scheduler ended the session.
        if reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued result is acknowledged (``False`` on timeout)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.backlog and loop.time() < end:
            await asyncio.sleep(0.05)
        return not self.backlog
