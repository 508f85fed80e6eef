"""Alembic environment for the scheduler's tables (run through services.common.db.migrate)."""

from alembic import context

from services.common.db import run_migrations_in_context

run_migrations_in_context(context)
