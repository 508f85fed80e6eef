"""The per-service assurance rules, as pure functions over a service's runtime.

* UNKNOWN only updates the last-poll fields: it never opens or closes an outage
  and never counts towards a confirmation.
* ``confirm_down`` consecutive DOWN results declare a service DOWN: its outage
  opens at the first of them (``service lost`` + ``outage opened``);
  ``confirm_up`` consecutive UP results close it at the first of those
  (``service regained`` + ``outage closed``). Defaults 1 and 1 (OpenNMS).
* Flapping: ``threshold`` changes in the last ``window`` UP/DOWN results emit
  ``service flapping`` once; lost/regained events are then suppressed (outages
  are still recorded) until the service settles (``service settled``).
* Maintenance windows: events are emitted but marked ``suppressed``.

What a DOWN or UP declaration means for the interface and the node is
:mod:`.node_outage`'s. The functions update the runtime objects they are given
and return an :class:`~.transitions.Outcome`; they never touch the store or
the event loop.
"""

from __future__ import annotations

import itertools
from collections import deque

from services.core.status import Status
from services.scheduler.assurance import node_outage
from services.scheduler.assurance.eventbuild import outage_duration, service_event, suppression
from services.scheduler.assurance.node_outage import Topology
from services.scheduler.assurance.transitions import OutageClosed, OutageOpened, Outcome
from services.scheduler.model import Observation, OutageRef, ServiceRuntime
from services.scheduler.policy import DEFAULT_POLICY, Policy


def policy_of(rt: ServiceRuntime) -> Policy:
    """The policy that governs ``rt``."""
    return rt.spec.policy or DEFAULT_POLICY


def record_last_poll(rt: ServiceRuntime, obs: Observation) -> None:
    """Update the last-poll fields (any status, UNKNOWN too)."""
    # A replayed (store-and-forward) result older than what we have is history,
    # not the latest poll.
    if rt.last_poll_at is None or obs.at >= rt.last_poll_at:
        rt.last_poll_status = obs.status
        rt.last_reason = obs.reason
        rt.last_poll_at = obs.at
        if obs.status is not Status.UNKNOWN:
            rt.response_time_ms = obs.response_time_ms
            rt.values = dict(obs.values)


def observe(rt: ServiceRuntime, obs: Observation, topo: Topology) -> Outcome:
    """Every rule for one observation of ``rt`` (its last-poll fields already recorded)."""
    rt.stale = False
    if obs.status is Status.UNKNOWN:
        return critical_answered(rt, obs, topo)
    out = flapping(rt, obs)
    before = (rt.status, rt.against)
    out.add(judge(rt, obs, topo))
    out.add(critical_answered(rt, obs, topo))
    if (rt.status, rt.against) != before:
        out.reschedule.add(rt.key)
    return out


def judge(rt: ServiceRuntime, obs: Observation, topo: Topology) -> Outcome:
    """Confirmation counting and declaration of DOWN / UP."""
    policy = policy_of(rt)
    if obs.status is Status.DOWN:
        if rt.status is Status.DOWN:
            rt.against, rt.against_since = 0, None
            return Outcome()
        since = _confirmed(rt, obs, policy.confirm_down)
        return Outcome() if since is None else declare_down(rt, since, obs.reason, topo)
    if rt.status is Status.DOWN:
        since = _confirmed(rt, obs, policy.confirm_up)
        return Outcome() if since is None else declare_up(rt, since, topo)
    rt.against, rt.against_since = 0, None
    if rt.status is Status.UNKNOWN:
        rt.status, rt.status_since = Status.UP, obs.at
    out = Outcome()
    out.resumed.add(rt.key)
    return out


def _confirmed(rt: ServiceRuntime, obs: Observation, needed: int) -> float | None:
    """Count ``obs`` against the assured state; once ``needed`` are in, when the first came."""
    rt.against += 1
    if rt.against_since is None:
        rt.against_since = obs.at
    if rt.against < needed:
        return None
    since = rt.against_since
    rt.against, rt.against_since = 0, None
    return since


def declare_down(rt: ServiceRuntime, since: float, reason: str, topo: Topology) -> Outcome:
    """``rt`` is DOWN since ``since``: lost, or part of an interface/node outage."""
    rt.status, rt.status_since = Status.DOWN, since
    out = node_outage.declared_down(rt, since, reason, topo)
    return out if out is not None else lost(rt, since, reason)


def declare_up(rt: ServiceRuntime, since: float, topo: Topology) -> Outcome:
    """``rt`` is UP since ``since``: regained, or its interface/node is back."""
    # Kept for the outage's duration in ``service regained``/``outage closed``.
    down_since = rt.status_since if rt.status is Status.DOWN else None
    rt.status, rt.status_since = Status.UP, since
    if rt.awaiting_critical:
        rt.awaiting_critical = False  # recovered before anything was reported
        out = Outcome()
    else:
        out = node_outage.declared_up(rt, since, topo) or regained(rt, since, down_since)
    out.resumed.add(rt.key)
    return out


def critical_answered(rt: ServiceRuntime, obs: Observation, topo: Topology) -> Outcome:
    """Release services waiting on this critical service unless it is (becoming) down."""
    out = Outcome()
    for other, since, reason in node_outage.release_waiting(rt, obs, topo):
        out.add(lost(other, since, reason))
    return out


def flapping(rt: ServiceRuntime, obs: Observation) -> Outcome:
    """Flapping detection over the last UP/DOWN results (only if the policy asks for it)."""
    out = Outcome()
    cfg = policy_of(rt).flapping
    if cfg is None:
        return out
    if rt.history is None or rt.history.maxlen != cfg.window:
        rt.history = deque(rt.history or (), maxlen=cfg.window)
    rt.history.append(obs.status)
    recent = list(rt.history)
    changes = sum(1 for a, b in itertools.pairwise(recent) if a is not b)
    if not rt.flapping and changes >= cfg.threshold:
        rt.flapping = True
        out.dirty.add(rt.key)
        out.events(
            service_event("service", "flapping", rt, obs.at, changes=changes, window=cfg.window)
        )
    elif rt.flapping and len(recent) >= cfg.window and changes * 2 < cfg.threshold:
        rt.flapping = False
        out.dirty.add(rt.key)
        out.events(service_event("service", "settled", rt, obs.at, status=rt.status.value))
    return out


def lost(rt: ServiceRuntime, at: float, reason: str) -> Outcome:
    """``rt`` is lost on its own: its outage opens (``service lost`` + ``outage opened``)."""
    out = Outcome()
    sup = suppression(rt, at)
    ref = OutageRef()
    rt.outage, rt.outage_cause = ref, "service"
    lost_event = service_event("service", "lost", rt, at, reason=reason, suppressed=sup)
    out.transitions.append(OutageOpened(ref, rt.key, at, reason, lost_event.id))
    opened = service_event(
        "outage",
        "opened",
        rt,
        at,
        reason=reason,
        lostEventId=lost_event.id,
        suppressed=sup or ("flapping" if rt.flapping else None),
    )
    # While flapping, the individual lost/regained events are what floods consumers.
    events = (opened,) if rt.flapping else (lost_event, opened)
    out.events(*events, patch=tuple((e, "outageId", ref) for e in events))
    return out


def regained(rt: ServiceRuntime, at: float, down_since: float | None = None) -> Outcome:
    """``rt`` is regained: its outage, if any, closes (``service regained`` + ``outage closed``).

    ``down_since``, when known, gives both events the outage's duration.
    """
    out = Outcome()
    ref, rt.outage, rt.outage_cause = rt.outage, None, ""
    sup = suppression(rt, at)
    regained_event = service_event(
        "service",
        "regained",
        rt,
        at,
        suppressed=sup,
        **outage_duration(down_since, at, "service regained"),
    )
    events = [] if rt.flapping else [regained_event]
    if ref is not None:
        out.transitions.append(OutageClosed(ref, at, "service regained", regained_event.id))
        events.append(
            service_event(
                "outage",
                "closed",
                rt,
                at,
                regainedEventId=regained_event.id,
                reason="service regained",
                suppressed=sup or ("flapping" if rt.flapping else None),
                **outage_duration(down_since, at, "outage closed: service regained"),
            )
        )
    out.events(
        *events, patch=tuple((e, "outageId", ref) for e in events) if ref is not None else ()
    )
    return out
