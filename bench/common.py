"""Shared bench plumbing: processes, histogram quantiles, printing, the bench's PKI.

The bench runs like production: mutual TLS on gRPC and TLS with per-identity
permissions on NATS, from one CA per bench run (:func:`bench_pki`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import Histogram

from services.core.config import VigilConfig
from services.core.natsserver import NatsServer
from services.core.pki import Identity, Pki
from services.scheduler.config import parse_config

ROOT = Path(__file__).resolve().parent.parent

_LISTENER = """
import asyncio
async def main():
    async def h(r, w): w.close()
    s = await asyncio.start_server(h, "127.0.0.1", {port}, backlog=4096)
    await s.serve_forever()
asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def tcp_peer() -> AsyncIterator[int]:
    """A TCP listener in its own process (its sockets cost the bench nothing); yields its port."""
    port = free_port()
    listener = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LISTENER.format(port=port)
    )
    try:
        await asyncio.sleep(0.5)
        yield port
    finally:
        listener.terminate()
        async with asyncio.timeout(5):
            await listener.wait()


_PKI: Pki | None = None


def bench_pki() -> Pki:
    """The run's CA with the service identities (created once, removed at exit)."""
    global _PKI
    if _PKI is None:
        directory = Path(tempfile.mkdtemp(prefix="vigil-bench-pki-"))
        atexit.register(shutil.rmtree, directory, True)
        pki = Pki(directory)
        pki.init()
        for role in ("scheduler", "events", "nats", "operator"):
            pki.issue(Identity(role, role))
        _PKI = pki
    return _PKI


def bench_nats(data_dir: Path) -> NatsServer:
    """A nats-server (not started) with TLS and the bench PKI's identities as users."""
    return NatsServer(data_dir, pki=bench_pki())


def python_env() -> dict[str, str]:
    """Environment for child processes that import the project from the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "protos")])
    env["VIGIL_PKI_DIR"] = str(bench_pki().dir)
    return env


def spawn(args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """A child Python process (``-m`` args), logging to ``log``."""
    out = log.open("wb")
    return subprocess.Popen(
        [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=python_env(), cwd=ROOT
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of a process, MiB."""
    return psutil.Process(pid or os.getpid()).memory_info().rss / (1 << 20)


def histogram_snapshot(h: Histogram) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of an unlabelled histogram."""
    out = []
    for metric in h.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket"):
                out.append((float(s.labels["le"]), s.value))
    return sorted(out)


def quantile(
    before: list[tuple[float, float]], after: list[tuple[float, float]], q: float
) -> float:
    """``histogram_quantile`` over the observations made between two snapshots."""
    buckets = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            span = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / span if span else 1.0)
        prev_le, prev_count = le, count
    return prev_le


def counter_total(counter: Any, **labels: str) -> float:
    """Sum of a counter's ``_total`` samples whose labels include ``labels``."""
    return sum(
        float(s.value)
        for m in counter.collect()
        for s in m.samples
        if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items())
    )


def table(rows: list[dict[str, object]]) -> str:
    """A plain-text table."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols), "  ".join("-" * widths[c] for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def poll_nodes(
    services: int,
    monitor: str,
    params: dict[str, Any],
    location: str = "Default",
    prefix: str = "bench",
) -> list[dict[str, Any]]:
    """``services`` identical services on 127.0.0.1, 100 per node, as config nodes."""
    per_node = 100
    return [
        {
            "id": f"{prefix}-{n // per_node:05d}",
            "location": location,
            "interfaces": [
                {
                    "ip": "127.0.0.1",
                    "services": [
                        {"name": f"S{i:03d}", "monitor": monitor, "params": params}
                        for i in range(min(per_node, services - n))
                    ],
                }
            ],
        }
        for n in range(0, services, per_node)
    ]


def scheduler_config(
    nats_url: str, db: Path, interval: float, nodes: list[dict[str, Any]]
) -> VigilConfig:
    """A scheduler polling ``nodes`` every ``interval`` s, first polls spread over one interval."""
    return parse_config(
        {
            "pki": {"dir": str(bench_pki().dir)},
            "nats": {"url": nats_url},
            "scheduler": {
                "listen": "127.0.0.1:0",
                "probe_listen": None,
                "metrics_listen": None,
                "store_url": f"sqlite:///{db}",
                "start_splay": f"{interval}s",
                "status_flush_interval": "2s",
            },
            "defaults": {"interval": f"{interval}s", "timeout": "2s", "retries": 0},
            "nodes": nodes,
        },
        "<bench>",
        env={},
    )


def spawn_minion(
    nats: NatsServer,
    scheduler: str,
    location: str,
    system_id: str,
    log: Path,
    *,
    config: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``vigil minion`` as a child process (quiet), with its certificate issued first.

    ``config``: a configuration file with a ``minion`` section (``workers``, ...).
    """
    pki = bench_pki()
    identity = Identity.minion(location, system_id)
    if pki.load(identity) is None:
        pki.issue(identity)
        nats.reload()  # the new identity is a NATS user from now on
    return spawn(
        [
            "-m",
            "services.cli",
            "minion",
            "--nats",
            nats.url,
            "--scheduler",
            scheduler,
            "--location",
            location,
            "--system-id",
            system_id,
            "--log-level",
            "WARNING",
            *(["--config", str(config)] if config is not None else []),
        ],
        log,
    )
