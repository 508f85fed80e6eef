"""Users, roles and tokens: the scheduler's one owner of who may do what.

The authority keeps the access tables, signs tokens, and after every change
rebuilds the :class:`~services.core.access.tokens.AccessSnapshot` that the
servers' interceptors check tokens against: the scheduler's own at once, the
event service's through the published copy (``on_snapshot``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.core.access.permissions import (
    ANYWHERE,
    BUILTIN_ROLES,
    METHODS,
    ROLE_NAME_RE,
    DefinitionError,
    Grant,
    Scope,
    check_pattern,
)
from services.core.access.principal import Principal
from services.core.access.tokens import (
    AccessSnapshot,
    TokenEntry,
    TokenError,
    TokenSigner,
    TokenVerifier,
    UserEntry,
)
from services.core.config.access import AccessSettings
from services.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from services.scheduler.access.store import AccessStore, TokenRow, UserRow

log = logging.getLogger(__name__)

USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_GRANTS = 100
#: Built-in roles only certificates hold.
CERTIFICATE_ONLY_ROLES = frozenset({"minion"})
#: Name of the token `vigil up` writes to ``access.bootstrap_token_file``.
BOOTSTRAP_TOKEN_NAME = "bootstrap-admin"
#: Expired tokens leave the snapshot this often even when nothing else changes.
PRUNE_EVERY = 60.0

#: Argon2id with the library's defaults (RFC 9106 low-memory profile).
_HASHER = PasswordHasher()
#: Checked against when a user does not exist, so a login takes as long either way.
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _permission_methods(grants: Sequence[Grant]) -> list[str]:
    return [
        m
        for m, need in METHODS.items()
        if need == "permission" and any(g.matches(m) for g in grants)
    ]


def check_user_name(name: str) -> str:
    """A user name: 1-64 letters, digits, ``_ . @ -``."""
    if not USER_NAME_RE.fullmatch(name):
        raise InvalidArgumentError(
            "name", f"{name[:80]!r} must be 1-64 letters, digits, '_', '.', '@' or '-'"
        )
    return name


class AccessAuthority:
    """The access tables, the signing key and the snapshot built from them."""

    def __init__(
        self,
        store: AccessStore,
        settings: AccessSettings,
        *,
        on_snapshot: Callable[[AccessSnapshot], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.verifier = TokenVerifier()
        self.on_snapshot = on_snapshot
        self._signer: TokenSigner | None = None
        self._lock = asyncio.Lock()
        self._revision = 0
        self._failures: dict[str, list[float]] = {}

    @property
    def snapshot(self) -> AccessSnapshot:
        """The snapshot tokens are checked against now."""
        return self.verifier.snapshot

    @property
    def signer(self) -> TokenSigner:
        """The token signer (after :meth:`start`)."""
        assert self._signer is not None, "AccessAuthority.start() first"
        return self._signer

    async def start(self) -> None:
        """Load (or create) the signing key and build the first snapshot."""
        stored = await self.store.signing_key()
        if stored is None:
            signer = TokenSigner.generate()
            try:
                await self.store.add_signing_key(signer.key_id, signer.private_pem(), _now())
            except Exception:
                # another scheduler created one at the same moment: use that one
                stored = await self.store.signing_key()
                if stored is None:
                    raise
            else:
                stored = (signer.key_id, signer.private_pem())
        self._signer = TokenSigner.from_pem(stored[1], stored[0])
        await self.refresh()

    async def refresh(self) -> AccessSnapshot:
        """Rebuild the snapshot from the tables (expired tokens left out) and publish it."""
        users = await self.store.users()
        roles = await self.store.roles()
        tokens = await self.store.tokens()
        now = time.time()
        # Strictly increasing, also across restarts, so mirrors never take an older one.
        self._revision = max(self._revision + 1, int(now * 1000))
        snapshot = AccessSnapshot(
            revision=self._revision,
            keys={self.signer.key_id: self.signer.public_pem()},
            roles=roles,
            users={
                u.name: UserEntry(role=u.role, valid_after=u.valid_after)
                for u in users
                if not u.disabled
            },
            tokens={
                t.id: TokenEntry(
                    name=t.name,
                    role=t.role,
                    scope=t.scope,
                    expires_at=None if t.expires_at is None else t.expires_at.timestamp(),
                )
                for t in tokens
                if t.expires_at is None or t.expires_at.timestamp() > now
            },
        )
        self.verifier.load(snapshot)
        if self.on_snapshot is not None:
            self.on_snapshot(snapshot)
        return snapshot

    async def prune(self) -> None:
        """For ever: drop expired tokens from the snapshot every :data:`PRUNE_EVERY` seconds."""
        while True:
            await asyncio.sleep(PRUNE_EVERY)
            try:
                async with self._lock:
                    await self.refresh()
            except Exception:
                log.exception("access snapshot refresh failed; keeping the previous one")

    # -- roles and scope checks --------------------------------------------------------------

    def role_grants(self, role: str, field: str = "role") -> tuple[Grant, ...]:
        """The grants of an existing role; INVALID_ARGUMENT naming ``field`` if unknown."""
        if role in CERTIFICATE_ONLY_ROLES:
            raise InvalidArgumentError(
                field, f"{role!r} belongs to minion certificates; give people and tools another"
            )
        if role in BUILTIN_ROLES or role in self.snapshot.roles:
            return self.snapshot.grants(role)
        known = sorted({*BUILTIN_ROLES, *self.snapshot.roles} - {"minion"})
        raise InvalidArgumentError(field, f"no role {role!r} (roles: {', '.join(known)})")

    @staticmethod
    def require_within(caller: Principal, grants: Sequence[Grant], what: str) -> None:
        """Refuse to hand out more than ``caller`` holds (no escalation through Access)."""
        beyond = [m for m in _permission_methods(grants) if not caller.may(m)]
        if beyond:
            raise PermissionDeniedError(
                f"{caller} may not {what}: it would grant {beyond[0]}, which {caller} lacks"
            )
        if not caller.restriction.unrestricted or any(
            not g.scope.unrestricted
            for g in caller.grants
            if g.permission.startswith("vigil.v1.Access")
        ):
            raise PermissionDeniedError(f"{caller} is scoped and may not {what}")

    # -- login -------------------------------------------------------------------------------

    def _throttled(self, user: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._failures.get(user, []) if now - t < 60.0]
        if recent:
            self._failures[user] = recent
        else:
            self._failures.pop(user, None)
        return len(recent) >= self.settings.login_failures_per_minute

    def _failed(self, user: str) -> None:
        if len(self._failures) > 10_000:
            self._failures.clear()  # bounded; an attacker cycling names gains nothing from it
        self._failures.setdefault(user, []).append(time.monotonic())

    async def login(self, name: str, password: str) -> tuple[str, dt.datetime, str]:
        """A session token for ``name`` if ``password`` is right: ``(token, expires, role)``."""
        if not name:
            raise InvalidArgumentError("user", "is required")
        if not password:
            raise InvalidArgumentError("password", "is required")
        if len(password) > MAX_PASSWORD or len(name) > 64:
            raise UnauthenticatedError("wrong user name or password")
        if self._throttled(name):
            raise ResourceExhaustedError(f"too many failed logins for {name!r}; retry in a minute")
        row = await self.store.user(name)
        stored = row.password_hash if row is not None else _DUMMY_HASH
        ok = await asyncio.to_thread(_verify, stored, password)
        if row is None or not ok or row.disabled:
            self._failed(name)
            raise UnauthenticatedError(
                "user disabled"
                if row is not None and ok and row.disabled
                else "wrong user name or password"
            )
        ttl = self.settings.session_ttl
        token, _ = self.signer.issue("session", name, ttl=ttl)
        return token, _now() + dt.timedelta(seconds=ttl), row.role

    # -- users -------------------------------------------------------------------------------

    async def put_user(
        self, caller: Principal, name: str, role: str, password: str, disabled: bool
    ) -> UserRow:
        """Create a user (``password`` required) or change one (empty keeps the password)."""
        check_user_name(name)
        self.require_within(caller, self.role_grants(role), f"give role {role!r}")
        if password and not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise InvalidArgumentError(
                "password", f"must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"
            )
        async with self._lock:
            existing = await self.store.user(name)
            if existing is None and not password:
                raise InvalidArgumentError("password", "is required for a new user")
            hashed = (
                await asyncio.to_thread(_HASHER.hash, password)
                if password
                else existing.password_hash  # type: ignore[union-attr]
            )
            at = _now()
            changed = existing is None or (
                existing.role != role or bool(password) or existing.disabled != disabled
            )
            row = UserRow(
                name=name,
                role=role,
                password_hash=hashed,
                disabled=disabled,
                # A changed user's sessions end (they would carry the old password or role),
                # and a new one accepts none from before it existed (a deleted namesake's).
                valid_after=time.time() if changed or existing is None else existing.valid_after,
                created_at=existing.created_at if existing is not None else at,
                updated_at=at,
            )
            await self.store.put_user(row)
            await self.refresh()
        log.info("access: user %s put by %s (role %s, disabled %s)", name, caller, role, disabled)
        return row

    async def user(self, name: str) -> UserRow:
        """One user; NOT_FOUND if none."""
        row = await self.store.user(name)
        if row is None:
            raise NotFoundError(f"no user {name!r}")
        return row

    async def delete_user(self, caller: Principal, name: str) -> None:
        """Delete a user; its sessions end with the next snapshot."""
        async with self._lock:
            if not await self.store.delete_user(name):
                raise NotFoundError(f"no user {name!r}")
            await self.refresh()
        log.info("access: user %s deleted by %s", name, caller)

    # -- roles -------------------------------------------------------------------------------

    async def put_role(self, caller: Principal, name: str, grants: Sequence[Grant]) -> None:
        """Create or replace a custom role."""
        if not ROLE_NAME_RE.fullmatch(name):
            raise InvalidArgumentError(
                "role.name", f"{name[:80]!r} must be lowercase letters, digits, '-' and '_'"
            )
        if name in BUILTIN_ROLES:
            raise InvalidArgumentError("role.name", f"{name!r} is a built-in role")
        if not grants:
            raise InvalidArgumentError("role.grants", "a role needs at least one grant")
        if len(grants) > MAX_GRANTS:
            raise InvalidArgumentError("role.grants", f"at most {MAX_GRANTS} grants")
        self.require_within(caller, grants, f"define role {name!r}")
        async with self._lock:
            await self.store.put_role(name, grants, _now())
            await self.refresh()
        log.info("access: role %s put by %s (%d grants)", name, caller, len(grants))

    async def delete_role(self, caller: Principal, name: str) -> None:
        """Delete a custom role no user or token holds."""
        if name in BUILTIN_ROLES:
            raise InvalidArgumentError("name", f"{name!r} is a built-in role")
        async with self._lock:
            holders = [f"user {u.name}" for u in await self.store.users() if u.role == name]
            holders += [f"token {t.name}" for t in await self.store.tokens() if t.role == name]
            if holders:
                raise FailedPreconditionError(
                    f"role {name!r} is held by {', '.join(holders[:5])}"
                    + (" and more" if len(holders) > 5 else "")
                )
            if not await self.store.delete_role(name):
                raise NotFoundError(f"no role {name!r}")
            await self.refresh()
        log.info("access: role %s deleted by %s", name, caller)

    # -- tokens ------------------------------------------------------------------------------

    async def create_token(
        self,
        caller: Principal,
        name: str,
        role: str,
        scope: Scope = ANYWHERE,
        ttl: float | None = None,
    ) -> tuple[TokenRow, str]:
        """A new API token: its row and the token itself (shown once)."""
        if not TOKEN_NAME_RE.fullmatch(name):
            raise InvalidArgumentError(
                "name", f"{name[:80]!r} must be 1-64 letters, digits, '_', '.' or '-'"
            )
        self.require_within(caller, self.role_grants(role), f"create a {role!r} token")
        if ttl is not None and ttl <= 0:
            raise InvalidArgumentError("ttl", "must be positive (leave it unset for no expiry)")
        limit = self.settings.max_token_ttl
        if limit is not None and (ttl is None or ttl > limit):
            raise InvalidArgumentError(
                "ttl", f"must be set and at most {limit:.0f}s (access.max_token_ttl)"
            )
        at = _now()
        token, jti = self.signer.issue("api", name, ttl=ttl)
        row = TokenRow(
            id=jti,
            name=name,
            role=role,
            scope=scope,
            created_at=at,
            expires_at=None if ttl is None else at + dt.timedelta(seconds=ttl),
            created_by=caller.key,
            fingerprint=hashlib.sha256(token.encode()).hexdigest(),
        )
        async with self._lock:
            await self.store.add_token(row)
            await self.refresh()
        log.info("access: token %s (%s, role %s) created by %s", jti, name, role, caller)
        return row, token

    async def tokens(self) -> list[TokenRow]:
        """Every live token (expired ones included until pruned from the table)."""
        return await self.store.tokens()

    async def revoke_token(self, caller: Principal, token_id: str) -> None:
        """Revoke a token: refused by every server from its next snapshot."""
        if not token_id:
            raise InvalidArgumentError("id", "is required")
        async with self._lock:
            if not await self.store.delete_token(token_id):
                raise NotFoundError(f"no token {token_id!r}")
            await self.refresh()
        log.info("access: token %s revoked by %s", token_id, caller)

    async def ensure_bootstrap_token(self, path: str | os.PathLike[str]) -> Path | None:
        """Write an admin token to ``path`` (mode 0600) unless it holds one that still works.

        A file whose token this deployment no longer accepts (a new store, a
        revoked token) is replaced. Returns the path when a token was written.
        """
        target = Path(path)
        try:
            current = (await asyncio.to_thread(target.read_text)).strip()
        except FileNotFoundError:
            current = ""
        if current:
            try:
                self.verifier.verify(current)
                return None
            except TokenError:
                log.info("access: %s holds a token no longer accepted; writing a new one", target)
        system = Principal(
            kind="development", name="bootstrap", role="admin", grants=(Grant("vigil.v1.*/*"),)
        )
        _, token = await self.create_token(system, BOOTSTRAP_TOKEN_NAME, "admin")
        await asyncio.to_thread(write_secret_file, target, token + "\n")
        log.info("access: wrote an admin token to %s", target)
        return target


def write_secret_file(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` readable by its owner only (atomically replaced)."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, target)


def _verify(stored: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def parse_grants(items: Sequence[tuple[str, str, str]], field: str = "role.grants") -> list[Grant]:
    """Grants from ``(permission, location, node)`` triples; errors name the grant."""
    grants = []
    for i, (permission, location, node) in enumerate(items):
        where = f"{field}[{i}]"
        try:
            check_pattern(permission, f"{where}.permission")
            grants.append(Grant(permission, Scope(location=location or None, node=node or None)))
        except DefinitionError as exc:
            raise InvalidArgumentError(
                exc.field if exc.field.startswith(where) else f"{where}.{exc.field}",
                str(exc).partition(": ")[2],
            ) from None
    return grants
