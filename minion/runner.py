"""Runs poll requests: deadlines, retries, concurrency, and never a crash.

Every request carries ``expires_at`` (its TTL). A request that arrives after
it is dropped and counted; one that is still running when it passes is
abandoned without a result (the scheduler has already recorded UNKNOWN).
Within the TTL, each attempt gets the request's ``timeout``; a DOWN attempt
is retried ``retries`` times while time remains.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from pydantic import ValidationError
from vigil.v1 import common_pb2, poll_pb2

from minion.monitors.base import MonitorParams, PollContext, PollOutcome, Status, Target
from minion.monitors.registry import MonitorSet, UnknownMonitorError
from services.common.durations import format_duration
from services.common.timeutil import from_duration, from_timestamp, set_timestamp
from services.common.validation import describe

log = logging.getLogger(__name__)

STATUS_PB = {
    Status.UP: common_pb2.POLL_STATUS_UP,
    Status.DOWN: common_pb2.POLL_STATUS_DOWN,
    Status.UNKNOWN: common_pb2.POLL_STATUS_UNKNOWN,
}
DEFAULT_TIMEOUT = 3.0
PARAMS_CACHE_SIZE = 10_000


class RunnerStats:
    """Counters reported in heartbeats and metrics."""

    def __init__(self) -> None:
        self.received = 0
        self.done = 0
        self.dropped_expired = 0
        self.abandoned = 0
        self.malformed = 0
        self.overloaded = 0


class PollRunner:
    """Accepts requests and emits results through ``emit``."""

    def __init__(
        self,
        monitors: MonitorSet,
        system_id: str,
        emit: Callable[[poll_pb2.PollResult], None],
        *,
        max_in_flight: int = 1000,
        max_queued: int | None = None,
    ) -> None:
        self.monitors = monitors
        self.system_id = system_id
        self._emit = emit
        self._sem = asyncio.Semaphore(max_in_flight)
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued if max_queued is not None else 4 * max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._params: OrderedDict[tuple[str, bytes], MonitorParams | str] = OrderedDict()
        self.stats = RunnerStats()

    @property
    def in_flight(self) -> int:
        """Requests accepted and not yet finished."""
        return len(self._tasks)

    # -- intake ----------------------------------------------------------------------

    async def on_message(self, msg: Any) -> None:
        """NATS callback: a PollBatch. Malformed messages are counted, never fatal."""
        try:
            batch = poll_pb2.PollBatch.FromString(msg.data)
        except DecodeError as exc:
            self.stats.malformed += 1
            log.warning("dropped a malformed poll message on %s: %s", msg.subject, exc)
            return
        for req in batch.requests:
            self.submit(req)

    def submit(self, req: poll_pb2.PollRequest) -> bool:
        """Start a request; returns ``False`` when it was dropped."""
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
        if len(self._tasks) >= self.max_queued:
            self.stats.overloaded += 1
            self._emit(self._result(req, PollOutcome.unknown("minion overloaded: request not run"), wall, wall))
            return False
        deadline = asyncio.get_running_loop().time() + left
        task = asyncio.create_task(self._run(req, deadline), name=f"poll:{req.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    # -- execution -------------------------------------------------------------------

    async def _run(self, req: poll_pb2.PollRequest, expires: float) -> None:
        started = time.time()
        try:
            async with asyncio.timeout_at(expires):
                async with self._sem:
                    outcome = await self._poll(req, expires)
        except TimeoutError:
            # TTL reached: the scheduler already counts this poll as UNKNOWN.
            self.stats.abandoned += 1
            return
        self.stats.done += 1
        self._emit(self._result(req, outcome, started, time.time()))

    def _parsed_params(self, req: poll_pb2.PollRequest) -> MonitorParams | str:
        key = (req.monitor, req.params.SerializeToString(deterministic=True))
        cached = self._params.get(key)
        if cached is not None:
            self._params.move_to_end(key)
            return cached
        monitor = self.monitors.get(req.monitor)
        try:
            parsed: MonitorParams | str = monitor.parse_params(json_format.MessageToDict(req.params))
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
        params = self._parsed_params(req)
        if isinstance(params, str):
            return PollOutcome.unknown(params)
        target = Target(req.service.ip, req.service.node_id, req.service.service, req.location)
        timeout = from_duration(req.timeout) if req.HasField("timeout") else DEFAULT_TIMEOUT
        if timeout <= 0:
            timeout = DEFAULT_TIMEOUT
        loop = asyncio.get_running_loop()
        outcome = PollOutcome.unknown("not polled")
        for attempt in range(1, req.retries + 2):
            deadline = min(loop.time() + timeout, expires)
            ctx = PollContext(deadline=deadline, timeout=timeout, attempt=attempt)
            outcome = await self._attempt(monitor, target, params, ctx)
            if outcome.status is not Status.DOWN or loop.time() >= expires:
                break
        return outcome

    async def _attempt(self, monitor: Any, target: Target, params: MonitorParams, ctx: PollContext) -> PollOutcome:
        start = time.perf_counter()
        try:
            async with asyncio.timeout_at(ctx.deadline):
                outcome: PollOutcome = await monitor.poll(target, params, ctx)
                return outcome
        except TimeoutError:
            return PollOutcome.down(
                f"timed out after {format_duration(ctx.timeout)}", (time.perf_counter() - start) * 1000
            )
        except OSError as exc:
            return PollOutcome.down(f"{exc.strerror or exc}", (time.perf_counter() - start) * 1000)
        except Exception as exc:
            log.exception("monitor %s failed on %s", monitor.name, target.address)
            return PollOutcome.unknown(f"monitor {monitor.name} failed: {exc.__class__.__name__}: {exc}")

    def _result(
        self, req: poll_pb2.PollRequest, outcome: PollOutcome, started: float, finished: float
    ) -> poll_pb2.PollResult:
        result = poll_pb2.PollResult(
            request_id=req.id,
            service=req.service,
            status=STATUS_PB[outcome.status],
            reason=outcome.reason[:2000],
            response_time_ms=outcome.response_time_ms,
            values=outcome.values,
            system_id=self.system_id,
        )
        set_timestamp(result.started_at, started)
        set_timestamp(result.finished_at, finished)
        return result

    # -- shutdown --------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Let running polls finish (each is bounded by its TTL), then cancel the rest."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
