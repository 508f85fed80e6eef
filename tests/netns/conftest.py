"""Two remote sites built from Linux network namespaces and veth pairs.

Layout (``P`` = this test process's pid, ``X`` = a third octet derived from it)::

    host namespace                                   namespace vgt<P>a ("site A")
    vgt<P>h0 10.250.X.1/30  <- hub: NATS, scheduler  vgt<P>a1 10.250.X.6/30
    (peer vgt<P>h1, also on the host, unaddressed)    lo 10.250.X.65/32  <- target A
    vgt<P>a0 10.250.X.5/30  ------------------------  route 10.250.X.1/32 via .5
    vgt<P>b0 10.250.X.9/30  ------------------------  namespace vgt<P>b ("site B")
                                                     vgt<P>b1 10.250.X.10/30
                                                     lo 10.250.X.66/32  <- target B

A site reaches the hub address only (no default route inside a site), the
host cannot reach a site's target (only the site can), and nothing is
forwarded between sites. Cutting a site sets its host-side veth down.

Safety: only our own veths get addresses, all in 10.250.0.0/16; before
anything is set up, ``unreachable 10.250.0.0/16 metric 4000`` is added, so
that a cut link makes traffic to its addresses fail with "No route to host"
instead of leaving through the default gateway. Every namespace, link and
process is removed at the end, also on failure; leftovers of crashed runs
(named ``vgt<pid>…`` after a pid that no longer runs) are removed first.

Skips (with the reason) when not root, without ``ip``, or when namespaces
cannot be created here.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.minions.util import DIE_WITH_PARENT

PREFIX = "vgt"
TEST_RANGE = "10.250.0.0/16"
UNREACHABLE = ["unreachable", TEST_RANGE, "metric", "4000"]

pytestmark = pytest.mark.netns

TARGET_SERVER = (
    DIE_WITH_PARENT
    + """
import asyncio, sys
async def main():
    async def handle(r, w):
        w.close()
    server = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]), reuse_address=True)
    print("listening", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""
)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip`` (bounded), raising with its stderr on failure when ``check``."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ours(name: str) -> int | None:
    """The pid a ``vgt<pid>…`` name belongs to."""
    m = re.fullmatch(rf"{PREFIX}(\d+)[a-z]\d?", name)
    return int(m.group(1)) if m else None


def _namespaces() -> list[str]:
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _links() -> list[str]:
    out = ip("-o", "link", "show", check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _kill_namespace_processes(ns: str) -> None:
    for pid in ip("netns", "pids", ns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _remove(pid_filter: int | None) -> None:
    """Delete our namespaces and links: of ``pid_filter``, or of every dead pid when ``None``."""
    for ns in _namespaces():
        owner = _ours(ns)
        if owner is None or (owner != pid_filter if pid_filter is not None else _alive(owner)):
            continue
        _kill_namespace_processes(ns)
        ip("netns", "delete", ns, check=False)
    for link in _links():
        owner = _ours(link)
        if owner is None or (owner != pid_filter if pid_filter is not None else _alive(owner)):
            continue
        ip("link", "delete", link, check=False)


def _other_runs_alive() -> bool:
    me = os.getpid()
    return any(
        (o := _ours(n)) is not None and o != me and _alive(o) for n in _namespaces() + _links()
    )


def netns_unavailable() -> str | None:
    """Why these tests cannot run here (``None``: they can)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, as CI does)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid()}z"
    proc = ip("netns", "add", probe, check=False)
    if proc.returncode != 0:
        return f"cannot create a network namespace: {proc.stderr.strip()}"
    ip("netns", "delete", probe, check=False)
    return None


@dataclass
class Site:
    """One remote site: a namespace, its link to the host, a target only it can reach."""

    name: str
    netns: str
    host_if: str
    site_if: str
    host_addr: str
    site_addr: str
    target_addr: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        """Run a command inside the site."""
        return ("ip", "netns", "exec", self.netns)

    def cut(self) -> None:
        """The site's link goes down (its traffic then fails locally: see the module docstring)."""
        ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        """The site's link comes back."""
        ip("link", "set", self.host_if, "up")

    def start_target(self, port: int, log: Path) -> subprocess.Popen[bytes]:
        """A TCP service on the site's target address, reachable from inside the site only."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    *self.exec_prefix,
                    sys.executable,
                    "-c",
                    TARGET_SERVER,
                    self.target_addr,
                    str(port),
                ],
                stdout=subprocess.PIPE,
                stderr=out,
            )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15.0)
        line = proc.stdout.readline() if ready else b""
        if b"listening" not in line:
            proc.kill()
            proc.wait(10)
            raise RuntimeError(f"target in {self.netns} did not start within 15s; see {log}")
        self.processes.append(proc)
        return proc


@dataclass
class Sites:
    """The hub address (NATS, scheduler) and the sites."""

    hub: str
    a: Site
    b: Site


@pytest.fixture
def sites() -> Iterator[Sites]:
    """Sites A and B around a hub address; everything removed afterwards."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    _remove(None)  # leftovers of crashed runs
    pid = os.getpid()
    octet = pid % 200 + 20
    if ip("route", "add", *UNREACHABLE, check=False).returncode != 0:
        present = ip("route", "show", "type", "unreachable", check=False).stdout
        if "unreachable 10.250.0.0/16" not in present:  # not there, and cannot be added
            pytest.fail("could not add the safety route `unreachable 10.250.0.0/16 metric 4000`")
    made: list[Site] = []
    try:
        hub = f"10.250.{octet}.1"
        ip("link", "add", f"{PREFIX}{pid}h0", "type", "veth", "peer", "name", f"{PREFIX}{pid}h1")
        ip("addr", "add", f"{hub}/30", "dev", f"{PREFIX}{pid}h0")
        ip("link", "set", f"{PREFIX}{pid}h0", "up")
        ip("link", "set", f"{PREFIX}{pid}h1", "up")
        for i, name in enumerate(("a", "b")):
            base = 4 * (i + 1)
            site = Site(
                name=name,
                netns=f"{PREFIX}{pid}{name}",
                host_if=f"{PREFIX}{pid}{name}0",
                site_if=f"{PREFIX}{pid}{name}1",
                host_addr=f"10.250.{octet}.{base + 1}",
                site_addr=f"10.250.{octet}.{base + 2}",
                target_addr=f"10.250.{octet}.{65 + i}",
            )
            made.append(site)
            ns = site.netns
            ip("netns", "add", ns)
            ip(
                "link",
                "add",
                site.host_if,
                "type",
                "veth",
                "peer",
                "name",
                site.site_if,
                "netns",
                ns,
            )
            ip("addr", "add", f"{site.host_addr}/30", "dev", site.host_if)
            ip("link", "set", site.host_if, "up")
            ip("-n", ns, "addr", "add", f"{site.site_addr}/30", "dev", site.site_if)
            ip("-n", ns, "link", "set", site.site_if, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{site.target_addr}/32", "dev", "lo")
            ip("-n", ns, "route", "add", f"{hub}/32", "via", site.host_addr)
        yield Sites(hub, made[0], made[1])
    finally:
        for site in made:
            for proc in site.processes:
                if proc.poll() is None:
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
                if proc.stdout is not None:
                    proc.stdout.close()
        _remove(pid)
        if not _other_runs_alive():  # theirs too, after a crash: nothing needs it any more
            ip("route", "del", *UNREACHABLE, check=False)
