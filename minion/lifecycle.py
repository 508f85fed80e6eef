"""The minion's lifecycle, held in one value that every part of the minion reads.

    STARTING ──► RUNNING ──► DRAINING ──► STOPPED
        └──────────────────────┘   (stopped while starting)

The phase only moves forward. Beside it, the one link fact decided inside the
minion rather than read off a connection: whether it polls its location on its
own (``autonomous``, set by the store-and-forward poller). Connections report
their own state (the NATS client, the scheduler session's ``connected``).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


class Phase(enum.IntEnum):
    """Where the minion is in its life; ordered, so that it only moves forward."""

    #: Connecting; the scheduler must not count on it yet.
    STARTING = 0
    #: The NATS server has its subscriptions: requests published now reach it.
    RUNNING = 1
    #: Stopping: no new requests; the polls in flight finish, results are flushed.
    DRAINING = 2
    STOPPED = 3


@dataclass(slots=True)
class MinionState:
    """The phase and the link facts the minion's parts decide on."""

    phase: Phase = Phase.STARTING
    #: Polling the location's schedule on its own (the central site unreachable).
    autonomous: bool = False

    @property
    def stopping(self) -> bool:
        """``stop()`` has begun (or is done)."""
        return self.phase >= Phase.DRAINING

    @property
    def running(self) -> bool:
        """Subscribed and not stopping: requests reach it and are taken."""
        return self.phase is Phase.RUNNING

    def advance(self, phase: Phase) -> bool:
        """Move on to ``phase``; ``False`` (and no change) when that would go back."""
        if phase <= self.phase:
            return False
        log.debug("minion: %s -> %s", self.phase.name, phase.name)
        self.phase = phase
        return True
