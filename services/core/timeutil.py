"""Wall-clock helpers and protobuf Timestamp/Duration conversion."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp


def now() -> float:
    """Wall-clock seconds since the epoch."""
    return time.time()


def set_timestamp(ts: Timestamp, epoch: float | None) -> None:
    """Fill ``ts`` in place (no-op for ``None``)."""
    if epoch is None:
        return
    seconds = int(epoch // 1)
    ts.seconds = seconds
    ts.nanos = int((epoch - seconds) * 1e9)


def from_timestamp(ts: Timestamp) -> float:
    """Protobuf Timestamp → epoch seconds."""
    return ts.seconds + ts.nanos / 1e9


def to_duration(seconds: float) -> Duration:
    """Seconds → protobuf Duration."""
    whole = int(seconds // 1)
    return Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


def from_duration(d: Duration) -> float:
    """Protobuf Duration → seconds."""
    return d.seconds + d.nanos / 1e9


def iso(epoch: float) -> str:
    """``2026-11-22T10:00:00.123Z`` (millisecond precision, UTC)."""
    dt = datetime.fromtimestamp(epoch, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """An ISO-8601 timestamp (``Z`` or offset) → epoch seconds; raises ``ValueError``."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z for UTC)")
    return dt.timestamp()
