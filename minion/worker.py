"""One worker process of a multi-process minion (``minion.workers`` > 1).

    python -m minion.worker <fd> <parent pid> <event loop>

Started by the minion's parent process (:mod:`minion.workers`) with one end
of a socket pair as ``fd``. A worker is a share of the minion: it connects
to NATS with the minion's certificate, takes requests from the location's
queue group (and from the minion's own subject, in a queue group of the
minion's workers, so an aimed request runs once), runs them with its share
of ``max_in_flight``, and hands every result to the parent, which holds the
minion's one session with the scheduler. It opens no session of its own, no
spool and no schedule: the parent has them, and tells it when the minion
polls on its own (it then leaves the queue group) and which store-and-forward
polls to run.

A worker dies with its parent (``PR_SET_PDEATHSIG``): without the parent its
results cannot reach the scheduler. It stops cleanly on the parent's word,
on SIGTERM or SIGINT (a terminal's Ctrl-C reaches the whole process group),
or when the parent's end of the socket closes: it leaves both subjects, lets
the polls in flight finish (bounded by ``drain_timeout``; at once when the
parent is gone), hands over the last results and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import os
import pickle
import signal
import socket
import sys
from collections import deque
from dataclasses import dataclass
from typing import Any

from vigil.v1 import poll_pb2

from minion.identity import minion_transport
from minion.intake import Intake
from minion.ipc import (
    FrameError,
    Kind,
    frame,
    json_frame,
    pack_results,
    pack_tagged,
    read_frame,
    unpack_tagged,
)
from minion.lifecycle import MinionState, Phase
from minion.loop import loop_factory
from minion.monitors import registry
from minion.monitors.registry import MonitorSet
from minion.monitors.setup import configure_monitors
from minion.runner import PollRunner
from services.core.config import MinionSettings, PkiSettings
from services.core.logs import setup_logging
from services.core.tasks import Supervisor, wait_set

#: Named, not ``__name__``: run with ``-m``, the module is ``__main__``.
log = logging.getLogger("minion.worker")

#: How often a worker reports its counters (and at once when its intake changes).
STATS_INTERVAL = 0.5
#: How long results wait to travel together to the parent.
LINGER = 0.005
#: Most results in one frame.
RESULTS_PER_FRAME = 2000
#: Bytes the socket's send buffer may hold before the link waits for the parent.
HIGH_WATER = 4 << 20
#: Longest wait for the parent to take buffered frames.
DRAIN_TIMEOUT = 1.0
#: Longest wait for the configuration frame at start.
CONFIG_TIMEOUT = 30.0
#: Longest wait at stop for the last results to reach the parent.
FLUSH_TIMEOUT = 5.0
PR_SET_PDEATHSIG = 1


def own_queue(system_id: str) -> str:
    """The queue group in which a minion's workers take the requests aimed at the minion."""
    return f"vigil-minion-{system_id}"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What the parent tells a worker when it starts it (the first frame, pickled)."""

    settings: MinionSettings
    pki: PkiSettings
    nats_url: str
    system_id: str
    location: str
    index: int
    workers: int
    #: This worker's share of the minion's ``max_in_flight``.
    max_in_flight: int
    #: Its share of ``result_buffer``.
    result_buffer: int
    #: The minion polls on its own right now (store-and-forward).
    autonomous: bool
    log_level: str
    component: str


class ParentLink:
    """The worker's end of the socket: results out in batches, bounded; never blocks a poll."""

    def __init__(self, writer: asyncio.StreamWriter, *, buffer_size: int) -> None:
        self._writer = writer
        with contextlib.suppress(AttributeError, NotImplementedError):
            writer.transport.set_write_buffer_limits(high=HIGH_WATER)
        self.buffer_size = buffer_size
        self._results: deque[tuple[float, bytes]] = deque()
        self._site: deque[tuple[int, bytes]] = deque()
        self._have = asyncio.Event()
        #: The parent's end closed (it is gone, or stopping us).
        self.closed = False
        #: Results dropped: the buffer full (the parent not reading), or the parent gone.
        self.dropped = 0
        self.sent = 0

    def submit(self, result: poll_pb2.PollResult, expires_at: float) -> None:
        """A result of a request taken from NATS (the runner's ``emit``)."""
        if self.closed:
            self.dropped += 1
            return
        self._results.append((expires_at, result.SerializeToString()))
        if len(self._results) > self.buffer_size:
            self._results.popleft()
            self.dropped += 1
        self._have.set()

    def site_result(self, tag: int, result: poll_pb2.PollResult, _expires_at: float) -> None:
        """A result of a store-and-forward poll the parent asked for (``tag``)."""
        if self.closed:
            self.dropped += 1
            return
        self._site.append((tag, result.SerializeToString()))
        if len(self._site) > self.buffer_size:
            self._site.popleft()
            self.dropped += 1
        self._have.set()

    @property
    def pending(self) -> int:
        """Results not handed to the socket yet."""
        return len(self._results) + len(self._site)

    def send(self, data: bytes) -> None:
        """Write a whole frame (in order with every other frame)."""
        if self.closed:
            return
        try:
            self._writer.write(data)
        except (ConnectionError, RuntimeError) as exc:
            log.warning("the link to the minion's parent failed: %r", exc)
            self.closed = True

    async def run(self) -> None:
        """Send what is buffered, a batch at a time. For ever."""
        while True:
            if not self.pending:
                self._have.clear()
                if not await wait_set(self._have, 1.0):
                    continue
                await asyncio.sleep(LINGER)  # let a batch fill up
            self._send_some()
            await self._drained()

    def _send_some(self) -> None:
        if self._site:
            records = [self._site.popleft() for _ in range(min(len(self._site), 1000))]
            self.send(frame(Kind.SITE_RESULTS, pack_tagged(records)))
        if self._results:
            n = min(len(self._results), RESULTS_PER_FRAME)
            self.send(frame(Kind.RESULTS, pack_results(self._results.popleft() for _ in range(n))))
            self.sent += n

    async def _drained(self) -> None:
        if self.closed:
            self.dropped += self.pending
            self._results.clear()
            self._site.clear()
            return
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await self._writer.drain()
        except TimeoutError:
            pass  # the parent is slow: results wait (bounded) in our buffer meanwhile
        except ConnectionError:
            self.closed = True

    async def flush(self, timeout: float) -> bool:
        """Hand every buffered result to the socket and let the parent read it (bounded)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.pending and not self.closed and loop.time() < end:
            self._send_some()
            await self._drained()
        if self.closed:
            return False
        try:
            async with asyncio.timeout(max(0.0, end - loop.time())):
                await self._writer.drain()
        except (TimeoutError, ConnectionError):
            return False
        return not self.pending


class Worker:
    """A worker's parts: NATS intake, runner, the link to the parent."""

    def __init__(self, cfg: WorkerConfig, writer: asyncio.StreamWriter) -> None:
        self.cfg = cfg
        settings = cfg.settings
        self.identity, self.transport = minion_transport(settings, cfg.pki, cfg.nats_url)
        configure_monitors(settings)
        self.monitors = MonitorSet()
        self.tasks = Supervisor(f"minion worker {cfg.index}")
        self.state = MinionState(autonomous=cfg.autonomous)
        self.link = ParentLink(writer, buffer_size=cfg.result_buffer)
        #: Set to stop (the parent's word, a signal, the parent gone).
        self.stop_requested = asyncio.Event()
        #: The parent's end of the socket closed: nobody takes our results any more.
        self.parent_gone = False
        self._changed = asyncio.Event()
        self._report = asyncio.Event()
        self.runner = PollRunner(
            self.monitors,
            cfg.system_id,
            self.link.submit,
            max_in_flight=cfg.max_in_flight,
            on_pressure=self._changed.set,
        )
        self.intake = Intake(
            location=cfg.location,
            system_id=cfg.system_id,
            nats_url=cfg.nats_url,
            transport=self.transport,
            client_name=f"vigil-minion-{cfg.system_id}-w{cfg.index}",
            runner=self.runner,
            state=self.state,
            tasks=self.tasks,
            changed=self._changed,
            on_ready_change=self._report.set,
            on_membership_change=self._report.set,
            own_queue=own_queue(cfg.system_id),
        )

    def stats(self) -> dict[str, Any]:
        """What the parent adds up into the minion's heartbeats."""
        s = self.runner.stats
        return {
            "running": self.state.running,
            "nats_ready": self.intake.ready,
            "taking_shared": self.intake.taking_shared,
            "in_flight": self.runner.in_flight,
            "received": s.received,
            "done": s.done,
            "dropped_expired": s.dropped_expired,
            "abandoned": s.abandoned,
            "malformed": s.malformed,
            "overloaded": s.overloaded,
            "link_dropped": self.link.dropped,
            "pauses": self.intake.pauses,
            "resumes": self.intake.resumes,
        }

    async def read_control(self, reader: asyncio.StreamReader) -> None:
        """The parent's frames, until its end closes (then we stop)."""
        try:
            while True:
                got = await read_frame(reader)
                if got is None:
                    break
                kind, payload = got
                if kind is Kind.CONTROL:
                    self._control(json.loads(payload))
                elif kind is Kind.POLLS:
                    for tag, data in unpack_tagged(payload):
                        req = poll_pb2.PollRequest.FromString(data)
                        emit = functools.partial(self.link.site_result, tag)
                        self.runner.submit(req, emit=emit)
                else:
                    log.warning("ignoring a %s frame from the parent", kind.name)
        except FrameError as exc:
            log.error("the minion's parent sent garbage (%s)", exc)
        if not self.stop_requested.is_set():
            log.warning("the minion's parent is gone: stopping")
        self.parent_gone = True
        self.link.closed = True
        self.stop_requested.set()

    def _control(self, msg: dict[str, Any]) -> None:
        if "autonomous" in msg:
            self.state.autonomous = bool(msg["autonomous"])
            self._changed.set()
        if msg.get("stop"):
            self.stop_requested.set()

    async def _report_loop(self) -> None:
        """Counters to the parent, every :data:`STATS_INTERVAL` and on every change. For ever."""
        while True:
            self._report.clear()
            self.link.send(json_frame(Kind.STATS, self.stats()))
            await wait_set(self._report, STATS_INTERVAL)

    async def start(self) -> None:
        """Say hello, connect to NATS, subscribe; report."""
        self.tasks.spawn("link", self.link.run())
        self.link.send(
            json_frame(Kind.HELLO, {"pid": os.getpid(), "monitors": registry.available()})
        )
        self.tasks.spawn("report", self._report_loop())
        await self.intake.connect()
        self.state.advance(Phase.RUNNING)
        self._report.set()
        self.tasks.spawn("intake", self.intake.run())
        log.info(
            "worker %d of minion %s: NATS %s, up to %d poll(s) at once",
            self.cfg.index,
            self.cfg.system_id,
            self.cfg.nats_url,
            self.cfg.max_in_flight,
        )

    async def stop(self) -> None:
        """Leave both subjects, finish the polls in flight (bounded), hand over the results."""
        self.state.advance(Phase.DRAINING)
        await self.intake.leave_all()
        # Without the parent nobody takes the results: no point in waiting for them.
        await self.runner.drain(0.0 if self.parent_gone else self.cfg.settings.drain_timeout)
        if not self.parent_gone and not await self.link.flush(FLUSH_TIMEOUT):
            log.warning("stopping with %d result(s) not handed to the parent", self.link.pending)
        # The last counters, after the last results.
        self.link.send(json_frame(Kind.STATS, self.stats() | {"final": True}))
        await self.link.flush(1.0)
        await self.tasks.close()
        await self.intake.close()
        await self.monitors.close()
        self.state.advance(Phase.STOPPED)
        log.info(
            "worker %d of minion %s stopped (%d polls done)",
            self.cfg.index,
            self.cfg.system_id,
            self.runner.stats.done,
        )


async def serve(fd: int) -> int:
    """Run one worker on the socket ``fd`` until it is told to stop; the exit code."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        async with asyncio.timeout(CONFIG_TIMEOUT):
            got = await read_frame(reader)
    except (TimeoutError, FrameError):
        got = None
    if got is None or got[0] is not Kind.CONFIG:
        print("minion worker: no configuration from the parent", file=sys.stderr)
        return 2
    # The parent's own socket pair, inherited: nobody else can write to it.
    cfg: WorkerConfig = pickle.loads(got[1])
    setup_logging(cfg.log_level, cfg.component)
    worker = Worker(cfg, writer)
    stop = worker.stop_requested
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker.tasks.spawn("control", worker.read_control(reader))
    start = asyncio.ensure_future(worker.start())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if not start.done():
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
    elif start.exception() is not None:
        log.error("worker %d: start-up failed: %s", cfg.index, start.exception())
        code = 1
    else:
        failed = asyncio.ensure_future(worker.tasks.failed.wait())
        await asyncio.wait({failed, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if failed.done():
            log.error(
                "worker %d: stopping after a fatal error: %r", cfg.index, worker.tasks.failure
            )
            code = 1
        failed.cancel()
    stopper.cancel()
    # A second signal while stopping ends the process at once.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, os._exit, 130)
    await worker.stop()
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
    return code


def _die_with_parent(parent: int) -> bool:
    """The kernel kills us when the parent dies; ``False`` when it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    return os.getppid() == parent


def main(argv: list[str]) -> int:
    """``python -m minion.worker <fd> <parent pid> <event loop>``."""
    if len(argv) != 3:
        print("usage: python -m minion.worker <fd> <parent pid> <event loop>", file=sys.stderr)
        return 2
    fd, parent, event_loop = int(argv[0]), int(argv[1]), argv[2]
    if not _die_with_parent(parent):
        return 3
    with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner:
        return runner.run(serve(fd))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
