"""``vigil up`` starts every component and leaves nothing behind when stopped."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from services.core.pki import Identity, Pki, fingerprint
from tests import pki as test_pki
from tests.helpers import free_port
from tests.minions.util import python_env

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, closing_port: int) -> tuple[Path, dict[str, int]]:
    ports = {name: free_port() for name in ("sched", "sched_m", "events", "events_m")}
    cfg = {
        "scheduler": {
            "listen": f"127.0.0.1:{ports['sched']}",
            "metrics_listen": f"127.0.0.1:{ports['sched_m']}",
            "store_url": f"sqlite:///{tmp_path}/state/scheduler.db",
            "start_splay": "1s",
        },
        "events": {
            "listen": f"127.0.0.1:{ports['events']}",
            "metrics_listen": f"127.0.0.1:{ports['events_m']}",
            "store_url": f"sqlite:///{tmp_path}/state/events.db",
        },
        "minion": {"id_file": str(tmp_path / "state/minion-id")},
        "defaults": {"interval": "1s"},
        "nodes": [
            {
                "id": "self",
                "interfaces": [
                    {
                        "ip": "127.0.0.1",
                        "services": [
                            {
                                "name": "Scheduler",
                                "monitor": "tcp",
                                "params": {"port": ports["sched"]},
                            },
                            {
                                "name": "Closing",
                                "monitor": "tcp",
                                "params": {"port": closing_port},
                            },
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "vigil.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, ports


def _env() -> dict[str, str]:
    """Without the test run's CA: ``vigil up`` makes its own under the state directory."""
    env = python_env()
    env.pop(test_pki.ENV, None)
    return env


def _start(
    tmp_path: Path, closing_port: int = 9
) -> tuple[subprocess.Popen[str], dict[str, object], dict[str, int]]:
    path, ports = _config(tmp_path, closing_port)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli",
            "up",
            "--config",
            str(path),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    endpoints_file = tmp_path / "state/endpoints.json"
    deadline = time.monotonic() + 60
    while not endpoints_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read() if proc.stdout else ""
            proc.kill()
            raise AssertionError(f"vigil up did not start:\n{out}")
        time.sleep(0.1)
    endpoints = json.loads(endpoints_file.read_text())
    return proc, endpoints, ports


def _children(endpoints: dict[str, object]) -> list[int]:
    pids = endpoints["pids"]
    assert isinstance(pids, dict)
    return [int(p) for p in pids.values() if p]


def _wait_gone(pids: list[int], timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [
            p
            for p in pids
            if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        time.sleep(0.1)
    return alive


def _wait_for_line(stream: Any, text: str, timeout: float) -> str:
    """Read ``stream`` (a child's pipe) until a line holds ``text``; what was read."""
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            raise AssertionError(f"no {text!r} within {timeout}s; got {seen!r}")
        line = stream.readline()
        if not line:
            raise AssertionError(f"stream ended before {text!r}; got {seen!r}")
        seen += line
    return seen


def test_vigil_up_runs_the_pipeline_and_sigterm_stops_every_child(tmp_path: Path) -> None:
    # A port the test closes once the sniffer listens: the event cannot come too early.
    listener = socket.create_server(("127.0.0.1", 0))
    proc, endpoints, _ports = _start(tmp_path, listener.getsockname()[1])
    pids = _children(endpoints)
    try:
        assert len(pids) == 4  # nats-server, events, scheduler, one minion
        # The PKI was made on this first start; NATS runs with TLS and users.
        pki = Pki(tmp_path / "state/pki")
        for name in ("ca.pem", "operator.pem", "operator-key.pem", "nats.pem", "scheduler.pem"):
            assert (pki.dir / name).exists(), name
        assert pki.load(Identity.minion("Default", "embedded-default")) is not None
        conf = (tmp_path / "state/nats/nats-server.conf").read_text()
        assert '"verify_and_map": true' in conf
        assert "CN=embedded-default,OU=minion.Default,O=Vigil" in conf
        url = (tmp_path / "state/nats-url").read_text().strip()
        assert url == endpoints["nats"]
        assert url.startswith("nats://127.0.0.1:")
        # The closed port is reported lost through the whole pipeline.
        sniff = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                "sniff",
                "vigil.events.service.lost.>",
                "--count",
                "1",
                "--pki-dir",
                str(tmp_path / "state/pki"),
            ],
            cwd=tmp_path,
            env=_env() | {"VIGIL_NATS_URL": url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_for_line(sniff.stderr, "vigil sniff: watching", 60)
            listener.close()
            out, err = sniff.communicate(timeout=60)
        except AssertionError as exc:
            # What vigil up said is what explains it (a child that exited, NATS gone).
            proc.send_signal(signal.SIGTERM)
            told, _ = proc.communicate(timeout=60)
            raise AssertionError(f"{exc}\nvigil up said:\n{told}") from None
        finally:
            sniff.kill()
        assert sniff.returncode == 0, err
        event = json.loads(out.strip().splitlines()[0])
        assert event["typeId"] == "self/127.0.0.1/Closing"
        assert "connection refused" in event["data"]["reason"]
        # The first admin: a token only its owner can read, which the CLI uses.
        token_file = Path(str(endpoints["admin_token_file"]))
        assert token_file == tmp_path / "state/admin.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        who = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.cli",
                "whoami",
                "--scheduler",
                str(endpoints["scheduler_grpc"]),
                "--pki-dir",
                str(tmp_path / "state/pki"),
            ],
            cwd=tmp_path,
            env=_env() | {"VIGIL_ADMIN_TOKEN_FILE": str(token_file)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert who.returncode == 0, who.stderr
        assert who.stdout.startswith("token:bootstrap-admin (role admin"), who.stdout
    finally:
        listener.close()
        if proc.returncode is None:  # (still running unless a failure above stopped it)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped" in out
    assert _wait_gone(pids) == [], f"orphans left: {out}"
    assert not (tmp_path / "state/nats-url").exists()


def test_children_die_with_a_killed_vigil_up(tmp_path: Path) -> None:
    proc, endpoints, _ = _start(tmp_path)
    pids = _children(endpoints)
    proc.kill()  # no chance to clean up: the kernel must take the children down
    proc.communicate(timeout=30)
    assert _wait_gone(pids, timeout=30) == []
    # A restart reuses the PKI: the same CA, the same operator certificate.
    pki = Pki(tmp_path / "state/pki")
    ca, operator = fingerprint(pki.ca_cert()), pki.load(Identity("operator", "operator"))
    (tmp_path / "state/endpoints.json").unlink()
    proc, endpoints, _ = _start(tmp_path)
    try:
        assert fingerprint(pki.ca_cert()) == ca
        again = pki.load(Identity("operator", "operator"))
        assert operator is not None and again is not None
        assert again.serial_number == operator.serial_number
    finally:
        proc.kill()
        proc.communicate(timeout=30)
        assert _wait_gone(_children(endpoints), timeout=30) == []
