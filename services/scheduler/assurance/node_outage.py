"""Node-outage processing, as pure functions over the in-memory topology.

A service declared DOWN on an interface with a critical service triggers an
immediate poll of the critical service; if that is down too, the interface is
down (``interface down``, or ``node down`` when it was the node's last
interface up): every service of the interface gets an outage caused by that
one event and no individual event. Recovery of the critical service closes
them with ``interface up`` / ``node up``.

The functions update the runtime objects they are given and return the
:class:`~.transitions.Outcome` for the store; they never touch the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.core.status import Status
from services.scheduler.assurance.eventbuild import element_event, suppression
from services.scheduler.assurance.transitions import (
    ElementDown,
    ElementUp,
    OutageClosed,
    OutageOpened,
    Outcome,
    PollNow,
)
from services.scheduler.model import (
    InterfaceState,
    NodeState,
    Observation,
    OutageRef,
    ServiceKey,
    ServiceRuntime,
)
from services.scheduler.store import DownElement


@dataclass(frozen=True, slots=True)
class Topology:
    """Read-only views of the inventory's runtime objects, as the rules see them."""

    services: Mapping[ServiceKey, ServiceRuntime]
    interfaces: Mapping[tuple[str, str], InterfaceState]
    nodes: Mapping[str, NodeState]

    def interface_of(self, rt: ServiceRuntime) -> InterfaceState | None:
        """The interface ``rt`` is on (``None`` when it is not tracked)."""
        return self.interfaces.get(rt.key.interface)

    def services_of(self, itf: InterfaceState) -> list[ServiceRuntime]:
        """The configured services of ``itf``, in key order."""
        return [rt for k in sorted(itf.services) if (rt := self.services.get(k)) is not None]

    def polled(self, rt: ServiceRuntime) -> bool:
        """Whether the scheduler currently polls this service at all."""
        if rt.paused or rt.polling_stopped:
            return False
        itf = self.interface_of(rt)
        return not (itf is not None and itf.down and itf.critical != rt.key)


def declared_down(rt: ServiceRuntime, since: float, reason: str, topo: Topology) -> Outcome | None:
    """What a service just declared DOWN means for its interface.

    ``None``: nothing beyond the service itself, which is simply lost.
    """
    itf = topo.interface_of(rt)
    if itf is None:
        return None
    if itf.critical == rt.key and not itf.down:
        return interface_down(rt, itf, since, reason, topo)
    if itf.down and itf.critical != rt.key:
        # Polled although its interface is down (e.g. poll-now): blame the interface.
        return open_caused(rt, itf, since, reason, topo)
    if itf.critical is not None and itf.critical != rt.key and itf.critical in topo.services:
        # Is it the service, or the whole interface? Ask the critical service first.
        rt.awaiting_critical = True
        out = Outcome()
        out.polls.append(PollNow(itf.critical, urgent=True))
        return out
    return None


def declared_up(rt: ServiceRuntime, since: float, topo: Topology) -> Outcome | None:
    """What a service just declared UP means for its interface (``None``: only itself)."""
    itf = topo.interface_of(rt)
    if itf is not None and itf.critical == rt.key and itf.down:
        return interface_up(rt, itf, since, topo)
    return None


def release_waiting(
    rt: ServiceRuntime, obs: Observation, topo: Topology
) -> list[tuple[ServiceRuntime, float, str]]:
    """The critical service ``rt`` answered: the services waiting on it, to be declared lost.

    Returns (service, since, reason) for each; none while the critical service
    is down or being confirmed down.
    """
    itf = topo.interface_of(rt)
    if itf is None or itf.critical != rt.key or itf.down:
        return []
    if rt.status is Status.DOWN or (obs.status is Status.DOWN and rt.suspect):
        return []
    why = "" if obs.status is Status.UP else " (critical service state unknown)"
    released = []
    for other in topo.services_of(itf):
        if other.awaiting_critical:
            other.awaiting_critical = False
            released.append((other, other.status_since or obs.at, other.last_reason + why))
    return released


def open_caused(
    rt: ServiceRuntime, itf: InterfaceState, at: float, reason: str, topo: Topology
) -> Outcome:
    """An outage of ``rt`` blamed on its interface (or node), which is already down."""
    out = Outcome()
    if rt.outage is not None:
        return out
    node = topo.nodes.get(itf.node_id)
    cause = "node" if node is not None and node.down else "interface"
    event_id = (node.down_event_id if cause == "node" and node else itf.down_event_id) or ""
    rt.status, rt.status_since = Status.DOWN, rt.status_since or at
    rt.outage, rt.outage_cause = OutageRef(), cause
    out.transitions.append(
        OutageOpened(rt.outage, rt.key, at, reason, event_id, cause=cause, cause_event_id=event_id)
    )
    out.dirty.add(rt.key)
    return out


def interface_down(
    critical: ServiceRuntime, itf: InterfaceState, at: float, reason: str, topo: Topology
) -> Outcome:
    """The critical service of ``itf`` is down: the interface (maybe the node) is down."""
    out = Outcome()
    node = topo.nodes.get(itf.node_id)
    itf.down, itf.down_since = True, at
    node_down = node is not None and all(
        i.down for i in topo.interfaces.values() if i.node_id == itf.node_id
    )
    kind = "node" if node_down else "interface"
    event = element_event(
        kind,
        "down",
        itf,
        critical.spec.location,
        at,
        criticalService=critical.key.service,
        reason=reason,
        nodeLabel=critical.spec.node_label or None,
        suppressed=suppression(critical, at),
    )
    itf.down_event_id = event.id
    out.transitions.append(ElementDown(DownElement("interface", itf.node_id, itf.ip, at, event.id)))
    if node_down and node is not None:
        node.down, node.down_since, node.down_event_id = True, at, event.id
        out.transitions.append(ElementDown(DownElement("node", itf.node_id, "", at, event.id)))
    affected = 0
    for rt in topo.services_of(itf):
        if rt.outage is not None:
            continue  # already down on its own, with its own outage
        rt.awaiting_critical = False
        rt.status, rt.status_since = Status.DOWN, at
        rt.against, rt.against_since = 0, None
        rt.outage, rt.outage_cause = OutageRef(), kind
        out.transitions.append(
            OutageOpened(
                rt.outage,
                rt.key,
                at,
                reason if rt is critical else f"{kind} down",
                event.id,
                cause=kind,
                cause_event_id=event.id,
            )
        )
        out.dirty.add(rt.key)
        affected += 1
    event.data["outages"] = affected
    out.events(event)
    return out


def interface_up(
    critical: ServiceRuntime, itf: InterfaceState, at: float, topo: Topology
) -> Outcome:
    """The critical service of a down ``itf`` is back: the interface (and node) are up."""
    out = Outcome()
    node = topo.nodes.get(itf.node_id)
    node_was_down = node is not None and node.down
    kind = "node" if node_was_down else "interface"
    event = element_event(
        kind,
        "up",
        itf,
        critical.spec.location,
        at,
        criticalService=critical.key.service,
        nodeLabel=critical.spec.node_label or None,
        suppressed=suppression(critical, at),
    )
    events = [event]
    itf.down, itf.down_since, itf.down_event_id = False, None, None
    out.transitions.append(ElementUp("interface", itf.node_id, itf.ip))
    if node_was_down and node is not None:
        node.down, node.down_since, node.down_event_id = False, None, None
        out.transitions.append(ElementUp("node", itf.node_id, ""))
        # Interfaces still down were covered by the node event: say so now.
        for other in topo.interfaces.values():
            if other.node_id == itf.node_id and other.down and other is not itf:
                events.append(
                    element_event(
                        "interface",
                        "down",
                        other,
                        critical.spec.location,
                        at,
                        reason="still down after node up",
                    )
                )
    closed = 0
    for rt in topo.services_of(itf):
        if rt.outage_cause in ("interface", "node") and rt.outage is not None:
            out.transitions.append(OutageClosed(rt.outage, at, f"{kind} up", event.id))
            rt.outage, rt.outage_cause = None, ""
            closed += 1
        if rt.status is Status.DOWN and rt.outage is None:
            # Presumed up with its interface; an immediate poll tells the truth.
            rt.status, rt.status_since = Status.UP, at
        rt.against, rt.against_since = 0, None
        out.resumed.add(rt.key)
        out.dirty.add(rt.key)
        if rt is not critical:
            out.polls.append(PollNow(rt.key, urgent=False))
    event.data["outagesClosed"] = closed
    out.events(*events)
    return out
