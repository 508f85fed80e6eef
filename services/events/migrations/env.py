"""Alembic environment for the event service's tables (run through services.core.db.migrate)."""

from alembic import context

from services.core.db import run_migrations_in_context

run_migrations_in_context(context)
