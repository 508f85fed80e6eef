"""SNMP credentials per location and address range, installed by the minion.

The minion reads a list of :class:`SnmpProfile` from its configuration and
installs it with :func:`set_snmp_profiles`. For each poll the SNMP monitor
takes the first profile whose ``match`` covers the target (address ranges
and/or locations; an empty ``match`` covers everything, so a last catch-all
profile acts as the default), then lets the service's own parameters
override it field by field. What neither sets falls back to SNMP v2c,
community ``public``, port 161.

A service may also name one of the minion's credentials
(``credential: <name>``, :mod:`minion.monitors.credentials`): its SNMP fields
sit between the profile and the service's own parameters.

Secrets (communities, keys) are :class:`pydantic.SecretStr`: they show as
``**********`` in reprs, logs and validation errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from minion.monitors.credentials import credential
from services.core.params.credentials import unknown_credential
from services.core.params.snmp import (
    AuthProtocol,
    PrivProtocol,
    SnmpCredentials,
    SnmpProfile,
    SnmpVersion,
)


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


class UnknownCredentialError(ValueError):
    """The service names a credential this minion does not have."""


def resolve_credentials(
    address: str, location: str, overrides: SnmpCredentials, credential_name: str | None = None
) -> EffectiveCredentials:
    """Merge the first matching profile, then the minion's credential
    ``credential_name``, then ``overrides`` (the service's parameters), then
    defaults. Raises ``ValueError`` when the result cannot work (e.g. v3
    without a user), :class:`UnknownCredentialError` for an unknown name."""
    base: SnmpCredentials = SnmpCredentials()
    label = ""
    for i, prof in enumerate(_profiles):
        if prof.match.covers(address, location):
            base, label = prof, prof.label or f"profile {i}"
            break
    named: dict[str, Any] = {}
    if credential_name is not None:
        cred = credential(credential_name)
        if cred is None:
            raise UnknownCredentialError(unknown_credential(credential_name))
        named = {
            "community": cred.community,
            "user": cred.user or (cred.username if cred.auth_key is not None else None),
            "auth_protocol": cred.auth_protocol,
            "auth_key": cred.auth_key,
            "priv_protocol": cred.priv_protocol,
            "priv_key": cred.priv_key,
        }
        label = f"credential {credential_name}"

    def pick(key: str) -> Any:
        val = getattr(overrides, key)
        if val is None:
            val = named.get(key)
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
