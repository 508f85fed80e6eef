"""The scheduler process: wire up, serve, shut down.

store ─ inventory, restore state ─┐
NATS ── JetStream ────────────────┤
                                  ├─ Dispatcher  (due polls → vigil.poll.<location>, TTL → UNKNOWN)
gRPC ResultSink ──────────────────┼─ StateKeeper (results → state, outages, outbox)
gRPC Poller, Inventory ───────────┤
                                  ├─ MinionRegistry (sessions, heartbeats, minion/location events)
                                  └─ OutboxRelay (outbox → vigil.ingest.scheduler)
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from nats.aio.client import Client as NATS
from vigil.v1 import inventory_pb2_grpc, poller_pb2_grpc, sink_pb2_grpc

from services.core import natsconn
from services.core.config import VigilConfig
from services.core.grpcserver import GrpcServer
from services.core.httpstatus import StatusServer
from services.core.streams import ensure_stream, ingest_stream_config
from services.core.tasks import Supervisor
from services.core.timeutil import now
from services.scheduler.dispatcher import Dispatcher
from services.scheduler.inventory import Inventory
from services.scheduler.inventory_api import InventoryServicer
from services.scheduler.minions import MinionRegistry
from services.scheduler.model import InterfaceState, NodeState, ServiceKey, ServiceRuntime
from services.scheduler.outbox import OutboxRelay
from services.scheduler.poller_api import PollerServicer
from services.scheduler.sink import ResultSinkServicer
from services.scheduler.site_sync import SiteSync  # issue 6
from services.scheduler.state import StateKeeper
from services.scheduler.store import SchedulerStore

log = logging.getLogger(__name__)


class Scheduler:
    """Owns every part of the scheduler; :meth:`start` then :meth:`stop`."""

    def __init__(self, cfg: VigilConfig, *, nats_url: str | None = None) -> None:
        self.cfg = cfg
        self.settings = cfg.scheduler
        self.nats_url = nats_url or cfg.nats.url
        self.id = secrets.token_hex(4)
        self.services: dict[ServiceKey, ServiceRuntime] = {}
        self.interfaces: dict[tuple[str, str], InterfaceState] = {}
        self.nodes: dict[str, NodeState] = {}
        self.store = SchedulerStore(self.settings.store_url)
        self.inventory = Inventory(cfg, self.store, self.services, self.interfaces, self.nodes)
        self.registry = MinionRegistry(
            self.settings.heartbeat_interval, self.settings.heartbeat_misses
        )
        self.tasks = Supervisor("scheduler")
        self.grpc: GrpcServer | None = None
        self.status_server: StatusServer | None = None
        self.dispatcher: Dispatcher | None = None
        self.keeper: StateKeeper | None = None
        self.relay: OutboxRelay | None = None
        self._nc: NATS | None = None

    async def start(self) -> None:
        """Load the inventory, restore state, connect, start dispatching and serving."""
        await self.store.open()
        await self.inventory.load()
        self._nc = nc = await natsconn.connect(self.nats_url, f"vigil-scheduler-{self.id}")
        js = nc.jetstream()
        await ensure_stream(js, ingest_stream_config())

        self.relay = OutboxRelay(self.store, js)
        self.keeper = keeper = StateKeeper(
            self.services,
            self.store,
            self.relay.wake,
            interfaces=self.interfaces,
            nodes=self.nodes,
            keep_history=self.settings.results_retention > 0,
        )
        states = await self.store.load_states()
        orphans = await keeper.restore(
            states, await self.store.open_outages(), await self.store.down_elements()
        )
        await keeper.close_unmanaged(orphans, now())
        await keeper.retire(sorted(set(states) - set(self.services)), now())

        self.dispatcher = Dispatcher(
            self.services,
            self.registry,
            keeper,
            nc,
            batch_size=self.settings.batch_size,
            start_splay=self.settings.start_splay,
            scheduler_id=self.id,
            max_in_flight=self.settings.max_in_flight,
            max_in_flight_per_node=self.settings.max_in_flight_per_node,
        )
        self.grpc = GrpcServer(
            self.settings.listen,
            [
                (
                    poller_pb2_grpc.add_PollerServicer_to_server,
                    PollerServicer(
                        self.services,
                        self.store,
                        self.registry,
                        self.dispatcher,
                        keeper,
                        version=lambda: self.inventory.version,
                    ),
                    "vigil.v1.Poller",
                ),
                (
                    inventory_pb2_grpc.add_InventoryServicer_to_server,
                    InventoryServicer(self.inventory, self.dispatcher, keeper),
                    "vigil.v1.Inventory",
                ),
                (
                    sink_pb2_grpc.add_ResultSinkServicer_to_server,
                    ResultSinkServicer(
                        self.registry,
                        self.dispatcher,
                        keeper,
                        self.id,
                        sites=SiteSync(self.services, self.cfg.locations),  # issue 6: sites
                    ),
                    "vigil.v1.ResultSink",
                ),
            ],
        )
        await self.grpc.start()
        if self.settings.metrics_listen:
            self.status_server = StatusServer(
                self.settings.metrics_listen, lambda: not self.tasks.failed.is_set()
            )
            await self.status_server.start()

        self.tasks.spawn("state-keeper", keeper.run())
        self.tasks.spawn("state-flusher", keeper.run_flusher(self.settings.status_flush_interval))
        self.tasks.spawn("stale-sweeper", keeper.run_stale_sweeper())
        if self.settings.results_retention > 0:
            self.tasks.spawn("results-pruner", keeper.run_pruner(self.settings.results_retention))
        self.tasks.spawn("outbox-relay", self.relay.run())
        self.dispatcher.schedule_all(minion_grace=self.registry.timeout)
        self.tasks.spawn("dispatcher", self.dispatcher.run())
        self.tasks.spawn(
            "minion-registry", self.registry.run(keeper, self.dispatcher)
        )  # issue 6: liveness sweeper
        log.info(
            "scheduler %s: %d node(s), %d service(s), gRPC on %s, NATS %s",
            self.id,
            len(self.inventory.entries),
            len(self.services),
            self.grpc.address,
            self.nats_url,
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
                    await self.keeper.flush()
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
