"""Restarting the scheduler mid-outage, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

from minion.monitors.base import Status
from services.core.natsserver import NatsServer
from services.scheduler.model import ServiceKey
from tests.helpers import EventCollector, Stack, TcpTarget, make_config, wait_for

KEY = ServiceKey("n1", "127.0.0.1", "Echo")
GONE = ServiceKey("n1", "127.0.0.1", "Gone")


def nodes(port: int, with_gone: bool) -> list[dict[str, object]]:
    services = [{"name": "Echo", "monitor": "tcp", "params": {"port": port}}]
    if with_gone:
        services.append({"name": "Gone", "monitor": "tcp", "params": {"port": 9}})
    return [{"id": "n1", "interfaces": [{"ip": "127.0.0.1", "services": services}]}]


async def test_restart_mid_outage_keeps_outages_and_emits_no_duplicates(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector, db_url: str
) -> None:
    target = await TcpTarget().start()
    cfg = make_config(
        tmp_path, nats_server.url, nodes(target.port, True), scheduler={"store_url": db_url}
    )
    stack = await Stack(cfg, nats_server.url).start()
    try:
        assert stack.scheduler is not None
        rt = stack.scheduler.services[KEY]
        await wait_for(lambda: rt.status is Status.UP, what="UP")
        await target.stop()
        await wait_for(lambda: rt.open_outage_id, what="Echo outage")
        await wait_for(lambda: stack.scheduler.services[GONE].open_outage_id, what="Gone outage")  # type: ignore[union-attr]
        outage_id = rt.open_outage_id
        await wait_for(
            lambda: len(events_seen.find(type="service", action="lost")) == 2, what="2 lost events"
        )
        await stack.scheduler.stop()

        # Restart with "Gone" no longer configured.
        stack.cfg = make_config(
            tmp_path, nats_server.url, nodes(target.port, False), scheduler={"store_url": db_url}
        )
        for m in list(stack.minions):
            await stack.stop_minion(m)
        await stack.start_scheduler()
        await stack.start_minion()
        rt = stack.scheduler.services[KEY]
        # It starts DOWN with the same outage; no event for the restored state.
        assert rt.status is Status.DOWN
        assert rt.open_outage_id == outage_id
        assert rt.outage_cause == "service"
        await asyncio.sleep(1.5)  # several polls of the still-dead target
        assert len(events_seen.find(type="service", action="lost")) == 2
        assert len(events_seen.find(type="outage", action="opened")) == 2
        # The outage of the service no longer configured was closed as unmanaged.
        closed = await wait_for(
            lambda: [
                e
                for e in events_seen.find(type="outage", action="closed")
                if e["data"]["service"] == "Gone"
            ],
            what="Gone closed",
        )
        assert closed[0]["data"]["reason"] == "unmanaged"

        await target.start()
        regained = await wait_for(
            lambda: events_seen.find(type="service", action="regained"), what="regained"
        )
        assert regained[0]["data"]["outageId"] == outage_id
        rows, total = await stack.scheduler.store.list_outages(
            state=None, node_id="n1", service=None, before_id=None, limit=10
        )
        assert total == 2
        assert all(r.closed_at is not None for r in rows)
        assert {r.close_reason for r in rows} == {"service regained", "unmanaged"}
        # Each event reached NATS exactly once (ids are unique).
        ids = [e["id"] for e in events_seen.events]
        assert len(ids) == len(set(ids))
    finally:
        await stack.stop()
        await target.stop()
