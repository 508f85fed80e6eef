"""The common event format (DESIGN.md), its vocabulary and NATS subjects.

Producers (the scheduler, minions, external systems) hand *raw* events to the
event service on ``vigil.ingest.<source>``; the event service validates and
normalizes them and publishes them on
``vigil.events.<type>.<action>.<severity>.<node_id|_>``.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.common.timeutil import iso, now

FORMAT_VERSION = "1"
INGEST_SUBJECT_PREFIX = "vigil.ingest"
EVENTS_SUBJECT_PREFIX = "vigil.events"
INGEST_STREAM = "VIGIL_INGEST"
EVENTS_STREAM = "VIGIL_EVENTS"

SEVERITIES = ("critical", "major", "minor", "warning", "normal", "information")

#: (type, action) → default severity. The event catalogue (docs/events.md).
CATALOGUE: dict[tuple[str, str], str] = {
    ("service", "lost"): "major",
    ("service", "regained"): "normal",
    ("service", "flapping"): "warning",
    ("service", "settled"): "normal",
    ("interface", "down"): "major",
    ("interface", "up"): "normal",
    ("node", "down"): "critical",
    ("node", "up"): "normal",
    ("outage", "opened"): "minor",
    ("outage", "closed"): "normal",
    ("minion", "up"): "normal",
    ("minion", "down"): "major",
    ("location", "unreachable"): "critical",
    ("location", "reachable"): "normal",
    ("poller", "stale"): "warning",
    ("heartbeat", "updated"): "information",
    ("summary", "updated"): "information",
}

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
    data: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> bytes:
        """The wire form (camelCase keys, no nulls dropped: consumers see every field)."""
        return self.model_dump_json(by_alias=True).encode()

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
    """A producer-side event with a fresh id and the catalogue's default severity."""
    return Event(
        type=event_type,
        action=action,
        severity=severity or CATALOGUE.get((event_type, action), "information"),
        typeId=type_id,
        nodeId=node_id,
        location=location,
        createdAt=iso(created_at if created_at is not None else now()),
        source=source,
        data={k: v for k, v in data.items() if v is not None},
    )
