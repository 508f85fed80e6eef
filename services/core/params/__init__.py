"""Monitor parameter schemas: what each monitor accepts, checked when a service
is configured.

One schema-only module per built-in monitor (pydantic and the stdlib, never a
protocol library), the shared field types (:mod:`.fields`) and the registry
that finds a schema by monitor name (:mod:`.registry`). The minion's monitors
import their models from here; the scheduler validates with them without
importing what the monitors run on.
"""

from services.core.params.base import MonitorParams
from services.core.params.registry import (
    ENTRY_POINT_GROUP,
    ParamsError,
    UnknownMonitorError,
    available,
    params_model,
    validate_params,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "MonitorParams",
    "ParamsError",
    "UnknownMonitorError",
    "available",
    "params_model",
    "validate_params",
]
