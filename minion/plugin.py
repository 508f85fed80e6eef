"""The public face for monitor plugins: everything a third-party monitor imports.

A plugin package imports only this module (plus pydantic for its field
declarations), so that it keeps working when Vigil's internals move. The
scheduler imports the plugin's module to find its parameter model; through
this module that costs the monitor interface alone, none of the minion's
runtime or protocol libraries::

    from minion.plugin import Monitor, MonitorParams, PollContext, PollOutcome, Target

See docs/monitors.md, "Writing a monitor plugin", and examples/plugin/.
"""

from minion.monitors.base import Monitor, PollContext, PollOutcome, Target, elapsed_ms
from services.core.params.base import MonitorParams
from services.core.params.fields import AbsPath, HostName, IpAddress, Port, Regex
from services.core.status import Status

__all__ = [
    "AbsPath",
    "HostName",
    "IpAddress",
    "Monitor",
    "MonitorParams",
    "PollContext",
    "PollOutcome",
    "Port",
    "Regex",
    "Status",
    "Target",
    "elapsed_ms",
]
