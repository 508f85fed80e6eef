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
import uuid
from pathlib import Path
from typing import Any

import grpc
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from vigil.v1 import sink_pb2

import minion
from minion.lifecycle import MinionState, Phase
from minion.monitors import registry
from minion.monitors.registry import MonitorSet
from minion.monitors.setup import configure_monitors
from minion.runner import PollRunner
from minion.sink_client import SinkClient
from minion.site import SitePoller
from minion.spool import DiskSpool
from services.core import natsconn
from services.core.config import MinionSettings, PkiSettings
from services.core.ids import NODE_ID_RE
from services.core.pki import Identity
from services.core.tasks import Supervisor, wait_set
from services.core.timeutil import now as wall_now
from services.core.timeutil import set_timestamp
from services.core.tls import (
    PLAINTEXT,
    PLAINTEXT_WARNING,
    TlsError,
    TlsMaterial,
    Transport,
    require_loopback,
    transport_for,
)
from services.core.wire import poll_queue_group, poll_subject

log = logging.getLogger(__name__)

#: NATS buffers for our subscriptions (messages are batches of requests): a slow
#: minion drops (and NATS reports) beyond these instead of growing without bound.
PENDING_MSGS_LIMIT = 1000
PENDING_BYTES_LIMIT = 32 << 20
#: Longest wait for a NATS unsubscribe (drain) round trip.
UNSUBSCRIBE_TIMEOUT = 5.0
#: A minion's NATS pings: a connection that went dead in a partition (the site's
#: link back, the server long gone from the other end) is replaced within about
#: 15 s, not the 40 s of the defaults (no requests reach the minion meanwhile).
NATS_PING_INTERVAL = 5
NATS_MAX_OUTSTANDING_PINGS = 2
#: How often the NATS client's read loop is looked at (see :meth:`Minion._nats_watch`).
NATS_WATCH_INTERVAL = 0.25


def load_system_id(settings: MinionSettings) -> str:
    """The configured id, else the one kept in ``id_file``, else a new one written there."""
    if settings.system_id:
        return settings.system_id
    path = Path(settings.id_file)
    try:
        existing = path.read_text().strip()
        if NODE_ID_RE.fullmatch(existing):
            return existing
        log.warning("%s holds an invalid system id %r; generating a new one", path, existing)
    except OSError:
        pass
    new_id = f"minion-{uuid.uuid4().hex[:12]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new_id + "\n")
    return new_id


def minion_transport(
    settings: MinionSettings, pki: PkiSettings, nats_url: str
) -> tuple[Identity | None, Transport]:
    """Who this minion is and the TLS material it proves it with.

    A minion's identity is its certificate. With an explicit ``pki.cert`` (a
    site bundle), location and system id come from the certificate; values
    set in the configuration must agree. With only ``pki.dir``, the system id
    comes from the configuration (or ``id_file``) and the certificate is
    ``minion-<location>-<system_id>.pem`` there. In the plaintext development
    mode there is no identity (``None``) and every address must be loopback.
    Raises :class:`~services.core.tls.TlsError` naming what is wrong.
    """
    addresses = {"minion.scheduler": settings.scheduler, "nats.url": nats_url}
    if pki.plaintext_loopback_dev:
        require_loopback(addresses)
        log.warning(PLAINTEXT_WARNING)
        return None, PLAINTEXT
    if pki.cert:
        base = Path(pki.dir)
        material = TlsMaterial.load(
            pki.ca or base / "ca.pem",
            pki.cert,
            pki.key or Path(pki.cert).with_name(Path(pki.cert).stem + "-key.pem"),
            revoked=base / "revoked.json",
        )
        identity = material.identity
        if identity.role != "minion":
            raise TlsError(f"{pki.cert}: a {identity.role} certificate, not a minion's")
        given = settings.model_fields_set
        for key, ours in (("location", identity.location), ("system_id", identity.name)):
            value = getattr(settings, key)
            if key in given and value is not None and value != ours:
                raise TlsError(
                    f"minion.{key} is {value!r} but the certificate {pki.cert} is for "
                    f"{identity} ({key} {ours!r}); a minion is who its certificate says"
                )
        return identity, material
    identity = Identity.minion(settings.location, load_system_id(settings))
    transport = transport_for(pki, identity, addresses)
    return identity, transport


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
        self._nc: NATS | None = None
        self._shared: Subscription | None = None
        self._own: Subscription | None = None
        #: Times the minion left / rejoined its location's queue group.
        self.intake_pauses = 0
        self.intake_resumes = 0

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
        """NATS can deliver requests to us: connected, and the client still reads.

        nats-py 2.16 can end its read loop yet still say it is connected (see
        :meth:`_nats_watch`); no message arrives then.
        """
        return self._nc is not None and natsconn.is_reading(self._nc)

    async def _nats_watch(self) -> None:
        """Keep nats-py's read loop alive, and replace the connection when it died. For ever.

        A flush that times out (a drain or a round trip during a partition)
        cancels its PONG future but leaves it queued; the late PONG, after the
        link is back, raises InvalidStateError in ``_process_pong``, which ends
        the read loop while the client stays "connected" until missed pings are
        noticed (nats.py #624/#129). Cancelled futures are swapped for fresh
        ones before their PONG comes; if the read loop died anyway, the
        connection is handed to nats-py's own reconnect as a stale one.
        """
        ready = self.nats_ready
        while True:
            await asyncio.sleep(NATS_WATCH_INTERVAL)
            nc = self._nc
            if nc is None:
                continue
            natsconn.repair_pongs(nc)
            if nc.is_connected and not natsconn.is_reading(nc):
                log.warning("NATS: the client stopped reading its connection; reconnecting")
                try:
                    await natsconn.reconnect_stale(nc)
                except Exception as exc:  # tried again on the next round
                    log.warning("NATS: cannot replace the connection: %r", exc)
            if self.nats_ready != ready:
                ready = self.nats_ready
                self.sink.beat_now()  # the scheduler must know at once whether to send us work

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
        return poll_subject(self.location), poll_subject(self.location, self.system_id)

    @property
    def taking_shared(self) -> bool:
        """Subscribed to the location's queue group right now."""
        return self._shared is not None

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to NATS and the scheduler; start taking requests."""
        await self.spool.open_async()  # what a cut before a restart left, replayed first
        self.tasks.spawn("spool", self.spool.run(on_written=self._spooled))
        self.tasks.spawn("sink", self.sink.run())
        # Before NATS: a store-and-forward minion started during a cut polls on its own.
        self.tasks.spawn("site", self.site.run())
        self._nc = nc = await natsconn.connect(
            self.nats_url,
            f"vigil-minion-{self.system_id}",
            transport=self.transport,
            ping_interval=NATS_PING_INTERVAL,
            max_outstanding_pings=NATS_MAX_OUTSTANDING_PINGS,
        )
        self.tasks.spawn("nats watch", self._nats_watch())
        _, own = self.subjects
        self._own = await nc.subscribe(
            own,
            cb=self.runner.on_message,
            pending_msgs_limit=PENDING_MSGS_LIMIT,
            pending_bytes_limit=PENDING_BYTES_LIMIT,
        )
        await self._reconcile_intake()
        await nc.flush(timeout=5)
        # Only now may the scheduler count on us: a request published before the
        # server had our subscriptions would be lost and wait out its TTL.
        self.state.advance(Phase.RUNNING)
        self.sink.beat_now()
        self.tasks.spawn("intake", self._intake_loop())
        log.info(
            "minion %s at location %s: NATS %s, scheduler %s, monitors %s",
            self.system_id,
            self.location,
            self.nats_url,
            self.settings.scheduler,
            ", ".join(registry.available()),
        )

    async def _intake_loop(self) -> None:
        """Join or leave the location's queue group as load and links change. For ever."""
        while True:
            self._intake_changed.clear()
            await self._reconcile_intake()
            await wait_set(self._intake_changed, 1.0)

    async def _reconcile_intake(self) -> None:
        want = not (self.state.stopping or self.runner.saturated or self.state.autonomous)
        if want and self._shared is None and self._nc is not None:
            shared, _ = self.subjects
            try:
                self._shared = await self._nc.subscribe(
                    shared,
                    queue=poll_queue_group(self.location),
                    cb=self.runner.on_message,
                    pending_msgs_limit=PENDING_MSGS_LIMIT,
                    pending_bytes_limit=PENDING_BYTES_LIMIT,
                )
            except Exception as exc:  # retried on the next round
                log.warning("cannot subscribe to %s: %s", shared, exc)
                return
            if self.state.stopping:  # stop() began while we subscribed
                sub, self._shared = self._shared, None
                await self._leave(sub)
                return
            if self.intake_pauses:
                self.intake_resumes += 1
                log.info(
                    "taking requests for %s again (in flight: %d)",
                    self.location,
                    self.runner.in_flight,
                )
        elif not want and self._shared is not None:
            sub, self._shared = self._shared, None
            self.intake_pauses += 1
            why = (
                "stopping"
                if self.state.stopping
                else "polling on our own"
                if self.state.autonomous
                else "at capacity"
            )
            log.info(
                "not taking requests for %s (%s; in flight: %d)",
                self.location,
                why,
                self.runner.in_flight,
            )
            await self._leave(sub)

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop taking requests, finish in-flight polls (bounded), flush, say goodbye, close."""
        self.state.advance(Phase.DRAINING)
        self.site.stop()
        shared, own, self._shared, self._own = self._shared, self._own, None, None
        for sub in (shared, own):
            if sub is not None:
                await self._leave(sub)
        timeout = self.settings.drain_timeout if drain_timeout is None else drain_timeout
        await self.runner.drain(timeout)
        await self.spool.flush()  # what the last polls of our own produced
        if self.sink.connected.is_set():
            if not await self.sink.flush(timeout=5.0):
                log.warning("stopping with %d result(s) not acknowledged", self.sink.backlog)
            await self.sink.goodbye("shutdown", timeout=5.0)
        await self.tasks.close()
        await natsconn.close(self._nc)
        await self.spool.close_async()
        await self.monitors.close()
        self.state.advance(Phase.STOPPED)
        log.info(
            "minion %s stopped (%d polls done, %d result(s) spooled for later)",
            self.system_id,
            self.runner.stats.done,
            self.spool.pending,
        )

    async def _leave(self, sub: Subscription) -> None:
        """Leave a subject, still running the requests already received (bounded wait).

        Connected: ``drain`` (the server stops sending at once; what already
        arrived is processed). Not connected: ``unsubscribe``, local, so that
        the client does not subscribe again when it reconnects.
        """
        nc = self._nc
        if nc is None or not nc.is_connected:
            try:
                async with asyncio.timeout(UNSUBSCRIBE_TIMEOUT):
                    await sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribing from %s failed: %r", sub.subject, exc)
            return
        # The drain runs on if our wait ends first, and is not cancelled: a drain cut
        # short leaves the subscription closed for nats-py yet registered, renewed on
        # reconnect, and its public API cannot remove it then. Its round trip is
        # bounded by nats-py's flush timeout; close() cancels what is left at shutdown.
        drain = self.tasks.spawn(f"leave {sub.subject}", _drain(sub), essential=False)
        done, _ = await asyncio.wait({drain}, timeout=UNSUBSCRIBE_TIMEOUT)
        if not done:
            log.warning(
                "leaving %s takes more than %.0fs (NATS slow); going on",
                sub.subject,
                UNSUBSCRIBE_TIMEOUT,
            )


async def _drain(sub: Subscription) -> None:
    try:
        await sub.drain()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
    except Exception as exc:
        # The UNSUB went out first: the server sends no more; only a reconnect could
        # renew it client-side (the minion then takes requests it did not ask for).
        log.warning("draining %s failed: %r", sub.subject, exc)
