"""Sends due polls to minions over NATS and turns silence into UNKNOWN.

One task owns the schedule and the table of pending requests: it publishes
every due service (batched per location) and expires requests whose TTL has
run out. Services whose location has no live minion are answered UNKNOWN at
once instead of waiting for their TTL.

Scheduling is fixed-rate: each service has an anchor (its first due time,
spread over the start splay by a hash of its key) and is due at
``anchor + k·interval`` while UP, so poll duration never shifts it. While a
change is being confirmed it is re-polled at the retry interval, and while it
is DOWN at the downtime model's interval. A service is never polled twice at
once; bounds on polls in flight (global and per node) make due polls wait
instead of queueing without limit.

Request ids are 128 random bits (:func:`new_request_id`): nothing a minion
is sent (its Welcome, the batches) lets it derive another request's id, and
a result is claimed only by a session of the location its request was sent
to (:meth:`Dispatcher.claim`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import zlib
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, Protocol

from nats.aio.client import Client as NATS
from vigil.v1 import common_pb2, poll_pb2

from services.core.durations import format_duration
from services.core.status import Status
from services.core.tasks import wait_set
from services.core.timeutil import now as wall_now
from services.core.timeutil import set_timestamp
from services.core.wire import poll_subject
from services.scheduler import metrics
from services.scheduler.minions import MinionRegistry
from services.scheduler.model import Observation, ServiceKey, ServiceRuntime
from services.scheduler.pending import PendingPoll, PendingPolls
from services.scheduler.schedule import Schedule, next_slot
from services.scheduler.timing import effective_interval, on_grid

log = logging.getLogger(__name__)

#: At most this many due services are handled before yielding to other tasks.
ROUND_LIMIT = 5000
#: Random bytes per request id (128 bits: not guessable, never derived from anything sent).
REQUEST_ID_BYTES = 16

#: Why a result was not matched to a request (:meth:`Dispatcher.claim`).
Refusal = Literal["unknown_id", "wrong_location"]


def new_request_id() -> str:
    """A fresh request id: 32 hex digits from the OS's CSPRNG."""
    return secrets.token_hex(REQUEST_ID_BYTES)


def first_due(key: ServiceKey, interval: float, splay: float, now: float) -> float:
    """A stable phase per service within min(interval, splay) after ``now``.

    Derived from the key, so 100k services never start as one burst and each
    keeps its relative place across restarts.
    """
    window = min(interval, splay)
    fraction = zlib.crc32(str(key).encode()) / 2**32
    return now + fraction * window


class ResultIntake(Protocol):
    """Where the dispatcher's UNKNOWN results go (the state keeper's mailbox)."""

    async def submit(self, obs: Observation) -> None:
        """Queue an observation (waits while the intake is full)."""


class Dispatcher:
    """Owns the schedule, the pending requests and each service's scheduling slot.

    The slot is ``anchor``, ``added``, ``in_flight`` and ``polling_stopped``
    of :class:`~services.scheduler.model.ServiceRuntime`: only the dispatcher
    writes them. ``paused`` too, persisted with the service's state (``on_paused``).
    """

    def __init__(
        self,
        services: Mapping[ServiceKey, ServiceRuntime],
        registry: MinionRegistry,
        results: ResultIntake,
        nc: NATS,
        *,
        polled: Callable[[ServiceRuntime], bool],
        on_paused: Callable[[ServiceKey], None],
        batch_size: int,
        start_splay: float,
        scheduler_id: str | None = None,
        max_in_flight: int = 100_000,
        max_in_flight_per_node: int = 100,
    ) -> None:
        self.services = services
        self.registry = registry
        self.results = results
        #: Whether a service is polled at all (not while its interface is down).
        self.polled = polled
        self._on_paused = on_paused
        self.nc = nc
        self.batch_size = batch_size
        self.start_splay = start_splay
        #: Names this scheduler in batches and logs; request ids do not derive from it.
        self.scheduler_id = scheduler_id or secrets.token_hex(4)
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_node = max_in_flight_per_node
        self.schedule: Schedule[ServiceKey] = Schedule()
        self.pending = PendingPolls()
        self._wake = asyncio.Event()
        #: Until then, a location without a minion is waited for, not reported:
        #: after a scheduler restart, minions need a moment to reconnect.
        self.grace_until = 0.0
        self.dispatched = 0
        self._side_tasks: set[asyncio.Task[None]] = set()
        #: Services due while their location had no room, per location, in order.
        self._waiting: dict[str, deque[ServiceKey]] = {}
        self._waiting_keys: set[ServiceKey] = set()

    async def close(self) -> None:
        """Cancel out-of-schedule sends still under way."""
        for t in list(self._side_tasks):
            t.cancel()
        if self._side_tasks:
            await asyncio.wait(self._side_tasks, timeout=2.0)

    # -- schedule maintenance ------------------------------------------------------

    def _loop_now(self) -> float:
        return asyncio.get_running_loop().time()

    def schedule_all(self, minion_grace: float = 0.0) -> None:
        """Give every service its first due time."""
        now = self._loop_now()
        self.grace_until = now + minion_grace
        for key in self.services:
            self._start(key, now)
        self._wake.set()

    def _start(self, key: ServiceKey, now: float) -> None:
        rt = self.services[key]
        rt.anchor = first_due(key, rt.spec.interval, self.start_splay, now)
        rt.added = wall_now()
        if not rt.paused:
            if on_grid(rt):
                self.schedule.add(key, rt.anchor)
            else:
                self.reschedule(key)

    def add(self, key: ServiceKey) -> None:
        """Schedule a newly configured service."""
        self._start(key, self._loop_now())
        self._wake.set()

    def remove(self, key: ServiceKey) -> None:
        """Stop polling a service (its pending request, if any, is ignored when it returns)."""
        self.schedule.remove(key)

    def reschedule(self, key: ServiceKey) -> None:
        """Recompute when a service is next due after its state changed."""
        rt = self.services.get(key)
        if rt is None:
            return
        if rt.paused:
            self.schedule.remove(key)
            return
        now = self._loop_now()
        interval = effective_interval(rt, wall_now())
        if interval is None:
            rt.polling_stopped = True
            self.schedule.remove(key)
            return
        rt.polling_stopped = False
        if on_grid(rt):
            due = rt.anchor if rt.anchor > now else next_slot(rt.anchor, rt.spec.interval, now)
        else:
            due = now + interval
        self.schedule.add(key, due)
        self._wake.set()

    def resume(self, key: ServiceKey) -> None:
        """The service's state changed: a "stop polling" verdict of the downtime model is void.

        The next :meth:`reschedule` judges afresh.
        """
        rt = self.services.get(key)
        if rt is not None:
            rt.polling_stopped = False

    def set_paused(self, key: ServiceKey, paused: bool) -> None:
        """Pause or resume polling of a service."""
        rt = self.services[key]
        rt.paused = paused
        self._on_paused(key)
        if paused:
            self.schedule.remove(key)
        else:
            self.reschedule(key)

    # -- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Dispatch due polls and expire silent ones, for ever."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            await self._expire(now)
            if self._waiting:
                await self._drain_waiting()
            due = self.schedule.pop_due(now, ROUND_LIMIT)
            if due:
                await self._dispatch_due(due, now)
                await asyncio.sleep(0)
                continue
            wake = [
                t for t in (self.schedule.next_due(), self.pending.next_expiry()) if t is not None
            ]
            timeout = min(1.0, max(0.0, min(wake) - now)) if wake else 1.0
            self._wake.clear()
            await wait_set(self._wake, timeout)

    async def _dispatch_due(self, due: list[tuple[ServiceKey, float]], now: float) -> None:
        ready: list[ServiceRuntime] = []
        room: dict[str, int | None] = {}
        wall = wall_now()
        # The lag histogram gets a sample of each round, not every service: at
        # 10k polls/s observing each one costs more than it tells.
        step = max(1, len(due) // 64)
        for i in range(0, len(due), step):
            metrics.DISPATCH_LAG.observe(now - due[i][1])
        for key, due_at in due:
            rt = self.services.get(key)
            if rt is None or rt.paused:
                continue
            interval = effective_interval(rt, wall)
            if interval is None:
                rt.polling_stopped = True
                continue
            if on_grid(rt):
                self.schedule.add(key, next_slot(due_at, rt.spec.interval, now))
            else:
                self.schedule.add(key, now + interval)
            if not self.polled(rt):
                continue  # its interface is down: only the critical service is polled
            if rt.in_flight is not None:
                metrics.POLLS_SKIPPED.inc()
                continue
            if key in self._waiting_keys:
                continue  # still waiting for room since its last slot
            location = rt.spec.location
            if location not in room:
                room[location] = self._room(location)
            budget = room[location]
            if budget is not None and budget <= 0:
                # Back-pressure: wait (in order) for room at a saturated location
                # rather than flood it; its requests would only expire as UNKNOWN.
                metrics.POLLS_DEFERRED.inc()
                self._waiting.setdefault(location, deque()).append(key)
                self._waiting_keys.add(key)
                continue
            if self._at_bound(rt, len(ready), now):
                continue
            if budget is not None:
                room[location] = budget - 1
            ready.append(rt)
        await self.send(ready)

    def _at_bound(self, rt: ServiceRuntime, queued: int, now: float) -> bool:
        """The global or per-node bound on polls in flight is reached: try again shortly.

        ``queued``: polls about to be sent with this one.
        """
        if (
            len(self.pending) + queued < self.max_in_flight
            and self.pending.per_node(rt.key.node_id) < self.max_in_flight_per_node
        ):
            return False
        metrics.POLLS_DEFERRED.inc()
        self.schedule.add(rt.key, now + min(1.0, rt.spec.interval))
        return True

    def _room(self, location: str) -> int | None:
        """Polls ``location`` can take now (``None``: no known bound)."""
        cap = self.registry.capacity(location)
        return None if cap is None else cap - self.pending.per_location(location)

    async def _drain_waiting(self) -> None:
        """Send services that waited for room, oldest first, as room frees up."""
        ready: list[ServiceRuntime] = []
        now = self._loop_now()
        for location, queue in list(self._waiting.items()):
            budget = self._room(location)
            while queue and (budget is None or budget > 0):
                key = queue.popleft()
                self._waiting_keys.discard(key)
                rt = self.services.get(key)
                if (
                    rt is None
                    or rt.paused
                    or rt.in_flight is not None
                    or not self.polled(rt)
                    or self._at_bound(rt, len(ready), now)
                ):
                    continue
                ready.append(rt)
                if budget is not None:
                    budget -= 1
            if not queue:
                del self._waiting[location]
        if ready:
            await self.send(ready)

    async def send(
        self,
        runtimes: Iterable[ServiceRuntime],
        *,
        ttl: float | None = None,
        system_id: str | None = None,
    ) -> list[str]:
        """Publish polls for these services now (batched per location); returns the request ids."""
        by_location: dict[str, list[tuple[ServiceRuntime, str]]] = defaultdict(list)
        ids = []
        for rt in runtimes:
            rid = new_request_id()
            by_location[rt.spec.location].append((rt, rid))
            ids.append(rid)
        loop_now = self._loop_now()
        for location, batch in by_location.items():
            if not self.registry.available(location):
                if loop_now < self.grace_until and ttl is None:
                    for rt, _ in batch:  # try again shortly
                        self.schedule.add(rt.key, loop_now + 1.0)
                    continue
                await self._unknown(batch, "no_minion", f"no minion at location {location}")
                continue
            subject = poll_subject(location, system_id)
            for i in range(0, len(batch), self.batch_size):
                await self._publish(
                    subject, location, batch[i : i + self.batch_size], loop_now, ttl
                )
        return ids

    async def _publish(
        self,
        subject: str,
        location: str,
        batch: list[tuple[ServiceRuntime, str]],
        loop_now: float,
        ttl_override: float | None,
    ) -> bool:
        msg = poll_pb2.PollBatch(scheduler_id=self.scheduler_id)
        sent = wall_now()
        polls = []
        for rt, rid in batch:
            spec = rt.spec
            ttl = ttl_override if ttl_override is not None else spec.ttl
            req = msg.requests.add(
                id=rid,
                service=common_pb2.ServiceRef(
                    node_id=spec.key.node_id, ip=spec.key.ip, service=spec.key.service
                ),
                location=location,
                monitor=spec.monitor,
                retries=spec.retries,
            )
            req.params.CopyFrom(rt.params_struct)
            req.timeout.FromNanoseconds(int(spec.timeout * 1e9))
            set_timestamp(req.expires_at, sent + ttl)
            set_timestamp(req.sent_at, sent)
            polls.append(PendingPoll(rid, spec.key, location, loop_now + ttl, ttl))
        try:
            await self.nc.publish(subject, msg.SerializeToString())
        except Exception as exc:
            log.warning("publishing %d poll(s) to %s failed: %s", len(batch), subject, exc)
            await self._unknown(batch, "nats", f"cannot send poll request over NATS: {exc}")
            return False
        for (rt, _), poll in zip(batch, polls, strict=True):
            rt.in_flight = poll.request_id
            self.pending.add(poll)
        self.dispatched += len(batch)
        metrics.POLLS_DISPATCHED.labels(location).inc(len(batch))
        metrics.IN_FLIGHT.set(len(self.pending))
        return True

    async def _unknown(
        self, batch: list[tuple[ServiceRuntime, str]], cause: str, reason: str
    ) -> None:
        """Answer these requests UNKNOWN at once (they cannot be sent)."""
        metrics.UNKNOWN.labels(cause).inc(len(batch))
        at = wall_now()
        for rt, rid in batch:
            await self.results.submit(
                Observation(rt.key, Status.UNKNOWN, reason, at, request_id=rid)
            )

    def poll_now(self, key: ServiceKey, *, urgent: bool) -> str | None:
        """Poll a service out of schedule; returns the request id to wait for.

        A poll already in flight is reused (its result is just as fresh).
        ``urgent`` polls (critical-service checks) carry a TTL covering their
        attempts only, so nothing waits a whole interval for them.
        """
        rt = self.services.get(key)
        if rt is None:
            return None
        if rt.in_flight is not None:
            return rt.in_flight
        rid = new_request_id()
        # Reserve the id now; the send happens in the loop's next turn.
        task = asyncio.get_running_loop().create_task(
            self._send_reserved(rt, rid, rt.spec.urgent_ttl if urgent else rt.spec.ttl)
        )
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
        rt.in_flight = rid
        return rid

    async def _send_reserved(self, rt: ServiceRuntime, rid: str, ttl: float) -> None:
        location = rt.spec.location
        loop_now = self._loop_now()
        if self.services.get(rt.key) is not rt:
            return
        if not self.registry.available(location):
            rt.in_flight = None
            await self._unknown([(rt, rid)], "no_minion", f"no minion at location {location}")
            return
        if not await self._publish(poll_subject(location), location, [(rt, rid)], loop_now, ttl):
            rt.in_flight = None  # the UNKNOWN has been submitted

    async def _expire(self, now: float) -> None:
        expired = self.pending.expire(now)
        if not expired:
            return
        at = wall_now()
        metrics.UNKNOWN.labels("ttl").inc(len(expired))
        for poll in expired:
            rt = self.services.get(poll.key)
            if rt is not None and rt.in_flight == poll.request_id:
                rt.in_flight = None
            await self.results.submit(
                Observation(
                    poll.key,
                    Status.UNKNOWN,
                    f"no result within TTL {format_duration(poll.ttl)} (location {poll.location})",
                    at,
                    request_id=poll.request_id,
                )
            )
        metrics.IN_FLIGHT.set(len(self.pending))

    async def expire_location(self, location: str, reason: str) -> int:
        """End every pending poll at ``location`` as UNKNOWN now (its last minion is gone).

        Returns how many polls were ended. Their results, should they still
        arrive, are late and ignored.
        """
        polls = self.pending.take_location(location)
        at = wall_now()
        metrics.UNKNOWN.labels("location").inc(len(polls))
        for poll in polls:
            rt = self.services.get(poll.key)
            if rt is not None and rt.in_flight == poll.request_id:
                rt.in_flight = None
            await self.results.submit(
                Observation(poll.key, Status.UNKNOWN, reason, at, request_id=poll.request_id)
            )
        metrics.IN_FLIGHT.set(len(self.pending))
        return len(polls)

    # -- results -------------------------------------------------------------------

    def claim(self, request_id: str, location: str) -> PendingPoll | Refusal:
        """Match a result from a session of ``location`` to its request.

        ``location`` is the one the session's certificate names. A request
        sent elsewhere is refused *and left pending*: a result from the wrong
        site must not use up the request, or the real minion's answer would
        then be refused as late. Unknown ids (expired, answered, never sent)
        are refused as well.
        """
        poll = self.pending.get(request_id)
        if poll is None:
            metrics.RESULTS_LATE.inc()
            return "unknown_id"
        if poll.location != location:
            return "wrong_location"
        self.pending.pop(request_id)
        if self._waiting:
            self._wake.set()  # room for a waiting service
        rt = self.services.get(poll.key)
        if rt is not None and rt.in_flight == request_id:
            rt.in_flight = None
        return poll
