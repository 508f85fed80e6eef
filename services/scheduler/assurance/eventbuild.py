"""The events the scheduler emits about services, interfaces and nodes."""

from __future__ import annotations

from typing import Any

from services.core.durations import format_duration
from services.core.events import Event, make_event
from services.scheduler.model import InterfaceState, ServiceKey, ServiceRuntime
from services.scheduler.policy import DEFAULT_POLICY

SOURCE = "scheduler"


def service_event(kind: str, action: str, rt: ServiceRuntime, at: float, **data: Any) -> Event:
    """An event about a configured service (typeId ``node/ip/service``)."""
    return make_event(
        kind,
        action,
        source=SOURCE,
        type_id=str(rt.key),
        node_id=rt.key.node_id,
        location=rt.spec.location,
        created_at=at,
        ip=rt.key.ip,
        service=rt.key.service,
        monitor=rt.spec.monitor,
        nodeLabel=rt.spec.node_label or None,
        **data,
    )


def unconfigured_event(kind: str, action: str, key: ServiceKey, at: float, **data: Any) -> Event:
    """An event about a service that is no longer configured (only its key is known)."""
    return make_event(
        kind,
        action,
        source=SOURCE,
        type_id=str(key),
        node_id=key.node_id,
        created_at=at,
        ip=key.ip,
        service=key.service,
        **data,
    )


def element_event(
    kind: str, action: str, itf: InterfaceState, location: str, at: float, **data: Any
) -> Event:
    """An ``interface`` event (typeId ``node/ip``) or a ``node`` event (typeId ``node``)."""
    node = kind == "node"
    return make_event(
        kind,
        action,
        source=SOURCE,
        type_id=itf.node_id if node else f"{itf.node_id}/{itf.ip}",
        node_id=itf.node_id,
        location=location,
        created_at=at,
        ip=None if node else itf.ip,
        **data,
    )


def outage_duration(since: float | None, at: float, what: str) -> dict[str, Any]:
    """How long an outage from ``since`` to ``at`` lasted, as event data.

    ``durationSeconds`` (a number, for consumers that compute), ``duration``
    (``"5m12s"``) and ``text`` (``"<what> after 5m12s"``, for the operator who
    reads). Nothing but ``text`` = ``what`` when the start is not known.
    """
    if since is None or since > at:
        return {"text": what}
    seconds = round(at - since, 3)
    human = format_duration(seconds)
    return {"durationSeconds": seconds, "duration": human, "text": f"{what} after {human}"}


def suppression(rt: ServiceRuntime, at: float) -> str | None:
    """Why events about ``rt`` at ``at`` are marked suppressed (a maintenance window), if so."""
    window = (rt.spec.policy or DEFAULT_POLICY).in_maintenance(at)
    return f"maintenance: {window.name}" if window is not None else None
