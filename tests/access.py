"""Bearer tokens for tests: created through the real ``vigil.v1.Access`` API.

``create_token`` is the one way tests get a token with a role and a scope; it
returns once both servers accept it (the event service learns of it through
the snapshot in NATS KV).
"""

from __future__ import annotations

import grpc
from google.protobuf.duration_pb2 import Duration
from vigil.v1 import access_pb2, access_pb2_grpc

from tests import pki
from tests.helpers import Stack, wait_for


async def synced(stack: Stack) -> None:
    """Wait until the event service checks tokens against the scheduler's latest snapshot."""
    if stack.scheduler is None or stack.events is None:
        return
    want = stack.scheduler.access.snapshot.revision
    events = stack.events
    await wait_for(
        lambda: events.verifier.snapshot.revision >= want,
        timeout=15,
        what="the event service's access snapshot",
    )


async def create_token(
    stack: Stack,
    role: str,
    *,
    name: str = "test-token",
    location: str | None = None,
    node: str | None = None,
    ttl: float | None = None,
) -> str:
    """An API token with ``role``, optionally limited to a location / node glob."""
    assert stack.scheduler is not None
    request = access_pb2.CreateTokenRequest(
        name=name,
        role=role,
        scope=access_pb2.Scope(location=location or "", node=node or ""),
    )
    if ttl is not None:
        request.ttl.CopyFrom(Duration(seconds=int(ttl), nanos=int((ttl % 1) * 1e9)))
    async with pki.operator_channel(stack.scheduler.grpc_address) as ch:
        resp = await access_pb2_grpc.AccessStub(ch).CreateToken(request, timeout=10)
    await synced(stack)
    return resp.secret


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),)


def token_channel_credentials() -> grpc.ChannelCredentials:
    """TLS that trusts the test CA and shows no client certificate (for the token/probe port)."""
    return grpc.ssl_channel_credentials(root_certificates=pki.current().ca_cert_path.read_bytes())
