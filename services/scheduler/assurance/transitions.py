"""What the assurance rules decide, as values that :mod:`.persist` writes.

Memory is updated when a batch is computed; these values are the store's half
of it, replayed as a whole if the batch's transaction has to be retried. Hence
they hold an :class:`OutageRef` (filled in by the store) rather than an id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.core.events import Event
from services.scheduler.model import OutageRef, ServiceKey
from services.scheduler.store import DownElement


@dataclass(frozen=True, slots=True)
class OutageOpened:
    """An outage opens for ``key`` at ``at``; the store fills in ``ref.id``."""

    ref: OutageRef
    key: ServiceKey
    at: float
    reason: str
    #: The event that opened it (``service lost``, or the interface/node event).
    event_id: str
    #: What it is blamed on: "service", "interface" or "node".
    cause: str = "service"
    cause_event_id: str | None = None


@dataclass(frozen=True, slots=True)
class OutageClosed:
    """The outage ``ref`` closes at ``at`` (nothing to do if it never got an id)."""

    ref: OutageRef
    at: float
    reason: str
    event_id: str | None


@dataclass(frozen=True, slots=True)
class ElementDown:
    """An interface or a node is down (remembered across restarts)."""

    element: DownElement


@dataclass(frozen=True, slots=True)
class ElementUp:
    """An interface or a node is up again."""

    kind: str
    node_id: str
    ip: str


@dataclass(frozen=True, slots=True)
class EventsQueued:
    """Events for the outbox, in the same transaction as the outages they describe."""

    events: tuple[Event, ...]
    #: (event, data field, outage): the outage's id goes into the event once known.
    patch: tuple[tuple[Event, str, OutageRef], ...] = ()


Transition = OutageOpened | OutageClosed | ElementDown | ElementUp | EventsQueued


@dataclass(frozen=True, slots=True)
class PollNow:
    """Poll ``key`` out of schedule once the batch is written.

    ``urgent``: a critical-service check (short TTL). A non-urgent one also
    puts the service back on its schedule, which it may have left while held.
    """

    key: ServiceKey
    urgent: bool


@dataclass(slots=True)
class Outcome:
    """Everything one or more observations decided, in the order it was decided."""

    transitions: list[Transition] = field(default_factory=list)
    #: Services whose state row changed (written by the next flush).
    dirty: set[ServiceKey] = field(default_factory=set)
    #: Services whose state no longer justifies "stop polling" (the downtime verdict).
    resumed: set[ServiceKey] = field(default_factory=set)
    #: Services whose next due time changes (their status or confirmation changed).
    reschedule: set[ServiceKey] = field(default_factory=set)
    polls: list[PollNow] = field(default_factory=list)

    def add(self, other: Outcome) -> None:
        """Append ``other`` (decided after what is already here)."""
        # Most outcomes are empty (an UP service staying UP): keep those cheap.
        if other.transitions:
            self.transitions += other.transitions
        if other.dirty:
            self.dirty |= other.dirty
        if other.resumed:
            self.resumed |= other.resumed
        if other.reschedule:
            self.reschedule |= other.reschedule
        if other.polls:
            self.polls += other.polls

    def events(self, *events: Event, patch: tuple[tuple[Event, str, OutageRef], ...] = ()) -> None:
        """Queue events for the outbox; ``patch`` says where outage ids go once known."""
        self.transitions.append(EventsQueued(events, patch))
