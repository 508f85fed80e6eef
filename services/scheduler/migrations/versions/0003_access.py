"""Users, custom roles, API tokens and the token-signing key.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "access_users",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("valid_after", sa.Float, nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
    )
    op.create_table(
        "access_roles",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("grants", sa.Text, nullable=False),
        sa.Column("updated_at", When, nullable=False),
    )
    op.create_table(
        "access_tokens",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("scope_location", sa.String(64)),
        sa.Column("scope_node", sa.String(128)),
        sa.Column("created_at", When, nullable=False),
        sa.Column("expires_at", When),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
    )
    op.create_table(
        "access_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("private_pem", sa.Text, nullable=False),
        sa.Column("created_at", When, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("access_keys")
    op.drop_table("access_tokens")
    op.drop_table("access_roles")
    op.drop_table("access_users")
