"""Store-and-forward: polling the location's schedule on our own while cut off.

For a location where the scheduler turned store-and-forward on (its
``Welcome`` says so), the scheduler sends the location's schedule over the
session; it is kept on disk (``schedule.pb`` in the minion's spool
directory) so that a minion restarted during a partition still has it.

When the minion has been cut off from the central site for
``autonomous_after`` (no scheduler session, or no NATS connection), counted
from the last word heard from the scheduler rather than from the moment the
loss was noticed, it goes *autonomous*: it polls every service of the schedule at its interval (a
fixed-rate grid with a stable per-service phase, at most one poll of a
service at a time, each bounded by its TTL like any request), and the results
go to the on-disk spool instead of the live queue. The minion also stops
taking requests from its location's queue group meanwhile, so nothing is
polled twice by it. Once the central site is back, the session replays the
spool and the scheduler applies the results at their original times.

Every store-and-forward minion of a location polls the whole schedule while
cut off (they cannot agree on shares while partitioned); the scheduler drops
the duplicates as stale on replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from google.protobuf.message import DecodeError
from vigil.v1 import common_pb2, poll_pb2, sink_pb2

from minion.lifecycle import MinionState
from minion.runner import Emit
from minion.spool import DiskSpool
from services.core.timeutil import from_duration, set_timestamp

log = logging.getLogger(__name__)

SCHEDULE_FILE = "schedule.pb"
#: How often the cut-off condition is looked at (seconds).
TICK = 0.2

ServiceId = tuple[str, str, str]


class Runs(Protocol):
    """Where the site poller's requests run: the minion's runner, or its workers."""

    def submit(self, req: poll_pb2.PollRequest, emit: Emit | None = None) -> bool:
        """Start ``req``, its result to ``emit``; ``False`` when it was not taken."""
        ...


def _sid(ref: common_pb2.ServiceRef) -> ServiceId:
    return (ref.node_id, ref.ip, ref.service)


class SitePoller:
    """Holds the location schedule and polls it while the central site is unreachable."""

    def __init__(
        self,
        system_id: str,
        location: str,
        directory: Path,
        runner: Runs,
        spool: DiskSpool,
        *,
        state: MinionState,
        autonomous_after: float,
        cut_off: Callable[[], bool],
        last_contact: Callable[[], float | None] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.system_id = system_id
        self.location = location
        self.directory = directory
        self.runner = runner
        self.spool = spool
        #: The minion's lifecycle: this poller sets ``autonomous`` and reads ``stopping``.
        self.state = state
        self.autonomous_after = autonomous_after
        self._cut_off = cut_off
        #: Loop-clock time of the last word from the central site (``None``: unknown).
        self._last_contact = last_contact
        self._on_change = on_change
        self.schedule: sink_pb2.LocationSchedule | None = None
        self._parts: dict[int, sink_pb2.LocationSchedule] = {}
        self._parts_digest = ""
        self._cut_since: float | None = None
        self._heap: list[tuple[float, int, ServiceId]] = []
        self._specs: dict[ServiceId, sink_pb2.ScheduledService] = {}
        #: Services with a poll of ours running, and when that poll's TTL ends (loop clock).
        self._busy: dict[ServiceId, float] = {}
        self._ids = itertools.count(1)
        self.polls = 0
        self.skipped = 0
        #: Results of our own polls spooled in the current (or last) autonomous period.
        self.spooled = 0
        #: Complete schedules received from the scheduler.
        self.schedules_received = 0
        self._load()

    # -- the schedule -------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """Store-and-forward is on (we hold a schedule)."""
        return self.schedule is not None

    @property
    def autonomous(self) -> bool:
        """Polling the schedule on our own right now."""
        return self.state.autonomous

    @property
    def digest(self) -> str:
        """Digest of the schedule we hold ("" when none)."""
        return self.schedule.digest if self.schedule is not None else ""

    def _load(self) -> None:
        path = self.directory / SCHEDULE_FILE
        try:
            data = path.read_bytes()
        except OSError:
            return
        try:
            schedule = sink_pb2.LocationSchedule.FromString(data)
        except DecodeError:
            log.warning("%s is not a schedule; ignoring it", path)
            return
        if schedule.location != self.location:
            log.info(
                "%s is the schedule of %s, not %s; ignoring it",
                path,
                schedule.location,
                self.location,
            )
            return
        self.schedule = schedule
        log.info(
            "store-and-forward schedule of %s loaded: %d service(s)",
            self.location,
            len(schedule.services),
        )

    def _save(self) -> None:
        assert self.schedule is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / (SCHEDULE_FILE + ".tmp")
        tmp.write_bytes(self.schedule.SerializeToString())
        os.replace(tmp, self.directory / SCHEDULE_FILE)

    def on_welcome(self, welcome: sink_pb2.Welcome) -> None:
        """The scheduler says whether store-and-forward is on for our location."""
        if welcome.store_and_forward or self.schedule is None:
            return
        log.info("store-and-forward is off for %s: dropping the schedule", self.location)
        self.schedule = None
        self._rebuild()
        with contextlib.suppress(OSError):
            (self.directory / SCHEDULE_FILE).unlink()

    def on_schedule(self, part: sink_pb2.LocationSchedule) -> None:
        """A part of the location's schedule; the schedule changes once all parts are in."""
        if part.location != self.location or part.count == 0 or part.index >= part.count:
            log.warning(
                "ignoring a schedule part for %s (%d of %d)", part.location, part.index, part.count
            )
            return
        if part.digest != self._parts_digest:
            self._parts, self._parts_digest = {}, part.digest
        self._parts[part.index] = part
        if len(self._parts) < part.count:
            return
        whole = sink_pb2.LocationSchedule(
            location=part.location, digest=part.digest, index=0, count=1
        )
        for i in range(part.count):
            whole.services.extend(self._parts[i].services)
        self._parts, self._parts_digest = {}, ""
        self.schedule = whole
        self.schedules_received += 1
        self._save()
        log.info(
            "store-and-forward schedule of %s: %d service(s) (digest %s)",
            self.location,
            len(whole.services),
            whole.digest,
        )
        self._rebuild()

    # -- autonomous polling --------------------------------------------------------------

    def _rebuild(self) -> None:
        """(Re)build the local grid from the schedule, keeping nothing of the old one."""
        self._heap.clear()
        self._specs.clear()
        if self.schedule is None or not self.autonomous:
            return
        now = asyncio.get_running_loop().time()
        for i, entry in enumerate(self.schedule.services):
            sid = _sid(entry.service)
            interval = from_duration(entry.interval)
            if interval <= 0:
                continue
            self._specs[sid] = entry
            # A stable phase per service within its interval: no burst when going autonomous.
            phase = zlib.crc32("/".join(sid).encode()) / 2**32 * min(interval, 5.0)
            heapq.heappush(self._heap, (now + phase, i, sid))

    def stop(self) -> None:
        """No more polls of our own (shutdown: the minion's state is already stopping)."""
        self._set_autonomous(False)

    def _set_autonomous(self, on: bool) -> None:
        if on == self.state.autonomous:
            return
        self.state.autonomous = on
        if on:
            self.spooled = 0
            since = self._cut_since
            log.warning(
                "central site unreachable for %.1fs: polling %d service(s) of %s on our own",
                asyncio.get_running_loop().time() - since if since is not None else 0.0,
                len(self.schedule.services) if self.schedule else 0,
                self.location,
            )
        else:
            # What this period spooled (the spool's backlog may already be replayed);
            # the polls still running spool their results when they end.
            log.info(
                "central site reachable: autonomous polling ends "
                "(%d result(s) spooled, %d poll(s) still running)",
                self.spooled,
                len(self._busy),
            )
        self._rebuild()
        if self._on_change is not None:
            self._on_change()

    async def run(self) -> None:
        """Watch the link; while cut off long enough, poll the schedule. For ever."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if self._cut_off() and not self.state.stopping:
                if self._cut_since is None:
                    # The cut began at the last word heard, not when its loss was noticed.
                    heard = self._last_contact() if self._last_contact is not None else None
                    self._cut_since = now if heard is None else min(now, heard)
            else:
                self._cut_since = None
            want = (
                self.enabled
                and self._cut_since is not None
                and now - self._cut_since >= self.autonomous_after
            )
            self._set_autonomous(want)
            if self.autonomous:
                self._dispatch_due(now)
            wake = TICK
            if self._heap:
                wake = min(TICK, max(0.0, self._heap[0][0] - loop.time()))
            await asyncio.sleep(wake)

    def _dispatch_due(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            due, i, sid = heapq.heappop(self._heap)
            entry = self._specs.get(sid)
            if entry is None:
                continue
            interval = from_duration(entry.interval)
            nxt = due + interval
            if nxt <= now:  # we fell behind: skip missed slots, do not bunch them
                nxt = now + interval - ((now - due) % interval)
            heapq.heappush(self._heap, (nxt, i, sid))
            busy_until = self._busy.get(sid)
            if busy_until is not None and busy_until > now:
                self.skipped += 1
                continue
            self._poll(entry, sid, now)

    def _poll(self, entry: sink_pb2.ScheduledService, sid: ServiceId, now: float) -> None:
        wall = time.time()
        ttl = from_duration(entry.ttl) or from_duration(entry.interval)
        req = poll_pb2.PollRequest(
            id=f"local-{self.system_id}-{next(self._ids):x}",
            service=entry.service,
            location=self.location,
            monitor=entry.monitor,
            retries=entry.retries,
        )
        req.params.CopyFrom(entry.params)
        req.timeout.CopyFrom(entry.timeout)
        set_timestamp(req.expires_at, wall + ttl)
        set_timestamp(req.sent_at, wall)
        self._busy[sid] = now + ttl

        def spool_result(result: poll_pb2.PollResult, _expires_at: float) -> None:
            self._busy.pop(sid, None)
            self.spool.submit(result)  # written off the event loop by the spool's writer
            self.spooled += 1

        if self.runner.submit(req, emit=spool_result):
            self.polls += 1
        else:
            self._busy.pop(sid, None)
