"""Several minions, and one minion of several workers, at one location: polls/s.

    python -m bench.minions [--quick]

Three sets of rows, one table:

* ``noop`` and ``tcp`` with 1, 2 and 4 single-process minions through the
  real pipeline: the scheduler runs in this process; the minions are child
  processes sharing one location (NATS queue group), so the figures include
  everything: dispatch, NATS, the minions' runners and monitors, the gRPC
  result streams and the state keeper. ``tcp`` polls a local listener in a
  separate process (real sockets per poll).
* ``tcp workers``: ONE minion with ``minion.workers`` 1, 2 and 4 (issue 13),
  through the same pipeline, polling the blocking accept-and-close TCP sink
  of the blackbox section.
* ``tcp alone``: the same minion against a bench driver instead of the
  scheduler (it publishes requests to NATS as fast as the minion's
  ``max_in_flight`` allows, as the scheduler does, and acknowledges the
  results in a bare ResultSink), so the minion's own capacity shows rather
  than the scheduler's; ``asyncio`` is the same with ``minion.event_loop:
  asyncio``, for the event loop's share.

Figures: polls/s (UP results applied, or received by the driver), the share
each minion took (min and max of the per-minion poll counts as a percentage
of the total), results UNKNOWN (ideally 0), the CPU the minion's processes
used (100 % = one core) and polls per CPU second, RSS of the scheduler and
of each minion process (parent + workers). On a machine with few cores the
minions, the scheduler, nats-server and the target share them; read the
figures with ``cores``, and compare rows of one run. Prints a table; there
is no pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import yaml
from vigil.v1 import common_pb2, poll_pb2, sink_pb2, sink_pb2_grpc

from bench.blackbox import sink as blocking_sink
from bench.common import (
    bench_nats,
    bench_pki,
    counter_total,
    poll_nodes,
    rss_mb,
    scheduler_config,
    spawn_minion,
    stop,
    table,
    tcp_peer,
)
from services.core import natsconn
from services.core.pki import Identity
from services.core.status import Status, status_to_pb
from services.core.timeutil import set_timestamp, to_duration
from services.core.tls import TlsMaterial
from services.core.wire import poll_subject
from services.scheduler import metrics
from services.scheduler.app import Scheduler

LOCATION = "bench"
#: Every row has these columns ("-": not measured in that kind of row).
COLUMNS = (
    "workload",
    "minions",
    "workers",
    "services",
    "offered/s",
    "polls/s",
    "share min-max %",
    "unknown",
    "minions down",
    "minion CPU %",
    "polls/CPU-s",
    "sched RSS MiB",
    "minion RSS MiB",
)


def _row(**values: object) -> dict[str, object]:
    return {c: values.get(c, "-") for c in COLUMNS}


def minion_config(work: Path, name: str, **minion: Any) -> Path:
    """A configuration file with just a ``minion`` section."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"minion": minion}))
    return path


def tree(pid: int) -> list[psutil.Process]:
    """A process and its descendants (a minion's parent and workers)."""
    try:
        top = psutil.Process(pid)
        return [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(procs: list[subprocess.Popen[bytes]]) -> float:
    """User + system CPU seconds used so far by these processes and their children."""
    total = 0.0
    for proc in procs:
        for p in tree(proc.pid):
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
    return total


def tree_rss(procs: list[subprocess.Popen[bytes]]) -> str:
    """RSS in MiB of each process of each minion, ``parent+worker+…``, minions by ``/``."""
    parts = []
    for proc in procs:
        sizes = []
        for p in tree(proc.pid):
            try:
                sizes.append(str(round(p.memory_info().rss / (1 << 20))))
            except psutil.Error:
                continue
        parts.append("+".join(sizes))
    return " / ".join(parts)


def _real_results() -> float:
    """Results that said UP or DOWN (what minions measured, not UNKNOWN)."""
    return counter_total(metrics.RESULTS, status="UP") + counter_total(
        metrics.RESULTS, status="DOWN"
    )


async def run_scenario(
    name: str,
    minions: int,
    services: int,
    interval: float,
    duration: float,
    monitor: str,
    params: dict[str, Any],
    work: Path,
    *,
    workers: int = 1,
) -> dict[str, object]:
    """One measured run with ``minions`` minions of ``workers`` workers; returns a table row."""
    tag = f"{name}-{services}-{minions}-{workers}".replace(" ", "_")
    config = minion_config(work, f"minion-{tag}", workers=workers)
    nats = bench_nats(work / f"nats-{tag}").start()
    nodes = poll_nodes(services, monitor, params, location=LOCATION, prefix="m")
    cfg = scheduler_config(nats.url, work / f"{tag}.db", interval, nodes)
    sched = Scheduler(cfg, nats_url=nats.url)
    await sched.start()
    procs = [
        spawn_minion(
            nats,
            sched.grpc_address,
            LOCATION,
            f"bench-{tag}-{i}",
            work / f"minion-{tag}-{i}.log",
            config=config,
        )
        for i in range(minions)
    ]
    try:
        # Warm up: every minion connected, then one interval so that every service has its phase.
        for _ in range(300):
            if sum(1 for s in sched.registry.sessions() if s.up) >= minions:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(interval + 2)
        done0 = {s.system_id: s.polls_done for s in sched.registry.sessions()}
        unknown0, real0, t0 = counter_total(metrics.UNKNOWN), _real_results(), time.perf_counter()
        cpu0 = cpu_seconds(procs)
        await asyncio.sleep(duration)
        real1, t1, unknown1 = _real_results(), time.perf_counter(), counter_total(metrics.UNKNOWN)
        cpu = (cpu_seconds(procs) - cpu0) / (t1 - t0)
        rate = (real1 - real0) / (t1 - t0)
        # Per-minion counts come with heartbeats: a late heartbeat skews them a little.
        shares = [s.polls_done - done0.get(s.system_id, 0) for s in sched.registry.sessions()]
        total = sum(shares) or 1
        return _row(
            workload=name,
            minions=minions,
            workers=workers,
            services=services,
            **{
                "offered/s": round(services / interval),
                "polls/s": round(rate),
                "share min-max %": f"{100 * min(shares) // total}-{100 * max(shares) // total}"
                if minions > 1
                else "-",
                "unknown": int(unknown1 - unknown0),
                "minions down": sum(1 for s in sched.registry.sessions() if not s.up),
                "minion CPU %": round(100 * cpu),
                "polls/CPU-s": round(rate / cpu) if cpu else "-",
                "sched RSS MiB": round(rss_mb()),
                "minion RSS MiB": tree_rss(procs),
            },
        )
    finally:
        # In a thread: the scheduler (this loop) must keep serving the minions' goodbyes.
        await asyncio.gather(*(asyncio.to_thread(stop, p) for p in procs))
        await sched.stop()
        nats.stop()


# -- one minion against a bench driver instead of the scheduler ----------------------------

_UP = status_to_pb(Status.UP)
#: The driver gives up on a request this long after sending it (the scheduler's TTL).
ALONE_TTL = 3.0


class CountingSink(sink_pb2_grpc.ResultSinkServicer):
    """A bare ResultSink: welcomes a minion, acknowledges and counts its results."""

    def __init__(self) -> None:
        self.results = 0
        self.up = 0
        self.heartbeat: sink_pb2.Heartbeat | None = None

    async def Connect(
        self, request_iterator: AsyncIterator[sink_pb2.MinionMessage], context: Any
    ) -> AsyncIterator[sink_pb2.SinkMessage]:
        messages = request_iterator.__aiter__()
        await messages.__anext__()  # the hello
        yield sink_pb2.SinkMessage(
            welcome=sink_pb2.Welcome(
                scheduler_id="bench", heartbeat_interval=to_duration(1.0), heartbeat_misses=3
            )
        )
        async for msg in messages:
            kind = msg.WhichOneof("kind")
            if kind == "results":
                batch = msg.results
                self.results += len(batch.results)
                self.up += sum(1 for r in batch.results if r.status == _UP)
                yield sink_pb2.SinkMessage(
                    ack=sink_pb2.BatchAck(seq=batch.seq, accepted=len(batch.results))
                )
            elif kind == "heartbeat":
                self.heartbeat = msg.heartbeat
                yield sink_pb2.SinkMessage(heartbeat_ack=sink_pb2.HeartbeatAck())
            elif kind == "goodbye":
                return


def request_batches(port: int, per_batch: int, count: int) -> list[bytes]:
    """Serialized PollBatches of TCP requests to 127.0.0.1:``port``, valid for an hour."""
    expires = time.time() + 3600
    out = []
    n = 0
    for _ in range(count):
        batch = poll_pb2.PollBatch()
        for _ in range(per_batch):
            n += 1
            req = batch.requests.add(id=f"bench-{n:08x}", location=LOCATION, monitor="tcp")
            req.service.CopyFrom(
                common_pb2.ServiceRef(node_id=f"n{n % 1000}", ip="127.0.0.1", service="TCP")
            )
            req.params.update({"port": port})
            req.timeout.CopyFrom(to_duration(2.0))
            set_timestamp(req.expires_at, expires)
        out.append(batch.SerializeToString())
    return out


async def minion_alone(
    workers: int, port: int, duration: float, work: Path, *, event_loop: str = "uvloop"
) -> dict[str, object]:
    """One minion polling the sink at ``port`` as fast as it can; a table row."""
    tag = f"alone-{workers}-{event_loop}"
    max_in_flight = 1000
    nats = bench_nats(work / f"nats-{tag}").start()
    pki = bench_pki()
    me = Identity("scheduler", "scheduler")
    material = TlsMaterial.load(pki.ca_cert_path, pki.cert_path(me), pki.key_path(me))
    sink = CountingSink()
    server = grpc.aio.server()
    sink_pb2_grpc.add_ResultSinkServicer_to_server(sink, server)
    grpc_port = server.add_secure_port("127.0.0.1:0", material.server_credentials())
    await server.start()
    nc = await natsconn.connect(nats.url, "bench-driver", transport=material)
    config = minion_config(
        work, tag, workers=workers, event_loop=event_loop, max_in_flight=max_in_flight
    )
    per_batch = 100
    payloads = request_batches(port, per_batch, 100)
    proc = spawn_minion(
        nats, f"127.0.0.1:{grpc_port}", LOCATION, f"bench-{tag}", work / f"{tag}.log", config=config
    )
    try:
        for _ in range(600):
            if sink.heartbeat is not None and sink.heartbeat.nats_connected:
                break
            await asyncio.sleep(0.1)
        subject = poll_subject(LOCATION)
        loop = asyncio.get_running_loop()
        warm_up_until = loop.time() + 3.0
        end = warm_up_until + duration
        sent = 0
        #: (when, requests sent by then): what is not answered a TTL later is lost.
        history: deque[tuple[float, int]] = deque()
        lost = 0
        first: tuple[float, int, float, int, int] | None = None
        while (now := loop.time()) < end:
            if first is None and now >= warm_up_until:
                first = (time.perf_counter(), sink.up, cpu_seconds([proc]), sink.results, lost)
            while history and history[0][0] < now - ALONE_TTL:
                lost = max(lost, history.popleft()[1] - sink.results)
            # Like the scheduler: never more requests out than the minion's max_in_flight,
            # and a request unanswered after its TTL is given up (UNKNOWN there).
            while sent - sink.results - lost + per_batch <= max_in_flight:
                await nc.publish(subject, payloads[(sent // per_batch) % len(payloads)])
                sent += per_batch
                history.append((now, sent))
            await asyncio.sleep(0.002)
        assert first is not None
        t0, up0, cpu0, results0, lost0 = first
        elapsed = time.perf_counter() - t0
        rate = (sink.up - up0) / elapsed
        cpu = (cpu_seconds([proc]) - cpu0) / elapsed
        not_up = (sink.results - results0) - (sink.up - up0) + (lost - lost0)
        return _row(
            workload="tcp alone" if event_loop == "uvloop" else f"tcp alone ({event_loop})",
            minions=1,
            workers=workers,
            **{
                "polls/s": round(rate),
                "unknown": not_up,
                "minion CPU %": round(100 * cpu),
                "polls/CPU-s": round(rate / cpu) if cpu else "-",
                "minion RSS MiB": tree_rss([proc]),
            },
        )
    finally:
        await asyncio.to_thread(stop, proc)
        await natsconn.close(nc)
        await server.stop(1)
        nats.stop()


async def main(quick: bool = False) -> list[dict[str, object]]:
    """Every workload with 1, 2 and 4 minions, then one minion with 1, 2 and 4 workers."""
    logging.basicConfig(level=logging.WARNING)
    duration = 5.0 if quick else 15.0
    rows = []
    with tempfile.TemporaryDirectory(prefix="vigil-bench-minions-") as tmp:
        work = Path(tmp)
        # Below, then above, what one scheduler process sustains on a small machine.
        for services in (10_000, 50_000):
            for n in (1, 2, 4):
                rows.append(
                    await run_scenario("noop", n, services, 5.0, duration, "noop", {}, work)
                )
        async with tcp_peer() as port:
            for n in (1, 2, 4):
                rows.append(
                    await run_scenario("tcp", n, 4_000, 2.0, duration, "tcp", {"port": port}, work)
                )
        with blocking_sink() as port:
            for w in (1, 2, 4):
                rows.append(
                    await run_scenario(
                        "tcp workers",
                        1,
                        40_000,
                        5.0,
                        duration,
                        "tcp",
                        {"port": port},
                        work,
                        workers=w,
                    )
                )
            for w in (1, 2, 4):
                rows.append(await minion_alone(w, port, duration, work))
            rows.append(await minion_alone(1, port, duration, work, event_loop="asyncio"))
    return rows


async def alone_only(
    workers: list[int], duration: float, event_loop: str
) -> list[dict[str, object]]:
    """Only the ``tcp alone`` rows (for profiling the minion under load)."""
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vigil-bench-alone-") as tmp, blocking_sink() as port:
        for w in workers:
            rows.append(await minion_alone(w, port, duration, Path(tmp), event_loop=event_loop))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.minions", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument(
        "--alone",
        metavar="WORKERS",
        help="only the 'tcp alone' rows, for these worker counts (e.g. 1,2,4)",
    )
    parser.add_argument("--duration", type=float, default=15.0, help="with --alone: seconds")
    parser.add_argument("--event-loop", default="uvloop", help="with --alone: uvloop or asyncio")
    ns = parser.parse_args()
    if ns.alone:
        counts = [int(w) for w in ns.alone.split(",")]
        print(table(asyncio.run(alone_only(counts, ns.duration, ns.event_loop))))
    else:
        print(table(asyncio.run(main(quick=ns.quick))))
