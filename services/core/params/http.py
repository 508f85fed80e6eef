"""Parameters of the ``http`` monitor (see :mod:`minion.monitors.http`)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from services.core.params.base import MonitorParams
from services.core.params.credentials import CredentialName
from services.core.params.fields import AbsPath, Regex, check_hostname

StatusSpec = str

#: RFC 9110 token characters: what a header name may contain.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def parse_status_ranges(spec: str) -> list[tuple[int, int]]:
    """``"200-299,301"`` → ``[(200, 299), (301, 301)]`` (raises ``ValueError``)."""
    ranges = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            low, high = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"{part!r} is not a status code or range like 200-299") from None
        if not (100 <= low <= high <= 599):
            raise ValueError(f"{part!r} is outside 100-599 or reversed")
        ranges.append((low, high))
    if not ranges:
        raise ValueError("no status codes given")
    return ranges


def _check_vhost(value: str) -> str:
    name, sep, port = value.rpartition(":") if not value.endswith("]") else (value, "", "")
    if sep and port.isdigit() and not name.endswith(":"):
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"port {port} is outside 1-65535")
        check_hostname(name.strip("[]"))
    else:
        check_hostname(value.strip("[]"))
    return value


#: ``host`` or ``host:port`` for the ``Host`` header.
VirtualHost = Annotated[str, AfterValidator(_check_vhost)]


class HttpParams(MonitorParams):
    """Parameters of the HTTP monitor."""

    scheme: Literal["http", "https"] = "http"
    port: int | None = Field(default=None, ge=1, le=65535)
    path: str = Field(default="/", max_length=8192)
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    #: Extra request headers (not for credentials: ``Authorization`` goes through
    #: ``username``/``password``, ``bearer_token`` or ``credential``).
    headers: dict[str, str] = Field(default_factory=dict)
    #: Request headers whose values are secrets (an API key, a cookie): sent like
    #: ``headers``, shown as ``***`` everywhere.
    secret_headers: dict[str, SecretStr] = Field(default_factory=dict)
    #: Request body (for POST/PUT/PATCH…); set ``Content-Type`` in ``headers``.
    request_body: str | None = Field(default=None, max_length=1 << 20)
    #: Expected status codes: ``"200-399"``, ``"200,204"``.
    status: StatusSpec = "200-399"
    #: Regular expression the body must contain.
    body: Regex | None = None
    #: ``Host`` header (virtual host, ``name`` or ``name:port``); with HTTPS
    #: also the TLS server name (SNI) and the name the certificate must match.
    host: VirtualHost | None = None
    max_body_bytes: int = Field(default=1 << 20, ge=0, le=64 << 20)
    #: DOWN when the response took longer than this.
    max_response_time_ms: float | None = Field(default=None, gt=0)
    #: Follow redirects (the status checked is the final one).
    follow_redirects: bool = False
    max_redirects: int = Field(default=5, ge=1, le=30)
    #: HTTPS: verify the certificate chain and name.
    verify_tls: bool = True
    #: HTTPS with ``verify_tls``: CA bundle (PEM) on the minion instead of the system store.
    ca_file: AbsPath | None = None
    #: HTTPS: DOWN when the server certificate expires in fewer days than this.
    min_days_to_expiry: float | None = Field(default=None, ge=0)
    #: Basic authentication.
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    #: Bearer authentication (``Authorization: Bearer <token>``).
    bearer_token: SecretStr | None = None
    #: A credential of the minion's ``minion.credentials`` (``username`` +
    #: ``password`` for basic, ``token`` for bearer), resolved on the minion.
    credential: CredentialName | None = None

    @field_validator("status")
    @classmethod
    def _status(cls, v: str) -> str:
        parse_status_ranges(v)
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        if any(c in v for c in "\r\n \t"):
            raise ValueError("must not contain spaces or line breaks (percent-encode them)")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r}: value must not contain line breaks")
            if name.lower() == "host":
                raise ValueError("set the Host header with the 'host' parameter")
            if name.lower() in ("authorization", "proxy-authorization"):
                # a secret in a plain field would be shown: route it to a secret one
                raise ValueError(
                    f"{name}: use username/password, bearer_token, credential or secret_headers"
                )
        return v

    @field_validator("secret_headers")
    @classmethod
    def _secret_headers(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, value in v.items():
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if any(c in value.get_secret_value() for c in "\r\n"):
                raise ValueError(f"header {name!r}: value must not contain line breaks")
            if name.lower() == "host":
                raise ValueError("set the Host header with the 'host' parameter")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> HttpParams:
        if self.method == "HEAD" and self.body is not None:
            raise ValueError("body: a HEAD response has no body to match")
        if self.method in ("GET", "HEAD") and self.request_body is not None:
            raise ValueError(f"request_body: not sent with {self.method}")
        if self.scheme != "https":
            for key in ("ca_file", "min_days_to_expiry"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: only for scheme https")
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError("ca_file: needs verify_tls: true")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        ways = [
            self.password is not None,
            self.bearer_token is not None,
            self.credential is not None,
        ]
        if sum(ways) > 1:
            raise ValueError("choose one of username/password, bearer_token and credential")
        dup = {k.lower() for k in self.headers} & {k.lower() for k in self.secret_headers}
        if dup:
            raise ValueError(f"secret_headers: {', '.join(sorted(dup))} also in headers")
        return self
