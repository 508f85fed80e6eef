"""Inventory, outage causes, node-outage state, paused services, result history.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("outages") as batch:
        batch.add_column(
            sa.Column("cause", sa.String(16), nullable=False, server_default="service")
        )
        batch.add_column(sa.Column("cause_event_id", sa.String(64)))
    with op.batch_alter_table("service_state") as batch:
        batch.add_column(sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(
            sa.Column("flapping", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.create_table(
        "down_elements",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("node_id", sa.String(128), primary_key=True),
        sa.Column("ip", sa.String(64), primary_key=True),
        sa.Column("since", When, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
    )
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("updated_at", When, nullable=False),
    )
    op.create_table(
        "results",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("node_id", sa.String(128), nullable=False),
        sa.Column("ip", sa.String(64), nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("response_time_ms", sa.Float, nullable=False),
        sa.Column("values", sa.Text, nullable=False),
        sa.Column("at", When, nullable=False),
        sa.Column("system_id", sa.String(128), nullable=False, server_default=""),
    )
    op.create_index("results_by_time", "results", ["at"])
    op.create_index("results_by_service", "results", ["node_id", "service", "id"])


def downgrade() -> None:
    op.drop_table("results")
    op.drop_table("nodes")
    op.drop_table("down_elements")
    with op.batch_alter_table("service_state") as batch:
        batch.drop_column("flapping")
        batch.drop_column("paused")
    with op.batch_alter_table("outages") as batch:
        batch.drop_column("cause_event_id")
        batch.drop_column("cause")
