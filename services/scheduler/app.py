"""The scheduler process: wire up, serve, shut down.

store ─ inventory, restore state ─┐
NATS ── JetStream ────────────────┤
                                  ├─ Dispatcher  (due polls → vigil.poll.<location>, TTL → UNKNOWN)
gRPC ResultSink ──────────────────┼─ StateKeeper (results → state, outages, outbox: assurance/)
gRPC Poller, Inventory, Access ───┤  (Access: users, roles, tokens → snapshot in NATS KV)
                                  ├─ MinionRegistry (sessions, heartbeats; liveness sweeper)
                                  └─ OutboxRelay (outbox → vigil.ingest.scheduler)
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping

from nats.aio.client import Client as NATS
from vigil.v1 import access_pb2_grpc, inventory_pb2_grpc, poller_pb2_grpc, sink_pb2_grpc

from services.core import natsconn
from services.core.access.audit import audit_event
from services.core.access.replication import SnapshotPublisher, bucket_config
from services.core.config import VigilConfig
from services.core.grpcauth import AuditRecord, CertificateRoles
from services.core.grpcserver import GrpcServer, Registration
from services.core.httpstatus import HealthState, StatusServer
from services.core.limits import SchedulerLimits
from services.core.pki import Identity
from services.core.streams import StreamKeeper, ensure_stream, ingest_stream_config
from services.core.tasks import Supervisor
from services.core.timeutil import now
from services.core.tls import Transport, transport_for
from services.scheduler.access.api import AccessServicer
from services.scheduler.access.authority import AccessAuthority
from services.scheduler.access.store import AccessStore
from services.scheduler.assurance import lifecycle
from services.scheduler.assurance.housekeeping import (
    Journal,
    StaleSweeper,
    run_flusher,
    run_pruner,
)
from services.scheduler.assurance.keeper import Mailbox, StateKeeper
from services.scheduler.assurance.node_outage import Topology
from services.scheduler.assurance.persist import Persister
from services.scheduler.dispatcher import Dispatcher
from services.scheduler.inventory import Inventory
from services.scheduler.inventory_api import InventoryServicer
from services.scheduler.liveness import run_liveness
from services.scheduler.minions import MinionRegistry
from services.scheduler.model import ServiceKey, ServiceRuntime
from services.scheduler.outbox import OutboxRelay
from services.scheduler.poller_api import PollerServicer
from services.scheduler.sink import ResultSinkServicer
from services.scheduler.site_sync import SiteSync  # issue 6
from services.scheduler.store import SchedulerStore

log = logging.getLogger(__name__)


class Scheduler:
    """Owns every part of the scheduler; :meth:`start` then :meth:`stop`.

    Who owns what of a service: its spec, the inventory; its assured state,
    the keeper; its scheduling slot, the dispatcher. The others get read-only
    views or the narrow interface they need, given here.
    """

    def __init__(self, cfg: VigilConfig, *, nats_url: str | None = None) -> None:
        self.cfg = cfg
        self.settings = cfg.scheduler
        self.nats_url = nats_url or cfg.nats.url
        #: Our TLS material (gRPC server, NATS client), or the loopback-only plaintext mode.
        self.transport: Transport = transport_for(
            cfg.pki,
            Identity("scheduler", "scheduler"),
            {
                "scheduler.listen": self.settings.listen,
                **(
                    {"scheduler.probe_listen": self.settings.probe_listen}
                    if self.settings.probe_listen
                    else {}
                ),
                "nats.url": self.nats_url,
            },
        )
        self.id = secrets.token_hex(4)
        #: Why the scheduler cannot do its work now (a store refusing writes, the
        #: ingest stream gone): /healthz and gRPC health report from it.
        self.health = HealthState()
        #: Fair limits per identity (PollNow, ResultSink sessions): docs/security.md, "Limits".
        self.limits = SchedulerLimits.from_settings(self.settings)
        self.store = SchedulerStore(self.settings.store_url)
        self.store.health = self.health
        self.streams: StreamKeeper | None = None
        self.inventory = Inventory(cfg, self.store)
        inv = self.inventory
        self.services: Mapping[ServiceKey, ServiceRuntime] = inv.services
        self.topology = Topology(inv.services, inv.interfaces, inv.nodes)
        self.mailbox = Mailbox()
        self.journal = Journal(
            inv.services, self.store, keep_history=self.settings.results_retention > 0
        )
        self.registry = MinionRegistry(
            self.settings.heartbeat_interval,
            self.settings.heartbeat_misses,
            heartbeat_events=self.settings.heartbeat_event_interval,
        )
        self.tasks = Supervisor("scheduler")
        self.grpc: GrpcServer | None = None
        self.status_server: StatusServer | None = None
        self.dispatcher: Dispatcher | None = None
        self.keeper: StateKeeper | None = None
        self.relay: OutboxRelay | None = None
        #: Users, roles and tokens (vigil.v1.Access); its snapshot checks every bearer token.
        self.access = AccessAuthority(AccessStore(self.store.engine), cfg.access)
        self._nc: NATS | None = None

    async def start(self) -> None:
        """Load the inventory, restore state, connect, start dispatching and serving."""
        await self.store.open()
        await self.inventory.load()
        self._nc = nc = await natsconn.connect(
            self.nats_url, f"vigil-scheduler-{self.id}", transport=self.transport
        )
        js = nc.jetstream()
        await ensure_stream(js, ingest_stream_config())
        await ensure_stream(js, bucket_config())
        publisher = SnapshotPublisher(js)
        self.access.on_snapshot = publisher.offer
        await self.access.start()
        self.relay = OutboxRelay(self.store, js)
        self.streams = StreamKeeper(js, [ingest_stream_config(), bucket_config()], self.health)
        self.relay.on_stream_trouble = self.streams.wake
        persister = Persister(self.store, self.relay.wake)
        await self._restore(persister)

        self.dispatcher = dispatcher = Dispatcher(
            self.services,
            self.registry,
            self.mailbox,
            nc,
            polled=self.topology.polled,
            on_paused=self.journal.mark_dirty,
            batch_size=self.settings.batch_size,
            start_splay=self.settings.start_splay,
            scheduler_id=self.id,
            max_in_flight=self.settings.max_in_flight,
            max_in_flight_per_node=self.settings.max_in_flight_per_node,
        )
        self.keeper = keeper = StateKeeper(
            self.mailbox, self.topology, persister, self.journal, scheduling=dispatcher
        )

        self.grpc = GrpcServer(
            self.settings.listen,
            self._servicers(keeper, dispatcher),
            transport=self.transport,
            probe_listen=self.settings.probe_listen,
            verifier=self.access.verifier,
            certificates=CertificateRoles(
                self.cfg.access.certificate_role, self.cfg.access.certificates
            ),
            audit=self._auditor(persister),
        )
        await self.grpc.start()
        if self.cfg.access.bootstrap_token_file:
            await self.access.ensure_bootstrap_token(self.cfg.access.bootstrap_token_file)
        if self.settings.metrics_listen:
            self.status_server = StatusServer(
                self.settings.metrics_listen,
                lambda: not self.tasks.failed.is_set(),
                state=self.health,
            )
            await self.status_server.start()

        self.tasks.spawn("streams", self.streams.run())
        self.tasks.spawn("access-snapshot", publisher.run())
        self.tasks.spawn("access-prune", self.access.prune())
        self.tasks.spawn("health", self.health.follow(self.grpc.set_serving))
        self._spawn(keeper, dispatcher, persister)
        log.info(
            "scheduler %s: %d node(s), %d service(s), gRPC on %s, NATS %s",
            self.id,
            len(self.inventory.entries),
            len(self.services),
            self.grpc.address,
            self.nats_url,
        )

    async def _restore(self, persister: Persister) -> None:
        """The last known state back into memory; what is no longer configured is closed."""
        states = await self.store.load_states()
        orphans = lifecycle.restore(
            self.topology, states, await self.store.open_outages(), await self.store.down_elements()
        )
        await lifecycle.close_unmanaged(persister, orphans, now())
        await lifecycle.retire(persister, sorted(set(states) - set(self.services)), now())

    @staticmethod
    def _auditor(persister: Persister) -> Callable[[AuditRecord], Awaitable[None]]:
        """Audit events go through the outbox like every scheduler event (durable)."""

        async def record(entry: AuditRecord) -> None:
            await persister.emit([audit_event(entry, source="scheduler")])

        return record

    def _servicers(self, keeper: StateKeeper, dispatcher: Dispatcher) -> list[Registration]:
        poller = PollerServicer(
            self.services,
            self.store,
            self.registry,
            dispatcher,
            keeper,
            version=lambda: self.inventory.version,
            limits=self.limits,
        )
        sink = ResultSinkServicer(
            self.registry,
            dispatcher,
            keeper,
            self.id,
            sites=SiteSync(self.services, self.cfg.locations),  # issue 6: sites
            limits=self.limits,
        )
        return [
            (poller_pb2_grpc.add_PollerServicer_to_server, poller, "vigil.v1.Poller"),
            (
                inventory_pb2_grpc.add_InventoryServicer_to_server,
                InventoryServicer(self.inventory, dispatcher, keeper),
                "vigil.v1.Inventory",
            ),
            (sink_pb2_grpc.add_ResultSinkServicer_to_server, sink, "vigil.v1.ResultSink"),
            (
                access_pb2_grpc.add_AccessServicer_to_server,
                AccessServicer(self.access),
                "vigil.v1.Access",
            ),
        ]

    def _spawn(self, keeper: StateKeeper, dispatcher: Dispatcher, persister: Persister) -> None:
        assert self.relay is not None
        stale = StaleSweeper(
            self.services,
            self.topology.polled,
            persister.emit,
            # the minions need this long to reconnect after a restart (heartbeat interval times misses)
            startup_grace=self.registry.timeout,
        )
        self.tasks.spawn("state-keeper", keeper.run())
        self.tasks.spawn(
            "state-flusher", run_flusher(self.journal, self.settings.status_flush_interval)
        )
        self.tasks.spawn("stale-sweeper", stale.run())
        if self.settings.results_retention > 0:
            self.tasks.spawn(
                "results-pruner", run_pruner(self.store, self.settings.results_retention)
            )
        self.tasks.spawn("outbox-relay", self.relay.run())
        dispatcher.schedule_all(minion_grace=self.registry.timeout)
        self.tasks.spawn("dispatcher", dispatcher.run())
        self.tasks.spawn(  # issue 6: liveness sweeper
            "minion-liveness",
            run_liveness(self.registry, self.services, dispatcher, persister.emit),
        )

    @property
    def grpc_address(self) -> str:
        """Where the gRPC server listens (``host:port``)."""
        assert self.grpc is not None
        return self.grpc.address

    async def stop(self) -> None:
        """Stop serving, stop tasks, flush state, disconnect."""
        if self.grpc is not None:
            await self.grpc.stop(grace=1.0)
        if self.status_server is not None:
            await self.status_server.stop()
        await self.tasks.close()
        if self.dispatcher is not None:
            await self.dispatcher.close()
        if self.keeper is not None:
            try:
                async with asyncio.timeout(10.0):
                    await self.journal.flush()
            except Exception as exc:
                log.warning("final state flush failed: %s", exc)
        if self.relay is not None:
            try:
                async with asyncio.timeout(5.0):
                    await self.relay.relay_once()
            except Exception as exc:
                log.warning("final event relay failed (events stay in the outbox): %s", exc)
        await natsconn.close(self._nc)
        await self.store.close()
        log.info("scheduler %s stopped", self.id)
