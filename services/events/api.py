"""``vigil.v1.Events``: intake, history, live subscriptions, webhooks."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import grpc
from vigil.v1 import events_pb2, events_pb2_grpc

from services.core import paging
from services.core.events import INGEST_SUBJECT_PREFIX, SEVERITIES
from services.core.grpcerrors import InvalidArgument, NotFound, handle_errors
from services.core.timeutil import from_timestamp
from services.events import filters, metrics
from services.events.convert import event_pb, failure_pb, hook_pb, raw_from_pb
from services.events.hooks import NameTaken, TooManyHooks
from services.events.normalize import InvalidEvent, normalize
from services.events.store import EventFilter
from services.events.subscribe import Subscription, TooSlow, cut_off, start_position

if TYPE_CHECKING:
    from services.events.app import EventService

log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[Any, Any]

PUBLISH_SUBJECT = f"{INGEST_SUBJECT_PREFIX}.api"


class EventsServicer(events_pb2_grpc.EventsServicer):
    """Serves the Events API of one :class:`~services.events.app.EventService`."""

    def __init__(self, service: EventService) -> None:
        self.svc = service
        self.subscribers = 0

    # -- intake ----------------------------------------------------------------------------

    @handle_errors
    async def Publish(
        self, request: events_pb2.PublishRequest, context: Ctx
    ) -> events_pb2.PublishResponse:
        if not request.HasField("event"):
            raise InvalidArgument("event", "is required")
        if request.event.sequence:
            raise InvalidArgument("event.sequence", "is assigned by the event service; leave it 0")
        try:
            event = normalize(raw_from_pb(request.event), default_source="api")
        except InvalidEvent as exc:
            where = "event" if exc.field == "event" else f"event.{exc.field}"
            raise InvalidArgument(where, exc.problem) from None
        try:
            # The same durable path as every producer: the ingestor publishes and stores it.
            await self.svc.js.publish(
                PUBLISH_SUBJECT, event.to_json(), timeout=5.0, headers={"Nats-Msg-Id": event.id}
            )
        except Exception as exc:
            log.warning("Publish: cannot hand the event to JetStream: %s", exc)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"cannot reach the event stream: {exc}"
            )
        return events_pb2.PublishResponse(event=event_pb(event))

    # -- history ---------------------------------------------------------------------------

    @handle_errors
    async def ListEvents(
        self, request: events_pb2.ListEventsRequest, context: Ctx
    ) -> events_pb2.ListEventsResponse:
        if request.severity and request.severity not in SEVERITIES:
            raise InvalidArgument(
                "severity", f"{request.severity!r} is not one of {', '.join(SEVERITIES)}"
            )
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
        fingerprint = [flt.type, flt.action, flt.severity, flt.node_id, flt.location, since, until]
        size = paging.page_size(request.page_size)
        before = paging.decode_int(request.page_token, fingerprint)
        rows, total = await self.svc.store.list_events(flt, before_seq=before, limit=size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return events_pb2.ListEventsResponse(
            events=[event_pb(r.event, r.seq) for r in rows],
            next_page_token=paging.encode_token(rows[-1].seq, fingerprint) if more else "",
            total_size=total,
        )

    # -- live ------------------------------------------------------------------------------

    async def Subscribe(  # type: ignore[override]
        self, request: events_pb2.SubscribeRequest, context: Ctx
    ) -> None:
        s = self.svc.settings
        try:
            interests = filters.validate(request.filters)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self.subscribers >= s.max_subscribers:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many subscribers (limit {s.max_subscribers})",
            )
        # Counted from here (before any await), so concurrent calls cannot exceed the limit.
        self.subscribers += 1
        metrics.SUBSCRIBERS.inc()
        try:
            await self._stream(request, context, interests)
        finally:
            self.subscribers -= 1
            metrics.SUBSCRIBERS.dec()

    async def _stream(
        self, request: events_pb2.SubscribeRequest, context: Ctx, interests: list[filters.Interest]
    ) -> None:
        s = self.svc.settings
        after = request.after_sequence if request.HasField("after_sequence") else None
        try:
            position, last = await start_position(self.svc.js, after)
        except Exception as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"cannot reach the event stream: {exc}"
            )
        if after is not None and after > last:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"after_sequence: {after} is beyond the newest event ({last})",
            )
        sub = Subscription(
            self.svc.js,
            self.svc.store,
            context,
            interests,
            position,
            keepalive=s.subscribe_keepalive,
            stall_timeout=s.subscribe_stall_timeout,
        )
        try:
            await sub.run()
        except TooSlow:
            self.svc.subscribers_cut += 1
            log.info("subscriber cut off at sequence %d (too slow)", sub.position)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, cut_off(sub))
        except Exception as exc:  # the store failed while filling a gap, …: resumable
            log.warning("subscriber stream failed at sequence %d: %s", sub.position, exc)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"{exc}; resume after the last sequence received"
            )

    # -- webhooks --------------------------------------------------------------------------

    @handle_errors
    async def CreateHook(
        self, request: events_pb2.CreateHookRequest, context: Ctx
    ) -> events_pb2.Hook:
        interests = filters.validate(request.filters)
        try:
            row = await self.svc.hooks.create(request.name, request.url, interests, request.secret)
        except NameTaken as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except TooManyHooks as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except InvalidArgument:
            raise
        except Exception as exc:  # NATS or the store: nothing was kept (see HookManager.create)
            log.warning("CreateHook failed: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot create the hook now: {exc}")
        return hook_pb(row)

    @handle_errors
    async def ListHooks(
        self, request: events_pb2.ListHooksRequest, context: Ctx
    ) -> events_pb2.ListHooksResponse:
        size = paging.page_size(request.page_size)
        after = paging.decode_str(request.page_token, ["hooks"])
        rows, total = await self.svc.hooks.store.list_hooks(after_name=after, limit=size + 1)
        more = len(rows) > size
        rows = rows[:size]
        out = []
        for row in rows:
            live, backlog, in_flight = await self.svc.hooks.status(row)
            out.append(hook_pb(live, backlog=backlog, in_flight=in_flight))
        return events_pb2.ListHooksResponse(
            hooks=out,
            next_page_token=paging.encode_token(rows[-1].name, ["hooks"]) if more else "",
            total_size=total,
        )

    @handle_errors
    async def DeleteHook(
        self, request: events_pb2.DeleteHookRequest, context: Ctx
    ) -> events_pb2.DeleteHookResponse:
        if not request.id:
            raise InvalidArgument("id", "is required")
        if not await self.svc.hooks.delete(request.id):
            raise NotFound(f"id: no hook {request.id!r}")
        return events_pb2.DeleteHookResponse()

    @handle_errors
    async def ListHookFailures(
        self, request: events_pb2.ListHookFailuresRequest, context: Ctx
    ) -> events_pb2.ListHookFailuresResponse:
        if not request.hook_id:
            raise InvalidArgument("hook_id", "is required")
        if await self.svc.store.get_hook(request.hook_id) is None:
            raise NotFound(f"hook_id: no hook {request.hook_id!r}")
        size = paging.page_size(request.page_size)
        fingerprint = ["failures", request.hook_id]
        before = paging.decode_int(request.page_token, fingerprint)
        rows, total = await self.svc.store.list_failures(
            request.hook_id, before_id=before, limit=size + 1
        )
        more = len(rows) > size
        rows = rows[:size]
        return events_pb2.ListHookFailuresResponse(
            failures=[failure_pb(f) for f in rows],
            next_page_token=paging.encode_token(rows[-1].id, fingerprint) if more else "",
            total_size=total,
        )
