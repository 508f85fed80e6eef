"""Resolving a node's service entries into fully specified services.

See :mod:`services.core.config.packages` for the rules (last matching package wins,
inline fields override). Used at configuration load (so ``vigil check`` and
start-up refuse what the scheduler could not run) and for every ``PutNode``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from services.core.config import NodeConfig, ServiceConfig, VigilConfig
from services.core.config.packages import (
    BUILTIN_PACKAGE,
    MaintenanceWindow,
    Package,
    PackageService,
)
from services.core.params import ParamsError, UnknownMonitorError, validate_params
from services.scheduler.model import ServiceKey, ServiceSpec
from services.scheduler.policy import Policy


class ResolveError(ValueError):
    """A service cannot be resolved; the message starts with the offending field."""


@lru_cache(maxsize=65536)
def _check_params(monitor: str, params_json: str) -> str | None:
    """Validate once per distinct (monitor, params): large inventories repeat them."""
    try:
        validate_params(monitor, json.loads(params_json), "params")
    except UnknownMonitorError as exc:
        return f"monitor: {exc.args[0]}"
    except ParamsError as exc:
        return str(exc)
    return None


def check_params(monitor: str, params: dict[str, Any]) -> str | None:
    """``None`` when ``params`` suit ``monitor``, else a message naming the field."""
    return _check_params(monitor, json.dumps(params, sort_keys=True, default=str))


def _policy(pkg: Package, node_maintenance: tuple[MaintenanceWindow, ...]) -> Policy:
    return Policy(
        package=pkg.name,
        critical_service=pkg.critical_service,
        downtime=pkg.downtime,
        confirm_down=pkg.confirm_down,
        confirm_up=pkg.confirm_up,
        retry_interval=pkg.retry_interval,
        flapping=pkg.flapping,
        maintenance=pkg.maintenance + node_maintenance,
    )


class Resolver:
    """Resolves services against the configuration's packages and defaults."""

    def __init__(self, cfg: VigilConfig) -> None:
        self.cfg = cfg
        self._policies: dict[tuple[str, tuple[MaintenanceWindow, ...]], Policy] = {}
        # Every service of an interface asks the same question: answer it once.
        self._matching: dict[tuple[str, str], list[Package]] = {}
        self._defs: dict[str, dict[str, PackageService]] = {}
        #: A package's own definition: its parameters' key and problem, found once.
        self._checked: dict[tuple[str, str, str], tuple[str, str | None]] = {}
        self._remembered: dict[int, tuple[NodeConfig, dict[ServiceKey, ServiceSpec]]] = {}

    def matching(self, ip: str, location: str) -> list[Package]:
        """Packages whose filter covers ``ip`` at ``location``, in file order."""
        found = self._matching.get((ip, location))
        if found is None:
            if len(self._matching) > 100_000:
                self._matching.clear()
            found = self._matching[(ip, location)] = [
                p for p in self.cfg.packages if p.filter.matches(ip, location)
            ]
        return found

    def governing(
        self, ip: str, location: str, service: str
    ) -> tuple[Package, PackageService | None]:
        """The package that governs ``service`` on ``ip``, and its definition of it."""
        matching = self.matching(ip, location)
        for pkg in reversed(matching):
            defs = self._defs.get(pkg.name)
            if defs is None:
                defs = self._defs[pkg.name] = {d.name: d for d in pkg.services}
            definition = defs.get(service)
            if definition is not None:
                return pkg, definition
        return (matching[-1] if matching else BUILTIN_PACKAGE), None

    def policy(self, pkg: Package, node_maintenance: tuple[MaintenanceWindow, ...]) -> Policy:
        """One shared Policy object per (package, node maintenance)."""
        key = (pkg.name, node_maintenance)
        pol = self._policies.get(key)
        if pol is None:
            pol = self._policies[key] = _policy(pkg, node_maintenance)
        return pol

    def service(self, node: NodeConfig, ip: str, entry: ServiceConfig) -> ServiceSpec:
        """A fully specified service (raises :class:`ResolveError`)."""
        pkg, definition = self.governing(ip, node.location, entry.name)
        monitor = entry.monitor or (definition.monitor if definition else None)
        if monitor is None:
            raise ResolveError(
                f"monitor: service {entry.name!r} names no monitor and no package matching "
                f"{ip} (location {node.location}) defines it"
            )
        params = dict(definition.params) if definition and definition.monitor == monitor else {}
        params.update(entry.params)
        if entry.params or definition is None:
            params_key, problem = "", check_params(monitor, params)
        else:
            params_key, problem = self._definition_check(pkg, definition, monitor, params)
        if problem is not None:
            raise ResolveError(problem)
        d = self.cfg.defaults

        def pick(name: str) -> Any:
            for source in (entry, definition, pkg):
                value = getattr(source, name, None) if source is not None else None
                if value is not None:
                    return value
            return getattr(d, name)

        interval = float(pick("interval"))
        explicit_interval = (
            entry.interval
            if entry.interval is not None
            else (definition.interval if definition else None)
        )
        explicit_ttl = (
            entry.ttl if entry.ttl is not None else (definition.ttl if definition else None)
        )
        return ServiceSpec(
            key=ServiceKey(node.id, ip, entry.name),
            location=node.location,
            monitor=monitor,
            params=params,
            interval=interval,
            timeout=float(pick("timeout")),
            retries=int(pick("retries")),
            ttl=self.ttl(node.location, explicit_ttl, explicit_interval, interval),
            node_label=node.label,
            policy=self.policy(pkg, node.maintenance),
            params_key=params_key,
        )

    def _definition_check(
        self, pkg: Package, definition: PackageService, monitor: str, params: dict[str, Any]
    ) -> tuple[str, str | None]:
        """``(params_key, problem)`` of a package's own definition: once, not per interface.

        The key is the parameters' value (the Struct cache it selects is
        process-wide and outlives this configuration), computed once here.
        """
        key = (pkg.name, definition.name, monitor)
        found = self._checked.get(key)
        if found is None:
            found = self._checked[key] = (
                json.dumps(params, sort_keys=True, default=str),
                check_params(monitor, params),
            )
        return found

    def ttl(
        self, location: str, ttl: float | None, explicit_interval: float | None, interval: float
    ) -> float:
        """TTL precedence: the service's ``ttl``, else its own ``interval``, else the
        location's ``ttl``, else the global default ``ttl``, else the effective interval.

        By default a request lives one interval: an expired request turns UNKNOWN
        before the next one is due, so requests never pile up.
        """
        if ttl is not None:
            return ttl
        if explicit_interval is not None:
            return explicit_interval
        loc = self.cfg.locations.get(location)
        if loc is not None and loc.ttl is not None:
            return loc.ttl
        if self.cfg.defaults.ttl is not None:
            return self.cfg.defaults.ttl
        return interval

    def node(
        self, node: NodeConfig, where: str = "node", *, remember: bool = False
    ) -> dict[ServiceKey, ServiceSpec]:
        """Every service of a node; errors name ``where.interfaces[i].services[j].field``.

        ``remember`` keeps the result for the next call with this very node
        object (once): the configuration is resolved when it is loaded, and
        the inventory then takes those specs instead of resolving it again.
        """
        kept = self._remembered.pop(id(node), None)
        if kept is not None and kept[0] is node:
            return kept[1]
        specs: dict[ServiceKey, ServiceSpec] = {}
        problems: list[str] = []
        for i, itf in enumerate(node.interfaces):
            for j, entry in enumerate(itf.services):
                try:
                    spec = self.service(node, str(itf.ip), entry)
                except ResolveError as exc:
                    # Collect them all: an operator fixes a file in one pass.
                    problems.append(f"{where}.interfaces[{i}].services[{j}].{exc}")
                    continue
                specs[spec.key] = spec
        if problems:
            raise ResolveError("; ".join(problems))
        if remember:
            self._remembered[id(node)] = (node, specs)
        return specs


_LAST: list[tuple[VigilConfig, Resolver]] = []


def resolver_for(cfg: VigilConfig) -> Resolver:
    """The resolver of this configuration object, shared by its validation and the inventory."""
    if _LAST and _LAST[0][0] is cfg:
        return _LAST[0][1]
    resolver = Resolver(cfg)
    _LAST[:] = [(cfg, resolver)]  # only the latest: no configuration is kept alive for long
    return resolver


def config_problems(cfg: VigilConfig) -> list[str]:
    """Everything the scheduler would refuse in this configuration."""
    problems = []
    for p, pkg in enumerate(cfg.packages):
        for s, svc in enumerate(pkg.services):
            problem = check_params(svc.monitor, svc.params)
            if problem is not None:
                problems.append(f"packages[{p}].services[{s}].{problem}")
    resolver = resolver_for(cfg)
    for n, node in enumerate(cfg.nodes):
        try:
            resolver.node(node, f"nodes[{n}]", remember=True)
        except ResolveError as exc:
            problems.append(str(exc))
    return problems
