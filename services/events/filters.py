"""Interest filters for Subscribe and webhooks (RackHD semantics made explicit).

A filter names some of ``type``, ``action``, ``severity``, ``nodeId``,
``location``; each value is matched exactly, or as a shell-style glob when it
holds ``*``, ``?`` or ``[...]`` (``node-1*``, ``[mc]*``). An absent field of
the event is matched as ``""`` (``*`` accepts it, ``?*`` does not). Inside one filter the
fields AND; a list of filters ORs; an empty list matches every event; an empty
field matches anything.

Audit events (type ``audit``, docs/security.md) are a trail of their own: only
a filter whose ``type`` is exactly ``audit`` takes them, so an unfiltered hook
or stream carries what Vigil observed, not every API call made to it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from services.core.errors import InvalidArgumentError
from services.core.events import CATALOGUE, SEVERITIES, Event

FIELDS = ("type", "action", "severity", "node_id", "location")
#: Taken only by a filter naming it exactly.
AUDIT_TYPE = "audit"
#: Wire (JSON/proto JSON) names of the fields, for messages and storage.
JSON_NAMES = {
    "type": "type",
    "action": "action",
    "severity": "severity",
    "node_id": "nodeId",
    "location": "location",
}
MAX_FILTERS = 32
MAX_VALUE = 128
_GLOB = re.compile(r"[*?\[]")


def is_glob(value: str) -> bool:
    """Whether ``value`` is a pattern rather than an exact value."""
    return bool(_GLOB.search(value))


def pattern_problem(value: str) -> str | None:
    """Why ``value`` is not a well-formed glob, or ``None``.

    fnmatch reads an unclosed ``[`` as a literal character, so ``[unclosed``
    would be a filter that silently never matches what its author meant:
    refuse it. Classes are read as fnmatch reads them (``[!...]`` negates, a
    ``]`` right after the opening is a member).
    """
    i, n = 0, len(value)
    while i < n:
        if value[i] == "[":
            j = i + 1
            if j < n and value[j] == "!":
                j += 1
            if j < n and value[j] == "]":
                j += 1
            while j < n and value[j] != "]":
                j += 1
            if j >= n:
                return f"{value[:80]!r} has an unclosed '[' at position {i}"
            i = j
        i += 1
    return None


@dataclass(frozen=True, slots=True)
class Interest:
    """One filter: every set field must match."""

    type: str = ""
    action: str = ""
    severity: str = ""
    node_id: str = ""
    location: str = ""

    def matches(self, event: Event) -> bool:
        """Whether ``event`` satisfies every set field (audit events: see the module)."""
        if event.type == AUDIT_TYPE and self.type != AUDIT_TYPE:
            return False
        for name in FIELDS:
            want: str = getattr(self, name)
            if not want:
                continue
            have = getattr(event, name) or ""
            if want == have:
                continue
            if not is_glob(want) or not fnmatch.fnmatchcase(have, want):
                return False
        return True

    def as_dict(self) -> dict[str, str]:
        """The set fields, with wire names (how hooks store their filters)."""
        return {JSON_NAMES[n]: getattr(self, n) for n in FIELDS if getattr(self, n)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interest:
        """The inverse of :meth:`as_dict`."""
        return cls(**{n: str(data.get(JSON_NAMES[n], "")) for n in FIELDS})


def matches_any(interests: Sequence[Interest], event: Event) -> bool:
    """OR over the filters; no filter at all matches everything but audit events."""
    if not interests:
        return event.type != AUDIT_TYPE
    return any(i.matches(event) for i in interests)


def validate(raw: Iterable[Any], field: str = "filters") -> list[Interest]:
    """Protobuf ``EventFilter`` messages (or objects with the same attributes) → interests.

    Exact values are checked against the catalogue so that a typo
    (``type: "servcie"``) is an error rather than a filter that never matches.
    """
    out: list[Interest] = []
    for i, f in enumerate(raw):
        where = f"{field}[{i}]"
        if i >= MAX_FILTERS:
            raise InvalidArgumentError(field, f"at most {MAX_FILTERS} filters")
        values = {n: getattr(f, n, "") or "" for n in FIELDS}
        for name, value in values.items():
            if len(value) > MAX_VALUE:
                raise InvalidArgumentError(f"{where}.{name}", f"longer than {MAX_VALUE} characters")
            if any(ord(c) < 32 for c in value):
                raise InvalidArgumentError(f"{where}.{name}", "contains control characters")
            problem = pattern_problem(value)
            if problem is not None:
                raise InvalidArgumentError(f"{where}.{name}", f"not a valid pattern: {problem}")
        t, a, s = values["type"], values["action"], values["severity"]
        known_types = {kt for kt, _ in CATALOGUE}
        if t and not is_glob(t) and t not in known_types:
            raise InvalidArgumentError(
                f"{where}.type",
                f"unknown event type {t!r} (known: {', '.join(sorted(known_types))})",
            )
        if a and not is_glob(a):
            actions = {ka for kt, ka in CATALOGUE if not t or is_glob(t) or kt == t}
            if a not in actions:
                raise InvalidArgumentError(
                    f"{where}.action", f"{a!r} is not an action of {t or 'any type'}"
                )
        if s and not is_glob(s) and s not in SEVERITIES:
            raise InvalidArgumentError(
                f"{where}.severity", f"{s!r} is not one of {', '.join(SEVERITIES)}"
            )
        out.append(Interest(**values))
    return out
