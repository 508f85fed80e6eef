"""``vigil up``: the embedded all-in-one deployment.

Starts a private nats-server (JetStream, data under the state directory), the
event service, the scheduler and one minion per location of the config, each
as a child process in its own process group.

Secure by default: on first start it creates the deployment's PKI under
``<state-dir>/pki`` (a CA, and certificates for the scheduler, the event
service, NATS, the operator and each location's minion ``embedded-<location>``);
later starts reuse it, renewing what is near expiry. NATS runs with TLS and a
user per identity, from a configuration generated at every start and reloaded
when certificates are issued or revoked in that directory while it runs. Only
``pki.plaintext_loopback_dev`` runs it open (on loopback), with a warning. Ctrl-C / SIGTERM stops them in
order (minions first so their results are flushed, NATS last); children also
get SIGTERM from the kernel if ``vigil up`` itself dies (PR_SET_PDEATHSIG), so
nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.core.config import DeploymentConfig
from services.core.natsserver import NatsServer, die_with_parent
from services.core.pki import Identity, Pki
from services.core.tls import PLAINTEXT_WARNING, is_loopback_host

#: How often the PKI directory is checked for issued or revoked certificates.
PKI_WATCH_INTERVAL = 2.0

#: Variables naming other TLS material than the embedded deployment's.
_TLS_ENV = ("VIGIL_TLS_CA", "VIGIL_TLS_CERT", "VIGIL_TLS_KEY")

#: Longest wait for the configuration check (a million services take about a minute).
CHECK_TIMEOUT = 600.0


def _popen_options() -> dict[str, object]:
    return {"start_new_session": True, "preexec_fn": die_with_parent}


def _stop(proc: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"vigil up: {name} did not stop within {timeout:.0f}s; killing it", file=sys.stderr)
        proc.kill()
        proc.wait(5)


def _wait_listening(address: str, timeout: float, alive: Callable[[], bool]) -> bool:
    """Wait until ``host:port`` accepts connections (``False`` on timeout or a dead child)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    end = time.monotonic() + timeout
    while time.monotonic() < end and alive():
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _reload_if_changed(
    nats: NatsServer, pki: Pki, seen: tuple[tuple[str, int], ...]
) -> tuple[tuple[str, int], ...]:
    """Reload NATS when certificates were issued or revoked (``vigil ca``) since ``seen``."""
    now = _pki_state(pki)
    if now == seen:
        return seen
    try:
        nats.reload()
        print("vigil up: certificates changed; NATS reloaded its users", flush=True)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"vigil up: cannot reload NATS: {exc}", file=sys.stderr, flush=True)
    return now


@dataclass(frozen=True)
class Summary:
    """What ``vigil check`` says of a valid configuration."""

    nodes: int
    services: int
    locations: list[str]


def validate(config_path: Path) -> Summary | None:
    """Check the file as the scheduler will, in a child process; ``None`` if invalid.

    A child, so that this long-lived parent never holds the resolved
    inventory (hundreds of MiB for 100,000 services); its errors go to stderr.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "services.cli", "check", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            check=False,
            timeout=CHECK_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        print(f"vigil up: checking {config_path} took over {CHECK_TIMEOUT:.0f}s", file=sys.stderr)
        return None
    if proc.returncode != 0:
        return None
    found = json.loads(proc.stdout)
    return Summary(found["nodes"], found["services"], found["locations"])


def embedded_system_id(location: str) -> str:
    """The system id of the minion ``vigil up`` runs for ``location``."""
    return f"embedded-{location.lower()}"


def _server_hosts(*addresses: str | None) -> list[str]:
    """The hosts a server certificate must name besides localhost (wildcards name none)."""
    hosts = []
    for address in addresses:
        if not address:
            continue
        host = address.rpartition(":")[0].strip("[]")
        if host and host not in ("0.0.0.0", "::", "*") and not is_loopback_host(host):
            hosts.append(host)
    return hosts


def ensure_pki(directory: Path, cfg: DeploymentConfig, locations: list[str]) -> Pki:
    """The embedded deployment's PKI: created on first start, reused (and renewed) after."""
    pki = Pki(directory)
    if not pki.exists():
        pki.init()
        print(f"vigil up: created a CA in {directory}", flush=True)
    pki.ensure(
        Identity("scheduler", "scheduler"),
        hosts=_server_hosts(cfg.scheduler.listen, cfg.scheduler.probe_listen),
    )
    pki.ensure(
        Identity("events", "events"),
        hosts=_server_hosts(cfg.events.listen, cfg.events.probe_listen),
    )
    pki.ensure(Identity("nats", "nats"))
    pki.ensure(Identity("operator", "operator"))
    for loc in locations:
        pki.ensure(Identity.minion(loc, embedded_system_id(loc)))
    return pki


def _pki_state(pki: Pki) -> tuple[tuple[str, int], ...]:
    """What changes when a certificate is issued or revoked in ``pki``'s directory."""
    found = []
    for path in sorted(pki.dir.glob("*")):
        if path.suffix in (".pem", ".json") and not path.name.endswith("-key.pem"):
            try:
                found.append((path.name, path.stat().st_mtime_ns))
            except OSError:
                continue
    return tuple(found)


def run_up(
    cfg: DeploymentConfig, locations: list[str], config_path: Path, state_dir: Path, log_level: str
) -> int:
    """Run everything until a signal or a child failure; returns the exit code."""
    state_dir.mkdir(parents=True, exist_ok=True)
    plaintext = cfg.pki.plaintext_loopback_dev
    pki_dir = state_dir / "pki"
    pki: Pki | None = None
    if plaintext:
        print(f"vigil up: {PLAINTEXT_WARNING}", file=sys.stderr, flush=True)
    else:
        pki = ensure_pki(pki_dir, cfg, locations)
    stop_requested = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    # Loopback only, whatever the mode: the embedded deployment runs on one machine.
    nats = NatsServer(state_dir / "nats", log_file=state_dir / "nats-server.log", pki=pki)
    nats.start(15.0, **_popen_options())
    pki_seen = _pki_state(pki) if pki is not None else ()
    next_pki_check = time.monotonic() + PKI_WATCH_INTERVAL
    (state_dir / "nats-url").write_text(nats.url + "\n")

    base = [sys.executable, "-m", "services.cli"]
    common = ["--config", str(config_path), "--nats", nats.url, "--log-level", log_level]
    children: list[tuple[str, subprocess.Popen[bytes]]] = []

    admin_token = Path(cfg.access.bootstrap_token_file or state_dir / "admin.token")

    def spawn(name: str, *args: str) -> None:
        env = dict(os.environ)
        env.pop("VIGIL_NATS_URL", None)
        # Every child proves who it is with a certificate of the embedded PKI.
        for var in _TLS_ENV:
            env.pop(var, None)
        env["VIGIL_PKI_DIR"] = str(pki_dir)
        if name == "scheduler" and not plaintext:
            # The first admin: a token the scheduler writes, which the CLI finds there.
            env["VIGIL_BOOTSTRAP_TOKEN_FILE"] = str(admin_token)
        proc = subprocess.Popen(
            [*base, *args, *common], stdin=subprocess.DEVNULL, env=env, **_popen_options()
        )  # type: ignore[call-overload]
        children.append((name, proc))

    spawn("events", "events")
    spawn("scheduler", "scheduler")
    # Minions would only log refused connections until the scheduler listens.
    _wait_listening(
        cfg.scheduler.listen, timeout=60.0, alive=lambda: children[-1][1].poll() is None
    )
    for loc in locations:
        spawn(
            f"minion[{loc}]",
            "minion",
            "--location",
            loc,
            "--system-id",
            embedded_system_id(loc),
            "--scheduler",
            cfg.scheduler.listen,
        )
    endpoints = {
        "nats": nats.url,
        "scheduler_grpc": cfg.scheduler.listen,
        "scheduler_metrics": cfg.scheduler.metrics_listen,
        "events_grpc": cfg.events.listen,
        "events_metrics": cfg.events.metrics_listen,
        "minion_locations": locations,
        "pki_dir": None if plaintext else str(pki_dir),
        "admin_token_file": None if plaintext else str(admin_token),
        "pids": {name: p.pid for name, p in children}
        | ({"nats-server": nats.proc.pid} if nats.proc else {}),
    }
    (state_dir / "endpoints.json").write_text(json.dumps(endpoints, indent=2) + "\n")
    sniff_flag = "--plaintext" if plaintext else f"--pki-dir {pki_dir}"
    grpcurl = (
        "grpcurl -plaintext"
        if plaintext
        else f"grpcurl -cacert {pki_dir}/ca.pem -cert {pki_dir}/operator.pem "
        f'-key {pki_dir}/operator-key.pem -H "authorization: Bearer $(cat {admin_token})"'
    )
    print(
        "vigil up\n"
        f"  NATS            {nats.url}   (written to {state_dir / 'nats-url'})\n"
        f"  scheduler gRPC  {cfg.scheduler.listen}   metrics http://{cfg.scheduler.metrics_listen}/metrics\n"
        f"  events gRPC     {cfg.events.listen}   metrics http://{cfg.events.metrics_listen}/metrics\n"
        f"  minions         {', '.join(locations)}\n"
        f"  config          {config_path}\n"
        + ("" if plaintext else f"  PKI             {pki_dir}   (CA, operator certificate)\n")
        + (
            ""
            if plaintext
            else f"  admin token     {admin_token}   (the CLI finds it; `vigil whoami`)\n"
        )
        + f"  try: vigil sniff --pretty {sniff_flag}   |   {grpcurl} "
        f"{cfg.scheduler.listen} vigil.v1.Poller/ListServices\n"
        "  Ctrl-C stops everything.",
        flush=True,
    )
    code = 0
    try:
        while not stop_requested:
            for name, proc in children:
                if proc.poll() is not None:
                    print(
                        f"vigil up: {name} exited with {proc.returncode}; stopping", file=sys.stderr
                    )
                    code = 1
                    stop_requested = True
            if nats.proc is not None and nats.proc.poll() is not None:
                print("vigil up: nats-server exited; stopping", file=sys.stderr)
                code = 1
                stop_requested = True
            if pki is not None and time.monotonic() >= next_pki_check:
                next_pki_check = time.monotonic() + PKI_WATCH_INTERVAL
                pki_seen = _reload_if_changed(nats, pki, pki_seen)
            time.sleep(0.2)
    finally:
        for name, proc in reversed(children):
            _stop(proc, name, timeout=15.0)
        nats.stop()
        with contextlib.suppress(OSError):
            (state_dir / "nats-url").unlink()
    print("vigil up: stopped", flush=True)
    return code
