"""Sends due polls to minions over NATS and turns silence into UNKNOWN.

One task owns the schedule and the table of pending requests: it publishes
every due service (batched per location) and expires requests whose TTL has
run out. Services whose location has no live minion are answered UNKNOWN at
once instead of waiting for their TTL.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import zlib
from collections import defaultdict
from collections.abc import Iterable

from nats.aio.client import Client as NATS
from vigil.v1 import common_pb2, poll_pb2

from minion.monitors.base import Status
from services.common.durations import format_duration
from services.common.timeutil import now as wall_now
from services.common.timeutil import set_timestamp
from services.scheduler import metrics
from services.scheduler.minions import MinionRegistry
from services.scheduler.model import Observation, ServiceKey, ServiceRuntime
from services.scheduler.pending import PendingPoll, PendingPolls
from services.scheduler.schedule import Schedule, next_slot
from services.scheduler.state import StateKeeper

log = logging.getLogger(__name__)

POLL_SUBJECT_PREFIX = "vigil.poll"
#: At most this many due services are handled before yielding to other tasks.
ROUND_LIMIT = 5000


def poll_subject(location: str, system_id: str | None = None) -> str:
    """``vigil.poll.<location>`` or ``vigil.poll.<location>.<system_id>``."""
    base = f"{POLL_SUBJECT_PREFIX}.{location}"
    return f"{base}.{system_id}" if system_id else base


def first_due(key: ServiceKey, interval: float, splay: float, now: float) -> float:
    """A stable phase per service within min(interval, splay) after ``now``.

    Derived from the key, so a restart keeps each service's place and 100k
    services never start as one burst.
    """
    window = min(interval, splay)
    fraction = zlib.crc32(str(key).encode()) / 2**32
    return now + fraction * window


class Dispatcher:
    """Owns the schedule and the pending requests (see the module docstring)."""

    def __init__(
        self,
        services: dict[ServiceKey, ServiceRuntime],
        registry: MinionRegistry,
        keeper: StateKeeper,
        nc: NATS,
        *,
        batch_size: int,
        start_splay: float,
        scheduler_id: str | None = None,
    ) -> None:
        self.services = services
        self.registry = registry
        self.keeper = keeper
        self.nc = nc
        self.batch_size = batch_size
        self.start_splay = start_splay
        self.scheduler_id = scheduler_id or secrets.token_hex(4)
        self.schedule: Schedule[ServiceKey] = Schedule()
        self.pending = PendingPolls()
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        #: Until then, a location without a minion is waited for, not reported:
        #: after a scheduler restart, minions need a moment to reconnect.
        self.grace_until = 0.0

    # -- schedule maintenance ------------------------------------------------------

    def schedule_all(self, minion_grace: float = 0.0) -> None:
        """Give every service its first due time."""
        now = asyncio.get_running_loop().time()
        self.grace_until = now + minion_grace
        for key, rt in self.services.items():
            self.schedule.add(key, first_due(key, rt.spec.interval, self.start_splay, now))
        self._wake.set()

    def add(self, key: ServiceKey) -> None:
        """Schedule a newly configured service."""
        rt = self.services[key]
        now = asyncio.get_running_loop().time()
        self.schedule.add(key, first_due(key, rt.spec.interval, self.start_splay, now))
        self._wake.set()

    def remove(self, key: ServiceKey) -> None:
        """Stop polling a service."""
        self.schedule.remove(key)

    # -- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Dispatch due polls and expire silent ones, for ever."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            await self._expire(now)
            due = self.schedule.pop_due(now, ROUND_LIMIT)
            if due:
                await self._dispatch_due(due, now)
                await asyncio.sleep(0)
                continue
            wake = [t for t in (self.schedule.next_due(), self.pending.next_expiry()) if t is not None]
            timeout = min(1.0, max(0.0, min(wake) - now)) if wake else 1.0
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _dispatch_due(self, due: list[tuple[ServiceKey, float]], now: float) -> None:
        ready: list[ServiceRuntime] = []
        for key, due_at in due:
            rt = self.services.get(key)
            if rt is None:
                continue
            self.schedule.add(key, next_slot(due_at, rt.spec.interval, now))
            metrics.DISPATCH_LAG.observe(now - due_at)
            if rt.in_flight is not None:
                metrics.POLLS_SKIPPED.inc()
                continue
            ready.append(rt)
        await self.send(ready)

    async def send(self, runtimes: Iterable[ServiceRuntime], system_id: str | None = None) -> None:
        """Publish polls for these services now (batched per location)."""
        by_location: dict[str, list[ServiceRuntime]] = defaultdict(list)
        for rt in runtimes:
            by_location[rt.spec.location].append(rt)
        loop_now = asyncio.get_running_loop().time()
        for location, rts in by_location.items():
            if not self.registry.available(location) and loop_now < self.grace_until:
                for rt in rts:  # try again shortly
                    self.schedule.add(rt.key, min(loop_now + 1.0, self.schedule.due_time(rt.key) or loop_now + 1.0))
                continue
            if not self.registry.available(location):
                metrics.UNKNOWN.labels("no_minion").inc(len(rts))
                at = wall_now()
                for rt in rts:
                    await self.keeper.submit(
                        Observation(rt.key, Status.UNKNOWN, f"no minion at location {location}", at)
                    )
                continue
            subject = poll_subject(location, system_id)
            for i in range(0, len(rts), self.batch_size):
                await self._publish(subject, location, rts[i : i + self.batch_size], loop_now)

    async def _publish(
        self, subject: str, location: str, rts: list[ServiceRuntime], loop_now: float
    ) -> None:
        batch = poll_pb2.PollBatch(scheduler_id=self.scheduler_id)
        sent = wall_now()
        polls = []
        for rt in rts:
            spec = rt.spec
            rid = f"{self.scheduler_id}-{next(self._ids):x}"
            req = batch.requests.add(
                id=rid,
                service=common_pb2.ServiceRef(node_id=spec.key.node_id, ip=spec.key.ip, service=spec.key.service),
                location=location,
                monitor=spec.monitor,
                retries=spec.retries,
            )
            req.params.CopyFrom(rt.params_struct)
            req.timeout.FromNanoseconds(int(spec.timeout * 1e9))
            set_timestamp(req.expires_at, sent + spec.ttl)
            set_timestamp(req.sent_at, sent)
            polls.append(PendingPoll(rid, spec.key, location, loop_now + spec.ttl, spec.ttl))
        try:
            await self.nc.publish(subject, batch.SerializeToString())
        except Exception as exc:
            log.warning("publishing %d poll(s) to %s failed: %s", len(rts), subject, exc)
            metrics.UNKNOWN.labels("nats").inc(len(rts))
            at = wall_now()
            for rt in rts:
                await self.keeper.submit(
                    Observation(rt.key, Status.UNKNOWN, f"cannot send poll request over NATS: {exc}", at)
                )
            return
        for rt, poll in zip(rts, polls, strict=True):
            rt.in_flight = poll.request_id
            self.pending.add(poll)
        metrics.POLLS_DISPATCHED.labels(location).inc(len(rts))
        metrics.IN_FLIGHT.set(len(self.pending))

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
            await self.keeper.submit(
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
            await self.keeper.submit(Observation(poll.key, Status.UNKNOWN, reason, at, request_id=poll.request_id))
        metrics.IN_FLIGHT.set(len(self.pending))
        return len(polls)

    # -- results -------------------------------------------------------------------

    def claim(self, request_id: str) -> PendingPoll | None:
        """Match a result to its request; ``None`` when it expired or is unknown (late)."""
        poll = self.pending.pop(request_id)
        if poll is None:
            metrics.RESULTS_LATE.inc()
            return None
        rt = self.services.get(poll.key)
        if rt is not None and rt.in_flight == request_id:
            rt.in_flight = None
        return poll
