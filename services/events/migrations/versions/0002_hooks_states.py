"""Webhooks, parked deliveries, per-service state; ``events.seq`` is the stream sequence.

From this revision on, ``events.seq`` holds the event's sequence in the
``VIGIL_EVENTS`` JetStream stream (assigned at publish, written explicitly)
instead of a value of its own; rows written before kept theirs (the walking
skeleton published in storage order, so they agree) and the event service
moves a stream that is behind the history forward at start-up.

``service_states`` (the summary's source) is seeded from the history.

Revision ID: 0002
Revises: 0001
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)

# Frozen copy of the rule in services/events/summary.py at this revision.
_DOWN = {("service", "lost"), ("outage", "opened")}
_UP = {("service", "regained"), ("outage", "closed")}


def upgrade() -> None:
    op.create_table(
        "hooks",
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
    op.create_table(
        "hook_failures",
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
    op.create_index("hook_failures_by_hook", "hook_failures", ["hook_id", "id"])
    states = op.create_table(
        "service_states",
        sa.Column("type_id", sa.String(256), primary_key=True),
        sa.Column("node_id", sa.String(128)),
        sa.Column("location", sa.String(64)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("since", When, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    assert states is not None
    events = sa.table(
        "events",
        sa.column("seq", BigId),
        sa.column("type", sa.String),
        sa.column("action", sa.String),
        sa.column("type_id", sa.String),
        sa.column("node_id", sa.String),
        sa.column("location", sa.String),
        sa.column("created_at", When),
        sa.column("payload", sa.LargeBinary),
    )
    conn = op.get_bind()
    latest: dict[str, dict[str, object] | None] = {}
    rows = conn.execute(
        sa.select(events)
        .where(events.c.type.in_(("service", "outage")), events.c.type_id != "")
        .order_by(events.c.seq)
    )
    for r in rows:
        key = (r.type, r.action)
        if key in _DOWN:
            state = "down"
        elif key in _UP:
            try:
                reason = json.loads(r.payload).get("data", {}).get("reason")
            except ValueError:
                reason = None
            if reason == "unmanaged":
                latest[r.type_id] = None
                continue
            state = "up"
        else:
            continue
        prev = latest.get(r.type_id)
        latest[r.type_id] = {
            "type_id": r.type_id,
            "node_id": r.node_id,
            "location": r.location or (prev or {}).get("location"),
            "state": state,
            "since": r.created_at,
            "seq": r.seq,
        }
    seed = [row for row in latest.values() if row is not None]
    if seed:
        op.bulk_insert(states, seed)


def downgrade() -> None:
    op.drop_table("service_states")
    op.drop_table("hook_failures")
    op.drop_table("hooks")
