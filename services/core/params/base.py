"""The base of every monitor's parameter model.

It lives in the core, not beside the monitors, because the scheduler
validates a service's parameters when it is configured and must not import
the protocol libraries the monitors run on.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class MonitorParams(BaseModel):
    """Base of every monitor's parameter model: unknown keys are errors, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
