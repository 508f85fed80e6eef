"""Hardening (issue 10): health and metrics tell the truth about what cannot work.

Defect 9: a scheduler store that refuses writes (SQLite on a full tmpfs) makes
health NOT_SERVING / 503 with the reason, counts the failing writes, and marks
GetService/ListServices answers ``store_degraded_since``; space back, all is.
Defect 10: JetStream streams that vanish (a fresh NATS) are re-created, and
health says NOT_SERVING / 503 until they are back.
Defect 11: ``vigil_scheduler_outbox_events`` is set before a refused batch raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from vigil.v1 import events_pb2, poller_pb2, poller_pb2_grpc

from services.core.events import make_event
from services.core.httpstatus import HealthState, StatusServer
from services.core.natsserver import NatsServer
from services.core.status import Status
from services.events.app import EventService
from services.scheduler import metrics
from services.scheduler.outbox import OutboxRelay
from services.scheduler.store import SchedulerStore
from tests import pki as test_pki
from tests.events.test_hooks import create_hook
from tests.events.util import Receiver, events_config, events_stub
from tests.helpers import (
    SCHEDULER,
    EventCollector,
    Stack,
    TcpTarget,
    make_config,
    nats_client,
    wait_for,
)
from tests.pg import PG_ADMIN_URL, create_database, drop_database
from tests.test_pipeline import KEY, tcp_node

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _healthz(port: int) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as resp,
    ):
        return resp.status, await resp.text()


def _fresh_nats(server: NatsServer) -> None:
    """The same server (port, PKI) restarted with an empty store: every stream is gone."""
    server.stop()
    shutil.rmtree(server.data_dir / "jetstream", ignore_errors=True)
    server.start()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of our own (root only), always unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory: Path) -> Path:
    """Write zeros into ``directory`` until its file system has not one block left."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        for size in (1 << 16, 512):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    assert os.statvfs(directory).f_bavail == 0
    return filler


async def _health_status(address: str) -> int:
    async with test_pki.operator_channel(address) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="vigil.v1.Poller"), timeout=5
        )
        return int(resp.status)


def _write_failures() -> float:
    return REGISTRY.get_sample_value("vigil_scheduler_store_write_failures_total") or 0.0


async def test_full_disk_under_the_scheduler_store_is_reported_and_nothing_lost(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector, small_tmpfs: Path
) -> None:
    """The store on a full tmpfs: 503 + NOT_SERVING + stale marks; space back: all recovers."""
    target = await TcpTarget().start()
    cfg = make_config(
        tmp_path,
        nats_server.url,
        [tcp_node(target.port)],
        scheduler={
            "store_url": f"sqlite:///{small_tmpfs}/scheduler.db",
            "metrics_listen": "127.0.0.1:0",
        },
    )
    stack = await Stack(cfg, nats_server.url).start()
    filler: Path | None = None
    try:
        sched = stack.scheduler
        assert sched is not None and sched.status_server is not None
        port = sched.status_server.port
        rt = sched.services[KEY]
        await wait_for(lambda: rt.status is Status.UP, what="service UP")
        assert (await _healthz(port))[0] == 200
        failures_before = _write_failures()

        filler = _fill(small_tmpfs)
        await target.stop()  # DOWN: an outage and its events to write, on a full disk

        async def unhealthy() -> str | None:
            status, text = await _healthz(port)
            return text if status == 503 else None

        text = await wait_for(unhealthy, 30, interval=0.2, what="/healthz 503 on a full disk")
        assert "scheduler store refuses writes" in text, text
        assert "full" in text, text
        assert await _health_status(sched.grpc_address) == NOT_SERVING
        assert _write_failures() > failures_before
        async with test_pki.operator_channel(sched.grpc_address) as ch:
            stub = poller_pb2_grpc.PollerStub(ch)
            ref = poller_pb2.GetServiceRequest()
            ref.service.node_id, ref.service.ip, ref.service.service = (
                KEY.node_id,
                KEY.ip,
                KEY.service,
            )
            got = await stub.GetService(ref)
            assert got.HasField("store_degraded_since")
            assert "full" in got.store_degraded_reason
            listed = await stub.ListServices(poller_pb2.ListServicesRequest())
            assert all(s.HasField("store_degraded_since") for s in listed.services)

            filler.unlink()
            filler = None
            await wait_for(
                lambda: sched.store.degraded_since is None, 30, what="the store writing again"
            )
            await wait_for(lambda: _healthz(port), 10, what="/healthz answering")
            assert (await _healthz(port))[0] == 200
            await wait_for(
                lambda: _health_status(sched.grpc_address), 10, what="gRPC health answering"
            )
            await wait_for(_serving(sched.grpc_address), 10, what="gRPC health SERVING again")
            got = await stub.GetService(ref)
            assert not got.HasField("store_degraded_since")
            # Nothing lost: the outage written once there was room, and its events sent.
            await wait_for(
                lambda: events_seen.find(type="outage", action="opened"), 20, what="outage opened"
            )
            assert events_seen.find(type="service", action="lost")
            outages = await stub.ListOutages(
                poller_pb2.ListOutagesRequest(state=poller_pb2.OUTAGE_STATE_OPEN)
            )
            assert [o.service.service for o in outages.outages] == ["Echo"]
    finally:
        if filler is not None:
            filler.unlink()
        await stack.stop()
        await target.stop()


def _serving(address: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await _health_status(address) == SERVING)

    return check


async def _refreshed_floor(svc: EventService) -> bool:
    await svc.hooks.refresh_all()
    return all(r.row.ack_floor > 0 for r in svc.hooks.runners.values())


async def _watch_health(address: str, seen: list[int]) -> None:
    async with test_pki.operator_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        async for resp in stub.Watch(health_pb2.HealthCheckRequest(service="")):
            seen.append(resp.status)


async def test_healthz_names_each_problem(tmp_path: Path) -> None:
    """A real /healthz: 503 with the reasons while a problem stands, 200 once cleared."""
    state = HealthState()
    server = StatusServer("127.0.0.1:0", state=state)
    port = await server.start()
    try:
        assert await _healthz(port) == (200, "ok\n")
        state.set("store", "the store refuses writes: database or disk is full")
        status, text = await _healthz(port)
        assert status == 503
        assert "database or disk is full" in text
        state.clear("store")
        assert (await _healthz(port))[0] == 200
    finally:
        await server.stop()


async def test_event_service_recreates_streams_of_a_fresh_nats(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Streams gone: health goes NOT_SERVING, the streams come back, Publish, ingest, hooks work."""
    svc = EventService(
        events_config(tmp_path, nats_server.url, metrics_listen="127.0.0.1:0"),
        nats_url=nats_server.url,
    )
    await svc.start()
    seen: list[int] = []
    watcher = asyncio.create_task(_watch_health(svc.grpc_address, seen))
    receiver = await Receiver().start()
    try:
        assert svc.status_server is not None
        port = svc.status_server.port
        await wait_for(lambda: SERVING in seen, 10, what="gRPC health SERVING")
        async with events_stub(svc.grpc_address) as stub:
            await create_hook(stub, "ops", receiver.url)
            first = await stub.Publish(
                events_pb2.PublishRequest(
                    event=events_pb2.Event(type="node", action="down", node_id="n-0")
                )
            )
        await wait_for(
            lambda: any(b.get("id") == first.event.id for b in receiver.bodies()),
            10,
            what="the hook delivering the first event",
        )
        # The hook's place as the service remembers it (refreshed every few seconds):
        # a cursor made again resumes after it. (A hook that never delivered anything
        # resumes with events published from then on: services/events/hooks/cursor.py.)
        await wait_for(
            lambda: _refreshed_floor(svc), 10, what="the hook's acknowledged position known"
        )
        _fresh_nats(nats_server)
        async with events_stub(svc.grpc_address) as stub:
            # Publish fails (UNAVAILABLE) only until the streams are back.
            resp = None
            loop = asyncio.get_running_loop()
            end = loop.time() + 30
            while resp is None:
                assert loop.time() < end, "Publish never worked again after a fresh NATS"
                try:
                    resp = await stub.Publish(
                        events_pb2.PublishRequest(
                            event=events_pb2.Event(type="node", action="down", node_id="n-1")
                        ),
                        timeout=10,
                    )
                except grpc.aio.AioRpcError as exc:
                    refused = (exc.code(), exc.details())
                else:
                    continue
                assert refused[0] == grpc.StatusCode.UNAVAILABLE, refused
                await asyncio.sleep(0.1)
            event_id = resp.event.id

            async def stored() -> bool:
                listed = await stub.ListEvents(events_pb2.ListEventsRequest(page_size=50))
                return any(e.id == event_id for e in listed.events)

            # The ingest consumer was bound again too: the event reaches the history.
            await wait_for(
                stored, 20, interval=0.2, what="the event published after in the history"
            )
        # The hook's cursor was made again on the new VIGIL_EVENTS: it is delivered.
        await wait_for(
            lambda: any(b.get("id") == event_id for b in receiver.bodies()),
            20,
            interval=0.2,
            what="the hook delivering the event published after",
        )
        assert NOT_SERVING in seen, f"gRPC health never said NOT_SERVING: {seen}"
        await wait_for(lambda: seen[-1] == SERVING, 10, what="gRPC health SERVING again")
        assert (await _healthz(port))[0] == 200
        assert svc.streams is not None and svc.streams.recreated >= 2
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await svc.stop()
        await receiver.stop()


def _outbox_gauge() -> float:
    value = REGISTRY.get_sample_value("vigil_scheduler_outbox_events")
    assert value is not None
    return value


async def test_outbox_gauge_counts_events_jetstream_refused(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """No VIGIL_INGEST stream: every publish fails, and the gauge shows the two waiting."""
    store = SchedulerStore(f"sqlite:///{tmp_path}/scheduler.db")
    await store.open()
    nc = await nats_client(nats_server.url, SCHEDULER)
    try:
        async with store.transaction() as tx:
            await tx.enqueue([make_event("node", "added", source="test") for _ in range(2)])
        relay = OutboxRelay(store, nc.jetstream())
        metrics.OUTBOX.set(0)
        with pytest.raises(ConnectionError, match="2 of 2 event"):
            await relay.relay_once()
        assert _outbox_gauge() == 2
        assert await store.outbox_size() == 2
    finally:
        await nc.close()
        await store.close()


async def test_scheduler_recreates_the_ingest_stream_of_a_fresh_nats(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """A fresh NATS under the scheduler: NOT_SERVING until VIGIL_INGEST is back, then events flow."""
    target = await TcpTarget().start()
    cfg = make_config(
        tmp_path,
        nats_server.url,
        [tcp_node(target.port)],
        scheduler={"metrics_listen": "127.0.0.1:0"},
    )
    # No event service: it would re-create VIGIL_INGEST itself, first.
    stack = await Stack(cfg, nats_server.url).start(events=False)
    seen: list[int] = []
    sched = stack.scheduler
    assert sched is not None and sched.streams is not None
    watcher = asyncio.create_task(_watch_health(sched.grpc_address, seen))
    try:
        rt = sched.services[KEY]
        await wait_for(lambda: rt.status is Status.UP, what="service UP")
        await wait_for(lambda: SERVING in seen, 10, what="gRPC health SERVING")
        _fresh_nats(nats_server)
        await wait_for(lambda: sched.streams.recreated >= 1, 30, what="VIGIL_INGEST re-created")
        assert NOT_SERVING in seen, f"gRPC health never said NOT_SERVING: {seen}"
        await wait_for(lambda: seen[-1] == SERVING, 10, what="gRPC health SERVING again")
        # Events go through the re-created stream: the outbox empties into it.
        assert sched.relay is not None
        published = sched.relay.published
        await target.stop()
        await wait_for(lambda: rt.status is Status.DOWN, 10, what="service DOWN")
        await wait_for(
            lambda: (
                sched.relay is not None
                and sched.relay.published > published
                and _outbox_gauge() == 0
            ),
            20,
            what="the outbox relayed into the new VIGIL_INGEST",
        )
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await stack.stop()
        await target.stop()


@pytest.fixture
def pg_store_url() -> Iterator[str]:
    """A throw-away PostgreSQL database (skips without a server)."""
    url = create_database("vigil_test_health")
    try:
        yield url
    finally:
        drop_database(url)


async def _pg_read_only(url: str, on: bool) -> None:
    """Make the database refuse (or accept) writes for every new session; end the current ones."""
    import asyncpg  # type: ignore[import-untyped]

    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(
            f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}'
        )
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    finally:
        await conn.close()


async def test_read_only_postgresql_store_is_degraded_until_it_writes(pg_store_url: str) -> None:
    """PostgreSQL refusing writes: the store reports it (health, metric), and clears on recovery."""
    store = SchedulerStore(pg_store_url)
    health = HealthState()
    store.health = health
    await store.open()
    try:
        await store.put_node("n-1", {"id": "n-1"})
        assert health.problems == []
        assert store.degraded_since is None
        before = _write_failures()
        await _pg_read_only(pg_store_url, on=True)
        # The first attempt may meet a terminated connection; the next, the read-only database.
        for _ in range(2):
            with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the driver raises
                await store.put_node("n-2", {"id": "n-2"})
        degraded: float | None = store.degraded_since  # (mypy narrowed it to None above)
        assert degraded is not None, "the store not marked degraded"
        assert "read-only" in store.degraded_reason, store.degraded_reason
        assert "scheduler store refuses writes" in health.problems[0]
        assert _write_failures() >= before + 2

        await _pg_read_only(pg_store_url, on=False)
        for _ in range(2):  # again, a pooled connection may have been ended
            with contextlib.suppress(Exception):
                await store.put_node("n-2", {"id": "n-2"})
        assert store.degraded_since is None and health.healthy
        assert set(await store.load_nodes()) == {"n-1", "n-2"}
    finally:
        await store.close()
