"""Parameters of the ``noop`` monitor (see :mod:`minion.monitors.noop`)."""

from __future__ import annotations

from services.core.params.base import MonitorParams


class NoopParams(MonitorParams):
    """No parameters."""
