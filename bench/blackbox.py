"""Vigil's end-to-end TCP rate against Prometheus blackbox_exporter, side by side (issue 13).

One blocking accept-and-close TCP sink on loopback (its own process). The peer:
blackbox_exporter's ``tcp_connect`` module driven by ``wrk -c50`` against
``/probe`` (Debian's ``prometheus-blackbox-exporter`` and ``wrk``, installed
with apt when missing and this runs as root). Vigil: the whole pipeline with
TLS (scheduler → NATS → minion → connect → gRPC → state) polling the same
sink at increasing offered rates; its rate is UP results applied per second
(``vigil_scheduler_results_total{status="UP"}``), after a warm-up interval.

The rows show the peer's probes/s, Vigil's UP polls/s at each offered rate,
the ratio, and then Vigil at 1x, 2x and 5x its measured peak: the completed
rate at 5x over the peak says whether overload collapses throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import (
    bench_nats,
    counter_total,
    free_port,
    histogram_snapshot,
    poll_nodes,
    quantile,
    rss_mb,
    scheduler_config,
    spawn_minion,
    stop,
)
from services.scheduler import metrics
from services.scheduler.app import Scheduler

_SINK = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port}))
s.listen(4096)
while True:
    c, _ = s.accept()
    c.close()
"""

_BLACKBOX_CONFIG = """
modules:
  tcp_connect:
    prober: tcp
    timeout: 2s
"""


@contextlib.contextmanager
def sink() -> Iterator[int]:
    """A blocking accept-and-close TCP sink in its own process; yields its port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _SINK.format(port=port)])
    try:
        time.sleep(0.5)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def _tools() -> tuple[str, str] | str:
    """The peer's two binaries, installing them from Debian when missing (as root)."""
    exporter = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
    wrk = shutil.which("wrk")
    if (exporter is None or wrk is None) and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "prometheus-blackbox-exporter", "wrk"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=600,
            check=False,
        )
        exporter = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
        wrk = shutil.which("wrk")
    if exporter is None or wrk is None:
        return "prometheus-blackbox-exporter and wrk not available (apt-get install them)"
    return exporter, wrk


def blackbox_rate(target_port: int, duration: float, work: Path) -> float | str:
    """blackbox_exporter's tcp_connect probes/s under ``wrk -t2 -c50``, or why not measured."""
    tools = _tools()
    if isinstance(tools, str):
        return tools
    exporter, wrk = tools
    config = work / "blackbox.yml"
    config.write_text(_BLACKBOX_CONFIG)
    port = free_port()
    proc = subprocess.Popen(
        [exporter, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        url = f"http://127.0.0.1:{port}/probe?target=127.0.0.1:{target_port}&module=tcp_connect"
        out = subprocess.run(
            [wrk, "-t2", "-c50", f"-d{int(duration)}s", url],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=False,
        ).stdout
        found = re.search(r"Requests/sec:\s+([\d.]+)", out)
        return float(found.group(1)) if found else f"wrk printed no rate: {out[-200:]!r}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def vigil_rate(
    port: int, offered: int, interval: float, duration: float, work: Path, name: str
) -> dict[str, object]:
    """Vigil polling the sink at ``offered`` polls/s; UP results applied per second."""
    services = int(offered * interval)
    nats = bench_nats(work / f"nats-{name}").start()
    cfg = scheduler_config(
        nats.url, work / f"{name}.db", interval, poll_nodes(services, "tcp", {"port": port})
    )
    sched = Scheduler(cfg, nats_url=nats.url)
    await sched.start()
    minion = spawn_minion(
        nats, sched.grpc_address, "Default", f"bench-{name}", work / f"minion-{name}.log"
    )
    try:
        await asyncio.sleep(interval + 2)  # every service has had its phase
        up0 = counter_total(metrics.RESULTS, status="UP")
        unknown0 = counter_total(metrics.UNKNOWN)
        skipped0 = counter_total(metrics.POLLS_SKIPPED) + counter_total(metrics.POLLS_DEFERRED)
        lag0 = histogram_snapshot(metrics.DISPATCH_LAG)
        t0 = time.perf_counter()
        await asyncio.sleep(duration)
        elapsed = time.perf_counter() - t0
        up = (counter_total(metrics.RESULTS, status="UP") - up0) / elapsed
        lag1 = histogram_snapshot(metrics.DISPATCH_LAG)
        return {
            "offered/s": offered,
            "UP polls/s": round(up),
            "unknown/s": round((counter_total(metrics.UNKNOWN) - unknown0) / elapsed),
            "refused/s": round(
                (
                    counter_total(metrics.POLLS_SKIPPED)
                    + counter_total(metrics.POLLS_DEFERRED)
                    - skipped0
                )
                / elapsed
            ),
            "lag p99 ms": round(quantile(lag0, lag1, 0.99) * 1000, 1),
            "sched RSS MiB": round(rss_mb()),
        }
    finally:
        stop(minion)
        await sched.stop()
        nats.stop()


async def main(quick: bool = False) -> list[dict[str, object]]:
    """The comparison table (see the module docstring)."""
    logging.basicConfig(level=logging.WARNING)
    duration = 8.0 if quick else 20.0
    interval = 5.0
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="vigil-bench-bb-") as tmp, sink() as port:
        work = Path(tmp)
        peer = blackbox_rate(port, duration, work)
        peer_rate = peer if isinstance(peer, float) else None
        rows.append(
            {
                "who": "blackbox_exporter (wrk -c50)",
                "offered/s": "-",
                "done/s": round(peer_rate) if peer_rate else str(peer),
                "x blackbox": 1.0 if peer_rate else "-",
                "unknown/s": "-",
                "refused/s": "-",
                "lag p99 ms": "-",
            }
        )

        def row(who: str, r: dict[str, object]) -> dict[str, object]:
            done = r["UP polls/s"]
            assert isinstance(done, int)
            return {
                "who": who,
                "offered/s": r["offered/s"],
                "done/s": done,
                "x blackbox": round(done / peer_rate, 2) if peer_rate else "-",
                "unknown/s": r["unknown/s"],
                "refused/s": r["refused/s"],
                "lag p99 ms": r["lag p99 ms"],
            }

        ladder = [2_000, 4_000, 8_000] if quick else [2_000, 4_000, 8_000, 12_000]
        peak = 0
        for i, offered in enumerate(ladder):
            r = await vigil_rate(port, offered, interval, duration, work, f"ladder{i}")
            rows.append(row("vigil", r))
            done = r["UP polls/s"]
            assert isinstance(done, int)
            peak = max(peak, done)
        for factor in (1, 2, 5):
            offered = max(1, peak) * factor
            r = await vigil_rate(port, offered, interval, duration, work, f"over{factor}")
            rows.append(row(f"vigil at {factor}x its peak", r))
    return rows
