"""Wire constants shared by the scheduler, the minions and the event service.

Subjects, queue groups and size limits are defined here once; each side
imports them instead of spelling them out.
"""

from __future__ import annotations

#: Poll requests: ``vigil.poll.<location>`` (queue group per location) and
#: ``vigil.poll.<location>.<system_id>`` for a request aimed at one minion.
POLL_SUBJECT_PREFIX = "vigil.poll"

#: Longest reason (characters) kept with a result, an outage or an event.
MAX_REASON_CHARS = 2000


def poll_subject(location: str, system_id: str | None = None) -> str:
    """``vigil.poll.<location>`` or ``vigil.poll.<location>.<system_id>``."""
    base = f"{POLL_SUBJECT_PREFIX}.{location}"
    return f"{base}.{system_id}" if system_id else base


def poll_queue_group(location: str) -> str:
    """The queue group of a location's minions: one of them takes each request."""
    return f"vigil-minions-{location}"


def clip_reason(reason: str) -> str:
    """``reason`` cut to :data:`MAX_REASON_CHARS`."""
    return reason[:MAX_REASON_CHARS]
