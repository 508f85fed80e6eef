"""The configuration as the scheduler reads it: the core's schema, then what
only the scheduler can judge (packages, inline service settings, monitor
parameters), so that a file the scheduler would refuse is refused at load.

The nodes resolved while checking are remembered, and the inventory takes
them instead of resolving everything a second time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.core.config import ConfigError, VigilConfig
from services.core.config import load_config as load_schema
from services.core.config import parse_config as parse_schema
from services.scheduler.packages import config_problems


def check(cfg: VigilConfig, source: str) -> VigilConfig:
    """``cfg`` if the scheduler accepts it; else :class:`ConfigError` listing every problem."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return cfg


def parse_config(
    data: Any, source: str = "<config>", env: Mapping[str, str] | None = None
) -> VigilConfig:
    """Validate already-loaded YAML data (with environment overrides) for the scheduler."""
    return check(parse_schema(data, source, env), source)


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> VigilConfig:
    """Read and validate a configuration file for the scheduler (``None``: defaults)."""
    return check(load_schema(path, env), str(path) if path is not None else "<defaults>")
