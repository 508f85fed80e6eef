"""What a poll says about a service, and its wire form.

The one definition of :class:`Status` for every process (the minion reports
it, the scheduler keeps it, the APIs show it) and the only place that maps it
to and from ``vigil.v1.PollStatus``.
"""

from __future__ import annotations

import enum

from vigil.v1 import common_pb2


class Status(enum.Enum):
    """What a poll says about a service."""

    UP = "UP"
    DOWN = "DOWN"
    #: The monitor could not tell (e.g. a plugin's UNKNOWN exit code, bad parameters).
    UNKNOWN = "UNKNOWN"


_TO_PB: dict[Status, common_pb2.PollStatus.ValueType] = {
    Status.UP: common_pb2.POLL_STATUS_UP,
    Status.DOWN: common_pb2.POLL_STATUS_DOWN,
    Status.UNKNOWN: common_pb2.POLL_STATUS_UNKNOWN,
}
_FROM_PB: dict[int, Status] = {int(v): k for k, v in _TO_PB.items()}


def status_to_pb(status: Status | None) -> common_pb2.PollStatus.ValueType:
    """The wire value of ``status`` (``POLL_STATUS_UNSPECIFIED`` for never polled)."""
    return common_pb2.POLL_STATUS_UNSPECIFIED if status is None else _TO_PB[status]


def status_from_pb(value: int) -> Status | None:
    """The status a wire value names; ``None`` for UNSPECIFIED or a value this build does not know."""
    return _FROM_PB.get(value)
