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
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.common.durations import Duration
from services.common.validation import describe

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
ServiceName = Annotated[str, _check(SERVICE_NAME_RE, "service name (letters, digits, '-', '_', '.')")]
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
    status_flush_interval: PositiveDuration = 2.0


class EventsSettings(Strict):
    listen: HostPort = "127.0.0.1:50052"
    metrics_listen: HostPort | None = "127.0.0.1:9465"
    store_url: DatabaseUrl = "sqlite:///.vigil/events.db"
    #: Retention of the published-events stream (JetStream).
    stream_max_age: PositiveDuration = 7 * 86400.0
    stream_max_bytes: int = Field(default=1 << 30, ge=1 << 20)


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


class Defaults(Strict):
    interval: PositiveDuration = 300.0
    timeout: PositiveDuration = 3.0
    retries: int = Field(default=1, ge=0, le=10)
    #: ``null``: a request lives as long as its service's interval.
    ttl: PositiveDuration | None = None


class LocationSettings(Strict):
    ttl: PositiveDuration | None = None


class ServiceConfig(Strict):
    name: ServiceName
    monitor: str
    params: dict[str, Any] = Field(default_factory=dict)
    interval: PositiveDuration | None = None
    timeout: PositiveDuration | None = None
    retries: int | None = Field(default=None, ge=0, le=10)
    ttl: PositiveDuration | None = None


class InterfaceConfig(Strict):
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    services: list[ServiceConfig] = Field(default_factory=list)

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
    foreign_id: str | None = None
    interfaces: list[InterfaceConfig] = Field(default_factory=list)

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
    nodes: list[NodeConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_nodes(self) -> VigilConfig:
        seen: set[str] = set()
        for i, node in enumerate(self.nodes):
            if node.id in seen:
                raise ValueError(f"nodes[{i}].id: duplicate node id {node.id!r}")
            seen.add(node.id)
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
    from minion.monitors.registry import ParamsError, UnknownMonitorError, validate_params

    problems = []
    for n, node in enumerate(cfg.nodes):
        for i, itf in enumerate(node.interfaces):
            for s, svc in enumerate(itf.services):
                where = f"nodes[{n}].interfaces[{i}].services[{s}]"
                try:
                    validate_params(svc.monitor, svc.params, f"{where}.params")
                except UnknownMonitorError as exc:
                    problems.append(f"{where}.monitor: {exc.args[0]}")
                except ParamsError as exc:
                    problems.append(str(exc))
    return problems


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
