"""What is monitored: defaults, locations, nodes with their interfaces and services.

Only the scheduler reads these sections; the other processes skip them.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import Field, field_validator, model_validator

from services.core.config.fields import PollInterval, PositiveDuration, Strict
from services.core.config.packages import MaintenanceWindow
from services.core.ids import DEFAULT_LOCATION, Location, NodeId, ServiceName


class Defaults(Strict):
    interval: PollInterval = 300.0
    timeout: PositiveDuration = 3.0
    retries: int = Field(default=1, ge=0, le=10)
    #: ``null``: a request lives as long as its service's interval.
    ttl: PollInterval | None = None


class LocationSettings(Strict):
    ttl: PollInterval | None = None
    #: Issue 6: minions of this location fetch its schedule and keep polling on
    #: their own while the central site is unreachable, replaying results later.
    store_and_forward: bool = False


#: Bounds of the inventory's text that flows into every event of a node
#: (docs/configuration.md): an event must stay within the event service's size
#: limit, and a megabyte label would otherwise make each one too large.
MAX_LABEL_CHARS = 256
MAX_MONITOR_CHARS = 64
MAX_FOREIGN_ID_CHARS = 128


class ServiceConfig(Strict):
    name: ServiceName
    #: Optional when a poller package defines the service.
    monitor: str | None = Field(default=None, min_length=1, max_length=MAX_MONITOR_CHARS)
    params: dict[str, Any] = Field(default_factory=dict)
    interval: PollInterval | None = None
    timeout: PositiveDuration | None = None
    retries: int | None = Field(default=None, ge=0, le=10)
    ttl: PollInterval | None = None


class InterfaceConfig(Strict):
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    #: Each entry is a service (``{name: HTTP, monitor: http, ...}``) or just its name.
    services: list[ServiceConfig] = Field(default_factory=list)

    @field_validator("ip", mode="before")
    @classmethod
    def _ip(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return ipaddress.ip_address(v)
            except ValueError:
                raise ValueError(
                    f"{v!r} is not an IP address (interfaces take addresses, not host names)"
                ) from None
        return v

    @field_validator("services", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": x} if isinstance(x, str) else x for x in v]
        return v

    @model_validator(mode="after")
    def _unique_services(self) -> InterfaceConfig:
        seen: set[str] = set()
        for i, svc in enumerate(self.services):
            if svc.name in seen:
                raise ValueError(f"services[{i}]: duplicate service {svc.name!r} on {self.ip}")
            seen.add(svc.name)
        return self


class NodeConfig(Strict):
    id: NodeId
    label: str = Field(default="", max_length=MAX_LABEL_CHARS)
    location: Location = DEFAULT_LOCATION
    foreign_id: str | None = Field(default=None, max_length=MAX_FOREIGN_ID_CHARS)
    interfaces: list[InterfaceConfig] = Field(default_factory=list)
    maintenance: tuple[MaintenanceWindow, ...] = ()

    @model_validator(mode="after")
    def _unique_ips(self) -> NodeConfig:
        seen: set[str] = set()
        for i, itf in enumerate(self.interfaces):
            if str(itf.ip) in seen:
                raise ValueError(f"interfaces[{i}]: duplicate interface {itf.ip}")
            seen.add(str(itf.ip))
        return self
