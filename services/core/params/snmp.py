"""Parameters of the ``snmp`` monitor and the SNMP credentials a minion's
profiles give (see :mod:`minion.monitors.snmp` and
:mod:`minion.monitors.snmp_config`).

Secrets (communities, keys) are :class:`pydantic.SecretStr`: they show as
``**********`` in reprs, logs and validation errors.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from services.core.params.base import MonitorParams
from services.core.params.fields import CredentialName

SnmpVersion = Literal["v1", "v2c", "v3"]
AuthProtocol = Literal["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"]
PrivProtocol = Literal[
    "DES", "3DES", "AES", "AES128", "AES192", "AES256", "AES192BLMT", "AES256BLMT"
]

_LOCATION = re.compile(r"^[A-Za-z0-9_-]+$")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SnmpCredentials(BaseModel):
    """How to talk to an agent. Every field is optional: unset fields come from
    the matching profile, then from the defaults (v2c, ``public``, port 161)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: SnmpVersion | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    #: v1/v2c community string.
    community: SecretStr | None = None
    #: v3 USM user name.
    user: str | None = Field(default=None, min_length=1, max_length=32)
    auth_protocol: AuthProtocol | None = None
    #: v3 authentication pass phrase (at least 8 characters).
    auth_key: SecretStr | None = None
    priv_protocol: PrivProtocol | None = None
    #: v3 privacy pass phrase (at least 8 characters).
    priv_key: SecretStr | None = None
    #: v3 context name.
    context: str | None = Field(default=None, max_length=255)

    @field_validator("auth_key", "priv_key")
    @classmethod
    def _key_length(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 8:
            raise ValueError("must be at least 8 characters (RFC 3414)")
        return v

    @field_validator("community")
    @classmethod
    def _community(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not (1 <= len(v.get_secret_value()) <= 255):
            raise ValueError("must be 1-255 characters")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SnmpCredentials:
        if self.version in ("v1", "v2c"):
            for key in (
                "user",
                "auth_protocol",
                "auth_key",
                "priv_protocol",
                "priv_key",
                "context",
            ):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: only for version v3")
        if self.version == "v3" and self.community is not None:
            raise ValueError("community: not used by version v3 (set user and keys)")
        if self.priv_key is not None and self.auth_key is None and self.version == "v3":
            raise ValueError("priv_key: SNMPv3 privacy needs auth_key as well")
        return self


def _parse_range(
    spec: str,
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] | IpNetwork:
    if "-" in spec:
        lo_s, _, hi_s = spec.partition("-")
        lo, hi = ipaddress.ip_address(lo_s.strip()), ipaddress.ip_address(hi_s.strip())
        if lo.version != hi.version or lo > hi:  # type: ignore[operator]
            raise ValueError(f"{spec!r}: range ends differ in family or are reversed")
        return (lo, hi)
    return ipaddress.ip_network(spec.strip(), strict=False)


class SnmpMatch(BaseModel):
    """Which targets a profile covers: any of ``addresses`` and any of
    ``locations`` (an empty list does not restrict)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ``10.0.0.0/8``, ``192.0.2.7``, ``2001:db8::/32`` or ``10.1.0.1-10.1.0.99``.
    addresses: list[str] = Field(default_factory=list)
    locations: list[str] = Field(default_factory=list)

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for i, spec in enumerate(v):
            try:
                _parse_range(spec)
            except ValueError as exc:
                raise ValueError(
                    f"[{i}] {spec!r} is not an address, network or range: {exc}"
                ) from None
        return v

    @field_validator("locations")
    @classmethod
    def _locations(cls, v: list[str]) -> list[str]:
        for loc in v:
            if not _LOCATION.match(loc):
                raise ValueError(f"{loc!r} is not a location name (letters, digits, - and _)")
        return v

    def covers(self, address: str, location: str) -> bool:
        """Whether this match covers ``address`` at ``location``."""
        if self.locations and location not in self.locations:
            return False
        if not self.addresses:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        for spec in self.addresses:
            rng = _parse_range(spec)
            if isinstance(rng, tuple):
                lo, hi = rng
                if ip.version == lo.version and lo <= ip <= hi:  # type: ignore[operator]
                    return True
            elif ip.version == rng.version and ip in rng:
                return True
        return False


class SnmpProfile(SnmpCredentials):
    """Credentials applied to the targets its ``match`` covers."""

    #: A label for operators (shown in reasons, never the secrets).
    label: str = Field(default="", max_length=100)
    match: SnmpMatch = Field(default_factory=SnmpMatch)


Operator = Literal["<", ">", "<=", ">=", "=", "!=", "~"]

_OID = re.compile(r"^\.?[0-2](\.(0|[1-9][0-9]{0,9}))+$")


class SnmpParams(SnmpCredentials, MonitorParams):
    """Parameters of the SNMP monitor (credentials fields: see :class:`SnmpCredentials`)."""

    #: A credential of the minion's ``minion.credentials`` (community or v3 user
    #: and keys), resolved on the minion; the fields above still override it.
    credential: CredentialName | None = None

    #: The object to GET, or the subtree to WALK. Default: sysObjectID.0.
    oid: str = "1.3.6.1.2.1.1.2.0"
    #: WALK the subtree under ``oid`` instead of a GET.
    walk: bool = False
    operator: Operator | None = None
    operand: str | None = Field(default=None, max_length=4096)
    #: WALK: ``all`` rows, ``any`` row, or a ``count`` of rows must meet the criterion.
    match: Literal["all", "any", "count"] = "all"
    #: ``match: count``: fewest / most matching rows.
    minimum: int | None = Field(default=None, ge=0)
    maximum: int | None = Field(default=None, ge=0)
    #: WALK: stop after this many rows (a DOWN when exceeded: the subtree is larger).
    max_rows: int = Field(default=1000, ge=1, le=100000)

    @field_validator("oid")
    @classmethod
    def _oid(cls, v: str) -> str:
        if not _OID.match(v):
            raise ValueError(f"{v!r} is not a numeric OID like 1.3.6.1.2.1.1.3.0")
        return v.lstrip(".")

    @model_validator(mode="after")
    def _criteria(self) -> SnmpParams:
        if (self.operator is None) != (self.operand is None):
            raise ValueError("operator and operand go together")
        if self.operator == "~":
            try:
                re.compile(self.operand or "")
            except re.error as exc:
                raise ValueError(f"operand: not a valid regular expression: {exc}") from None
        elif self.operator in ("<", ">", "<=", ">="):
            try:
                float(self.operand or "")
            except ValueError:
                raise ValueError(
                    f"operand: {self.operator} compares numbers, {self.operand!r} is not one"
                ) from None
        if not self.walk and (
            self.match != "all" or self.minimum is not None or self.maximum is not None
        ):
            raise ValueError("match, minimum and maximum: only with walk: true")
        if self.match != "count" and (self.minimum is not None or self.maximum is not None):
            raise ValueError("minimum and maximum: only with match: count")
        if self.match == "count" and self.minimum is None and self.maximum is None:
            raise ValueError("match count: set minimum and/or maximum")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError("minimum is larger than maximum")
        return self
