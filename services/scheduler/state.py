"""The state keeper: turns poll results into service state, outages and events.

A single task applies every observation and every inventory change in arrival
order, so nothing about one service ever races, and transitions are written in
batches: one transaction carries the outages and the events of a whole batch.
While the store is unavailable the keeper retries and its bounded queue
fills, which pushes back on the result streams instead of dropping anything.

Rules (DESIGN.md, issue 3):

* UNKNOWN only updates the last-poll fields: it never opens or closes an outage
  and never counts towards a confirmation.
* ``confirm_down`` consecutive DOWN results declare a service DOWN: its outage
  opens at the first of them (``service lost`` + ``outage opened``);
  ``confirm_up`` consecutive UP results close it at the first of those
  (``service regained`` + ``outage closed``). Defaults 1 and 1 (OpenNMS).
* Node-outage processing: a service declared DOWN on an interface with a
  critical service triggers an immediate poll of the critical service; if that
  is down too, the interface is down (``interface down``, or ``node down`` when
  it was the node's last interface up): every service of the interface gets an
  outage caused by that one event and no individual event. Recovery of the
  critical service closes them with ``interface up`` / ``node up``.
* Flapping: ``threshold`` changes in the last ``window`` UP/DOWN results emit
  ``service flapping`` once; lost/regained events are then suppressed (outages
  are still recorded) until the service settles (``service settled``).
* Maintenance windows: events are emitted but marked ``suppressed``.
* Stale: a service without any result for two intervals emits ``poller stale`` once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.core.backoff import Backoff
from services.core.events import Event, make_event
from services.core.status import Status
from services.core.tasks import finish_writing
from services.core.wire import clip_reason
from services.scheduler import metrics
from services.scheduler.model import (
    InterfaceState,
    NodeState,
    Observation,
    OutageRef,
    ServiceKey,
    ServiceRuntime,
)
from services.scheduler.packages import DEFAULT_POLICY, Policy
from services.scheduler.store import DownElement, OutageRow, SchedulerStore, StateRow, Transaction
from services.scheduler.timing import effective_interval

log = logging.getLogger(__name__)

SOURCE = "scheduler"
MAX_BATCH = 2000
MAX_HISTORY_BUFFER = 200_000


class Scheduling(Protocol):
    """What the keeper asks of the dispatcher."""

    def reschedule(self, key: ServiceKey) -> None: ...

    def poll_now(self, key: ServiceKey, *, urgent: bool) -> str | None: ...


@dataclass(slots=True)
class _Command:
    fn: Callable[[], Awaitable[Any]]
    done: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(slots=True)
class _Write:
    """One store write of a batch. Memory is updated when the batch is computed;
    the writes are replayed as a whole if the transaction has to be retried."""

    kind: str  # open | close | events | down | up
    ref: OutageRef | None = None
    key: ServiceKey | None = None
    at: float = 0.0
    reason: str = ""
    event_id: str | None = None
    cause: str = "service"
    cause_event_id: str | None = None
    events: list[Event] = field(default_factory=list)
    #: (event, data field, outage) pairs: the outage id goes into the event once known.
    patch: list[tuple[Event, str, OutageRef]] = field(default_factory=list)
    element: DownElement | None = None


class StateKeeper:
    """Owns the assured state of every service (see the module docstring)."""

    def __init__(
        self,
        services: dict[ServiceKey, ServiceRuntime],
        store: SchedulerStore,
        on_events: Callable[[], None],
        *,
        interfaces: dict[tuple[str, str], InterfaceState] | None = None,
        nodes: dict[str, NodeState] | None = None,
        keep_history: bool = True,
        queue_size: int = 20_000,
    ) -> None:
        self.services = services
        self.interfaces = interfaces if interfaces is not None else {}
        self.nodes = nodes if nodes is not None else {}
        self.store = store
        self._on_events = on_events
        self._queue: asyncio.Queue[Observation | _Command] = asyncio.Queue(maxsize=queue_size)
        self._dirty: set[ServiceKey] = set()
        self._history: deque[dict[str, Any]] = deque()
        self.keep_history = keep_history
        self.history_dropped = 0
        self.applied = 0
        self.scheduling: Scheduling | None = None
        #: PollNow callers waiting for the result of a request id.
        self.waiters: dict[str, list[asyncio.Future[ServiceRuntime]]] = {}
        self._sweep_keys: list[ServiceKey] = []
        # The batch being computed.
        self._writes: list[_Write] = []
        self._follow: list[tuple[ServiceKey, bool]] = []

    # -- intake ----------------------------------------------------------------------

    async def submit(self, obs: Observation) -> None:
        """Queue an observation; waits while the queue is full (back-pressure)."""
        await self._queue.put(obs)

    async def call(self, fn: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
        """Run ``fn`` in the keeper's task, in order with observations; returns its result.

        Raises ``TimeoutError`` when the keeper cannot get to it in time (e.g.
        the store is down and it is retrying); the command itself still runs
        when its turn comes, so callers must be idempotent (PutNode is).
        """
        cmd = _Command(fn)
        async with asyncio.timeout(timeout):
            await self._queue.put(cmd)
            return await asyncio.shield(cmd.done)

    def wait_result(self, request_id: str) -> asyncio.Future[ServiceRuntime]:
        """A future resolved with the service once the result of ``request_id`` is applied."""
        fut: asyncio.Future[ServiceRuntime] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(request_id, []).append(fut)
        return fut

    @property
    def backlog(self) -> int:
        """Observations waiting to be applied."""
        return self._queue.qsize()

    async def run(self) -> None:
        """Apply observations and commands for ever, observations in batches."""
        while True:
            item = await self._queue.get()
            batch: list[Observation] = []
            while True:
                if isinstance(item, _Command):
                    if batch:
                        await self.apply(batch)
                        batch = []
                    await self._run_command(item)
                else:
                    batch.append(item)
                if len(batch) >= MAX_BATCH or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            if batch:
                await self.apply(batch)

    @staticmethod
    async def _run_command(cmd: _Command) -> None:
        try:
            result = await cmd.fn()
        except asyncio.CancelledError:
            cmd.done.cancel()
            raise
        except Exception as exc:
            if not cmd.done.done():
                cmd.done.set_exception(exc)
            return
        if not cmd.done.done():
            cmd.done.set_result(result)

    # -- applying results ------------------------------------------------------------

    def _policy(self, rt: ServiceRuntime) -> Policy:
        return rt.spec.policy or DEFAULT_POLICY

    def _itf(self, rt: ServiceRuntime) -> InterfaceState | None:
        return self.interfaces.get(rt.key.interface)

    async def apply(self, batch: Iterable[Observation]) -> None:
        """Apply observations in order; persist the transitions they cause."""
        self._writes, self._follow = [], []
        resolved: list[tuple[str, ServiceRuntime]] = []
        reschedule: set[ServiceKey] = set()
        counts = dict.fromkeys(Status, 0)
        for obs in batch:
            rt = self.services.get(obs.key)
            if rt is None:
                continue  # unconfigured since the poll was sent
            self.applied += 1
            counts[obs.status] += 1
            self._record(rt, obs)
            if obs.request_id in self.waiters:
                resolved.append((obs.request_id, rt))
            rt.stale = False
            if obs.status is Status.UNKNOWN:
                self._critical_answered(rt, obs)
                continue
            self._flapping(rt, obs)
            before = (rt.status, rt.against)
            self._judge(rt, obs)
            self._critical_answered(rt, obs)
            if (rt.status, rt.against) != before:
                reschedule.add(rt.key)
        for status, n in counts.items():
            if n:
                metrics.RESULTS.labels(status.value).inc(n)
        writes, follow = self._writes, self._follow
        self._writes, self._follow = [], []
        if writes:
            await self._persist(writes)
        if self.scheduling is not None:
            for key in reschedule:
                if key in self.services:
                    self.scheduling.reschedule(key)
            for key, urgent in follow:
                if key in self.services:
                    if not urgent:
                        # Back on its schedule (it may have been dropped while held).
                        self.scheduling.reschedule(key)
                    self.scheduling.poll_now(key, urgent=urgent)
        for rid, rt in resolved:
            for fut in self.waiters.pop(rid, []):
                if not fut.done():
                    fut.set_result(rt)

    def _record(self, rt: ServiceRuntime, obs: Observation) -> None:
        # A replayed (store-and-forward) result older than what we have is history,
        # not the latest poll.
        if rt.last_poll_at is None or obs.at >= rt.last_poll_at:
            rt.last_poll_status = obs.status
            rt.last_reason = obs.reason
            rt.last_poll_at = obs.at
            if obs.status is not Status.UNKNOWN:
                rt.response_time_ms = obs.response_time_ms
                rt.values = dict(obs.values)
        self._dirty.add(obs.key)
        if self.keep_history:
            if len(self._history) >= MAX_HISTORY_BUFFER:
                self._history.popleft()
                self.history_dropped += 1
            self._history.append(
                {
                    "node_id": obs.key.node_id,
                    "ip": obs.key.ip,
                    "service": obs.key.service,
                    "status": obs.status.value,
                    "reason": clip_reason(obs.reason),
                    "response_time_ms": obs.response_time_ms,
                    "values": obs.values,
                    "at": obs.at,
                    "system_id": obs.system_id,
                }
            )

    def _judge(self, rt: ServiceRuntime, obs: Observation) -> None:
        """Confirmation counting and declaration of DOWN / UP."""
        policy = self._policy(rt)
        if obs.status is Status.DOWN:
            if rt.status is Status.DOWN:
                rt.against, rt.against_since = 0, None
                return
            rt.against += 1
            if rt.against_since is None:
                rt.against_since = obs.at
            if rt.against >= policy.confirm_down:
                since = rt.against_since
                rt.against, rt.against_since = 0, None
                self._declare_down(rt, since, obs.reason)
            return
        if rt.status is Status.DOWN:
            rt.against += 1
            if rt.against_since is None:
                rt.against_since = obs.at
            if rt.against >= policy.confirm_up:
                since = rt.against_since
                rt.against, rt.against_since = 0, None
                self._declare_up(rt, since)
            return
        rt.against, rt.against_since = 0, None
        if rt.status is Status.UNKNOWN:
            rt.status, rt.status_since = Status.UP, obs.at
        rt.polling_stopped = False

    def _declare_down(self, rt: ServiceRuntime, since: float, reason: str) -> None:
        rt.status, rt.status_since = Status.DOWN, since
        itf = self._itf(rt)
        if itf is not None and itf.critical == rt.key and not itf.down:
            self._interface_down(rt, itf, since, reason)
        elif itf is not None and itf.down and itf.critical != rt.key:
            # Polled although its interface is down (e.g. poll-now): blame the interface.
            self._open_caused(rt, itf, since, reason)
        elif (
            itf is not None and itf.critical not in (None, rt.key) and itf.critical in self.services
        ):
            # Is it the service, or the whole interface? Ask the critical service first.
            rt.awaiting_critical = True
            assert itf.critical is not None
            self._follow.append((itf.critical, True))
        else:
            self._lost(rt, since, reason)

    def _declare_up(self, rt: ServiceRuntime, since: float) -> None:
        rt.status, rt.status_since = Status.UP, since
        rt.polling_stopped = False
        if rt.awaiting_critical:
            rt.awaiting_critical = False  # recovered before anything was reported
            return
        itf = self._itf(rt)
        if itf is not None and itf.critical == rt.key and itf.down:
            self._interface_up(rt, itf, since)
        else:
            self._regained(rt, since)

    def _critical_answered(self, rt: ServiceRuntime, obs: Observation) -> None:
        """Release services waiting on this critical service unless it is (becoming) down."""
        itf = self._itf(rt)
        if itf is None or itf.critical != rt.key or itf.down:
            return
        if rt.status is Status.DOWN or (obs.status is Status.DOWN and rt.suspect):
            return  # down, or being confirmed down: wait
        why = "" if obs.status is Status.UP else " (critical service state unknown)"
        for other in self._services_of(itf):
            if other.awaiting_critical:
                other.awaiting_critical = False
                self._lost(other, other.status_since or obs.at, other.last_reason + why)

    def _services_of(self, itf: InterfaceState) -> list[ServiceRuntime]:
        return [rt for k in sorted(itf.services) if (rt := self.services.get(k)) is not None]

    def _flapping(self, rt: ServiceRuntime, obs: Observation) -> None:
        cfg = self._policy(rt).flapping
        if cfg is None:
            return
        if rt.history is None or rt.history.maxlen != cfg.window:
            rt.history = deque(rt.history or (), maxlen=cfg.window)
        rt.history.append(obs.status)
        recent = list(rt.history)
        changes = sum(1 for a, b in itertools.pairwise(recent) if a is not b)
        if not rt.flapping and changes >= cfg.threshold:
            rt.flapping = True
            self._dirty.add(rt.key)
            self._events(
                self._event("service", "flapping", rt, obs.at, changes=changes, window=cfg.window)
            )
        elif rt.flapping and len(recent) >= cfg.window and changes * 2 < cfg.threshold:
            rt.flapping = False
            self._dirty.add(rt.key)
            self._events(self._event("service", "settled", rt, obs.at, status=rt.status.value))

    # -- transitions: memory now, writes for the batch's transaction -------------------

    def _events(
        self, *events: Event, patch: list[tuple[Event, str, OutageRef]] | None = None
    ) -> None:
        self._writes.append(_Write("events", events=list(events), patch=patch or []))

    def _suppression(self, rt: ServiceRuntime, at: float) -> str | None:
        window = self._policy(rt).in_maintenance(at)
        return f"maintenance: {window.name}" if window is not None else None

    def _lost(self, rt: ServiceRuntime, at: float, reason: str) -> None:
        suppressed = self._suppression(rt, at)
        ref = OutageRef()
        rt.outage, rt.outage_cause = ref, "service"
        lost = self._event("service", "lost", rt, at, reason=reason, suppressed=suppressed)
        self._writes.append(
            _Write("open", ref=ref, key=rt.key, at=at, reason=reason, event_id=lost.id)
        )
        opened = self._event(
            "outage",
            "opened",
            rt,
            at,
            reason=reason,
            lostEventId=lost.id,
            suppressed=suppressed or ("flapping" if rt.flapping else None),
        )
        # While flapping, the individual lost/regained events are what floods consumers.
        events = [opened] if rt.flapping else [lost, opened]
        self._events(*events, patch=[(e, "outageId", ref) for e in events])

    def _regained(self, rt: ServiceRuntime, at: float) -> None:
        ref, rt.outage, rt.outage_cause = rt.outage, None, ""
        suppressed = self._suppression(rt, at)
        regained = self._event("service", "regained", rt, at, suppressed=suppressed)
        events = [] if rt.flapping else [regained]
        if ref is not None:
            self._writes.append(
                _Write("close", ref=ref, at=at, reason="service regained", event_id=regained.id)
            )
            events.append(
                self._event(
                    "outage",
                    "closed",
                    rt,
                    at,
                    regainedEventId=regained.id,
                    reason="service regained",
                    suppressed=suppressed or ("flapping" if rt.flapping else None),
                )
            )
        self._events(
            *events, patch=[(e, "outageId", ref) for e in events] if ref is not None else []
        )

    def _open_caused(self, rt: ServiceRuntime, itf: InterfaceState, at: float, reason: str) -> None:
        if rt.outage is not None:
            return
        node = self.nodes.get(itf.node_id)
        cause = "node" if node is not None and node.down else "interface"
        event_id = (node.down_event_id if cause == "node" and node else itf.down_event_id) or ""
        rt.status, rt.status_since = Status.DOWN, rt.status_since or at
        rt.outage, rt.outage_cause = OutageRef(), cause
        self._writes.append(
            _Write(
                "open",
                ref=rt.outage,
                key=rt.key,
                at=at,
                reason=reason,
                event_id=event_id,
                cause=cause,
                cause_event_id=event_id,
            )
        )
        self._dirty.add(rt.key)

    def _interface_down(
        self, critical: ServiceRuntime, itf: InterfaceState, at: float, reason: str
    ) -> None:
        node = self.nodes.get(itf.node_id)
        itf.down, itf.down_since = True, at
        node_down = node is not None and all(
            i.down for i in self.interfaces.values() if i.node_id == itf.node_id
        )
        kind = "node" if node_down else "interface"
        event = self._element_event(
            kind,
            "down",
            itf,
            critical.spec.location,
            at,
            criticalService=critical.key.service,
            reason=reason,
            nodeLabel=critical.spec.node_label or None,
            suppressed=self._suppression(critical, at),
        )
        itf.down_event_id = event.id
        self._writes.append(
            _Write("down", element=DownElement("interface", itf.node_id, itf.ip, at, event.id))
        )
        if node_down and node is not None:
            node.down, node.down_since, node.down_event_id = True, at, event.id
            self._writes.append(
                _Write("down", element=DownElement("node", itf.node_id, "", at, event.id))
            )
        affected = 0
        for rt in self._services_of(itf):
            if rt.outage is not None:
                continue  # already down on its own, with its own outage
            rt.awaiting_critical = False
            rt.status, rt.status_since = Status.DOWN, at
            rt.against, rt.against_since = 0, None
            rt.outage, rt.outage_cause = OutageRef(), kind
            self._writes.append(
                _Write(
                    "open",
                    ref=rt.outage,
                    key=rt.key,
                    at=at,
                    reason=reason if rt is critical else f"{kind} down",
                    event_id=event.id,
                    cause=kind,
                    cause_event_id=event.id,
                )
            )
            self._dirty.add(rt.key)
            affected += 1
        event.data["outages"] = affected
        self._events(event)

    def _interface_up(self, critical: ServiceRuntime, itf: InterfaceState, at: float) -> None:
        node = self.nodes.get(itf.node_id)
        node_was_down = node is not None and node.down
        kind = "node" if node_was_down else "interface"
        event = self._element_event(
            kind,
            "up",
            itf,
            critical.spec.location,
            at,
            criticalService=critical.key.service,
            nodeLabel=critical.spec.node_label or None,
            suppressed=self._suppression(critical, at),
        )
        events = [event]
        itf.down, itf.down_since, itf.down_event_id = False, None, None
        self._writes.append(
            _Write("up", element=DownElement("interface", itf.node_id, itf.ip, at, ""))
        )
        if node_was_down and node is not None:
            node.down, node.down_since, node.down_event_id = False, None, None
            self._writes.append(_Write("up", element=DownElement("node", itf.node_id, "", at, "")))
            # Interfaces still down were covered by the node event: say so now.
            for other in self.interfaces.values():
                if other.node_id == itf.node_id and other.down and other is not itf:
                    events.append(
                        self._element_event(
                            "interface",
                            "down",
                            other,
                            critical.spec.location,
                            at,
                            reason="still down after node up",
                        )
                    )
        closed = 0
        for rt in self._services_of(itf):
            if rt.outage_cause in ("interface", "node") and rt.outage is not None:
                self._writes.append(
                    _Write("close", ref=rt.outage, at=at, reason=f"{kind} up", event_id=event.id)
                )
                rt.outage, rt.outage_cause = None, ""
                closed += 1
            if rt.status is Status.DOWN and rt.outage is None:
                # Presumed up with its interface; an immediate poll tells the truth.
                rt.status, rt.status_since = Status.UP, at
            rt.against, rt.against_since = 0, None
            rt.polling_stopped = False
            self._dirty.add(rt.key)
            if rt is not critical:
                self._follow.append((rt.key, False))
        event.data["outagesClosed"] = closed
        self._events(*events)

    @staticmethod
    def _element_event(
        kind: str, action: str, itf: InterfaceState, location: str, at: float, **data: Any
    ) -> Event:
        """An ``interface`` event (typeId ``node/ip``) or a ``node`` event (typeId ``node``)."""
        node = kind == "node"
        return make_event(
            kind,
            action,
            source=SOURCE,
            type_id=itf.node_id if node else f"{itf.node_id}/{itf.ip}",
            node_id=itf.node_id,
            location=location,
            created_at=at,
            ip=None if node else itf.ip,
            **data,
        )

    @staticmethod
    def _event(kind: str, action: str, rt: ServiceRuntime, at: float, **data: Any) -> Event:
        return make_event(
            kind,
            action,
            source=SOURCE,
            type_id=str(rt.key),
            node_id=rt.key.node_id,
            location=rt.spec.location,
            created_at=at,
            ip=rt.key.ip,
            service=rt.key.service,
            monitor=rt.spec.monitor,
            nodeLabel=rt.spec.node_label or None,
            **data,
        )

    # -- persisting ------------------------------------------------------------------

    async def _persist(self, writes: list[_Write]) -> None:
        backoff = Backoff()
        emitted: list[Event] = []
        while True:
            try:
                emitted = await finish_writing(self._write_all(writes), "state transitions")
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next()
                log.error("store write failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
        for e in emitted:
            metrics.EVENTS_EMITTED.labels(e.type, e.action).inc()
        if emitted:
            self._on_events()

    async def _write_all(self, writes: list[_Write]) -> list[Event]:
        emitted: list[Event] = []
        async with self.store.transaction() as tx:
            for w in writes:
                emitted += await self._write(tx, w)
        return emitted

    @staticmethod
    async def _write(tx: Transaction, w: _Write) -> list[Event]:
        if w.kind == "open":
            assert w.ref is not None and w.key is not None
            w.ref.id = await tx.open_outage(
                w.key, w.at, w.reason, w.event_id or "", w.cause, w.cause_event_id
            )
        elif w.kind == "close":
            assert w.ref is not None
            if w.ref.id is not None:
                await tx.close_outage(w.ref.id, w.at, w.event_id, w.reason)
        elif w.kind == "down":
            assert w.element is not None
            await tx.mark_down(w.element)
        elif w.kind == "up":
            assert w.element is not None
            await tx.mark_up(w.element.kind, w.element.node_id, w.element.ip)
        elif w.kind == "events":
            for event, name, ref in w.patch:
                event.data[name] = ref.id
            await tx.enqueue(w.events)
            return w.events
        return []

    async def emit(self, events: list[Event]) -> None:
        """Durably queue events that no service transition carries (minions, locations, ...)."""
        if not events:
            return

        async def write() -> None:
            async with self.store.transaction() as tx:
                await tx.enqueue(events)

        await finish_writing(write(), "events")
        for e in events:
            metrics.EVENTS_EMITTED.labels(e.type, e.action).inc()
        self._on_events()

    # -- stale detection -------------------------------------------------------------

    def polled(self, rt: ServiceRuntime) -> bool:
        """Whether the scheduler currently polls this service at all."""
        if rt.paused or rt.polling_stopped:
            return False
        itf = self._itf(rt)
        return not (itf is not None and itf.down and itf.critical != rt.key)

    async def sweep_stale(self, now: float, limit: int | None = None) -> int:
        """Emit ``poller stale`` once for each service without a result for 2 intervals.

        With ``limit``, only that many services are checked per call, round-robin,
        so that a large inventory costs a bounded slice of each second.
        """
        events = []
        if limit is None:
            batch = list(self.services.values())
        else:
            if not self._sweep_keys:
                self._sweep_keys = list(self.services)
            batch = []
            while self._sweep_keys and len(batch) < limit:
                rt_ = self.services.get(self._sweep_keys.pop())
                if rt_ is not None:
                    batch.append(rt_)
        for rt in batch:
            if not self.polled(rt):
                rt.stale = False
                continue
            interval = effective_interval(rt, now)
            # Since the last result, or since this process scheduled the service
            # (a restart after a long stop is not staleness).
            reference = max(rt.last_poll_at or 0.0, rt.added)
            if interval is None or reference == 0.0:
                continue
            late = now - reference > 2 * interval
            if late and not rt.stale:
                rt.stale = True
                events.append(
                    self._event(
                        "poller",
                        "stale",
                        rt,
                        now,
                        lastPollAt=reference if rt.last_poll_at is not None else None,
                        interval=interval,
                    )
                )
        if events:
            await self.emit(events)
        return len(events)

    async def run_stale_sweeper(self, period: float = 1.0, per_tick: int = 5000) -> None:
        """Sweep for ever, ``per_tick`` services every ``period`` seconds.

        100k services are all checked every 20 s: plenty, since staleness is
        measured in intervals.
        """
        import time

        while True:
            await asyncio.sleep(period)
            try:
                await self.sweep_stale(time.time(), limit=per_tick)
            except Exception as exc:
                log.warning("stale sweep failed: %s", exc)

    # -- start-up, inventory changes, persistence --------------------------------------

    async def restore(
        self,
        states: dict[ServiceKey, StateRow],
        open_outages: list[OutageRow],
        down: list[DownElement] | None = None,
    ) -> list[OutageRow]:
        """Load the last known state; returns open outages of services no longer configured.

        A service with an open outage starts DOWN with that outage and its
        cause; no event is emitted for the restored state.
        """
        for key, row in states.items():
            rt = self.services.get(key)
            if rt is None:
                continue
            rt.status = Status(row.status) if row.status in Status.__members__ else Status.UNKNOWN
            rt.status_since = row.status_since
            rt.last_poll_status = Status(row.last_poll_status) if row.last_poll_status else None
            rt.last_reason = row.last_reason
            rt.last_poll_at = row.last_poll_at
            rt.response_time_ms = row.response_time_ms
            rt.paused = row.paused
            rt.flapping = row.flapping
        orphans = []
        for outage in open_outages:
            rt = self.services.get(outage.key)
            if rt is None:
                orphans.append(outage)
                continue
            rt.status = Status.DOWN
            rt.status_since = rt.status_since or outage.opened_at
            rt.outage = OutageRef(outage.id)
            rt.outage_cause = outage.cause
            if not rt.last_reason:
                rt.last_reason = outage.reason
        for el in down or []:
            if (
                el.kind == "interface"
                and (itf := self.interfaces.get((el.node_id, el.ip))) is not None
            ):
                itf.down, itf.down_since, itf.down_event_id = True, el.since, el.event_id
            elif el.kind == "node" and (node := self.nodes.get(el.node_id)) is not None:
                node.down, node.down_since, node.down_event_id = True, el.since, el.event_id
        return orphans

    async def close_unmanaged(
        self, orphans: list[OutageRow], at: float, reason: str = "unmanaged"
    ) -> None:
        """Close outages of services that are no longer configured."""
        if not orphans:
            return
        async with self.store.transaction() as tx:
            for o in orphans:
                if await tx.close_outage(o.id, at, None, reason):
                    await tx.enqueue(
                        [
                            make_event(
                                "outage",
                                "closed",
                                source=SOURCE,
                                type_id=str(o.key),
                                node_id=o.key.node_id,
                                created_at=at,
                                ip=o.key.ip,
                                service=o.key.service,
                                outageId=o.id,
                                reason=reason,
                            )
                        ]
                    )
        log.info("closed %d outage(s) of services no longer monitored (%s)", len(orphans), reason)
        self._on_events()

    async def forget(self, runtimes: list[ServiceRuntime], at: float, reason: str) -> None:
        """Services removed from the inventory: close their outages (with ``reason``),
        announce ``service deleted``, drop their state."""
        orphans = [
            OutageRow(rt.open_outage_id, rt.key, rt.status_since or at, "", "", None, None, None)
            for rt in runtimes
            if rt.open_outage_id is not None
        ]
        await self.close_unmanaged(orphans, at, reason)
        await self.emit(
            [self._event("service", "deleted", rt, at, reason=reason) for rt in runtimes]
        )
        for rt in runtimes:
            self._dirty.discard(rt.key)
            for fut in self.waiters.pop(rt.in_flight or "", []):
                if not fut.done():
                    fut.set_result(rt)
        await self.store.delete_states([rt.key for rt in runtimes])

    async def retire(self, keys: list[ServiceKey], at: float, reason: str = "unmanaged") -> None:
        """Stored state of services no longer configured (found at start-up): announce and drop it."""
        if not keys:
            return
        await self.emit(
            [
                make_event(
                    "service",
                    "deleted",
                    source=SOURCE,
                    type_id=str(k),
                    node_id=k.node_id,
                    created_at=at,
                    ip=k.ip,
                    service=k.service,
                    reason=reason,
                )
                for k in keys
            ]
        )
        await self.store.delete_states(keys)

    def mark_dirty(self, key: ServiceKey) -> None:
        """Persist this service's state at the next flush."""
        self._dirty.add(key)

    def take_dirty(self) -> list[StateRow]:
        """Rows for every service changed since the last call."""
        rows = []
        for key in self._dirty:
            rt = self.services.get(key)
            if rt is None:
                continue
            rows.append(
                StateRow(
                    key=key,
                    status=rt.status.value,
                    status_since=rt.status_since,
                    last_poll_status=rt.last_poll_status.value if rt.last_poll_status else None,
                    last_reason=rt.last_reason,
                    last_poll_at=rt.last_poll_at,
                    response_time_ms=rt.response_time_ms,
                    paused=rt.paused,
                    flapping=rt.flapping,
                )
            )
        self._dirty.clear()
        return rows

    async def flush(self) -> None:
        """Write changed service states and buffered results.

        On failure they stay queued for the next flush.
        """
        rows = self.take_dirty()
        try:
            await finish_writing(self.store.save_states(rows), "service states")
        except BaseException:  # cancelled too: the final flush writes them (an upsert)
            self._dirty.update(r.key for r in rows)
            raise
        history = list(self._history)
        self._history.clear()
        try:
            await finish_writing(self.store.add_results(history), "poll history")
        except Exception:
            self._history.extendleft(reversed(history))
            while len(self._history) > MAX_HISTORY_BUFFER:
                self._history.popleft()
                self.history_dropped += 1
            raise
        counts = {s: 0 for s in Status}
        for rt in self.services.values():
            counts[rt.status] += 1
        for s, n in counts.items():
            metrics.SERVICES.labels(s.value).set(n)

    async def run_flusher(self, interval: float) -> None:
        """Flush every ``interval`` seconds for ever."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("flushing service state failed: %s", exc)

    async def run_pruner(self, retention: float, period: float = 300.0) -> None:
        """Delete results older than ``retention`` every ``period`` seconds."""
        import time

        while True:
            try:
                removed = await self.store.prune_results(time.time() - retention)
                if removed:
                    log.info("pruned %d result(s) older than the retention", removed)
            except Exception as exc:
                log.warning("pruning results failed: %s", exc)
            await asyncio.sleep(period)
