"""Field types shared by the configuration sections: addresses, URLs, durations."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from services.core.durations import PollInterval, PositiveDuration

__all__ = ["DatabaseUrl", "HostPort", "NatsUrl", "PollInterval", "PositiveDuration", "Strict"]


def _mask_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at:
        if "@" not in rest:
            return url
        # A password with an unencoded "/" in it: mask up to the last "@" rather than leak it.
        userinfo, at, host = rest.rpartition("@")
        slash = path = ""
    user, colon, _ = userinfo.partition(":")
    # ``nats://token@host``: a lone userinfo may itself be the secret.
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}{sep}{shown}@{host}{slash}{path}"


def mask_url(url: str) -> str:
    """``url`` (or a comma-separated list) with the userinfo's password shown as ``***``.

    A rejected URL is repeated in the error so the operator sees what was
    read, but ``nats://user:secret@host`` must never reach a terminal or a log
    with its password (issue 10, defect 13). A userinfo without ``:`` (a NATS
    token) is masked whole.
    """
    return ",".join(_mask_one(part) for part in url.split(","))


def _host_port(v: str) -> str:
    # Someone may paste a URL with credentials here (``user:secret@host:1``).
    shown = mask_url(v)
    host, sep, port = v.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{shown!r} is not host:port")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{shown!r}: port must be 0-65535")
    bare = host.strip("[]")
    if bare not in ("localhost", "*") and not re.fullmatch(r"[A-Za-z0-9.-]+", bare):
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            raise ValueError(
                f"{shown!r}: {mask_url(host)!r} is not a host name or IP address"
            ) from None
    return v


HostPort = Annotated[str, AfterValidator(_host_port)]


def _nats_url(v: str) -> str:
    for url in v.split(","):
        m = re.fullmatch(r"(nats|tls|ws|wss)://([^/\s]+)", url.strip())
        if not m:
            raise ValueError(f"{mask_url(url)!r} is not a NATS URL like nats://host:4222")
    return v


NatsUrl = Annotated[str, AfterValidator(_nats_url)]


def _db_url(v: str) -> str:
    if not re.match(r"^(sqlite|postgresql|postgres)(\+\w+)?://", v):
        raise ValueError(
            f"{mask_url(v)!r} is not a database URL (sqlite:///path or postgresql://...)"
        )
    return v


DatabaseUrl = Annotated[str, AfterValidator(_db_url)]


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
