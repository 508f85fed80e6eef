"""How often a service is polled, given its state.

* while a change is being confirmed: the package's ``retry_interval``;
* while DOWN: the downtime model, by time since the service went down;
* otherwise: the service's ``interval``, on a fixed-rate grid.
"""

from __future__ import annotations

from services.core.config.packages import downtime_interval
from services.core.status import Status
from services.scheduler.model import ServiceRuntime
from services.scheduler.policy import DEFAULT_POLICY


def effective_interval(rt: ServiceRuntime, now: float) -> float | None:
    """Seconds until the next poll; ``None`` when the downtime model says stop."""
    policy = rt.spec.policy or DEFAULT_POLICY
    if rt.status is Status.DOWN:
        since = rt.status_since if rt.status_since is not None else now
        base = downtime_interval(policy.downtime, max(0.0, now - since))
    else:
        base = rt.spec.interval
    if rt.suspect:
        # Confirm quickly, but never poll less often than the service's own rhythm.
        return policy.retry_interval if base is None else min(policy.retry_interval, base)
    return base


def on_grid(rt: ServiceRuntime) -> bool:
    """Whether the service follows its fixed-rate grid (no downtime model, no confirmation)."""
    return rt.status is not Status.DOWN and not rt.suspect
