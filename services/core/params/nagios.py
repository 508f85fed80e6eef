"""Parameters of the ``nagios`` monitor (see :mod:`minion.monitors.nagios`)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from services.core.params.base import MonitorParams
from services.core.params.credentials import CredentialName

#: Debian's monitoring-plugins locations: where relative plugin names are
#: looked up unless the minion's settings name other directories.
DEFAULT_PLUGIN_DIRS: tuple[str, ...] = ("/usr/lib/nagios/plugins", "/usr/lib/monitoring-plugins")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: A plugin is a file name, nothing more: no directory part, no ``..``, no
#: shell or path syntax. It is only ever looked up in the minion's own plugin
#: directories, so nothing sent by the scheduler (or forged on the wire) can
#: name an arbitrary program.
_PLUGIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}$")

#: Environment variables that change what a process loads or runs (the dynamic
#: loader, shells, interpreters): a service's ``env`` must not set them, or a
#: configured plugin could be made to run other code.
_ENV_DENIED = frozenset(
    {"PATH", "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "CDPATH",
     "GCONV_PATH", "LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV_HOST_CONF",
     "NODE_OPTIONS", "NODE_PATH", "LUA_PATH", "LUA_CPATH", "TCLLIBPATH", "HOME"}
)  # fmt: skip
_ENV_DENIED_PREFIXES = ("LD_", "DYLD_", "GLIBC_", "MALLOC_", "BASH_FUNC_", "PERL", "PYTHON",
                        "RUBY", "GEM_", "JAVA_", "_JAVA", "LC_", "LANG")  # fmt: skip

PLUGIN_NOT_ALLOWED = "plugin not allowed: {name}"


def plugin_name_allowed(name: str) -> bool:
    """Whether ``name`` is a plain plugin file name (checked again on the minion)."""
    return bool(_PLUGIN_NAME.match(name)) and ".." not in name


def env_name_allowed(name: str) -> bool:
    """Whether a service may set environment variable ``name`` for its plugin."""
    return (
        bool(_ENV_NAME.match(name))
        and name.upper() not in _ENV_DENIED
        and not name.upper().startswith(_ENV_DENIED_PREFIXES)
    )


class NagiosParams(MonitorParams):
    """Parameters of the Nagios plugin adapter."""

    #: Plugin file name (``check_tcp``), looked up in the minion's plugin
    #: directories only: never a path.
    plugin: str = Field(min_length=1, max_length=4096)
    #: Arguments, each one argv entry (no shell); ``{address}`` and ``{timeout}``
    #: are replaced, and with ``credential`` also ``{username}`` and ``{password}``
    #: (resolved on the minion, masked in the plugin's output).
    args: list[str] = Field(default_factory=list, max_length=200)
    #: Seconds the plugin may run; default: the attempt's whole time.
    timeout: float | None = Field(default=None, gt=0, le=3600)
    #: Output bytes kept (stdout; stderr is kept up to 4 KiB).
    max_output_bytes: int = Field(default=64 * 1024, ge=256, le=1 << 20)
    #: Extra environment variables for the plugin.
    env: dict[str, str] = Field(default_factory=dict)
    #: A credential of the minion's ``minion.credentials`` for ``{username}``/``{password}``.
    credential: CredentialName | None = None

    @field_validator("plugin")
    @classmethod
    def _plugin(cls, v: str) -> str:
        if not plugin_name_allowed(v):
            # repr: the name may hold control characters; never echo them raw
            raise ValueError(
                PLUGIN_NOT_ALLOWED.format(name=repr(v)[1:-1])
                + " (give the file name of a plugin in the minion's plugin directories,"
                " like check_tcp; paths are refused)"
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
            if not env_name_allowed(k):
                raise ValueError(f"{k}: may not be set (it changes what the plugin loads or runs)")
            if "\0" in val:
                raise ValueError(f"{k}: value contains NUL")
        return v
