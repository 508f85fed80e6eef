"""Issue 10, defect 12: every CLI command that connects fails within its bound and stops on a signal.

``vigil sniff`` runs as a real process against a closed port, a port that
accepts and never answers, and a real nats-server; the bounds are the
documented ones (docs/operations.md, "Command-line bounds").
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.core.natsserver import NatsServer
from tests.helpers import free_port
from tests.minions.util import ROOT, python_env

#: sniff gives up on the first connection after this long (services/cli/sniff.py).
CONNECT_BOUND = 10.0
#: Interpreter start-up and the release of the abandoned attempt, on a loaded machine.
SLACK = 4.0
#: How long a signalled sniff may take to exit.
STOP_BOUND = 2.0


def _sniff(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "sniff", *args],
        cwd=ROOT,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_stderr_line(proc: subprocess.Popen[str], text: str, timeout: float) -> None:
    assert proc.stderr is not None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            break
        if text in line:
            return
    raise AssertionError(f"sniff never printed {text!r}")


def _stopped_within(proc: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, float]:
    start = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=STOP_BOUND + 3)
    finally:
        proc.kill()
    return proc.returncode, time.monotonic() - start


def test_sniff_to_a_closed_port_fails_within_its_bound_with_one_line() -> None:
    port = free_port()
    start = time.monotonic()
    proc = _sniff("--nats", f"tls://127.0.0.1:{port}")
    try:
        out, err = proc.communicate(timeout=CONNECT_BOUND + SLACK + 10)
    finally:
        proc.kill()
    took = time.monotonic() - start
    assert proc.returncode == 1, err
    assert took < CONNECT_BOUND + SLACK, f"took {took:.1f}s"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("vigil sniff: cannot connect to NATS at tls://127.0.0.1:"), err
    assert "10s" in lines[0], err
    assert out == ""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sniff_stops_on_the_first_signal_while_connecting(sig: signal.Signals) -> None:
    # A port that accepts and never answers: the TLS handshake waits there.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(30)
        proc = _sniff("--nats", f"tls://127.0.0.1:{silent.getsockname()[1]}")
        # Its first attempt arrived: sniff is connecting (its handlers are set before).
        conn, _ = silent.accept()
        time.sleep(0.5)
        assert proc.poll() is None
        code, took = _stopped_within(proc, sig)
        conn.close()
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    assert took < STOP_BOUND, f"took {took:.1f}s"


def test_a_running_sniff_stops_within_two_seconds_of_sigterm(nats_server: NatsServer) -> None:
    proc = _sniff("--nats", nats_server.url)
    try:
        _wait_for_stderr_line(proc, "vigil sniff: watching", 30)
    except AssertionError:
        proc.kill()
        raise
    code, took = _stopped_within(proc, signal.SIGTERM)
    assert code == 0
    assert took < STOP_BOUND, f"took {took:.1f}s"


def test_the_bound_is_documented() -> None:
    text = (Path(ROOT) / "docs/operations.md").read_text()
    assert "vigil sniff" in text and "10 s" in text


def test_sniff_never_shows_a_password_in_the_nats_url() -> None:
    """Issue 10, defect 13: a URL with credentials is shown with its password masked."""
    port = free_port()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "sniff",
            "--nats",
            f"tls://user:s3cr3t@127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=python_env(),
    )
    assert proc.returncode != 0
    assert "s3cr3t" not in proc.stderr + proc.stdout
    assert "user:***@" in proc.stderr
