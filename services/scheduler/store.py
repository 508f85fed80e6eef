"""The scheduler's persistent state: latest service state, outages, event outbox.

Every outage change and the events that announce it are written in one
transaction (the *transactional outbox*): an outage is never recorded without
its event, and an event never leaves for an outage that was rolled back. The
outbox relay publishes the events to JetStream afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common import db
from services.common.events import Event
from services.common.timeutil import now
from services.scheduler.model import ServiceKey

log = logging.getLogger(__name__)

MIGRATIONS = "services.scheduler:migrations"
VERSION_TABLE = "scheduler_schema_version"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)
metadata = sa.MetaData()

service_state = sa.Table(
    "service_state",
    metadata,
    sa.Column("node_id", sa.String(128), primary_key=True),
    sa.Column("ip", sa.String(64), primary_key=True),
    sa.Column("service", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("status_since", When),
    sa.Column("last_poll_status", sa.String(16)),
    sa.Column("last_reason", sa.Text, nullable=False),
    sa.Column("last_poll_at", When),
    sa.Column("response_time_ms", sa.Float, nullable=False),
    sa.Column("updated_at", When, nullable=False),
)

outages = sa.Table(
    "outages",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("node_id", sa.String(128), nullable=False),
    sa.Column("ip", sa.String(64), nullable=False),
    sa.Column("service", sa.String(64), nullable=False),
    sa.Column("opened_at", When, nullable=False),
    sa.Column("lost_event_id", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("closed_at", When),
    sa.Column("regained_event_id", sa.String(64)),
    sa.Column("close_reason", sa.Text),
)

event_outbox = sa.Table(
    "event_outbox",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("created_at", When, nullable=False),
)


@dataclass(frozen=True, slots=True)
class OutageRow:
    id: int
    key: ServiceKey
    opened_at: float
    lost_event_id: str
    reason: str
    closed_at: float | None
    regained_event_id: str | None
    close_reason: str | None


@dataclass(frozen=True, slots=True)
class StateRow:
    key: ServiceKey
    status: str
    status_since: float | None
    last_poll_status: str | None
    last_reason: str
    last_poll_at: float | None
    response_time_ms: float


def _outage(row: Any) -> OutageRow:
    return OutageRow(
        id=row.id,
        key=ServiceKey(row.node_id, row.ip, row.service),
        opened_at=db.epoch(row.opened_at) or 0.0,
        lost_event_id=row.lost_event_id,
        reason=row.reason,
        closed_at=db.epoch(row.closed_at),
        regained_event_id=row.regained_event_id,
        close_reason=row.close_reason,
    )


class Transaction:
    """Writes that must land together (see the module docstring)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def open_outage(self, key: ServiceKey, at: float, reason: str, lost_event_id: str) -> int:
        """Record a new open outage; returns its id."""
        result = await self.conn.execute(
            outages.insert()
            .values(
                node_id=key.node_id,
                ip=key.ip,
                service=key.service,
                opened_at=db.utc(at),
                lost_event_id=lost_event_id,
                reason=reason[:2000],
            )
            .returning(outages.c.id)
        )
        return int(result.scalar_one())

    async def close_outage(
        self, outage_id: int, at: float, regained_event_id: str | None, reason: str
    ) -> bool:
        """Close an open outage; ``False`` if it was not open."""
        result = await self.conn.execute(
            outages.update()
            .where(outages.c.id == outage_id, outages.c.closed_at.is_(None))
            .values(closed_at=db.utc(at), regained_event_id=regained_event_id, close_reason=reason[:2000])
        )
        return bool(result.rowcount)

    async def enqueue(self, events: Iterable[Event]) -> None:
        """Put events in the outbox; the relay publishes them after commit."""
        rows = [
            {"event_id": e.id, "payload": e.to_json(), "created_at": db.utc(now())} for e in events
        ]
        if rows:
            await self.conn.execute(event_outbox.insert(), rows)


class SchedulerStore:
    """SQLite or PostgreSQL behind one interface, chosen by URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = db.create_engine(url)

    async def open(self) -> None:
        """Apply migrations."""
        await db.migrate(self.engine, MIGRATIONS, VERSION_TABLE)
        log.info("store ready at %s", db.redact(self.url))

    async def close(self) -> None:
        """Release connections."""
        await self.engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One atomic unit of outage/outbox writes."""
        async with self.engine.begin() as conn:
            yield Transaction(conn)

    # -- service state ---------------------------------------------------------------

    async def load_states(self) -> dict[ServiceKey, StateRow]:
        """The last flushed state of every service."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(service_state))).all()
        return {
            ServiceKey(r.node_id, r.ip, r.service): StateRow(
                key=ServiceKey(r.node_id, r.ip, r.service),
                status=r.status,
                status_since=db.epoch(r.status_since),
                last_poll_status=r.last_poll_status,
                last_reason=r.last_reason,
                last_poll_at=db.epoch(r.last_poll_at),
                response_time_ms=r.response_time_ms,
            )
            for r in rows
        }

    async def save_states(self, rows: Sequence[StateRow]) -> None:
        """Upsert the latest state of many services in one transaction."""
        if not rows:
            return
        stamp = db.utc(now())
        values = [
            {
                "node_id": r.key.node_id,
                "ip": r.key.ip,
                "service": r.key.service,
                "status": r.status,
                "status_since": db.utc(r.status_since),
                "last_poll_status": r.last_poll_status,
                "last_reason": r.last_reason[:2000],
                "last_poll_at": db.utc(r.last_poll_at),
                "response_time_ms": r.response_time_ms,
                "updated_at": stamp,
            }
            for r in rows
        ]
        async with self.engine.begin() as conn:
            for i in range(0, len(values), 1000):
                await db.upsert(conn, service_state, values[i : i + 1000], ("node_id", "ip", "service"))

    async def delete_states(self, keys: Iterable[ServiceKey]) -> None:
        """Forget the state of services that are no longer configured."""
        async with self.engine.begin() as conn:
            for k in keys:
                await conn.execute(
                    service_state.delete().where(
                        service_state.c.node_id == k.node_id,
                        service_state.c.ip == k.ip,
                        service_state.c.service == k.service,
                    )
                )

    # -- outages ---------------------------------------------------------------------

    async def open_outages(self) -> list[OutageRow]:
        """Every outage still open."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(outages).where(outages.c.closed_at.is_(None)))).all()
        return [_outage(r) for r in rows]

    async def list_outages(
        self,
        *,
        state: str | None,
        node_id: str | None,
        service: str | None,
        before_id: int | None,
        limit: int,
    ) -> tuple[list[OutageRow], int]:
        """A page of outages (newest first, ids below ``before_id``) and the total count."""
        conds: list[Any] = []
        if state == "open":
            conds.append(outages.c.closed_at.is_(None))
        elif state == "closed":
            conds.append(outages.c.closed_at.is_not(None))
        if node_id:
            conds.append(outages.c.node_id == node_id)
        if service:
            conds.append(outages.c.service == service)
        page_conds = [*conds, outages.c.id < before_id] if before_id is not None else conds
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(outages).where(*page_conds).order_by(outages.c.id.desc()).limit(limit)
                )
            ).all()
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(outages).where(*conds))
            ).scalar_one()
        return [_outage(r) for r in rows], int(total)

    # -- outbox ----------------------------------------------------------------------

    async def outbox_batch(self, limit: int) -> list[tuple[int, str, bytes]]:
        """The oldest unpublished events: ``(seq, event_id, payload)``."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(event_outbox.c.seq, event_outbox.c.event_id, event_outbox.c.payload)
                    .order_by(event_outbox.c.seq)
                    .limit(limit)
                )
            ).all()
        return [(r.seq, r.event_id, bytes(r.payload)) for r in rows]

    async def outbox_done(self, seqs: Sequence[int]) -> None:
        """Remove published events from the outbox."""
        if not seqs:
            return
        async with self.engine.begin() as conn:
            await conn.execute(event_outbox.delete().where(event_outbox.c.seq.in_(list(seqs))))

    async def outbox_size(self) -> int:
        """Events waiting to be published."""
        async with self.engine.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(event_outbox))).scalar_one())
