"""``vigil.v1.Poller``: what operators ask the scheduler."""

from __future__ import annotations

from typing import Any

import grpc
from vigil.v1 import common_pb2, poller_pb2, poller_pb2_grpc

from minion.monitors.base import Status
from services.common import paging
from services.common.grpcerrors import InvalidArgument, NotFound, handle_errors
from services.common.timeutil import set_timestamp, to_duration
from services.scheduler.minions import MinionRegistry
from services.scheduler.model import ServiceKey, ServiceRuntime
from services.scheduler.store import OutageRow, SchedulerStore

Ctx = grpc.aio.ServicerContext[Any, Any]

STATUS_PB = {
    Status.UP: common_pb2.POLL_STATUS_UP,
    Status.DOWN: common_pb2.POLL_STATUS_DOWN,
    Status.UNKNOWN: common_pb2.POLL_STATUS_UNKNOWN,
}
PB_STATUS = {v: k for k, v in STATUS_PB.items()}


def service_ref(key: ServiceKey) -> common_pb2.ServiceRef:
    """The wire form of a service key."""
    return common_pb2.ServiceRef(node_id=key.node_id, ip=key.ip, service=key.service)


def service_status(rt: ServiceRuntime) -> poller_pb2.ServiceStatus:
    """The wire form of a service's state."""
    msg = poller_pb2.ServiceStatus(
        service=service_ref(rt.key),
        location=rt.spec.location,
        monitor=rt.spec.monitor,
        status=STATUS_PB[rt.status],
        last_poll_status=STATUS_PB[rt.last_poll_status] if rt.last_poll_status else 0,
        last_reason=rt.last_reason,
        response_time_ms=rt.response_time_ms,
        values=rt.values,
        open_outage_id=rt.open_outage_id or 0,
        interval=to_duration(rt.spec.interval),
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
    )
    set_timestamp(msg.opened_at, o.opened_at)
    set_timestamp(msg.closed_at, o.closed_at)
    return msg


def _key_token(key: ServiceKey, filters: Any) -> str:
    return paging.encode_token([key.node_id, key.ip, key.service], filters)


def require_key(ref: common_pb2.ServiceRef, field: str = "service") -> ServiceKey:
    """A complete service key from a request, or INVALID_ARGUMENT naming the missing part."""
    for name in ("node_id", "ip", "service"):
        if not getattr(ref, name):
            raise InvalidArgument(f"{field}.{name}", "is required")
    return ServiceKey(ref.node_id, ref.ip, ref.service)


class PollerServicer(poller_pb2_grpc.PollerServicer):
    """Reads the scheduler's live state and the store."""

    def __init__(
        self,
        services: dict[ServiceKey, ServiceRuntime],
        store: SchedulerStore,
        registry: MinionRegistry,
    ) -> None:
        self.services = services
        self.store = store
        self.registry = registry

    @handle_errors
    async def ListServices(  # noqa: N802
        self, request: poller_pb2.ListServicesRequest, context: Ctx
    ) -> poller_pb2.ListServicesResponse:
        if request.status and request.status not in PB_STATUS:
            raise InvalidArgument("status", f"unknown value {request.status}")
        filters = [request.node_id, request.location, request.status]
        size = paging.page_size(request.page_size)
        after = paging.decode_token(request.page_token, filters)
        want = PB_STATUS.get(request.status)
        matching = sorted(
            key
            for key, rt in self.services.items()
            if (not request.node_id or key.node_id == request.node_id)
            and (not request.location or rt.spec.location == request.location)
            and (want is None or rt.status is want)
        )
        start = 0
        if after is not None:
            last = ServiceKey(*after)
            start = next((i for i, k in enumerate(matching) if k > last), len(matching))
        page = matching[start : start + size]
        more = start + size < len(matching)
        return poller_pb2.ListServicesResponse(
            services=[service_status(self.services[k]) for k in page],
            next_page_token=_key_token(page[-1], filters) if more and page else "",
            total_size=len(matching),
        )

    @handle_errors
    async def GetService(  # noqa: N802
        self, request: poller_pb2.GetServiceRequest, context: Ctx
    ) -> poller_pb2.ServiceStatus:
        if not request.HasField("service"):
            raise InvalidArgument("service", "is required")
        key = require_key(request.service)
        rt = self.services.get(key)
        if rt is None:
            raise NotFound(f"service {key} is not monitored")
        return service_status(rt)

    @handle_errors
    async def ListOutages(  # noqa: N802
        self, request: poller_pb2.ListOutagesRequest, context: Ctx
    ) -> poller_pb2.ListOutagesResponse:
        states = {
            poller_pb2.OUTAGE_STATE_UNSPECIFIED: None,
            poller_pb2.OUTAGE_STATE_OPEN: "open",
            poller_pb2.OUTAGE_STATE_CLOSED: "closed",
        }
        if request.state not in states:
            raise InvalidArgument("state", f"unknown value {request.state}")
        filters = [request.state, request.node_id, request.service]
        size = paging.page_size(request.page_size)
        before = paging.decode_token(request.page_token, filters)
        if before is not None and not isinstance(before, int):
            raise InvalidArgument("page_token", "not a token this server issued")
        rows, total = await self.store.list_outages(
            state=states[request.state],
            node_id=request.node_id or None,
            service=request.service or None,
            before_id=before,
            limit=size + 1,
        )
        more = len(rows) > size
        rows = rows[:size]
        return poller_pb2.ListOutagesResponse(
            outages=[outage_pb(o) for o in rows],
            next_page_token=paging.encode_token(rows[-1].id, filters) if more else "",
            total_size=total,
        )

    @handle_errors
    async def ListMinions(  # noqa: N802
        self, request: poller_pb2.ListMinionsRequest, context: Ctx
    ) -> poller_pb2.ListMinionsResponse:
        filters = [request.location]
        size = paging.page_size(request.page_size)
        after = paging.decode_token(request.page_token, filters)
        sessions = [s for s in self.registry.sessions() if not request.location or s.location == request.location]
        start = 0
        if after is not None:
            start = next((i for i, s in enumerate(sessions) if [s.location, s.system_id] > after), len(sessions))
        page = sessions[start : start + size]
        out = []
        for s in page:
            m = poller_pb2.Minion(
                system_id=s.system_id,
                location=s.location,
                version=s.version,
                monitors=s.monitors,
                status=poller_pb2.MINION_STATUS_UP if self.registry.is_live(s) else poller_pb2.MINION_STATUS_DOWN,
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
            next_page_token=paging.encode_token([page[-1].location, page[-1].system_id], filters) if more and page else "",
            total_size=len(sessions),
        )
