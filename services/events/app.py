"""The event service process: wire up, serve, shut down.

    vigil.ingest.<source>  (JetStream VIGIL_INGEST, durable consumer)
        │  normalize → publish (sequence) → store (history, service states)
        ▼
    vigil.events.<type>.<action>.<severity>.<node|_>  (JetStream VIGIL_EVENTS)
        ├─ webhooks: one durable consumer + task per hook
        ├─ gRPC Subscribe: one ephemeral consumer per call (gaps filled from history)
        └─ core NATS subscribers (vigil sniff)
    gRPC vigil.v1.Events: Publish (→ vigil.ingest.api), ListEvents, hooks
    summary: every summary_interval, a ``summary updated`` event when counts changed

One event service runs per deployment: hooks and the summary are driven by
this process alone.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from vigil.v1 import events_pb2_grpc

from services.core import natsconn
from services.core.access.audit import audit_event
from services.core.access.replication import SnapshotMirror
from services.core.access.tokens import TokenVerifier
from services.core.config import EventsConfig
from services.core.events import EVENTS_STREAM, INGEST_SUBJECT_PREFIX
from services.core.grpcauth import AuditRecord, CertificateRoles
from services.core.grpcserver import GrpcServer
from services.core.httpstatus import HealthState, StatusServer
from services.core.pki import Identity
from services.core.streams import (
    StreamKeeper,
    ensure_stream,
    events_stream_config,
    ingest_stream_config,
)
from services.core.tasks import Supervisor
from services.core.tls import Transport, transport_for
from services.events.api import EventsServicer
from services.events.hooks.manager import HookManager
from services.events.ingest import Ingestor
from services.events.store import EventStore
from services.events.store.history import HistoryStore
from services.events.summary import SummaryTracker

log = logging.getLogger(__name__)


async def align_stream(js: JetStreamContext, history: HistoryStore) -> None:
    """Keep sequences increasing when NATS lost its data but the history did not.

    A re-created ``VIGIL_EVENTS`` would count from 1 again and reuse
    sequences the history already holds; purging it up to just past the
    newest stored sequence makes JetStream continue from there.
    """
    info = await js.stream_info(EVENTS_STREAM)
    stored = await history.max_seq()
    if info.state.last_seq < stored:
        log.warning(
            "%s ends at sequence %d but the history at %d (NATS data lost?); continuing from %d",
            EVENTS_STREAM,
            info.state.last_seq,
            stored,
            stored + 1,
        )
        await js.purge_stream(EVENTS_STREAM, seq=stored + 1)


class EventService:
    """Owns the ingest consumer, the store, the hooks, the summary and the gRPC server."""

    def __init__(self, cfg: EventsConfig, *, nats_url: str | None = None) -> None:
        self.cfg = cfg
        self.settings = cfg.events
        self.nats_url = nats_url or cfg.nats.url
        #: Our TLS material (gRPC server, NATS client), or the loopback-only plaintext mode.
        self.transport: Transport = transport_for(
            cfg.pki,
            Identity("events", "events"),
            {
                "events.listen": self.settings.listen,
                **(
                    {"events.probe_listen": self.settings.probe_listen}
                    if self.settings.probe_listen
                    else {}
                ),
                "nats.url": self.nats_url,
            },
        )
        self.store = EventStore(self.settings.store_url)
        self.tasks = Supervisor("events")
        #: Why the service cannot do its work now (e.g. a stream gone): /healthz and gRPC health.
        self.health = HealthState()
        self.streams: StreamKeeper | None = None
        self.grpc: GrpcServer | None = None
        self.status_server: StatusServer | None = None
        self.ingestor: Ingestor | None = None
        self.summary: SummaryTracker | None = None
        self._hooks: HookManager | None = None
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self.servicer: EventsServicer | None = None
        self.verifier = TokenVerifier()
        self.mirror: SnapshotMirror | None = None

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context (after :meth:`start`)."""
        assert self._js is not None, "event service not started"
        return self._js

    @property
    def subscribers_cut(self) -> int:
        """Subscribe streams cut off for not reading, since start."""
        return self.servicer.subscribers_cut if self.servicer is not None else 0

    @property
    def hooks(self) -> HookManager:
        """The webhook manager (after :meth:`start`)."""
        assert self._hooks is not None, "event service not started"
        return self._hooks

    async def start(self) -> None:
        """Connect, declare streams, start consuming, delivering and serving."""
        await self.store.open()
        self._nc = nc = await natsconn.connect(
            self.nats_url, "vigil-events", transport=self.transport
        )
        self._js = js = nc.jetstream()
        await ensure_stream(js, ingest_stream_config())
        await ensure_stream(
            js, events_stream_config(self.settings.stream_max_age, self.settings.stream_max_bytes)
        )
        await align_stream(js, self.store)

        async def realign(name: str) -> None:
            # A VIGIL_EVENTS created again counts from 1: continue past the history.
            if name == EVENTS_STREAM:
                await align_stream(js, self.store)

        self.streams = StreamKeeper(
            js,
            [
                ingest_stream_config(),
                events_stream_config(self.settings.stream_max_age, self.settings.stream_max_bytes),
            ],
            self.health,
            after_create=realign,
        )
        self.summary = SummaryTracker(self.store, self.store, js, self.settings.summary_interval)
        await self.summary.load()
        self.ingestor = Ingestor(nc, js, self.store, self.summary.apply)
        self._hooks = HookManager(js, self.store, self.settings, self.tasks)
        await self._hooks.start()
        self.servicer = EventsServicer(js, self.store, self._hooks, self.settings)
        self.servicer.on_stream_trouble = self.streams.wake
        self.ingestor.on_stream_trouble = self.streams.wake
        # Bearer tokens are checked against the scheduler's published snapshot, locally.
        self.mirror = SnapshotMirror(js, self.verifier)
        try:
            async with asyncio.timeout(5.0):
                await self.mirror.fetch()
        except Exception as exc:  # the mirror keeps trying; certificates work meanwhile
            log.warning("no access snapshot yet (%s); bearer tokens wait for it", exc)
        self.grpc = GrpcServer(
            self.settings.listen,
            [(events_pb2_grpc.add_EventsServicer_to_server, self.servicer, "vigil.v1.Events")],
            transport=self.transport,
            probe_listen=self.settings.probe_listen,
            verifier=self.verifier,
            certificates=CertificateRoles(
                self.cfg.access.certificate_role, self.cfg.access.certificates
            ),
            audit=self._audit,
        )
        await self.grpc.start()
        if self.settings.metrics_listen:
            self.status_server = StatusServer(
                self.settings.metrics_listen,
                lambda: not self.tasks.failed.is_set(),
                state=self.health,
            )
            await self.status_server.start()
        self.tasks.spawn("streams", self.streams.run())
        self.tasks.spawn("access-mirror", self.mirror.run())
        self.tasks.spawn("health", self.health.follow(self.grpc.set_serving))
        self.tasks.spawn("ingest", self.ingestor.run())
        if self.settings.summary_interval:
            self.tasks.spawn("summary", self.summary.run())
        log.info("event service: gRPC on %s, NATS %s", self.grpc.address, self.nats_url)

    async def _audit(self, record: AuditRecord) -> None:
        """Audit events enter the durable ingest path like every event (de-duplicated by id)."""
        event = audit_event(record, source="events")
        await self.js.publish(
            f"{INGEST_SUBJECT_PREFIX}.events",
            event.to_json(),
            timeout=5.0,
            headers={"Nats-Msg-Id": event.id},
        )

    @property
    def grpc_address(self) -> str:
        """Where the gRPC server listens."""
        assert self.grpc is not None
        return self.grpc.address

    async def stop(self) -> None:
        """Stop serving and consuming; save hook statuses; disconnect."""
        if self.grpc is not None:
            await self.grpc.stop(grace=1.0)
        if self.status_server is not None:
            await self.status_server.stop()
        await self.tasks.close()
        if self._hooks is not None:
            try:
                # The cursors' positions too: they restore a hook's place if NATS loses its data.
                async with asyncio.timeout(5.0):
                    await self._hooks.refresh_all()
                async with asyncio.timeout(5.0):
                    await self._hooks.flush()
            except Exception as exc:
                log.warning("cannot save hook statuses: %r", exc)
        if self._nc is not None:
            # Flush (the last acks) and close. Not drain(): it waits for pull
            # subscriptions' internal queues to be "done", which nats-py's fetch
            # does not always mark, so it would sit out its timeout.
            if self._nc.is_connected:
                try:
                    async with asyncio.timeout(2.0):
                        await self._nc.flush()
                except Exception as exc:
                    log.warning("NATS flush at shutdown failed: %s", exc)
            await self._nc.close()
        await self.store.close()
        log.info("event service stopped")
