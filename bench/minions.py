"""Several minions at one location: polls/s with 1, 2 and 4 minions, through the real pipeline.

    python -m bench.minions [--quick]

The scheduler runs in this process; the minions are child processes sharing
one location (NATS queue group), so the figures include everything: dispatch,
NATS, the minions' runners and monitors, the gRPC result streams and the
state keeper. Two workloads: ``noop`` (the pipeline's own cost) and ``tcp``
against a local listener in a separate process (real sockets per poll).

Figures: polls/s applied to service state, the share each minion took (min
and max of the per-minion poll counts as a percentage of the total), results
UNKNOWN (ideally 0), scheduler RSS. On a machine with few cores the minions,
the scheduler and the target share them; read the figures with ``cores``.
Prints a table; there is no pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    bench_nats,
    counter_total,
    poll_nodes,
    rss_mb,
    scheduler_config,
    spawn_minion,
    stop,
    table,
    tcp_peer,
)
from services.scheduler import metrics
from services.scheduler.app import Scheduler

LOCATION = "bench"


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
) -> dict[str, object]:
    """One measured run with ``minions`` minions at the location; returns a table row."""
    tag = f"{name}-{services}-{minions}"
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
        await asyncio.sleep(duration)
        real1, t1, unknown1 = _real_results(), time.perf_counter(), counter_total(metrics.UNKNOWN)
        # Per-minion counts come with heartbeats: a late heartbeat skews them a little.
        shares = [s.polls_done - done0.get(s.system_id, 0) for s in sched.registry.sessions()]
        total = sum(shares) or 1
        return {
            "workload": name,
            "minions": minions,
            "services": services,
            "offered/s": round(services / interval),
            "polls/s": round((real1 - real0) / (t1 - t0)),
            "share min-max %": f"{100 * min(shares) // total}-{100 * max(shares) // total}",
            "unknown": int(unknown1 - unknown0),
            "minions down": sum(1 for s in sched.registry.sessions() if not s.up),
            "sched RSS MiB": round(rss_mb()),
        }
    finally:
        # In a thread: the scheduler (this loop) must keep serving the minions' goodbyes.
        await asyncio.gather(*(asyncio.to_thread(stop, p) for p in procs))
        await sched.stop()
        nats.stop()


async def main(quick: bool = False) -> list[dict[str, object]]:
    """Every workload with 1, 2 and 4 minions."""
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
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.minions", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    ns = parser.parse_args()
    print(table(asyncio.run(main(quick=ns.quick))))
