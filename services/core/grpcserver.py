"""A grpc.aio server with what every Vigil server offers: mutual TLS, access checks,
reflection and health.

With TLS material (the normal case) the main port ``listen`` requires a client
certificate from the CA, and :class:`~services.core.grpcauth.AccessInterceptor`
decides what each identity may call. ``probe_listen`` (optional) is a second,
health-only TLS port on the same server that asks for no client certificate,
so probes (``grpc_health_probe -tls``, a load balancer) keep working: grpcio
cannot request-but-not-require a client certificate on one port. Every
method but health answers UNAUTHENTICATED there.

With :data:`~services.core.tls.PLAINTEXT` (the loopback-only development mode)
both ports are insecure and nothing is checked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.core.access.tokens import TokenVerifier
from services.core.grpcauth import AccessInterceptor, AuditSink, CertificateRoles
from services.core.tls import PLAINTEXT_WARNING, TlsMaterial, Transport

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 << 20

Registration = tuple[Callable[[Any, grpc.aio.Server], None], Any, str]


class GrpcServer:
    """Owns one ``grpc.aio.Server``: register servicers, start, stop.

    Each registration is ``(add_XServicer_to_server, servicer, full_service_name)``;
    every service name is announced through reflection and reported SERVING by
    the standard health service once :meth:`start` returns. ``transport`` is the
    process's TLS material (or the plaintext development mode).
    """

    def __init__(
        self,
        listen: str,
        registrations: Sequence[Registration],
        *,
        transport: Transport,
        probe_listen: str | None = None,
        verifier: TokenVerifier | None = None,
        certificates: CertificateRoles | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        self.listen = listen
        self.probe_listen = probe_listen
        self.transport = transport
        #: The access checks (``None`` in the plaintext mode: there are no identities).
        self.access: AccessInterceptor | None = (
            AccessInterceptor(
                transport.revoked, verifier=verifier, certificates=certificates, audit=audit
            )
            if isinstance(transport, TlsMaterial)
            else None
        )
        self._server = grpc.aio.server(
            interceptors=[self.access] if self.access is not None else None,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        self._health = health.aio.HealthServicer()
        self._names = [name for _, _, name in registrations]
        for add, servicer, _ in registrations:
            add(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [*self._names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        self._watcher: asyncio.Task[None] | None = None
        self._started = False
        self.port = 0
        self.probe_port = 0

    def _bind(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        if credentials is None:
            port = self._server.add_insecure_port(address)
        else:
            port = self._server.add_secure_port(address, credentials)
        if port == 0:
            raise OSError(f"cannot listen on {address} (address in use?)")
        return port

    async def start(self) -> int:
        """Bind and serve; returns the bound port (useful with ``:0``)."""
        material = self.transport if isinstance(self.transport, TlsMaterial) else None
        if material is None:
            log.warning("gRPC on %s: %s", self.listen, PLAINTEXT_WARNING)
        self.port = self._bind(self.listen, material.server_credentials() if material else None)
        if self.probe_listen:
            self.probe_port = self._bind(
                self.probe_listen, material.probe_credentials() if material else None
            )
        await self._server.start()
        for name in ["", *self._names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._started = True
        if self.access is not None:
            self._watcher = asyncio.create_task(self.access.watch(), name="grpc-revocation-watch")
        return self.port

    async def set_serving(self, serving: bool) -> None:
        """Report every service SERVING or NOT_SERVING (e.g. while a store or stream is down).

        Before :meth:`start` and after :meth:`stop` this does nothing: those set
        the status themselves.
        """
        if not self._started:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._names]:
            await self._health.set(name, status)

    @property
    def address(self) -> str:
        """``host:port`` as bound."""
        host = self.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    @property
    def probe_address(self) -> str | None:
        """The health-only port's ``host:port`` as bound (``None`` without one)."""
        if not self.probe_listen:
            return None
        return f"{self.probe_listen.rpartition(':')[0]}:{self.probe_port}"

    async def stop(self, grace: float = 2.0) -> None:
        """Report NOT_SERVING, then stop, letting calls finish for ``grace`` seconds."""
        self._started = False
        for name in ["", *self._names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        await self._server.stop(grace)
