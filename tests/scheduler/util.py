"""Building a state keeper on a real store, without NATS, for state-machine tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from minion.monitors.base import Status
from services.core.config.packages import DEFAULT_DOWNTIME, Flapping, MaintenanceWindow
from services.scheduler.assurance.housekeeping import Journal, StaleSweeper
from services.scheduler.assurance.keeper import Mailbox, Scheduling, StateKeeper
from services.scheduler.assurance.node_outage import Topology
from services.scheduler.assurance.persist import Persister
from services.scheduler.model import (
    InterfaceState,
    NodeState,
    Observation,
    ServiceKey,
    ServiceRuntime,
    ServiceSpec,
)
from services.scheduler.policy import Policy
from services.scheduler.store import SchedulerStore

T0 = 1_800_000_000.0


def policy(
    confirm_down: int = 1,
    confirm_up: int = 1,
    flapping: Flapping | None = None,
    maintenance: tuple[MaintenanceWindow, ...] = (),
    critical: str | None = "ICMP",
) -> Policy:
    return Policy(
        package="test",
        critical_service=critical,
        downtime=DEFAULT_DOWNTIME,
        confirm_down=confirm_down,
        confirm_up=confirm_up,
        retry_interval=10.0,
        flapping=flapping,
        maintenance=maintenance,
    )


def spec(key: ServiceKey, pol: Policy, interval: float = 60.0) -> ServiceSpec:
    return ServiceSpec(
        key=key,
        location="Default",
        monitor="tcp",
        params={"port": 1},
        interval=interval,
        timeout=1.0,
        retries=0,
        ttl=interval,
        policy=pol,
    )


class NoScheduling:
    """A dispatcher that schedules nothing; it keeps only ``polling_stopped`` as one would."""

    def __init__(self, services: Mapping[ServiceKey, ServiceRuntime]) -> None:
        self.services = services

    def reschedule(self, key: ServiceKey) -> None:
        pass

    def poll_now(self, key: ServiceKey, *, urgent: bool) -> str | None:
        return None

    def resume(self, key: ServiceKey) -> None:
        if (rt := self.services.get(key)) is not None:
            rt.polling_stopped = False


def topology(
    keys: list[ServiceKey],
    pol: Policy,
    critical: dict[tuple[str, str], ServiceKey] | None = None,
) -> Topology:
    """Services for ``keys``, with their interfaces and nodes."""
    services = {k: ServiceRuntime.new(spec(k, pol)) for k in keys}
    interfaces = {k.interface: InterfaceState(k.node_id, k.ip) for k in keys}
    for k in keys:
        interfaces[k.interface].services.add(k)
    for itf_key, crit in (critical or {}).items():
        interfaces[itf_key].critical = crit
    nodes = {k.node_id: NodeState(k.node_id, "Default") for k in keys}
    return Topology(services, interfaces, nodes)


async def make_keeper(
    url: str,
    keys: list[ServiceKey],
    pol: Policy,
    *,
    critical: dict[tuple[str, str], ServiceKey] | None = None,
    scheduling: Scheduling | None = None,
) -> StateKeeper:
    """A keeper over an opened store, with interfaces and nodes for ``keys``."""
    store = SchedulerStore(url)
    await store.open()
    topo = topology(keys, pol, critical)
    return StateKeeper(
        Mailbox(),
        topo,
        Persister(store, lambda: None),
        Journal(topo.services, store),
        scheduling or NoScheduling(topo.services),
    )


def stale_sweeper(keeper: StateKeeper) -> StaleSweeper:
    """The stale sweeper over the keeper's services and store."""
    topo = keeper.topology
    return StaleSweeper(topo.services, topo.polled, keeper.persister.emit)


def obs(key: ServiceKey, status: Status, at: float, reason: str = "") -> Observation:
    return Observation(key, status, reason or f"{status.value} at {at}", at)


async def outbox_events(keeper: StateKeeper) -> list[dict[str, Any]]:
    """Every event the keeper has written to the outbox, oldest first."""
    return [
        json.loads(payload) for _, _, payload in await keeper.persister.store.outbox_batch(100_000)
    ]


async def all_outages(keeper: StateKeeper) -> list[Any]:
    rows, _ = await keeper.persister.store.list_outages(
        state=None, node_id=None, service=None, before_id=None, limit=100_000
    )
    return sorted(rows, key=lambda r: r.id)
