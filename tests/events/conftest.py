"""Fixtures of the event-service tests: throw-away PostgreSQL databases, a running service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.core.natsserver import NatsServer
from services.events.app import EventService
from tests.events.util import events_config
from tests.pg import create_database, drop_database


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of its own for this test session, dropped at the end.

    Skips (with the reason) when no PostgreSQL answers at ``$VIGIL_TEST_PG``
    (default ``postgresql://postgres@127.0.0.1:5432/test``).
    """
    url = create_database("vigil_test")
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on SQLite and on PostgreSQL (a fresh, empty database each time)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/events.db"
        return
    request.getfixturevalue("pg_url")  # skips the PostgreSQL half when there is none
    url = create_database("vigil_test_events")
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
async def service(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[EventService]:
    """A running event service (SQLite store, fast test settings)."""
    svc = EventService(events_config(tmp_path, nats_server.url), nats_url=nats_server.url)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()
