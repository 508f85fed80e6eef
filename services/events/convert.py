"""Between the common format (pydantic / JSON) and the protobuf messages."""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct
from vigil.v1 import events_pb2

from services.core.events import Event
from services.core.timeutil import iso, parse_iso, request_timestamp, set_timestamp
from services.events.filters import Interest
from services.events.store.hooks import HookFailureRow, HookRow


def event_pb(e: Event, seq: int = 0) -> events_pb2.Event:
    """The protobuf form of an event."""
    data = Struct()
    data.update(e.data)
    msg = events_pb2.Event(
        version=e.version,
        id=e.id,
        type=e.type,
        action=e.action,
        severity=e.severity,
        type_id=e.type_id,
        node_id=e.node_id or "",
        location=e.location or "",
        source=e.source,
        data=data,
        sequence=seq,
        reduction_key=e.reduction_key,
    )
    set_timestamp(msg.created_at, parse_iso(e.created_at))
    return msg


def raw_from_pb(msg: events_pb2.Event) -> dict[str, Any]:
    """A protobuf event from a client → a raw event (only the fields it set)."""
    raw: dict[str, Any] = {}
    for key, value in (
        ("version", msg.version),
        ("id", msg.id),
        ("type", msg.type),
        ("action", msg.action),
        ("severity", msg.severity),
        ("typeId", msg.type_id),
        ("nodeId", msg.node_id),
        ("location", msg.location),
        ("source", msg.source),
        ("reductionKey", msg.reduction_key),
    ):
        if value:
            raw[key] = value
    if msg.HasField("created_at"):
        raw["createdAt"] = iso(request_timestamp(msg.created_at, "event.created_at"))
    if msg.HasField("data"):
        raw["data"] = MessageToDict(msg.data)
    return raw


def filter_pb(i: Interest) -> events_pb2.EventFilter:
    """An interest as the protobuf filter."""
    return events_pb2.EventFilter(
        type=i.type, action=i.action, severity=i.severity, node_id=i.node_id, location=i.location
    )


def hook_pb(h: HookRow, *, backlog: int = 0, in_flight: int = 0) -> events_pb2.Hook:
    """A hook without its secret, with its status."""
    status = events_pb2.HookStatus(
        last_error=h.last_error or "",
        backlog=backlog,
        delivered=h.delivered,
        failed=h.failed,
        in_flight=in_flight,
    )
    set_timestamp(status.last_success_at, h.last_success_at)
    set_timestamp(status.last_error_at, h.last_error_at)
    msg = events_pb2.Hook(
        id=h.id,
        name=h.name,
        url=h.url,
        filters=[filter_pb(Interest.from_dict(f)) for f in h.filters],
        status=status,
    )
    set_timestamp(msg.created_at, h.created_at)
    return msg


def failure_pb(f: HookFailureRow) -> events_pb2.HookFailure:
    """A parked delivery."""
    msg = events_pb2.HookFailure(
        id=f.id,
        hook_id=f.hook_id,
        event=event_pb(Event.model_validate_json(f.payload), f.seq),
        attempts=f.attempts,
        last_error=f.last_error,
    )
    set_timestamp(msg.first_attempt_at, f.first_attempt_at)
    set_timestamp(msg.failed_at, f.failed_at)
    return msg
