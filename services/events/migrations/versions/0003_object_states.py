"""``service_states`` also tracks interfaces and nodes (``kind``), for the summary.

A service on a node or interface that is down counts as down even though the
scheduler emits no event of its own for it (node-outage processing). Interface
and node states are seeded from the history.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("service_states") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="service"))
    states = sa.table(
        "service_states",
        sa.column("type_id", sa.String),
        sa.column("kind", sa.String),
        sa.column("node_id", sa.String),
        sa.column("location", sa.String),
        sa.column("state", sa.String),
        sa.column("since", When),
        sa.column("seq", sa.BigInteger),
    )
    events = sa.table(
        "events",
        sa.column("seq", BigId),
        sa.column("type", sa.String),
        sa.column("action", sa.String),
        sa.column("type_id", sa.String),
        sa.column("node_id", sa.String),
        sa.column("location", sa.String),
        sa.column("created_at", When),
    )
    conn = op.get_bind()
    latest: dict[str, dict[str, object]] = {}
    rows = conn.execute(
        sa.select(events)
        .where(events.c.type.in_(("interface", "node")), events.c.action.in_(("down", "up")))
        .where(events.c.type_id != "")
        .order_by(events.c.seq)
    )
    for r in rows:
        # Keys of interfaces and nodes must not collide with services' typeIds.
        latest[f"{r.type}:{r.type_id}"] = {
            "type_id": f"{r.type}:{r.type_id}",
            "kind": r.type,
            "node_id": r.node_id,
            "location": r.location,
            "state": r.action,
            "since": r.created_at,
            "seq": r.seq,
        }
    if latest:
        op.bulk_insert(states, list(latest.values()))


def downgrade() -> None:
    op.execute("DELETE FROM service_states WHERE kind != 'service'")
    with op.batch_alter_table("service_states") as batch:
        batch.drop_column("kind")
