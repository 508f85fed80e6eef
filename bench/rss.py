"""Memory of each process of ``vigil up`` for a small and a large inventory.

The real deployment shape: ``vigil up`` (itself a process) starts an
embedded nats-server, the event service, the scheduler and a minion as child
processes, all given the same configuration file. The inventory is TCP
services on 127.0.0.1 at a closed port (each poll is one refused connect),
with a long interval and the first polls spread over ten minutes, so the run
is cheap and what is measured is the inventory, not the load.

Once the scheduler serves its metrics, counts a connected minion and its
first result, and the event service serves its metrics, every process's RSS
is read (psutil; the pids are in ``<state_dir>/endpoints.json``). The table
shows which processes grow with the inventory: only the scheduler should
(docs/architecture.md); ``vigil up`` checks the file in a child process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from bench.common import free_port, poll_nodes, python_env

#: Inventory sizes measured: a small one (the baseline) and the large one.
SIZES = (100, 100_000)
QUICK_SIZES = (100, 20_000)

# Bounded waits: the 100k configuration takes a while to load on a busy machine.
READY_TIMEOUT = 300.0
SETTLE = 5.0
STOP_TIMEOUT = 60.0


def _config(work: Path, services: int) -> tuple[Path, dict[str, int]]:
    """A configuration file for ``vigil up`` with ``services`` TCP services; returns it and
    the ports of the metrics endpoints."""
    closed = free_port()  # free a moment ago, nobody listens: every poll is a refused connect
    ports = {name: free_port() for name in ("sched", "sched_m", "events", "events_m")}
    state = work / "state"
    cfg: dict[str, Any] = {
        "scheduler": {
            "listen": f"127.0.0.1:{ports['sched']}",
            "metrics_listen": f"127.0.0.1:{ports['sched_m']}",
            "store_url": f"sqlite:///{state}/scheduler.db",
            "start_splay": "10m",
        },
        "events": {
            "listen": f"127.0.0.1:{ports['events']}",
            "metrics_listen": f"127.0.0.1:{ports['events_m']}",
            "store_url": f"sqlite:///{state}/events.db",
        },
        "minion": {"id_file": str(state / "minion-id")},
        "defaults": {"interval": "1h", "timeout": "2s", "retries": 0},
        "nodes": poll_nodes(services, "tcp", {"port": closed}),
    }
    path = work / "vigil.yaml"
    # JSON is YAML (and writes 20x faster than yaml.dump for 100k services); one line per node
    # keeps a config error's line number useful.
    nodes = cfg.pop("nodes")
    lines = [json.dumps(cfg)[:-1] + ', "nodes": [']
    lines += [json.dumps(n) + ("," if i < len(nodes) - 1 else "") for i, n in enumerate(nodes)]
    lines.append("]}")
    path.write_text("\n".join(lines) + "\n")
    return path, ports


def _metrics(port: int) -> str | None:
    """The Prometheus text of ``127.0.0.1:port/metrics`` (``None`` while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def _sum(text: str, name: str) -> float:
    """Sum of every sample of metric ``name`` (all label sets)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / (1 << 20)


def _stop(up: subprocess.Popen[bytes], pids: list[int]) -> None:
    """SIGTERM to ``vigil up`` (it stops its children in order), bounded; then kill leftovers."""
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(10)
    for proc in _alive(pids):
        print(f"bench rss: pid {proc.pid} outlived vigil up; killing it", file=sys.stderr)
        proc.kill()


def _alive(pids: list[int]) -> list[psutil.Process]:
    alive = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    return alive


def measure(services: int) -> dict[str, float]:
    """Start ``vigil up`` on ``services`` TCP services, wait until it works, and return the RSS
    (MiB) of each process (``vigil up`` itself included) and the time to ready (s)."""
    with tempfile.TemporaryDirectory(prefix="vigil-bench-rss-") as tmp:
        work = Path(tmp)
        config, ports = _config(work, services)
        log = (work / "up.log").open("wb")
        t0 = time.monotonic()
        args = ["up", "--config", str(config), "--state-dir", str(work / "state")]
        up = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args, "--log-level", "WARNING"],
            cwd=work,
            env=python_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        pids: dict[str, int] = {}
        try:
            deadline = t0 + READY_TIMEOUT
            endpoints = work / "state" / "endpoints.json"
            ready = False
            while time.monotonic() < deadline and up.poll() is None:
                time.sleep(0.5)
                if not pids and endpoints.exists():
                    pids = {k: int(v) for k, v in json.loads(endpoints.read_text())["pids"].items()}
                sched, events = _metrics(ports["sched_m"]), _metrics(ports["events_m"])
                if (
                    pids
                    and sched is not None
                    and events is not None
                    and _sum(sched, "vigil_scheduler_minions") >= 1
                    and _sum(sched, "vigil_scheduler_results_total") >= 1
                ):
                    ready = True
                    break
            if not ready:
                log.flush()
                tail = (work / "up.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"vigil up with {services} services not ready within {READY_TIMEOUT:.0f}s "
                    f"(exit code {up.poll()}); its log ends:\n{tail}"
                )
            t_ready = time.monotonic() - t0
            time.sleep(SETTLE)  # past start-up peaks, into the steady state
            rss = {"vigil up": _rss_mib(up.pid)}
            rss |= {name: _rss_mib(pid) for name, pid in sorted(pids.items())}
            return rss | {"ready s": t_ready}
        finally:
            _stop(up, list(pids.values()))
            log.close()


def main(quick: bool = False) -> list[dict[str, object]]:
    """One row per process: its RSS (MiB) for each inventory size, and the growth; a last row
    with the time from ``vigil up`` to ready."""
    sizes = QUICK_SIZES if quick else SIZES
    runs = {n: measure(n) for n in sizes}
    small, large = sizes
    rows: list[dict[str, object]] = []
    for name in runs[small]:
        row: dict[str, object] = {"process": "(time to ready, s)" if name == "ready s" else name}
        for n in sizes:
            row[f"{n:,} services"] = round(runs[n].get(name, float("nan")), 1)
        row["growth"] = round(runs[large].get(name, float("nan")) - runs[small][name], 1)
        rows.append(row)
    return rows
