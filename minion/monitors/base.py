"""The monitor interface every poller (built-in or plugin) implements.

A monitor is a small object with a name, a pydantic model of its parameters
and one coroutine, :meth:`Monitor.poll`, that tests one target once and
reports what it found. The minion's runner owns everything around it: the
deadline (``asyncio.timeout_at``), retries, concurrency limits, turning
exceptions into results. A monitor therefore only has to honour
``ctx.deadline`` (it is cancelled when it passes) and never block the loop.

Parameter models derive from :class:`services.core.params.MonitorParams`;
the built-ins' models live in :mod:`services.core.params`, where the
scheduler validates a service's parameters when it is configured (a typo
fails then) without importing the monitors.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from services.core.params.base import MonitorParams
from services.core.status import Status

__all__ = [
    "Monitor",
    "MonitorParams",
    "PollContext",
    "PollOutcome",
    "Status",
    "Target",
    "elapsed_ms",
]

P = TypeVar("P", bound=MonitorParams)


@dataclass(frozen=True, slots=True)
class Target:
    """What to poll: one service on one interface of one node."""

    address: str
    node_id: str = ""
    service: str = ""
    location: str = "Default"


@dataclass(frozen=True, slots=True)
class PollContext:
    """Limits for one attempt.

    ``deadline`` is on the event loop's clock (``loop.time()``); the runner
    cancels the attempt when it passes. ``timeout`` is the configured time for
    one attempt, in seconds, for monitors that pass it on to a library.
    """

    deadline: float
    timeout: float
    attempt: int = 1

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        import asyncio

        return max(0.0, self.deadline - asyncio.get_running_loop().time())


@dataclass(slots=True)
class PollOutcome:
    """What one poll found. ``values`` are measured numbers (e.g. ``rtt_ms``)."""

    status: Status
    reason: str = ""
    response_time_ms: float = 0.0
    values: dict[str, float] = field(default_factory=dict)

    @classmethod
    def up(cls, response_time_ms: float = 0.0, **values: float) -> PollOutcome:
        """An UP outcome with its response time and measured values."""
        return cls(Status.UP, "", response_time_ms, dict(values))

    @classmethod
    def down(cls, reason: str, response_time_ms: float = 0.0, **values: float) -> PollOutcome:
        """A DOWN outcome; ``reason`` tells an operator what failed."""
        return cls(Status.DOWN, reason, response_time_ms, dict(values))

    @classmethod
    def unknown(cls, reason: str, **values: float) -> PollOutcome:
        """An UNKNOWN outcome: the monitor could not tell."""
        return cls(Status.UNKNOWN, reason, 0.0, dict(values))


class Monitor(ABC, Generic[P]):
    """Base class for monitors.

    Subclasses set ``name`` (lower-case, the ``monitor:`` value in the config),
    ``params_model`` and implement :meth:`poll`. One instance serves every
    poll of its kind on a minion, concurrently, so per-poll state belongs in
    locals; shared resources (an HTTP connection pool) are created lazily and
    released in :meth:`close`.
    """

    name: ClassVar[str]
    params_model: ClassVar[type[MonitorParams]]
    description: ClassVar[str] = ""

    @abstractmethod
    async def poll(self, target: Target, params: P, ctx: PollContext) -> PollOutcome:
        """Test ``target`` once; raise nothing the caller must know about.

        An exception escaping here is reported as DOWN (for ``OSError``) or
        UNKNOWN (anything else) by the runner, so the minion never crashes.
        """

    def parse_params(self, raw: dict[str, Any]) -> P:
        """Validate raw parameters into this monitor's model (raises ``ValidationError``)."""
        return self.params_model.model_validate(raw)  # type: ignore[return-value]

    async def close(self) -> None:
        """Release shared resources when the minion stops."""


def elapsed_ms(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.perf_counter()`` reading)."""
    return (time.perf_counter() - start) * 1000.0
