"""Raw event → normalized event in the common format.

Validation is strict on what consumers rely on (vocabulary, sizes, characters
that would break a NATS header or subject) and lenient on what can be filled
in (id, createdAt, severity from the catalogue, reduction key). An invalid
raw event raises :class:`InvalidEvent`, whose :attr:`~InvalidEvent.field`
names the offending field (camelCase, as on the wire).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from services.core.errors import InvalidArgumentError
from services.core.events import (
    CATALOGUE,
    FIT_EVENT_BYTES,
    FORMAT_VERSION,
    MAX_EVENT_BYTES,
    SEVERITIES,
    Event,
    fit_document,
    reduction_key,
)
from services.core.ids import NODE_ID_RE
from services.core.timeutil import iso, now, parse_iso

#: The largest raw event taken as it is (the JSON document, all fields included).
MAX_RAW_BYTES = MAX_EVENT_BYTES
#: The largest raw event read at all. Between the two, ``data`` is cut with the
#: marker (:func:`services.core.events.fit_document`) rather than the event
#: rejected; NATS's own max_payload (1 MiB by default) is below this.
MAX_PARSE_BYTES = 8 << 20
MAX_FIELD = {
    "id": 64,
    "type": 32,
    "action": 32,
    "severity": 16,
    "typeId": 256,
    "nodeId": 128,
    "location": 64,
    "source": 64,
    "reductionKey": 256,
    "createdAt": 40,
}
KNOWN_TYPES = {t for t, _ in CATALOGUE}
KNOWN_FIELDS = frozenset(
    {"version", "id", "type", "action", "severity", "typeId", "nodeId", "location"}
    | {"createdAt", "source", "reductionKey", "data"}
)
#: Ids travel in the ``Nats-Msg-Id`` header and in URLs: keep them plain.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
LOCATION_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# ':' for the sources Publish sets from the caller's certificate (``operator:alice``).
SOURCE_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class InvalidEvent(InvalidArgumentError):
    """A raw event that cannot be normalized; ``field`` names the offending field."""


def parse_raw(raw: bytes | bytearray, truncate: bool = False) -> dict[str, Any]:
    """Decode a raw event's JSON, enforcing the size limit first.

    With ``truncate``, a document above :data:`MAX_RAW_BYTES` (up to
    :data:`MAX_PARSE_BYTES`) has its ``data`` values cut with the marker instead
    of being rejected; it is rejected only if that cannot bring it within the limit.
    """
    ceiling = MAX_PARSE_BYTES if truncate else MAX_RAW_BYTES
    if len(raw) > ceiling:
        raise InvalidEvent("event", f"{len(raw)} bytes exceeds the {ceiling}-byte limit")
    try:
        data: Any = json.loads(raw)
    # ValueError as well: an integer of more than 4300 digits; RecursionError:
    # nesting too deep. Either is a bad event, not a failure to retry for ever.
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidEvent("event", f"not JSON ({str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise InvalidEvent("event", "must be a JSON object")
    if len(raw) > MAX_RAW_BYTES:
        data = fit_document(data, FIT_EVENT_BYTES)
        size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_RAW_BYTES:
            raise InvalidEvent(
                "event",
                f"{len(raw)} bytes exceeds the {MAX_RAW_BYTES}-byte limit "
                f"({size} bytes with data cut)",
            )
    return dict(data)


def normalize(
    raw: bytes | bytearray | dict[str, Any],
    default_source: str = "",
    default_id: str | Callable[[], str] | None = None,
    truncate: bool = False,
) -> Event:
    """Validate and complete a raw event.

    ``truncate`` (the ingest path, where a rejection could only be announced,
    not answered) cuts an oversized raw event's ``data`` with the marker
    instead of rejecting it (:func:`parse_raw`); an API caller is answered
    with the error instead.

    ``default_id`` (a value, or a function computing it) is used when the raw
    event has no id; the ingest path passes one derived from the raw message so
    that a redelivered copy gets the same id (and is recognised as a duplicate)
    rather than a fresh one.
    """
    if isinstance(raw, bytes | bytearray):
        data = parse_raw(raw, truncate=truncate)
    else:
        data = dict(raw)
        # A dict (gRPC Publish) gets the same size limit as bytes on the wire.
        try:
            size = len(json.dumps(data, separators=(",", ":"), default=str))
        except (TypeError, ValueError) as exc:
            raise InvalidEvent("event", f"not representable as JSON ({exc})") from None
        if size > MAX_RAW_BYTES:
            raise InvalidEvent("event", f"{size} bytes exceeds the {MAX_RAW_BYTES}-byte limit")

    extra = sorted(set(data) - KNOWN_FIELDS)
    if extra:
        raise InvalidEvent(extra[0], "unknown field")

    def text(
        field: str, required: bool = False, pattern: re.Pattern[str] | None = None
    ) -> str | None:
        value = data.get(field)
        if value is None or value == "":
            if required:
                raise InvalidEvent(field, "is required")
            return None
        if not isinstance(value, str):
            raise InvalidEvent(field, f"must be a string, not {type(value).__name__}")
        limit = MAX_FIELD[field]
        if len(value) > limit:
            raise InvalidEvent(field, f"longer than {limit} characters")
        if CONTROL_RE.search(value):
            raise InvalidEvent(field, "contains control characters")
        if pattern is not None and not pattern.fullmatch(value):
            raise InvalidEvent(field, f"{value!r} has characters outside {pattern.pattern}")
        return value

    version = data.get("version", FORMAT_VERSION)
    if version in (None, ""):
        version = FORMAT_VERSION
    if version != FORMAT_VERSION:
        raise InvalidEvent(
            "version", f"unsupported {version!r} (this service speaks {FORMAT_VERSION!r})"
        )
    etype = text("type", required=True)
    action = text("action", required=True)
    assert etype is not None
    assert action is not None
    if etype not in KNOWN_TYPES:
        raise InvalidEvent(
            "type", f"unknown event type {etype!r} (known: {', '.join(sorted(KNOWN_TYPES))})"
        )
    if (etype, action) not in CATALOGUE:
        actions = sorted(a for t, a in CATALOGUE if t == etype)
        raise InvalidEvent(
            "action", f"{action!r} is not an action of {etype} (known: {', '.join(actions)})"
        )
    severity = text("severity") or CATALOGUE[(etype, action)]
    if severity not in SEVERITIES:
        raise InvalidEvent("severity", f"{severity!r} is not one of {', '.join(SEVERITIES)}")
    event_id = text("id", pattern=ID_RE)
    if event_id is None:
        fallback = default_id() if callable(default_id) else default_id
        event_id = fallback or str(uuid.uuid4())
    created = text("createdAt")
    if created is None:
        created_iso = iso(now())
    else:
        try:
            created_iso = iso(parse_iso(created))
        except (ValueError, OverflowError, OSError) as exc:
            raise InvalidEvent("createdAt", f"not an ISO-8601 time ({exc})") from None
    payload = data.get("data")
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise InvalidEvent("data", "must be a JSON object")
    type_id = text("typeId") or ""
    node_id = text("nodeId")
    return Event(
        id=event_id,
        type=etype,
        action=action,
        severity=severity,
        type_id=type_id,
        node_id=node_id,
        location=text("location", pattern=LOCATION_RE),
        created_at=created_iso,
        source=text("source", pattern=SOURCE_RE) or default_source,
        reduction_key=text("reductionKey") or reduction_key(etype, action, type_id, node_id),
        data=payload,
    )


UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
#: The createdAt range a Publish caller may claim: nothing before this year ...
PUBLISH_EARLIEST_YEAR = 2000
#: ... and nothing further ahead of this service's clock (room for clock skew).
PUBLISH_MAX_AHEAD = 86_400.0


def check_published(event: Event) -> Event:
    """The stricter checks of an event an API caller publishes (after :func:`normalize`).

    Producers inside Vigil derive their ids and subject tokens from validated
    data; a caller of ``Publish`` can type anything, so its event must have a
    UUID id, a ``createdAt`` between 2000-01-01 and a day ahead of now, and a
    ``nodeId`` that is one NATS subject token (the node-id pattern of
    :mod:`services.core.ids`). Raises :class:`InvalidEvent` naming the field.
    """
    if event.type == "audit":
        # The servers record who did what; nobody may write that record for them.
        raise InvalidEvent("type", "audit events are recorded by the servers, not published")
    # The canonical form only: uuid.UUID() also takes "urn:uuid:…", braces and bare hex,
    # which consumers de-duplicating on the id would see as other ids.
    if not UUID_RE.fullmatch(event.id):
        raise InvalidEvent(
            "id", f"{event.id[:80]!r} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
        )
    created = parse_iso(event.created_at)
    earliest = datetime(PUBLISH_EARLIEST_YEAR, 1, 1, tzinfo=UTC).timestamp()
    if created < earliest:
        raise InvalidEvent(
            "createdAt", f"{event.created_at} is before {PUBLISH_EARLIEST_YEAR}-01-01"
        )
    if created > now() + PUBLISH_MAX_AHEAD:
        raise InvalidEvent("createdAt", f"{event.created_at} is more than a day in the future")
    if event.node_id is not None and not NODE_ID_RE.fullmatch(event.node_id):
        raise InvalidEvent(
            "nodeId",
            f"{event.node_id[:80]!r} is not a valid node id "
            "(letters, digits, '-', '_'; one NATS subject token)",
        )
    return event
