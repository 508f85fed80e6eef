"""Who may call what on Vigil's gRPC servers: one access table, one interceptor.

Every main port requires a client certificate from the deployment's CA (the
TLS handshake refuses anything else); this module decides what the proven
identity may do once connected:

=============================  =========================================
service                        allowed
=============================  =========================================
``vigil.v1.Poller``            role ``operator``
``vigil.v1.Inventory``         role ``operator``
``vigil.v1.Events``            role ``operator``
``vigil.v1.ResultSink``        role ``minion``
reflection                     any authenticated identity
``grpc.health.v1.Health``      anyone (also without a certificate, on the probe port)
=============================  =========================================

A service missing from the table is refused to everyone (fail closed). A call
without a certificate (the health-only probe port) gets UNAUTHENTICATED for
anything but health; a certificate on the deny list gets UNAUTHENTICATED
"certificate revoked"; a role not allowed gets PERMISSION_DENIED naming the
identity and what it may call.

Revocation: the deny list (``revoked.json``) is re-read at most every
:data:`REVOKED_REFRESH` seconds, and every :data:`REVOKED_REFRESH` seconds
the long-lived streams still open (``ResultSink/Connect``,
``Events/Subscribe``) are checked against it, so a stream of a certificate
revoked while connected is cut (UNAUTHENTICATED) within
:data:`REVOKED_CUT_WITHIN` seconds.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter

from services.core.pki import Identity, Role
from services.core.tls import peer_identity

log = logging.getLogger(__name__)

#: Anyone, even a client without a certificate (probes).
ANYONE: Final = "anyone"
#: Any identity proven by a certificate from the CA, whatever its role.
AUTHENTICATED: Final = "authenticated"

Allowed = frozenset[Role] | str

#: service → who may call it. A service not listed is refused to everyone.
ACCESS: dict[str, Allowed] = {
    "vigil.v1.Poller": frozenset({"operator"}),
    "vigil.v1.Inventory": frozenset({"operator"}),
    "vigil.v1.Events": frozenset({"operator"}),
    "vigil.v1.ResultSink": frozenset({"minion"}),
    reflection.SERVICE_NAME: AUTHENTICATED,
    "grpc.reflection.v1.ServerReflection": AUTHENTICATED,
    health.SERVICE_NAME: ANYONE,
}

#: The deny list is re-read at most this often (seconds), and open streams checked this often.
REVOKED_REFRESH = 2.0
#: A stream of a certificate revoked while connected is cut within this long (documented).
REVOKED_CUT_WITHIN = 5.0

REFUSED = Counter(
    "vigil_grpc_refused_total",
    "gRPC calls refused by the access checks, by reason",
    ["reason"],
)
for _reason in ("no_certificate", "revoked", "wrong_role", "unknown_service", "revoked_stream"):
    REFUSED.labels(_reason)


def allowed_services(role: Role) -> list[str]:
    """The services ``role`` may call (for the PERMISSION_DENIED message)."""
    return sorted(
        name
        for name, allowed in ACCESS.items()
        if allowed in (ANYONE, AUTHENTICATED)
        or (isinstance(allowed, frozenset) and role in allowed)
    )


def service_of(method: str) -> str:
    """``/vigil.v1.Poller/ListServices`` → ``vigil.v1.Poller``."""
    return method.lstrip("/").partition("/")[0]


class DenyList:
    """The serials no longer accepted, re-read from disk at most every ``refresh`` seconds."""

    def __init__(
        self, read: Callable[[], frozenset[int]], refresh: float = REVOKED_REFRESH
    ) -> None:
        self._read = read
        self._refresh = refresh
        self._serials: frozenset[int] = frozenset()
        self._at = float("-inf")

    def current(self, *, force: bool = False) -> frozenset[int]:
        """The deny list as of at most ``refresh`` seconds ago (now with ``force``)."""
        now = time.monotonic()
        if force or now - self._at >= self._refresh:
            # A few hundred bytes of JSON: cheap enough to read on the loop this rarely.
            self._serials = self._read()
            self._at = now
        return self._serials


@dataclass(eq=False)
class _OpenStream:
    identity: Identity
    serial: int
    task: asyncio.Task[Any]
    method: str
    revoked: bool = field(default=False)


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Enforces :data:`ACCESS` and the deny list on every call, with the call's own context.

    The check runs inside the method handler (where ``context.auth_context()``
    is the caller's), so the interceptor wraps each handler rather than
    deciding from the call details alone. Streams are registered while open
    so :meth:`watch` can cut those whose certificate gets revoked.
    """

    def __init__(self, revoked: Callable[[], frozenset[int]]) -> None:
        self.deny = DenyList(revoked)
        self._streams: set[_OpenStream] = set()
        self._identities: dict[bytes, tuple[Identity, int] | None] = {}

    # -- the check ---------------------------------------------------------------------------

    def _peer(self, context: Any) -> tuple[Identity, int] | None:
        pem = context.auth_context().get("x509_pem_cert")
        if not pem:
            return None
        key = pem[0]
        if key not in self._identities:
            if len(self._identities) >= 4096:  # bounded: certificates come and go
                self._identities.clear()
            self._identities[key] = peer_identity(context)
        return self._identities[key]

    async def check(self, method: str, context: Any) -> tuple[Identity, int] | None:
        """Abort the call unless its caller may call ``method``; returns the caller's identity."""
        service = service_of(method)
        allowed = ACCESS.get(service)
        if allowed == ANYONE:
            return None
        peer = self._peer(context)
        if peer is None:
            REFUSED.labels("no_certificate").inc()
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{service} needs a client certificate from the Vigil CA "
                "(this port answers health only, or the certificate names no Vigil identity)",
            )
        assert peer is not None
        identity, serial = peer
        if serial in self.deny.current():
            REFUSED.labels("revoked").inc()
            log.warning("refused %s: certificate %x of %s is revoked", method, serial, identity)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "certificate revoked")
        if allowed is None:
            REFUSED.labels("unknown_service").inc()
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{service} is not open to any identity"
            )
        if isinstance(allowed, frozenset) and identity.role not in allowed:
            REFUSED.labels("wrong_role").inc()
            may = ", ".join(allowed_services(identity.role))
            log.info("refused %s to %s (role %s)", method, identity, identity.role)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{identity} (role {identity.role}) may not call {service}; it may call: {may}",
            )
        return peer

    # -- wrapping handlers -------------------------------------------------------------------

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The method's handler, wrapped so that :meth:`check` runs first."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(method, handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _unary(self, method: str, behavior: Any) -> Any:
        async def checked(request: Any, context: Any) -> Any:
            await self.check(method, context)
            return await behavior(request, context)

        return checked

    def _streaming(self, method: str, behavior: Any) -> Any:
        # A streaming handler is either an async generator (yields responses) or a
        # coroutine that writes them with context.write(): wrap each as what it is.
        if inspect.isasyncgenfunction(behavior):

            async def checked_gen(request: Any, context: Any) -> AsyncIterator[Any]:
                peer = await self.check(method, context)
                with self._open(method, peer) as stream:
                    try:
                        async for response in behavior(request, context):
                            yield response
                    except asyncio.CancelledError:
                        await self._cut(stream, context)
                        raise

            return checked_gen

        async def checked_coro(request: Any, context: Any) -> Any:
            peer = await self.check(method, context)
            with self._open(method, peer) as stream:
                try:
                    return await behavior(request, context)
                except asyncio.CancelledError:
                    await self._cut(stream, context)
                    raise

        return checked_coro

    def _open(self, method: str, peer: tuple[Identity, int] | None) -> _Registered:
        if peer is None:
            return _Registered(self._streams, None)
        task = asyncio.current_task()
        assert task is not None
        return _Registered(self._streams, _OpenStream(peer[0], peer[1], task, method))

    async def _cut(self, stream: _OpenStream | None, context: Any) -> None:
        """End a stream cancelled by :meth:`watch` with UNAUTHENTICATED (other cancels pass)."""
        if stream is not None and stream.revoked:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "certificate revoked")

    # -- revocation while connected ----------------------------------------------------------

    def sweep(self) -> int:
        """Cut every open stream whose certificate is on the deny list now; returns how many."""
        if not self._streams:
            return 0
        denied = self.deny.current(force=True)
        cut = 0
        for stream in list(self._streams):
            if stream.serial in denied and not stream.revoked:
                stream.revoked = True
                REFUSED.labels("revoked_stream").inc()
                log.warning(
                    "cutting %s of %s: certificate %x revoked",
                    stream.method,
                    stream.identity,
                    stream.serial,
                )
                stream.task.cancel()
                cut += 1
        return cut

    async def watch(self, interval: float = REVOKED_REFRESH) -> None:
        """For ever: every ``interval`` seconds, cut the streams of revoked certificates."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.sweep()
            except Exception:  # a bad deny list is logged by its reader; keep watching
                log.exception("revocation sweep failed")

    @property
    def open_streams(self) -> int:
        """Streams of authenticated callers open now."""
        return len(self._streams)


class _Registered:
    """Context manager: a stream is in ``streams`` while its handler runs."""

    def __init__(self, streams: set[_OpenStream], stream: _OpenStream | None) -> None:
        self._streams = streams
        self.stream = stream

    def __enter__(self) -> _OpenStream | None:
        if self.stream is not None:
            self._streams.add(self.stream)
        return self.stream

    def __exit__(self, *exc: object) -> None:
        if self.stream is not None:
            self._streams.discard(self.stream)
