"""Wall-clock helpers and protobuf Timestamp/Duration conversion."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from services.core.errors import InvalidArgumentError

#: The range google.protobuf.Timestamp defines (0001-01-01T00:00:00Z … 9999-12-31T23:59:59Z),
#: which is also what Python's datetime can hold.
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799


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


def request_timestamp(ts: Timestamp, field: str) -> float:
    """A Timestamp from a request → epoch seconds; :class:`InvalidArgumentError` naming ``field``.

    Unlike :func:`from_timestamp`, it refuses what the Timestamp type itself
    refuses (seconds outside years 1…9999, nanos outside 0…999,999,999):
    such a value would fail later in a datetime conversion as an UNKNOWN.
    """
    if not TIMESTAMP_MIN_SECONDS <= ts.seconds <= TIMESTAMP_MAX_SECONDS:
        raise InvalidArgumentError(
            field, f"seconds {ts.seconds} is outside the years 0001 to 9999 (RFC 3339)"
        )
    if not 0 <= ts.nanos <= 999_999_999:
        raise InvalidArgumentError(field, f"nanos {ts.nanos} is outside 0 to 999999999")
    # In float the last second plus nanos can round up into the year 10000.
    return min(from_timestamp(ts), float(TIMESTAMP_MAX_SECONDS))


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
