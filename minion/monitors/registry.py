"""Which monitors this minion can run: the built-ins plus plugins from the
``vigil.monitors`` entry-point group (found by :mod:`services.core.params.registry`).
Built-ins are imported lazily, by name, so that a minion pays only for the
protocol libraries of the monitors it is asked to run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import cache
from typing import Any, ClassVar

from pydantic import ConfigDict

from minion.monitors.base import Monitor, MonitorParams, PollContext, PollOutcome, Target
from services.core.params.registry import (
    UnknownMonitorError,
    available,
    load_object,
    not_a_monitor,
    plugin_specs,
    unknown_monitor,
)

__all__ = [
    "BUILTIN",
    "MonitorSet",
    "UnknownMonitorError",
    "available",
    "monitor_class",
    "monitors_allowed",
    "set_monitors_allow",
]

log = logging.getLogger(__name__)

#: name → "module:Class" for the monitors that ship with Vigil.
BUILTIN: dict[str, str] = {
    "noop": "minion.monitors.noop:NoopMonitor",
    "tcp": "minion.monitors.tcp:TcpMonitor",
    "http": "minion.monitors.http:HttpMonitor",
    "icmp": "minion.monitors.icmp:IcmpMonitor",
    "dns": "minion.monitors.dns:DnsMonitor",
    "snmp": "minion.monitors.snmp:SnmpMonitor",
    "ssh": "minion.monitors.ssh:SshMonitor",
    "tls_cert": "minion.monitors.tls_cert:TlsCertMonitor",
    "nagios": "minion.monitors.nagios:NagiosMonitor",
    "ipmi": "minion.monitors.ipmi:IpmiMonitor",
    "redfish": "minion.monitors.redfish:RedfishMonitor",
}


@cache
def monitor_class(name: str) -> type[Monitor[Any]]:
    """The class behind a monitor name (raises :class:`UnknownMonitorError`)."""
    spec = BUILTIN.get(name) or plugin_specs().get(name)
    if spec is None:
        raise unknown_monitor(name)
    cls = load_object(name, spec)
    if not (isinstance(cls, type) and issubclass(cls, Monitor)):
        raise not_a_monitor(name, spec)
    return cls


#: ``minion.monitors_allow``: the monitors this minion runs (``None``: all it has).
_allow: frozenset[str] | None = None

NOT_ALLOWED = "monitor not allowed on this minion: {name}"


def set_monitors_allow(names: Iterable[str] | None) -> None:
    """Restrict the monitors this minion runs to ``names`` (``None``: every one)."""
    global _allow
    _allow = None if names is None else frozenset(names)


def monitors_allowed() -> frozenset[str] | None:
    """The allow-list in force (``None``: no restriction)."""
    return _allow


class _Empty(MonitorParams):
    """Accepts anything: a refused monitor's parameters are never looked at."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class RefusedMonitor(Monitor[_Empty]):
    """Stands in for a monitor the minion's allow-list excludes: every poll is
    UNKNOWN and the real monitor (and its parameters) are never touched."""

    name: ClassVar[str] = "refused"
    params_model = _Empty

    def __init__(self, refused: str) -> None:
        self.refused = refused

    async def poll(self, target: Target, params: _Empty, ctx: PollContext) -> PollOutcome:
        """UNKNOWN: this minion does not run the monitor."""
        return PollOutcome.unknown(NOT_ALLOWED.format(name=self.refused))


class MonitorSet:
    """One instance per monitor kind, created on first use; closed together.

    A monitor outside ``minion.monitors_allow`` is never loaded: :meth:`get`
    gives a :class:`RefusedMonitor` for it.
    """

    def __init__(self) -> None:
        self._instances: dict[str, Monitor[Any]] = {}

    def get(self, name: str) -> Monitor[Any]:
        """The shared instance for ``name`` (raises :class:`UnknownMonitorError`)."""
        inst = self._instances.get(name)
        if inst is None:
            if _allow is not None and name not in _allow:
                # not cached: the allow-list is fixed for the process, and names
                # come from the wire, so a flood of invented ones must not grow memory
                return RefusedMonitor(name)
            inst = self._instances[name] = monitor_class(name)()
        return inst

    async def close(self) -> None:
        """Close every instance created so far."""
        for inst in self._instances.values():
            try:
                await inst.close()
            except Exception:
                log.exception("closing monitor %s failed", inst.name)
        self._instances.clear()
