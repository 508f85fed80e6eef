"""``vigil.v1.Events``: intake, history, live subscriptions, webhooks."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from typing import Any

import grpc
from nats.js import JetStreamContext
from vigil.v1 import events_pb2, events_pb2_grpc

from services.core import paging
from services.core.access.audit import AUDIT_TYPE
from services.core.access.principal import CURRENT, caller
from services.core.access.visibility import EventScope, describe
from services.core.config import EventsSettings
from services.core.errors import (
    DomainError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from services.core.events import INGEST_SUBJECT_PREFIX, SEVERITIES, Event
from services.core.grpcerrors import handle_errors
from services.core.limits import EventsLimits
from services.core.timeutil import request_timestamp
from services.core.tls import peer_identity
from services.events import filters, metrics
from services.events.convert import event_pb, failure_pb, hook_pb, raw_from_pb
from services.events.hooks.manager import HookManager, UrlTaken
from services.events.normalize import InvalidEvent, check_published, normalize
from services.events.store.history import EventFilter, HistoryStore
from services.events.store.hooks import HookViewer
from services.events.subscribe import Subscription, TooSlow, cut_off, start_position

log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[Any, Any]

PUBLISH_SUBJECT = f"{INGEST_SUBJECT_PREFIX}.api"
EVENTS = "vigil.v1.Events"


def hook_viewer(method: str) -> HookViewer | None:
    """Who manages hooks through ``vigil.v1.Events/<method>``: ``None`` for a caller
    that sees every hook, else the hooks it may see (docs/security.md, "Scopes")."""
    who = caller()
    if who.visibility(f"{EVENTS}/{method}").unrestricted:
        return None
    return HookViewer(owner=who.key, scope=EventScope.of(who))


def caller_source(context: Any) -> str:
    """The ``source`` of an event published by this call: who proved it.

    ``user:<name>`` or ``token:<name>`` for a bearer token, ``<role>:<name>`` of
    the certificate otherwise; ``api`` without either (the plaintext
    development mode has no identities).
    """
    principal = CURRENT.get()
    if principal is not None and principal.kind in ("user", "token"):
        return f"{principal.kind}:{re.sub(r'[^A-Za-z0-9_.-]', '_', principal.name)}"
    peer = peer_identity(context)
    if peer is None:
        return "api"
    identity, _ = peer
    if identity.location is not None:
        return f"{identity.role}:{identity.location}.{identity.name}"
    return f"{identity.role}:{identity.name}"


class EventsServicer(events_pb2_grpc.EventsServicer):
    """Serves the Events API over the event service's parts.

    A scoped caller (docs/security.md, "Scopes") reads only the events its
    :class:`~services.core.access.visibility.EventScope` admits (summaries
    sanitized), publishes only inside its scope, and manages only the hooks
    it may see (:func:`hook_viewer`); a hook it creates carries its scope.

    ``js`` is where Publish hands events (to the ingest stream, the same
    durable path as every producer) and where Subscribe reads them;
    ``history`` fills Subscribe's gaps and answers ListEvents; ``hooks``
    manages webhooks (its store answers the hook listings).
    """

    def __init__(
        self,
        js: JetStreamContext,
        history: HistoryStore,
        hooks: HookManager,
        settings: EventsSettings,
    ) -> None:
        self.js = js
        self.history = history
        self.hooks = hooks
        self.settings = settings
        #: Per caller identity (services.core.limits; docs/security.md, "Limits").
        self.limits = EventsLimits.from_settings(settings)
        self.subscribers_cut = 0
        #: Called when JetStream refused a publish (a stream may be gone): the
        #: service's stream keeper checks and re-creates at once.
        self.on_stream_trouble: Callable[[], None] | None = None

    # -- intake ----------------------------------------------------------------------------

    @handle_errors
    async def Publish(
        self, request: events_pb2.PublishRequest, context: Ctx
    ) -> events_pb2.PublishResponse:
        self.limits.publish.admit(context)
        if not request.HasField("event"):
            raise InvalidArgumentError("event", "is required")
        if request.event.sequence:
            raise InvalidArgumentError(
                "event.sequence", "is assigned by the event service; leave it 0"
            )
        try:
            event = check_published(normalize(raw_from_pb(request.event), default_source="api"))
        except InvalidEvent as exc:
            where = "event" if exc.field == "event" else f"event.{exc.field}"
            raise InvalidArgumentError(where, exc.problem) from None
        vis = caller().visibility(f"{EVENTS}/Publish")
        if not vis.unrestricted and not vis.sees(event.location, event.node_id):
            raise PermissionDeniedError(
                f"event: an event at location {event.location or '(none)'} on node "
                f"{event.node_id or '(none)'} lies outside the caller's scope ({describe(vis)})"
            )
        # Who produced it is who called: the caller's certificate, never what the event
        # claims (an operator cannot pass an event off as the scheduler's).
        event = event.model_copy(update={"source": caller_source(context)})
        try:
            # An id already in the history is a duplicate even past the ingest stream's
            # de-duplication window: the ingestor would drop it, so say so.
            stored = bool(await self.history.known_ids([event.id]))
        except Exception as exc:
            log.warning("Publish: cannot read the history: %s", exc)
            raise UnavailableError(f"cannot read the event history: {exc}") from exc
        if stored:
            return events_pb2.PublishResponse(event=event_pb(event), duplicate=True)
        try:
            # The same durable path as every producer: the ingestor publishes and stores it.
            ack = await self.js.publish(
                PUBLISH_SUBJECT, event.to_json(), timeout=5.0, headers={"Nats-Msg-Id": event.id}
            )
        except Exception as exc:
            log.warning("Publish: cannot hand the event to JetStream: %s", exc)
            if self.on_stream_trouble is not None:
                self.on_stream_trouble()
            raise UnavailableError(f"cannot reach the event stream: {exc}") from exc
        # Within the de-duplication window JetStream recognises the id itself (the first
        # copy may still be on its way to the history).
        return events_pb2.PublishResponse(event=event_pb(event), duplicate=bool(ack.duplicate))

    # -- history ---------------------------------------------------------------------------

    @handle_errors
    async def ListEvents(
        self, request: events_pb2.ListEventsRequest, context: Ctx
    ) -> events_pb2.ListEventsResponse:
        if request.severity and request.severity not in SEVERITIES:
            raise InvalidArgumentError(
                "severity", f"{request.severity!r} is not one of {', '.join(SEVERITIES)}"
            )
        since = request_timestamp(request.since, "since") if request.HasField("since") else None
        until = request_timestamp(request.until, "until") if request.HasField("until") else None
        if since is not None and until is not None and until <= since:
            raise InvalidArgumentError("until", "must be after since")
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
        scope = EventScope.of(method=f"{EVENTS}/ListEvents")
        if flt.type != AUDIT_TYPE:
            # The audit trail is listed when asked for by type (services/events/filters.py).
            scope = dataclasses.replace(scope, audit=False)
        rows, total = await self.history.list_events(
            flt, before_seq=before, limit=size + 1, scope=scope
        )
        more = len(rows) > size
        rows = rows[:size]
        return events_pb2.ListEventsResponse(
            events=[event_pb(scope.shown(r.event), r.seq) for r in rows],
            next_page_token=paging.encode_token(rows[-1].seq, fingerprint) if more else "",
            total_size=total,
        )

    # -- live ------------------------------------------------------------------------------

    @handle_errors
    async def Subscribe(  # type: ignore[override]
        self, request: events_pb2.SubscribeRequest, context: Ctx
    ) -> None:
        interests = filters.validate(request.filters)
        # Per caller and in total, counted from here (before any await), so concurrent
        # calls cannot exceed the limits.
        with self.limits.subscribers.hold(context):
            metrics.SUBSCRIBERS.inc()
            try:
                await self._stream(request, context, interests)
            finally:
                metrics.SUBSCRIBERS.dec()

    @property
    def subscribers(self) -> int:
        """Subscribe streams open now."""
        return self.limits.subscribers.open

    async def _stream(
        self, request: events_pb2.SubscribeRequest, context: Ctx, interests: list[filters.Interest]
    ) -> None:
        s = self.settings
        after = request.after_sequence if request.HasField("after_sequence") else None
        try:
            position, last = await start_position(self.js, after)
        except Exception as exc:
            raise UnavailableError(f"cannot reach the event stream: {exc}") from exc
        if after is not None and after > last:
            raise InvalidArgumentError(
                "after_sequence", f"{after} is beyond the newest event ({last})"
            )
        sub = Subscription(
            self.js,
            self.history,
            context,
            interests,
            position,
            keepalive=s.subscribe_keepalive,
            stall_timeout=s.subscribe_stall_timeout,
            scope=EventScope.of(method=f"{EVENTS}/Subscribe"),
        )
        try:
            await sub.run()
        except TooSlow:
            self.subscribers_cut += 1
            log.info("subscriber cut off at sequence %d (too slow)", sub.position)
            raise ResourceExhaustedError(cut_off(sub)) from None
        except Exception as exc:  # the store failed while filling a gap, …: resumable
            log.warning("subscriber stream failed at sequence %d: %s", sub.position, exc)
            raise UnavailableError(f"{exc}; resume after the last sequence received") from exc

    # -- webhooks --------------------------------------------------------------------------

    @handle_errors
    async def CreateHook(
        self, request: events_pb2.CreateHookRequest, context: Ctx
    ) -> events_pb2.Hook:
        self.limits.hook_writes.admit(context)
        interests = filters.validate(request.filters)
        who = caller()
        viewer = hook_viewer("CreateHook")
        try:
            # The hook carries what its creator may read, for as long as it lives.
            row = await self.hooks.create(
                request.name,
                request.url,
                interests,
                request.secret,
                owner=who.key,
                scope=EventScope.of(who),
            )
        except UrlTaken:
            if viewer is None:
                raise
            # Not the name of a hook the caller may not see.
            raise UrlTaken("url: already the URL of another hook") from None
        except DomainError:
            raise
        except Exception as exc:  # NATS or the store: nothing was kept (see HookManager.create)
            log.warning("CreateHook failed: %s", exc)
            raise UnavailableError(f"cannot create the hook now: {exc}") from exc
        return hook_pb(row)

    @handle_errors
    async def ListHooks(
        self, request: events_pb2.ListHooksRequest, context: Ctx
    ) -> events_pb2.ListHooksResponse:
        size = paging.page_size(request.page_size)
        after = paging.decode_str(request.page_token, ["hooks"])
        rows, total = await self.hooks.store.list_hooks(
            after_name=after, limit=size + 1, seen_by=hook_viewer("ListHooks")
        )
        more = len(rows) > size
        rows = rows[:size]
        out = []
        for row in rows:
            live, backlog, in_flight = await self.hooks.status(row)
            out.append(hook_pb(live, backlog=backlog, in_flight=in_flight))
        return events_pb2.ListHooksResponse(
            hooks=out,
            next_page_token=paging.encode_token(rows[-1].name, ["hooks"]) if more else "",
            total_size=total,
        )

    @handle_errors
    async def UpdateHook(
        self, request: events_pb2.UpdateHookRequest, context: Ctx
    ) -> events_pb2.Hook:
        self.limits.hook_writes.admit(context)
        if not request.id:
            raise InvalidArgumentError("id", "is required")
        paths = list(request.update_mask.paths)
        interests = filters.validate(request.filters) if "filters" in paths else []
        try:
            row = await self.hooks.update(
                request.id,
                paths,
                name=request.name,
                url=request.url,
                interests=interests,
                secret=request.secret,
                seen_by=hook_viewer("UpdateHook"),
            )
        except UrlTaken:
            if hook_viewer("UpdateHook") is None:
                raise
            raise UrlTaken("url: already the URL of another hook") from None
        except DomainError:
            raise
        except Exception as exc:  # the store: the old definition stands
            log.warning("UpdateHook failed: %s", exc)
            raise UnavailableError(f"cannot update the hook now: {exc}") from exc
        live, backlog, in_flight = await self.hooks.status(row)
        return hook_pb(live, backlog=backlog, in_flight=in_flight)

    @handle_errors
    async def DeleteHook(
        self, request: events_pb2.DeleteHookRequest, context: Ctx
    ) -> events_pb2.DeleteHookResponse:
        if not request.id:
            raise InvalidArgumentError("id", "is required")
        if not await self.hooks.delete(request.id, seen_by=hook_viewer("DeleteHook")):
            raise NotFoundError(f"id: no hook {request.id!r}")
        return events_pb2.DeleteHookResponse()

    @handle_errors
    async def ListHookFailures(
        self, request: events_pb2.ListHookFailuresRequest, context: Ctx
    ) -> events_pb2.ListHookFailuresResponse:
        if not request.hook_id:
            raise InvalidArgumentError("hook_id", "is required")
        viewer = hook_viewer("ListHookFailures")
        if await self.hooks.store.get_hook(request.hook_id, seen_by=viewer) is None:
            raise NotFoundError(f"hook_id: no hook {request.hook_id!r}")
        size = paging.page_size(request.page_size)
        fingerprint = ["failures", request.hook_id]
        before = paging.decode_int(request.page_token, fingerprint)
        rows, total = await self.hooks.store.list_failures(
            request.hook_id, before_id=before, limit=size + 1
        )
        more = len(rows) > size
        rows = rows[:size]
        scope = EventScope.of(method=f"{EVENTS}/ListHookFailures")
        failures = [failure_pb(f) for f in rows]
        for row, msg in zip(rows, failures, strict=True):
            # A parked event the caller may not read (an admin's audit trail, another
            # location's) shows as its id and kind only.
            if not scope.unrestricted and not scope.admits(Event.model_validate_json(row.payload)):
                msg.event.CopyFrom(
                    events_pb2.Event(id=msg.event.id, type=msg.event.type, action=msg.event.action)
                )
        return events_pb2.ListHookFailuresResponse(
            failures=failures,
            next_page_token=paging.encode_token(rows[-1].id, fingerprint) if more else "",
            total_size=total,
        )
