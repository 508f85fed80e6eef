"""Monitors: what a minion can test. See :mod:`minion.monitors.base` for the interface."""

from minion.monitors.base import Monitor, MonitorParams, PollContext, PollOutcome, Status, Target

__all__ = ["Monitor", "MonitorParams", "PollContext", "PollOutcome", "Status", "Target"]
