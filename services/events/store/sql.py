"""What the aggregates' tables share: one metadata, column types, the dialect's upsert."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)
metadata = sa.MetaData()


def dialect(conn: AsyncConnection) -> Any:
    """The dialect module whose ``insert`` has ``on_conflict_*`` for this connection."""
    return sqlite if conn.dialect.name == "sqlite" else postgresql
