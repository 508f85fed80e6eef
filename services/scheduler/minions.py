"""The minion registry: who is connected, who is down, which locations can be polled.

A minion registers when its ResultSink session opens (the hello) and proves
it is alive with heartbeats on that session. The registry keeps one record per
``system_id``, also after the minion went down (status DOWN in
``Poller/ListMinions``) until :data:`RETENTION` has passed.

Liveness is decided in one place, the sweeper of
:mod:`services.scheduler.liveness` (owned by the scheduler's Supervisor):

* a minion unheard for ``heartbeat_interval * heartbeat_misses`` is marked
  DOWN: one ``minion down`` event; one that says goodbye (it is stopping on
  purpose) is marked DOWN at once;
* when the last live minion of a location goes, one ``location unreachable``
  event, and the location's pending polls end UNKNOWN at once
  (:meth:`services.scheduler.dispatcher.Dispatcher.expire_location`) instead of at their TTLs; the services
  themselves get no event each (no alert storm);
* a minion that (re)connects after it was marked DOWN: ``minion up``, and
  ``location reachable`` when its location was unreachable. A quick reconnect
  of a minion that never went down (a broken stream, a scheduler restart the
  minion rode out) is no event at all.

After a scheduler restart the registry is empty. A minion tells in its hello
when it last had a working session; one that had it within a heartbeat window
is *resumed*, not new, so a scheduler restart does not produce a ``minion up``
per minion. Locations with services but no minion once the start-up grace is
over get one ``location unreachable`` each.

Events go through the state keeper's transactional outbox; they are queued
here (bounded) and written by the sweeper task, which retries while the
store is unavailable, so an event is never lost to a store hiccup and a
session handler never waits for the database.

Who a minion is comes from its certificate (the ResultSink reads it; see
:mod:`services.scheduler.sink`): a record exists only for an identity the
CA certified, so invented minions (and their ``minion up/down`` and
``location unreachable`` events) cannot appear. One identity holds one
session: the same identity connecting again (a reconnect, a renewed
certificate) replaces its older session, and while that minion is UP no
other certificate can take its system id (:meth:`MinionRegistry.held_by_other`).
In the plaintext development mode there are no certificates and the hello's
claims are taken as they are.

A location is *available* to the dispatcher when a minion there is live, has
its session open and reports a working NATS connection; a location is
*reachable* (the events) while any minion there is UP. The two differ on
purpose: a NATS blip at a site makes its polls UNKNOWN ("no minion at
location") but is not a site outage worth an event.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from services.core.events import Event, make_event
from services.core.pki import Identity
from services.core.tasks import wait_set
from services.core.timeutil import iso, now
from services.scheduler import metrics

log = logging.getLogger(__name__)

SOURCE = "scheduler"
#: DOWN minions are forgotten after this long (seconds)...
RETENTION = 7 * 86400.0
#: ...and the oldest DOWN ones first when there are more records than this.
MAX_RECORDS = 10_000
#: Events waiting for the store (one per minion or location transition).
MAX_PENDING_EVENTS = 10_000


#: ``location unreachable`` when its last minion stopped on purpose (said goodbye).
PLANNED_STOP_REASON = "minions stopped"
#: ... at this severity rather than the catalogue's critical.
PLANNED_STOP_SEVERITY = "warning"


def unreachable_reason(location: str) -> str:
    """The UNKNOWN reason of a location's polls when its last minion went."""
    return f"location {location} unreachable: no live minion"


@dataclass(slots=True)
class MinionSession:
    """One minion as the registry knows it (its current or last session)."""

    system_id: str
    location: str
    version: str
    monitors: list[str]
    #: Wall-clock time the current (or last) session opened.
    connected_at: float = field(default_factory=now)
    #: Loop-clock time of the last heartbeat (or of the hello).
    last_seen: float = 0.0
    #: Wall-clock time of the last heartbeat (or of the hello).
    last_heartbeat: float = field(default_factory=now)
    in_flight: int = 0
    polls_done: int = 0
    nats_connected: bool = True
    intake_paused: bool = False
    autonomous: bool = False
    spooled: int = 0
    results_dropped: int = 0
    heartbeats: int = 0
    #: Wall-clock time the minion says it last had a working session (0: never).
    last_connected_at: float = 0.0
    #: Polls it runs at once (from its hello; 0: unknown).
    capacity: int = 0
    #: The identity its certificate names (``None``: the plaintext development mode).
    identity: Identity | None = None
    #: Serial number of that certificate.
    serial: int | None = None
    #: Set when a newer session of the same system id replaces this one.
    replaced: asyncio.Event = field(default_factory=asyncio.Event)
    #: The gRPC stream of this session is open.
    open: bool = True
    #: The session's handler waits for the state keeper (back-pressure): not silent.
    busy: bool = False
    #: The registry's verdict (what ListMinions and the events say).
    up: bool = True
    down_since: float | None = None
    down_reason: str = ""
    #: Store-and-forward: digest of the schedule this session was sent, and when checked.
    schedule_digest: str = ""
    schedule_checked: float = 0.0
    #: Loop-clock time of the last ``heartbeat updated`` event about this minion.
    heartbeat_event_at: float = 0.0


class MinionRegistry:
    """Minions by system id, their liveness, and the events about them."""

    def __init__(
        self,
        heartbeat_interval: float,
        misses: int,
        *,
        retention: float = RETENTION,
        max_records: int = MAX_RECORDS,
        heartbeat_events: float | None = None,
    ) -> None:
        self.heartbeat_interval = heartbeat_interval
        #: Every live minion gets a ``heartbeat updated`` event this often (``None``: never).
        self.heartbeat_events = heartbeat_events
        self.misses = misses
        self.retention = retention
        self.max_records = max_records
        self._minions: dict[str, MinionSession] = {}
        #: Location → reachable (True), unreachable (False); absent: not seen yet.
        self._locations: dict[str, bool] = {}
        self._events: deque[Event] = deque()
        self._expire: deque[str] = deque()
        self._wake = asyncio.Event()
        #: Loop-clock time the registry was created (the scheduler's start).
        self._started = _loop_time()
        self.events_dropped = 0

    @property
    def timeout(self) -> float:
        """Silence after which a minion counts as gone."""
        return self.heartbeat_interval * self.misses

    # -- sessions (called by the ResultSink) ------------------------------------------

    def held_by_other(self, session: MinionSession) -> MinionSession | None:
        """The session of another certificate that holds ``session``'s system id, if any.

        A certified system id belongs to its identity while that minion is UP
        (its session open, or broken less than a heartbeat window ago): a
        certificate of another location naming the same system id is refused
        rather than let displace it, even during a reconnect. Once the holder
        is DOWN, the new one may take the record (a minion moved, with a new
        certificate).
        """
        old = self._minions.get(session.system_id)
        if (
            old is not None
            and (old.open or old.up)
            and old.identity is not None
            and old.identity != session.identity
        ):
            return old
        return None

    def register(self, session: MinionSession) -> None:
        """A session opened (hello accepted). An older session of the same minion is told to end."""
        loop_now = _loop_time()
        session.last_seen = loop_now
        session.open = session.up = True
        old = self._minions.get(session.system_id)
        if old is not None and old.open:
            old.replaced.set()
        self._minions[session.system_id] = session
        if old is not None and old.up:
            if old.location != session.location:
                # Moved: for the old location it is gone.
                log.info(
                    "minion %s moved from %s to %s",
                    session.system_id,
                    old.location,
                    session.location,
                )
                self._after_down(old.location, session.system_id)
                self._came_up(session, "moved")
            else:
                log.info("minion %s reconnected (location %s)", session.system_id, session.location)
        elif old is None and self._resumed(session):
            # The scheduler restarted, the minion did not go away: no event.
            log.info(
                "minion %s resumed its session (location %s, version %s)",
                session.system_id,
                session.location,
                session.version,
            )
            self._location_up(session)
        else:
            self._came_up(session, "connected")
        self._update_gauge()

    def _resumed(self, session: MinionSession) -> bool:
        if session.last_connected_at <= 0:
            return False
        return 0 <= now() - session.last_connected_at <= self.timeout

    def unregister(self, session: MinionSession) -> None:
        """Stream ended: The minion stays known; the sweeper decides when it is DOWN."""
        session.open = False
        if self._minions.get(session.system_id) is session:
            log.info("minion %s: session closed (location %s)", session.system_id, session.location)
            self._wake.set()

    def touch(self, session: MinionSession) -> None:
        """Note a sign of life. A minion marked DOWN whose stream survived comes back UP."""
        session.last_seen = _loop_time()
        session.last_heartbeat = now()
        if not session.up and self._minions.get(session.system_id) is session:
            self._came_up(session, "heartbeats resumed")
            self._update_gauge()

    def goodbye(self, session: MinionSession, reason: str) -> None:
        """The minion is stopping on purpose: DOWN now, not after missed heartbeats."""
        if self._minions.get(session.system_id) is session and session.up:
            self._mark_down(
                session,
                f"minion stopped: {reason}" if reason else "minion stopped",
                planned=True,
            )
            self._update_gauge()

    # -- queries -------------------------------------------------------------------------

    def is_live(self, session: MinionSession) -> bool:
        """The registry's verdict: UP (``True``) or DOWN."""
        return session.up

    def _usable(self, location: str) -> Iterator[MinionSession]:
        """Minions at ``location`` that can receive requests and deliver results now."""
        loop_now = _loop_time()
        return (
            s
            for s in self._minions.values()
            if s.location == location
            and s.up
            and s.open
            and s.nats_connected
            and loop_now - s.last_seen <= self.timeout
        )

    def available(self, location: str) -> bool:
        """True when a minion at ``location`` can receive requests and deliver results now."""
        return any(True for _ in self._usable(location))

    def capacity(self, location: str) -> int | None:
        """Polls the live minions of ``location`` run at once (``None``: unbounded/unknown)."""
        total = 0
        for s in self._usable(location):
            if s.capacity <= 0:
                return None
            total += s.capacity
        return total or None

    def reachable(self, location: str) -> bool | None:
        """Whether a minion serves ``location`` (``None``: not known yet)."""
        return self._locations.get(location)

    def get(self, system_id: str) -> MinionSession | None:
        """The record of one minion."""
        return self._minions.get(system_id)

    def sessions(self) -> list[MinionSession]:
        """Every known minion (UP and DOWN), sorted by location then system id."""
        return sorted(self._minions.values(), key=lambda s: (s.location, s.system_id))

    # -- transitions -----------------------------------------------------------------------

    def _came_up(self, session: MinionSession, how: str) -> None:
        log.info(
            "minion %s up (%s; location %s, version %s)",
            session.system_id,
            how,
            session.location,
            session.version,
        )
        self._queue_event(
            make_event(
                "minion",
                "up",
                source=SOURCE,
                type_id=session.system_id,
                location=session.location,
                systemId=session.system_id,
                version=session.version or None,
            )
        )
        session.up = True
        session.down_since = None
        session.down_reason = ""
        # ``minion up`` says it is alive now; the periodic report starts from here.
        session.heartbeat_event_at = _loop_time()
        self._location_up(session)

    def _location_up(self, session: MinionSession) -> None:
        loc = session.location
        if self._locations.get(loc) is False:
            log.info("location %s reachable again (minion %s)", loc, session.system_id)
            self._queue_event(
                make_event(
                    "location",
                    "reachable",
                    source=SOURCE,
                    type_id=loc,
                    location=loc,
                    systemId=session.system_id,
                )
            )
        self._locations[loc] = True

    def _mark_down(self, session: MinionSession, reason: str, planned: bool = False) -> None:
        """``session`` is DOWN for ``reason``; ``planned``: it said goodbye (a clean stop)."""
        session.up = False
        session.down_since = now()
        session.down_reason = reason
        log.warning("minion %s down (location %s): %s", session.system_id, session.location, reason)
        self._queue_event(
            make_event(
                "minion",
                "down",
                source=SOURCE,
                type_id=session.system_id,
                location=session.location,
                systemId=session.system_id,
                reason=reason,
            )
        )
        self._after_down(session.location, session.system_id, planned)

    def _after_down(self, location: str, system_id: str, planned: bool = False) -> None:
        if any(
            s.up and s.location == location
            for s in self._minions.values()
            if s.system_id != system_id
        ):
            return
        self._location_down(location, planned)

    def _location_down(self, location: str, planned: bool = False) -> None:
        if self._locations.get(location) is False:
            return
        self._locations[location] = False
        # The last minion said goodbye (``vigil up`` stopping, a planned restart):
        # the location cannot be polled, but nothing failed; a critical here is
        # noise an operator learns to ignore on every clean stop.
        reason = PLANNED_STOP_REASON if planned else unreachable_reason(location)
        if planned:
            log.info("location %s unreachable: %s", location, reason)
        else:
            log.warning("%s", reason)
        self._queue_event(
            make_event(
                "location",
                "unreachable",
                source=SOURCE,
                type_id=location,
                location=location,
                severity=PLANNED_STOP_SEVERITY if planned else None,
                reason=reason,
            )
        )
        self._expire.append(location)

    def _queue_event(self, event: Event) -> None:
        if len(self._events) >= MAX_PENDING_EVENTS:
            # Only reachable when the store has been down for very long; say so.
            self._events.popleft()
            self.events_dropped += 1
            log.error(
                "minion/location events: the store is unavailable and the queue is full; dropped 1"
            )
        self._events.append(event)
        self._wake.set()

    # -- the sweeper ----------------------------------------------------------------------

    def sweep(self, loop_now: float | None = None) -> None:
        """Mark silent minions DOWN and forget old DOWN ones (called by :meth:`run`)."""
        loop_now = _loop_time() if loop_now is None else loop_now
        changed = False
        for s in list(self._minions.values()):
            if s.busy and s.open:
                continue  # stuck behind our own back-pressure, not silent
            if s.up and loop_now - s.last_seen > self.timeout:
                silent = loop_now - s.last_seen
                missed = int(silent / self.heartbeat_interval)
                how = "its session closed and " if not s.open else ""
                self._mark_down(s, f"{how}no heartbeat for {silent:.1f}s ({missed} missed)")
                changed = True
        self._prune()
        if changed:
            self._update_gauge()
        if self.heartbeat_events is not None:
            self._report_heartbeats(loop_now, self.heartbeat_events)

    def _report_heartbeats(self, loop_now: float, every: float) -> None:
        # RackHD's periodic heartbeat, one per live minion per period: a consumer
        # can tell a quiet site from a silent pipeline without polling ListMinions.
        for s in self._minions.values():
            if not s.up or loop_now - s.heartbeat_event_at < every:
                continue
            s.heartbeat_event_at = loop_now
            self._queue_event(
                make_event(
                    "heartbeat",
                    "updated",
                    source=SOURCE,
                    type_id=s.system_id,
                    location=s.location,
                    component="minion",
                    systemId=s.system_id,
                    version=s.version or None,
                    inFlight=s.in_flight,
                    pollsDone=s.polls_done,
                    lastHeartbeatAt=iso(s.last_heartbeat),
                )
            )

    def scan_locations(self, locations: Iterable[str]) -> None:
        """After the start-up grace: a location with services and no minion seen is unreachable."""
        for loc in set(locations):
            if loc not in self._locations:
                self._location_down(loc)

    def _prune(self) -> None:
        wall = now()
        down = sorted(
            (s for s in self._minions.values() if not s.up and not s.open),
            key=lambda s: s.down_since or 0.0,
        )
        excess = len(self._minions) - self.max_records
        for s in down:
            if excess > 0 or wall - (s.down_since or wall) > self.retention:
                del self._minions[s.system_id]
                excess -= 1

    def lost_location(self) -> str | None:
        """The next location whose pending polls are to end UNKNOWN (it is still unreachable)."""
        while self._expire:
            location = self._expire.popleft()
            if self._locations.get(location) is False:
                return location
        return None

    def take_events(self) -> list[Event]:
        """The minion/location events waiting for the store, oldest first."""
        batch = list(self._events)
        self._events.clear()
        return batch

    def return_events(self, batch: list[Event]) -> None:
        """Events the store did not take: back at the front, in order, to be retried."""
        self._events.extendleft(reversed(batch))

    async def idle(self, period: float) -> None:
        """Wait up to ``period`` seconds, less if something happened the sweeper must handle."""
        self._wake.clear()
        await wait_set(self._wake, period)

    def _update_gauge(self) -> None:
        counts: dict[str, int] = {}
        for s in self._minions.values():
            if s.up:
                counts[s.location] = counts.get(s.location, 0) + 1
        metrics.MINIONS.clear()
        for loc, n in counts.items():
            metrics.MINIONS.labels(loc).set(n)


def _loop_time() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        # Built outside a loop (a test, a tool): the loop clock is time.monotonic.
        import time

        return time.monotonic()
