"""The state keeper: turns poll results into service state, outages and events.

A single task applies every observation and every inventory change in arrival
order (the :class:`Mailbox`), so nothing about one service ever races. A batch
is computed in memory first (:mod:`.rules`, :mod:`.node_outage`), then its
transitions are written as one retriable transaction (:mod:`.persist`): one
transaction carries the outages and the events of a whole batch. While the
store is unavailable the keeper retries and its bounded mailbox fills, which
pushes back on the result streams instead of dropping anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.core.status import Status
from services.scheduler import metrics
from services.scheduler.assurance import lifecycle, rules
from services.scheduler.assurance.housekeeping import Journal
from services.scheduler.assurance.node_outage import Topology
from services.scheduler.assurance.persist import Persister
from services.scheduler.assurance.transitions import Outcome
from services.scheduler.model import Observation, ServiceKey, ServiceRuntime

MAX_BATCH = 2000


class Scheduling(Protocol):
    """What the keeper asks of whoever owns the services' scheduling slots."""

    def reschedule(self, key: ServiceKey) -> None:
        """Recompute when ``key`` is next due (its state changed)."""

    def poll_now(self, key: ServiceKey, *, urgent: bool) -> str | None:
        """Poll ``key`` out of schedule."""

    def resume(self, key: ServiceKey) -> None:
        """``key``'s state changed: a "stop polling" verdict of the downtime model no longer holds."""


@dataclass(slots=True)
class _Command:
    fn: Callable[[], Awaitable[Any]]
    done: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Mailbox:
    """The keeper's bounded intake: observations and commands, applied in arrival order.

    It exists before the keeper and the dispatcher, so that both can be given
    it: the dispatcher puts its UNKNOWN results here without knowing the keeper.
    """

    def __init__(self, size: int = 20_000) -> None:
        self._queue: asyncio.Queue[Observation | _Command] = asyncio.Queue(maxsize=size)

    async def submit(self, obs: Observation) -> None:
        """Queue an observation; waits while the mailbox is full (back-pressure)."""
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

    @property
    def backlog(self) -> int:
        """Observations (and commands) waiting to be applied."""
        return self._queue.qsize()

    async def take(self) -> Observation | _Command:
        """The next item, waiting for one."""
        return await self._queue.get()

    def take_nowait(self) -> Observation | _Command | None:
        """The next item if there is one."""
        return None if self._queue.empty() else self._queue.get_nowait()


class StateKeeper:
    """Owns the assured state of every service (see the module docstring)."""

    def __init__(
        self,
        mailbox: Mailbox,
        topology: Topology,
        persister: Persister,
        journal: Journal,
        scheduling: Scheduling,
    ) -> None:
        self.mailbox = mailbox
        self.topology = topology
        self.persister = persister
        self.journal = journal
        self.scheduling = scheduling
        self.applied = 0
        #: PollNow callers waiting for the result of a request id.
        self.waiters: dict[str, list[asyncio.Future[ServiceRuntime]]] = {}

    # -- intake ----------------------------------------------------------------------

    async def submit(self, obs: Observation) -> None:
        """Queue an observation; waits while the mailbox is full (back-pressure)."""
        await self.mailbox.submit(obs)

    async def call(self, fn: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
        """Run ``fn`` in the keeper's task (see :meth:`Mailbox.call`)."""
        return await self.mailbox.call(fn, timeout)

    def wait_result(self, request_id: str) -> asyncio.Future[ServiceRuntime]:
        """A future resolved with the service once the result of ``request_id`` is applied."""
        fut: asyncio.Future[ServiceRuntime] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(request_id, []).append(fut)
        return fut

    @property
    def backlog(self) -> int:
        """Observations waiting to be applied."""
        return self.mailbox.backlog

    async def run(self) -> None:
        """Apply observations and commands for ever, observations in batches."""
        while True:
            item: Observation | _Command | None = await self.mailbox.take()
            batch: list[Observation] = []
            while item is not None:
                if isinstance(item, _Command):
                    if batch:
                        await self.apply(batch)
                        batch = []
                    await _run_command(item)
                else:
                    batch.append(item)
                if len(batch) >= MAX_BATCH:
                    break
                item = self.mailbox.take_nowait()
            if batch:
                await self.apply(batch)

    # -- applying results ------------------------------------------------------------

    async def apply(self, batch: Iterable[Observation]) -> None:
        """Apply observations in order: memory first, then the store, then the schedule."""
        services = self.topology.services
        out = Outcome()
        resolved: list[tuple[str, ServiceRuntime]] = []
        counts = dict.fromkeys(Status, 0)
        for obs in batch:
            rt = services.get(obs.key)
            if rt is None:
                continue  # unconfigured since the poll was sent
            self.applied += 1
            counts[obs.status] += 1
            rules.record_last_poll(rt, obs)
            self.journal.record(obs)
            if obs.request_id in self.waiters:
                resolved.append((obs.request_id, rt))
            out.add(rules.observe(rt, obs, self.topology))
        for status, n in counts.items():
            if n:
                metrics.RESULTS.labels(status.value).inc(n)
        for key in out.dirty:
            self.journal.mark_dirty(key)
        for key in out.resumed:
            self.scheduling.resume(key)
        if out.transitions:
            await self.persister.write(out.transitions)
        for key in out.reschedule:
            if key in services:
                self.scheduling.reschedule(key)
        for poll in out.polls:
            if poll.key in services:
                if not poll.urgent:
                    # Back on its schedule (it may have been dropped while held).
                    self.scheduling.reschedule(poll.key)
                self.scheduling.poll_now(poll.key, urgent=poll.urgent)
        for rid, rt in resolved:
            for fut in self.waiters.pop(rid, []):
                if not fut.done():
                    fut.set_result(rt)

    # -- inventory changes -----------------------------------------------------------

    async def forget(self, runtimes: list[ServiceRuntime], at: float, reason: str) -> None:
        """Services removed from the inventory: close their outages (with ``reason``),
        announce ``service deleted``, drop their state."""
        await lifecycle.forget(self.persister, runtimes, at, reason, self._release)

    def _release(self, rt: ServiceRuntime) -> None:
        self.journal.discard(rt.key)
        for fut in self.waiters.pop(rt.in_flight or "", []):
            if not fut.done():
                fut.set_result(rt)


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
