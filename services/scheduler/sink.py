"""``vigil.v1.ResultSink``: minions' sessions with the scheduler.

A session opens with a hello (identity, location, monitors), then carries
result batches and heartbeats; the scheduler answers each batch with an ack.
Results are matched to their pending request: a result whose request already
expired is counted as late and ignored (its UNKNOWN has been recorded).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from vigil.v1 import common_pb2, poll_pb2, sink_pb2, sink_pb2_grpc

from minion.monitors.base import Status
from services.common.config import LOCATION_RE, NODE_ID_RE
from services.common.timeutil import from_timestamp, now, to_duration
from services.scheduler.dispatcher import Dispatcher
from services.scheduler.minions import MinionRegistry, MinionSession
from services.scheduler.model import Observation, ServiceKey
from services.scheduler.state import StateKeeper

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
MAX_RESULTS_PER_BATCH = 10_000

_STATUS = {
    common_pb2.POLL_STATUS_UP: Status.UP,
    common_pb2.POLL_STATUS_DOWN: Status.DOWN,
    common_pb2.POLL_STATUS_UNKNOWN: Status.UNKNOWN,
}


def to_observation(result: poll_pb2.PollResult, key: ServiceKey) -> Observation:
    """A minion's result as an observation of ``key`` (a result without status is UNKNOWN)."""
    status = _STATUS.get(result.status)
    if status is None:
        return Observation(key, Status.UNKNOWN, "minion sent a result without a status", now())
    # Never trust a minion clock that runs ahead of ours.
    at = min(from_timestamp(result.finished_at), now()) if result.HasField("finished_at") else now()
    return Observation(
        key=key,
        status=status,
        reason=result.reason[:2000],
        at=at,
        response_time_ms=max(0.0, result.response_time_ms),
        values=dict(result.values),
        request_id=result.request_id,
        system_id=result.system_id,
    )


class ResultSinkServicer(sink_pb2_grpc.ResultSinkServicer):
    """Serves minion sessions."""

    def __init__(self, registry: MinionRegistry, dispatcher: Dispatcher, keeper: StateKeeper, scheduler_id: str) -> None:
        self.registry = registry
        self.dispatcher = dispatcher
        self.keeper = keeper
        self.scheduler_id = scheduler_id
        self.malformed = 0

    async def Connect(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[sink_pb2.MinionMessage],
        context: grpc.aio.ServicerContext[sink_pb2.MinionMessage, sink_pb2.SinkMessage],
    ) -> AsyncIterator[sink_pb2.SinkMessage]:
        messages = request_iterator.__aiter__()
        try:
            first = await asyncio.wait_for(messages.__anext__(), HELLO_TIMEOUT)
        except (TimeoutError, StopAsyncIteration):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello: the first message must be a hello, within 10s")
        session = self._session(first)
        if isinstance(session, str):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, session)
            return
        self.registry.register(session)
        try:
            yield sink_pb2.SinkMessage(
                welcome=sink_pb2.Welcome(
                    scheduler_id=self.scheduler_id,
                    heartbeat_interval=to_duration(self.registry.heartbeat_interval),
                )
            )
            replaced = asyncio.ensure_future(session.replaced.wait())
            nxt: asyncio.Future[sink_pb2.MinionMessage] | None = None
            try:
                while True:
                    nxt = asyncio.ensure_future(messages.__anext__())
                    done, _ = await asyncio.wait({nxt, replaced}, return_when=asyncio.FIRST_COMPLETED)
                    if nxt not in done:
                        return  # a newer session of this minion took over
                    try:
                        msg = nxt.result()
                    except StopAsyncIteration:
                        return
                    ack = await self._handle(session, msg)
                    if ack is not None:
                        yield sink_pb2.SinkMessage(ack=ack)
            finally:
                replaced.cancel()
                if nxt is not None:
                    if nxt.done() and not nxt.cancelled():
                        nxt.exception()  # retrieved: the stream ended while we stopped
                    else:
                        nxt.cancel()
        finally:
            self.registry.unregister(session)

    def _session(self, msg: sink_pb2.MinionMessage) -> MinionSession | str:
        if msg.WhichOneof("kind") != "hello":
            return "hello: the first message must be a hello"
        hello = msg.hello
        if not NODE_ID_RE.fullmatch(hello.system_id):
            return f"hello.system_id: {hello.system_id!r} is not a valid id (letters, digits, '-', '_')"
        if not LOCATION_RE.fullmatch(hello.location):
            return f"hello.location: {hello.location!r} is not a valid location (letters, digits, '-', '_')"
        return MinionSession(
            system_id=hello.system_id,
            location=hello.location,
            version=hello.version[:64],
            monitors=list(hello.monitors)[:256],
        )

    async def _handle(self, session: MinionSession, msg: sink_pb2.MinionMessage) -> sink_pb2.BatchAck | None:
        self.registry.touch(session)
        kind = msg.WhichOneof("kind")
        if kind == "heartbeat":
            hb = msg.heartbeat
            session.in_flight = hb.in_flight
            session.polls_done = hb.polls_done
            session.nats_connected = hb.nats_connected
            return None
        if kind != "results":
            self.malformed += 1
            return None
        batch = msg.results
        accepted = late = 0
        for result in batch.results[:MAX_RESULTS_PER_BATCH]:
            poll = self.dispatcher.claim(result.request_id)
            if poll is None:
                late += 1
                continue
            await self.keeper.submit(to_observation(result, poll.key))
            accepted += 1
        return sink_pb2.BatchAck(seq=batch.seq, accepted=accepted, late=late)
