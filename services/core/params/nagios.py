"""Parameters of the ``nagios`` monitor (see :mod:`minion.monitors.nagios`)."""

from __future__ import annotations

import os
import re

from pydantic import Field, field_validator

from services.core.params.base import MonitorParams

#: Debian's monitoring-plugins locations: where relative plugin names are
#: looked up unless the minion's settings name other directories.
DEFAULT_PLUGIN_DIRS: tuple[str, ...] = ("/usr/lib/nagios/plugins", "/usr/lib/monitoring-plugins")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class NagiosParams(MonitorParams):
    """Parameters of the Nagios plugin adapter."""

    #: Plugin name in a plugin directory (``check_tcp``) or absolute path.
    plugin: str = Field(min_length=1, max_length=4096)
    #: Arguments, each one argv entry (no shell); ``{address}`` and ``{timeout}`` are replaced.
    args: list[str] = Field(default_factory=list, max_length=200)
    #: Seconds the plugin may run; default: the attempt's whole time.
    timeout: float | None = Field(default=None, gt=0, le=3600)
    #: Output bytes kept (stdout; stderr is kept up to 4 KiB).
    max_output_bytes: int = Field(default=64 * 1024, ge=256, le=1 << 20)
    #: Extra environment variables for the plugin.
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("plugin")
    @classmethod
    def _plugin(cls, v: str) -> str:
        if "\0" in v:
            raise ValueError("must not contain NUL")
        parts = v.split("/")
        if ".." in parts:
            raise ValueError("must not contain '..'")
        if not os.path.isabs(v) and (v.startswith("./") or v.startswith("~")):
            raise ValueError(
                "a relative name is looked up in the plugin directories: "
                "give a plain name like check_tcp or an absolute path"
            )
        return v

    @field_validator("args")
    @classmethod
    def _args(cls, v: list[str]) -> list[str]:
        for i, a in enumerate(v):
            if "\0" in a:
                raise ValueError(f"args[{i}] contains NUL")
            if len(a) > 8192:
                raise ValueError(f"args[{i}] is longer than 8192 characters")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not _ENV_NAME.match(k):
                raise ValueError(f"{k!r} is not a valid environment variable name")
            if "\0" in val:
                raise ValueError(f"{k}: value contains NUL")
        return v
