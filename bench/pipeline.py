"""The real pipeline under load: scheduler (this process) → NATS → minion (child) → gRPC.

Figures: polls/s applied to service state, dispatch lag p50/p99 (due → sent),
results UNKNOWN (should be 0), scheduler RSS. TCP scenarios poll a listener in
a separate process, so the monitor's sockets are real.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    bench_nats,
    counter_total,
    histogram_snapshot,
    poll_nodes,
    quantile,
    rss_mb,
    scheduler_config,
    spawn_minion,
    stop,
    tcp_peer,
)
from services.scheduler import metrics
from services.scheduler.app import Scheduler


async def run_scenario(
    name: str,
    services: int,
    interval: float,
    duration: float,
    monitor: str,
    params: dict[str, Any],
    work: Path,
) -> dict[str, object]:
    """One measured run; returns a table row."""
    nats = bench_nats(work / f"nats-{name}").start()
    cfg = scheduler_config(
        nats.url, work / f"{name}.db", interval, poll_nodes(services, monitor, params)
    )
    sched = Scheduler(cfg, nats_url=nats.url)
    await sched.start()
    minion = spawn_minion(
        nats, sched.grpc_address, "Default", f"bench-{name}", work / f"minion-{name}.log"
    )
    try:
        keeper = sched.keeper
        assert keeper is not None
        # Warm up: one full interval so that every service has its phase.
        await asyncio.sleep(interval + 2)
        lag0 = histogram_snapshot(metrics.DISPATCH_LAG)
        unknown0 = counter_total(metrics.UNKNOWN)
        applied0, t0 = keeper.applied, time.perf_counter()
        await asyncio.sleep(duration)
        applied1, t1 = keeper.applied, time.perf_counter()
        lag1 = histogram_snapshot(metrics.DISPATCH_LAG)
        unknown1 = counter_total(metrics.UNKNOWN)
        rate = (applied1 - applied0) / (t1 - t0)
        return {
            "scenario": name,
            "services": services,
            "offered/s": round(services / interval),
            "polls/s": round(rate),
            "lag p50 ms": round(quantile(lag0, lag1, 0.5) * 1000, 2),
            "lag p99 ms": round(quantile(lag0, lag1, 0.99) * 1000, 2),
            "unknown": int(unknown1 - unknown0),
            "sched RSS MiB": round(rss_mb()),
        }
    finally:
        stop(minion)
        await sched.stop()
        nats.stop()


async def main(quick: bool = False) -> list[dict[str, object]]:
    """Run every pipeline scenario."""
    logging.basicConfig(level=logging.WARNING)
    duration = 5.0 if quick else 15.0
    rows = []
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        work = Path(tmp)
        rows.append(await run_scenario("noop-2k", 10_000, 5.0, duration, "noop", {}, work))
        rows.append(await run_scenario("noop-10k", 50_000, 5.0, duration, "noop", {}, work))
        async with tcp_peer() as port:
            rows.append(
                await run_scenario("tcp-1k", 2_000, 2.0, duration, "tcp", {"port": port}, work)
            )
    return rows
