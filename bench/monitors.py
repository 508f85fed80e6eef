"""Per-monitor cost: polls per second of each monitor against local peers.

    python -m bench.monitors [--duration 3] [--concurrency 50] [--only tcp,http,snmp]

Peers (all on 127.0.0.1, in a separate process so that the figures are the
monitor's cost, not the server's): a TCP server sending a banner, an aiohttp
HTTP server, snmpsim serving a recorded device. ICMP pings 127.0.0.1 (needs
root, CAP_NET_RAW or ping_group_range); the Nagios adapter runs
``check_dummy`` when Monitoring Plugins are installed.

Each monitor is polled the way the minion's runner does (parameters parsed,
``asyncio.timeout_at`` on the deadline) by ``--concurrency`` workers for
``--duration`` seconds. Prints polls/s, latency percentiles and the status
counts; there is no pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minion.monitors.base import PollContext, PollOutcome, Status, Target
from minion.monitors.registry import MonitorSet

TIMEOUT_S = 3.0


# --------------------------------------------------------------------------- peers


def _serve(queue: Any) -> None:  # runs in the peer process
    from aiohttp import web

    async def main() -> None:
        async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(b"220 bench ready\r\n")
                await writer.drain()
                await reader.read(100)
            except ConnectionError:
                pass
            finally:
                writer.close()

        tcp = await asyncio.start_server(banner, "127.0.0.1", 0, backlog=1024)

        async def ok(request: web.Request) -> web.Response:
            return web.Response(text="hello from the bench server\n")

        app = web.Application()
        app.router.add_get("/ok", ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        http_port = runner.addresses[0][1]
        queue.put({"tcp": tcp.sockets[0].getsockname()[1], "http": http_port})
        await asyncio.Event().wait()  # until terminated

    asyncio.run(main())


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_snmpsim(tmp: Path) -> tuple[subprocess.Popen[bytes] | None, int, str]:
    exe = Path(sys.executable).parent / "snmpsim-command-responder"
    try:
        import snmpsim_data
    except ImportError:
        return None, 0, "snmpsim-data not installed"
    if not exe.exists():
        return None, 0, "snmpsim not installed"
    data = tmp / "data"
    data.mkdir()
    shutil.copyfile(
        Path(snmpsim_data.__file__).parent / "data" / "UPS" / "apc-8641.snmprec",
        data / "public.snmprec",
    )
    port = _free_udp_port()
    proc = subprocess.Popen(
        [
            str(exe),
            f"--data-dir={data}",
            f"--cache-dir={tmp / 'cache'}",
            f"--agent-udpv4-endpoint=127.0.0.1:{port}",
            "--logging-method=null",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "SNMPSIM_ALLOW_ROOT": "true"},
    )
    return proc, port, ""


# --------------------------------------------------------------------------- measuring


@dataclass
class Figures:
    """What one monitor did in the measured window."""

    name: str
    polls: int
    seconds: float
    latencies_ms: list[float]
    statuses: Counter[str]
    note: str = ""

    def line(self) -> str:
        """One row of the report."""
        if not self.polls:
            return f"{self.name:<10} {'-':>9} {'-':>8} {'-':>8} {'-':>8}  {self.note}"
        lat = sorted(self.latencies_ms)
        p50 = statistics.median(lat)
        p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
        states = " ".join(f"{k}={v}" for k, v in sorted(self.statuses.items()))
        return (
            f"{self.name:<10} {self.polls / self.seconds:>9.0f} {p50:>8.2f} {p95:>8.2f} "
            f"{lat[-1]:>8.2f}  {states} {self.note}"
        )


async def _poll_once(ms: MonitorSet, name: str, address: str, params: Any) -> PollOutcome:
    mon = ms.get(name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    try:
        async with asyncio.timeout_at(deadline):
            return await mon.poll(Target(address), params, PollContext(deadline, TIMEOUT_S))
    except TimeoutError:
        return PollOutcome(Status.DOWN, "timed out")
    except OSError as exc:
        return PollOutcome(Status.DOWN, str(exc))


async def measure(
    ms: MonitorSet,
    name: str,
    raw: dict[str, Any],
    duration: float,
    concurrency: int,
    address: str = "127.0.0.1",
    label: str = "",
) -> Figures:
    """Poll ``name`` with ``concurrency`` workers for ``duration`` seconds."""
    params = ms.get(name).parse_params(raw)
    for _ in range(3):  # warm up: pools, engines, TLS contexts
        await _poll_once(ms, name, address, params)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    end = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            out = await _poll_once(ms, name, address, params)
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[out.status.value] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return Figures(label or name, len(latencies), elapsed, latencies, statuses)


async def run(
    args: argparse.Namespace, ports: dict[str, int], snmp_port: int, snmp_note: str
) -> list[Figures]:
    """Measure every selected monitor."""
    only = set(args.only.split(",")) if args.only else None
    ms = MonitorSet()
    plan: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("tcp", "tcp", {"port": ports["tcp"]}, args.concurrency, ""),
        ("tcp+banner", "tcp", {"port": ports["tcp"], "banner": "^220"}, args.concurrency, ""),
        (
            "http",
            "http",
            {"port": ports["http"], "path": "/ok", "body": "hello"},
            args.concurrency,
            "",
        ),
        (
            "snmp",
            "snmp",
            {"port": snmp_port, "oid": "1.3.6.1.2.1.1.3.0"},
            args.concurrency,
            snmp_note,
        ),
        ("icmp", "icmp", {"count": 1}, args.concurrency, ""),
        (
            "nagios",
            "nagios",
            {"plugin": "check_dummy", "args": ["0", "bench"]},
            min(args.concurrency, 8),
            "",
        ),
    ]
    results = []
    try:
        for label, name, raw, conc, note in plan:
            if only and label not in only and name not in only:
                continue
            if name == "nagios" and not os.access("/usr/lib/nagios/plugins/check_dummy", os.X_OK):
                note = "check_dummy not installed"
            if note:
                results.append(Figures(label, 0, 0.0, [], Counter(), note))
                if args.echo:
                    print(results[-1].line(), flush=True)
                continue
            fig = await measure(ms, name, raw, args.duration, conc, label=label)
            fig.note = f"(concurrency {conc})"
            results.append(fig)
            if args.echo:
                print(fig.line(), flush=True)
    finally:
        await ms.close()
    return results


def _wait_snmp(port: int) -> bool:
    from services.core.params.snmp import SnmpParams

    async def ready() -> bool:
        ms = MonitorSet()
        try:
            out = await _poll_once(ms, "snmp", "127.0.0.1", SnmpParams(port=port))
            return out.status is Status.UP
        finally:
            await ms.close()

    # snmpsim indexes the recording first; each try waits up to TIMEOUT_S
    return any(asyncio.run(ready()) for _ in range(10))


def measure_all(
    duration: float = 3.0, concurrency: int = 50, only: str = "", echo: bool = False
) -> list[Figures]:
    """Start the peers, measure every selected monitor, stop the peers."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    peer = ctx.Process(target=_serve, args=(queue,), daemon=True)
    peer.start()
    tmp = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    snmpsim, snmp_port, snmp_note = _start_snmpsim(tmp)
    try:
        ports = queue.get(timeout=30)
        if snmpsim is not None and not _wait_snmp(snmp_port):
            snmp_note = "snmpsim did not answer"
        args = argparse.Namespace(duration=duration, concurrency=concurrency, only=only, echo=echo)
        return asyncio.run(run(args, ports, snmp_port, snmp_note))
    finally:
        peer.terminate()
        peer.join(5)
        if snmpsim is not None:
            snmpsim.terminate()
            try:
                snmpsim.wait(5)
            except subprocess.TimeoutExpired:
                snmpsim.kill()
                snmpsim.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


def rows(quick: bool = False) -> list[dict[str, object]]:
    """The figures as table rows (for ``python -m bench``'s ``table()``)."""
    out: list[dict[str, object]] = []
    for fig in measure_all(duration=1.5 if quick else 3.0):
        lat = sorted(fig.latencies_ms) or [0.0]
        out.append(
            {
                "monitor": fig.name,
                "polls/s": round(fig.polls / fig.seconds) if fig.polls else "-",
                "p50 ms": round(statistics.median(lat), 2) if fig.polls else "-",
                "p95 ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.95))], 2)
                if fig.polls
                else "-",
                "statuses": " ".join(f"{k}={v}" for k, v in sorted(fig.statuses.items())),
                "note": fig.note,
            }
        )
    return out


def main() -> None:
    """Command line: measure and print as each monitor finishes."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per monitor")
    ap.add_argument("--concurrency", type=int, default=50, help="polls in flight")
    ap.add_argument("--only", default="", help="comma-separated monitors (tcp,http,snmp,...)")
    args = ap.parse_args()
    print(
        f"cpus={os.cpu_count()} duration={args.duration}s per monitor; "
        "peers on 127.0.0.1 in another process"
    )
    print(f"{'monitor':<10} {'polls/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  statuses")
    measure_all(args.duration, args.concurrency, args.only, echo=True)


if __name__ == "__main__":
    main()
