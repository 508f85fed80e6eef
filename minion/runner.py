"""Runs poll requests: deadlines, retries, concurrency, and never a crash.

Every request carries ``expires_at`` (its TTL). A request that arrives after
it is dropped and counted; one that is still running when it passes is
abandoned without a result (the scheduler has already recorded UNKNOWN).
Within the TTL, each attempt gets the request's ``timeout``; a DOWN attempt
is retried ``retries`` times while time remains.

Flow control: the runner is *saturated* when more than ``max_in_flight``
requests are running or waiting (``pause_at``: a tenth more), and stays so
until it is down to ``low_water``; ``on_pressure`` is called at each change,
and the minion then stops (and resumes) taking requests from its location's
queue group, so that NATS hands them to the other minions there. The margin
matters: the scheduler keeps at most the capacity a minion announced
(``max_in_flight``) in flight, so its requests alone never make the minion
leave the group; only an uneven share among several minions (or workers)
does. Left at exactly ``max_in_flight``, a minion alone at its location
would leave the group as the scheduler sends its next requests, and NATS
would drop them (nobody subscribed): UNKNOWN at their TTL. Requests that
still arrive (already on their way, or aimed at this minion) wait, up to
``max_queued``; beyond that they are answered UNKNOWN ("minion overloaded")
without running. Nothing queues without bound.

Per poll, the runner costs one task (only once the poll runs: a waiting
request is a queue entry), one timer per attempt (:class:`Deadline`, whose
end is never past the TTL, so no second timer guards the TTL) and one result
message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from pydantic import ValidationError
from vigil.v1 import poll_pb2

from minion.monitors.base import MonitorParams, PollContext, PollOutcome, Status, Target
from minion.monitors.registry import MonitorSet, UnknownMonitorError
from services.core.durations import format_duration
from services.core.status import status_to_pb
from services.core.timeutil import from_duration, from_timestamp, set_timestamp
from services.core.validation import describe
from services.core.wire import clip_reason

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3.0
PARAMS_CACHE_SIZE = 10_000


#: Where a result goes, with its request's ``expires_at`` (wall clock).
Emit = Callable[[poll_pb2.PollResult, float], None]
#: A request waiting for a free slot: it, its TTL end (loop clock), ``expires_at``, its emit.
Waiting = tuple[poll_pb2.PollRequest, float, float, Emit]


class Deadline:
    """``asyncio.timeout_at`` for one attempt, for less: one timer handle, set once.

    Within the ``with`` block the current task is cancelled at ``when`` (loop
    clock) and the cancellation leaves the block as :class:`TimeoutError`; a
    cancellation from elsewhere goes through as itself (the same bookkeeping
    as ``asyncio.Timeout``: ``cancelling()`` at entry, ``uncancel()`` at exit).
    About a third of the CPU of ``asyncio.timeout_at``, which reschedules and
    keeps state for what the runner never does (a deadline moved later).
    """

    __slots__ = ("_cancelling", "_fired", "_handle", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._fired = False
        self._handle = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def __enter__(self) -> Deadline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._handle.cancel()
        if not self._fired:
            return
        # Ours: undo our cancel; it ends the block as a timeout unless another one is pending.
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


class RunnerStats:
    """Counters reported in heartbeats and metrics."""

    def __init__(self) -> None:
        self.received = 0
        self.done = 0
        self.dropped_expired = 0
        self.abandoned = 0
        self.malformed = 0
        self.overloaded = 0
        #: Times the runner became saturated (intake paused).
        self.saturated = 0
        #: Most requests accepted at once.
        self.peak_in_flight = 0


def attempt_cutoff(deadline: float, timeout: float, expires: float) -> float:
    """When the runner gives up on an attempt that ends at ``deadline`` (loop time).

    Monitors that explain a timeout themselves ("no SNMP response from ...")
    report right at their deadline; a short grace lets them, under load too,
    before the runner's generic "timed out". Never past the TTL (``expires``).

    The grace is 20 % of ``timeout``, at least 0.2 s and at most 1 s; a monitor
    without a deadline of its own (``http``) may run that long past ``timeout``
    (documented in docs/monitors.md, "Rules every monitor keeps").
    """
    return min(deadline + min(1.0, max(0.2, 0.2 * timeout)), expires)


class PollRunner:
    """Accepts requests and emits results through ``emit``."""

    def __init__(
        self,
        monitors: MonitorSet,
        system_id: str,
        emit: Emit,
        *,
        max_in_flight: int = 1000,
        max_queued: int | None = None,
        low_water: int | None = None,
        pause_at: int | None = None,
        on_pressure: Callable[[], None] | None = None,
    ) -> None:
        self.monitors = monitors
        self.system_id = system_id
        self._emit = emit
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued if max_queued is not None else 4 * max_in_flight
        self.low_water = low_water if low_water is not None else (3 * max_in_flight) // 4
        #: Accepted requests at which the runner is saturated (see the module's docstring).
        self.pause_at = (
            pause_at if pause_at is not None else max_in_flight + max(1, max_in_flight // 10)
        )
        self.on_pressure = on_pressure
        self._saturated = False
        #: Polls running (at most ``max_in_flight``), and requests waiting for a slot.
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: deque[Waiting] = deque()
        self._params: OrderedDict[tuple[str, bytes], MonitorParams | str] = OrderedDict()
        self.stats = RunnerStats()

    @property
    def in_flight(self) -> int:
        """Requests accepted and not yet finished (running or waiting for a slot)."""
        return len(self._tasks) + len(self._waiting)

    @property
    def saturated(self) -> bool:
        """Past the in-flight cap (until back down to ``low_water``): take no more shared requests."""
        return self._saturated

    def _check_pressure(self) -> None:
        n = len(self._tasks) + len(self._waiting)
        if not self._saturated and n >= self.pause_at:
            self._saturated = True
            self.stats.saturated += 1
        elif self._saturated and n <= self.low_water:
            self._saturated = False
        else:
            return
        if self.on_pressure is not None:
            self.on_pressure()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._waiting:
            self._start_waiting()
        self._check_pressure()

    def _start(
        self, req: poll_pb2.PollRequest, expires: float, expires_at: float, emit: Emit
    ) -> None:
        task = asyncio.get_running_loop().create_task(self._run(req, expires, expires_at, emit))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _start_waiting(self) -> None:
        """Start waiting requests while there are free slots; those past their TTL are dropped."""
        now = asyncio.get_running_loop().time()
        while self._waiting and len(self._tasks) < self.max_in_flight:
            req, expires, expires_at, emit = self._waiting.popleft()
            if expires <= now:
                # TTL reached while waiting: the scheduler already counts it UNKNOWN.
                self.stats.abandoned += 1
                continue
            self._start(req, expires, expires_at, emit)

    # -- intake ----------------------------------------------------------------------

    async def on_message(self, msg: Any) -> None:
        """NATS callback: a PollBatch. Malformed messages are counted, never fatal."""
        try:
            batch = poll_pb2.PollBatch.FromString(msg.data)
        except DecodeError as exc:
            self.stats.malformed += 1
            log.warning("dropped a malformed poll message on %s: %s", msg.subject, exc)
            return
        if not batch.requests:
            # Protobuf decodes empty or unrelated bytes as an empty batch; the
            # scheduler never sends one, so it is garbage and counted as such.
            self.stats.malformed += 1
            log.warning(
                "dropped a poll message with no requests on %s (%d bytes)",
                msg.subject,
                len(msg.data),
            )
            return
        for req in batch.requests:
            self.submit(req)

    def submit(self, req: poll_pb2.PollRequest, emit: Emit | None = None) -> bool:
        """Start a request; returns ``False`` when it was dropped.

        Its result goes to ``emit`` (default: the runner's own).
        """
        emit = emit or self._emit
        self.stats.received += 1
        wall = time.time()
        if not req.HasField("expires_at") or not req.id:
            self.stats.malformed += 1
            log.warning("dropped poll request %r: no id or expires_at", req.id)
            return False
        left = from_timestamp(req.expires_at) - wall
        if left <= 0:
            self.stats.dropped_expired += 1
            log.debug("dropped request %s: expired %.3fs before arrival", req.id, -left)
            return False
        expires_at = from_timestamp(req.expires_at)
        if len(self._tasks) + len(self._waiting) >= self.max_queued:
            self.stats.overloaded += 1
            emit(
                self._result(
                    req, PollOutcome.unknown("minion overloaded: request not run"), wall, wall
                ),
                expires_at,
            )
            return False
        deadline = asyncio.get_running_loop().time() + left
        if len(self._tasks) < self.max_in_flight:
            self._start(req, deadline, expires_at, emit)
        else:
            self._waiting.append((req, deadline, expires_at, emit))
        accepted = len(self._tasks) + len(self._waiting)
        if accepted > self.stats.peak_in_flight:
            self.stats.peak_in_flight = accepted
        self._check_pressure()
        return True

    # -- execution -------------------------------------------------------------------

    async def _run(
        self, req: poll_pb2.PollRequest, expires: float, expires_at: float, emit: Emit
    ) -> None:
        started = time.time()
        # Every attempt ends by the TTL (its cutoff is never later): no timer of its own here.
        outcome = await self._poll(req, expires)
        if asyncio.get_running_loop().time() >= expires:
            # TTL reached: the scheduler already counts this poll as UNKNOWN.
            self.stats.abandoned += 1
            return
        self.stats.done += 1
        emit(self._result(req, outcome, started, time.time()), expires_at)

    def _parsed_params(self, req: poll_pb2.PollRequest, monitor: Any) -> MonitorParams | str:
        key = (req.monitor, req.params.SerializeToString(deterministic=True))
        cached = self._params.get(key)
        if cached is not None:
            self._params.move_to_end(key)
            return cached
        try:
            parsed: MonitorParams | str = monitor.parse_params(
                json_format.MessageToDict(req.params)
            )
        except ValidationError as exc:
            parsed = f"bad parameters for monitor {req.monitor}: {describe(exc, 'params')}"
        self._params[key] = parsed
        if len(self._params) > PARAMS_CACHE_SIZE:
            self._params.popitem(last=False)
        return parsed

    async def _poll(self, req: poll_pb2.PollRequest, expires: float) -> PollOutcome:
        try:
            monitor = self.monitors.get(req.monitor)
        except UnknownMonitorError:
            return PollOutcome.unknown(f"minion {self.system_id} has no monitor {req.monitor!r}")
        params = self._parsed_params(req, monitor)
        if isinstance(params, str):
            return PollOutcome.unknown(params)
        service = req.service
        target = Target(service.ip, service.node_id, service.service, req.location)
        timeout = from_duration(req.timeout) if req.HasField("timeout") else DEFAULT_TIMEOUT
        if timeout <= 0:
            timeout = DEFAULT_TIMEOUT
        loop = asyncio.get_running_loop()
        attempts = req.retries + 1
        attempt = 1
        while True:
            deadline = min(loop.time() + timeout, expires)
            ctx = PollContext(deadline, timeout, attempt)
            cutoff = attempt_cutoff(deadline, timeout, expires)
            outcome = await self._attempt(monitor, target, params, ctx, cutoff)
            if outcome.status is not Status.DOWN or attempt >= attempts or loop.time() >= expires:
                return outcome
            attempt += 1

    async def _attempt(
        self, monitor: Any, target: Target, params: MonitorParams, ctx: PollContext, cutoff: float
    ) -> PollOutcome:
        start = time.perf_counter()
        try:
            with Deadline(asyncio.get_running_loop(), cutoff):
                outcome: PollOutcome = await monitor.poll(target, params, ctx)
                return outcome
        except TimeoutError:
            return PollOutcome.down(
                f"timed out after {format_duration(ctx.timeout)}",
                (time.perf_counter() - start) * 1000,
            )
        except OSError as exc:
            return PollOutcome.down(f"{exc.strerror or exc}", (time.perf_counter() - start) * 1000)
        except Exception as exc:
            log.exception("monitor %s failed on %s", monitor.name, target.address)
            return PollOutcome.unknown(
                f"monitor {monitor.name} failed: {exc.__class__.__name__}: {exc}"
            )

    def _result(
        self, req: poll_pb2.PollRequest, outcome: PollOutcome, started: float, finished: float
    ) -> poll_pb2.PollResult:
        result = poll_pb2.PollResult(
            request_id=req.id,
            service=req.service,
            status=status_to_pb(outcome.status),
            reason=clip_reason(outcome.reason),
            response_time_ms=outcome.response_time_ms,
            values=outcome.values,
            system_id=self.system_id,
        )
        set_timestamp(result.started_at, started)
        set_timestamp(result.finished_at, finished)
        return result

    # -- shutdown --------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Let the polls accepted finish (each is bounded by its TTL), then cancel the rest."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self._tasks:
            remaining = end - loop.time()
            if remaining <= 0:
                break
            # Waiting requests start as running ones end: wait for each end in turn.
            await asyncio.wait(
                set(self._tasks), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
        self.stats.abandoned += len(self._waiting)
        self._waiting.clear()
        pending = set(self._tasks)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
