"""Parameters of the ``redfish`` monitor (see :mod:`minion.monitors.redfish`).

The user name and password never appear here: ``credential`` names an entry
of the minion's ``minion.credentials`` (``username`` + ``password``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.core.params.base import MonitorParams
from services.core.params.fields import AbsPath, CredentialName, HostName, Port, Regex

#: Which system power state is UP.
ExpectPower = Literal["on", "off", "any"]
#: ``session``: a Redfish session (``X-Auth-Token``), kept and reused; ``basic``:
#: HTTP basic authentication on every request; ``auto``: a session when the
#: service root links a SessionService, basic otherwise.
AuthMode = Literal["auto", "session", "basic"]

_PATH = re.compile(r"^/redfish/v1(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?$")
_VALUE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

Scalar = bool | int | float | str


def check_resource_path(value: str) -> str:
    """A Redfish URI path: ``/redfish/v1/...`` without query, fragment or ``..``."""
    if not _PATH.match(value) or "/../" in value + "/" or "/./" in value + "/":
        raise ValueError(f"{value!r} is not a Redfish resource path like /redfish/v1/Systems/1")
    return value


def check_json_pointer(value: str) -> str:
    """An RFC 6901 JSON pointer: empty (the whole document) or ``/a/b/0``."""
    if value and not value.startswith("/"):
        raise ValueError(
            f"{value!r} is not a JSON pointer (it starts with '/', e.g. /Status/State)"
        )
    if re.search(r"~(?![01])", value):
        raise ValueError(f"{value!r}: '~' must be escaped as ~0 ('~') or ~1 ('/')")
    return value


def _check_member(value: str | None) -> str | None:
    """A member id (``1``, ``System.Embedded.1``) or a path under /redfish/v1."""
    if value is None:
        return None
    if value.startswith("/"):
        return check_resource_path(value)
    if not re.fullmatch(r"[A-Za-z0-9._~:@-]{1,128}", value):
        raise ValueError(f"{value!r} is neither a member id nor a path under /redfish/v1")
    return value


class RedfishCheck(BaseModel):
    """A condition on one resource: the value at ``pointer`` in the JSON of ``path``.

    Without a criterion the value must exist. ``equals``, ``one_of`` and
    ``matches`` exclude each other; ``minimum``/``maximum`` need a number.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(max_length=1024)
    pointer: str = Field(max_length=1024)
    equals: Scalar | None = None
    one_of: list[Scalar] | None = Field(default=None, min_length=1, max_length=64)
    matches: Regex | None = None
    minimum: float | None = None
    maximum: float | None = None
    #: Report the (numeric) value as a measured value under this name.
    value: str | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return check_resource_path(v)

    @field_validator("pointer")
    @classmethod
    def _pointer(cls, v: str) -> str:
        return check_json_pointer(v)

    @field_validator("value")
    @classmethod
    def _value_name(cls, v: str | None) -> str | None:
        if v is not None and not _VALUE_NAME.match(v):
            raise ValueError(f"{v!r} is not a value name (snake_case, e.g. inlet_celsius)")
        return v

    @model_validator(mode="after")
    def _criteria(self) -> RedfishCheck:
        given = [k for k in ("equals", "one_of", "matches") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)}: choose one")
        if given and (self.minimum is not None or self.maximum is not None):
            raise ValueError(f"{given[0]}: not together with minimum/maximum")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError("minimum is larger than maximum")
        return self


class RedfishParams(MonitorParams):
    """Parameters of the Redfish (HTTPS) monitor."""

    port: Port = 443
    #: A credential of the minion's ``minion.credentials`` (``username`` +
    #: ``password``); without one only unauthenticated resources can be read.
    credential: CredentialName | None = None
    auth: AuthMode = "auto"
    #: CA bundle (PEM) on the minion that signed the BMC's certificate
    #: (default: the system store).
    ca_file: AbsPath | None = None
    #: Accept any certificate (self-signed BMCs). The connection is encrypted
    #: but anyone on the path can read the credentials: prefer ``ca_file``.
    insecure_skip_verify: bool = False
    #: The name the certificate must carry (and SNI) when it names the BMC by
    #: host name rather than by the polled address.
    tls_server_name: HostName | None = None
    #: The ComputerSystem: a member id of /redfish/v1/Systems or a path (default: the first).
    system: str | None = None
    #: The Chassis whose sensors are read: id or path (default: the system's chassis).
    chassis: str | None = None
    #: Judge the system's PowerState and Status.Health.
    check_system: bool = True
    #: UP only in this PowerState (``on``: ``On``; ``off``: ``Off``; ``any``: not judged).
    expect_power: ExpectPower = "on"
    #: Read the chassis' sensors (Thermal and Power, or the Sensors collection).
    sensors: bool = True
    sensors_include: list[Regex] = Field(default_factory=list, max_length=64)
    sensors_exclude: list[Regex] = Field(default_factory=list, max_length=64)
    max_sensors: int = Field(default=200, ge=1, le=1000)
    #: Conditions on chosen resources.
    checks: list[RedfishCheck] = Field(default_factory=list, max_length=20)
    #: Most bytes read of one response.
    max_body_bytes: int = Field(default=4 << 20, ge=1024, le=64 << 20)

    @field_validator("system", "chassis")
    @classmethod
    def _member(cls, v: str | None) -> str | None:
        return _check_member(v)

    @model_validator(mode="after")
    def _consistent(self) -> RedfishParams:
        if self.insecure_skip_verify and self.ca_file is not None:
            raise ValueError("ca_file: not used with insecure_skip_verify: true")
        if self.insecure_skip_verify and self.tls_server_name is not None:
            raise ValueError("tls_server_name: not checked with insecure_skip_verify: true")
        if self.auth != "auto" and self.credential is None:
            raise ValueError(f"auth: {self.auth} needs a credential")
        names = [c.value for c in self.checks if c.value is not None]
        if len(names) != len(set(names)):
            raise ValueError("checks: two checks report the same value name")
        return self
