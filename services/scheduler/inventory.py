"""The inventory: nodes from the configuration file and from the API.

Nodes declared in the file are loaded at start and read-only through the API;
nodes put through ``vigil.v1.Inventory`` are persisted in the store and
survive restarts. A node id declared in the file shadows an API node of the
same id (the file wins; a warning says so).

Every change is validated completely (resolution against packages, monitor
parameters) before anything is applied, then applied inside the state keeper's
task, so it never races with a result of the same service: new services are
scheduled, removed ones unscheduled and their open outages closed with a
reason, changed ones keep their state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from services.core.config import NodeConfig, VigilConfig
from services.core.timeutil import now
from services.core.validation import describe
from services.scheduler.model import (
    InterfaceState,
    NodeState,
    ServiceKey,
    ServiceRuntime,
    ServiceSpec,
)
from services.scheduler.packages import ResolveError, resolver_for
from services.scheduler.policy import DEFAULT_POLICY
from services.scheduler.store import SchedulerStore

log = logging.getLogger(__name__)

CONFIG = "config"
API = "api"


class Slots(Protocol):
    """What the inventory asks of the dispatcher as services come, change and go."""

    def add(self, key: ServiceKey) -> None:
        """Schedule a new service."""

    def reschedule(self, key: ServiceKey) -> None:
        """A service's spec changed."""

    def remove(self, key: ServiceKey) -> None:
        """Stop polling a service."""


class Assured(Protocol):
    """What the inventory asks of the state keeper as services go."""

    async def forget(self, runtimes: list[ServiceRuntime], at: float, reason: str) -> None:
        """Close their outages, announce and drop their state."""


class InventoryError(ValueError):
    """Bad node definition; the message names the field (``node.interfaces[0].ip: ...``)."""


class ReadOnlyNode(PermissionError):
    """The node is declared in the configuration file."""


@dataclass(frozen=True, slots=True)
class NodeEntry:
    node: NodeConfig
    source: str
    specs: dict[ServiceKey, ServiceSpec]


def critical_of(keys: list[ServiceKey], specs: dict[ServiceKey, ServiceSpec]) -> ServiceKey | None:
    """The interface's critical service: the one its governing package names critical."""
    for key in sorted(keys):
        policy = specs[key].policy or DEFAULT_POLICY
        if policy.critical_service == key.service:
            return key
    return None


class Inventory:
    """Owns the node definitions and the runtime objects built from them.

    It alone adds and removes services, interfaces and nodes (and replaces a
    service's spec); everyone else is handed read-only views of these dicts.
    """

    def __init__(self, cfg: VigilConfig, store: SchedulerStore) -> None:
        self.cfg = cfg
        self.store = store
        self.resolver = resolver_for(cfg)
        self.services: dict[ServiceKey, ServiceRuntime] = {}
        self.interfaces: dict[tuple[str, str], InterfaceState] = {}
        self.nodes: dict[str, NodeState] = {}
        self.entries: dict[str, NodeEntry] = {}
        #: node id → its service keys (the runtime dict is keyed by service).
        self._by_node: dict[str, set[ServiceKey]] = {}
        #: Bumped on every change of the set of services (lets readers cache sorted views).
        self.version = 0

    # -- building ------------------------------------------------------------------

    def validate(
        self, raw: dict[str, Any], where: str = "node"
    ) -> tuple[NodeConfig, dict[ServiceKey, ServiceSpec]]:
        """Parse and resolve a node document; raises :class:`InventoryError`."""
        try:
            node = NodeConfig.model_validate(raw)
        except ValidationError as exc:
            raise InventoryError(describe(exc, where)) from None
        try:
            specs = self.resolver.node(node, where)
        except ResolveError as exc:
            raise InventoryError(str(exc)) from None
        return node, specs

    async def load(self) -> None:
        """Nodes from the file, then the API nodes kept in the store."""
        for i, node in enumerate(self.cfg.nodes):
            specs = self.resolver.node(node, f"nodes[{i}]")
            self.entries[node.id] = NodeEntry(node, CONFIG, specs)
        for node_id, doc in (await self.store.load_nodes()).items():
            if node_id in self.entries:
                log.warning(
                    "node %s is declared in the configuration file; its API definition is ignored",
                    node_id,
                )
                continue
            try:
                node, specs = self.validate(doc, f"stored node {node_id}")
            except InventoryError as exc:
                # Keep the document: a later config (packages, monitors) may make it valid again.
                log.error("stored node %s is no longer valid and is not polled: %s", node_id, exc)
                continue
            self.entries[node_id] = NodeEntry(node, API, specs)
        for entry in self.entries.values():
            self._install(entry)

    def _install(
        self, entry: NodeEntry
    ) -> tuple[list[ServiceKey], list[ServiceKey], list[ServiceRuntime]]:
        """Bring the runtime dicts in line with ``entry``; returns (added, changed, removed)."""
        node = entry.node
        self.version += 1
        old = self._by_node.get(node.id, set())
        new = set(entry.specs)
        self._by_node[node.id] = new
        added, changed = [], []
        for key in new:
            spec = entry.specs[key]
            rt = self.services.get(key)
            if rt is None:
                self.services[key] = ServiceRuntime.new(spec)
                added.append(key)
            elif rt.spec != spec:
                rt.respec(spec)
                changed.append(key)
        removed = [self.services.pop(k) for k in old - new]
        state = self.nodes.get(node.id)
        if state is None:
            self.nodes[node.id] = NodeState(node.id, node.location, node.label)
        else:
            state.location, state.label = node.location, node.label
        by_ip: dict[str, list[ServiceKey]] = {}
        for key in new:
            by_ip.setdefault(key.ip, []).append(key)
        for ip in {k.ip for k in old} - set(by_ip):
            self.interfaces.pop((node.id, ip), None)
        for ip, keys in by_ip.items():
            itf = self.interfaces.get((node.id, ip))
            if itf is None:
                itf = self.interfaces[(node.id, ip)] = InterfaceState(node.id, ip)
            itf.critical = critical_of(keys, entry.specs)
            itf.services = set(keys)
        return added, changed, removed

    def _uninstall(self, node_id: str) -> list[ServiceRuntime]:
        self.version += 1
        keys = self._by_node.pop(node_id, set())
        removed = [self.services.pop(k) for k in keys if k in self.services]
        for ip in {k.ip for k in keys}:
            self.interfaces.pop((node_id, ip), None)
        self.nodes.pop(node_id, None)
        return removed

    # -- the API's operations (run inside the keeper's task) -------------------------

    def get(self, node_id: str) -> NodeEntry | None:
        """A node's entry."""
        return self.entries.get(node_id)

    def check_writable(self, node_id: str) -> None:
        """Raise :class:`ReadOnlyNode` for a node declared in the file."""
        entry = self.entries.get(node_id)
        if entry is not None and entry.source == CONFIG:
            raise ReadOnlyNode(
                f"node {node_id} is declared in the configuration file; change it there"
            )

    async def put(
        self,
        node: NodeConfig,
        specs: dict[ServiceKey, ServiceSpec],
        scheduler: Slots,
        keeper: Assured,
    ) -> NodeEntry:
        """Persist and apply a validated node (call inside the keeper's task)."""
        self.check_writable(node.id)
        await self.store.put_node(node.id, node.model_dump(mode="json", exclude_none=True))
        entry = NodeEntry(node, API, specs)
        self.entries[node.id] = entry
        added, changed, removed = self._install(entry)
        for key in added:
            scheduler.add(key)
        for key in changed:
            scheduler.reschedule(key)
        for rt in removed:
            scheduler.remove(rt.key)
        if removed:
            await keeper.forget(removed, now(), "deleted")
        log.info(
            "node %s put: %d service(s) added, %d changed, %d removed",
            node.id,
            len(added),
            len(changed),
            len(removed),
        )
        return entry

    async def delete(self, node_id: str, scheduler: Slots, keeper: Assured) -> tuple[int, int]:
        """Remove an API node (call inside the keeper's task); returns (services, outages closed)."""
        self.check_writable(node_id)
        if node_id not in self.entries:
            raise KeyError(node_id)
        await self.store.delete_node(node_id)
        del self.entries[node_id]
        removed = self._uninstall(node_id)
        for rt in removed:
            scheduler.remove(rt.key)
        outages = sum(1 for rt in removed if rt.outage is not None)
        await keeper.forget(removed, now(), "deleted")
        log.info(
            "node %s deleted: %d service(s), %d outage(s) closed", node_id, len(removed), outages
        )
        return len(removed), outages
