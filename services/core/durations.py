"""Durations as operators write them: ``30s``, ``5m``, ``1h30m``, ``250ms``, or seconds."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")

#: The longest duration anywhere in the configuration and the APIs. Far beyond any
#: sane poll interval or retention, and well inside what a protobuf ``Duration``
#: (±10,000 years) and an ``int64`` of nanoseconds can carry, so every accepted
#: value can be put on the wire (issue 10, defect 3: ``999999999999999999w``
#: crashed ``ListServices``).
MAX_DURATION = 366 * 86400.0


def parse_duration(value: Any) -> float:
    """Seconds as a float from ``"1h30m"``/``"250ms"``/``42``; raises ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m, 1h or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if not text:
            raise ValueError("empty duration")
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for m in _PART.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if pos != len(text):
                raise ValueError(
                    f"{value!r} is not a duration (use e.g. 30s, 5m, 1h30m, 250ms)"
                ) from None
    else:
        raise ValueError("expected a duration like 30s, 5m, 1h or a number of seconds")
    if math.isnan(seconds):
        raise ValueError("is not a number")
    if seconds < 0:
        raise ValueError("must not be negative")
    if seconds > MAX_DURATION:
        raise ValueError(f"must be at most {format_duration(MAX_DURATION)}")
    return seconds


def format_duration(seconds: float) -> str:
    """``90.0`` → ``"1m30s"``; the inverse of :func:`parse_duration` for display."""
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    rest = round(seconds)
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out or "0s"


#: A pydantic field type: accepts the forms above, holds seconds as a float.
Duration = Annotated[
    float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]

#: A duration that must be longer than zero (a period, a timeout).
PositiveDuration = Annotated[Duration, Field(gt=0)]

#: The shortest poll interval, retry interval and TTL. A request must live long
#: enough to reach a minion and come back: with ``interval: "0.001s"`` (TTL 1 ms)
#: every poll ended UNKNOWN, about 750 a second, and no real result ever came.
MIN_POLL_INTERVAL = 0.1


def _poll_interval(seconds: float) -> float:
    if seconds < MIN_POLL_INTERVAL:
        raise ValueError(f"must be at least {format_duration(MIN_POLL_INTERVAL)}")
    return seconds


#: How often a service is polled, or how long its request lives (``ttl``).
PollInterval = Annotated[Duration, AfterValidator(_poll_interval)]
