"""Several minions at a location: sharing, aimed requests, flow control, kills, drains, reconnects."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from vigil.v1 import common_pb2, poll_pb2, sink_pb2

from minion.monitors.base import Status
from minion.sink_client import SinkClient
from services.core.natsserver import NatsServer
from services.core.timeutil import set_timestamp
from services.scheduler.model import ServiceKey
from tests import pki as test_pki
from tests.helpers import (
    SCHEDULER,
    EventCollector,
    Stack,
    free_port,
    make_config,
    nats_client,
    wait_for,
)
from tests.minions.util import BannerTarget, MinionProcess, list_outages, noop_nodes, tcp_node


def banner_nodes(count: int, port: int, location: str, **svc: str) -> list[dict[str, Any]]:
    """``count`` nodes polling the slow banner target (UP after its delay)."""
    return [
        tcp_node(f"n{i}", port, location, params={"banner": "^OK"}, **svc) for i in range(count)
    ]


def noop_request(rid: str, location: str, expires_in: float = 5.0) -> poll_pb2.PollRequest:
    req = poll_pb2.PollRequest(
        id=rid,
        service=common_pb2.ServiceRef(node_id="x", ip="127.0.0.1", service="Noop"),
        location=location,
        monitor="noop",
    )
    set_timestamp(req.expires_at, time.time() + expires_in)
    return req


async def minion_process_polling(
    stack: Stack, tmp: Path, processes: list[MinionProcess], system_id: str
) -> MinionProcess:
    """A minion process at "edge", once the scheduler sees it with polls in flight."""
    assert stack.scheduler is not None
    proc = MinionProcess(
        tmp,
        nats_url=stack.nats_url,
        scheduler=stack.scheduler.grpc_address,
        location="edge",
        system_id=system_id,
    ).start()
    processes.append(proc)
    registry = stack.scheduler.registry
    await wait_for(
        lambda: (r := registry.get(system_id)) is not None and r.in_flight > 0,
        timeout=30,
        what=f"{system_id} polling",
    )
    return proc


async def test_minions_of_a_location_share_the_work(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    cfg = make_config(
        tmp_path, nats_server.url, noop_nodes(20, "edge"), scheduler={"batch_size": 2}
    )
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    try:
        a = await stack.start_minion("edge", system_id="edge-a", spool_dir=str(tmp_path / "spool"))
        b = await stack.start_minion("edge", system_id="edge-b", spool_dir=str(tmp_path / "spool"))
        await wait_for(
            lambda: a.runner.stats.done > 0 and b.runner.stats.done > 0, what="both minions polling"
        )
    finally:
        await stack.stop()


async def test_request_aimed_at_one_minion_reaches_only_it(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    cfg = make_config(tmp_path, nats_server.url)
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    nc = await nats_client(nats_server.url, SCHEDULER)
    try:
        a = await stack.start_minion("edge", system_id="edge-a", spool_dir=str(tmp_path / "spool"))
        b = await stack.start_minion("edge", system_id="edge-b", spool_dir=str(tmp_path / "spool"))
        batch = poll_pb2.PollBatch(requests=[noop_request(f"aimed-{i}", "edge") for i in range(5)])
        await nc.publish("vigil.poll.edge.edge-b", batch.SerializeToString())
        await nc.flush()
        await wait_for(lambda: b.runner.stats.done == 5, what="5 polls on edge-b")
        assert a.runner.stats.received == 0
        # The results came back (as late: the scheduler did not send these requests).
        await wait_for(lambda: b.sink.late == 5, what="results acknowledged")
    finally:
        await nc.close()
        await stack.stop()


async def test_full_minion_leaves_the_queue_group_and_its_peer_takes_the_requests(
    tmp_path: Path, nats_server: NatsServer, banner_target: BannerTarget
) -> None:
    nodes = banner_nodes(12, banner_target.port, "edge", interval="1s", timeout="2s", ttl="3s")
    cfg = make_config(tmp_path, nats_server.url, nodes, scheduler={"batch_size": 1})
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    assert stack.scheduler is not None
    try:
        small = await stack.start_minion(
            "edge", system_id="small", max_in_flight=2, spool_dir=str(tmp_path / "s")
        )
        big = await stack.start_minion(
            "edge", system_id="big", max_in_flight=100, spool_dir=str(tmp_path / "s")
        )
        services = list(stack.scheduler.services.values())
        await wait_for(
            lambda: all(rt.status is Status.UP for rt in services),
            timeout=20,
            what="every service UP",
        )
        await wait_for(
            lambda: small.intake_pauses >= 1, what="the small minion leaves the queue group"
        )
        await wait_for(lambda: small.intake_resumes >= 1, what="and joins again")
        assert small.runner.stats.saturated >= 1
        assert small.runner.stats.peak_in_flight <= small.runner.max_queued  # bounded
        # The small one started first and had the location to itself for a moment;
        # from then on its peer takes what it cannot.
        await wait_for(
            lambda: big.runner.stats.done > small.runner.stats.done,
            timeout=20,
            what="the big minion doing more of the work",
        )
    finally:
        await stack.stop()


async def test_killed_minion_leaves_polls_unknown_never_down_and_its_peer_takes_over(
    tmp_path: Path,
    nats_server: NatsServer,
    events_seen: EventCollector,
    banner_target: BannerTarget,
    minion_processes: list[MinionProcess],
) -> None:
    nodes = banner_nodes(10, banner_target.port, "edge", interval="1s", timeout="2s", ttl="2s")
    cfg = make_config(tmp_path, nats_server.url, nodes)
    stack = await Stack(cfg, nats_server.url).start(minion_locations=())
    assert stack.scheduler is not None
    try:
        stays = await stack.start_minion(
            "edge", system_id="stays", spool_dir=str(tmp_path / "spool")
        )
        doomed = await minion_process_polling(stack, tmp_path, minion_processes, "doomed")
        doomed.kill()  # mid-batch: its polls in flight never answer
        killed_at = time.time()
        services = list(stack.scheduler.services.values())
        await wait_for(
            lambda: events_seen.find(type="minion", action="down", location="edge"),
            what="minion down for doomed",
        )
        # Every service is polled again, by the survivor, and is UP.
        await wait_for(
            lambda: all(
                rt.status is Status.UP and (rt.last_poll_at or 0) > killed_at + 1 for rt in services
            ),
            timeout=20,
            what="the survivor polls everything",
        )
        assert stays.runner.stats.done > 0
        assert await list_outages(stack) == []
        assert events_seen.find(type="service") == []
        assert events_seen.find(type="location") == []  # the location never went dark
        assert [e["data"]["systemId"] for e in events_seen.find(type="minion", action="down")] == [
            "doomed"
        ]
    finally:
        await stack.stop()


async def test_sigterm_drains_in_flight_polls_flushes_and_says_goodbye(
    tmp_path: Path,
    nats_server: NatsServer,
    events_seen: EventCollector,
    minion_processes: list[MinionProcess],
) -> None:
    target = await BannerTarget(1.0).start()
    nodes = banner_nodes(6, target.port, "edge", interval="2s", timeout="5s", ttl="8s")
    cfg = make_config(tmp_path, nats_server.url, nodes)
    stack = await Stack(cfg, nats_server.url).start(minion_locations=())
    assert stack.scheduler is not None
    try:
        proc = await minion_process_polling(stack, tmp_path, minion_processes, "term")
        code = await asyncio.to_thread(proc.terminate, 60.0)
        assert code == 0, proc.output()
        out = proc.output()
        assert "said goodbye to the scheduler" in out
        assert "not acknowledged" not in out
        down = await wait_for(
            lambda: events_seen.find(type="minion", action="down"), what="minion down"
        )
        assert down[0]["data"]["reason"] == "minion stopped: shutdown"
        assert await list_outages(stack) == []
    finally:
        await stack.stop()
        await target.stop()


async def test_drain_finishes_polls_and_delivers_every_result(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    target = await BannerTarget(0.8).start()
    nodes = banner_nodes(6, target.port, "edge", interval="1s", timeout="5s", ttl="8s")
    cfg = make_config(tmp_path, nats_server.url, nodes)
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    try:
        m = await stack.start_minion("edge", system_id="drain", spool_dir=str(tmp_path / "spool"))
        await wait_for(lambda: m.runner.in_flight >= 2, what="polls in flight")
        await stack.stop_minion(m)
        assert m.runner.in_flight == 0
        assert m.runner.stats.abandoned == 0  # finished, not cut short
        assert m.sink.backlog == 0
        assert m.sink.sent == m.runner.stats.done  # every result left...
        assert m.sink.acked == m.sink.sent  # ...and was acknowledged before the goodbye
    finally:
        await stack.stop()
        await target.stop()


async def test_minion_rides_out_a_nats_restart(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    cfg = make_config(
        tmp_path, nats_server.url, noop_nodes(3, "Default"), scheduler={"heartbeat_misses": 20}
    )
    stack = await Stack(cfg, nats_server.url).start(minion_locations=())
    assert stack.scheduler is not None
    try:
        m = await stack.start_minion("Default", system_id="d-1", spool_dir=str(tmp_path / "spool"))
        rt = stack.scheduler.services[ServiceKey("n0", "127.0.0.1", "Noop")]
        await wait_for(lambda: rt.status is Status.UP, what="UP")
        nats_server.stop()
        await wait_for(lambda: m._nc is not None and not m._nc.is_connected, what="NATS lost")
        nats_server.start()
        restarted = time.time()
        await wait_for(
            lambda: (rt.last_poll_at or 0) > restarted and rt.last_poll_status is Status.UP,
            timeout=30,
            what="polling resumes",
        )
        assert rt.status is Status.UP
        assert rt.open_outage_id is None
        # A NATS blip is no site outage: no minion or location event.
        assert events_seen.find(type="minion", action="down") == []
        assert events_seen.find(type="location") == []
    finally:
        await stack.stop()


async def test_results_whose_request_expired_while_buffered_are_dropped_and_counted(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Results wait for the scheduler; those past their request's expires_at are not sent."""
    port = free_port()
    hello = sink_pb2.MinionHello(system_id="buffered", location="Default", version="test")
    sink = SinkClient(
        f"127.0.0.1:{port}",
        hello,
        lambda: sink_pb2.Heartbeat(nats_connected=True),
        credentials=test_pki.material(
            test_pki.minion_cert("Default", "buffered")
        ).channel_credentials,
    )
    session = asyncio.create_task(sink.run())
    cfg = make_config(tmp_path, nats_server.url, scheduler={"listen": f"127.0.0.1:{port}"})
    stack = Stack(cfg, nats_server.url)
    try:
        wall = time.time()
        for i in range(3):
            sink.submit(
                poll_pb2.PollResult(request_id=f"old-{i}", status=common_pb2.POLL_STATUS_UP),
                wall + 0.2,
            )
        for i in range(2):
            sink.submit(
                poll_pb2.PollResult(request_id=f"new-{i}", status=common_pb2.POLL_STATUS_UP),
                wall + 600,
            )
        await asyncio.sleep(0.3)  # the first three expire while the scheduler is away
        await stack.start(events=False, minion_locations=())
        await wait_for(
            lambda: sink.backlog == 0 and sink.connected.is_set(), timeout=20, what="delivered"
        )
        assert sink.late_dropped == 3
        assert sink.sent == 2
        assert sink.late == 2  # unknown request ids to this scheduler: counted there as late
    finally:
        session.cancel()
        await asyncio.gather(session, return_exceptions=True)
        await stack.stop()
