"""Per-object states (services, interfaces, nodes) for the summary.

Written only together with the events that change them (see
:meth:`services.events.store.history.HistoryStore.add`), so a restart
neither loses nor double-counts a change.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.core import db
from services.events.projection import FORGET, ServiceState, StateChange
from services.events.store.sql import When, dialect, metadata

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

_STATE_SELECT = sa.select(
    service_states.c.type_id,
    service_states.c.kind,
    service_states.c.node_id,
    service_states.c.location,
    service_states.c.state,
)


def _state(r: Any) -> ServiceState:
    return ServiceState(r.type_id, r.location, r.state, r.kind, r.node_id)


async def apply_changes(
    conn: AsyncConnection, changes: dict[str, StateChange]
) -> list[ServiceState | str]:
    """Apply ``changes`` inside the caller's transaction.

    Returns the objects touched: a :class:`ServiceState` for each one still
    known, the bare key for each forgotten one.
    """
    t = service_states
    upserts = []
    gone_nodes: set[str] = set()
    for key, c in changes.items():
        if c.state == FORGET:
            await conn.execute(sa.delete(t).where(t.c.type_id == key, t.c.seq < c.seq))
            if c.node_id:
                gone_nodes.add(c.node_id)
            continue
        upserts.append(
            {
                "type_id": key,
                "kind": c.kind,
                "node_id": c.node_id,
                "location": c.location,
                "state": c.state,
                "since": db.utc(c.since),
                "seq": c.seq,
            }
        )
    for node_id in gone_nodes:
        # The node's last service gone: its node/interface states go too (a node
        # deleted while down must not make a future namesake look down).
        rest = sa.select(t.c.type_id).where(t.c.kind == "service", t.c.node_id == node_id)
        await conn.execute(
            sa.delete(t).where(t.c.kind != "service", t.c.node_id == node_id, ~sa.exists(rest))
        )
    if upserts:
        stmt = dialect(conn).insert(t)
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
    touched = list(changes)
    got = (await conn.execute(_STATE_SELECT.where(t.c.type_id.in_(touched)))).all()
    present = {r.type_id: _state(r) for r in got}
    return [present.get(k, k) for k in touched]


class StateStore:
    """Reads the per-object states (the history store writes them)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def service_states(self) -> list[ServiceState]:
        """Every known service's (interface's, node's) last state."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(_STATE_SELECT.order_by(service_states.c.type_id))).all()
        return [_state(r) for r in rows]
