"""A grpc.aio server with what every Vigil server offers: reflection and health."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 << 20

Registration = tuple[Callable[[Any, grpc.aio.Server], None], Any, str]


class GrpcServer:
    """Owns one ``grpc.aio.Server``: register servicers, start, stop.

    Each registration is ``(add_XServicer_to_server, servicer, full_service_name)``;
    every service name is announced through reflection and reported SERVING by
    the standard health service once :meth:`start` returns.
    """

    def __init__(self, listen: str, registrations: Sequence[Registration]) -> None:
        self.listen = listen
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ]
        )
        self._health = health.aio.HealthServicer()
        self._names = [name for _, _, name in registrations]
        for add, servicer, _ in registrations:
            add(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [*self._names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        self.port = 0

    async def start(self) -> int:
        """Bind and serve; returns the bound port (useful with ``:0``)."""
        self.port = self._server.add_insecure_port(self.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.listen} (address in use?)")
        await self._server.start()
        for name in ["", *self._names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    @property
    def address(self) -> str:
        """``host:port`` as bound."""
        host = self.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float = 2.0) -> None:
        """Report NOT_SERVING, then stop, letting calls finish for ``grace`` seconds."""
        for name in ["", *self._names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.stop(grace)
