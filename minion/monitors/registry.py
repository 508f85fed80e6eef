"""Which monitors exist: the built-ins plus plugins from the ``vigil.monitors``
entry-point group. Built-ins are imported lazily, by name, so that a process
that only validates parameters does not pay for every protocol library.
"""

from __future__ import annotations

import importlib
import logging
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from minion.monitors.base import Monitor, MonitorParams
from services.core.validation import describe

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "vigil.monitors"

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


class UnknownMonitorError(LookupError):
    """No built-in or plugin monitor has this name."""


class ParamsError(ValueError):
    """A monitor's parameters do not match its schema; the message names the field."""


def _load(name: str, spec: str) -> type[Monitor[Any]]:
    # A plugin (or a built-in's library) that cannot be imported is reported
    # like an unknown monitor, naming the cause, not as a traceback.
    module, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownMonitorError(f"monitor {name!r} cannot be loaded from {spec}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Monitor)):
        raise UnknownMonitorError(f"monitor {name!r}: {spec} is not a vigil Monitor subclass")
    return cls


@cache
def _plugins() -> dict[str, str]:
    found: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN:
            log.warning(
                "plugin monitor %r (%s) ignored: a built-in has that name", ep.name, ep.value
            )
            continue
        found[ep.name] = ep.value
    return found


def available() -> list[str]:
    """Names of every monitor this process can run, sorted."""
    return sorted({*BUILTIN, *_plugins()})


@cache
def monitor_class(name: str) -> type[Monitor[Any]]:
    """The class behind a monitor name (raises :class:`UnknownMonitorError`)."""
    spec = BUILTIN.get(name) or _plugins().get(name)
    if spec is None:
        raise UnknownMonitorError(f"unknown monitor {name!r} (known: {', '.join(available())})")
    return _load(name, spec)


def validate_params(name: str, params: dict[str, Any], where: str = "params") -> MonitorParams:
    """Validate ``params`` for monitor ``name``; errors name the offending key."""
    cls = monitor_class(name)
    try:
        return cls.params_model.model_validate(params)
    except ValidationError as exc:
        # not chained: a ValidationError's text carries the input values,
        # which may be credentials (SNMP communities, keys, passwords)
        raise ParamsError(describe(exc, where)) from None


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
