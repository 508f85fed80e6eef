"""A minion that stalls past the TTL: UNKNOWN with a reason, never an outage."""

from __future__ import annotations

import asyncio
from pathlib import Path

from vigil.v1 import sink_pb2

from minion.monitors.base import Status
from minion.sink_client import SinkClient
from services.core.natsserver import NatsServer
from services.scheduler.model import ServiceKey
from tests import pki as test_pki
from tests.helpers import EventCollector, Stack, TcpTarget, make_config, nats_client, wait_for


async def test_stalled_minion_turns_polls_unknown_at_ttl(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    target = await TcpTarget().start()
    node = {
        "id": "n1",
        "interfaces": [
            {
                "ip": "127.0.0.1",
                "services": [
                    {
                        "name": "Echo",
                        "monitor": "tcp",
                        "params": {"port": target.port},
                        "ttl": "0.4s",
                    }
                ],
            }
        ],
    }
    cfg = make_config(tmp_path, nats_server.url, [node])
    stack = await Stack(cfg, nats_server.url).start(minion_locations=())
    assert stack.scheduler is not None
    # A minion that is alive (session, heartbeats, subscribed) but never answers.
    swallowed: list[bytes] = []
    stalled = test_pki.minion_cert("Default", "stalled")
    nc = await nats_client(nats_server.url, stalled)

    async def swallow(msg: object) -> None:
        swallowed.append(msg.data)  # type: ignore[attr-defined]

    await nc.subscribe("vigil.poll.Default", queue="vigil-minions-Default", cb=swallow)
    await nc.flush()
    hello = sink_pb2.MinionHello(system_id="stalled", location="Default", version="test")
    sink = SinkClient(
        stack.scheduler.grpc_address,
        hello,
        lambda: sink_pb2.Heartbeat(nats_connected=True),
        credentials=test_pki.material(stalled).channel_credentials,
    )
    session = asyncio.create_task(sink.run())
    try:
        rt = stack.scheduler.services[ServiceKey("n1", "127.0.0.1", "Echo")]
        await wait_for(
            lambda: rt.last_poll_status is Status.UNKNOWN, timeout=10, what="UNKNOWN from TTL"
        )
        assert swallowed, "requests reached the stalled minion"
        assert rt.last_reason == "no result within TTL 400ms (location Default)"
        # The target is down as well: still nothing may be concluded.
        await target.stop()
        await asyncio.sleep(1.5)
        assert rt.status is Status.UNKNOWN
        assert rt.open_outage_id is None
        assert events_seen.find(type="service") == []
        assert events_seen.find(type="outage") == []
    finally:
        session.cancel()
        await asyncio.gather(session, return_exceptions=True)
        await nc.close()
        await stack.stop()
        await target.stop()


async def test_late_result_is_counted_and_ignored(tmp_path: Path, nats_server: NatsServer) -> None:
    """A result arriving after its request expired changes nothing."""
    target = await TcpTarget().start()
    node = {
        "id": "n1",
        "interfaces": [
            {
                "ip": "127.0.0.1",
                "services": [{"name": "Echo", "monitor": "tcp", "params": {"port": target.port}}],
            }
        ],
    }
    cfg = make_config(tmp_path, nats_server.url, [node], defaults={"interval": "1h"})
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    assert stack.scheduler is not None and stack.scheduler.dispatcher is not None
    try:
        from vigil.v1 import common_pb2, poll_pb2

        hello = sink_pb2.MinionHello(system_id="late", location="Default", version="test")
        sink = SinkClient(
            stack.scheduler.grpc_address,
            hello,
            lambda: sink_pb2.Heartbeat(nats_connected=True),
            credentials=test_pki.material(
                test_pki.minion_cert("Default", "late")
            ).channel_credentials,
        )
        session = asyncio.create_task(sink.run())
        await wait_for(lambda: sink.connected.is_set(), what="session")
        sink.submit(
            poll_pb2.PollResult(
                request_id="never-sent-1",
                status=common_pb2.POLL_STATUS_DOWN,
                reason="stale news",
            )
        )
        await wait_for(lambda: sink.late == 1, what="late result acknowledged")
        rt = stack.scheduler.services[ServiceKey("n1", "127.0.0.1", "Echo")]
        assert rt.last_reason != "stale news"
        assert rt.open_outage_id is None
        session.cancel()
        await asyncio.gather(session, return_exceptions=True)
    finally:
        await stack.stop()
        await target.stop()
