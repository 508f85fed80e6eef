"""Start-up of a large inventory: 100k services from process start to every one dispatched once.

Phases: configuration parsed and validated, scheduler ready (store migrated,
inventory resolved, gRPC serving), every service dispatched once (first polls
are spread over ``start_splay``, so that is a floor), every service polled
(one minion with default settings: beyond its capacity, requests wait for
their TTL, so "polled" shows how many results came back within a minute).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import bench_nats, bench_pki, rss_mb, spawn_minion, stop
from services.scheduler.app import Scheduler
from services.scheduler.config import parse_config


def _nodes(services: int, per_node: int = 100) -> list[dict[str, Any]]:
    return [
        {
            "id": f"node-{n:06d}",
            "interfaces": [
                {
                    "ip": f"10.{(n >> 8) & 255}.{n & 255}.1",
                    "services": [{"name": f"S{i:03d}"} for i in range(per_node)],
                }
            ],
        }
        for n in range(services // per_node)
    ]


async def run(services: int = 100_000, splay: float = 10.0) -> dict[str, object]:
    """One start-up; returns a table row."""
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="vigil-bench-startup-") as tmp:
        work = Path(tmp)
        nats = bench_nats(work / "nats").start()
        raw = {
            "pki": {"dir": str(bench_pki().dir)},
            "nats": {"url": nats.url},
            "scheduler": {
                "listen": "127.0.0.1:0",
                "probe_listen": None,
                "metrics_listen": None,
                "store_url": f"sqlite:///{work}/s.db",
                "start_splay": f"{splay}s",
                "results_retention": "0s",
            },
            "defaults": {"interval": "5m"},
            "packages": [
                {
                    "name": "all",
                    "services": [{"name": f"S{i:03d}", "monitor": "noop"} for i in range(100)],
                }
            ],
            "nodes": _nodes(services),
        }
        t0 = time.perf_counter()
        cfg = parse_config(raw, "<bench>", env={})
        t_parsed = time.perf_counter() - t0
        sched = Scheduler(cfg, nats_url=nats.url)
        await sched.start()
        t_ready = time.perf_counter() - t0
        minion = spawn_minion(
            nats, sched.grpc_address, "Default", "bench-startup", work / "minion.log"
        )
        try:
            assert sched.dispatcher is not None
            t_dispatched = t_polled = float("nan")
            deadline = time.perf_counter() + 60
            polled = 0
            while time.perf_counter() < deadline:
                await asyncio.sleep(0.25)
                if (
                    t_dispatched != t_dispatched and sched.dispatcher.dispatched >= services
                ):  # nan check
                    t_dispatched = time.perf_counter() - t0
                polled = sum(1 for rt in sched.services.values() if rt.last_poll_at is not None)
                if polled >= services:
                    t_polled = time.perf_counter() - t0
                    break
            return {
                "services": services,
                "splay s": splay,
                "config parsed s": round(t_parsed, 2),
                "ready s": round(t_ready, 2),
                "all dispatched s": round(t_dispatched, 2),
                "all polled s": round(t_polled, 2),
                "polled": polled,
                "sched RSS MiB": round(rss_mb()),
            }
        finally:
            stop(minion)
            await sched.stop()
            nats.stop()


def main(quick: bool = False) -> list[dict[str, object]]:
    """Run the start-up scenario."""
    return [asyncio.run(run(20_000 if quick else 100_000))]
