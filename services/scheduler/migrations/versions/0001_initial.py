"""Service state, outages and the event outbox.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "service_state",
        sa.Column("node_id", sa.String(128), primary_key=True),
        sa.Column("ip", sa.String(64), primary_key=True),
        sa.Column("service", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_since", When),
        sa.Column("last_poll_status", sa.String(16)),
        sa.Column("last_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("last_poll_at", When),
        sa.Column("response_time_ms", sa.Float, nullable=False, server_default="0"),
        sa.Column("updated_at", When, nullable=False),
    )
    op.create_table(
        "outages",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("node_id", sa.String(128), nullable=False),
        sa.Column("ip", sa.String(64), nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("opened_at", When, nullable=False),
        sa.Column("lost_event_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("closed_at", When),
        sa.Column("regained_event_id", sa.String(64)),
        sa.Column("close_reason", sa.Text),
    )
    # At most one open outage per service, enforced by the database itself.
    op.create_index(
        "outages_one_open",
        "outages",
        ["node_id", "ip", "service"],
        unique=True,
        sqlite_where=sa.text("closed_at IS NULL"),
        postgresql_where=sa.text("closed_at IS NULL"),
    )
    op.create_index("outages_by_service", "outages", ["node_id", "service", "id"])
    op.create_table(
        "event_outbox",
        sa.Column("seq", BigId, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", When, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("event_outbox")
    op.drop_index("outages_by_service", "outages")
    op.drop_index("outages_one_open", "outages")
    op.drop_table("outages")
    op.drop_table("service_state")
