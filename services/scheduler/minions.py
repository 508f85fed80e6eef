"""Which minions are connected, and so which locations can be polled.

A minion is live while its ResultSink session is open and its heartbeats
arrive; a location is *available* when at least one live minion there also
reports a working NATS connection (otherwise requests would go nowhere).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from services.common.timeutil import now
from services.scheduler import metrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MinionSession:
    system_id: str
    location: str
    version: str
    monitors: list[str]
    connected_at: float = field(default_factory=now)
    #: Loop-clock time of the last heartbeat (or of the hello).
    last_seen: float = 0.0
    last_heartbeat: float = field(default_factory=now)
    in_flight: int = 0
    polls_done: int = 0
    nats_connected: bool = True
    #: Set when a newer session of the same system id replaces this one.
    replaced: asyncio.Event = field(default_factory=asyncio.Event)


class MinionRegistry:
    """Live sessions by system id."""

    def __init__(self, heartbeat_interval: float, misses: int) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.misses = misses
        self._sessions: dict[str, MinionSession] = {}

    @property
    def timeout(self) -> float:
        """Silence after which a minion counts as gone."""
        return self.heartbeat_interval * self.misses

    def register(self, session: MinionSession) -> None:
        """Add a session; an older session of the same minion is told to end."""
        session.last_seen = asyncio.get_running_loop().time()
        old = self._sessions.get(session.system_id)
        if old is not None:
            log.info("minion %s reconnected; closing its previous session", session.system_id)
            old.replaced.set()
        self._sessions[session.system_id] = session
        log.info(
            "minion %s connected (location %s, version %s)",
            session.system_id,
            session.location,
            session.version,
        )
        self._update_gauge()

    def unregister(self, session: MinionSession) -> None:
        """Remove a session if it is still the current one for its minion."""
        if self._sessions.get(session.system_id) is session:
            del self._sessions[session.system_id]
            log.info("minion %s disconnected (location %s)", session.system_id, session.location)
            self._update_gauge()

    def touch(self, session: MinionSession) -> None:
        """Note a sign of life."""
        session.last_seen = asyncio.get_running_loop().time()
        session.last_heartbeat = now()

    def is_live(self, session: MinionSession) -> bool:
        """Heard from within the heartbeat window."""
        return asyncio.get_running_loop().time() - session.last_seen <= self.timeout

    def available(self, location: str) -> bool:
        """True when a live minion at ``location`` can receive requests."""
        return any(
            s.location == location and s.nats_connected and self.is_live(s)
            for s in self._sessions.values()
        )

    def sessions(self) -> list[MinionSession]:
        """Every current session, sorted by location then system id."""
        return sorted(self._sessions.values(), key=lambda s: (s.location, s.system_id))

    def _update_gauge(self) -> None:
        counts: dict[str, int] = {}
        for s in self._sessions.values():
            counts[s.location] = counts.get(s.location, 0) + 1
        metrics.MINIONS.clear()
        for loc, n in counts.items():
            metrics.MINIONS.labels(loc).set(n)
