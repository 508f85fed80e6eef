"""Bearer tokens for tests: a real token, checked by the real servers' interceptors.

``create_token`` is the one way tests get a token with a role and a scope.
"""

from __future__ import annotations

import grpc

from services.core.access.permissions import Scope
from services.core.access.tokens import AccessSnapshot, TokenEntry, TokenSigner, TokenVerifier
from tests.helpers import Stack

_SIGNER = TokenSigner.generate()
_TOKENS: dict[str, TokenEntry] = {}


async def create_token(
    stack: Stack,
    role: str,
    *,
    name: str = "test-token",
    location: str | None = None,
    node: str | None = None,
) -> str:
    """An API token with ``role``, optionally limited to a location / node glob."""
    token, jti = _SIGNER.issue("api", name)
    _TOKENS[jti] = TokenEntry(name=name, role=role, scope=Scope(location=location, node=node))
    snapshot = AccessSnapshot(
        revision=len(_TOKENS),
        keys={_SIGNER.key_id: _SIGNER.public_pem()},
        tokens=dict(_TOKENS),
    )
    for app in (stack.scheduler, stack.events):
        if app is None or app.grpc is None or app.grpc.access is None:
            continue
        access = app.grpc.access
        if access.verifier is None:
            access.verifier = TokenVerifier()
        access.verifier.load(snapshot)
    return token


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),)


def token_channel_credentials() -> grpc.ChannelCredentials:
    """TLS that trusts the test CA and shows no client certificate (for the probe/token port)."""
    from tests import pki

    return grpc.ssl_channel_credentials(root_certificates=pki.current().ca_cert_path.read_bytes())
