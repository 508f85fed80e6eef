"""Who may call what on Vigil's gRPC servers: one interceptor, one permission table.

Every call is proven one of two ways, then checked against
:data:`services.core.access.permissions.METHODS`:

- an ``authorization: Bearer <token>`` header: a session (``vigil login``) or
  an API token, checked locally against the access snapshot (the token's
  principal wins over any certificate the connection also shows);
- else the client certificate of the connection: an operator certificate is
  mapped to a role (``access.certificate_role``, default ``admin``, or per
  name in ``access.certificates``), a minion's to the role ``minion``
  (ResultSink only). The services' own certificates grant nothing here.

A missing or bad proof is UNAUTHENTICATED (with the reason); a proven caller
without a matching grant is PERMISSION_DENIED naming the permission it lacks.
Health is open; reflection and WhoAmI need any proof; a method not in the
table is refused to everyone (fail closed). The principal is set in
:data:`services.core.access.principal.CURRENT` for the servicer.

Every call in :data:`~services.core.access.permissions.WRITES` is audited
(who, what, outcome, the request with secrets redacted) through the server's
audit sink, refused ones included.

Revocation: the certificate deny list (``revoked.json``) is re-read at most
every :data:`REVOKED_REFRESH` seconds, and every :data:`REVOKED_REFRESH`
seconds the long-lived streams still open (``ResultSink/Connect``,
``Events/Subscribe``) are checked again, certificate and token, so a stream
whose certificate or token is revoked while connected is cut
(UNAUTHENTICATED) within :data:`REVOKED_CUT_WITHIN` seconds.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from prometheus_client import Counter

from services.core.access.permissions import METHODS, WRITES, Grant, builtin_grants
from services.core.access.principal import CURRENT, Principal
from services.core.access.tokens import TokenError, TokenVerifier
from services.core.limits import RateLimit
from services.core.pki import Identity
from services.core.tls import peer_identity

log = logging.getLogger(__name__)

#: The deny list is re-read at most this often (seconds), and open streams checked this often.
REVOKED_REFRESH = 2.0
#: A stream of a certificate or token revoked while connected is cut within this long.
REVOKED_CUT_WITHIN = 5.0
#: Request fields never shown in audit records.
SECRET_FIELDS: Final = frozenset({"password", "secret", "token", "authorization"})
#: The longest audited request document (JSON characters); longer ones are cut.
AUDIT_REQUEST_CHARS: Final = 4000
#: Refused or failed writes are audited up to this rate per caller (burst, then per second);
#: beyond it they are only counted (``vigil_audit_suppressed_total``).
REFUSED_AUDIT_BURST: Final = 30
REFUSED_AUDIT_RATE: Final = 1.0

AUDIT_SUPPRESSED = Counter(
    "vigil_audit_suppressed_total",
    "Audit events of refused or failed writes not recorded (a caller over its audit rate)",
)

REFUSED = Counter(
    "vigil_grpc_refused_total",
    "gRPC calls refused by the access checks, by reason",
    ["reason"],
)
for _reason in (
    "no_credentials",
    "bad_token",
    "revoked",
    "permission_denied",
    "unknown_method",
    "revoked_stream",
):
    REFUSED.labels(_reason)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited call: who did what, and how it ended."""

    principal: str
    method: str
    outcome: str  # "OK" or a gRPC status code name
    message: str
    request: dict[str, Any]
    peer: str
    node_id: str | None = None
    location: str | None = None


AuditSink = Callable[[AuditRecord], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CertificateRoles:
    """Which role an operator certificate stands for (``access.certificate_role`` and
    ``access.certificates``)."""

    default: str | None = "admin"
    by_name: Mapping[str, str] = field(default_factory=dict)

    def role_of(self, identity: Identity) -> str | None:
        """The role ``identity``'s certificate is mapped to, ``None`` for none."""
        if identity.role == "minion":
            return "minion"
        if identity.role != "operator":
            return None
        return self.by_name.get(identity.name, self.default)


def service_of(method: str) -> str:
    """``/vigil.v1.Poller/ListServices`` → ``vigil.v1.Poller``."""
    return method.lstrip("/").partition("/")[0]


def bearer(context: Any) -> str | None:
    """The bearer token of the call's ``authorization`` metadata, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return ""  # present but not a bearer token: refused, not ignored
            return token.strip()
    return None


def redact(doc: Any) -> Any:
    """``doc`` with every secret-bearing field shown as ``***``."""
    if isinstance(doc, dict):
        return {k: "***" if k.lower() in SECRET_FIELDS and v else redact(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [redact(v) for v in doc]
    return doc


def _audited_request(request: Any) -> dict[str, Any]:
    if not isinstance(request, Message):
        return {}
    doc = redact(MessageToDict(request, preserving_proto_field_name=True))
    text = repr(doc)
    if len(text) > AUDIT_REQUEST_CHARS:
        return {"truncated": text[:AUDIT_REQUEST_CHARS]}
    return doc if isinstance(doc, dict) else {}


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
    principal: Principal
    serial: int | None
    token: str | None
    task: asyncio.Task[Any]
    method: str
    revoked: bool = field(default=False)
    why: str = "credentials revoked"


class _Refused(Exception):
    """Raised inside :meth:`AccessInterceptor.check` to end the call with ``code``."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Proves the caller, checks its permission, sets its principal, audits writes.

    The check runs inside the method handler (where ``context.auth_context()``
    is the caller's), so the interceptor wraps each handler rather than
    deciding from the call details alone. Streams are registered while open
    so :meth:`watch` can cut those whose certificate or token gets revoked.
    """

    def __init__(
        self,
        revoked: Callable[[], frozenset[int]],
        *,
        verifier: TokenVerifier | None = None,
        certificates: CertificateRoles | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        self.deny = DenyList(revoked)
        self.verifier = verifier
        self.certificates = certificates or CertificateRoles()
        self.audit = audit
        self._streams: set[_OpenStream] = set()
        self._identities: dict[bytes, tuple[Identity, int] | None] = {}
        #: A flood of refused writes must not become a flood of audit events.
        self._refusals = RateLimit(
            "audit_refused",
            "audit of refused calls",
            REFUSED_AUDIT_RATE,
            REFUSED_AUDIT_BURST,
        )

    # -- proving the caller ------------------------------------------------------------------

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

    def _certificate_principal(self, identity: Identity) -> Principal:
        role = self.certificates.role_of(identity)
        where = f"{identity.location}/" if identity.location else ""
        grants = () if role is None else self.grants_of(role)
        return Principal(
            kind="certificate",
            name=f"{identity.role}/{where}{identity.name}",
            role=role or "none",
            grants=grants,
        )

    def grants_of(self, role: str) -> tuple[Grant, ...]:
        """The grants of ``role``: built in, or custom from the access snapshot."""
        if self.verifier is not None:
            return self.verifier.snapshot.grants(role)
        return builtin_grants(role) or ()

    def prove(self, context: Any) -> tuple[Principal | None, int | None, str | None]:
        """The caller's principal, its certificate serial and its token (each may be absent).

        Raises :class:`_Refused` for a token that is present but not accepted, or
        a revoked certificate.
        """
        peer = self._peer(context)
        serial = None if peer is None else peer[1]
        if serial is not None and serial in self.deny.current():
            assert peer is not None
            log.warning("refused: certificate %x of %s is revoked", serial, peer[0])
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "certificate revoked", "revoked")
        token = bearer(context)
        if token is not None:
            if not token:
                raise _Refused(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "the authorization header must be 'Bearer <token>'",
                    "bad_token",
                )
            if self.verifier is None:
                raise _Refused(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this server does not accept bearer tokens",
                    "bad_token",
                )
            try:
                return self.verifier.verify(token), serial, token
            except TokenError as exc:
                raise _Refused(
                    grpc.StatusCode.UNAUTHENTICATED, f"bearer token refused: {exc}", "bad_token"
                ) from None
        if peer is None:
            return None, None, None
        return self._certificate_principal(peer[0]), serial, None

    async def check(
        self, method: str, context: Any
    ) -> tuple[Principal | None, int | None, str | None]:
        """Abort the call unless its caller may call ``method``; returns its proof."""
        full = method.lstrip("/")
        need = METHODS.get(full)
        if need == "open":
            try:
                return self.prove(context)
            except _Refused:
                return None, None, None  # a bad token does not close health or login
        if need is None:
            REFUSED.labels("unknown_method").inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{full} is not open to anyone")
        try:
            principal, serial, token = self.prove(context)
        except _Refused as refused:
            REFUSED.labels(refused.reason).inc()
            await context.abort(refused.code, refused.message)
            raise  # not reached: abort raises
        if principal is None:
            REFUSED.labels("no_credentials").inc()
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{service_of(method)} needs a bearer token ('authorization: Bearer <token>') "
                "or a client certificate from the Vigil CA",
            )
        assert principal is not None
        CURRENT.set(principal)  # also for the audit record of a refused call
        if need == "permission" and not principal.may(full):
            REFUSED.labels("permission_denied").inc()
            log.info("refused %s to %s (role %s)", full, principal, principal.role)
            perms = sorted({g.permission for g in principal.grants})
            shown = ", ".join(perms[:8]) + (", ..." if len(perms) > 8 else "")
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{principal} (role {principal.role}) lacks the permission {full}"
                f" (it holds: {shown or 'none'})",
            )
        return principal, serial, token

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
        audited = method.lstrip("/") in WRITES and self.audit is not None

        async def checked(request: Any, context: Any) -> Any:
            if not audited:
                principal, _, _ = await self.check(method, context)
                CURRENT.set(principal)
                return await behavior(request, context)
            outcome, message = "OK", ""
            CURRENT.set(None)
            try:
                principal, _, _ = await self.check(method, context)
                CURRENT.set(principal)
                return await behavior(request, context)
            except BaseException as exc:
                code = context.code()
                outcome = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                if outcome == "OK":
                    outcome = "CANCELLED" if isinstance(exc, asyncio.CancelledError) else "UNKNOWN"
                details = context.details()
                message = details.decode() if isinstance(details, bytes) else str(details or "")
                raise
            finally:
                await self._audit(method, request, context, CURRENT.get(), outcome, message)

        return checked

    async def _audit(
        self,
        method: str,
        request: Any,
        context: Any,
        principal: Principal | None,
        outcome: str,
        message: str,
    ) -> None:
        assert self.audit is not None
        if principal is None and method.endswith("/Login") and isinstance(request, Message):
            who = f"user:{getattr(request, 'user', '')[:128]} (not logged in)"
        else:
            who = str(principal) if principal is not None else "anonymous"
        if outcome == "RESOURCE_EXHAUSTED":
            return  # refused by a limit: counted there (vigil_limit_refused_total), not audited
        if outcome != "OK" and self._refusals.wait(who) > 0:
            AUDIT_SUPPRESSED.inc()
            return
        node_id = getattr(request, "node_id", None) or None
        if node_id is None and hasattr(request, "service"):
            node_id = getattr(request.service, "node_id", None) or None
        record = AuditRecord(
            principal=who,
            method=method.lstrip("/"),
            outcome=outcome,
            message=message[:500],
            request=_audited_request(request),
            peer=str(context.peer() or ""),
            node_id=node_id if isinstance(node_id, str) else None,
        )
        try:
            async with asyncio.timeout(10.0):
                await self.audit(record)
        except Exception:
            log.exception("could not record the audit event of %s by %s", record.method, who)

    def _streaming(self, method: str, behavior: Any) -> Any:
        # A streaming handler is either an async generator (yields responses) or a
        # coroutine that writes them with context.write(): wrap each as what it is.
        if inspect.isasyncgenfunction(behavior):

            async def checked_gen(request: Any, context: Any) -> AsyncIterator[Any]:
                proof = await self.check(method, context)
                CURRENT.set(proof[0])
                with self._open(method, proof) as stream:
                    try:
                        async for response in behavior(request, context):
                            yield response
                    except asyncio.CancelledError:
                        await self._cut(stream, context)
                        raise

            return checked_gen

        async def checked_coro(request: Any, context: Any) -> Any:
            proof = await self.check(method, context)
            CURRENT.set(proof[0])
            with self._open(method, proof) as stream:
                try:
                    return await behavior(request, context)
                except asyncio.CancelledError:
                    await self._cut(stream, context)
                    raise

        return checked_coro

    def _open(
        self, method: str, proof: tuple[Principal | None, int | None, str | None]
    ) -> _Registered:
        principal, serial, token = proof
        if principal is None:
            return _Registered(self._streams, None)
        task = asyncio.current_task()
        assert task is not None
        return _Registered(self._streams, _OpenStream(principal, serial, token, task, method))

    async def _cut(self, stream: _OpenStream | None, context: Any) -> None:
        """End a stream cancelled by :meth:`watch` with UNAUTHENTICATED (other cancels pass)."""
        if stream is not None and stream.revoked:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, stream.why)

    # -- revocation while connected ----------------------------------------------------------

    def _invalid(self, stream: _OpenStream, denied: frozenset[int]) -> str | None:
        """Why ``stream``'s credentials no longer hold, ``None`` while they do."""
        if stream.serial is not None and stream.serial in denied:
            return "certificate revoked"
        if stream.token is not None and self.verifier is not None:
            try:
                self.verifier.verify(stream.token)
            except TokenError as exc:
                return f"bearer token refused: {exc}"
        return None

    def sweep(self) -> int:
        """Cut every open stream whose certificate or token is no longer valid; how many."""
        if not self._streams:
            return 0
        denied = self.deny.current(force=True)
        cut = 0
        for stream in list(self._streams):
            why = None if stream.revoked else self._invalid(stream, denied)
            if why is not None:
                stream.revoked = True
                stream.why = why
                REFUSED.labels("revoked_stream").inc()
                log.warning("cutting %s of %s: %s", stream.method, stream.principal, why)
                stream.task.cancel()
                cut += 1
        return cut

    async def watch(self, interval: float = REVOKED_REFRESH) -> None:
        """For ever: every ``interval`` seconds, cut the streams of revoked credentials."""
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
