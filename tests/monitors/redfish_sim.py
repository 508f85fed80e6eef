"""A real Redfish service for the ``redfish`` tests: sushy-tools' emulator
(``sushy-emulator``, its fake systems driver: no libvirt) over HTTPS on a free
port of 127.0.0.1, with basic authentication from an htpasswd (bcrypt) file
and a self-signed certificate the test makes with ``cryptography``.

What the test changes while the emulator runs:

- the system's PowerState: in the fake driver's own state store (the SQLite
  file under ``SUSHY_EMULATOR_STATE_DIR`` it reads on every request);
- readings, thresholds and health: the emulator renders its resources from
  Jinja templates; the emulator runs with a template directory of the
  test's in front of its own (:data:`LAUNCHER`), where the test writes
  copies of the emulator's ``thermal.json``/``system.json`` with other
  values. Jinja re-reads a changed template (``auto_reload``).

sushy-tools has no SessionService and no ``Power`` resource, so session
logins and Power readings are not exercised against it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.monitors.conftest import REPO, free_port, stop_process, wait_tcp

USER, PASSWORD = "ops", "redfish-pass"
SYSTEM_UUID = "2a7a0e18-8b5c-4d4f-9c3e-6f1a2b3c4d5e"
SYSTEM_NAME = "node-1"

#: Runs the emulator's own ``main()`` with the test's template directory first.
LAUNCHER = """
import os, sys
import jinja2
from sushy_tools.emulator import main

overlay = os.environ["VIGIL_SUSHY_TEMPLATES"]
main.app.jinja_loader = jinja2.ChoiceLoader(
    [jinja2.FileSystemLoader(overlay), main.app.jinja_loader]
)
# a template the test rewrote is read again (set before main(), whose debug
# setting would otherwise turn Jinja's auto_reload off)
main.app.config["TEMPLATES_AUTO_RELOAD"] = True
sys.exit(main.main())
"""


def sushy_available() -> bool:
    """Whether sushy-tools (and its bcrypt) can be imported."""
    try:
        import bcrypt  # noqa: F401
        import sushy_tools.emulator  # noqa: F401
    except ImportError:
        return False
    return True


def self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (its own CA) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vigil test BMC")])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("bmc.example.test")]
            ),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "bmc.pem", directory / "bmc-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _templates() -> Path:
    import sushy_tools.emulator

    return Path(sushy_tools.emulator.__file__).parent / "templates"


@dataclass
class RedfishSim:
    """A running sushy-emulator."""

    port: int
    tmp: Path
    cert: Path
    proc: subprocess.Popen[Any]

    @property
    def overlay(self) -> Path:
        return self.tmp / "templates"

    def _write(self, name: str, text: str) -> None:
        path = self.overlay / name
        path.write_text(text)
        # a new mtime for Jinja's up-to-date check, however fast the test runs
        stamp = time.time() + (getattr(self, "_bump", 0) + 1)
        self._bump = getattr(self, "_bump", 0) + 1
        os.utime(path, (stamp, stamp))

    def set_thermal(self, replacements: dict[str, str]) -> None:
        """The emulator's ``thermal.json`` with each ``old`` text replaced by ``new`` (once)."""
        text = (_templates() / "thermal.json").read_text()
        for old, new in replacements.items():
            assert old in text, old
            text = text.replace(old, new, 1)
        self._write("thermal.json", text)

    def set_system_health(self, health: str, message: str | None = None) -> None:
        """The system's ``Status.Health`` (and a Condition with ``message``)."""
        text = (_templates() / "system.json").read_text()
        old = '"Health": "OK",\n        "HealthRollUp": "OK"'
        assert old in text
        new = f'"Health": "{health}",\n        "HealthRollUp": "{health}"'
        if message:
            new += f',\n        "Conditions": [{{"Message": "{message}", "Severity": "{health}"}}]'
        self._write("system.json", text.replace(old, new, 1))

    def set_power(self, state: str) -> None:
        """The fake system's PowerState, in the fake driver's state store."""
        db = self.tmp / "state" / "fakedriver.sqlite"
        key = pickle.dumps(SYSTEM_UUID)
        with sqlite3.connect(db) as conn:
            (blob,) = conn.execute("select value from cache where key=?", (key,)).fetchone()
            system = pickle.loads(blob)
            system["power_state"] = state
            system.pop("pending_power", None)
            conn.execute("insert or replace into cache values (?, ?)", (key, pickle.dumps(system)))
        conn.close()


def start_redfish_sim() -> RedfishSim:
    """Write the emulator's configuration, certificate and users; start it."""
    import bcrypt

    tmp = Path(tempfile.mkdtemp(prefix="vigil-sushy-"))
    (tmp / "templates").mkdir()
    # the overlaid templates exist from the start: a template Jinja first loaded
    # from the emulator's own directory would never be looked for in ours
    for name in ("thermal.json", "system.json"):
        shutil.copyfile(_templates() / name, tmp / "templates" / name)
    (tmp / "state").mkdir()
    cert, key = self_signed(tmp)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (tmp / "htpasswd").write_text(f"{USER}:{hashed}\n")
    port = free_port()
    (tmp / "emulator.conf").write_text(
        f"""
SUSHY_EMULATOR_LISTEN_IP = "127.0.0.1"
SUSHY_EMULATOR_LISTEN_PORT = {port}
SUSHY_EMULATOR_SSL_CERT = {str(cert)!r}
SUSHY_EMULATOR_SSL_KEY = {str(key)!r}
SUSHY_EMULATOR_AUTH_FILE = {str(tmp / "htpasswd")!r}
SUSHY_EMULATOR_STATE_DIR = {str(tmp / "state")!r}
SUSHY_EMULATOR_FAKE_DRIVER = True
SUSHY_EMULATOR_FAKE_SYSTEMS = [
    {{"uuid": {SYSTEM_UUID!r}, "name": {SYSTEM_NAME!r}, "power_state": "On", "nics": []}}
]
"""
    )
    log = open(tmp / "log", "wb")  # noqa: SIM115 - the emulator writes to it until stopped
    env = {
        **os.environ,
        "VIGIL_SUSHY_TEMPLATES": str(tmp / "templates"),
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "--config", str(tmp / "emulator.conf"), "--fake"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp,
        env=env,
    )
    log.close()
    try:
        wait_tcp("127.0.0.1", port, timeout=20)
    except TimeoutError:
        stop_process(proc)
        text = (tmp / "log").read_text(errors="replace")
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"sushy-emulator did not start: {text}") from None
    sim = RedfishSim(port, tmp, cert, proc)
    try:
        # the fake driver creates its state store on its first request
        _get(sim, "/redfish/v1/Systems")
    except Exception:
        stop(sim)
        raise
    return sim


def _get(sim: RedfishSim, path: str) -> Any:
    import base64
    import json
    import ssl
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(sim.cert))
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    req = urllib.request.Request(
        f"https://127.0.0.1:{sim.port}{path}", headers={"Authorization": "Basic " + token}
    )
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return json.loads(resp.read())


def stop(sim: RedfishSim) -> None:
    """Stop the emulator and remove its files."""
    stop_process(sim.proc)
    shutil.rmtree(sim.tmp, ignore_errors=True)
