"""Scoped visibility, as core4 does it: what a scoped caller is shown, in one place.

A caller's :class:`~services.core.access.principal.Visibility` for a method
says which locations and node ids it may see. The servicers apply it the
same way everywhere (docs/security.md, "Scopes"):

- a list shows only the items the caller sees, filtered *before* paging (pages
  stay full, ``total_size`` counts only those);
- one item outside the scope answers ``NOT_FOUND`` exactly like a missing one;
- events are shown by their ``location`` / ``nodeId``; an event with neither
  (deployment-wide) only to callers whose location is not restricted;
- ``audit`` events only to callers who may list users unrestricted (admins,
  :func:`sees_audit`);
- a ``summary`` event is shown to every caller who sees events, rewritten by
  :func:`sanitize_summary`: the locations outside the scope are not named but
  summed into one entry named :data:`UNAUTHORIZED` (core4's UnauthorizedJob),
  so its counts still add up to its ``total``.

:class:`EventScope` is what an events reader (a Subscribe stream, a ListEvents
page, a webhook) may see; a hook stores its creator's (:meth:`EventScope.to_json`).
The SQL helpers here let stores push a visibility into their queries.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from services.core.access.audit import AUDIT_READER_PERMISSION, AUDIT_TYPE, may_read_audit
from services.core.access.permissions import DefinitionError, Scope
from services.core.access.principal import Principal, Visibility, caller
from services.core.events import Event

#: Who may list users unrestricted may see audit events (admins).
AUDIT_GATE: Final = AUDIT_READER_PERMISSION
SUMMARY_TYPE: Final = "summary"
#: The method whose visibility a webhook carries: what its creator may read live.
EVENTS_READ: Final = "vigil.v1.Events/Subscribe"
#: The summary entry that sums every location the caller does not see.
UNAUTHORIZED: Final = "unauthorized"
#: Up to this many values, :func:`in_values` binds each one; beyond, one JSON parameter.
INLINE_VALUES: Final = 500


def sees_audit(principal: Principal | None = None) -> bool:
    """Whether ``principal`` (default: the caller) may see ``audit`` events: an
    unscoped grant of :data:`AUDIT_GATE` (the one rule, :func:`may_read_audit`)."""
    return may_read_audit(principal or caller())


def describe(vis: Visibility) -> str:
    """The scope a caller is limited to, for messages: ``location=paris``,
    ``location=paris or node=web-*``, ``nothing`` (``everywhere`` when unrestricted)."""
    if vis.unrestricted:
        return "everywhere"
    parts: list[str] = []
    if not vis.everything:
        alternatives = sorted({s.describe() or "everywhere" for s in vis.scopes})
        parts.append(" or ".join(alternatives) if alternatives else "nothing")
    if not vis.restriction.unrestricted:
        parts.append(vis.restriction.describe())
    return " and ".join(f"({p})" if " or " in p and len(parts) > 1 else p for p in parts)


def sees_location(vis: Visibility, location: str) -> bool:
    """Whether the caller sees *everything* at ``location`` (no node restriction there).

    A minion, and a summary's per-location counts, belong to a whole location:
    a caller limited to some node ids does not see them.
    """
    return vis.sees(location, None)


# -- events ----------------------------------------------------------------------------------


def sanitize_summary(data: dict[str, Any], vis: Visibility) -> dict[str, Any]:
    """A ``summary`` event's data as ``vis`` may see it.

    ``locations`` keeps the locations the caller sees as a whole; the others
    are summed into one entry named :data:`UNAUTHORIZED` (present only when
    some location was hidden). ``total`` is left as it is: the entries still
    add up to it. A location that happens to be named ``unauthorized`` and is
    visible is summed into that entry too.
    """
    raw = data.get("locations")
    if vis.unrestricted or not isinstance(raw, dict):
        return data
    shown: dict[str, Any] = {}
    hidden: dict[str, int] = {}
    for location, counts in raw.items():
        if isinstance(location, str) and location != UNAUTHORIZED and sees_location(vis, location):
            shown[location] = counts
            continue
        if isinstance(counts, dict):
            for state, n in counts.items():
                if isinstance(n, int | float) and not isinstance(n, bool):
                    hidden[str(state)] = hidden.get(str(state), 0) + int(n)
    if len(shown) == len(raw):
        return data
    shown[UNAUTHORIZED] = hidden
    return {**data, "locations": shown}


@dataclass(frozen=True, slots=True)
class EventScope:
    """What one events reader may see: a visibility, and whether audit events."""

    visibility: Visibility
    audit: bool

    @classmethod
    def of(cls, principal: Principal | None = None, method: str = EVENTS_READ) -> EventScope:
        """The scope of ``principal`` (default: the caller) reading events through ``method``."""
        p = principal or caller()
        return cls(p.visibility(method), sees_audit(p))

    @property
    def unrestricted(self) -> bool:
        """Sees every event as it is: no filtering, no rewriting."""
        return self.audit and self.visibility.unrestricted

    @property
    def reads_anything(self) -> bool:
        """Holds some grant for events at all (a summary is shown only then)."""
        v = self.visibility
        return v.everything or bool(v.scopes)

    def admits(self, event: Event) -> bool:
        """Whether ``event`` is shown (a summary is shown rewritten: see :meth:`shown`)."""
        if event.type == AUDIT_TYPE and not self.audit:
            return False
        if self.visibility.unrestricted:
            return True
        if event.type == SUMMARY_TYPE:
            return self.reads_anything
        return self.visibility.sees(event.location, event.node_id)

    def shown(self, event: Event) -> Event:
        """``event`` as this reader sees it (a summary sanitized; anything else unchanged)."""
        if event.type != SUMMARY_TYPE or self.visibility.unrestricted:
            return event
        data = sanitize_summary(event.data, self.visibility)
        if data is event.data:
            return event
        return event.model_copy(update={"data": data})

    # -- storage (a hook keeps its creator's) ---------------------------------------------

    def to_json(self) -> str:
        """A canonical JSON form: two equal scopes give the same text (hooks compare it)."""
        v = self.visibility
        scopes = [] if v.everything else sorted(set(v.scopes), key=_scope_order)
        doc = {
            "v": 1,
            "everything": v.everything,
            "scopes": [s.to_doc() for s in scopes],
            "restriction": v.restriction.to_doc(),
            "audit": self.audit,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EventScope:
        """The inverse of :meth:`to_json`; raises ``ValueError`` for anything else."""
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("v") != 1:
                raise ValueError(
                    f"unknown version {doc.get('v') if isinstance(doc, dict) else doc!r}"
                )
            return cls(
                Visibility(
                    everything=bool(doc["everything"]),
                    scopes=tuple(Scope.from_doc(s) for s in doc["scopes"]),
                    restriction=Scope.from_doc(doc["restriction"]),
                ),
                audit=bool(doc["audit"]),
            )
        except (KeyError, TypeError, ValueError, DefinitionError) as exc:
            raise ValueError(f"not a stored event scope: {exc}") from None


def _scope_order(scope: Scope) -> tuple[str, str]:
    return (scope.location or "", scope.node or "")


#: Every event as it is (a caller that may see everything, audit included).
EVERYTHING: Final = EventScope(Visibility(everything=True), audit=True)


# -- SQL -------------------------------------------------------------------------------------


def needs_node_ids(vis: Visibility) -> bool:
    """Whether ``vis`` depends on node ids (a node glob), not on locations alone."""
    if vis.restriction.node is not None:
        return True
    return not vis.everything and any(s.node is not None for s in vis.scopes)


def location_condition(vis: Visibility, location: Any) -> ColumnElement[bool] | None:
    """A condition on the ``location`` column every visible row meets (``None``: none needed).

    It is exact when :func:`needs_node_ids` is false; otherwise it only narrows
    the candidates, and the node ids must be checked too.
    """
    conds: list[ColumnElement[bool]] = []
    if vis.restriction.location is not None:
        conds.append(location == vis.restriction.location)
    if not vis.everything:
        if not vis.scopes:
            return sa.false()
        wanted = {s.location for s in vis.scopes}
        if None not in wanted:
            conds.append(location.in_(sorted(w for w in wanted if w is not None)))
    if not conds:
        return None
    return sa.and_(*conds)


def in_values(column: Any, values: Collection[str], dialect: str) -> ColumnElement[bool]:
    """``column IN values`` that stays one bound parameter for a large set.

    SQLite and PostgreSQL bound the parameters of one statement (tens of
    thousands): beyond :data:`INLINE_VALUES` the set travels as one JSON array.
    """
    if not values:
        return sa.false()
    ordered = sorted(values)
    if len(ordered) <= INLINE_VALUES:
        return column.in_(ordered)  # type: ignore[no-any-return]
    blob = sa.bindparam(None, json.dumps(ordered), type_=sa.Text)
    if dialect == "sqlite":
        elements = sa.func.json_each(blob).table_valued("value")
    else:
        elements = sa.func.json_array_elements_text(sa.cast(blob, sa.JSON)).table_valued("value")
    return column.in_(sa.select(elements.c.value))  # type: ignore[no-any-return]


def pair_key(location: str | None, node_id: str | None) -> str:
    """The text :func:`pair_column` gives for a row (locations hold no ``/``)."""
    return f"{location or ''}/{node_id or ''}"


def pair_column(location: Any, node_id: Any) -> ColumnElement[str]:
    """``location/node_id`` of a row, to match against :func:`pair_key` values."""
    loc = sa.func.coalesce(location, "")
    node = sa.func.coalesce(node_id, "")
    return sa.cast(loc + "/" + node, sa.Text)


def visible_pairs(vis: Visibility, pairs: Iterable[tuple[str | None, str | None]]) -> set[str]:
    """The :func:`pair_key` of each (location, node id) ``vis`` sees."""
    return {pair_key(loc, node) for loc, node in pairs if vis.sees(loc, node)}
