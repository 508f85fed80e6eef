"""SNMP credentials per location and address range, installed by the minion.

The minion reads a list of :class:`SnmpProfile` from its configuration and
installs it with :func:`set_snmp_profiles`. For each poll the SNMP monitor
takes the first profile whose ``match`` covers the target (address ranges
and/or locations; an empty ``match`` covers everything, so a last catch-all
profile acts as the default), then lets the service's own parameters
override it field by field. What neither sets falls back to SNMP v2c,
community ``public``, port 161.

Secrets (communities, keys) are :class:`pydantic.SecretStr`: they show as
``**********`` in reprs, logs and validation errors.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

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


@dataclass(frozen=True, slots=True)
class EffectiveCredentials:
    """Credentials for one poll after profiles, parameters and defaults."""

    version: SnmpVersion
    port: int
    community: SecretStr
    user: str | None
    auth_protocol: AuthProtocol | None
    auth_key: SecretStr | None
    priv_protocol: PrivProtocol | None
    priv_key: SecretStr | None
    context: str
    profile: str

    def __repr__(self) -> str:  # short, and certain to show no secret
        return (
            f"EffectiveCredentials(version={self.version}, port={self.port}, "
            f"profile={self.profile!r})"
        )

    @property
    def security_level(self) -> str:
        """``noAuthNoPriv``, ``authNoPriv`` or ``authPriv`` (v3)."""
        if self.auth_key is None:
            return "noAuthNoPriv"
        return "authPriv" if self.priv_key is not None else "authNoPriv"


_profiles: tuple[SnmpProfile, ...] = ()


def set_snmp_profiles(profiles: Iterable[SnmpProfile | Mapping[str, Any]] | None) -> None:
    """Install the minion's SNMP profiles (first match wins); ``None`` clears them.

    Raises ``pydantic.ValidationError`` for a malformed profile; nothing is
    installed then.
    """
    global _profiles
    if profiles is None:
        _profiles = ()
        return
    _profiles = tuple(
        p if isinstance(p, SnmpProfile) else SnmpProfile.model_validate(p) for p in profiles
    )


def snmp_profiles() -> tuple[SnmpProfile, ...]:
    """The profiles in force."""
    return _profiles


def resolve_credentials(
    address: str, location: str, overrides: SnmpCredentials
) -> EffectiveCredentials:
    """Merge the first matching profile, then ``overrides`` (the service's
    parameters), then defaults. Raises ``ValueError`` when the result cannot
    work (e.g. v3 without a user)."""
    base: SnmpCredentials = SnmpCredentials()
    label = ""
    for i, prof in enumerate(_profiles):
        if prof.match.covers(address, location):
            base, label = prof, prof.label or f"profile {i}"
            break

    def pick(key: str) -> Any:
        val = getattr(overrides, key)
        return val if val is not None else getattr(base, key)

    version: SnmpVersion = pick("version") or ("v3" if pick("user") else "v2c")
    auth_key = pick("auth_key")
    priv_key = pick("priv_key")
    creds = EffectiveCredentials(
        version=version,
        port=pick("port") or 161,
        community=pick("community") or SecretStr("public"),
        user=pick("user"),
        auth_protocol=(pick("auth_protocol") or "SHA") if auth_key is not None else None,
        auth_key=auth_key,
        priv_protocol=(pick("priv_protocol") or "AES") if priv_key is not None else None,
        priv_key=priv_key,
        context=pick("context") or "",
        profile=label,
    )
    if version == "v3":
        if not creds.user:
            raise ValueError("SNMPv3 needs a user (in the parameters or an SNMP profile)")
        if creds.priv_key is not None and creds.auth_key is None:
            raise ValueError("SNMPv3 privacy needs an auth_key as well")
    return creds
