"""Database plumbing shared by the scheduler and the event service.

SQLite (the embedded default) and PostgreSQL (production) run the same code:
SQLAlchemy Core on an async engine, schema changes as Alembic migrations. Each
service owns its tables and its migration chain (its own version table), so
both can share one PostgreSQL database.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)


def async_url(url: str) -> str:
    """``sqlite:///x`` → ``sqlite+aiosqlite:///x``; ``postgresql://`` → ``postgresql+asyncpg://``."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return str(u.set(drivername="sqlite+aiosqlite"))
    if backend in ("postgresql", "postgres"):
        return u.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database {backend!r} (use sqlite:// or postgresql://)")


def redact(url: str) -> str:
    """The URL with its password hidden, for logs."""
    return make_url(url).render_as_string(hide_password=True)


def create_engine(url: str) -> AsyncEngine:
    """An async engine with the settings each backend needs."""
    aurl = make_url(async_url(url))
    if aurl.get_backend_name() == "sqlite":
        if aurl.database and aurl.database != ":memory:":
            Path(aurl.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(aurl, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers (API calls) proceed while the writer commits.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_async_engine(aurl, pool_size=5, max_overflow=5, pool_pre_ping=True)


def _alembic_upgrade(conn: Connection, script_location: str, version_table: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", script_location)
    cfg.attributes["connection"] = conn
    cfg.attributes["version_table"] = version_table
    command.upgrade(cfg, "head")


async def migrate(engine: AsyncEngine, script_location: str, version_table: str) -> None:
    """Bring the schema to the newest revision of ``script_location``.

    On PostgreSQL an advisory lock serialises concurrent starts (two replicas,
    or the scheduler and the event service at once).
    """
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            key = zlib.crc32(version_table.encode())
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        await conn.run_sync(_alembic_upgrade, script_location, version_table)


def run_migrations_in_context(context: Any) -> None:
    """Body of each migrations/env.py: run on the connection handed over by :func:`migrate`."""
    conn = context.config.attributes["connection"]
    context.configure(
        connection=conn,
        version_table=context.config.attributes["version_table"],
        render_as_batch=conn.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def upsert(
    conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> None:
    """INSERT … ON CONFLICT (keys) DO UPDATE for SQLite and PostgreSQL alike."""
    if not rows:
        return
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    stmt = dialect.insert(table)
    update = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
    await conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=update), rows)


def utc(epoch: float | None) -> datetime | None:
    """Epoch seconds → aware UTC datetime for a DateTime(timezone=True) column."""
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def epoch(dt: datetime | None) -> float | None:
    """A datetime read back (SQLite returns naive UTC) → epoch seconds."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
