"""Shared fixtures: a real nats-server per test, the in-process stack.

Also the skip policy (tests/skip_policy.py): under ``CI=true`` a skipped test
fails, naming the reason, so a peer missing on the CI machine (PostgreSQL,
snmpsim, monitoring-plugins, root, ...) cannot pass unseen. Elsewhere skips
stay skips.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.core.natsserver import NatsServer
from tests import pki as test_pki
from tests.helpers import EventCollector
from tests.minions.util import MinionProcess

# The skip policy's hooks, active for the whole suite by being names of this conftest. They live
# in a module of their own, importing nothing of ours, so their own test can load them alone.
from tests.skip_policy import (  # noqa: F401
    pytest_make_collect_report,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)


@pytest.fixture(autouse=True)
def no_ambient_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI under test finds no token of the developer's own (`make run`, `vigil login`)."""
    monkeypatch.delenv("VIGIL_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("VIGIL_ADMIN_TOKEN_FILE", str(tmp_path / "no-admin.token"))


@pytest.fixture(scope="session", autouse=True)
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One CA for the run; every configuration and child process finds its certificate there."""
    directory = tmp_path_factory.mktemp("pki")
    test_pki.create(directory)
    mp = pytest.MonkeyPatch()
    mp.setenv(test_pki.ENV, str(directory))
    try:
        yield directory
    finally:
        mp.undo()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A private nats-server with JetStream on a port of its own choosing.

    It runs as in production: TLS, a user per identity of the run's PKI with
    its permissions (services/core/natsauth.py), no anonymous access. When
    the test issues or revokes a certificate (tests/pki.py) it reloads its
    configuration before the issuing call returns.
    """
    server = NatsServer(tmp_path / "nats", pki=test_pki.current()).start()
    unsubscribe = test_pki.on_change(server.reload)
    try:
        yield server
    finally:
        unsubscribe()
        server.stop()
    # Every client of the test had the permissions its work needs: the server
    # logs each refused publish or subscription.
    violations = [
        line
        for line in server.log_file.read_text(errors="replace").splitlines()
        if "Violation" in line
    ]
    assert not violations, "NATS refused:\n" + "\n".join(violations[:20])


@pytest.fixture
async def events_seen(nats_server: NatsServer) -> AsyncIterator[EventCollector]:
    """Every event published on ``vigil.events.>`` during the test."""
    collector = await EventCollector().start(nats_server.url)
    try:
        yield collector
    finally:
        await collector.stop()


@pytest.fixture
def minion_processes() -> Iterator[list[MinionProcess]]:
    """Child minions started by the test; killed (if still running) at the end."""
    procs: list[MinionProcess] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
