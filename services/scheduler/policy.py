"""A service's resolved policy: how its state is judged and its polling adapted.

Resolved from its poller package (:mod:`services.scheduler.packages`); kept
with each service's spec (:mod:`services.scheduler.model`).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.core.config.packages import BUILTIN_PACKAGE, DowntimeStep, Flapping, MaintenanceWindow


@dataclass(frozen=True, slots=True)
class Policy:
    """How a service's state is judged and its polling adapted."""

    package: str
    critical_service: str | None
    downtime: tuple[DowntimeStep, ...]
    confirm_down: int
    confirm_up: int
    retry_interval: float
    flapping: Flapping | None
    maintenance: tuple[MaintenanceWindow, ...]

    def in_maintenance(self, epoch: float) -> MaintenanceWindow | None:
        """The maintenance window covering ``epoch``, if any."""
        for w in self.maintenance:
            if w.active(epoch):
                return w
        return None


DEFAULT_POLICY = Policy(
    package=BUILTIN_PACKAGE.name,
    critical_service=BUILTIN_PACKAGE.critical_service,
    downtime=BUILTIN_PACKAGE.downtime,
    confirm_down=1,
    confirm_up=1,
    retry_interval=BUILTIN_PACKAGE.retry_interval,
    flapping=None,
    maintenance=(),
)
