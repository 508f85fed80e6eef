"""Where the assured state begins and ends: restore at start-up, forget, retire.

A service with an open outage starts DOWN with that outage and its cause; no
event is emitted for the restored state. Outages of services that are no
longer configured are closed with a reason, and their stored state dropped
with a ``service deleted`` event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from services.core.status import Status
from services.scheduler.assurance.eventbuild import (
    outage_duration,
    service_event,
    unconfigured_event,
)
from services.scheduler.assurance.node_outage import Topology
from services.scheduler.assurance.persist import Persister
from services.scheduler.model import OutageRef, ServiceKey, ServiceRuntime
from services.scheduler.store import DownElement, OutageRow, StateRow

log = logging.getLogger(__name__)


def restore(
    topo: Topology,
    states: dict[ServiceKey, StateRow],
    open_outages: list[OutageRow],
    down: list[DownElement] | None = None,
) -> list[OutageRow]:
    """Load the last known state into memory; returns open outages of services no longer configured."""
    for key, row in states.items():
        rt = topo.services.get(key)
        if rt is None:
            continue
        rt.status = Status(row.status) if row.status in Status.__members__ else Status.UNKNOWN
        rt.status_since = row.status_since
        rt.last_poll_status = Status(row.last_poll_status) if row.last_poll_status else None
        rt.last_reason = row.last_reason
        rt.last_poll_at = row.last_poll_at
        rt.response_time_ms = row.response_time_ms
        rt.paused = row.paused
        rt.flapping = row.flapping
    orphans = []
    for outage in open_outages:
        rt = topo.services.get(outage.key)
        if rt is None:
            orphans.append(outage)
            continue
        rt.status = Status.DOWN
        rt.status_since = rt.status_since or outage.opened_at
        rt.outage = OutageRef(outage.id)
        rt.outage_cause = outage.cause
        if not rt.last_reason:
            rt.last_reason = outage.reason
    for el in down or []:
        if el.kind == "interface" and (itf := topo.interfaces.get((el.node_id, el.ip))) is not None:
            itf.down, itf.down_since, itf.down_event_id = True, el.since, el.event_id
        elif el.kind == "node" and (node := topo.nodes.get(el.node_id)) is not None:
            node.down, node.down_since, node.down_event_id = True, el.since, el.event_id
    return orphans


async def close_unmanaged(
    persister: Persister, orphans: list[OutageRow], at: float, reason: str = "unmanaged"
) -> None:
    """Close outages of services that are no longer configured."""
    if not orphans:
        return
    async with persister.store.transaction() as tx:
        for o in orphans:
            if await tx.close_outage(o.id, at, None, reason):
                await tx.enqueue(
                    [
                        unconfigured_event(
                            "outage",
                            "closed",
                            o.key,
                            at,
                            outageId=o.id,
                            reason=reason,
                            **outage_duration(o.opened_at, at, f"outage closed: {reason}"),
                        )
                    ]
                )
    log.info("closed %d outage(s) of services no longer monitored (%s)", len(orphans), reason)
    persister.announce()


async def forget(
    persister: Persister,
    runtimes: list[ServiceRuntime],
    at: float,
    reason: str,
    release: Callable[[ServiceRuntime], None],
) -> None:
    """Services removed from the inventory: close their outages (with ``reason``),
    announce ``service deleted``, ``release`` what is held for each, drop their state."""
    orphans = [
        OutageRow(rt.open_outage_id, rt.key, rt.status_since or at, "", "", None, None, None)
        for rt in runtimes
        if rt.open_outage_id is not None
    ]
    await close_unmanaged(persister, orphans, at, reason)
    await persister.emit(
        [service_event("service", "deleted", rt, at, reason=reason) for rt in runtimes]
    )
    for rt in runtimes:
        release(rt)
    await persister.store.delete_states([rt.key for rt in runtimes])


async def retire(
    persister: Persister, keys: list[ServiceKey], at: float, reason: str = "unmanaged"
) -> None:
    """Stored state of services no longer configured (found at start-up): announce and drop it."""
    if not keys:
        return
    await persister.emit(
        [unconfigured_event("service", "deleted", k, at, reason=reason) for k in keys]
    )
    await persister.store.delete_states(keys)
