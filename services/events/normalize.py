"""Raw event → normalized event in the common format.

Validation is strict on what consumers rely on (vocabulary, sizes, ids) and
lenient on what can be filled in (id, createdAt, severity from the catalogue).
An invalid raw event raises :class:`InvalidEvent` naming the field.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from services.common.events import CATALOGUE, FORMAT_VERSION, SEVERITIES, Event
from services.common.timeutil import iso, now, parse_iso

MAX_RAW_BYTES = 64 << 10
MAX_FIELD = {"typeId": 256, "nodeId": 128, "location": 64, "source": 64, "id": 64}
KNOWN_TYPES = {t for t, _ in CATALOGUE}


class InvalidEvent(ValueError):
    """A raw event that cannot be normalized; the message names the field."""


def normalize(raw: bytes | dict[str, Any], default_source: str = "") -> Event:
    """Validate and complete a raw event."""
    if isinstance(raw, bytes | bytearray):
        if len(raw) > MAX_RAW_BYTES:
            raise InvalidEvent(f"event: {len(raw)} bytes exceeds the {MAX_RAW_BYTES}-byte limit")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidEvent(f"event: not JSON ({exc})") from None
    else:
        data = dict(raw)
    if not isinstance(data, dict):
        raise InvalidEvent("event: must be a JSON object")

    def text(field: str, required: bool = False) -> str | None:
        value = data.get(field)
        if value is None or value == "":
            if required:
                raise InvalidEvent(f"{field}: is required")
            return None
        if not isinstance(value, str):
            raise InvalidEvent(f"{field}: must be a string")
        limit = MAX_FIELD.get(field, 64)
        if len(value) > limit:
            raise InvalidEvent(f"{field}: longer than {limit} characters")
        return value

    etype = text("type", required=True)
    action = text("action", required=True)
    assert etype is not None and action is not None
    if etype not in KNOWN_TYPES:
        raise InvalidEvent(f"type: unknown event type {etype!r} (known: {', '.join(sorted(KNOWN_TYPES))})")
    if (etype, action) not in CATALOGUE:
        actions = sorted(a for t, a in CATALOGUE if t == etype)
        raise InvalidEvent(f"action: {action!r} is not an action of {etype} (known: {', '.join(actions)})")
    severity = text("severity") or CATALOGUE[(etype, action)]
    if severity not in SEVERITIES:
        raise InvalidEvent(f"severity: {severity!r} is not one of {', '.join(SEVERITIES)}")
    event_id = text("id") or str(uuid.uuid4())
    created = text("createdAt")
    if created is None:
        created_iso = iso(now())
    else:
        try:
            created_iso = iso(parse_iso(created))
        except ValueError as exc:
            raise InvalidEvent(f"createdAt: {exc}") from None
    payload = data.get("data") or {}
    if not isinstance(payload, dict):
        raise InvalidEvent("data: must be a JSON object")
    version = data.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise InvalidEvent(f"version: unsupported {version!r} (this service speaks {FORMAT_VERSION!r})")
    known = {"version", "id", "type", "action", "severity", "typeId", "nodeId", "location", "createdAt", "source", "data"}
    extra = sorted(set(data) - known)
    if extra:
        raise InvalidEvent(f"{extra[0]}: unknown field")
    return Event(
        id=event_id,
        type=etype,
        action=action,
        severity=severity,
        typeId=text("typeId") or "",
        nodeId=text("nodeId"),
        location=text("location"),
        createdAt=created_iso,
        source=text("source") or default_source,
        data=payload,
    )
