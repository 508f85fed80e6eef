"""The YAML configuration, validated at load.

One file serves every process (``vigil up`` hands the same file to the
scheduler, the event service and the minion); each reads its own section.
Unknown keys, wrong types and bad addresses fail start-up with a message that
names the file and the key. Environment variables override the connection
settings (see :data:`ENV_OVERRIDES`), which is how a container is pointed at
its NATS server and database without editing the file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from minion.monitors.snmp_config import SnmpProfile
from services.core.durations import Duration
from services.core.policy import MaintenanceWindow, Package
from services.core.validation import describe

#: Debian's monitoring-plugins locations (mirrors minion.monitors.nagios, which is heavier to import).
DEFAULT_PLUGIN_DIRS = ("/usr/lib/nagios/plugins", "/usr/lib/monitoring-plugins")

LOCATION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_LOCATION = "Default"


class ConfigError(Exception):
    """The configuration is invalid; the message names the file and the key."""


def _check(pattern: re.Pattern[str], what: str) -> Any:
    def check(v: str) -> str:
        if not pattern.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid {what}")
        return v

    return AfterValidator(check)


Location = Annotated[str, _check(LOCATION_RE, "location (letters, digits, '-', '_')")]
NodeId = Annotated[str, _check(NODE_ID_RE, "node id (letters, digits, '-', '_')")]
ServiceName = Annotated[
    str, _check(SERVICE_NAME_RE, "service name (letters, digits, '-', '_', '.')")
]
PositiveDuration = Annotated[Duration, Field(gt=0)]


def _host_port(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{v!r} is not host:port")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{v!r}: port must be 0-65535")
    bare = host.strip("[]")
    if bare not in ("localhost", "*") and not re.fullmatch(r"[A-Za-z0-9.-]+", bare):
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            raise ValueError(f"{v!r}: {host!r} is not a host name or IP address") from None
    return v


HostPort = Annotated[str, AfterValidator(_host_port)]


def _nats_url(v: str) -> str:
    for url in v.split(","):
        m = re.fullmatch(r"(nats|tls|ws|wss)://([^/\s]+)", url.strip())
        if not m:
            raise ValueError(f"{url!r} is not a NATS URL like nats://host:4222")
    return v


NatsUrl = Annotated[str, AfterValidator(_nats_url)]


def _db_url(v: str) -> str:
    if not re.match(r"^(sqlite|postgresql|postgres)(\+\w+)?://", v):
        raise ValueError(f"{v!r} is not a database URL (sqlite:///path or postgresql://...)")
    return v


DatabaseUrl = Annotated[str, AfterValidator(_db_url)]


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class NatsSettings(Strict):
    #: One URL or several, comma-separated.
    url: NatsUrl = "nats://127.0.0.1:4222"


class SchedulerSettings(Strict):
    listen: HostPort = "127.0.0.1:50051"
    #: Prometheus metrics and a liveness page; ``null`` turns it off.
    metrics_listen: HostPort | None = "127.0.0.1:9464"
    store_url: DatabaseUrl = "sqlite:///.vigil/scheduler.db"
    #: How often minions send heartbeats, and how many may be missed.
    heartbeat_interval: PositiveDuration = 5.0
    heartbeat_misses: int = Field(default=3, ge=1, le=100)
    #: Requests due together are sent as one NATS message of up to this many.
    batch_size: int = Field(default=500, ge=1, le=10000)
    #: After start, first polls are spread over min(interval, splay).
    start_splay: Duration = 30.0
    #: How often the latest state of every service is written to the store.
    status_flush_interval: PositiveDuration = 5.0
    #: Bounds on polls awaiting a result; beyond them due polls wait (back-pressure).
    max_in_flight: int = Field(default=100_000, ge=1)
    max_in_flight_per_node: int = Field(default=100, ge=1)
    #: Every poll result is kept this long for ``ListResults`` (``0s``: no history).
    results_retention: Duration = 86400.0


class EventsSettings(Strict):
    listen: HostPort = "127.0.0.1:50052"
    metrics_listen: HostPort | None = "127.0.0.1:9465"
    store_url: DatabaseUrl = "sqlite:///.vigil/events.db"
    #: Retention of the published-events stream (JetStream).
    stream_max_age: PositiveDuration = 7 * 86400.0
    stream_max_bytes: int = Field(default=1 << 30, ge=1 << 20)
    #: How often a ``summary updated`` event may be emitted (only when the counts changed); ``null``: never.
    summary_interval: PositiveDuration | None = 5.0
    #: Subscribe: a keep-alive after this long without a message; a subscriber whose
    #: stream accepts nothing for ``subscribe_stall_timeout`` is cut off (RESOURCE_EXHAUSTED).
    subscribe_keepalive: PositiveDuration = 15.0
    subscribe_stall_timeout: PositiveDuration = 10.0
    max_subscribers: int = Field(default=100, ge=1, le=10_000)
    #: Webhooks: each POST's timeout; retries back off exponentially (with jitter) from
    #: ``hook_backoff_initial`` to ``hook_backoff_max`` until ``hook_max_age`` after the
    #: event was published, then the delivery is parked as failed.
    hook_timeout: PositiveDuration = 5.0
    hook_backoff_initial: PositiveDuration = 0.5
    hook_backoff_max: PositiveDuration = 60.0
    hook_max_age: PositiveDuration = 3600.0
    hook_max_in_flight: int = Field(default=8, ge=1, le=256)
    #: JetStream redelivers an unacknowledged event after this long (e.g. after a crash).
    hook_ack_wait: PositiveDuration = 30.0
    max_hooks: int = Field(default=100, ge=1, le=10_000)

    @model_validator(mode="after")
    def _hook_timings(self) -> EventsSettings:
        if self.hook_ack_wait <= self.hook_timeout:
            raise ValueError("hook_ack_wait must be longer than hook_timeout")
        if self.hook_backoff_max < self.hook_backoff_initial:
            raise ValueError("hook_backoff_max must not be shorter than hook_backoff_initial")
        return self


class MinionSettings(Strict):
    location: Location = DEFAULT_LOCATION
    #: Stable identity; generated once and kept in ``id_file`` when unset.
    system_id: NodeId | None = None
    id_file: str = ".vigil/minion-id"
    #: The scheduler's gRPC address (results and heartbeats go there).
    scheduler: HostPort = "127.0.0.1:50051"
    max_in_flight: int = Field(default=1000, ge=1, le=100_000)
    #: Results buffered while the scheduler is unreachable (oldest dropped beyond).
    result_buffer: int = Field(default=100_000, ge=100)
    # --- issue 6 (minions at remote sites): drain, store-and-forward --------------
    #: On SIGTERM: longest wait for in-flight polls (each also ends at its TTL).
    drain_timeout: PositiveDuration = 30.0
    #: Store-and-forward (when the scheduler turns it on for the location): the
    #: location's schedule and the results polled while cut off are kept under
    #: ``<spool_dir>/<system_id>/``, bounded by size and age (oldest dropped, counted).
    spool_dir: str = ".vigil/spool"
    spool_max_bytes: int = Field(default=64 << 20, ge=64 << 10)
    spool_max_age: PositiveDuration = 86400.0
    #: Cut off from the scheduler (or NATS) this long: poll the schedule on our own.
    autonomous_after: PositiveDuration = 15.0
    #: SNMP credentials by address range and/or location (first match wins; a
    #: service's own parameters override field by field). Never logged.
    snmp_profiles: list[SnmpProfile] = Field(default_factory=list)
    #: Where relative Nagios plugin names are looked up, in order.
    plugin_dirs: list[str] = Field(default_factory=lambda: list(DEFAULT_PLUGIN_DIRS))

    @field_validator("plugin_dirs")
    @classmethod
    def _absolute(cls, v: list[str]) -> list[str]:
        for d in v:
            if not d.startswith("/"):
                raise ValueError(f"{d!r} must be an absolute path")
        return v


class Defaults(Strict):
    interval: PositiveDuration = 300.0
    timeout: PositiveDuration = 3.0
    retries: int = Field(default=1, ge=0, le=10)
    #: ``null``: a request lives as long as its service's interval.
    ttl: PositiveDuration | None = None


class LocationSettings(Strict):
    ttl: PositiveDuration | None = None
    #: Issue 6: minions of this location fetch its schedule and keep polling on
    #: their own while the central site is unreachable, replaying results later.
    store_and_forward: bool = False


class ServiceConfig(Strict):
    name: ServiceName
    #: Optional when a poller package defines the service.
    monitor: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    interval: PositiveDuration | None = None
    timeout: PositiveDuration | None = None
    retries: int | None = Field(default=None, ge=0, le=10)
    ttl: PositiveDuration | None = None


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
    label: str = ""
    location: Location = DEFAULT_LOCATION
    foreign_id: str | None = Field(default=None, max_length=128)
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


class VigilConfig(Strict):
    nats: NatsSettings = Field(default_factory=NatsSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    events: EventsSettings = Field(default_factory=EventsSettings)
    minion: MinionSettings = Field(default_factory=MinionSettings)
    defaults: Defaults = Field(default_factory=Defaults)
    locations: dict[Location, LocationSettings] = Field(default_factory=dict)
    #: Poller packages; for a service several packages define, the last one wins.
    packages: list[Package] = Field(default_factory=list)
    nodes: list[NodeConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_nodes(self) -> VigilConfig:
        seen: set[str] = set()
        for i, node in enumerate(self.nodes):
            if node.id in seen:
                raise ValueError(f"nodes[{i}].id: duplicate node id {node.id!r}")
            seen.add(node.id)
        names: set[str] = set()
        for i, pkg in enumerate(self.packages):
            if pkg.name in names:
                raise ValueError(f"packages[{i}].name: duplicate package {pkg.name!r}")
            names.add(pkg.name)
        return self


#: Environment variable → dotted config key. Applied after the file is read.
ENV_OVERRIDES: dict[str, str] = {
    "VIGIL_NATS_URL": "nats.url",
    "VIGIL_STORE_URL": "scheduler.store_url",
    "VIGIL_SCHEDULER_LISTEN": "scheduler.listen",
    "VIGIL_SCHEDULER_METRICS_LISTEN": "scheduler.metrics_listen",
    "VIGIL_EVENTS_STORE_URL": "events.store_url",
    "VIGIL_EVENTS_LISTEN": "events.listen",
    "VIGIL_EVENTS_METRICS_LISTEN": "events.metrics_listen",
    "VIGIL_SCHEDULER_ADDRESS": "minion.scheduler",
    "VIGIL_LOCATION": "minion.location",
    "VIGIL_SYSTEM_ID": "minion.system_id",
}


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    applied = []
    for var, dotted in ENV_OVERRIDES.items():
        value = env.get(var)
        if value is None or value == "":
            continue
        section, key = dotted.split(".")
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            continue  # the file's own error is reported by validation
        target[key] = None if value.lower() in ("none", "off", "null") else value
        applied.append(var)
    return applied


def _validate_monitors(cfg: VigilConfig) -> list[str]:
    # Resolution (packages, inline settings, monitor parameters) lives with the
    # scheduler; a config that the scheduler would refuse is refused here.
    from services.scheduler.packages import config_problems

    return config_problems(cfg)


def parse_config(
    data: Any, source: str = "<config>", env: Mapping[str, str] | None = None
) -> VigilConfig:
    """Validate already-loaded YAML data (with environment overrides)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    _apply_env(data, os.environ if env is None else env)
    try:
        cfg = VigilConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe(exc)}") from None
    problems = _validate_monitors(cfg)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return cfg


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> VigilConfig:
    """Read and validate a YAML file (``None``: defaults plus environment)."""
    if path is None:
        return parse_config({}, "<defaults>", env)
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return parse_config(data, str(p), env)
