"""``hooks.secret`` holds the sealed form (AES-GCM, base64): room for it.

The secrets themselves are sealed by the event service at start
(``HookStore.open_secrets``), which has the key; a migration does not.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hooks") as batch:
        batch.alter_column(
            "secret", existing_type=sa.String(256), type_=sa.String(1024), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("hooks") as batch:
        batch.alter_column(
            "secret", existing_type=sa.String(1024), type_=sa.String(256), existing_nullable=False
        )
