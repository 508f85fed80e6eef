"""The per-process sections: ``nats``, ``scheduler``, ``events``, ``minion``."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from services.core.config.fields import (
    DatabaseUrl,
    HostPort,
    NatsUrl,
    PositiveDuration,
    Strict,
)
from services.core.durations import Duration
from services.core.ids import DEFAULT_LOCATION, Location, NodeId
from services.core.params.credentials import Credential, CredentialName
from services.core.params.nagios import DEFAULT_PLUGIN_DIRS
from services.core.params.snmp import SnmpProfile


class PkiSettings(Strict):
    """Where a process finds its TLS material (``vigil ca`` writes it)."""

    #: ``ca.pem``, ``<identity>.pem``, ``<identity>-key.pem`` and ``revoked.json``.
    dir: str = ".vigil/pki"
    #: Explicit files instead of those in ``dir`` (a site bundle, a container's secrets).
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    #: INSECURE: no TLS and no authentication anywhere, for development on one
    #: machine. Refused unless every address is loopback; logged as a warning.
    plaintext_loopback_dev: bool = False


class NatsSettings(Strict):
    #: One URL or several, comma-separated.
    url: NatsUrl = "nats://127.0.0.1:4222"


class SchedulerSettings(Strict):
    listen: HostPort = "127.0.0.1:50051"
    #: A health-only TLS port that asks for no client certificate (probes); ``null`` turns it off.
    probe_listen: HostPort | None = "127.0.0.1:50061"
    #: Prometheus metrics and a liveness page; ``null`` turns it off.
    metrics_listen: HostPort | None = "127.0.0.1:9464"
    store_url: DatabaseUrl = "sqlite:///.vigil/scheduler.db"
    #: How often minions send heartbeats, and how many may be missed.
    heartbeat_interval: PositiveDuration = 5.0
    heartbeat_misses: int = Field(default=3, ge=1, le=100)
    #: A ``heartbeat updated`` event per live minion this often; ``null``: never.
    heartbeat_event_interval: PositiveDuration | None = 300.0
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
    #: Limits per identity (docs/security.md, "Limits"): ``PollNow`` calls per second
    #: and the burst one caller may spend at once (``null`` rate: no limit); ResultSink
    #: streams per minion certificate (beyond, a new one replaces the oldest).
    poll_now_rate: float | None = Field(default=5.0, gt=0, le=100_000)
    poll_now_burst: int = Field(default=50, ge=1, le=100_000)
    sink_sessions_per_minion: int = Field(default=2, ge=1, le=100)


class EventsSettings(Strict):
    listen: HostPort = "127.0.0.1:50052"
    #: A health-only TLS port that asks for no client certificate (probes); ``null`` turns it off.
    probe_listen: HostPort | None = "127.0.0.1:50062"
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
    #: Limits per identity (docs/security.md, "Limits"): Subscribe streams one caller
    #: may hold (within ``max_subscribers``); ``Publish`` and hook writes (``CreateHook``
    #: and ``UpdateHook`` together) per second and the burst one caller may spend at
    #: once (``null`` rate: no limit).
    subscribe_per_identity: int = Field(default=10, ge=1, le=10_000)
    publish_rate: float | None = Field(default=50.0, gt=0, le=100_000)
    publish_burst: int = Field(default=200, ge=1, le=100_000)
    hook_write_rate: float | None = Field(default=1.0, gt=0, le=100_000)
    hook_write_burst: int = Field(default=30, ge=1, le=100_000)
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
    #: Key that encrypts hook secrets at rest (created, mode 0600, when missing;
    #: ``VIGIL_EVENTS_SECRET_KEY`` holds the key itself instead). Default: beside
    #: a SQLite store, else ``.vigil/events-secret.key``.
    secret_key_file: str | None = None
    #: Hook safety (docs/security.md, "Hook safety"): a hook may not POST to a
    #: loopback, link-local, private, shared (CGNAT), unspecified, multicast,
    #: reserved or otherwise non-public address, nor to a cloud metadata host;
    #: checked when the hook is created or updated and again on every connection
    #: of every delivery. ``hooks_allow_networks`` exempts addresses inside these
    #: networks (CIDR, e.g. ``10.20.0.0/16``, ``127.0.0.0/8``, ``::1/128``; a host
    #: address without a prefix length is one address). ``0.0.0.0/0`` or ``::/0``
    #: turns the check off for that family. Default: none.
    hooks_allow_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list
    )
    #: Host names (exactly, case-insensitive, no wildcards) whose hooks are not
    #: checked at all, whatever they resolve to: an operator's own receiver
    #: (e.g. ``hooks.internal.example``). The name's DNS is then trusted. Default: none.
    hooks_allow_hosts: list[str] = Field(default_factory=list)

    @field_validator("hooks_allow_networks", mode="before")
    @classmethod
    def _allow_networks(cls, v: Any) -> Any:
        if not isinstance(v, list | tuple):
            return v
        out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for x in v:
            if isinstance(x, ipaddress.IPv4Network | ipaddress.IPv6Network):
                out.append(x)
                continue
            if not isinstance(x, str):
                raise ValueError(f"{x!r} is not a network like 10.0.0.0/8 or fd00::/8")
            try:
                # "10.0.0.1/8" is what operators write; accept it as 10.0.0.0/8.
                out.append(ipaddress.ip_network(x.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"{x[:80]!r} is not a network like 10.0.0.0/8 or fd00::/8"
                ) from None
        return out

    @field_validator("hooks_allow_hosts")
    @classmethod
    def _allow_hosts(cls, v: list[str]) -> list[str]:
        label = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?"
        host_name = re.compile(rf"(?=.{{1,253}}$){label}(?:\.{label})*")
        out = []
        for name in v:
            host = name.strip().lower().rstrip(".")
            try:
                ipaddress.ip_address(host.strip("[]"))
                address = True
            except ValueError:
                # numeric forms such as 2130706433 or 127.1 are addresses too
                address = host.rsplit(".", 1)[-1].isdigit()
            if address:
                raise ValueError(
                    f"{name[:80]!r} is an address: put it in events.hooks_allow_networks"
                )
            if not host_name.fullmatch(host):
                raise ValueError(f"{name[:80]!r} is not a host name")
            out.append(host)
        return out

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
    #: Secrets by name, for services whose parameters say ``credential: <name>``
    #: (HTTP auth, SNMP communities and v3 keys, Nagios ``{password}``). Never logged.
    credentials: dict[CredentialName, Credential] = Field(default_factory=dict)
    #: The only monitors this minion runs (others are UNKNOWN); ``null``: all installed.
    monitors_allow: list[str] | None = None
    # --- issue 13 (a minion uses the cores its site gives it) ---------------------
    #: Worker processes behind this one identity, each taking its share of the
    #: location's queue group (``max_in_flight`` is divided among them); ``null``:
    #: one per core this process may run on; 1: a single process.
    workers: int | None = Field(default=None, ge=1, le=256)
    #: The event loop of the minion's processes: ``uvloop`` (libuv, about twice
    #: the connects per CPU second) or ``asyncio`` (the standard library's).
    event_loop: str = Field(default="uvloop", pattern=r"^(asyncio|uvloop)$")

    @field_validator("plugin_dirs")
    @classmethod
    def _absolute(cls, v: list[str]) -> list[str]:
        for d in v:
            if not d.startswith("/"):
                raise ValueError(f"{d!r} must be an absolute path")
        return v
