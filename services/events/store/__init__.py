"""The event service's database, one per deployment, in SQLite or PostgreSQL (same code).

One store class per aggregate, all on the same engine:
:class:`~services.events.store.history.HistoryStore` (the events),
:class:`~services.events.store.hooks.HookStore` (webhooks and parked
deliveries), :class:`~services.events.store.states.StateStore` (per-object
states for the summary). :class:`EventStore` opens the database and is all
three; each component is given only the one it uses.
"""

from __future__ import annotations

from services.core import db
from services.events.store.history import HistoryStore
from services.events.store.hooks import HookStore
from services.events.store.states import StateStore

MIGRATIONS = "services.events:migrations"
VERSION_TABLE = "events_schema_version"


class EventStore(HistoryStore, HookStore, StateStore):
    """The database behind the three aggregate stores (chosen by URL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = db.create_engine(url)

    async def open(self) -> None:
        """Apply migrations."""
        await db.migrate(self.engine, MIGRATIONS, VERSION_TABLE)

    async def close(self) -> None:
        """Release connections."""
        await self.engine.dispose()
