"""Fixtures of the event-service tests: a throw-away PostgreSQL database, a running service."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.common.natsserver import NatsServer
from services.events.app import EventService
from tests.events.util import events_config

PG_ADMIN_URL = os.environ.get("VIGIL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of its own for this test session, dropped at the end.

    Skips (with the reason) when no PostgreSQL answers at ``$VIGIL_TEST_PG``
    (default ``postgresql://postgres@127.0.0.1:5432/test``).
    """
    name = f"vigil_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, TimeoutError) as exc:
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}")
    except Exception as exc:
        if type(exc).__module__.startswith("asyncpg"):
            pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} refused a test database: {exc}")
        raise
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on SQLite and on PostgreSQL (a fresh schema-less database each time)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.db"
    base: str = request.getfixturevalue("pg_url")
    # One database per test keeps the tests independent; created inside the session database's server.
    name = f"{base.rsplit('/', 1)[1]}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    request.addfinalizer(lambda: asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')))
    return f"{base.rsplit('/', 1)[0]}/{name}"


@pytest.fixture
async def service(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[EventService]:
    """A running event service (SQLite store, fast test settings)."""
    svc = EventService(events_config(tmp_path, nats_server.url), nats_url=nats_server.url)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()
