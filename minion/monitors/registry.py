"""Which monitors this minion can run: the built-ins plus plugins from the
``vigil.monitors`` entry-point group (found by :mod:`services.core.params.registry`).
Built-ins are imported lazily, by name, so that a minion pays only for the
protocol libraries of the monitors it is asked to run.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from minion.monitors.base import Monitor
from services.core.params.registry import (
    UnknownMonitorError,
    available,
    load_object,
    not_a_monitor,
    plugin_specs,
    unknown_monitor,
)

__all__ = ["BUILTIN", "MonitorSet", "UnknownMonitorError", "available", "monitor_class"]

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


class MonitorSet:
    """One instance per monitor kind, created on first use; closed together."""

    def __init__(self) -> None:
        self._instances: dict[str, Monitor[Any]] = {}

    def get(self, name: str) -> Monitor[Any]:
        """The shared instance for ``name`` (raises :class:`UnknownMonitorError`)."""
        inst = self._instances.get(name)
        if inst is None:
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
