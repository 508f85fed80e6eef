"""``noop``: always UP without touching the network.

For pipeline tests and benchmarks, where the cost of the monitor itself must
not hide the cost of scheduling, transport and state keeping.
"""

from __future__ import annotations

from typing import ClassVar

from minion.monitors.base import Monitor, PollContext, PollOutcome, Target
from services.core.params.noop import NoopParams


class NoopMonitor(Monitor[NoopParams]):
    """Reports UP at once."""

    name: ClassVar[str] = "noop"
    params_model = NoopParams
    description = "always UP; measures the pipeline, not a service"

    async def poll(self, target: Target, params: NoopParams, ctx: PollContext) -> PollOutcome:
        return PollOutcome.up(0.0)
