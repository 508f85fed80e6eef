"""Parameters of the ``ssh`` monitor (see :mod:`minion.monitors.ssh`)."""

from __future__ import annotations

from pydantic import Field

from services.core.params.base import MonitorParams
from services.core.params.fields import Port, Regex


class SshParams(MonitorParams):
    """Parameters of the SSH monitor."""

    port: Port = 22
    #: Regular expression searched in the whole identification line,
    #: e.g. ``OpenSSH_9``.
    banner: Regex | None = None
    #: Regular expression the protocol version must match in full (``2\\.0|1\\.99``).
    protocol: Regex | None = r"2\.0|1\.99"
    #: Regular expression searched in the software version (``OpenSSH_(9|10)\\.``).
    software: Regex | None = None
    #: What the monitor sends as its own identification.
    client_ident: str = Field(default="SSH-2.0-Vigil_Monitor", pattern=r"^SSH-2\.0-[!-~]{1,200}$")
