"""The minion honours TTLs: late requests are dropped, polls never outlive expires_at."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from vigil.v1 import common_pb2, poll_pb2

from minion.monitors.base import Status
from services.core.natsserver import NatsServer
from services.core.timeutil import set_timestamp
from services.scheduler.model import ServiceKey
from tests.helpers import SCHEDULER, Stack, make_config, nats_client, wait_for


def request(
    rid: str, port: int, expires_in: float, *, banner: str | None = None, timeout: float = 1.0
) -> poll_pb2.PollRequest:
    req = poll_pb2.PollRequest(
        id=rid,
        service=common_pb2.ServiceRef(node_id="n", ip="127.0.0.1", service="S"),
        location="Default",
        monitor="tcp",
    )
    params = {"port": port} | ({"banner": banner} if banner else {})
    req.params.update(params)
    req.timeout.FromNanoseconds(int(timeout * 1e9))
    set_timestamp(req.expires_at, time.time() + expires_in)
    set_timestamp(req.sent_at, time.time())
    return req


async def test_request_expired_on_arrival_is_dropped_and_counted(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    cfg = make_config(tmp_path, nats_server.url)
    stack = await Stack(cfg, nats_server.url).start(events=False)
    minion = stack.minions[0]
    nc = await nats_client(nats_server.url, SCHEDULER)  # requests come from the scheduler
    try:
        batch = poll_pb2.PollBatch(
            requests=[request("late-1", 1, expires_in=-1.0), request("late-2", 1, expires_in=-0.01)]
        )
        await nc.publish("vigil.poll.Default", batch.SerializeToString())
        await nc.flush()
        await wait_for(lambda: minion.runner.stats.dropped_expired == 2, what="2 dropped requests")
        assert minion.runner.stats.done == 0
        assert minion.sink.sent == 0  # nothing was polled, nothing reported
    finally:
        await nc.close()
        await stack.stop()


async def test_poll_is_abandoned_at_its_ttl(tmp_path: Path, nats_server: NatsServer) -> None:
    # A peer that accepts connections and then says nothing: a banner check would wait for ever.
    silent_conns: list[asyncio.StreamWriter] = []

    async def hold(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        silent_conns.append(w)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = make_config(tmp_path, nats_server.url)
    stack = await Stack(cfg, nats_server.url).start(events=False)
    minion = stack.minions[0]
    try:
        # Per-attempt timeout 30 s, TTL 0.5 s: the TTL must win.
        minion.runner.submit(request("slow-1", port, expires_in=0.5, banner="^SSH", timeout=30.0))
        assert minion.runner.in_flight == 1
        await wait_for(lambda: minion.runner.stats.abandoned == 1, timeout=5, what="abandoned poll")
        assert minion.runner.in_flight == 0
        assert minion.runner.stats.done == 0
        assert minion.sink.sent == 0
    finally:
        await stack.stop()
        for w in silent_conns:
            w.close()
        server.close()
        await server.wait_closed()


async def test_garbage_on_the_poll_subject_is_counted_and_harmless(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    port_holder = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = port_holder.sockets[0].getsockname()[1]
    node = {
        "id": "n",
        "interfaces": [
            {
                "ip": "127.0.0.1",
                "services": [{"name": "S", "monitor": "tcp", "params": {"port": port}}],
            }
        ],
    }
    cfg = make_config(tmp_path, nats_server.url, [node])
    stack = await Stack(cfg, nats_server.url).start(events=False)
    minion = stack.minions[0]
    nc = await nats_client(nats_server.url, SCHEDULER)  # requests come from the scheduler
    try:
        await nc.publish("vigil.poll.Default", b"\xff\x00 this is not a protobuf")
        await nc.flush()
        await wait_for(lambda: minion.runner.stats.malformed == 1, what="malformed counted")
        rt = stack.scheduler.services[ServiceKey("n", "127.0.0.1", "S")]  # type: ignore[union-attr]
        # The minion keeps serving real requests.
        before = minion.runner.stats.done
        await wait_for(
            lambda: minion.runner.stats.done > before and rt.status is Status.UP, what="later polls"
        )
    finally:
        await nc.close()
        await stack.stop()
        port_holder.close()
