"""Parameters of the ``icmp`` monitor (see :mod:`minion.monitors.icmp`)."""

from __future__ import annotations

from pydantic import Field, model_validator

from services.core.params.base import MonitorParams


class IcmpParams(MonitorParams):
    """Parameters of the ICMP monitor."""

    #: Echo requests sent per poll.
    count: int = Field(default=3, ge=1, le=100)
    #: Seconds between two requests.
    interval: float = Field(default=0.2, ge=0.01, le=10.0)
    #: Payload bytes per request (56 gives the classic 64-byte ICMP packet).
    packet_size: int = Field(default=56, ge=0, le=65000)
    #: Seconds to wait for each reply; default: fit all requests in the attempt's time.
    reply_timeout: float | None = Field(default=None, gt=0, le=60)
    #: DOWN when more than this percentage of requests got no reply
    #: (default: DOWN only when none did).
    max_packet_loss: float | None = Field(default=None, ge=0, lt=100)
    #: DOWN when the average round-trip time exceeds this (ms).
    max_rtt_ms: float | None = Field(default=None, gt=0)
    #: DOWN when the slowest round trip exceeds this (ms).
    max_peak_rtt_ms: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> IcmpParams:
        if self.max_packet_loss is not None and self.count == 1 and self.max_packet_loss > 0:
            raise ValueError("max_packet_loss: needs count > 1 to mean anything but 'no reply'")
        return self
