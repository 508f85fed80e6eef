"""The state projection: which events move which object (service, interface, node) to which state.

Ingest applies it to every stored batch (in the same transaction as the
events, see :mod:`services.events.store.states`) and :mod:`services.events.summary`
counts the result. Pure: no I/O, no store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.core.events import Event
from services.core.timeutil import parse_iso

#: The "state" of a service no longer monitored: its row is removed.
FORGET = "forget"
#: (type, action) → (kind of object, the state it is in afterwards).
STATE_OF: dict[tuple[str, str], tuple[str, str]] = {
    ("service", "lost"): ("service", "down"),
    ("outage", "opened"): ("service", "down"),
    ("service", "regained"): ("service", "up"),
    ("outage", "closed"): ("service", "up"),
    ("interface", "down"): ("interface", "down"),
    ("interface", "up"): ("interface", "up"),
    ("node", "down"): ("node", "down"),
    ("node", "up"): ("node", "up"),
    ("service", "deleted"): ("service", FORGET),
}
#: ``outage closed`` reasons meaning "this service is no longer monitored".
GONE_REASONS = frozenset({"unmanaged", "deleted"})


@dataclass(frozen=True, slots=True)
class ServiceState:
    """The last known state of a service (or interface, or node), as the event service saw it."""

    key: str
    location: str | None
    state: str
    kind: str = "service"
    node_id: str | None = None


@dataclass(frozen=True, slots=True)
class StateChange:
    """What one event does to one object's state (``state`` may be :data:`FORGET`)."""

    key: str
    kind: str
    state: str
    seq: int
    node_id: str | None
    location: str | None
    since: float


def state_key(kind: str, type_id: str) -> str:
    """The state's key: a service's typeId, ``interface:…`` / ``node:…`` otherwise."""
    return type_id if kind == "service" else f"{kind}:{type_id}"


def state_change(event: Event) -> tuple[str, str] | None:
    """``(kind, "up"|"down")``, ``("service", FORGET)`` (no longer monitored) or ``None``."""
    if not event.type_id:
        return None
    kind_action = (event.type, event.action)
    change = STATE_OF.get(kind_action)
    if change is None:
        return None
    if kind_action == ("outage", "closed") and event.data.get("reason") in GONE_REASONS:
        return ("service", FORGET)
    return change


def project(batch: Iterable[tuple[int, Event]]) -> dict[str, StateChange]:
    """The state changes of ``(sequence, event)`` pairs: the newest per object wins."""
    changes: dict[str, StateChange] = {}
    for seq, event in sorted(batch, key=lambda pair: pair[0]):
        change = state_change(event)
        if change is not None:
            kind, state = change
            key = state_key(kind, event.type_id)
            changes[key] = StateChange(
                key, kind, state, seq, event.node_id, event.location, parse_iso(event.created_at)
            )
    return changes
