"""Poller packages: which services are polled on which addresses, and how.

A package has a filter (address ranges, specific addresses, locations), the
services it defines (monitor, parameters, timing) and the policies that govern
them: the downtime model, confirmation counts, flapping detection, maintenance
windows and the critical service that drives node-outage processing.

Resolution, for a service named S on interface address A of a node at
location L (see :func:`services.scheduler.packages.resolve`):

* the **last** package (in file order) whose filter matches A/L and that
  defines S provides S's monitor, parameters and timing, and its policies;
* fields given on the node's own service entry override the package's;
* with no package defining S, the service must name its monitor itself, and
  the last package whose filter matches (else the built-in defaults) provides
  the policies.
"""

from __future__ import annotations

import ipaddress
import itertools
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from services.core.durations import Duration, PollInterval, PositiveDuration

WEEK = 7 * 86400.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DowntimeStep(_Strict):
    """From ``begin`` (time since the service went down) on, poll every ``interval`` — or ``stop``."""

    begin: Annotated[Duration, Field(ge=0)]
    interval: PollInterval | None = None
    stop: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> DowntimeStep:
        if self.stop == (self.interval is not None):
            raise ValueError("give either interval or stop: true")
        return self


#: OpenNMS's default: 30 s for 5 min, 5 min until 12 h, 10 min until 5 days, then hourly.
DEFAULT_DOWNTIME: tuple[DowntimeStep, ...] = (
    DowntimeStep(begin=0, interval=30),
    DowntimeStep(begin=300, interval=300),
    DowntimeStep(begin=43200, interval=600),
    DowntimeStep(begin=432000, interval=3600),
)


def downtime_interval(steps: tuple[DowntimeStep, ...], down_for: float) -> float | None:
    """The poll interval ``down_for`` seconds into an outage; ``None`` means stop polling."""
    current: DowntimeStep | None = None
    for step in steps:
        if step.begin <= down_for:
            current = step
    if current is None:
        current = steps[0]
    return None if current.stop else current.interval


def _check_downtime(steps: tuple[DowntimeStep, ...]) -> tuple[DowntimeStep, ...]:
    if not steps:
        raise ValueError("needs at least one step")
    if steps[0].begin != 0:
        raise ValueError("the first step must begin at 0")
    for a, b in itertools.pairwise(steps):
        if b.begin <= a.begin:
            raise ValueError("steps must be in increasing order of begin")
    return steps


Downtime = Annotated[tuple[DowntimeStep, ...], AfterValidator(_check_downtime)]


class Flapping(_Strict):
    """``threshold`` state changes within the last ``window`` UP/DOWN polls mean flapping."""

    window: int = Field(default=10, ge=3, le=100)
    threshold: int = Field(default=5, ge=2)

    @model_validator(mode="after")
    def _fits(self) -> Flapping:
        if self.threshold >= self.window:
            raise ValueError("threshold must be smaller than window")
        return self


def _aware(v: datetime) -> datetime:
    if v.tzinfo is None:
        raise ValueError("needs a time zone (e.g. 2026-11-22T02:00:00Z)")
    return v.astimezone(UTC)


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


class MaintenanceWindow(_Strict):
    """Polls continue and outages are recorded; events are marked suppressed."""

    name: str = Field(default="maintenance", max_length=64)
    start: AwareDatetime
    end: AwareDatetime
    #: Repeat every 7 days from ``start``.
    weekly: bool = False

    @model_validator(mode="after")
    def _order(self) -> MaintenanceWindow:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if self.weekly and self.end - self.start >= timedelta(days=7):
            raise ValueError("a weekly window must be shorter than a week")
        return self

    def active(self, epoch: float) -> bool:
        """Whether the window covers ``epoch``."""
        start, end = self.start.timestamp(), self.end.timestamp()
        if not self.weekly:
            return start <= epoch < end
        if epoch < start:
            return False
        offset = (epoch - start) % WEEK
        return offset < end - start


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PackageFilter(_Strict):
    """Which interfaces a package applies to.

    An address matches when it is one of ``addresses`` or inside an
    ``include_ranges`` range (no ranges and no addresses: every address), and
    not inside an ``exclude_ranges`` range; and the node's location is one of
    ``locations`` (empty: any).
    """

    include_ranges: tuple[IpNetwork, ...] = ()
    exclude_ranges: tuple[IpNetwork, ...] = ()
    addresses: tuple[IpAddress, ...] = ()
    locations: tuple[str, ...] = ()

    @field_validator("addresses", mode="before")
    @classmethod
    def _addresses(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            out = []
            for x in v:
                try:
                    out.append(ipaddress.ip_address(str(x)) if isinstance(x, str) else x)
                except ValueError:
                    raise ValueError(
                        f"{x!r} is not an IP address (put ranges in include_ranges)"
                    ) from None
            return tuple(out)
        return v

    @field_validator("include_ranges", "exclude_ranges", mode="before")
    @classmethod
    def _ranges(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            out = []
            for x in v:
                try:
                    # "10.0.0.1/8" is what operators write; accept it as 10.0.0.0/8.
                    out.append(
                        ipaddress.ip_network(str(x), strict=False) if isinstance(x, str) else x
                    )
                except ValueError:
                    raise ValueError(f"{x!r} is not an address range like 10.0.0.0/8") from None
            return tuple(out)
        return v

    def matches(self, ip: str, location: str) -> bool:
        """Whether an interface address at a location is covered."""
        if self.locations and location not in self.locations:
            return False
        addr = ipaddress.ip_address(ip)
        if any(addr.version == n.version and addr in n for n in self.exclude_ranges):
            return False
        if not self.include_ranges and not self.addresses:
            return True
        if addr in self.addresses:
            return True
        return any(addr.version == n.version and addr in n for n in self.include_ranges)


class PackageService(_Strict):
    """A service a package defines."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    monitor: str
    params: dict[str, Any] = Field(default_factory=dict)
    interval: PollInterval | None = None
    timeout: PositiveDuration | None = None
    retries: int | None = Field(default=None, ge=0, le=10)
    ttl: PollInterval | None = None


class Package(_Strict):
    """A poller package (see the module docstring)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    filter: PackageFilter = Field(default_factory=PackageFilter)
    #: Drives node-outage processing; ``null``: none (every service is polled independently).
    critical_service: str | None = "ICMP"
    downtime: Downtime = DEFAULT_DOWNTIME
    #: Consecutive failures before DOWN (an outage opens), successes before UP again.
    confirm_down: int = Field(default=1, ge=1, le=20)
    confirm_up: int = Field(default=1, ge=1, le=20)
    #: Re-poll interval while a change is being confirmed.
    retry_interval: PollInterval = 10.0
    flapping: Flapping | None = None
    maintenance: tuple[MaintenanceWindow, ...] = ()
    #: Defaults for this package's services.
    interval: PollInterval | None = None
    timeout: PositiveDuration | None = None
    retries: int | None = Field(default=None, ge=0, le=10)
    services: tuple[PackageService, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> Package:
        seen: set[str] = set()
        for i, svc in enumerate(self.services):
            if svc.name in seen:
                raise ValueError(f"services[{i}]: duplicate service {svc.name!r}")
            seen.add(svc.name)
        return self


#: Governs services that no package matches.
BUILTIN_PACKAGE = Package(name="builtin")
