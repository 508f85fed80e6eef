"""``vigil.v1.Events``: event history (and, later, live delivery)."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from vigil.v1 import events_pb2, events_pb2_grpc

from services.common import paging
from services.common.events import SEVERITIES, Event
from services.common.grpcerrors import InvalidArgument, handle_errors
from services.common.timeutil import from_timestamp, parse_iso, set_timestamp
from services.events.store import EventFilter, EventStore

Ctx = grpc.aio.ServicerContext[Any, Any]


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
    )
    set_timestamp(msg.created_at, parse_iso(e.created_at))
    return msg


class EventsServicer(events_pb2_grpc.EventsServicer):
    """Serves the history from the store."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    @handle_errors
    async def ListEvents(  # noqa: N802
        self, request: events_pb2.ListEventsRequest, context: Ctx
    ) -> events_pb2.ListEventsResponse:
        if request.severity and request.severity not in SEVERITIES:
            raise InvalidArgument("severity", f"{request.severity!r} is not one of {', '.join(SEVERITIES)}")
        since = from_timestamp(request.since) if request.HasField("since") else None
        until = from_timestamp(request.until) if request.HasField("until") else None
        if since is not None and until is not None and until <= since:
            raise InvalidArgument("until", "must be after since")
        flt = EventFilter(
            type=request.type or None,
            action=request.action or None,
            severity=request.severity or None,
            node_id=request.node_id or None,
            location=request.location or None,
            since=since,
            until=until,
        )
        filters = [flt.type, flt.action, flt.severity, flt.node_id, flt.location, since, until]
        size = paging.page_size(request.page_size)
        before = paging.decode_token(request.page_token, filters)
        if before is not None and not isinstance(before, int):
            raise InvalidArgument("page_token", "not a token this server issued")
        rows, total = await self.store.list(flt, before_seq=before, limit=size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return events_pb2.ListEventsResponse(
            events=[event_pb(r.event, r.seq) for r in rows],
            next_page_token=paging.encode_token(rows[-1].seq, filters) if more else "",
            total_size=total,
        )
