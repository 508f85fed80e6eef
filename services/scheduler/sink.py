"""``vigil.v1.ResultSink``: minions' sessions with the scheduler.

A session opens with a hello (identity, location, monitors, when the minion
last had a session), then carries result batches and heartbeats; the
scheduler answers each batch with an ack and each heartbeat with a heartbeat
ack (so that the minion, too, notices a dead link within a heartbeat window).
A minion that stops on purpose says goodbye last. Liveness and the events
about it are the registry's (:mod:`services.scheduler.minions`).

Who the minion is comes from its certificate, never from its hello: on the
mutual-TLS port, the location and system id are the ones the certificate
names (:func:`services.core.tls.peer_identity`). A hello that claims another
location or system id, a certificate that is not a minion's, and a
certificate of another location naming the system id of a minion that is up are
refused with PERMISSION_DENIED and counted
(``vigil_scheduler_hellos_refused_total{reason}``). Only in the plaintext
development mode (no certificate at all) are the hello's claims taken.

Live results are matched to their pending request, and only from a session
of the location the request was sent to: a result for a request sent
elsewhere (a sniffed id) or for an id that is not pending (guessed, or whose
request expired: its UNKNOWN has been recorded) is counted
(``vigil_scheduler_results_refused_total{reason}``) and ignored, and the
request stays pending for the minion that was asked.

Replayed results (store-and-forward, ``ResultBatch.replayed``) answer no
request: they were polled by a minion on its own while the central site was
unreachable. They are taken only from a session of a location with
store-and-forward on, and only for that location's services. They are
applied by service, at their original ``finished_at``, in the order they
come, when they are newer than the last result applied to the service;
results for services that are not configured at the minion's location,
stale ones and ones from the future are counted and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, NoReturn

import grpc
from prometheus_client import Counter
from vigil.v1 import poll_pb2, sink_pb2, sink_pb2_grpc

from services.core.errors import InvalidArgumentError
from services.core.grpcerrors import handle_stream_errors
from services.core.ids import LOCATION_RE, NODE_ID_RE
from services.core.limits import SchedulerLimits, Slot
from services.core.pki import Identity
from services.core.status import Status, status_from_pb
from services.core.timeutil import from_timestamp, now, set_timestamp, to_duration
from services.core.tls import peer_identity
from services.core.wire import clip_reason
from services.scheduler.dispatcher import Dispatcher, ResultIntake
from services.scheduler.minions import MinionRegistry, MinionSession
from services.scheduler.model import Observation, ServiceKey, ServiceRuntime
from services.scheduler.site_sync import SiteSync

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
MAX_RESULTS_PER_BATCH = 10_000
#: A replayed result may claim to have finished at most this far in our future
#: (clock skew); beyond, it is rejected, within, it is taken as finished now.
MAX_CLOCK_SKEW = 5.0

REPLAYED = Counter(
    "vigil_scheduler_results_replayed_total",
    "Store-and-forward results replayed by minions, by outcome",
    ["outcome"],
)
HELLOS_REFUSED = Counter(
    "vigil_scheduler_hellos_refused_total",
    "Minion sessions refused (PERMISSION_DENIED) for what their certificate does not allow",
    ["reason"],
)
RESULTS_REFUSED = Counter(
    "vigil_scheduler_results_refused_total",
    "Results ignored because the session may not deliver them (unknown_id counts late ones too)",
    ["reason"],
)


class Refused(Exception):
    """A session the certificate does not allow; ends the call with PERMISSION_DENIED."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        #: The counter's label.
        self.reason = reason


def certified(context: Any) -> tuple[Identity, int] | None:
    """The minion identity a peer proved, or ``None`` in the plaintext development mode.

    Raises :class:`Refused` for a TLS peer without a minion identity: on a
    TLS connection only a certificate says who the peer is.
    """
    proved = peer_identity(context)
    if proved is None:
        auth = context.auth_context()
        if b"ssl" in auth.get("transport_security_type", ()):
            raise Refused("no_identity", "the client certificate names no Vigil identity")
        return None
    identity, serial = proved
    if identity.role != "minion":
        raise Refused("not_a_minion", f"{identity} is not a minion: ResultSink is for minions")
    return identity, serial


def to_observation(
    result: poll_pb2.PollResult,
    key: ServiceKey,
    at: float | None = None,
    *,
    system_id: str | None = None,
) -> Observation:
    """A minion's result as an observation of ``key`` (a result without status is UNKNOWN).

    ``at`` defaults to the result's ``finished_at``, never later than our clock.
    ``system_id`` is who delivered it (the session's certified id); the
    result's own ``system_id`` field is only a claim.
    """
    status = status_from_pb(result.status)
    if status is None:
        return Observation(key, Status.UNKNOWN, "minion sent a result without a status", now())
    if at is None:
        # Never trust a minion clock that runs ahead of ours.
        at = (
            min(from_timestamp(result.finished_at), now())
            if result.HasField("finished_at")
            else now()
        )
    return Observation(
        key=key,
        status=status,
        reason=clip_reason(result.reason),
        at=at,
        response_time_ms=max(0.0, result.response_time_ms),
        values=dict(result.values),
        request_id=result.request_id,
        system_id=result.system_id if system_id is None else system_id,
    )


class ResultSinkServicer(sink_pb2_grpc.ResultSinkServicer):
    """Serves minion sessions."""

    def __init__(
        self,
        registry: MinionRegistry,
        dispatcher: Dispatcher,
        keeper: ResultIntake,
        scheduler_id: str,
        *,
        sites: SiteSync | None = None,
        limits: SchedulerLimits | None = None,
    ) -> None:
        self.registry = registry
        self.dispatcher = dispatcher
        self.keeper = keeper
        self.scheduler_id = scheduler_id
        self.sites = sites
        #: ``sink_sessions``: streams per minion certificate (a new one beyond ends the oldest).
        self.limits = limits or SchedulerLimits.from_settings()
        self.malformed = 0
        #: Time of the last UP/DOWN result handed to the keeper, per service: replayed
        #: results not newer than it are stale. Bounded by the inventory (see _remember).
        self._last_result: dict[ServiceKey, float] = {}

    @handle_stream_errors
    async def Connect(
        self,
        request_iterator: AsyncIterator[sink_pb2.MinionMessage],
        context: grpc.aio.ServicerContext[sink_pb2.MinionMessage, sink_pb2.SinkMessage],
    ) -> AsyncIterator[sink_pb2.SinkMessage]:
        try:
            # Who the peer is, before anything it says.
            proved = certified(context)
        except Refused as exc:
            await self._refuse(context, exc)
        # At most sink_sessions_per_minion streams per certificate: a new one beyond ends
        # the oldest (never refused: a reconnect must get in while the old stream lingers).
        with self.limits.sink_sessions.hold(context) as slot:
            async with contextlib.aclosing(
                self._serve(request_iterator, context, proved, slot)
            ) as stream:
                async for message in stream:
                    yield message

    async def _serve(
        self,
        request_iterator: AsyncIterator[sink_pb2.MinionMessage],
        context: grpc.aio.ServicerContext[sink_pb2.MinionMessage, sink_pb2.SinkMessage],
        proved: tuple[Identity, int] | None,
        slot: Slot,
    ) -> AsyncGenerator[sink_pb2.SinkMessage, None]:
        messages = request_iterator.__aiter__()
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                first = await slot.unless_ended(messages.__anext__())
        except (TimeoutError, StopAsyncIteration):
            raise InvalidArgumentError(
                "hello", "the first message must be a hello, within 10s"
            ) from None
        try:
            session = self._session(first, proved)
        except Refused as exc:
            await self._refuse(context, exc)
        if isinstance(session, str):
            field, _, problem = session.partition(": ")
            raise InvalidArgumentError(field, problem)
        slot.link(session.replaced)  # ended by a newer stream: as if replaced by its hello
        self.registry.register(session)
        store_and_forward = self.sites is not None and self.sites.enabled(session.location)
        try:
            yield sink_pb2.SinkMessage(
                welcome=sink_pb2.Welcome(
                    scheduler_id=self.scheduler_id,
                    heartbeat_interval=to_duration(self.registry.heartbeat_interval),
                    heartbeat_misses=self.registry.misses,
                    store_and_forward=store_and_forward,
                )
            )
            if store_and_forward:
                for update in self._schedule_update(session, first.hello.schedule_digest):
                    yield update
            replaced = asyncio.ensure_future(session.replaced.wait())
            nxt: asyncio.Future[sink_pb2.MinionMessage] | None = None
            try:
                while True:
                    nxt = asyncio.ensure_future(messages.__anext__())
                    done, _ = await asyncio.wait(
                        {nxt, replaced}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if nxt not in done:
                        return  # a newer session of this minion took over
                    try:
                        msg = nxt.result()
                    except StopAsyncIteration:
                        return
                    kind = msg.WhichOneof("kind")
                    if kind == "goodbye":
                        self.registry.goodbye(session, msg.goodbye.reason[:200])
                        return
                    ack = await self._handle(session, msg)
                    if ack is not None:
                        yield sink_pb2.SinkMessage(ack=ack)
                    if kind == "heartbeat":
                        hb_ack = sink_pb2.HeartbeatAck()
                        set_timestamp(hb_ack.received_at, now())
                        yield sink_pb2.SinkMessage(heartbeat_ack=hb_ack)
                        if store_and_forward:
                            for update in self._schedule_update(session, session.schedule_digest):
                                yield update
            finally:
                replaced.cancel()
                if nxt is not None:
                    if nxt.done() and not nxt.cancelled():
                        nxt.exception()  # retrieved: the stream ended while we stopped
                    else:
                        nxt.cancel()
        finally:
            self.registry.unregister(session)

    @staticmethod
    async def _refuse(context: grpc.aio.ServicerContext[Any, Any], exc: Refused) -> NoReturn:
        """End the call with PERMISSION_DENIED, counted and logged."""
        HELLOS_REFUSED.labels(exc.reason).inc()
        log.warning("minion session refused (%s, peer %s): %s", exc.reason, context.peer(), exc)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        raise AssertionError("unreachable")  # abort raises

    def _session(
        self, msg: sink_pb2.MinionMessage, proved: tuple[Identity, int] | None
    ) -> MinionSession | str:
        """The session a hello opens, or what is wrong with the hello ("field: problem").

        ``proved`` is the peer's certified identity; it decides the location and
        system id (raises :class:`Refused` when the hello claims others, or when
        another certificate holds the system id).
        """
        if msg.WhichOneof("kind") != "hello":
            return "hello: the first message must be a hello"
        hello = msg.hello
        if proved is not None:
            session = self._certified_session(hello, *proved)
            held = self.registry.held_by_other(session)
            if held is not None:
                raise Refused(
                    "system_id_taken",
                    f"system id {session.system_id!r} is held by {held.identity}, which is "
                    f"up; {session.identity} cannot take it over",
                )
            return session
        # The plaintext development mode: nothing proves who the peer is.
        if not NODE_ID_RE.fullmatch(hello.system_id):
            sid = hello.system_id
            return f"hello.system_id: {sid!r} is not a valid id (letters, digits, '-', '_')"
        if not LOCATION_RE.fullmatch(hello.location):
            loc = hello.location
            return f"hello.location: {loc!r} is not a valid location (letters, digits, '-', '_')"
        return self._new_session(hello, hello.system_id, hello.location)

    def _certified_session(
        self, hello: sink_pb2.MinionHello, identity: Identity, serial: int
    ) -> MinionSession:
        # An empty claim is no claim: the certificate says it all.
        assert identity.location is not None  # a minion identity always has one
        if hello.location and hello.location != identity.location:
            raise Refused(
                "location_mismatch",
                f"hello.location {hello.location!r} is not the certificate's {identity.location!r}",
            )
        if hello.system_id and hello.system_id != identity.name:
            raise Refused(
                "system_id_mismatch",
                f"hello.system_id {hello.system_id!r} is not the certificate's {identity.name!r}",
            )
        session = self._new_session(hello, identity.name, identity.location)
        session.identity, session.serial = identity, serial
        return session

    @staticmethod
    def _new_session(hello: sink_pb2.MinionHello, system_id: str, location: str) -> MinionSession:
        return MinionSession(
            system_id=system_id,
            location=location,
            version=hello.version[:64],
            monitors=list(hello.monitors)[:256],
            capacity=hello.max_in_flight,
            # Not until a heartbeat says so: requests published before the minion's
            # subscriptions reach the server are lost (it beats as soon as they do).
            nats_connected=False,
            last_connected_at=from_timestamp(hello.last_connected_at)
            if hello.HasField("last_connected_at")
            else 0.0,
        )

    def _schedule_update(self, session: MinionSession, held: str) -> list[sink_pb2.SinkMessage]:
        """The location's schedule, when the minion does not hold it (checked every refresh).

        Only the session's own location's: ``session.location`` is the one its
        certificate names, so a site is never sent another site's schedule.
        """
        assert self.sites is not None
        loop_now = asyncio.get_running_loop().time()
        if session.schedule_checked and loop_now - session.schedule_checked < self.sites.refresh:
            return []
        session.schedule_checked = loop_now
        schedule = self.sites.schedule(session.location, loop_now)
        if schedule.digest == held:
            session.schedule_digest = held
            return []
        session.schedule_digest = schedule.digest
        log.info(
            "sending minion %s the schedule of %s (%d service(s), digest %s)",
            session.system_id,
            session.location,
            schedule.size,
            schedule.digest,
        )
        return [sink_pb2.SinkMessage(schedule=m) for m in schedule.messages]

    async def _handle(
        self, session: MinionSession, msg: sink_pb2.MinionMessage
    ) -> sink_pb2.BatchAck | None:
        self.registry.touch(session)
        kind = msg.WhichOneof("kind")
        if kind == "heartbeat":
            hb = msg.heartbeat
            session.heartbeats += 1
            session.in_flight = hb.in_flight
            session.polls_done = hb.polls_done
            session.nats_connected = hb.nats_connected
            session.intake_paused = hb.intake_paused
            session.autonomous = hb.autonomous
            session.spooled = hb.spooled
            session.results_dropped = hb.results_dropped
            return None
        if kind != "results":
            self.malformed += 1
            return None
        batch = msg.results
        # While the keeper pushes back (its queue is full), this session cannot read
        # heartbeats; it is busy because of us, so the registry does not count it silent.
        session.busy = True
        try:
            if batch.replayed:
                return await self._replay(session, batch)
            accepted = late = 0
            refused: dict[str, int] = {}
            for result in batch.results[:MAX_RESULTS_PER_BATCH]:
                poll = self.dispatcher.claim(result.request_id, session.location)
                if isinstance(poll, str):
                    RESULTS_REFUSED.labels(poll).inc()
                    refused[poll] = refused.get(poll, 0) + 1
                    late += 1
                    continue
                obs = to_observation(result, poll.key, system_id=session.system_id)
                await self.keeper.submit(obs)
                self._remember(obs)
                accepted += 1
            if refused.get("wrong_location"):
                # Not an accident: only a site answering another site's requests does this.
                log.warning(
                    "minion %s (location %s) sent %d result(s) for requests sent to another "
                    "location: ignored",
                    session.system_id,
                    session.location,
                    refused["wrong_location"],
                )
            return sink_pb2.BatchAck(seq=batch.seq, accepted=accepted, late=late)
        finally:
            session.busy = False
            self.registry.touch(session)

    async def _replay(
        self, session: MinionSession, batch: sink_pb2.ResultBatch
    ) -> sink_pb2.BatchAck:
        results = batch.results[:MAX_RESULTS_PER_BATCH]
        if self.sites is None or not self.sites.enabled(session.location):
            # Only a store-and-forward location's minions poll on their own.
            RESULTS_REFUSED.labels("replay_not_allowed").inc(len(results))
            REPLAYED.labels("not_allowed").inc(len(results))
            log.warning(
                "minion %s replayed %d result(s), but store-and-forward is off at %s: ignored",
                session.system_id,
                len(results),
                session.location,
            )
            return sink_pb2.BatchAck(seq=batch.seq, accepted=0, late=len(results))
        accepted = ignored = 0
        wall = now()
        for result in results:
            ref = result.service
            key = ServiceKey(ref.node_id, ref.ip, ref.service)
            rt = self.dispatcher.services.get(key)
            outcome = self._replay_problem(session, result, rt, wall)
            if outcome is not None:
                REPLAYED.labels(outcome).inc()
                if outcome == "wrong_location":
                    RESULTS_REFUSED.labels("replay_wrong_location").inc()
                ignored += 1
                continue
            assert rt is not None
            at = min(from_timestamp(result.finished_at), wall)
            if at <= self._floor(key, rt):
                REPLAYED.labels("stale").inc()
                ignored += 1
                continue
            obs = to_observation(result, key, at=at, system_id=session.system_id)
            await self.keeper.submit(obs)
            self._remember(obs)
            REPLAYED.labels("applied").inc()
            accepted += 1
        if accepted or ignored:
            log.info(
                "minion %s replayed %d result(s): %d applied, %d stale or unknown",
                session.system_id,
                accepted + ignored,
                accepted,
                ignored,
            )
        return sink_pb2.BatchAck(seq=batch.seq, accepted=accepted, late=ignored)

    @staticmethod
    def _replay_problem(
        session: MinionSession, result: poll_pb2.PollResult, rt: ServiceRuntime | None, wall: float
    ) -> str | None:
        if rt is None:
            return "unknown_service"
        if rt.spec.location != session.location:
            return "wrong_location"  # another site's service: not this session's to tell
        if status_from_pb(result.status) is None or not result.HasField("finished_at"):
            return "malformed"
        if from_timestamp(result.finished_at) > wall + MAX_CLOCK_SKEW:
            return "future"
        return None

    def _floor(self, key: ServiceKey, rt: ServiceRuntime) -> float:
        """Replayed results must be newer than this (the last real result we know of)."""
        known = self._last_result.get(key)
        if known is not None:
            return known
        floor = rt.status_since or 0.0
        if rt.last_poll_status in (Status.UP, Status.DOWN) and rt.last_poll_at is not None:
            floor = max(floor, rt.last_poll_at)
        return floor

    def _remember(self, obs: Observation) -> None:
        if obs.status is Status.UNKNOWN:
            return
        self._last_result[obs.key] = max(obs.at, self._last_result.get(obs.key, 0.0))
        services = self.dispatcher.services
        if len(self._last_result) > len(services) + 1024:
            # Services were removed from the inventory: forget them.
            self._last_result = {k: v for k, v in self._last_result.items() if k in services}
