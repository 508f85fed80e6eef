"""Parameters of the ``tcp`` monitor (see :mod:`minion.monitors.tcp`)."""

from __future__ import annotations

from pydantic import Field, model_validator

from services.core.params.base import MonitorParams
from services.core.params.fields import AbsPath, HostName, Regex

MAX_BANNER_BYTES = 4096


class TcpParams(MonitorParams):
    """Parameters of the TCP monitor."""

    port: int = Field(ge=1, le=65535)
    #: Regular expression searched in what the peer sends first (e.g. ``^SSH-2\\.0``).
    banner: Regex | None = None
    #: Text sent once connected (after the banner, when ``banner`` is set).
    send: str | None = Field(default=None, min_length=1, max_length=65536)
    #: Regular expression searched in the reply to ``send``.
    expect: Regex | None = None
    #: Wrap the connection in TLS; the handshake must succeed.
    tls: bool = False
    #: With ``tls``: verify the certificate chain (and ``server_name`` when set).
    verify_tls: bool = False
    #: With ``tls``: SNI name and, with ``verify_tls``, the name the certificate must match.
    server_name: HostName | None = None
    #: With ``verify_tls``: CA bundle (PEM) on the minion instead of the system store.
    ca_file: AbsPath | None = None
    #: Most bytes read for the banner and for the reply (each).
    max_bytes: int = Field(default=MAX_BANNER_BYTES, ge=1, le=1 << 20)

    @model_validator(mode="after")
    def _consistent(self) -> TcpParams:
        if self.expect is not None and self.send is None:
            raise ValueError("expect needs send (use banner to match what the peer sends first)")
        if not self.tls and (self.verify_tls or self.server_name or self.ca_file):
            raise ValueError("verify_tls, server_name and ca_file need tls: true")
        if self.ca_file and not self.verify_tls:
            raise ValueError("ca_file needs verify_tls: true")
        return self
