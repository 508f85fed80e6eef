"""The scheduler's in-memory picture of every monitored service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf.struct_pb2 import Struct

from minion.monitors.base import Status


@dataclass(frozen=True, slots=True, order=True)
class ServiceKey:
    """Node → interface → service: the identity of one monitored service."""

    node_id: str
    ip: str
    service: str

    def __str__(self) -> str:
        return f"{self.node_id}/{self.ip}/{self.service}"


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """How a service is polled: resolved from the configuration."""

    key: ServiceKey
    location: str
    monitor: str
    params: dict[str, Any]
    interval: float
    timeout: float
    retries: int
    ttl: float
    node_label: str = ""

    def params_struct(self) -> Struct:
        """The parameters as a protobuf Struct (built once per spec, see :class:`ServiceRuntime`)."""
        s = Struct()
        s.update(self.params)
        return s


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
    open_outage_id: int | None = None
    #: Id of the request in flight, if any: a service is never polled twice at once.
    in_flight: str | None = None

    @property
    def key(self) -> ServiceKey:
        return self.spec.key

    @classmethod
    def new(cls, spec: ServiceSpec) -> ServiceRuntime:
        """A runtime for a freshly configured service."""
        return cls(spec=spec, params_struct=spec.params_struct())


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
