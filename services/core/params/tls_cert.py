"""Parameters of the ``tls_cert`` monitor (see :mod:`minion.monitors.tls_cert`)."""

from __future__ import annotations

from pydantic import Field, model_validator

from services.core.params.base import MonitorParams
from services.core.params.fields import AbsPath, HostName, Port


class TlsCertParams(MonitorParams):
    """Parameters of the TLS certificate monitor."""

    port: Port = 443
    #: Name sent as SNI and matched against the certificate; default: the target address.
    server_name: HostName | None = None
    #: DOWN when the certificate expires in fewer days than this.
    min_days_to_expiry: float = Field(default=14.0, ge=0)
    #: DOWN when the certificate does not name ``server_name`` (or the address).
    check_hostname: bool = True
    #: DOWN when the chain does not lead to a trusted CA.
    verify_chain: bool = True
    #: CA bundle (PEM) on the minion instead of the system store.
    ca_file: AbsPath | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TlsCertParams:
        if self.ca_file is not None and not self.verify_chain:
            raise ValueError("ca_file: needs verify_chain: true")
        return self
