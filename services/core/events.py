"""The common event format (documented in docs/events.md), its vocabulary and NATS subjects.

Producers (the scheduler, minions, external systems) hand *raw* events to the
event service on ``vigil.ingest.<source>``; the event service validates and
normalizes them and publishes them on
``vigil.events.<type>.<action>.<severity>.<node_id|_>``.

:data:`KINDS` is the event catalogue, the single source of the vocabulary
(type, action), of each kind's default severity and of the data fields its
producers fill in; ``docs/events.md`` documents it (a test keeps the two in
step) and :data:`CATALOGUE` is its (type, action) → severity view.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.core.access.permissions import AUDIT_ACTIONS
from services.core.timeutil import iso, now

FORMAT_VERSION = "1"
INGEST_SUBJECT_PREFIX = "vigil.ingest"
EVENTS_SUBJECT_PREFIX = "vigil.events"
#: Core-NATS notices about raw events the event service rejected (not stored).
REJECTED_SUBJECT_PREFIX = "vigil.rejected"
INGEST_STREAM = "VIGIL_INGEST"
EVENTS_STREAM = "VIGIL_EVENTS"

SEVERITIES = ("critical", "major", "minor", "warning", "normal", "information")

#: The largest raw event the event service takes as it is (the JSON document).
MAX_EVENT_BYTES = 64 << 10
#: What an oversized event is cut down to: below :data:`MAX_EVENT_BYTES` by enough
#: for what is added after the cut (the outage ids the scheduler patches in, the
#: fields normalization fills in), so the published event stays within the limit.
FIT_EVENT_BYTES = MAX_EVENT_BYTES - 1024
#: Appended to a ``data`` value that was cut to make its event fit.
TRUNCATED = "…[truncated]"


@dataclass(frozen=True, slots=True)
class EventKind:
    """One (type, action) of the catalogue."""

    type: str
    action: str
    severity: str
    description: str
    #: Keys of ``data`` the producer fills in (documentation; not enforced).
    fields: tuple[str, ...] = ()


_SERVICE_FIELDS = ("ip", "service", "monitor", "nodeLabel")
#: Set (to the reason, e.g. a maintenance window) when notifications about it are suppressed.
_SUPPRESSED = ("suppressed",)
#: How long an outage lasted, on the events that end it.
_DURATION = ("durationSeconds", "duration", "text")

#: The event catalogue (docs/events.md). Append here; never rename.
KINDS: tuple[EventKind, ...] = (
    EventKind(
        "service",
        "lost",
        "major",
        "A monitored service went down (an outage opens).",
        (*_SERVICE_FIELDS, "reason", "outageId", *_SUPPRESSED),
    ),
    EventKind(
        "service",
        "regained",
        "normal",
        "A service that was down answers again (its outage closes); durationSeconds, "
        "duration ('5m12s') and text ('service regained after 5m12s') say how long it was down.",
        (*_SERVICE_FIELDS, "outageId", *_DURATION, *_SUPPRESSED),
    ),
    EventKind(
        "service",
        "flapping",
        "warning",
        "A service changes state too often; its own lost/regained events pause.",
        (*_SERVICE_FIELDS, "changes", "window"),
    ),
    EventKind(
        "service",
        "settled",
        "normal",
        "A flapping service is stable again.",
        (*_SERVICE_FIELDS, "status"),
    ),
    EventKind(
        "service",
        "deleted",
        "information",
        "A service is no longer monitored (removed from the inventory or the configuration).",
        (*_SERVICE_FIELDS, "reason"),
    ),
    EventKind(
        "interface",
        "down",
        "major",
        "The critical service is down on an interface.",
        ("ip", "nodeLabel", "criticalService", "reason", *_SUPPRESSED),
    ),
    EventKind(
        "interface",
        "up",
        "normal",
        "The critical service answers again on an interface.",
        ("ip", "nodeLabel", "criticalService", *_SUPPRESSED),
    ),
    EventKind(
        "node",
        "down",
        "critical",
        "The critical service is down on every interface of a node.",
        ("nodeLabel", "criticalService", "reason", *_SUPPRESSED),
    ),
    EventKind(
        "node",
        "up",
        "normal",
        "A node that was down answers again.",
        ("nodeLabel", "criticalService", *_SUPPRESSED),
    ),
    EventKind(
        "outage",
        "opened",
        "minor",
        "An outage record was opened.",
        (*_SERVICE_FIELDS, "reason", "outageId", "lostEventId", *_SUPPRESSED),
    ),
    EventKind(
        "outage",
        "closed",
        "normal",
        "An outage record was closed (reason: 'service regained'; 'unmanaged' or 'deleted' "
        "when the service is no longer monitored); durationSeconds, duration and text say "
        "how long it was open.",
        (*_SERVICE_FIELDS, "reason", "outageId", "regainedEventId", *_DURATION, *_SUPPRESSED),
    ),
    EventKind(
        "minion", "up", "normal", "A minion connected (first heartbeat).", ("systemId", "version")
    ),
    EventKind(
        "minion",
        "down",
        "major",
        "A minion missed its heartbeats or stopped.",
        ("systemId", "reason"),
    ),
    EventKind(
        "location",
        "unreachable",
        "critical",
        "No live minion serves a location any more ('warning', reason 'minions stopped', "
        "when the last one said goodbye).",
        ("reason",),
    ),
    EventKind(
        "location", "reachable", "normal", "A minion serves the location again.", ("systemId",)
    ),
    EventKind(
        "poller",
        "stale",
        "warning",
        "A service was not polled within twice its interval (after a scheduler start, "
        "counted from the end of a start-up grace).",
        (*_SERVICE_FIELDS, "lastPollAt", "interval"),
    ),
    EventKind(
        "heartbeat",
        "updated",
        "information",
        "A live minion's periodic report (every scheduler.heartbeat_event_interval).",
        ("component", "systemId", "version", "inFlight", "pollsDone", "lastHeartbeatAt"),
    ),
    EventKind(
        "summary",
        "updated",
        "information",
        "Counts of services per state per location, emitted by the event service when they change.",
        ("locations", "total"),
    ),
)

# One ``audit <rpc>`` kind per call that changes something (services.core.access.audit).
KINDS += tuple(
    EventKind(
        "audit",
        action,
        "information",
        f"{method} was called (who, outcome, the request with secrets as ***); "
        "'warning' when it was refused or failed. Only admins see these.",
        ("principal", "rpc", "outcome", "message", "request", "peer"),
    )
    for action, method in AUDIT_ACTIONS.items()
)

#: (type, action) → default severity.
CATALOGUE: dict[tuple[str, str], str] = {(k.type, k.action): k.severity for k in KINDS}

_TOKEN_BAD = re.compile(r"[^A-Za-z0-9_-]")


def subject_token(value: str | None) -> str:
    """One NATS subject token: no dots, no wildcards, no spaces; ``_`` when empty."""
    if not value:
        return "_"
    return _TOKEN_BAD.sub("_", value)[:128]


def event_subject(event_type: str, action: str, severity: str, node_id: str | None) -> str:
    """``vigil.events.<type>.<action>.<severity>.<node_id|_>``."""
    tokens = (event_type, action, severity, node_id)
    return ".".join([EVENTS_SUBJECT_PREFIX, *(subject_token(t) for t in tokens)])


def reduction_key(event_type: str, action: str, type_id: str, node_id: str | None) -> str:
    """``<type>:<action>:<typeId with '/' as ':'>`` (else the node id, else ``_``).

    Repeats of "the same thing happening to the same object" share it, e.g.
    ``service:lost:node-17:10.0.0.5:HTTP``, so consumers can group them.
    """
    subject = type_id.replace("/", ":") if type_id else (node_id or "_")
    return f"{event_type}:{action}:{subject}"[:256]


def _json(value: Any) -> str:
    # The same compact, non-ASCII-preserving form as Event.to_json (pydantic's).
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _size(value: Any) -> int:
    return len(_json(value).encode())


def _cut(text: str, max_bytes: int) -> str:
    """The longest beginning of ``text`` whose JSON string form is at most ``max_bytes``."""
    if _size(text) <= max_bytes:
        return text
    lo, hi = 0, min(len(text), max(max_bytes, 0))  # a character takes at least one byte
    while lo < hi:  # binary search: escapes and multi-byte characters vary the cost
        mid = (lo + hi + 1) // 2
        if _size(text[:mid]) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def fit_document(doc: dict[str, Any], limit: int = FIT_EVENT_BYTES) -> dict[str, Any]:
    """An event document (wire form) whose JSON is at most ``limit`` bytes.

    Nothing is dropped silently: the largest ``data`` values are cut to one
    common size, each keeping its beginning followed by :data:`TRUNCATED` (a
    value that is not a string becomes its JSON text, cut the same way). If the number
    of data fields itself is the problem, the fields that do not fit are replaced
    by one ``"…[truncated]": "<n> more field(s)"``. The other fields (id, type,
    node, …) are kept as they are; they have bounds of their own. A document
    already within ``limit`` is returned unchanged.
    """
    total = _size(doc)
    if total <= limit:
        return doc
    data = doc.get("data")
    if not isinstance(data, dict) or not data:
        return doc
    data = dict(data)
    out = {**doc, "data": data}
    marker = _size(TRUNCATED)
    sizes = {k: _size(v) for k, v in data.items()}
    for _ in range(4):  # one round is exact but for rounding; a few more at most
        over = total - limit
        if over <= 0:
            return out
        # Water-filling: the largest cap every value can keep so the whole fits;
        # several large values share the cut instead of one losing everything.
        budget = sum(sizes.values()) - over
        ascending = sorted(sizes.values())
        cap = budget
        for i, size in enumerate(ascending):
            left = len(ascending) - i
            if size * left > budget:
                cap = budget // left
                break
            budget -= size
        if cap <= 2 * marker:
            break  # too many fields for their values to be cut: see below
        for key, size in sizes.items():
            if size <= cap:
                continue
            value = data[key]
            text = value if isinstance(value, str) else _json(value)
            if text.endswith(TRUNCATED):
                text = text[: -len(TRUNCATED)]
            data[key] = _cut(text, cap - marker) + TRUNCATED
            sizes[key] = _size(data[key])
        total = _size(out)
    total = _size(out)
    if total <= limit:
        return out
    # Too many (or too long) keys: keep the fields that fit, in order, and say how many not.
    kept: dict[str, Any] = {}
    out["data"] = kept
    room = limit - _size(out) - _size(TRUNCATED) - len('"x more field(s)"') - 24
    for k, v in data.items():
        share = _size(k) + 2 + sizes[k]
        if share > room:
            break
        kept[k] = v
        room -= share
    kept[TRUNCATED] = f"{len(data) - len(kept)} more field(s)"
    return out


class Event(BaseModel):
    """One event in the common format; serializes with camelCase keys."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    version: str = FORMAT_VERSION
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    type: str
    action: str
    severity: str = ""
    type_id: str = Field(default="", alias="typeId")
    node_id: str | None = Field(default=None, alias="nodeId")
    location: str | None = None
    created_at: str = Field(default_factory=lambda: iso(now()), alias="createdAt")
    source: str = ""
    #: Filled in by the event service when the producer leaves it empty.
    reduction_key: str = Field(default="", alias="reductionKey")
    data: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> bytes:
        """The wire form (camelCase keys, no nulls dropped: consumers see every field)."""
        return self.model_dump_json(by_alias=True).encode()

    def fitted(self, limit: int = FIT_EVENT_BYTES) -> Event:
        """This event, or a copy whose wire form fits ``limit`` (see :func:`fit_document`)."""
        wire = self.to_json()
        if len(wire) <= limit:
            return self
        return Event.model_validate(fit_document(json.loads(wire), limit))

    @property
    def subject(self) -> str:
        """Where the event service publishes this event."""
        return event_subject(self.type, self.action, self.severity, self.node_id)


def make_event(
    event_type: str,
    action: str,
    *,
    source: str,
    type_id: str = "",
    node_id: str | None = None,
    location: str | None = None,
    created_at: float | None = None,
    severity: str | None = None,
    **data: Any,
) -> Event:
    """A producer-side event with a fresh id and the catalogue's default severity.

    Its wire form is never larger than :data:`FIT_EVENT_BYTES`: an oversized
    data value is cut with :data:`TRUNCATED` here, at the producer, so the event
    service never has to reject it (and the outage it announces never goes unseen).
    """
    event = Event(
        type=event_type,
        action=action,
        severity=severity or CATALOGUE.get((event_type, action), "information"),
        type_id=type_id,
        node_id=node_id,
        location=location,
        created_at=iso(created_at if created_at is not None else now()),
        source=source,
        data={k: v for k, v in data.items() if v is not None},
    )
    return event.fitted()
