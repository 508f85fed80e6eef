"""The scheduler's in-memory picture of every monitored service."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.struct_pb2 import Struct

from services.core.status import Status
from services.scheduler.policy import Policy

_STRUCTS: dict[str, Struct] = {}


@dataclass(frozen=True, slots=True, order=True)
class ServiceKey:
    """Node → interface → service: the identity of one monitored service."""

    node_id: str
    ip: str
    service: str

    def __str__(self) -> str:
        return f"{self.node_id}/{self.ip}/{self.service}"

    @property
    def interface(self) -> tuple[str, str]:
        """``(node_id, ip)``."""
        return (self.node_id, self.ip)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """How a service is polled: resolved from the configuration or the API."""

    key: ServiceKey
    location: str
    monitor: str
    params: dict[str, Any]
    interval: float
    timeout: float
    retries: int
    ttl: float
    node_label: str = ""
    policy: Policy | None = None
    #: ``params`` as JSON, when already known (shared by a package definition's services).
    params_key: str = field(default="", compare=False)

    def params_struct(self) -> Struct:
        """The parameters as a protobuf Struct, shared by specs with equal parameters.

        Never mutated once built (it is only copied into requests).
        """
        key = self.params_key or json.dumps(self.params, sort_keys=True, default=str)
        s = _STRUCTS.get(key)
        if s is None:
            if len(_STRUCTS) > 50_000:
                _STRUCTS.clear()
            s = _STRUCTS[key] = Struct()
            s.update(self.params)
        return s

    @property
    def urgent_ttl(self) -> float:
        """TTL of an out-of-schedule poll (poll-now, critical-service check): all attempts plus slack."""
        return min(self.ttl, self.timeout * (self.retries + 1) + 2.0) if self.ttl > 0 else 5.0


@dataclass(eq=False, slots=True)
class OutageRef:
    """An outage; ``id`` is filled in by the store when the opening transaction runs."""

    id: int | None = None


@dataclass(slots=True)
class ServiceRuntime:
    """A service's spec plus its live state.

    ``status`` is the assured state: UP or DOWN once known, UNKNOWN until the
    first UP/DOWN. An UNKNOWN poll only updates the ``last_*`` fields.
    """

    spec: ServiceSpec
    params_struct: Struct
    status: Status = Status.UNKNOWN
    status_since: float | None = None
    last_poll_status: Status | None = None
    last_reason: str = ""
    last_poll_at: float | None = None
    response_time_ms: float = 0.0
    values: dict[str, float] = field(default_factory=dict)
    #: The open outage (its id is known once the transaction that opened it commits).
    outage: OutageRef | None = None
    #: What the open outage was blamed on: "service", "interface" or "node".
    outage_cause: str = ""
    #: Id of the request in flight, if any: a service is never polled twice at once.
    in_flight: str | None = None
    #: Consecutive results against the assured state, and when the first of them came.
    against: int = 0
    against_since: float | None = None
    #: The last UP/DOWN results (flapping detection).
    #: Only kept when the service's package detects flapping (most do not: no cost then).
    history: deque[Status] | None = None
    flapping: bool = False
    stale: bool = False
    paused: bool = False
    #: The downtime model said "stop": no more polls until the service changes or is polled now.
    #: Written by the dispatcher only (the keeper asks it to ``resume``).
    polling_stopped: bool = False
    #: Loop-clock anchor of the fixed-rate grid.
    anchor: float = 0.0
    #: Wall-clock time this process scheduled the service (the stale sweep's reference
    #: before any result; compared with result times, which are wall-clock).
    added: float = 0.0
    #: Waiting for the interface's critical service to be checked before reporting a loss.
    awaiting_critical: bool = False

    @property
    def key(self) -> ServiceKey:
        return self.spec.key

    @property
    def open_outage_id(self) -> int | None:
        """Id of the open outage, ``None`` when there is none (or it is not committed yet)."""
        return self.outage.id if self.outage is not None else None

    @property
    def suspect(self) -> bool:
        """A change of state is being confirmed."""
        return self.against > 0

    @classmethod
    def new(cls, spec: ServiceSpec) -> ServiceRuntime:
        """A runtime for a freshly configured service."""
        return cls(spec=spec, params_struct=spec.params_struct())

    def respec(self, spec: ServiceSpec) -> None:
        """Apply a changed specification, keeping the state."""
        if spec.params != self.spec.params:
            self.params_struct = spec.params_struct()
        self.spec = spec


@dataclass(slots=True)
class InterfaceState:
    """Node-outage processing state of one interface."""

    node_id: str
    ip: str
    #: The service whose loss means the interface is down (``None``: no critical service).
    critical: ServiceKey | None = None
    #: Every service on the interface (kept by the inventory).
    services: set[ServiceKey] = field(default_factory=set)
    down: bool = False
    down_since: float | None = None
    down_event_id: str | None = None


@dataclass(slots=True)
class NodeState:
    """Node-outage processing state of one node."""

    node_id: str
    location: str
    label: str = ""
    down: bool = False
    down_since: float | None = None
    down_event_id: str | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """One poll result (or a synthesized UNKNOWN) on its way to the state keeper."""

    key: ServiceKey
    status: Status
    reason: str
    at: float
    response_time_ms: float = 0.0
    values: dict[str, float] = field(default_factory=dict)
    request_id: str = ""
    system_id: str = ""
