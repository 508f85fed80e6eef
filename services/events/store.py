"""Event history in SQLite or PostgreSQL (same code path, chosen by URL)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import db
from services.common.events import Event
from services.common.timeutil import parse_iso

MIGRATIONS = "services.events:migrations"
VERSION_TABLE = "events_schema_version"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)
metadata = sa.MetaData()

events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
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
    seq: int
    event: Event


@dataclass(frozen=True, slots=True)
class EventFilter:
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


class EventStore:
    """Persists normalized events; the id is unique, so a redelivered event is stored once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = db.create_engine(url)

    async def open(self) -> None:
        """Apply migrations."""
        await db.migrate(self.engine, MIGRATIONS, VERSION_TABLE)

    async def close(self) -> None:
        """Release connections."""
        await self.engine.dispose()

    async def add(self, batch: Sequence[Event]) -> None:
        """Store events, ignoring ids already stored."""
        rows = [
            {
                "id": e.id,
                "type": e.type,
                "action": e.action,
                "severity": e.severity,
                "type_id": e.type_id,
                "node_id": e.node_id,
                "location": e.location,
                "source": e.source,
                "created_at": db.utc(parse_iso(e.created_at)),
                "payload": e.to_json(),
            }
            for e in batch
        ]
        async with self.engine.begin() as conn:
            await db.insert_ignore(conn, events, rows, ("id",))

    async def list(
        self, flt: EventFilter, *, before_seq: int | None, limit: int
    ) -> tuple[list[StoredEvent], int]:
        """A page of events, newest first, and the total matching ``flt``."""
        conds = flt.conditions()
        page = [*conds, events.c.seq < before_seq] if before_seq is not None else conds
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(events.c.seq, events.c.payload)
                    .where(*page)
                    .order_by(events.c.seq.desc())
                    .limit(limit)
                )
            ).all()
            total = (await conn.execute(sa.select(sa.func.count()).select_from(events).where(*conds))).scalar_one()
        return [StoredEvent(r.seq, Event.model_validate(json.loads(r.payload))) for r in rows], int(total)
