"""Bearer tokens: signed by the scheduler, checked locally by every server.

A token is a JWT signed with the scheduler's Ed25519 key (``EdDSA``), with the
claims ``sub`` (the user, or the API token's name), ``knd`` (``session`` from
a login, ``api`` for automation), ``jti`` (its id), ``iat`` and, for sessions
and API tokens created with a lifetime, ``exp``.

A signature alone is not enough: every check also consults the
:class:`AccessSnapshot`, the published view of who may still use what.

- a **session** is valid while its user exists, is not disabled and was not
  changed after the session was issued; its role is the user's role *now*;
- an **API token** is valid while its id is in the snapshot (revoking removes
  it); its role and scope are the ones it was created with.

The scheduler keeps the snapshot and publishes it (NATS KV); the event service
mirrors it. Neither asks the other anything while serving a call.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.core.access.permissions import ANYWHERE, Grant, Scope, builtin_grants
from services.core.access.principal import Principal

ISSUER: Final = "vigil"
ALGORITHM: Final = "EdDSA"
TokenKind = Literal["session", "api"]
#: A decoded token is remembered (signature checked once) for this many tokens.
_VERIFIED_CACHE = 4096
#: Clock skew tolerated between the issuing scheduler and a checking server (seconds).
LEEWAY = 30.0


class TokenError(Exception):
    """The token is not accepted; the message says why (never echoes the token)."""


@dataclass(frozen=True, slots=True)
class UserEntry:
    """A user as the verifiers see it (no password hash ever leaves the scheduler)."""

    role: str
    #: Sessions issued before this (epoch seconds) are no longer valid.
    valid_after: float = 0.0


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """A live API token as the verifiers see it."""

    name: str
    role: str
    scope: Scope = ANYWHERE
    expires_at: float | None = None


@dataclass(frozen=True)
class AccessSnapshot:
    """Everything a server needs to check a bearer token, and nothing secret."""

    revision: int = 0
    keys: dict[str, str] = field(default_factory=dict)  # key id → public key PEM
    roles: dict[str, tuple[Grant, ...]] = field(default_factory=dict)  # custom roles
    users: dict[str, UserEntry] = field(default_factory=dict)
    tokens: dict[str, TokenEntry] = field(default_factory=dict)

    def grants(self, role: str) -> tuple[Grant, ...]:
        """The grants of ``role`` (built-in or custom); none for an unknown role."""
        builtin = builtin_grants(role)
        if builtin is not None:
            return builtin
        return self.roles.get(role, ())

    def to_json(self) -> dict[str, Any]:
        """The published form (see :meth:`from_json`)."""
        return {
            "v": 1,
            "revision": self.revision,
            "keys": self.keys,
            "roles": {
                name: [_grant_json(g) for g in grants] for name, grants in self.roles.items()
            },
            "users": {
                name: {"role": u.role, "validAfter": u.valid_after}
                for name, u in self.users.items()
            },
            "tokens": {
                jti: {
                    "name": t.name,
                    "role": t.role,
                    "scope": t.scope.to_doc(),
                    "expiresAt": t.expires_at,
                }
                for jti, t in self.tokens.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AccessSnapshot:
        """Parse a published snapshot; raises ``ValueError`` naming what is malformed."""
        try:
            if data.get("v") != 1:
                raise ValueError(f"unknown snapshot version {data.get('v')!r}")
            return cls(
                revision=int(data["revision"]),
                keys={str(k): str(v) for k, v in data["keys"].items()},
                roles={
                    str(name): tuple(_grant_of(g) for g in grants)
                    for name, grants in data["roles"].items()
                },
                users={
                    str(name): UserEntry(str(u["role"]), float(u["validAfter"]))
                    for name, u in data["users"].items()
                },
                tokens={
                    str(jti): TokenEntry(
                        name=str(t["name"]),
                        role=str(t["role"]),
                        scope=Scope.from_doc(t.get("scope") or {}),
                        expires_at=None if t.get("expiresAt") is None else float(t["expiresAt"]),
                    )
                    for jti, t in data["tokens"].items()
                },
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed access snapshot ({type(exc).__name__}: {exc})") from None


def _grant_json(grant: Grant) -> dict[str, Any]:
    return {"permission": grant.permission, "scope": grant.scope.to_doc()}


def _grant_of(data: dict[str, Any]) -> Grant:
    return Grant(str(data["permission"]), Scope.from_doc(data.get("scope") or {}))


class TokenSigner:
    """Issues tokens with one Ed25519 key (the scheduler's)."""

    def __init__(self, key: Ed25519PrivateKey, key_id: str) -> None:
        self._key = key
        self.key_id = key_id

    @classmethod
    def generate(cls) -> TokenSigner:
        """A signer with a fresh key (its id is random)."""
        return cls(Ed25519PrivateKey.generate(), uuid.uuid4().hex[:16])

    @classmethod
    def from_pem(cls, pem: str, key_id: str) -> TokenSigner:
        """A signer from a stored PKCS#8 PEM private key."""
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the token-signing key is not an Ed25519 key")
        return cls(key, key_id)

    def private_pem(self) -> str:
        """The private key as PKCS#8 PEM (for the scheduler's store)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def public_pem(self) -> str:
        """The public key as PEM (published in the snapshot)."""
        return (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def issue(
        self,
        kind: TokenKind,
        subject: str,
        *,
        token_id: str | None = None,
        ttl: float | None = None,
        now: float | None = None,
    ) -> tuple[str, str]:
        """A signed token and its id."""
        issued = time.time() if now is None else now
        jti = token_id or uuid.uuid4().hex
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": subject,
            "knd": kind,
            "jti": jti,
            "iat": int(issued),
        }
        if ttl is not None:
            claims["exp"] = int(issued + ttl)
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.key_id})
        return token, jti


class TokenVerifier:
    """Checks bearer tokens against the current :class:`AccessSnapshot`."""

    def __init__(self, snapshot: AccessSnapshot | None = None) -> None:
        self.snapshot = snapshot or AccessSnapshot()
        self._public: dict[str, Ed25519PublicKey] = {}
        self._verified: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.load(self.snapshot)

    def load(self, snapshot: AccessSnapshot) -> None:
        """Switch to ``snapshot`` (revocations and role changes apply from the next call)."""
        public: dict[str, Ed25519PublicKey] = {}
        for kid, pem in snapshot.keys.items():
            key = serialization.load_pem_public_key(pem.encode())
            if isinstance(key, Ed25519PublicKey):
                public[kid] = key
        if set(public) != set(self._public):
            self._verified.clear()
        self._public = public
        self.snapshot = snapshot

    def _claims(self, token: str) -> dict[str, Any]:
        cached = self._verified.get(token)
        if cached is not None:
            self._verified.move_to_end(token)
            return cached
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("not a Vigil token") from None
        key = self._public.get(str(header.get("kid", "")))
        if key is None:
            if not self._public:
                raise TokenError("tokens cannot be checked yet (no access snapshot received)")
            raise TokenError("not signed by this deployment")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["sub", "jti", "iat", "knd"], "verify_exp": False},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token ({exc})") from None
        self._verified[token] = claims
        if len(self._verified) > _VERIFIED_CACHE:
            self._verified.popitem(last=False)
        return claims

    def verify(self, token: str, *, now: float | None = None) -> Principal:
        """The principal ``token`` proves; raises :class:`TokenError` saying why not."""
        claims = self._claims(token)
        at = time.time() if now is None else now
        exp = claims.get("exp")
        if exp is not None and at > float(exp) + LEEWAY:
            raise TokenError("token expired")
        snapshot = self.snapshot
        subject, jti = str(claims["sub"]), str(claims["jti"])
        if claims["knd"] == "session":
            user = snapshot.users.get(subject)
            if user is None:
                raise TokenError(f"user {subject!r} no longer exists or is disabled")
            if float(claims["iat"]) + 1 < user.valid_after:
                raise TokenError("session ended (the user was changed or disabled); log in again")
            return Principal(
                kind="user",
                name=subject,
                role=user.role,
                grants=snapshot.grants(user.role),
                token_id=jti,
            )
        if claims["knd"] == "api":
            entry = snapshot.tokens.get(jti)
            if entry is None:
                raise TokenError("token revoked")
            if entry.expires_at is not None and at > entry.expires_at + LEEWAY:
                raise TokenError("token expired")
            return Principal(
                kind="token",
                name=entry.name,
                role=entry.role,
                grants=snapshot.grants(entry.role),
                restriction=entry.scope,
                token_id=jti,
            )
        raise TokenError("not a Vigil token")
