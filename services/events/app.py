"""The event service process: wire up, serve, shut down.

    vigil.ingest.>  (JetStream VIGIL_INGEST, durable consumer)
        │  normalize → store (history) → publish
        ▼
    vigil.events.<type>.<action>.<severity>.<node>  (JetStream VIGIL_EVENTS)
    gRPC vigil.v1.Events (history)
"""

from __future__ import annotations

import asyncio
import logging

from vigil.v1 import events_pb2_grpc

from services.common import natsconn
from services.common.config import VigilConfig
from services.common.grpcserver import GrpcServer
from services.common.httpstatus import StatusServer
from services.common.streams import ensure_stream, events_stream_config, ingest_stream_config
from services.common.tasks import Supervisor
from services.events.api import EventsServicer
from services.events.ingest import Ingestor
from services.events.store import EventStore

log = logging.getLogger(__name__)


class EventService:
    """Owns the ingest consumer, the history store and the gRPC server."""

    def __init__(self, cfg: VigilConfig, *, nats_url: str | None = None) -> None:
        self.cfg = cfg
        self.settings = cfg.events
        self.nats_url = nats_url or cfg.nats.url
        self.store = EventStore(self.settings.store_url)
        self.tasks = Supervisor("events")
        self.grpc: GrpcServer | None = None
        self.status_server: StatusServer | None = None
        self.ingestor: Ingestor | None = None
        self._nc: natsconn.NATS | None = None

    async def start(self) -> None:
        """Connect, declare streams, start consuming and serving."""
        await self.store.open()
        self._nc = nc = await natsconn.connect(self.nats_url, "vigil-events")
        js = nc.jetstream()
        await ensure_stream(js, ingest_stream_config())
        await ensure_stream(js, events_stream_config(self.settings.stream_max_age, self.settings.stream_max_bytes))
        self.ingestor = Ingestor(js, self.store)
        self.grpc = GrpcServer(
            self.settings.listen,
            [(events_pb2_grpc.add_EventsServicer_to_server, EventsServicer(self.store), "vigil.v1.Events")],
        )
        await self.grpc.start()
        if self.settings.metrics_listen:
            self.status_server = StatusServer(self.settings.metrics_listen, lambda: not self.tasks.failed.is_set())
            await self.status_server.start()
        self.tasks.spawn("ingest", self.ingestor.run())
        log.info("event service: gRPC on %s, NATS %s", self.grpc.address, self.nats_url)

    @property
    def grpc_address(self) -> str:
        """Where the gRPC server listens."""
        assert self.grpc is not None
        return self.grpc.address

    async def stop(self) -> None:
        """Stop serving and consuming; disconnect."""
        if self.grpc is not None:
            await self.grpc.stop(grace=1.0)
        if self.status_server is not None:
            await self.status_server.stop()
        await self.tasks.close()
        if self._nc is not None:
            try:
                await asyncio.wait_for(self._nc.drain(), 5.0)
            except Exception:
                await self._nc.close()
        await self.store.close()
        log.info("event service stopped")
