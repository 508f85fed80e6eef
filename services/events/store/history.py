"""The event history: every normalized event once, keyed by its ``VIGIL_EVENTS`` sequence.

The ingest path publishes first and stores the sequence JetStream assigned,
so one number orders the history and positions a Subscribe resume.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.core import db
from services.core.access.audit import AUDIT_TYPE
from services.core.access.visibility import (
    SUMMARY_TYPE,
    EventScope,
    in_values,
    location_condition,
    needs_node_ids,
    pair_column,
    visible_pairs,
)
from services.core.events import Event
from services.core.timeutil import parse_iso
from services.events.projection import ServiceState, project
from services.events.store.sql import BigId, When, dialect, metadata
from services.events.store.states import apply_changes

events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=False),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("type_id", sa.String(256), nullable=False),
    sa.Column("node_id", sa.String(128)),
    sa.Column("location", sa.String(64)),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("created_at", When, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event with its sequence."""

    seq: int
    event: Event


@dataclass(frozen=True, slots=True)
class EventFilter:
    """History filters (exact match) and a createdAt range."""

    type: str | None = None
    action: str | None = None
    severity: str | None = None
    node_id: str | None = None
    location: str | None = None
    since: float | None = None
    until: float | None = None

    def conditions(self) -> list[Any]:
        """SQL conditions for the set fields."""
        c = events.c
        conds: list[Any] = []
        for col, value in (
            (c.type, self.type),
            (c.action, self.action),
            (c.severity, self.severity),
            (c.node_id, self.node_id),
            (c.location, self.location),
        ):
            if value:
                conds.append(col == value)
        if self.since is not None:
            conds.append(c.created_at >= db.utc(self.since))
        if self.until is not None:
            conds.append(c.created_at < db.utc(self.until))
        return conds


def _stored(r: Any) -> StoredEvent:
    return StoredEvent(int(r.seq), Event.model_validate_json(r.payload))


class HistoryStore:
    """Persists normalized events (the id is unique: a redelivered event is stored once)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def max_seq(self) -> int:
        """The highest stored sequence (0 when empty)."""
        async with self.engine.connect() as conn:
            value = (await conn.execute(sa.select(sa.func.max(events.c.seq)))).scalar_one()
        return int(value or 0)

    async def known_ids(self, ids: Iterable[str]) -> dict[str, int]:
        """Which of ``ids`` are stored, with their sequence."""
        wanted = list(set(ids))
        if not wanted:
            return {}
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(events.c.id, events.c.seq).where(events.c.id.in_(wanted))
                )
            ).all()
        return {r.id: int(r.seq) for r in rows}

    async def add(self, batch: Sequence[StoredEvent]) -> list[ServiceState | str]:
        """Store events (ignoring ids already stored) and apply them to the object states.

        Returns the objects whose state the batch touched: a :class:`ServiceState`
        for each one still known, the bare key for each forgotten one.
        """
        rows = [
            {
                "seq": s.seq,
                "id": s.event.id,
                "type": s.event.type,
                "action": s.event.action,
                "severity": s.event.severity,
                "type_id": s.event.type_id,
                "node_id": s.event.node_id,
                "location": s.event.location,
                "source": s.event.source,
                "created_at": db.utc(parse_iso(s.event.created_at)),
                "payload": s.event.to_json(),
            }
            for s in batch
        ]
        changes = project((s.seq, s.event) for s in batch)
        touched: list[ServiceState | str] = []
        # One transaction: the states never disagree with the history they derive from.
        async with self.engine.begin() as conn:
            if rows:
                # Any conflict (id or seq) means "already stored": a redelivery.
                await conn.execute(dialect(conn).insert(events).on_conflict_do_nothing(), rows)
            if changes:
                touched = await apply_changes(conn, changes)
        return touched

    async def list_events(
        self,
        flt: EventFilter,
        *,
        before_seq: int | None,
        limit: int,
        scope: EventScope | None = None,
    ) -> tuple[list[StoredEvent], int]:
        """A page of events, newest first, and the total matching ``flt``.

        With ``scope`` (a scoped reader), only the events it admits
        (:meth:`EventScope.admits`) are listed and counted; a summary is
        listed as stored (the caller shows it with :meth:`EventScope.shown`).
        """
        conds = flt.conditions()
        async with self.engine.connect() as conn:
            if scope is not None and not scope.unrestricted:
                conds = [*conds, *await self._scope_conditions(conn, conds, scope)]
            page = [*conds, events.c.seq < before_seq] if before_seq is not None else conds
            rows = (
                await conn.execute(
                    sa.select(events.c.seq, events.c.payload)
                    .where(*page)
                    .order_by(events.c.seq.desc())
                    .limit(limit)
                )
            ).all()
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(events).where(*conds))
            ).scalar_one()
        return [_stored(r) for r in rows], int(total)

    async def _scope_conditions(
        self, conn: AsyncConnection, conds: list[Any], scope: EventScope
    ) -> list[Any]:
        """The SQL conditions an event must meet for ``scope`` to admit it (besides ``conds``).

        By location alone it is one condition on the column; a node glob is
        applied exactly (``fnmatch``, as the access layer does) to the distinct
        (location, node) pairs among the candidates, which then select the rows.
        """
        c = events.c
        out: list[Any] = []
        if not scope.audit:
            out.append(c.type != AUDIT_TYPE)
        vis = scope.visibility
        if vis.unrestricted:
            return out
        visible = location_condition(vis, c.location)
        if needs_node_ids(vis):
            narrowed = [*conds, *out, c.type != SUMMARY_TYPE]
            if visible is not None:
                narrowed.append(visible)
            candidates = (
                await conn.execute(
                    sa.select(c.location, c.node_id)
                    .where(*narrowed)
                    .group_by(c.location, c.node_id)
                )
            ).all()
            pairs = visible_pairs(vis, ((r.location, r.node_id) for r in candidates))
            visible = in_values(pair_column(c.location, c.node_id), pairs, conn.dialect.name)
        if visible is None:  # every location and node: nothing more to check
            return out
        summaries = c.type == SUMMARY_TYPE if scope.reads_anything else sa.false()
        out.append(sa.or_(summaries, visible))
        return out

    async def range(self, after: int, before: int | None, limit: int) -> list[StoredEvent]:
        """Events with ``after < seq < before``, oldest first (Subscribe's catch-up)."""
        conds = [events.c.seq > after]
        if before is not None:
            conds.append(events.c.seq < before)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(events.c.seq, events.c.payload)
                    .where(*conds)
                    .order_by(events.c.seq)
                    .limit(limit)
                )
            ).all()
        return [_stored(r) for r in rows]

    async def latest(self, event_type: str, action: str) -> StoredEvent | None:
        """The newest stored event of a kind."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(events.c.seq, events.c.payload)
                    .where(events.c.type == event_type, events.c.action == action)
                    .order_by(events.c.seq.desc())
                    .limit(1)
                )
            ).first()
        return None if row is None else _stored(row)
