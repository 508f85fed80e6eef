"""A minion of several worker processes behind one identity (``minion.workers`` > 1).

    NATS ──► worker 0 ─┐  (each: its share of the location's queue group, of the
    NATS ──► worker 1 ─┤   minion's own subject and of max_in_flight)
    NATS ──► worker … ─┤
                       ▼  results (serialized), counters, over a socket pair each
    parent: SinkClient (the minion's ONE session with the scheduler: hello,
            heartbeats adding up the workers, results, goodbye),
            SitePoller + DiskSpool (store-and-forward), the workers' keeper

One process runs one event loop on one core; a site that gives its minion
more cores gets them used by workers. They are one minion to everyone else:
the same certificate, system id and location; the scheduler sees one session
(one ``minion up``), heartbeats with the whole minion's ``in_flight`` and
``polls_done``, and its capacity is the minion's ``max_in_flight``, divided
among the workers (each leaves the location's queue group at its own cap,
so NATS hands the requests to the workers, or minions, that have room).

Only the parent talks to the scheduler and owns the spool and the location's
schedule: a store-and-forward minion cut off from the central site hands the
polls of the schedule to its workers (round robin) and spools their results
itself, in one SQLite file as before.

A worker that dies (or goes silent for :data:`WORKER_SILENCE`) is started
again, with back-off; its polls in flight are lost (the scheduler records
them UNKNOWN at their TTL, as for any minion that dies), its counters are
kept. Stopping (SIGTERM): the workers are told to stop (they leave NATS,
finish their polls within ``drain_timeout``, hand over the last results);
those not gone within ``drain_timeout`` + :data:`WORKER_STOP_GRACE` are
killed; then the results are flushed and the scheduler told goodbye.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import pickle
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from vigil.v1 import poll_pb2, sink_pb2

import minion
from minion.identity import load_system_id, minion_transport
from minion.ipc import (
    FrameError,
    Kind,
    frame,
    json_frame,
    pack_tagged,
    read_frame,
    unpack_results,
    unpack_tagged,
)
from minion.lifecycle import MinionState, Phase
from minion.monitors import registry
from minion.monitors.setup import configure_monitors
from minion.runner import Emit
from minion.sink_client import SinkClient
from minion.site import SitePoller
from minion.spool import DiskSpool
from minion.worker import WorkerConfig
from services.core.backoff import Backoff
from services.core.config import MinionSettings, PkiSettings
from services.core.tasks import Supervisor, wait_set
from services.core.timeutil import from_timestamp, set_timestamp
from services.core.timeutil import now as wall_now
from services.core.tls import TlsError, TlsMaterial

log = logging.getLogger(__name__)

#: A worker that says nothing for this long (it reports twice a second) is stuck: killed.
WORKER_SILENCE = 30.0
#: After ``drain_timeout``, how long stopping workers get to hand over their results.
WORKER_STOP_GRACE = 10.0
#: Longest wait for a worker process to exit once its socket closed, before SIGKILL.
REAP_TIMEOUT = 5.0
#: A worker that ran this long before it died is restarted without back-off history.
HEALTHY_AFTER = 60.0
#: A store-and-forward poll whose result has not come this long after its TTL is forgotten.
SITE_POLL_GRACE = 5.0
#: The counters of a worker that are added up (and kept across its restarts).
COUNTERS = (
    "received",
    "done",
    "dropped_expired",
    "abandoned",
    "malformed",
    "overloaded",
    "link_dropped",
    "pauses",
    "resumes",
)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_count(settings: MinionSettings) -> int:
    """How many worker processes ``settings`` ask for (1: the single-process minion).

    Never more than ``max_in_flight``: each worker runs at least one poll at once.
    """
    wanted = settings.workers if settings.workers is not None else available_cores()
    return max(1, min(wanted, settings.max_in_flight))


def shares(total: int, parts: int) -> list[int]:
    """``total`` divided into ``parts`` whole shares differing by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def worker_env() -> dict[str, str]:
    """The environment of a worker: ours, with the directories our packages came from."""
    import vigil

    env = dict(os.environ)
    roots = [str(Path(minion.__file__).resolve().parent.parent)]
    roots += [str(Path(p).resolve().parent) for p in vigil.__path__]
    current = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*roots, *current]))
    return env


#: A worker process just started, and its end of the socket pair.
Spawned = tuple[asyncio.subprocess.Process, asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(slots=True)
class WorkerSlot:
    """One worker's place: the process there now, and what it last reported."""

    index: int
    max_in_flight: int
    result_buffer: int
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    pid: int | None = None
    #: The last counters and link state it reported (empty while none is running).
    stats: dict[str, Any] = field(default_factory=dict)
    #: Times a worker was started here again.
    restarts: int = 0
    #: Polls done by the workers gone from this slot.
    retired_done: int = 0

    @property
    def done(self) -> int:
        """Polls done in this slot, by every worker it had."""
        return self.retired_done + int(self.stats.get("done", 0))

    @property
    def running(self) -> bool:
        """A worker is there, subscribed."""
        return self.writer is not None and bool(self.stats.get("running"))

    def send(self, data: bytes) -> None:
        """A frame to the worker (dropped when there is none)."""
        if self.writer is None or self.writer.is_closing():
            return
        try:
            self.writer.write(data)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("worker %d: cannot write: %r", self.index, exc)


class MinionParent:
    """The minion's identity, session, spool and schedule; its workers do the polling."""

    def __init__(
        self, settings: MinionSettings, *, nats_url: str, pki: PkiSettings, workers: int
    ) -> None:
        self.settings = settings
        self.nats_url = nats_url
        self.pki = pki
        self.identity, self.transport = minion_transport(settings, pki, nats_url)
        location = self.identity.location if self.identity else settings.location
        assert location is not None
        self.location: str = location
        self.system_id = self.identity.name if self.identity else load_system_id(settings)
        # The allow-list decides the monitors the hello announces; workers run them.
        configure_monitors(settings)
        self.tasks = Supervisor("minion")
        self.state = MinionState()
        self.spool_dir = Path(settings.spool_dir) / self.system_id
        self.spool = DiskSpool(
            self.spool_dir,
            max_bytes=settings.spool_max_bytes,
            max_age=settings.spool_max_age,
            open_existing=False,
        )
        self.slots = [
            WorkerSlot(i, cap, buf)
            for i, (cap, buf) in enumerate(
                zip(
                    shares(settings.max_in_flight, workers),
                    shares(settings.result_buffer, workers),
                    strict=True,
                )
            )
        ]
        #: Counters of workers that are gone (kept so the minion's totals never go back).
        self._retired: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        #: Store-and-forward polls handed to a worker: tag → (emit, worker, TTL end).
        self._site_polls: dict[int, tuple[Emit, int, float]] = {}
        self._tags = itertools.count(1)
        self._next_worker = itertools.count()
        self._first_running = asyncio.Event()
        self._stopping = asyncio.Event()
        self._keepers: list[asyncio.Task[None]] = []
        self._link_state = (False, False)
        #: A worker has reported its state at least once.
        self._reported = False
        self.worker_restarts = 0
        hello = sink_pb2.MinionHello(
            system_id=self.system_id,
            location=self.location,
            version=minion.__version__,
            monitors=registry.available(),
            max_in_flight=settings.max_in_flight,
        )
        self.site = SitePoller(
            self.system_id,
            self.location,
            self.spool_dir,
            self,
            self.spool,
            state=self.state,
            autonomous_after=settings.autonomous_after,
            cut_off=self._cut_off,
            last_contact=self._last_contact,
            on_change=self._autonomy_changed,
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

    # -- what the workers add up to ------------------------------------------------------

    def total(self, counter: str) -> int:
        """A counter over the minion's life: the workers there now, and those gone."""
        return self._retired[counter] + sum(int(s.stats.get(counter, 0)) for s in self.slots)

    @property
    def in_flight(self) -> int:
        """Polls running in the workers (as last reported)."""
        return sum(int(s.stats.get("in_flight", 0)) for s in self.slots)

    @property
    def nats_ready(self) -> bool:
        """Some worker is subscribed with a working NATS connection."""
        return any(s.running and s.stats.get("nats_ready") for s in self.slots)

    @property
    def taking_shared(self) -> bool:
        """Some worker takes requests from the location's queue group."""
        return any(s.running and s.stats.get("taking_shared") for s in self.slots)

    @property
    def workers_running(self) -> int:
        """Workers up and subscribed right now."""
        return sum(1 for s in self.slots if s.running)

    def _heartbeat(self) -> sink_pb2.Heartbeat:
        hb = sink_pb2.Heartbeat(
            in_flight=self.in_flight,
            polls_done=self.total("done"),
            nats_connected=self.nats_ready and self.state.running,
            dropped_expired=self.total("dropped_expired"),
            intake_paused=not self.taking_shared,
            autonomous=self.state.autonomous,
            spooled=self.spool.pending,
            results_dropped=self.sink.dropped
            + self.sink.late_dropped
            + self.spool.dropped
            + self.spool.expired
            + self.total("link_dropped"),
        )
        set_timestamp(hb.sent_at, wall_now())
        return hb

    def _links_changed(self) -> None:
        """Tell the scheduler at once when whether to send us work changed."""
        now = (self.nats_ready, self.taking_shared)
        if now != self._link_state:
            self._link_state = now
            self.sink.beat_now()

    def _cut_off(self) -> bool:
        """No scheduler session, or no worker reading NATS: the central site is unreachable.

        Not before a worker has said where it stands: the seconds a worker
        process takes to start are no cut (the single-process minion is
        connecting by then).
        """
        if not self.sink.connected.is_set():
            return True
        return self._reported and not self.nats_ready

    def _last_contact(self) -> float | None:
        if self.sink.connected.is_set():
            return None
        return self.sink.last_heard

    def _spooled(self) -> None:
        if self.sink.connected.is_set():
            self.sink.wake()

    def _sink_credentials(self) -> grpc.ChannelCredentials:
        """As :meth:`minion.app.Minion._sink_credentials`: the files as they are now."""
        current = self.transport
        assert isinstance(current, TlsMaterial)
        try:
            fresh = TlsMaterial.load(
                current.ca_path, current.cert_path, current.key_path, current.revoked_path
            )
        except TlsError as exc:
            log.warning("cannot re-read the TLS material (%s); using what was loaded", exc)
            return current.channel_credentials()
        if fresh.identity != self.identity:
            log.warning(
                "%s now names %s, not %s; using the certificate loaded at start",
                fresh.cert_path,
                fresh.identity,
                self.identity,
            )
            return current.channel_credentials()
        return fresh.channel_credentials()

    # -- store-and-forward polls, run by the workers ---------------------------------------

    def submit(self, req: poll_pb2.PollRequest, emit: Emit | None = None) -> bool:
        """Hand a poll of the site's schedule to a worker (round robin); ``False``: none up."""
        live = [s for s in self.slots if s.running]
        if not live or emit is None:
            return False
        slot = live[next(self._next_worker) % len(live)]
        tag = next(self._tags)
        self._site_polls[tag] = (emit, slot.index, from_timestamp(req.expires_at))
        slot.send(frame(Kind.POLLS, pack_tagged([(tag, req.SerializeToString())])))
        return True

    def _site_results(self, payload: bytes) -> None:
        for tag, data in unpack_tagged(payload):
            entry = self._site_polls.pop(tag, None)
            if entry is not None:
                emit, _, expires_at = entry
                emit(poll_pb2.PollResult.FromString(data), expires_at)

    def _autonomy_changed(self) -> None:
        msg = json_frame(Kind.CONTROL, {"autonomous": self.state.autonomous})
        for slot in self.slots:
            slot.send(msg)

    async def _sweep(self) -> None:
        """Forget store-and-forward polls whose result never came (bounded). For ever."""
        while True:
            await asyncio.sleep(SITE_POLL_GRACE)
            cutoff = wall_now() - SITE_POLL_GRACE
            for tag in [t for t, (_, _, exp) in self._site_polls.items() if exp < cutoff]:
                del self._site_polls[tag]

    # -- the workers ----------------------------------------------------------------------

    def _config(self, slot: WorkerSlot) -> WorkerConfig:
        root = logging.getLogger()
        component = f"minion[{self.location}]/w{slot.index}"
        # Who the minion turned out to be (from its certificate, or its id file): the
        # workers take it as given rather than work it out again.
        settings = self.settings.model_copy(
            update={"system_id": self.system_id, "location": self.location}
        )
        return WorkerConfig(
            settings=settings,
            pki=self.pki,
            nats_url=self.nats_url,
            system_id=self.system_id,
            location=self.location,
            index=slot.index,
            workers=len(self.slots),
            max_in_flight=slot.max_in_flight,
            result_buffer=slot.result_buffer,
            autonomous=self.state.autonomous,
            log_level=logging.getLevelName(root.getEffectiveLevel()),
            component=component,
        )

    async def _spawn(self, slot: WorkerSlot) -> Spawned:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            fd = theirs.fileno()
            args = ("-m", "minion.worker", str(fd), str(os.getpid()), self.settings.event_loop)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                pass_fds=(fd,),
                stdin=asyncio.subprocess.DEVNULL,
                env=worker_env(),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        writer.write(frame(Kind.CONFIG, pickle.dumps(self._config(slot))))
        return proc, reader, writer

    async def _keep(self, slot: WorkerSlot, first: Spawned | None = None) -> None:
        """Keep a worker running in ``slot``, starting it again when it dies, until we stop.

        ``first``: the worker process already started for it.
        """
        loop = asyncio.get_running_loop()
        backoff = Backoff(initial=1.0, cap=30.0)
        while not self._stopping.is_set():
            started = loop.time()
            why = "?"
            try:
                spawned, first = first or await self._spawn(slot), None
                why = await self._run_worker(slot, spawned)
            except (OSError, FrameError) as exc:
                why = f"failed: {exc!r}"
            except Exception as exc:  # a bug of ours: the minion goes on, the worker starts again
                log.exception("worker %d: unexpected error", slot.index)
                why = f"failed: {exc!r}"
            finally:
                self._retire(slot)
            if self._stopping.is_set():
                return
            if loop.time() - started >= HEALTHY_AFTER:
                backoff.reset()
            delay = backoff.next()
            slot.restarts += 1
            self.worker_restarts += 1
            log.warning("worker %d %s; starting it again in %.1fs", slot.index, why, delay)
            await wait_set(self._stopping, delay)

    async def _run_worker(self, slot: WorkerSlot, spawned: Spawned) -> str:
        """Serve the frames of the worker in ``slot`` until it ends; how it ended."""
        proc, reader, writer = spawned
        slot.proc, slot.writer, slot.pid = proc, writer, proc.pid
        silent = False
        try:
            if self._stopping.is_set():  # stop() began while it started
                slot.send(json_frame(Kind.CONTROL, {"stop": True}))
            while True:
                try:
                    async with asyncio.timeout(WORKER_SILENCE):
                        got = await read_frame(reader)
                except TimeoutError:
                    silent = True
                    log.error(
                        "worker %d (pid %d) said nothing for %.0fs: killing it",
                        slot.index,
                        proc.pid,
                        WORKER_SILENCE,
                    )
                    break
                if got is None:
                    break
                self._on_frame(slot, *got)
        finally:
            slot.writer = None
            writer.close()
            code = await self._reap(proc, kill=silent)
        if code == 0:
            return f"(pid {proc.pid}) exited"
        if code < 0:
            return f"(pid {proc.pid}) was killed by signal {-code}"
        return f"(pid {proc.pid}) exited with code {code}"

    @staticmethod
    async def _reap(proc: asyncio.subprocess.Process, *, kill: bool = False) -> int:
        """The exit code of a worker whose socket closed (killed when it does not exit)."""
        if not kill:
            try:
                async with asyncio.timeout(REAP_TIMEOUT):
                    return await proc.wait()
            except TimeoutError:
                log.warning("worker pid %d does not exit: killing it", proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        try:
            async with asyncio.timeout(REAP_TIMEOUT):
                return await proc.wait()
        except TimeoutError:
            log.error("worker pid %d survives SIGKILL", proc.pid)
            return -9

    def _on_frame(self, slot: WorkerSlot, kind: Kind, payload: bytes) -> None:
        if kind is Kind.RESULTS:
            submit = self.sink.submit
            for expires_at, data in unpack_results(payload):
                submit(data, expires_at)
        elif kind is Kind.STATS:
            slot.stats = json.loads(payload)
            self._reported = True
            if slot.running and not self._first_running.is_set():
                self._first_running.set()
                self.state.advance(Phase.RUNNING)
            self._links_changed()
        elif kind is Kind.SITE_RESULTS:
            self._site_results(payload)
        elif kind is Kind.HELLO:
            hello = json.loads(payload)
            log.info("worker %d started (pid %s)", slot.index, hello.get("pid"))
        else:
            log.warning("worker %d sent a %s frame; ignored", slot.index, kind.name)

    def _retire(self, slot: WorkerSlot) -> None:
        """The worker in ``slot`` is gone: keep its counters, forget its polls."""
        for counter in COUNTERS:
            self._retired[counter] += int(slot.stats.get(counter, 0))
        slot.retired_done = slot.done
        slot.stats = {}
        slot.proc = slot.writer = slot.pid = None
        for tag in [t for t, (_, i, _) in self._site_polls.items() if i == slot.index]:
            del self._site_polls[tag]
        self._links_changed()

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool, the scheduler session and the workers; return once one takes requests."""
        # The workers first, before gRPC has threads of its own: its fork handlers then
        # have nothing to skip (and say nothing about it).
        first: list[Spawned] = []
        try:
            for slot in self.slots:
                first.append(await self._spawn(slot))
        except BaseException:
            for proc, _, writer in first:
                writer.close()
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            raise
        for slot, spawned in zip(self.slots, first, strict=True):
            keeper = self._keep(slot, spawned)
            self._keepers.append(self.tasks.spawn(f"worker {slot.index}", keeper))
        await self.spool.open_async()  # what a cut before a restart left, replayed first
        self.tasks.spawn("spool", self.spool.run(on_written=self._spooled))
        self.tasks.spawn("sink", self.sink.run())
        # A store-and-forward minion started during a cut polls on its own.
        self.tasks.spawn("site", self.site.run())
        self.tasks.spawn("site polls", self._sweep())
        # Like the single-process minion waiting for NATS: for as long as it takes.
        while not await wait_set(self._first_running, 1.0):
            pass
        self.sink.beat_now()
        log.info(
            "minion %s at location %s: %d workers (up to %s polls at once), NATS %s, "
            "scheduler %s, monitors %s",
            self.system_id,
            self.location,
            len(self.slots),
            "+".join(str(s.max_in_flight) for s in self.slots),
            self.nats_url,
            self.settings.scheduler,
            ", ".join(registry.available()),
        )

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop the workers (bounded), flush the results, say goodbye, close."""
        self.state.advance(Phase.DRAINING)
        self._stopping.set()
        self.site.stop()
        stop = json_frame(Kind.CONTROL, {"stop": True})
        for slot in self.slots:
            slot.send(stop)
        timeout = self.settings.drain_timeout if drain_timeout is None else drain_timeout
        keepers = [t for t in self._keepers if not t.done()]
        if keepers:
            _, pending = await asyncio.wait(keepers, timeout=timeout + WORKER_STOP_GRACE)
            if pending:
                for slot in self.slots:
                    if slot.proc is not None and slot.proc.returncode is None:
                        log.warning("worker %d did not stop in time: killing it", slot.index)
                        with contextlib.suppress(ProcessLookupError):
                            slot.proc.kill()
                await asyncio.wait(pending, timeout=2 * REAP_TIMEOUT)
        await self.spool.flush()  # what the last polls of our own produced
        if self.sink.connected.is_set():
            if not await self.sink.flush(timeout=5.0):
                log.warning("stopping with %d result(s) not acknowledged", self.sink.backlog)
            await self.sink.goodbye("shutdown", timeout=5.0)
        await self.tasks.close()
        await self.spool.close_async()
        self.state.advance(Phase.STOPPED)
        log.info(
            "minion %s stopped (%d workers, polls done %s=%d, %d worker restart(s), "
            "%d result(s) spooled for later)",
            self.system_id,
            len(self.slots),
            "+".join(str(slot.done) for slot in self.slots),
            self.total("done"),
            self.worker_restarts,
            self.spool.pending,
        )
