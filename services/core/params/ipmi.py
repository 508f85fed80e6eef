"""Parameters of the ``ipmi`` monitor (see :mod:`minion.monitors.ipmi`).

The user name and password never appear here: ``credential`` names an entry
of the minion's ``minion.credentials`` (``username`` + ``password``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.core.params.base import MonitorParams
from services.core.params.fields import CredentialName, Port, Regex

#: IPMI privilege levels a session may ask for (IPMI 2.0, table 6-2; ``callback``
#: cannot read sensors, so it is not offered).
Privilege = Literal["user", "operator", "administrator"]
#: Which chassis power state is UP.
ExpectPower = Literal["on", "off", "any"]


class IpmiParams(MonitorParams):
    """Parameters of the IPMI (2.0 over LAN, RMCP+) monitor."""

    #: UDP port of the BMC's LAN channel.
    port: Port = 623
    #: A credential of the minion's ``minion.credentials``: ``username`` and
    #: ``password`` of a BMC user (IPMI allows at most 16 and 20 bytes).
    credential: CredentialName
    #: The privilege level the session asks for. Reading sensors, the chassis
    #: status and the SEL needs ``user``.
    privilege: Privilege = "user"
    #: UP only in this chassis power state (``any``: the power state is
    #: reported, never judged).
    expect_power: ExpectPower = "on"
    #: Read the threshold sensors of the SDR (values, the BMC's threshold states).
    sensors: bool = True
    #: Only sensors whose name matches one of these regular expressions (empty: all).
    sensors_include: list[Regex] = Field(default_factory=list, max_length=64)
    #: Leave out sensors whose name matches one of these.
    sensors_exclude: list[Regex] = Field(default_factory=list, max_length=64)
    #: Most sensors read per poll, in SDR order (the reason says so when the BMC
    #: has more that match).
    max_sensors: int = Field(default=200, ge=1, le=1000)
    #: Report System Event Log entries added since this minion's previous poll
    #: of the BMC.
    sel: bool = False
