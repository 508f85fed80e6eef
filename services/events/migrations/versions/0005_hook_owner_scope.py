"""``hooks.owner`` and ``hooks.scope``: who created a hook and what it may carry.

``scope`` is the creator's event scope as canonical JSON
(``services.core.access.visibility.EventScope.to_json``); hooks stored before
this revision keep both empty and are read as created unscoped (every event
but audit events).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hooks") as batch:
        batch.add_column(sa.Column("owner", sa.String(256), nullable=True))
        batch.add_column(sa.Column("scope", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hooks") as batch:
        batch.drop_column("scope")
        batch.drop_column("owner")
