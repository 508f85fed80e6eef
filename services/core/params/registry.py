"""Which monitors exist and what parameters each takes, without running any.

Built-in schemas are imported lazily, by name, from the schema-only modules
of this package (pydantic and the stdlib only). Plugins come from the
``vigil.monitors`` entry-point group; a plugin's schema is its monitor
class's ``params_model``, so looking it up imports the plugin's module: that
module should import only :mod:`minion.plugin`, which keeps it light.
"""

from __future__ import annotations

import importlib
import logging
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from services.core.params.base import MonitorParams
from services.core.validation import describe

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "vigil.monitors"

#: name → "module:Class" of the parameter model of each monitor that ships with Vigil.
BUILTIN: dict[str, str] = {
    "noop": "services.core.params.noop:NoopParams",
    "tcp": "services.core.params.tcp:TcpParams",
    "http": "services.core.params.http:HttpParams",
    "icmp": "services.core.params.icmp:IcmpParams",
    "dns": "services.core.params.dns:DnsParams",
    "snmp": "services.core.params.snmp:SnmpParams",
    "ssh": "services.core.params.ssh:SshParams",
    "tls_cert": "services.core.params.tls_cert:TlsCertParams",
    "nagios": "services.core.params.nagios:NagiosParams",
    "ipmi": "services.core.params.ipmi:IpmiParams",
    "redfish": "services.core.params.redfish:RedfishParams",
}


class UnknownMonitorError(LookupError):
    """No built-in or plugin monitor has this name."""


class ParamsError(ValueError):
    """A monitor's parameters do not match its schema; the message names the field."""


def load_object(name: str, spec: str) -> object:
    """Import ``spec`` ("module:attr") for monitor ``name``.

    A plugin (or a built-in's library) that cannot be imported is reported
    like an unknown monitor, naming the cause, not as a traceback.
    """
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownMonitorError(f"monitor {name!r} cannot be loaded from {spec}: {exc}") from None


def not_a_monitor(name: str, spec: str) -> UnknownMonitorError:
    """The error for an entry point that names something other than a monitor."""
    return UnknownMonitorError(f"monitor {name!r}: {spec} is not a vigil Monitor subclass")


@cache
def plugin_specs() -> dict[str, str]:
    """name → "module:Class" of the plugin monitors installed (entry points)."""
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
    """Names of every monitor known to this process, sorted."""
    return sorted({*BUILTIN, *plugin_specs()})


def unknown_monitor(name: str) -> UnknownMonitorError:
    """The error for a monitor name that no built-in or plugin has."""
    return UnknownMonitorError(f"unknown monitor {name!r} (known: {', '.join(available())})")


@cache
def params_model(name: str) -> type[MonitorParams]:
    """The parameter model of monitor ``name`` (raises :class:`UnknownMonitorError`)."""
    spec = BUILTIN.get(name)
    if spec is not None:
        model = load_object(name, spec)
    else:
        spec = plugin_specs().get(name)
        if spec is None:
            raise unknown_monitor(name)
        model = getattr(load_object(name, spec), "params_model", None)
    if not (isinstance(model, type) and issubclass(model, MonitorParams)):
        raise not_a_monitor(name, spec)
    return model


def validate_params(name: str, params: dict[str, Any], where: str = "params") -> MonitorParams:
    """Validate ``params`` for monitor ``name``; errors name the offending key."""
    model = params_model(name)
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        # not chained: a ValidationError's text carries the input values,
        # which may be credentials (SNMP communities, keys, passwords)
        raise ParamsError(describe(exc, where)) from None
