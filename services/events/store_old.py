"""Event history, webhooks and per-service state in SQLite or PostgreSQL (same code, chosen by URL).

``events.seq`` is the event's sequence in the ``VIGIL_EVENTS`` JetStream
stream: the ingest path publishes first and stores the sequence JetStream
assigned, so one number orders the history and positions a Subscribe resume.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.core import db
from services.core.events import Event
from services.core.timeutil import parse_iso

MIGRATIONS = "services.events:migrations"
VERSION_TABLE = "events_schema_version"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)
metadata = sa.MetaData()

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

hooks = sa.Table(
    "hooks",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("secret", sa.String(256), nullable=False),
    sa.Column("filters", sa.Text, nullable=False),
    sa.Column("created_at", When, nullable=False),
    sa.Column("last_success_at", When),
    sa.Column("last_error_at", When),
    sa.Column("last_error", sa.String(512)),
    sa.Column("delivered", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("ack_floor", sa.BigInteger, nullable=False, server_default="0"),
)

hook_failures = sa.Table(
    "hook_failures",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "hook_id", sa.String(64), sa.ForeignKey("hooks.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("first_attempt_at", When, nullable=False),
    sa.Column("failed_at", When, nullable=False),
    sa.Column("last_error", sa.String(512), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
)

service_states = sa.Table(
    "service_states",
    metadata,
    #: A service's typeId; ``interface:<node>/<ip>`` or ``node:<node>`` for the others.
    sa.Column("type_id", sa.String(256), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False, server_default="service"),
    sa.Column("node_id", sa.String(128)),
    sa.Column("location", sa.String(64)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("since", When, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
)

#: (type, action) → (kind of object, the state it is in afterwards).
#: ``service_states`` change of a service no longer monitored.
FORGET = "forget"
STATE_OF: dict[tuple[str, str], tuple[str, str]] = {
    ("service", "lost"): ("service", "down"),
    ("outage", "opened"): ("service", "down"),
    ("service", "regained"): ("service", "up"),
    ("outage", "closed"): ("service", "up"),
    ("interface", "down"): ("interface", "down"),
    ("interface", "up"): ("interface", "up"),
    ("node", "down"): ("node", "down"),
    ("node", "up"): ("node", "up"),
    ("service", "deleted"): ("service", FORGET),
}
#: ``outage closed`` reasons meaning "this service is no longer monitored".
GONE_REASONS = frozenset({"unmanaged", "deleted"})


def state_key(kind: str, type_id: str) -> str:
    """The ``service_states`` key: a service's typeId, ``interface:…`` / ``node:…`` otherwise."""
    return type_id if kind == "service" else f"{kind}:{type_id}"


def state_change(event: Event) -> tuple[str, str] | None:
    """``(kind, "up"|"down")``, ``("service", FORGET)`` (no longer monitored) or ``None``."""
    if not event.type_id:
        return None
    kind_action = (event.type, event.action)
    change = STATE_OF.get(kind_action)
    if change is None:
        return None
    if kind_action == ("outage", "closed") and event.data.get("reason") in GONE_REASONS:
        return ("service", FORGET)
    return change


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event with its sequence."""

    seq: int
    event: Event


@dataclass(frozen=True, slots=True)
class ServiceState:
    """The last known state of a service (or interface, or node), as the event service saw it."""

    key: str
    location: str | None
    state: str
    kind: str = "service"
    node_id: str | None = None


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


@dataclass(slots=True)
class HookRow:
    """A webhook definition with its persisted status."""

    id: str
    name: str
    url: str
    secret: str
    filters: list[dict[str, str]]
    created_at: float
    last_success_at: float | None = None
    last_error_at: float | None = None
    last_error: str | None = None
    delivered: int = 0
    ack_floor: int = 0
    failed: int = field(default=0)


@dataclass(frozen=True, slots=True)
class HookFailureRow:
    """A delivery given up after retrying for the maximum age."""

    id: int
    hook_id: str
    event_id: str
    seq: int
    attempts: int
    first_attempt_at: float
    failed_at: float
    last_error: str
    payload: bytes


_STATE_SELECT = sa.select(
    service_states.c.type_id,
    service_states.c.kind,
    service_states.c.node_id,
    service_states.c.location,
    service_states.c.state,
)


def _state(r: Any) -> ServiceState:
    return ServiceState(r.type_id, r.location, r.state, r.kind, r.node_id)


def _dialect(conn: AsyncConnection) -> Any:
    return sqlite if conn.dialect.name == "sqlite" else postgresql


def _hook_row(r: Any, failed: int = 0) -> HookRow:
    return HookRow(
        id=r.id,
        name=r.name,
        url=r.url,
        secret=r.secret,
        filters=json.loads(r.filters),
        created_at=db.epoch(r.created_at) or 0.0,
        last_success_at=db.epoch(r.last_success_at),
        last_error_at=db.epoch(r.last_error_at),
        last_error=r.last_error,
        delivered=int(r.delivered),
        ack_floor=int(r.ack_floor),
        failed=failed,
    )


class EventStore:
    """Persists normalized events (the id is unique: a redelivered event is stored once)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = db.create_engine(url)

    async def open(self) -> None:
        """Apply migrations."""
        await db.migrate(self.engine, MIGRATIONS, VERSION_TABLE)

    async def close(self) -> None:
        """Release connections."""
        await self.engine.dispose()

    # -- events ------------------------------------------------------------------------

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
        """Store events (ignoring ids already stored) and apply them to the service states.

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
        # The last change per object within the batch wins (the batch is in sequence order).
        changes: dict[str, tuple[str, str, StoredEvent]] = {}
        for s in sorted(batch, key=lambda s: s.seq):
            change = state_change(s.event)
            if change is not None:
                kind, state = change
                changes[state_key(kind, s.event.type_id)] = (kind, state, s)
        async with self.engine.begin() as conn:
            if rows:
                # Any conflict (id or seq) means "already stored": a redelivery.
                await conn.execute(_dialect(conn).insert(events).on_conflict_do_nothing(), rows)
            if changes:
                await self._apply_states(conn, changes)
                touched = list(changes)
                got = (
                    await conn.execute(_STATE_SELECT.where(service_states.c.type_id.in_(touched)))
                ).all()
        if not changes:
            return []
        present = {r.type_id: _state(r) for r in got}
        return [present.get(t, t) for t in changes]

    @staticmethod
    async def _apply_states(
        conn: AsyncConnection, changes: dict[str, tuple[str, str, StoredEvent]]
    ) -> None:
        t = service_states
        upserts = []
        gone_nodes: set[str] = set()
        for key, (kind, change, s) in changes.items():
            if change == FORGET:
                await conn.execute(sa.delete(t).where(t.c.type_id == key, t.c.seq < s.seq))
                if s.event.node_id:
                    gone_nodes.add(s.event.node_id)
                continue
            upserts.append(
                {
                    "type_id": key,
                    "kind": kind,
                    "node_id": s.event.node_id,
                    "location": s.event.location,
                    "state": change,
                    "since": db.utc(parse_iso(s.event.created_at)),
                    "seq": s.seq,
                }
            )
        for node_id in gone_nodes:
            # The node's last service gone: its node/interface states go too (a node
            # deleted while down must not make a future namesake look down).
            rest = sa.select(t.c.type_id).where(t.c.kind == "service", t.c.node_id == node_id)
            await conn.execute(
                sa.delete(t).where(t.c.kind != "service", t.c.node_id == node_id, ~sa.exists(rest))
            )
        if not upserts:
            return
        stmt = _dialect(conn).insert(t)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.type_id],
            set_={
                "kind": stmt.excluded.kind,
                "node_id": sa.func.coalesce(stmt.excluded.node_id, t.c.node_id),
                # close_unmanaged-style events carry no location: keep the known one.
                "location": sa.func.coalesce(stmt.excluded.location, t.c.location),
                "state": stmt.excluded.state,
                "since": sa.case(
                    (t.c.state == stmt.excluded.state, t.c.since), else_=stmt.excluded.since
                ),
                "seq": stmt.excluded.seq,
            },
            # Never let an older event (a late redelivery) overwrite a newer state.
            where=t.c.seq < stmt.excluded.seq,
        )
        await conn.execute(stmt, upserts)

    async def service_states(self) -> list[ServiceState]:
        """Every known service's (interface's, node's) last state."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(_STATE_SELECT.order_by(service_states.c.type_id))).all()
        return [_state(r) for r in rows]

    async def list_events(
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
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(events).where(*conds))
            ).scalar_one()
        return [StoredEvent(int(r.seq), Event.model_validate_json(r.payload)) for r in rows], int(
            total
        )

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
        return [StoredEvent(int(r.seq), Event.model_validate_json(r.payload)) for r in rows]

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
        return (
            None
            if row is None
            else StoredEvent(int(row.seq), Event.model_validate_json(row.payload))
        )

    # -- hooks -------------------------------------------------------------------------

    async def add_hook(self, hook: HookRow) -> bool:
        """Store a new hook; ``False`` when the name is taken."""
        async with self.engine.begin() as conn:
            taken = (
                await conn.execute(sa.select(hooks.c.id).where(hooks.c.name == hook.name))
            ).first()
            if taken is not None:
                return False
            await conn.execute(
                sa.insert(hooks).values(
                    id=hook.id,
                    name=hook.name,
                    url=hook.url,
                    secret=hook.secret,
                    filters=json.dumps(hook.filters, separators=(",", ":")),
                    created_at=db.utc(hook.created_at),
                    delivered=0,
                    ack_floor=hook.ack_floor,
                )
            )
        return True

    async def _failure_counts(self, conn: AsyncConnection, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        f = hook_failures
        rows = (
            await conn.execute(
                sa.select(f.c.hook_id, sa.func.count())
                .where(f.c.hook_id.in_(ids))
                .group_by(f.c.hook_id)
            )
        ).all()
        return {r[0]: int(r[1]) for r in rows}

    async def get_hook(self, hook_id: str) -> HookRow | None:
        """One hook, or ``None``."""
        async with self.engine.connect() as conn:
            r = (await conn.execute(sa.select(hooks).where(hooks.c.id == hook_id))).first()
            if r is None:
                return None
            counts = await self._failure_counts(conn, [hook_id])
        return _hook_row(r, counts.get(hook_id, 0))

    async def all_hooks(self) -> list[HookRow]:
        """Every hook (the event service runs one deliverer per hook)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(hooks).order_by(hooks.c.name))).all()
        return [_hook_row(r) for r in rows]

    async def list_hooks(self, *, after_name: str | None, limit: int) -> tuple[list[HookRow], int]:
        """A page of hooks by name, and how many there are."""
        conds = [hooks.c.name > after_name] if after_name is not None else []
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(hooks).where(*conds).order_by(hooks.c.name).limit(limit)
                )
            ).all()
            total = (await conn.execute(sa.select(sa.func.count()).select_from(hooks))).scalar_one()
            counts = await self._failure_counts(conn, [r.id for r in rows])
        return [_hook_row(r, counts.get(r.id, 0)) for r in rows], int(total)

    async def delete_hook(self, hook_id: str) -> bool:
        """Remove a hook and its parked deliveries; ``False`` when unknown."""
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(hook_failures).where(hook_failures.c.hook_id == hook_id))
            result = await conn.execute(sa.delete(hooks).where(hooks.c.id == hook_id))
        return bool(result.rowcount)

    async def save_hook_status(self, hook: HookRow) -> None:
        """Persist the status fields (last success/error, counters, cursor)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(hooks)
                .where(hooks.c.id == hook.id)
                .values(
                    last_success_at=db.utc(hook.last_success_at),
                    last_error_at=db.utc(hook.last_error_at),
                    last_error=(hook.last_error or None) and hook.last_error[:512],
                    delivered=hook.delivered,
                    ack_floor=hook.ack_floor,
                )
            )

    async def park(self, failure: HookFailureRow, keep: int) -> None:
        """Record a delivery given up; keeps the newest ``keep`` per hook."""
        f = hook_failures
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.insert(f).values(
                    hook_id=failure.hook_id,
                    event_id=failure.event_id,
                    seq=failure.seq,
                    attempts=failure.attempts,
                    first_attempt_at=db.utc(failure.first_attempt_at),
                    failed_at=db.utc(failure.failed_at),
                    last_error=failure.last_error[:512],
                    payload=failure.payload,
                )
            )
            new_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
            if new_id is not None and int(new_id) % 64 == 0:
                # Occasionally trim: the table must not grow without bound for a dead hook.
                cutoff = (
                    await conn.execute(
                        sa.select(f.c.id)
                        .where(f.c.hook_id == failure.hook_id)
                        .order_by(f.c.id.desc())
                        .offset(keep)
                        .limit(1)
                    )
                ).scalar_one_or_none()
                if cutoff is not None:
                    await conn.execute(
                        sa.delete(f).where(f.c.hook_id == failure.hook_id, f.c.id <= cutoff)
                    )

    async def list_failures(
        self, hook_id: str, *, before_id: int | None, limit: int
    ) -> tuple[list[HookFailureRow], int]:
        """A page of a hook's parked deliveries, newest first, and their total."""
        f = hook_failures
        conds = [f.c.hook_id == hook_id]
        page = [*conds, f.c.id < before_id] if before_id is not None else conds
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(sa.select(f).where(*page).order_by(f.c.id.desc()).limit(limit))
            ).all()
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(f).where(*conds))
            ).scalar_one()
        return [
            HookFailureRow(
                id=int(r.id),
                hook_id=r.hook_id,
                event_id=r.event_id,
                seq=int(r.seq),
                attempts=int(r.attempts),
                first_attempt_at=db.epoch(r.first_attempt_at) or 0.0,
                failed_at=db.epoch(r.failed_at) or 0.0,
                last_error=r.last_error,
                payload=bytes(r.payload),
            )
            for r in rows
        ], int(total)
