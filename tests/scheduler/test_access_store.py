"""The access tables on SQLite and PostgreSQL: users, roles, tokens, the signing key, restarts."""

from __future__ import annotations

import pytest

from services.core.access.permissions import Grant, Scope
from services.core.access.principal import DEVELOPMENT
from services.core.config.access import AccessSettings
from services.core.errors import UnauthenticatedError
from services.scheduler.access.authority import AccessAuthority
from services.scheduler.access.store import AccessStore
from services.scheduler.store import SchedulerStore


async def _authority(url: str) -> tuple[SchedulerStore, AccessAuthority]:
    store = SchedulerStore(url)
    await store.open()
    authority = AccessAuthority(AccessStore(store.engine), AccessSettings())
    await authority.start()
    return store, authority


async def test_access_survives_a_restart_on_both_stores(db_url: str) -> None:
    store, authority = await _authority(db_url)
    try:
        await authority.put_user(DEVELOPMENT, "alice", "operator", "alice-password", False)
        await authority.put_role(
            DEVELOPMENT, "paris-view", [Grant("vigil.v1.Poller/*", Scope(location="paris"))]
        )
        row, token = await authority.create_token(
            DEVELOPMENT, "grafana", "paris-view", Scope(node="web-*"), ttl=3600
        )
        session, _, role = await authority.login("alice", "alice-password")
        assert role == "operator"
        stored = await authority.store.user("alice")
        assert stored is not None and "alice-password" not in stored.password_hash
        assert stored.password_hash.startswith("$argon2id$")
    finally:
        await store.close()

    # A restarted scheduler (same store): same key, same users, same tokens.
    store, again = await _authority(db_url)
    try:
        assert again.signer.key_id == authority.signer.key_id
        principal = again.verifier.verify(token)
        assert (principal.key, principal.role) == ("token:grafana", "paris-view")
        assert principal.restriction == Scope(node="web-*")
        assert principal.grants == (Grant("vigil.v1.Poller/*", Scope(location="paris")),)
        assert again.verifier.verify(session).key == "user:alice"
        (listed,) = await again.tokens()
        assert listed.id == row.id and listed.expires_at is not None
        await again.revoke_token(DEVELOPMENT, row.id)
        assert row.id not in again.snapshot.tokens
        await again.put_user(DEVELOPMENT, "alice", "operator", "", True)  # disabled
        assert "alice" not in again.snapshot.users
        with pytest.raises(UnauthenticatedError, match="user disabled"):
            await again.login("alice", "alice-password")
    finally:
        await store.close()
