"""A minion of several worker processes (``minion.workers``, issue 13) is one minion.

Real processes throughout: ``vigil minion`` with two workers against an
in-process scheduler and a real nats-server. The scheduler must see one
minion (one session, one ``minion up``) whose heartbeats add up its workers;
a request aimed at the minion runs once; a worker that dies is started again
while the minion stays up and keeps polling; SIGTERM stops every process.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import psutil
from vigil.v1 import poller_pb2

from minion.monitors.base import Status
from services.core.natsserver import NatsServer
from services.scheduler import sink as scheduler_sink
from tests.helpers import EventCollector, Stack, TcpTarget, make_config, wait_for
from tests.minions.util import MinionProcess, list_minions, noop_nodes, tcp_node

SYSTEM_ID = "multi"


def worker_pids(proc: MinionProcess) -> list[int]:
    """The minion's worker processes (children running ``minion.worker``)."""
    assert proc.proc is not None
    try:
        children = psutil.Process(proc.proc.pid).children()
    except psutil.NoSuchProcess:
        return []
    pids = []
    for child in children:
        try:
            if "minion.worker" in child.cmdline():
                pids.append(child.pid)
        except psutil.Error:
            continue
    return sorted(pids)


def alive(pid: int) -> bool:
    """``pid`` is a running process (not a zombie waiting for its parent)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def refused(reason: str) -> float:
    """``vigil_scheduler_results_refused_total{reason}`` so far."""
    return float(scheduler_sink.RESULTS_REFUSED.labels(reason)._value.get())


def start_minion(stack: Stack, tmp: Path, processes: list[MinionProcess]) -> MinionProcess:
    assert stack.scheduler is not None
    proc = MinionProcess(
        tmp,
        nats_url=stack.nats_url,
        scheduler=stack.scheduler.grpc_address,
        location="edge",
        system_id=SYSTEM_ID,
        workers=2,
        max_in_flight=40,
    ).start()
    processes.append(proc)
    return proc


async def both_workers_subscribed(proc: MinionProcess) -> None:
    """Each worker has joined NATS (so requests are shared from now on)."""
    await wait_for(
        lambda: (
            len(re.findall(r"worker \d of minion multi: NATS", proc.output())) >= 2
            and len(worker_pids(proc)) == 2
        ),
        timeout=60,
        what="both workers subscribed",
    )


async def test_two_workers_are_one_minion_with_the_whole_minions_totals(
    tmp_path: Path,
    nats_server: NatsServer,
    events_seen: EventCollector,
    minion_processes: list[MinionProcess],
) -> None:
    target = await TcpTarget().start()
    # Polled when the test says (interval 1h), in requests of two: 21 messages shared by NATS.
    nodes = [*noop_nodes(40, "edge"), tcp_node("tcp", target.port, "edge")]
    for node in nodes:
        for svc in node["interfaces"][0]["services"]:
            svc["interval"] = "1h"
    cfg = make_config(tmp_path, nats_server.url, nodes, scheduler={"batch_size": 2})
    stack = await Stack(cfg, nats_server.url).start(minion_locations=())
    assert stack.scheduler is not None
    registry = stack.scheduler.registry
    try:
        proc = start_minion(stack, tmp_path, minion_processes)
        await both_workers_subscribed(proc)
        services = list(stack.scheduler.services.values())
        # The first round (sent at start, maybe before the minion was there) is over.
        await wait_for(
            lambda: (
                all(rt.last_poll_status is not None and rt.in_flight is None for rt in services)
                and (r := registry.get(SYSTEM_ID)) is not None
                and r.in_flight == 0
            ),
            timeout=30,
            what="the first round over",
        )
        await asyncio.sleep(1.0)  # its last heartbeat in
        session = registry.get(SYSTEM_ID)
        assert session is not None
        done0 = session.polls_done

        # One request per service on the location's subject: each runs once, in either worker.
        sent_at = time.time()
        await stack.scheduler.dispatcher.send(services)
        await wait_for(
            lambda: all(
                rt.status is Status.UP and (rt.last_poll_at or 0) >= sent_at for rt in services
            ),
            timeout=30,
            what="a result for every service",
        )
        # The heartbeats add up both workers: every service polled once more, none twice.
        await wait_for(
            lambda: session.polls_done == done0 + len(services) and session.in_flight == 0,
            what="polls_done of the whole minion",
        )
        minions = await list_minions(stack, "edge")
        assert [(m.system_id, m.status) for m in minions] == [
            (SYSTEM_ID, poller_pb2.MINION_STATUS_UP)
        ]
        assert minions[0].polls_done == done0 + len(services)
        assert minions[0].in_flight == 0
        assert session.capacity == 40  # the whole minion's max_in_flight, not a worker's

        # Requests aimed at the minion (its own subject) run once, by one worker.
        unknown_before = refused("unknown_id")
        await stack.scheduler.dispatcher.send(services, system_id=SYSTEM_ID)
        await wait_for(
            lambda: session.polls_done == done0 + 2 * len(services),
            what="the aimed polls done",
        )
        await asyncio.sleep(1.0)  # a second result for any of them would come by now
        assert session.polls_done == done0 + 2 * len(services)
        assert refused("unknown_id") == unknown_before
        assert registry.get(SYSTEM_ID) is session  # one session all along

        ups = events_seen.find(type="minion", action="up")
        assert [e["data"]["systemId"] for e in ups] == [SYSTEM_ID]

        # SIGTERM: the workers stop, the parent flushes, says goodbye and exits 0.
        workers = worker_pids(proc)
        code = await asyncio.to_thread(proc.terminate, 60.0)
        out = proc.output()
        assert code == 0, out
        assert "said goodbye to the scheduler" in out
        assert not [pid for pid in workers if alive(pid)]
        done = re.search(r"polls done (\d+)\+(\d+)=(\d+)", out)
        assert done is not None, out
        assert int(done.group(1)) + int(done.group(2)) == int(done.group(3)) == session.polls_done
        down = await wait_for(
            lambda: events_seen.find(type="minion", action="down"), what="minion down"
        )
        assert down[0]["data"]["reason"] == "minion stopped: shutdown"
    finally:
        await stack.stop()
        await target.stop()


async def test_a_dead_worker_is_started_again_and_the_minion_keeps_polling(
    tmp_path: Path,
    nats_server: NatsServer,
    events_seen: EventCollector,
    minion_processes: list[MinionProcess],
) -> None:
    cfg = make_config(
        tmp_path, nats_server.url, noop_nodes(20, "edge"), scheduler={"batch_size": 2}
    )
    stack = await Stack(cfg, nats_server.url).start(minion_locations=())
    assert stack.scheduler is not None
    registry = stack.scheduler.registry
    try:
        proc = start_minion(stack, tmp_path, minion_processes)
        await both_workers_subscribed(proc)
        await wait_for(
            lambda: (r := registry.get(SYSTEM_ID)) is not None and r.polls_done > 40,
            timeout=30,
            what="polling",
        )
        before = worker_pids(proc)
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        seen: list[int] = []

        def restarted() -> bool:
            session = registry.get(SYSTEM_ID)
            assert session is not None
            seen.append(session.polls_done)
            now = worker_pids(proc)
            return len(now) == 2 and victim not in now

        await wait_for(restarted, timeout=60, what="the worker started again")
        assert "was killed by signal 9; starting it again" in proc.output()
        await both_workers_subscribed(proc)
        # Polling goes on, and the whole minion's count never goes back (the dead
        # worker's polls stay counted).
        after_restart = seen[-1]
        await wait_for(
            lambda: restarted() and seen[-1] > after_restart + 40,
            timeout=30,
            what="polling after the restart",
        )
        assert seen == sorted(seen)
        session = registry.get(SYSTEM_ID)
        assert session is not None and session.up and session.open
        # One minion, up all along: no minion down, no second minion up.
        assert events_seen.find(type="minion", action="down") == []
        assert [e["data"]["systemId"] for e in events_seen.find(type="minion", action="up")] == [
            SYSTEM_ID
        ]
        minions = await list_minions(stack, "edge")
        assert [(m.system_id, m.status) for m in minions] == [
            (SYSTEM_ID, poller_pb2.MINION_STATUS_UP)
        ]

        # Both workers took their share of the location's queue group.
        workers = worker_pids(proc)
        stopped_at = time.monotonic()
        code = await asyncio.to_thread(proc.terminate, 60.0)
        out = proc.output()
        assert code == 0, out
        assert time.monotonic() - stopped_at < 60
        assert not [pid for pid in workers if alive(pid)]
        done = re.search(r"polls done (\d+)\+(\d+)=(\d+), 1 worker restart", out)
        assert done is not None, out
        assert int(done.group(1)) > 0 and int(done.group(2)) > 0, done.group(0)
    finally:
        await stack.stop()


async def test_a_killed_minion_takes_its_workers_with_it(
    tmp_path: Path, nats_server: NatsServer, minion_processes: list[MinionProcess]
) -> None:
    cfg = make_config(tmp_path, nats_server.url, noop_nodes(2, "edge"))
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    try:
        proc = start_minion(stack, tmp_path, minion_processes)
        await both_workers_subscribed(proc)
        workers = worker_pids(proc)
        proc.kill()  # SIGKILL: no stop of its own, the kernel ends the workers
        await wait_for(
            lambda: not [pid for pid in workers if alive(pid)], what="the workers gone too"
        )
    finally:
        await stack.stop()


# -- the parts, without processes ---------------------------------------------------------


def test_results_batch_encoded_from_serialized_results_is_the_batch_message() -> None:
    from vigil.v1 import poll_pb2, sink_pb2

    from minion.sink_client import encode_results

    results = [
        poll_pb2.PollResult(request_id=f"r{i}", reason="x" * (40 * i), response_time_ms=i)
        for i in range(6)
    ]
    mixed: list[poll_pb2.PollResult | bytes] = [
        r.SerializeToString() if i % 2 else r for i, r in enumerate(results)
    ]
    decoded = sink_pb2.MinionMessage.FromString(encode_results(300, mixed))
    assert decoded == sink_pb2.MinionMessage(results=sink_pb2.ResultBatch(seq=300, results=results))


def test_frames_and_records_round_trip() -> None:
    from minion.ipc import FrameError, pack_results, pack_tagged, unpack_results, unpack_tagged

    records = [(1796170000.25, b"abc"), (0.0, b""), (2.5, bytes(range(256)) * 10)]
    assert list(unpack_results(pack_results(records))) == records
    tagged = [(1, b"x"), (2**40, b"y" * 1000)]
    assert list(unpack_tagged(pack_tagged(tagged))) == tagged
    try:
        list(unpack_results(pack_results(records)[:-1]))
    except FrameError:
        pass
    else:
        raise AssertionError("a truncated record must be refused")


def test_max_in_flight_is_divided_among_the_workers() -> None:
    from minion.workers import shares, worker_count
    from services.core.config import MinionSettings

    assert shares(1000, 3) == [334, 333, 333]
    assert sum(shares(7, 4)) == 7
    assert worker_count(MinionSettings(workers=4, max_in_flight=1000)) == 4
    assert worker_count(MinionSettings(workers=4, max_in_flight=2)) == 2  # a slot each at least
    assert worker_count(MinionSettings(workers=1)) == 1
    assert worker_count(MinionSettings()) >= 1  # null: the cores this process may use


async def test_a_deadline_is_a_timeout_and_lets_other_cancellations_through() -> None:
    from minion.runner import Deadline

    loop = asyncio.get_running_loop()
    try:
        with Deadline(loop, loop.time() + 0.05):
            await asyncio.sleep(5)
    except TimeoutError:
        pass
    else:
        raise AssertionError("no timeout")

    with Deadline(loop, loop.time() + 5):
        await asyncio.sleep(0.01)  # done in time: nothing happens

    async def cancelled_inside() -> None:
        with Deadline(loop, loop.time() + 5):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(cancelled_inside())
    await asyncio.sleep(0.01)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("a cancellation from outside must stay a cancellation")
    assert task.cancelled()
