"""Event history.

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
        "events",
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
    op.create_index("events_by_time", "events", ["created_at"])
    op.create_index("events_by_node", "events", ["node_id", "seq"])
    op.create_index("events_by_type", "events", ["type", "action", "seq"])


def downgrade() -> None:
    op.drop_table("events")
