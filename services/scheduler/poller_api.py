"""``vigil.v1.Poller``: what operators ask the scheduler."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from vigil.v1 import common_pb2, poller_pb2, poller_pb2_grpc

from services.core import paging
from services.core.access.principal import Visibility, caller
from services.core.access.visibility import sees_location
from services.core.errors import DeadlineExceededError, InvalidArgumentError, NotFoundError
from services.core.grpcerrors import handle_errors
from services.core.limits import SchedulerLimits
from services.core.status import Status, status_from_pb, status_to_pb
from services.core.timeutil import request_timestamp, set_timestamp, to_duration
from services.scheduler.assurance.keeper import StateKeeper
from services.scheduler.dispatcher import Dispatcher
from services.scheduler.minions import MinionRegistry
from services.scheduler.model import ServiceKey, ServiceRuntime
from services.scheduler.policy import DEFAULT_POLICY
from services.scheduler.store import OutageRow, SchedulerStore

Ctx = grpc.aio.ServicerContext[Any, Any]

POLLER = "vigil.v1.Poller"


def visibility(method: str) -> Visibility:
    """The caller's visibility through ``vigil.v1.Poller/<method>``."""
    return caller().visibility(f"{POLLER}/{method}")


def service_ref(key: ServiceKey) -> common_pb2.ServiceRef:
    """The wire form of a service key."""
    return common_pb2.ServiceRef(node_id=key.node_id, ip=key.ip, service=key.service)


def service_status(rt: ServiceRuntime, held: bool = False) -> poller_pb2.ServiceStatus:
    """The wire form of a service's state (``held``: not polled because its interface is down)."""
    msg = poller_pb2.ServiceStatus(
        service=service_ref(rt.key),
        location=rt.spec.location,
        monitor=rt.spec.monitor,
        status=status_to_pb(rt.status),
        last_poll_status=status_to_pb(rt.last_poll_status),
        last_reason=rt.last_reason,
        response_time_ms=rt.response_time_ms,
        values=rt.values,
        open_outage_id=rt.open_outage_id or 0,
        interval=to_duration(rt.spec.interval),
        outage_cause=rt.outage_cause if rt.outage is not None else "",
        paused=rt.paused,
        stale=rt.stale,
        flapping=rt.flapping,
        polling_stopped=rt.polling_stopped,
        confirming=rt.suspect,
        package=(rt.spec.policy or DEFAULT_POLICY).package,
        held_by_outage=held,
    )
    set_timestamp(msg.status_since, rt.status_since)
    set_timestamp(msg.last_poll_at, rt.last_poll_at)
    return msg


def outage_pb(o: OutageRow) -> poller_pb2.Outage:
    """The wire form of an outage."""
    msg = poller_pb2.Outage(
        id=o.id,
        service=service_ref(o.key),
        lost_event_id=o.lost_event_id,
        reason=o.reason,
        regained_event_id=o.regained_event_id or "",
        close_reason=o.close_reason or "",
        cause=o.cause,
        cause_event_id=o.cause_event_id or "",
    )
    set_timestamp(msg.opened_at, o.opened_at)
    set_timestamp(msg.closed_at, o.closed_at)
    return msg


def _key_token(key: ServiceKey, filters: Any) -> str:
    return paging.encode_token([key.node_id, key.ip, key.service], filters)


def canonical_ip(text: str, field: str) -> str:
    """``text`` as the inventory spells addresses (``str(ip_address)``), or INVALID_ARGUMENT.

    An address that cannot exist is the caller's mistake, not an unknown
    service: NOT_FOUND (or an empty page) would hide the typo. The canonical
    form lets ``0:0::1`` find the service kept under ``::1``.
    """
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        shown = text if len(text) <= 64 else text[:64] + "…"
        raise InvalidArgumentError(field, f"{shown!r} is not an IP address") from None


def require_key(ref: common_pb2.ServiceRef, field: str = "service") -> ServiceKey:
    """A complete service key from a request, or INVALID_ARGUMENT naming the wrong part."""
    for name in ("node_id", "ip", "service"):
        if not getattr(ref, name):
            raise InvalidArgumentError(f"{field}.{name}", "is required")
    return ServiceKey(ref.node_id, canonical_ip(ref.ip, f"{field}.ip"), ref.service)


class PollerServicer(poller_pb2_grpc.PollerServicer):
    """Reads the scheduler's live state and the store; polls now and pauses.

    A scoped caller (docs/security.md, "Scopes") is shown only the services,
    outages, results and minions of its scope, filtered before paging; a
    service outside it is NOT_FOUND for GetService, PollNow and SetPaused,
    exactly like an unknown one. A minion belongs to its whole location: a
    caller limited to some node ids sees no minion.
    """

    def __init__(
        self,
        services: Mapping[ServiceKey, ServiceRuntime],
        store: SchedulerStore,
        registry: MinionRegistry,
        dispatcher: Dispatcher | None = None,
        keeper: StateKeeper | None = None,
        version: Callable[[], int] | None = None,
        limits: SchedulerLimits | None = None,
    ) -> None:
        self.services = services
        self.store = store
        self.registry = registry
        self.dispatcher = dispatcher
        self.keeper = keeper
        self.limits = limits or SchedulerLimits.from_settings()
        # Sorting 100k keys per page request is wasteful: keep the sorted
        # view until the inventory changes.
        self._version = version
        self._sorted: tuple[object, list[ServiceKey]] | None = None

    def _sorted_keys(self) -> list[ServiceKey]:
        stamp = (self._version() if self._version else None, len(self.services))
        if self._sorted is None or self._sorted[0] != stamp or stamp[0] is None:
            self._sorted = (stamp, sorted(self.services))
        return self._sorted[1]

    def _status(self, rt: ServiceRuntime) -> poller_pb2.ServiceStatus:
        held = (
            self.keeper is not None
            and not rt.paused
            and not rt.polling_stopped
            and not self.keeper.topology.polled(rt)
        )
        msg = service_status(rt, held)
        # A store refusing writes holds results back: say this state may be stale.
        if self.store.degraded_since is not None:
            set_timestamp(msg.store_degraded_since, self.store.degraded_since)
            msg.store_degraded_reason = self.store.degraded_reason
        return msg

    def _service(self, ref: common_pb2.ServiceRef, has: bool, method: str) -> ServiceRuntime:
        if not has:
            raise InvalidArgumentError("service", "is required")
        key = require_key(ref)
        rt = self.services.get(key)
        # Outside the caller's scope is answered as unknown: never reveal that it exists.
        if rt is None or not visibility(method).sees(rt.spec.location, key.node_id):
            raise NotFoundError(f"service {key} is not monitored")
        return rt

    def _visible_nodes(self, vis: Visibility) -> list[str] | None:
        """The node ids ``vis`` sees (``None``: all of them, no filter needed).

        A node's location is its current one in the inventory (the keeper's
        topology); without a keeper, the locations of the services.
        """
        if vis.unrestricted:
            return None
        if self.keeper is not None:
            where = {n: st.location for n, st in self.keeper.topology.nodes.items()}
        else:
            where = {k.node_id: rt.spec.location for k, rt in self.services.items()}
        return [n for n, loc in where.items() if vis.sees(loc, n)]

    @handle_errors
    async def PollNow(
        self, request: poller_pb2.PollNowRequest, context: Ctx
    ) -> poller_pb2.PollNowResponse:
        self.limits.poll_now.admit(context)
        rt = self._service(request.service, request.HasField("service"), "PollNow")
        assert self.dispatcher is not None and self.keeper is not None
        rid = self.dispatcher.poll_now(rt.key, urgent=True)
        if rid is None:
            raise NotFoundError(f"service {rt.key} is not monitored")
        waiter = self.keeper.wait_result(rid)
        try:
            # The poll's own TTL bounds the wait; the margin covers the trip back.
            async with asyncio.timeout(rt.spec.ttl + 10.0):
                done = await waiter
        except TimeoutError:
            raise DeadlineExceededError(f"no result for request {rid}") from None
        return poller_pb2.PollNowResponse(service=self._status(done), request_id=rid)

    @handle_errors
    async def SetPaused(
        self, request: poller_pb2.SetPausedRequest, context: Ctx
    ) -> poller_pb2.ServiceStatus:
        rt = self._service(request.service, request.HasField("service"), "SetPaused")
        assert self.dispatcher is not None
        self.dispatcher.set_paused(rt.key, request.paused)
        return self._status(rt)

    @handle_errors
    async def ListResults(
        self, request: poller_pb2.ListResultsRequest, context: Ctx
    ) -> poller_pb2.ListResultsResponse:
        since = request_timestamp(request.since, "since") if request.HasField("since") else None
        until = request_timestamp(request.until, "until") if request.HasField("until") else None
        if since is not None and until is not None and until <= since:
            raise InvalidArgumentError("until", "must be after since")
        ip = canonical_ip(request.ip, "ip") if request.ip else None
        filters = [request.node_id, request.ip, request.service, since, until]
        size = paging.page_size(request.page_size)
        before = paging.decode_int(request.page_token, filters)
        rows, total = await self.store.list_results(
            node_id=request.node_id or None,
            ip=ip,
            service=request.service or None,
            since=since,
            until=until,
            before_id=before,
            limit=size + 1,
            node_ids=self._visible_nodes(visibility("ListResults")),
        )
        more = len(rows) > size
        rows = rows[:size]
        out = []
        for r in rows:
            m = poller_pb2.Result(
                id=r.id,
                service=service_ref(r.key),
                status=status_to_pb(Status.__members__.get(r.status)),
                reason=r.reason,
                response_time_ms=r.response_time_ms,
                values=r.values,
                system_id=r.system_id,
            )
            set_timestamp(m.at, r.at)
            out.append(m)
        return poller_pb2.ListResultsResponse(
            results=out,
            next_page_token=paging.encode_token(rows[-1].id, filters) if more and rows else "",
            total_size=total,
        )

    @handle_errors
    async def ListServices(
        self, request: poller_pb2.ListServicesRequest, context: Ctx
    ) -> poller_pb2.ListServicesResponse:
        if request.status and status_from_pb(request.status) is None:
            raise InvalidArgumentError("status", f"unknown value {request.status}")
        filters = [request.node_id, request.location, request.status]
        size = paging.page_size(request.page_size)
        after = paging.decode_strs(request.page_token, filters, 3)
        want = status_from_pb(request.status)
        vis = visibility("ListServices")
        matching = [
            key
            for key in self._sorted_keys()
            if (rt := self.services.get(key)) is not None
            and (not request.node_id or key.node_id == request.node_id)
            and (not request.location or rt.spec.location == request.location)
            and (want is None or rt.status is want)
            and (vis.unrestricted or vis.sees(rt.spec.location, key.node_id))
        ]
        start = 0
        if after is not None:
            last = ServiceKey(*after)
            start = next((i for i, k in enumerate(matching) if k > last), len(matching))
        page = matching[start : start + size]
        more = start + size < len(matching)
        return poller_pb2.ListServicesResponse(
            services=[self._status(self.services[k]) for k in page],
            next_page_token=_key_token(page[-1], filters) if more and page else "",
            total_size=len(matching),
        )

    @handle_errors
    async def GetService(
        self, request: poller_pb2.GetServiceRequest, context: Ctx
    ) -> poller_pb2.ServiceStatus:
        return self._status(
            self._service(request.service, request.HasField("service"), "GetService")
        )

    @handle_errors
    async def ListOutages(
        self, request: poller_pb2.ListOutagesRequest, context: Ctx
    ) -> poller_pb2.ListOutagesResponse:
        states = {
            poller_pb2.OUTAGE_STATE_UNSPECIFIED: None,
            poller_pb2.OUTAGE_STATE_OPEN: "open",
            poller_pb2.OUTAGE_STATE_CLOSED: "closed",
        }
        if request.state not in states:
            raise InvalidArgumentError("state", f"unknown value {request.state}")
        filters = [request.state, request.node_id, request.service]
        size = paging.page_size(request.page_size)
        before = paging.decode_int(request.page_token, filters)
        rows, total = await self.store.list_outages(
            state=states[request.state],
            node_id=request.node_id or None,
            service=request.service or None,
            before_id=before,
            limit=size + 1,
            node_ids=self._visible_nodes(visibility("ListOutages")),
        )
        more = len(rows) > size
        rows = rows[:size]
        return poller_pb2.ListOutagesResponse(
            outages=[outage_pb(o) for o in rows],
            next_page_token=paging.encode_token(rows[-1].id, filters) if more else "",
            total_size=total,
        )

    @handle_errors
    async def ListMinions(
        self, request: poller_pb2.ListMinionsRequest, context: Ctx
    ) -> poller_pb2.ListMinionsResponse:
        filters = [request.location]
        size = paging.page_size(request.page_size)
        after = paging.decode_strs(request.page_token, filters, 2)
        vis = visibility("ListMinions")
        sessions = [
            s
            for s in self.registry.sessions()
            if (not request.location or s.location == request.location)
            # A minion serves its whole location: seen by who sees the whole location.
            and (vis.unrestricted or sees_location(vis, s.location))
        ]
        start = 0
        if after is not None:
            start = next(
                (i for i, s in enumerate(sessions) if [s.location, s.system_id] > after),
                len(sessions),
            )
        page = sessions[start : start + size]
        out = []
        for s in page:
            m = poller_pb2.Minion(
                system_id=s.system_id,
                location=s.location,
                version=s.version,
                monitors=s.monitors,
                status=poller_pb2.MINION_STATUS_UP
                if self.registry.is_live(s)
                else poller_pb2.MINION_STATUS_DOWN,
                in_flight=s.in_flight,
                polls_done=s.polls_done,
                nats_connected=s.nats_connected,
            )
            set_timestamp(m.connected_at, s.connected_at)
            set_timestamp(m.last_heartbeat, s.last_heartbeat)
            out.append(m)
        more = start + size < len(sessions)
        return poller_pb2.ListMinionsResponse(
            minions=out,
            next_page_token=paging.encode_token([page[-1].location, page[-1].system_id], filters)
            if more and page
            else "",
            total_size=len(sessions),
        )
