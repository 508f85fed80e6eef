"""The scheduler's persistent state: inventory, service state, outages, results, outbox.

Every outage change and the events that announce it are written in one
transaction (the *transactional outbox*): an outage is never recorded without
its event, and an event never leaves for an outage that was rolled back. The
outbox relay publishes the events to JetStream afterwards.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.core import db
from services.core.access.visibility import in_values
from services.core.events import Event
from services.core.httpstatus import HealthState
from services.core.timeutil import now
from services.core.wire import clip_reason
from services.scheduler.model import ServiceKey

log = logging.getLogger(__name__)

#: Every write transaction the store refused (disk full, read-only database, ...).
WRITE_FAILURES = Counter(
    "vigil_scheduler_store_write_failures", "Scheduler store writes that failed (each attempt)"
)

#: The :class:`~services.core.httpstatus.HealthState` key of a store refusing writes.
STORE_HEALTH_KEY = "store"

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
    sa.Column("paused", sa.Boolean, nullable=False),
    sa.Column("flapping", sa.Boolean, nullable=False),
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
    sa.Column("cause", sa.String(16), nullable=False),
    sa.Column("cause_event_id", sa.String(64)),
)

event_outbox = sa.Table(
    "event_outbox",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("created_at", When, nullable=False),
)

down_elements = sa.Table(
    "down_elements",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("node_id", sa.String(128), primary_key=True),
    sa.Column("ip", sa.String(64), primary_key=True),
    sa.Column("since", When, nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
)

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("updated_at", When, nullable=False),
)

results = sa.Table(
    "results",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("node_id", sa.String(128), nullable=False),
    sa.Column("ip", sa.String(64), nullable=False),
    sa.Column("service", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("response_time_ms", sa.Float, nullable=False),
    sa.Column("values", sa.Text, nullable=False),
    sa.Column("at", When, nullable=False),
    sa.Column("system_id", sa.String(128), nullable=False),
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
    cause: str = "service"
    cause_event_id: str | None = None


@dataclass(frozen=True, slots=True)
class StateRow:
    key: ServiceKey
    status: str
    status_since: float | None
    last_poll_status: str | None
    last_reason: str
    last_poll_at: float | None
    response_time_ms: float
    paused: bool = False
    flapping: bool = False


@dataclass(frozen=True, slots=True)
class ResultRow:
    id: int
    key: ServiceKey
    status: str
    reason: str
    response_time_ms: float
    values: dict[str, float]
    at: float
    system_id: str


@dataclass(frozen=True, slots=True)
class DownElement:
    kind: str  # "interface" or "node"
    node_id: str
    ip: str  # "" for a node
    since: float
    event_id: str


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
        cause=row.cause,
        cause_event_id=row.cause_event_id,
    )


def _key_cond(table: sa.Table, key: ServiceKey) -> Any:
    return sa.and_(
        table.c.node_id == key.node_id, table.c.ip == key.ip, table.c.service == key.service
    )


class Transaction:
    """Writes that must land together (see the module docstring)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def open_outage(
        self,
        key: ServiceKey,
        at: float,
        reason: str,
        lost_event_id: str,
        cause: str = "service",
        cause_event_id: str | None = None,
    ) -> int:
        """Record a new open outage; returns its id."""
        result = await self.conn.execute(
            outages.insert()
            .values(
                node_id=key.node_id,
                ip=key.ip,
                service=key.service,
                opened_at=db.utc(at),
                lost_event_id=lost_event_id,
                reason=clip_reason(reason),
                cause=cause,
                cause_event_id=cause_event_id,
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
            .values(
                closed_at=db.utc(at),
                regained_event_id=regained_event_id,
                close_reason=clip_reason(reason),
            )
        )
        return bool(result.rowcount)

    async def enqueue(self, events: Iterable[Event]) -> None:
        """Put events in the outbox; the relay publishes them after commit."""
        rows = [
            {"event_id": e.id, "payload": e.to_json(), "created_at": db.utc(now())} for e in events
        ]
        if rows:
            await self.conn.execute(event_outbox.insert(), rows)

    async def mark_down(self, element: DownElement) -> None:
        """Remember that an interface or node is down (survives restarts)."""
        await db.upsert(
            self.conn,
            down_elements,
            [
                {
                    "kind": element.kind,
                    "node_id": element.node_id,
                    "ip": element.ip,
                    "since": db.utc(element.since),
                    "event_id": element.event_id,
                }
            ],
            ("kind", "node_id", "ip"),
        )

    async def mark_up(self, kind: str, node_id: str, ip: str = "") -> None:
        """Forget a down interface or node."""
        await self.conn.execute(
            down_elements.delete().where(
                down_elements.c.kind == kind,
                down_elements.c.node_id == node_id,
                down_elements.c.ip == ip,
            )
        )


class SchedulerStore:
    """SQLite or PostgreSQL behind one interface, chosen by URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = db.create_engine(url)
        #: When writes began to fail (``None`` while they succeed): what the API
        #: shows as ``store_degraded_since``, since state is in memory only then.
        self.degraded_since: float | None = None
        self.degraded_reason = ""
        #: Where a failing store is reported (``/healthz``, gRPC health), if anywhere.
        self.health: HealthState | None = None

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """``engine.begin()`` that records whether the store accepts writes.

        Every write goes through here, so one failed commit marks the store
        degraded (health, metric, the API's ``store_degraded_since``) and the
        next successful one clears it; the callers keep retrying as before.
        """
        try:
            async with self.engine.begin() as conn:
                yield conn
        except Exception as exc:
            self._write_failed(exc)
            raise
        self._write_ok()

    def _write_failed(self, exc: Exception) -> None:
        WRITE_FAILURES.inc()
        # The driver's first line says what happened ("database or disk is full").
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)
        if self.degraded_since is None:
            self.degraded_since = now()
            log.error("scheduler store refuses writes: %s", reason)
        self.degraded_reason = reason
        if self.health is not None:
            self.health.set(STORE_HEALTH_KEY, f"scheduler store refuses writes: {reason}")

    def _write_ok(self) -> None:
        if self.degraded_since is None:
            return
        log.warning("scheduler store accepts writes again")
        self.degraded_since = None
        self.degraded_reason = ""
        if self.health is not None:
            self.health.clear(STORE_HEALTH_KEY)

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
        async with self._begin() as conn:
            yield Transaction(conn)

    # -- inventory (nodes managed through the API) -----------------------------------

    async def load_nodes(self) -> dict[str, dict[str, Any]]:
        """Every API-managed node document by id."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(nodes.c.id, nodes.c.document))).all()
        return {r.id: json.loads(r.document) for r in rows}

    async def put_node(self, node_id: str, document: dict[str, Any]) -> None:
        """Create or replace a node document."""
        async with self._begin() as conn:
            await db.upsert(
                conn,
                nodes,
                [
                    {
                        "id": node_id,
                        "document": json.dumps(document, sort_keys=True),
                        "updated_at": db.utc(now()),
                    }
                ],
                ("id",),
            )

    async def delete_node(self, node_id: str) -> bool:
        """Remove a node document; ``False`` when there was none."""
        async with self._begin() as conn:
            result = await conn.execute(nodes.delete().where(nodes.c.id == node_id))
        return bool(result.rowcount)

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
                paused=bool(r.paused),
                flapping=bool(r.flapping),
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
                "last_reason": clip_reason(r.last_reason),
                "last_poll_at": db.utc(r.last_poll_at),
                "response_time_ms": r.response_time_ms,
                "updated_at": stamp,
                "paused": r.paused,
                "flapping": r.flapping,
            }
            for r in rows
        ]
        async with self._begin() as conn:
            for i in range(0, len(values), 1000):
                await db.upsert(
                    conn, service_state, values[i : i + 1000], ("node_id", "ip", "service")
                )

    async def delete_states(self, keys: Iterable[ServiceKey]) -> None:
        """Forget the state of services that are no longer configured."""
        async with self._begin() as conn:
            for k in keys:
                await conn.execute(service_state.delete().where(_key_cond(service_state, k)))

    # -- node-outage processing ------------------------------------------------------

    async def down_elements(self) -> list[DownElement]:
        """Interfaces and nodes recorded as down."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(down_elements))).all()
        return [
            DownElement(r.kind, r.node_id, r.ip, db.epoch(r.since) or 0.0, r.event_id) for r in rows
        ]

    # -- outages ---------------------------------------------------------------------

    async def open_outages(self) -> list[OutageRow]:
        """Every outage still open."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(sa.select(outages).where(outages.c.closed_at.is_(None)))
            ).all()
        return [_outage(r) for r in rows]

    async def list_outages(
        self,
        *,
        state: str | None,
        node_id: str | None,
        service: str | None,
        before_id: int | None,
        limit: int,
        node_ids: Collection[str] | None = None,
    ) -> tuple[list[OutageRow], int]:
        """A page of outages (newest first, ids below ``before_id``) and the total count.

        ``node_ids`` (a scoped caller's visible nodes) keeps only their outages.
        """
        conds: list[Any] = []
        if node_ids is not None:
            conds.append(in_values(outages.c.node_id, node_ids, self.engine.dialect.name))
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

    # -- results history -------------------------------------------------------------

    async def add_results(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append poll results (dicts with the ``results`` columns, epoch ``at``)."""
        if not rows:
            return
        values = [r | {"at": db.utc(r["at"]), "values": json.dumps(r["values"])} for r in rows]
        async with self._begin() as conn:
            for i in range(0, len(values), 2000):
                await conn.execute(results.insert(), values[i : i + 2000])

    async def list_results(
        self,
        *,
        node_id: str | None,
        ip: str | None,
        service: str | None,
        since: float | None,
        until: float | None,
        before_id: int | None,
        limit: int,
        node_ids: Collection[str] | None = None,
    ) -> tuple[list[ResultRow], int]:
        """A page of results, newest first, and the total matching.

        ``node_ids`` (a scoped caller's visible nodes) keeps only their results.
        """
        conds: list[Any] = []
        if node_ids is not None:
            conds.append(in_values(results.c.node_id, node_ids, self.engine.dialect.name))
        if node_id:
            conds.append(results.c.node_id == node_id)
        if ip:
            conds.append(results.c.ip == ip)
        if service:
            conds.append(results.c.service == service)
        if since is not None:
            conds.append(results.c.at >= db.utc(since))
        if until is not None:
            conds.append(results.c.at < db.utc(until))
        page = [*conds, results.c.id < before_id] if before_id is not None else conds
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(results).where(*page).order_by(results.c.id.desc()).limit(limit)
                )
            ).all()
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(results).where(*conds))
            ).scalar_one()
        return [
            ResultRow(
                id=r.id,
                key=ServiceKey(r.node_id, r.ip, r.service),
                status=r.status,
                reason=r.reason,
                response_time_ms=r.response_time_ms,
                values=json.loads(r.values),
                at=db.epoch(r.at) or 0.0,
                system_id=r.system_id,
            )
            for r in rows
        ], int(total)

    async def prune_results(self, older_than: float, batch: int = 10_000) -> int:
        """Delete results older than ``older_than`` (epoch), in bounded batches."""
        removed = 0
        while True:
            async with self._begin() as conn:
                ids = (
                    (
                        await conn.execute(
                            sa.select(results.c.id)
                            .where(results.c.at < db.utc(older_than))
                            .limit(batch)
                        )
                    )
                    .scalars()
                    .all()
                )
                if not ids:
                    return removed
                await conn.execute(results.delete().where(results.c.id.in_(ids)))
            removed += len(ids)

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
        async with self._begin() as conn:
            await conn.execute(event_outbox.delete().where(event_outbox.c.seq.in_(list(seqs))))

    async def outbox_size(self) -> int:
        """Events waiting to be published."""
        async with self.engine.connect() as conn:
            return int(
                (
                    await conn.execute(sa.select(sa.func.count()).select_from(event_outbox))
                ).scalar_one()
            )
