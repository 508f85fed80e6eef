"""Where poll requests come in: the NATS connection and the two subscriptions.

A minion process (the single-process minion, or each worker of a
multi-process one) takes requests from its location's queue group only while
it can handle them: it leaves the group while its runner is at its in-flight
cap (NATS then hands the location's requests to the other subscribers there:
other minions, or this minion's other workers), while the minion polls on its
own, and while it stops; it joins again afterwards. Requests aimed at the
minion by system id are always taken; the workers of one minion subscribe to
that subject in a queue group of their own (``own_queue``), so each such
request is run once, by one of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from minion.lifecycle import MinionState
from minion.runner import PollRunner
from services.core import natsconn
from services.core.tasks import Supervisor, wait_set
from services.core.tls import Transport
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
#: How often the NATS client's read loop is looked at (see :meth:`Intake.watch`).
NATS_WATCH_INTERVAL = 0.25
#: How often the queue-group membership is reconsidered without a wake-up.
RECONCILE_INTERVAL = 1.0


class Intake:
    """One NATS connection, the minion's own subject and (while wanted) the location's group."""

    def __init__(
        self,
        *,
        location: str,
        system_id: str,
        nats_url: str,
        transport: Transport,
        client_name: str,
        runner: PollRunner,
        state: MinionState,
        tasks: Supervisor,
        changed: asyncio.Event,
        on_ready_change: Callable[[], None],
        on_membership_change: Callable[[], None] | None = None,
        own_queue: str | None = None,
    ) -> None:
        self.location = location
        self.system_id = system_id
        self.nats_url = nats_url
        self.transport = transport
        self.client_name = client_name
        self.runner = runner
        self.state = state
        self.tasks = tasks
        #: Set when the membership should be reconsidered (pressure, autonomy, stopping).
        self.changed = changed
        self._on_ready_change = on_ready_change
        self._on_membership_change = on_membership_change
        #: Queue group for the minion's own subject (``None``: a plain subscription).
        self.own_queue = own_queue
        self.nc: NATS | None = None
        self.shared: Subscription | None = None
        self.own: Subscription | None = None
        #: Times this process left / rejoined its location's queue group.
        self.pauses = 0
        self.resumes = 0

    @property
    def subjects(self) -> tuple[str, str]:
        """The location subject and the minion's own subject."""
        return poll_subject(self.location), poll_subject(self.location, self.system_id)

    @property
    def ready(self) -> bool:
        """NATS can deliver requests to us: connected, and the client still reads.

        nats-py 2.16 can end its read loop yet still say it is connected (see
        :meth:`watch`); no message arrives then.
        """
        return self.nc is not None and natsconn.is_reading(self.nc)

    @property
    def taking_shared(self) -> bool:
        """Subscribed to the location's queue group right now."""
        return self.shared is not None

    async def connect(self) -> None:
        """Connect (retrying for ever), subscribe, and make sure the server has it all."""
        self.nc = nc = await natsconn.connect(
            self.nats_url,
            self.client_name,
            transport=self.transport,
            ping_interval=NATS_PING_INTERVAL,
            max_outstanding_pings=NATS_MAX_OUTSTANDING_PINGS,
        )
        self.tasks.spawn("nats watch", self.watch())
        _, own = self.subjects
        self.own = await nc.subscribe(
            own,
            queue=self.own_queue or "",
            cb=self.runner.on_message,
            pending_msgs_limit=PENDING_MSGS_LIMIT,
            pending_bytes_limit=PENDING_BYTES_LIMIT,
        )
        await self.reconcile()
        # Only once flushed may the scheduler count on us: a request published before
        # the server had our subscriptions would be lost and wait out its TTL.
        await nc.flush(timeout=5)

    async def watch(self) -> None:
        """Keep nats-py's read loop alive, and replace the connection when it died. For ever.

        A flush that times out (a drain or a round trip during a partition)
        cancels its PONG future but leaves it queued; the late PONG, after the
        link is back, raises InvalidStateError in ``_process_pong``, which ends
        the read loop while the client stays "connected" until missed pings are
        noticed (nats.py #624/#129). Cancelled futures are swapped for fresh
        ones before their PONG comes; if the read loop died anyway, the
        connection is handed to nats-py's own reconnect as a stale one.
        """
        ready = self.ready
        while True:
            await asyncio.sleep(NATS_WATCH_INTERVAL)
            nc = self.nc
            if nc is None:
                continue
            natsconn.repair_pongs(nc)
            if nc.is_connected and not natsconn.is_reading(nc):
                log.warning("NATS: the client stopped reading its connection; reconnecting")
                try:
                    await natsconn.reconnect_stale(nc)
                except Exception as exc:  # tried again on the next round
                    log.warning("NATS: cannot replace the connection: %r", exc)
            if self.ready != ready:
                ready = self.ready
                self._on_ready_change()  # the scheduler must know at once whether to send us work

    async def run(self) -> None:
        """Join or leave the location's queue group as load and links change. For ever."""
        while True:
            self.changed.clear()
            await self.reconcile()
            await wait_set(self.changed, RECONCILE_INTERVAL)

    async def reconcile(self) -> None:
        """Join or leave the location's queue group, as the runner and the state want now."""
        want = not (self.state.stopping or self.runner.saturated or self.state.autonomous)
        if want and self.shared is None and self.nc is not None:
            shared, _ = self.subjects
            try:
                self.shared = await self.nc.subscribe(
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
                sub, self.shared = self.shared, None
                await self.leave(sub)
                return
            if self.pauses:
                self.resumes += 1
                log.info(
                    "taking requests for %s again (in flight: %d)",
                    self.location,
                    self.runner.in_flight,
                )
            self._membership_changed()
        elif not want and self.shared is not None:
            sub, self.shared = self.shared, None
            self.pauses += 1
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
            self._membership_changed()
            await self.leave(sub)

    def _membership_changed(self) -> None:
        if self._on_membership_change is not None:
            self._on_membership_change()

    async def leave_all(self) -> None:
        """Leave both subjects (stopping); the requests already received still run."""
        shared, own, self.shared, self.own = self.shared, self.own, None, None
        for sub in (shared, own):
            if sub is not None:
                await self.leave(sub)

    async def close(self) -> None:
        """Close the connection (bounded)."""
        await natsconn.close(self.nc)

    async def leave(self, sub: Subscription) -> None:
        """Leave a subject, still running the requests already received (bounded wait).

        Connected: ``drain`` (the server stops sending at once; what already
        arrived is processed). Not connected: ``unsubscribe``, local, so that
        the client does not subscribe again when it reconnects.
        """
        nc = self.nc
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
