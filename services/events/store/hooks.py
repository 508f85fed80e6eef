"""Webhooks: their definitions, delivery statuses and parked (given up) deliveries.

Hook secrets are encrypted at rest (AES-256-GCM, :class:`SecretBox`, the
hook's id as associated data so a sealed secret cannot be moved to another
row). The key comes from ``VIGIL_EVENTS_SECRET_KEY`` or a key file
(``events.secret_key_file``; by default ``events-secret.key`` beside a SQLite
store, else ``.vigil/events-secret.key``), created with mode 0600 when
missing. Rows written in clear by an older version are sealed at start
(:meth:`HookStore.open_secrets`); until then they are read as they are.

Delivery errors (a hook's last error, a parked delivery's) are stored and read
as generic failure classes only (:func:`~services.events.hooks.guard.shown_error`):
a row written by an older version, which kept the receiver's own text, is read
as its class (``HTTP 503``, ``timeout``) or ``delivery failed``.

A hook remembers who created it (``owner``, the principal's key) and what
that creator could read (``scope``, its
:class:`~services.core.access.visibility.EventScope` as canonical JSON): its
deliveries carry only what that scope admits. A hook stored before scopes
existed has neither (see :func:`hook_scope`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.core import db
from services.core.access.principal import Visibility
from services.core.access.visibility import EventScope
from services.events.hooks.guard import shown_error
from services.events.store.sql import BigId, When, metadata

log = logging.getLogger(__name__)

#: The environment variable that holds the key itself (base64, 32 bytes).
KEY_ENV = "VIGIL_EVENTS_SECRET_KEY"
KEY_FILE_NAME = "events-secret.key"
#: Prefix of a sealed secret in the ``secret`` column (a clear one never has it:
#: hook secrets are refused with control characters, and ":" alone is not enough
#: to look like this).
SEALED = "aesgcm1:"


class SecretKeyError(RuntimeError):
    """The hook-secret key is missing, unreadable or not a key; or a sealed secret
    does not open with it."""


class SecretBox:
    """AES-256-GCM for hook secrets."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise SecretKeyError(f"the hook-secret key must be 32 bytes, not {len(key)}")
        self._aead = AESGCM(key)

    @classmethod
    def load(cls, key_file: str | os.PathLike[str], env: dict[str, str] | None = None) -> SecretBox:
        """The key from ``VIGIL_EVENTS_SECRET_KEY``, else from ``key_file``,
        which is created (mode 0600, a fresh random key) when missing."""
        environ = os.environ if env is None else env
        text = environ.get(KEY_ENV)
        where = KEY_ENV
        if text is None:
            path = Path(key_file)
            where = str(path)
            if not path.exists():
                _create_key_file(path)
            try:
                text = path.read_text()
            except OSError as exc:
                raise SecretKeyError(f"{path}: cannot read the hook-secret key ({exc})") from None
        try:
            key = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise SecretKeyError(f"{where}: not a base64 key") from None
        try:
            return cls(key)
        except SecretKeyError as exc:
            raise SecretKeyError(f"{where}: {exc}") from None

    def seal(self, secret: str, hook_id: str) -> str:
        """The stored form of ``secret`` for hook ``hook_id``."""
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), hook_id.encode())
        return SEALED + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, stored: str, hook_id: str) -> str:
        """The secret behind a stored value (a clear one, not yet sealed, as it is)."""
        if not stored.startswith(SEALED):
            return stored
        try:
            raw = base64.b64decode(stored[len(SEALED) :], validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], hook_id.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag):
            raise SecretKeyError(
                f"the secret of hook {hook_id} does not open with this key "
                f"(was {KEY_ENV} or the key file changed?)"
            ) from None


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = base64.b64encode(secrets.token_bytes(32)).decode("ascii") + "\n"
    try:
        # O_EXCL: two processes starting at once must not each write a different key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise SecretKeyError(f"{path}: cannot create the hook-secret key ({exc})") from None
    with os.fdopen(fd, "w") as f:
        f.write(key)
    log.info("created the hook-secret key %s", path)


def default_key_file(engine: AsyncEngine) -> Path:
    """``events-secret.key`` beside a SQLite store's file, else under ``.vigil``."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).parent / KEY_FILE_NAME
    return Path(".vigil") / KEY_FILE_NAME


hooks = sa.Table(
    "hooks",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("url", sa.String(2048), nullable=False),
    # sealed (SecretBox): a 256-character secret takes about 390
    sa.Column("secret", sa.String(1024), nullable=False),
    sa.Column("filters", sa.Text, nullable=False),
    sa.Column("created_at", When, nullable=False),
    sa.Column("last_success_at", When),
    sa.Column("last_error_at", When),
    sa.Column("last_error", sa.String(512)),
    sa.Column("delivered", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("ack_floor", sa.BigInteger, nullable=False, server_default="0"),
    # who created it, and what it may carry (migration 0005)
    sa.Column("owner", sa.String(256)),
    sa.Column("scope", sa.Text),
)

hook_failures = sa.Table(
    "hook_failures",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "hook_id", sa.String(64), sa.ForeignKey("hooks.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("first_attempt_at", When, nullable=False),
    sa.Column("failed_at", When, nullable=False),
    sa.Column("last_error", sa.String(512), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
)


@dataclass(slots=True)
class HookRow:
    """A webhook definition with its persisted status."""

    id: str
    name: str
    url: str
    secret: str = field(repr=False)  # never in a log line
    filters: list[dict[str, str]]
    created_at: float
    last_success_at: float | None = None
    last_error_at: float | None = None
    last_error: str | None = None
    delivered: int = 0
    ack_floor: int = 0
    failed: int = field(default=0)
    #: The creator's principal key (``None``: created before scopes existed).
    owner: str | None = None
    #: What the creator could read: its deliveries carry only that (``None``: see
    #: :func:`hook_scope`).
    scope: EventScope | None = None


#: The scope of a hook stored before scopes existed: every event but audit events
#: (they did not exist then; a hook gets them only if an admin creates it).
LEGACY_SCOPE = EventScope(Visibility(everything=True), audit=False)


def hook_scope(row: HookRow) -> EventScope:
    """What ``row``'s deliveries may carry."""
    return row.scope if row.scope is not None else LEGACY_SCOPE


def _scope_of(text: str | None, hook_id: str) -> EventScope | None:
    if text is None:
        return None
    try:
        return EventScope.from_json(text)
    except ValueError as exc:
        # Fail closed: a scope that cannot be read lets nothing through.
        log.error("hook %s: stored scope unreadable (%s); it delivers nothing", hook_id, exc)
        return EventScope(Visibility(everything=False), audit=False)


@dataclass(frozen=True, slots=True)
class HookFailureRow:
    """A delivery given up after retrying for the maximum age."""

    id: int
    hook_id: str
    event_id: str
    seq: int
    attempts: int
    first_attempt_at: float
    failed_at: float
    last_error: str
    payload: bytes


def _hook_row(r: Any, box: SecretBox, failed: int = 0) -> HookRow:
    return HookRow(
        id=r.id,
        name=r.name,
        url=r.url,
        secret=box.open(r.secret, r.id),
        filters=json.loads(r.filters),
        created_at=db.epoch(r.created_at) or 0.0,
        last_success_at=db.epoch(r.last_success_at),
        last_error_at=db.epoch(r.last_error_at),
        last_error=shown_error(r.last_error),
        delivered=int(r.delivered),
        ack_floor=int(r.ack_floor),
        failed=failed,
        owner=r.owner,
        scope=_scope_of(r.scope, r.id),
    )


@dataclass(frozen=True, slots=True)
class HookViewer:
    """A scoped caller managing hooks: it sees those it created (``owner``) and those
    whose stored scope equals the one its own hook would carry (``scope``)."""

    owner: str
    scope: EventScope


def _viewer_conditions(viewer: HookViewer | None) -> list[Any]:
    if viewer is None:
        return []
    return [sa.or_(hooks.c.owner == viewer.owner, hooks.c.scope == viewer.scope.to_json())]


class HookStore:
    """Hook definitions with their status, and each hook's parked deliveries."""

    _box: SecretBox | None = None

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def _secret_box(self) -> SecretBox:
        if self._box is None:
            # not opened explicitly (a tool, a test): the default key
            self._box = SecretBox.load(default_key_file(self.engine))
        return self._box

    async def open_secrets(self, key_file: str | None = None) -> int:
        """Load the hook-secret key and seal every secret still stored in clear;
        returns how many were sealed. Raises :class:`SecretKeyError` when the key
        cannot be had or does not open the stored secrets."""
        box = SecretBox.load(key_file or default_key_file(self.engine))
        self._box = box
        sealed = 0
        async with self.engine.begin() as conn:
            rows = (await conn.execute(sa.select(hooks.c.id, hooks.c.secret))).all()
            for r in rows:
                if r.secret.startswith(SEALED):
                    box.open(r.secret, r.id)  # the wrong key fails now, not at delivery
                    continue
                await conn.execute(
                    sa.update(hooks)
                    .where(hooks.c.id == r.id, hooks.c.secret == r.secret)
                    .values(secret=box.seal(r.secret, r.id))
                )
                sealed += 1
        if sealed:
            log.info("sealed %d hook secret(s) stored in clear", sealed)
        return sealed

    async def add_hook(self, hook: HookRow) -> bool:
        """Store a new hook; ``False`` when the name is taken."""
        async with self.engine.begin() as conn:
            taken = (
                await conn.execute(sa.select(hooks.c.id).where(hooks.c.name == hook.name))
            ).first()
            if taken is not None:
                return False
            await conn.execute(
                sa.insert(hooks).values(
                    id=hook.id,
                    name=hook.name,
                    url=hook.url,
                    secret=self._secret_box().seal(hook.secret, hook.id),
                    filters=json.dumps(hook.filters, separators=(",", ":")),
                    created_at=db.utc(hook.created_at),
                    delivered=0,
                    ack_floor=hook.ack_floor,
                    owner=hook.owner,
                    scope=None if hook.scope is None else hook.scope.to_json(),
                )
            )
        return True

    async def hook_with_url(self, url: str, *, other_than: str | None = None) -> str | None:
        """The name of a hook (other than ``other_than``) that POSTs to ``url``, or ``None``."""
        conds = [hooks.c.url == url]
        if other_than is not None:
            conds.append(hooks.c.id != other_than)
        async with self.engine.connect() as conn:
            name = (await conn.execute(sa.select(hooks.c.name).where(*conds).limit(1))).scalar()
        return None if name is None else str(name)

    async def update_hook(self, hook: HookRow) -> bool:
        """Rewrite a hook's definition (name, URL, filters, secret, sealed again);
        ``False`` when the hook is gone or the new name belongs to another hook."""
        async with self.engine.begin() as conn:
            taken = (
                await conn.execute(
                    sa.select(hooks.c.id).where(hooks.c.name == hook.name, hooks.c.id != hook.id)
                )
            ).first()
            if taken is not None:
                return False
            result = await conn.execute(
                sa.update(hooks)
                .where(hooks.c.id == hook.id)
                .values(
                    name=hook.name,
                    url=hook.url,
                    secret=self._secret_box().seal(hook.secret, hook.id),
                    filters=json.dumps(hook.filters, separators=(",", ":")),
                )
            )
        return bool(result.rowcount)

    async def _failure_counts(self, conn: AsyncConnection, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        f = hook_failures
        rows = (
            await conn.execute(
                sa.select(f.c.hook_id, sa.func.count())
                .where(f.c.hook_id.in_(ids))
                .group_by(f.c.hook_id)
            )
        ).all()
        return {r[0]: int(r[1]) for r in rows}

    async def get_hook(self, hook_id: str, *, seen_by: HookViewer | None = None) -> HookRow | None:
        """One hook, or ``None`` (also when ``seen_by`` may not see it)."""
        conds = [hooks.c.id == hook_id, *_viewer_conditions(seen_by)]
        async with self.engine.connect() as conn:
            r = (await conn.execute(sa.select(hooks).where(*conds))).first()
            if r is None:
                return None
            counts = await self._failure_counts(conn, [hook_id])
        return _hook_row(r, self._secret_box(), counts.get(hook_id, 0))

    async def all_hooks(self) -> list[HookRow]:
        """Every hook (the event service runs one deliverer per hook)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(hooks).order_by(hooks.c.name))).all()
        box = self._secret_box()
        return [_hook_row(r, box) for r in rows]

    async def list_hooks(
        self, *, after_name: str | None, limit: int, seen_by: HookViewer | None = None
    ) -> tuple[list[HookRow], int]:
        """A page of hooks by name, and how many there are (those ``seen_by`` may see)."""
        seen = _viewer_conditions(seen_by)
        conds = [*seen, hooks.c.name > after_name] if after_name is not None else seen
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(hooks).where(*conds).order_by(hooks.c.name).limit(limit)
                )
            ).all()
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(hooks).where(*seen))
            ).scalar_one()
            counts = await self._failure_counts(conn, [r.id for r in rows])
        box = self._secret_box()
        return [_hook_row(r, box, counts.get(r.id, 0)) for r in rows], int(total)

    async def delete_hook(self, hook_id: str) -> bool:
        """Remove a hook and its parked deliveries; ``False`` when unknown."""
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(hook_failures).where(hook_failures.c.hook_id == hook_id))
            result = await conn.execute(sa.delete(hooks).where(hooks.c.id == hook_id))
        return bool(result.rowcount)

    async def save_hook_status(self, hook: HookRow) -> None:
        """Persist the status fields (last success/error, counters, cursor)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(hooks)
                .where(hooks.c.id == hook.id)
                .values(
                    last_success_at=db.utc(hook.last_success_at),
                    last_error_at=db.utc(hook.last_error_at),
                    last_error=shown_error(hook.last_error or None),
                    delivered=hook.delivered,
                    ack_floor=hook.ack_floor,
                )
            )

    async def park(self, failure: HookFailureRow, keep: int) -> None:
        """Record a delivery given up; keeps the newest ``keep`` per hook."""
        f = hook_failures
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.insert(f).values(
                    hook_id=failure.hook_id,
                    event_id=failure.event_id,
                    seq=failure.seq,
                    attempts=failure.attempts,
                    first_attempt_at=db.utc(failure.first_attempt_at),
                    failed_at=db.utc(failure.failed_at),
                    last_error=shown_error(failure.last_error) or "",
                    payload=failure.payload,
                )
            )
            new_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
            if new_id is not None and int(new_id) % 64 == 0:
                # Occasionally trim: the table must not grow without bound for a dead hook.
                cutoff = (
                    await conn.execute(
                        sa.select(f.c.id)
                        .where(f.c.hook_id == failure.hook_id)
                        .order_by(f.c.id.desc())
                        .offset(keep)
                        .limit(1)
                    )
                ).scalar_one_or_none()
                if cutoff is not None:
                    await conn.execute(
                        sa.delete(f).where(f.c.hook_id == failure.hook_id, f.c.id <= cutoff)
                    )

    async def list_failures(
        self, hook_id: str, *, before_id: int | None, limit: int
    ) -> tuple[list[HookFailureRow], int]:
        """A page of a hook's parked deliveries, newest first, and their total."""
        f = hook_failures
        conds = [f.c.hook_id == hook_id]
        page = [*conds, f.c.id < before_id] if before_id is not None else conds
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(sa.select(f).where(*page).order_by(f.c.id.desc()).limit(limit))
            ).all()
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(f).where(*conds))
            ).scalar_one()
        return [
            HookFailureRow(
                id=int(r.id),
                hook_id=r.hook_id,
                event_id=r.event_id,
                seq=int(r.seq),
                attempts=int(r.attempts),
                first_attempt_at=db.epoch(r.first_attempt_at) or 0.0,
                failed_at=db.epoch(r.failed_at) or 0.0,
                last_error=shown_error(r.last_error) or "",
                payload=bytes(r.payload),
            )
            for r in rows
        ], int(total)
