"""Field types shared by the monitors' parameter models: checked when a
service is configured, with the standard library only.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field


def check_regex(value: str | None) -> str | None:
    """Validator: ``value`` must compile as a Python regular expression."""
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


def check_abs_path(value: str | None) -> str | None:
    """Validator: ``value`` must be an absolute filesystem path (checked on the minion later)."""
    if value is not None and not os.path.isabs(value):
        raise ValueError("must be an absolute path (it is read on the minion)")
    return value


def check_ip(value: str | None) -> str | None:
    """Validator: ``value`` must be an IPv4 or IPv6 address (monitors never resolve names)."""
    if value is not None:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
    return value


#: A regular expression, checked when the service is configured.
Regex = Annotated[str, AfterValidator(check_regex)]
#: An IPv4 or IPv6 address.
IpAddress = Annotated[str, AfterValidator(check_ip)]
#: An absolute path on the minion.
AbsPath = Annotated[str, AfterValidator(check_abs_path)]
#: A TCP/UDP port number.
Port = Annotated[int, Field(ge=1, le=65535)]

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?$"
)


def check_hostname(value: str | None) -> str | None:
    """Validator: a DNS host name or an IP address (used for SNI, ``Host`` and matching)."""
    if value is None:
        return None
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise ValueError(f"{value!r} is not a valid host name")
    return value


#: A DNS host name or an IP address.
HostName = Annotated[str, AfterValidator(check_hostname)]

#: How a TLS client verifies its peer: nothing, chain and name, or the chain only.
TlsMode = Literal["none", "full", "chain"]


_CREDENTIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_credential_name(value: str) -> str:
    """Validator: a credential name (letters, digits, ``_ . -``; up to 64)."""
    if not _CREDENTIAL.match(value):
        raise ValueError(
            f"{value!r} is not a credential name (letters, digits, '_', '.', '-'; up to 64)"
        )
    return value


#: The name of an entry in the minion's ``minion.credentials``.
CredentialName = Annotated[str, AfterValidator(check_credential_name)]
