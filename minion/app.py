"""The minion process: wire up, serve, shut down.

    NATS  vigil.poll.<location>  (queue group: one minion of the location per request)
          vigil.poll.<location>.<system_id>  (requests aimed at this minion)
            │
            ▼
    PollRunner (deadlines, retries, in-flight cap) ──► SinkClient ──► scheduler gRPC
            ▲                                    │        ▲
    SitePoller (store-and-forward: the location's │        │ replay
    schedule, polled on our own while cut off) ───┴► DiskSpool

A minion only dials out (NATS and the scheduler's gRPC port) and opens no
port. It takes requests from its location's queue group only while it can
handle them: it leaves the group while at its in-flight cap (NATS then hands
the location's requests to the other minions there) and while it polls on
its own, and joins again afterwards. Requests aimed at it by system id are
always taken.

Stopping (SIGTERM): leave both subjects, stop polling on our own, let the
polls in flight finish or reach their deadlines (bounded by
``drain_timeout``), flush the results, say goodbye to the scheduler, exit.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from vigil.v1 import sink_pb2

import minion
from minion.identity import load_system_id as load_system_id
from minion.identity import minion_transport as minion_transport
from minion.intake import Intake
from minion.lifecycle import MinionState, Phase
from minion.monitors import registry
from minion.monitors.registry import MonitorSet
from minion.monitors.setup import configure_monitors
from minion.runner import PollRunner
from minion.sink_client import SinkClient
from minion.site import SitePoller
from minion.spool import DiskSpool
from services.core.config import MinionSettings, PkiSettings
from services.core.tasks import Supervisor
from services.core.timeutil import now as wall_now
from services.core.timeutil import set_timestamp
from services.core.tls import TlsError, TlsMaterial

log = logging.getLogger(__name__)


class Minion:
    """Owns the NATS subscriptions, the runner, the spool and the scheduler session."""

    def __init__(self, settings: MinionSettings, *, nats_url: str, pki: PkiSettings) -> None:
        self.settings = settings
        self.nats_url = nats_url
        #: Our certificate's identity (``None`` in the plaintext development mode) and
        #: the TLS material for the scheduler's gRPC port and NATS.
        self.identity, self.transport = minion_transport(settings, pki, nats_url)
        location = self.identity.location if self.identity else settings.location
        assert location is not None
        self.location: str = location
        self.system_id = self.identity.name if self.identity else load_system_id(settings)
        self.monitors = MonitorSet()
        # Process-wide monitor settings: credentials by site, plugin locations,
        # the monitors this minion may run.
        configure_monitors(settings)
        self.tasks = Supervisor("minion")
        #: The lifecycle, read by every part (the site poller sets ``autonomous``).
        self.state = MinionState()
        self.spool_dir = Path(settings.spool_dir) / self.system_id
        # Opened in start(), off the event loop.
        self.spool = DiskSpool(
            self.spool_dir,
            max_bytes=settings.spool_max_bytes,
            max_age=settings.spool_max_age,
            open_existing=False,
        )
        #: Set when the queue-group membership should be reconsidered.
        self._intake_changed = asyncio.Event()
        hello = sink_pb2.MinionHello(
            system_id=self.system_id,
            location=self.location,
            version=minion.__version__,
            monitors=registry.available(),
            max_in_flight=settings.max_in_flight,
        )
        self.runner = PollRunner(
            self.monitors,
            self.system_id,
            self._emit,
            max_in_flight=settings.max_in_flight,
            on_pressure=self._intake_changed.set,
        )
        self.site = SitePoller(
            self.system_id,
            self.location,
            self.spool_dir,
            self.runner,
            self.spool,
            state=self.state,
            autonomous_after=settings.autonomous_after,
            cut_off=self._cut_off,
            last_contact=self._last_contact,
            on_change=self._intake_changed.set,
        )
        self.sink = SinkClient(
            settings.scheduler,
            hello,
            self._heartbeat,
            buffer_size=settings.result_buffer,
            spool=self.spool,
            on_welcome=self.site.on_welcome,
            on_schedule=self.site.on_schedule,
            schedule_digest=lambda: self.site.digest,
            credentials=self._sink_credentials if self.identity is not None else None,
        )
        self.intake = Intake(
            location=self.location,
            system_id=self.system_id,
            nats_url=nats_url,
            transport=self.transport,
            client_name=f"vigil-minion-{self.system_id}",
            runner=self.runner,
            state=self.state,
            tasks=self.tasks,
            changed=self._intake_changed,
            # The scheduler must know at once whether to send us work.
            on_ready_change=self.sink.beat_now,
        )

    # -- plumbing ---------------------------------------------------------------------

    def _sink_credentials(self) -> grpc.ChannelCredentials:
        """The scheduler channel's mutual-TLS credentials, from the files as they are now.

        Read again for every session: a certificate renewed on disk (``vigil ca
        issue``) is presented from the next session on, without a restart.
        """
        current = self.transport
        assert isinstance(current, TlsMaterial)
        try:
            current = TlsMaterial.load(
                current.ca_path, current.cert_path, current.key_path, current.revoked_path
            )
        except TlsError as exc:
            log.warning("cannot re-read the TLS material (%s); using what was loaded", exc)
            return current.channel_credentials()
        if current.identity != self.identity:
            log.warning(
                "%s now names %s, not %s; using the certificate loaded at start",
                current.cert_path,
                current.identity,
                self.identity,
            )
            assert isinstance(self.transport, TlsMaterial)
            return self.transport.channel_credentials()
        return current.channel_credentials()

    def _emit(self, result: Any, expires_at: float) -> None:
        self.sink.submit(result, expires_at)

    def _spooled(self) -> None:
        if self.sink.connected.is_set():
            self.sink.wake()

    def _cut_off(self) -> bool:
        """No scheduler session, or no NATS connection: the central site is unreachable."""
        return not self.sink.connected.is_set() or not self.nats_ready

    @property
    def nats_ready(self) -> bool:
        """NATS can deliver requests to us (see :attr:`minion.intake.Intake.ready`)."""
        return self.intake.ready

    @property
    def _nc(self) -> NATS | None:
        return self.intake.nc

    @property
    def _shared(self) -> Subscription | None:
        return self.intake.shared

    @property
    def intake_pauses(self) -> int:
        """Times the minion left its location's queue group."""
        return self.intake.pauses

    @property
    def intake_resumes(self) -> int:
        """Times the minion joined its location's queue group again."""
        return self.intake.resumes

    def _last_contact(self) -> float | None:
        """Loop-clock time of the last word from the central site, when a cut is seen.

        Without a scheduler session: its last message (the session ends only
        once its silence is noticed, seconds after the cut). A NATS loss alone
        is dated when noticed (``None``).
        """
        if self.sink.connected.is_set():
            return None
        return self.sink.last_heard

    def _heartbeat(self) -> sink_pb2.Heartbeat:
        hb = sink_pb2.Heartbeat(
            in_flight=self.runner.in_flight,
            polls_done=self.runner.stats.done,
            nats_connected=self.nats_ready and self.state.running,
            dropped_expired=self.runner.stats.dropped_expired,
            intake_paused=self._shared is None,
            autonomous=self.state.autonomous,
            spooled=self.spool.pending,
            results_dropped=self.sink.dropped
            + self.sink.late_dropped
            + self.spool.dropped
            + self.spool.expired,
        )
        set_timestamp(hb.sent_at, wall_now())
        return hb

    @property
    def subjects(self) -> tuple[str, str]:
        """The location subject and this minion's own subject."""
        return self.intake.subjects

    @property
    def taking_shared(self) -> bool:
        """Subscribed to the location's queue group right now."""
        return self.intake.taking_shared

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to NATS and the scheduler; start taking requests."""
        await self.spool.open_async()  # what a cut before a restart left, replayed first
        self.tasks.spawn("spool", self.spool.run(on_written=self._spooled))
        self.tasks.spawn("sink", self.sink.run())
        # Before NATS: a store-and-forward minion started during a cut polls on its own.
        self.tasks.spawn("site", self.site.run())
        await self.intake.connect()
        # Only now may the scheduler count on us: a request published before the
        # server had our subscriptions would be lost and wait out its TTL.
        self.state.advance(Phase.RUNNING)
        self.sink.beat_now()
        self.tasks.spawn("intake", self.intake.run())
        log.info(
            "minion %s at location %s: NATS %s, scheduler %s, monitors %s",
            self.system_id,
            self.location,
            self.nats_url,
            self.settings.scheduler,
            ", ".join(registry.available()),
        )

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop taking requests, finish in-flight polls (bounded), flush, say goodbye, close."""
        self.state.advance(Phase.DRAINING)
        self.site.stop()
        await self.intake.leave_all()
        timeout = self.settings.drain_timeout if drain_timeout is None else drain_timeout
        await self.runner.drain(timeout)
        await self.spool.flush()  # what the last polls of our own produced
        if self.sink.connected.is_set():
            if not await self.sink.flush(timeout=5.0):
                log.warning("stopping with %d result(s) not acknowledged", self.sink.backlog)
            await self.sink.goodbye("shutdown", timeout=5.0)
        await self.tasks.close()
        await self.intake.close()
        await self.spool.close_async()
        await self.monitors.close()
        self.state.advance(Phase.STOPPED)
        log.info(
            "minion %s stopped (%d polls done, %d result(s) spooled for later)",
            self.system_id,
            self.runner.stats.done,
            self.spool.pending,
        )
