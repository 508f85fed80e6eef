"""The scheduler's access tables: users (argon2 hashes), custom roles, API tokens, signing key.

Tokens themselves are never stored: a token row holds its id, what it grants
and a SHA-256 fingerprint of the token (to recognise one shown in a log).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.access.permissions import ANYWHERE, Grant, Scope

When = sa.DateTime(timezone=True)
metadata = sa.MetaData()

users = sa.Table(
    "access_users",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False),
    sa.Column("valid_after", sa.Float, nullable=False),
    sa.Column("created_at", When, nullable=False),
    sa.Column("updated_at", When, nullable=False),
)
roles = sa.Table(
    "access_roles",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("grants", sa.Text, nullable=False),
    sa.Column("updated_at", When, nullable=False),
)
tokens = sa.Table(
    "access_tokens",
    metadata,
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
keys = sa.Table(
    "access_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("private_pem", sa.Text, nullable=False),
    sa.Column("created_at", When, nullable=False),
)


@dataclass(frozen=True, slots=True)
class UserRow:
    """A stored user."""

    name: str
    role: str
    password_hash: str
    disabled: bool
    valid_after: float
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A stored API token (never the token itself)."""

    id: str
    name: str
    role: str
    scope: Scope
    created_at: dt.datetime
    expires_at: dt.datetime | None
    created_by: str
    fingerprint: str


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes: every stored time is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def _user(row: sa.Row[tuple[object, ...]]) -> UserRow:
    m = row._mapping
    return UserRow(
        name=m["name"],
        role=m["role"],
        password_hash=m["password_hash"],
        disabled=bool(m["disabled"]),
        valid_after=float(m["valid_after"]),
        created_at=_utc(m["created_at"]) or dt.datetime.now(dt.UTC),
        updated_at=_utc(m["updated_at"]) or dt.datetime.now(dt.UTC),
    )


def _token(row: sa.Row[tuple[object, ...]]) -> TokenRow:
    m = row._mapping
    scope = (
        Scope(location=m["scope_location"], node=m["scope_node"])
        if m["scope_location"] or m["scope_node"]
        else ANYWHERE
    )
    return TokenRow(
        id=m["id"],
        name=m["name"],
        role=m["role"],
        scope=scope,
        created_at=_utc(m["created_at"]) or dt.datetime.now(dt.UTC),
        expires_at=_utc(m["expires_at"]),
        created_by=m["created_by"],
        fingerprint=m["fingerprint"],
    )


def grants_json(grants: Sequence[Grant]) -> str:
    """The stored form of a role's grants."""
    return json.dumps(
        [
            {"permission": g.permission, "location": g.scope.location, "node": g.scope.node}
            for g in grants
        ]
    )


def grants_of(text: str) -> tuple[Grant, ...]:
    """A role's grants from their stored form."""
    return tuple(
        Grant(g["permission"], Scope(location=g.get("location"), node=g.get("node")))
        for g in json.loads(text)
    )


class AccessStore:
    """Reads and writes the access tables on the scheduler's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # -- users -------------------------------------------------------------------------------

    async def users(self) -> list[UserRow]:
        """Every user, by name."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(users).order_by(users.c.name))
            return [_user(r) for r in rows]

    async def user(self, name: str) -> UserRow | None:
        """One user, ``None`` if there is none by that name."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.name == name))).first()
            return None if row is None else _user(row)

    async def put_user(self, row: UserRow) -> None:
        """Create or replace a user."""
        values = {
            "role": row.role,
            "password_hash": row.password_hash,
            "disabled": row.disabled,
            "valid_after": row.valid_after,
            "updated_at": row.updated_at,
        }
        async with self.engine.begin() as conn:
            done = await conn.execute(
                sa.update(users).where(users.c.name == row.name).values(values)
            )
            if done.rowcount == 0:
                await conn.execute(
                    sa.insert(users).values(name=row.name, created_at=row.created_at, **values)
                )

    async def delete_user(self, name: str) -> bool:
        """Delete a user; whether there was one."""
        async with self.engine.begin() as conn:
            done = await conn.execute(sa.delete(users).where(users.c.name == name))
            return bool(done.rowcount)

    # -- roles -------------------------------------------------------------------------------

    async def roles(self) -> dict[str, tuple[Grant, ...]]:
        """Every custom role's grants, by name."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(roles).order_by(roles.c.name))
            return {r.name: grants_of(r.grants) for r in rows}

    async def put_role(self, name: str, grants: Sequence[Grant], at: dt.datetime) -> None:
        """Create or replace a custom role."""
        async with self.engine.begin() as conn:
            done = await conn.execute(
                sa.update(roles)
                .where(roles.c.name == name)
                .values(grants=grants_json(grants), updated_at=at)
            )
            if done.rowcount == 0:
                await conn.execute(
                    sa.insert(roles).values(name=name, grants=grants_json(grants), updated_at=at)
                )

    async def delete_role(self, name: str) -> bool:
        """Delete a custom role; whether there was one."""
        async with self.engine.begin() as conn:
            done = await conn.execute(sa.delete(roles).where(roles.c.name == name))
            return bool(done.rowcount)

    # -- tokens ------------------------------------------------------------------------------

    async def tokens(self) -> list[TokenRow]:
        """Every live API token, oldest first."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(tokens).order_by(tokens.c.created_at, tokens.c.id))
            return [_token(r) for r in rows]

    async def add_token(self, row: TokenRow) -> None:
        """Record a new API token."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.insert(tokens).values(
                    id=row.id,
                    name=row.name,
                    role=row.role,
                    scope_location=row.scope.location,
                    scope_node=row.scope.node,
                    created_at=row.created_at,
                    expires_at=row.expires_at,
                    created_by=row.created_by,
                    fingerprint=row.fingerprint,
                )
            )

    async def delete_token(self, token_id: str) -> bool:
        """Revoke (delete) an API token; whether there was one."""
        async with self.engine.begin() as conn:
            done = await conn.execute(sa.delete(tokens).where(tokens.c.id == token_id))
            return bool(done.rowcount)

    # -- the signing key ---------------------------------------------------------------------

    async def signing_key(self) -> tuple[str, str] | None:
        """The newest signing key as ``(id, private PEM)``, ``None`` before the first."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(keys).order_by(keys.c.created_at.desc()).limit(1))
            ).first()
            return None if row is None else (row.id, row.private_pem)

    async def add_signing_key(self, key_id: str, pem: str, at: dt.datetime) -> None:
        """Store a new signing key."""
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(keys).values(id=key_id, private_pem=pem, created_at=at))
