"""Real peers for the monitor tests: snmpsim, an aiohttp server (HTTP and HTTPS
with a throw-away CA), a dnslib DNS server, sshd, Monitoring Plugins, and
locally routed addresses that never answer ICMP.

Every peer listens on 127.0.0.1 / ::1 only; every wait has a timeout; every
fixture stops what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from minion.monitors.base import PollContext, PollOutcome, Status, Target
from minion.monitors.registry import MonitorSet, monitor_class
from minion.runner import attempt_cutoff

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

# --------------------------------------------------------------------------- helpers


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (TCP or UDP)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_tcp(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on ``host:port``."""
    end = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > end:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Terminate ``proc`` (then kill it) and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


PollFn = Callable[..., Awaitable[PollOutcome]]
#: What the ``poll`` fixture answers when the request's TTL ended the poll.
ABANDONED = "abandoned at the request's TTL"


@pytest.fixture
async def monitors() -> AsyncIterator[MonitorSet]:
    """The minion's set of monitor instances, closed after the test."""
    ms = MonitorSet()
    yield ms
    await ms.close()


@pytest.fixture
def poll(monitors: MonitorSet) -> PollFn:
    """``await poll("http", "127.0.0.1", {...}, timeout=3)`` polls the way the runner
    does: parameters validated by the registry, the attempt bounded by
    the runner's :func:`~minion.runner.attempt_cutoff`, an overrun reported as DOWN."""

    async def _poll(
        name: str,
        address: str,
        params: dict[str, Any] | None = None,
        timeout: float = 3.0,
        location: str = "Default",
        ttl: float | None = None,
    ) -> PollOutcome:
        mon = monitors.get(name)
        parsed = monitor_class(name).params_model.model_validate(params or {})
        loop = asyncio.get_running_loop()
        # like minion.runner: the attempt ends at its timeout or the request's TTL
        expires = loop.time() + ttl if ttl is not None else float("inf")
        deadline = min(loop.time() + timeout, expires)
        ctx = PollContext(deadline=deadline, timeout=timeout)
        try:
            async with asyncio.timeout_at(attempt_cutoff(deadline, timeout, expires)):
                return await mon.poll(Target(address, location=location), parsed, ctx)
        except TimeoutError:
            if loop.time() >= expires:
                return PollOutcome(Status.UNKNOWN, ABANDONED)
            return PollOutcome(Status.DOWN, f"timed out after {timeout:g}s")

    return _poll


# --------------------------------------------------------------------------- SNMP


SNMP_V3_USER = "vigil-priv"
SNMP_V3_AUTH_KEY = "vigil-auth-key"
SNMP_V3_PRIV_KEY = "vigil-priv-key"
SNMP_V3_AUTH_ONLY_USER = "vigil-auth"


def _snmpsim_data_dir() -> Path:
    import snmpsim_data  # the recordings shipped by the snmpsim-data package

    return Path(snmpsim_data.__file__).parent / "data"


@pytest.fixture(scope="session")
def snmpsim() -> Iterator[dict[str, Any]]:
    """snmpsim serving two recorded devices from snmpsim-data on 127.0.0.1 and ::1.

    v2c communities (= recording names): ``public`` (an APC AP8641 PDU) and
    ``geist`` (a Geist temperature sensor). v3: user ``vigil-priv``
    (SHA + AES) and ``vigil-auth`` (SHA, no privacy); the context name picks
    the recording.
    """
    exe = VENV_BIN / "snmpsim-command-responder"
    if not exe.exists():
        pytest.skip("snmpsim is not installed (pip install snmpsim snmpsim-data)")
    data = _snmpsim_data_dir()
    tmp = Path(tempfile.mkdtemp(prefix="vigil-snmpsim-"))
    (tmp / "data").mkdir()
    # copies, not symlinks: snmpsim names a recording after its resolved path
    shutil.copyfile(data / "UPS" / "apc-8641.snmprec", tmp / "data" / "public.snmprec")
    shutil.copyfile(
        data / "iot" / "geist-temperature-sensor.snmprec", tmp / "data" / "geist.snmprec"
    )
    port = free_port(socket.SOCK_DGRAM)
    args = [
        str(exe),
        f"--data-dir={tmp / 'data'}",
        f"--cache-dir={tmp / 'cache'}",
        f"--agent-udpv4-endpoint=127.0.0.1:{port}",
        f"--agent-udpv6-endpoint=[::1]:{port}",
        f"--v3-user={SNMP_V3_USER}",
        f"--v3-auth-key={SNMP_V3_AUTH_KEY}",
        "--v3-auth-proto=SHA",
        f"--v3-priv-key={SNMP_V3_PRIV_KEY}",
        "--v3-priv-proto=AES",
        f"--v3-user={SNMP_V3_AUTH_ONLY_USER}",
        f"--v3-auth-key={SNMP_V3_AUTH_KEY}",
        "--v3-auth-proto=SHA",
        "--logging-method=null",
    ]
    env = {**os.environ, "SNMPSIM_ALLOW_ROOT": "true"}
    log = open(tmp / "log", "wb")  # noqa: SIM115 - the agent writes to it until teardown
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_snmp(port, proc, tmp / "log")
        yield {"host": "127.0.0.1", "host6": "::1", "port": port}
    finally:
        stop_process(proc)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_snmp(port: int, proc: subprocess.Popen[Any], log: Path, timeout: float = 30.0) -> None:
    from pysnmp.hlapi.v3arch.asyncio import (
        CommunityData,
        ContextData,
        ObjectIdentity,
        ObjectType,
        SnmpEngine,
        UdpTransportTarget,
        get_cmd,
    )

    async def ask() -> bool:
        eng = SnmpEngine()
        try:
            t = await UdpTransportTarget.create(("127.0.0.1", port), timeout=0.5, retries=0)
            ind, _, _, _ = await get_cmd(
                eng,
                CommunityData("public"),
                t,
                ContextData(),
                ObjectType(ObjectIdentity("1.3.6.1.2.1.1.3.0")),
            )
            return ind is None
        finally:
            eng.close_dispatcher()

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"snmpsim exited: {log.read_text(errors='replace')[-2000:]}")
        if asyncio.run(ask()):
            return
    raise TimeoutError(f"snmpsim did not answer within {timeout}s")


# --------------------------------------------------------------------------- TLS material


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A throw-away CA and server certificates: valid (1 year), expiring in
    3 days, expired, and one signed by an unknown CA. All name 127.0.0.1,
    ::1 and ``vigil.test``."""
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    other_ca = trustme.CA()
    now = dt.datetime.now(dt.UTC)
    names = ("127.0.0.1", "::1", "vigil.test", "*.vigil.test")
    certs = {
        "valid": ca.issue_cert(*names, not_after=now + dt.timedelta(days=365)),
        "expiring": ca.issue_cert(*names, not_after=now + dt.timedelta(days=3)),
        "expired": ca.issue_cert(
            *names, not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=2)
        ),
        "untrusted": other_ca.issue_cert(*names, not_after=now + dt.timedelta(days=365)),
        "other_name": ca.issue_cert("other.example", not_after=now + dt.timedelta(days=365)),
    }
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return {"ca": ca, "ca_file": str(ca_file), "certs": certs}


def server_ssl_context(leaf: trustme.LeafCert) -> Any:
    """An ``ssl.SSLContext`` presenting ``leaf``."""
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    return ctx


# --------------------------------------------------------------------------- HTTP

BIG_BODY_BYTES = 20 * 1024 * 1024


def http_app() -> web.Application:
    """Routes for the HTTP monitor tests."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="hello from vigil test server\n")

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=503, text="maintenance")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "10")))
        return web.Response(text="finally")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = BIG_BODY_BYTES
        await resp.prepare(request)
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(BIG_BODY_BYTES // len(chunk)):
                await resp.write(chunk)
        return resp

    async def echo(request: web.Request) -> web.Response:
        body = await request.text()
        lines = [f"method={request.method}", f"host={request.host}", f"body={body}"]
        lines += [f"header:{k}={v}" for k, v in request.headers.items()]
        return web.Response(text="\n".join(lines))

    async def auth(request: web.Request) -> web.Response:
        import base64

        want = "Basic " + base64.b64encode(b"ops:s3cret-pass").decode()
        if request.headers.get("Authorization") != want:
            return web.Response(status=401, text="who are you")
        return web.Response(text="welcome ops")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/fail", fail)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/loop", loop)
    app.router.add_get("/big", big)
    app.router.add_get("/auth", auth)
    return app


@contextlib.asynccontextmanager
async def serve_app(
    app: web.Application, host: str = "127.0.0.1", ssl_context: Any = None
) -> AsyncIterator[int]:
    """Run ``app`` on a free port of ``host``; yields the port."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port(host=host)
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.fixture
async def http_server() -> AsyncIterator[int]:
    """Plain HTTP test server on 127.0.0.1; yields its port."""
    async with serve_app(http_app()) as port:
        yield port


@pytest.fixture
def https_server(tls_material: dict[str, Any]) -> Callable[..., Any]:
    """``async with https_server("expiring") as port:`` — HTTPS with that certificate."""

    def _make(cert: str = "valid", host: str = "127.0.0.1") -> Any:
        return serve_app(http_app(), host, server_ssl_context(tls_material["certs"][cert]))

    return _make


# --------------------------------------------------------------------------- raw TCP peers


@contextlib.asynccontextmanager
async def tcp_peer(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    host: str = "127.0.0.1",
    ssl_context: Any = None,
) -> AsyncIterator[int]:
    """A TCP server running ``handler`` per connection; yields its port."""
    tasks: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def wrapped(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        writers.add(w)
        try:
            await handler(r, w)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            w.close()
            tasks.discard(task)
            writers.discard(w)

    server = await asyncio.start_server(wrapped, host, 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for w in list(writers):
            w.transport.abort()
        for t in list(tasks):
            t.cancel()
        if tasks:
            await asyncio.wait(list(tasks), timeout=5)
        async with asyncio.timeout(5):
            await server.wait_closed()


@pytest.fixture
def tcp_server() -> Callable[..., Any]:
    """``async with tcp_server(handler) as port:`` — a scripted TCP peer."""
    return tcp_peer


# --------------------------------------------------------------------------- DNS

DNS_ZONE = """
$ORIGIN vigil.test.
$TTL 300
@        IN SOA ns1.vigil.test. hostmaster.vigil.test. 2026112201 3600 600 86400 300
@        IN NS  ns1.vigil.test.
@        IN MX  10 mail.vigil.test.
@        IN MX  20 backup-mail.vigil.test.
@        IN TXT "v=spf1 -all"
ns1      IN A   127.0.0.1
www      IN A   192.0.2.10
www      IN A   192.0.2.11
www      IN AAAA 2001:db8::10
mail     IN A   192.0.2.25
alias    IN CNAME www.vigil.test.
"""


def _dns_server(host: str, port: int, tcp: bool) -> Any:
    from dnslib import QTYPE, RCODE, RR, TXT
    from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer
    from dnslib.zoneresolver import ZoneResolver

    zone = ZoneResolver(DNS_ZONE)
    names = {str(rr.rname).lower() for rr in RR.fromZone(DNS_ZONE)}

    class Resolver(BaseResolver):  # type: ignore[misc]
        def resolve(self, request: Any, handler: Any) -> Any:
            qname = str(request.q.qname).lower()
            if qname == "big.vigil.test.":
                # 60 long TXT records: more than fits in 512 bytes of UDP
                reply = request.reply()
                for i in range(60):
                    reply.add_answer(
                        RR(request.q.qname, QTYPE.TXT, rdata=TXT(f"record {i:02d} " + "z" * 40))
                    )
                return reply
            if qname == "fail.vigil.test.":
                reply = request.reply()
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            if qname not in names:
                reply = request.reply()
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            reply = zone.resolve(request, handler)
            # dnslib's ZoneResolver says NXDOMAIN for a name that exists
            # without records of the asked type; a real server says NOERROR
            reply.header.rcode = RCODE.NOERROR
            return reply

    class Handler(DNSHandler):  # type: ignore[misc]
        udplen = 512  # truncate big UDP answers so the client must retry over TCP

    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class UDP(socketserver.UDPServer):
        address_family = family
        allow_reuse_address = True

    class TCP(socketserver.ThreadingTCPServer):
        address_family = family
        # earlier tests leave client connections in TIME_WAIT on random ports
        allow_reuse_address = True
        daemon_threads = True

    server_cls = TCP if tcp else UDP
    return DNSServer(
        Resolver(),
        address=host,
        port=port,
        tcp=tcp,
        handler=Handler,
        logger=DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False),
        server=server_cls,
    )


@pytest.fixture(scope="session")
def dns_server() -> Iterator[dict[str, Any]]:
    """A dnslib DNS server for ``vigil.test`` (UDP and TCP, IPv4 and IPv6, same port)."""
    servers: list[Any] = []
    for _ in range(10):  # a port free for UDP and TCP on both families
        port = free_port(socket.SOCK_DGRAM)
        try:
            for host in ("127.0.0.1", "::1"):
                for tcp in (False, True):
                    servers.append(_dns_server(host, port, tcp))
            break
        except OSError:
            for srv in servers:
                srv.server.server_close()
            servers = []
    else:
        raise RuntimeError("no port free for the DNS test server")
    for srv in servers:
        srv.start_thread()
    wait_tcp("127.0.0.1", port)
    try:
        yield {"host": "127.0.0.1", "host6": "::1", "port": port}
    finally:
        for srv in servers:
            srv.stop()
            srv.server.server_close()


@pytest.fixture
def udp_peer() -> Callable[..., Any]:
    """``async with udp_peer(reply_fn) as port:`` — a UDP server answering
    each datagram with ``reply_fn(data)`` (``None``: stay silent)."""

    @contextlib.asynccontextmanager
    async def _make(reply: Callable[[bytes], bytes | None]) -> AsyncIterator[int]:
        loop = asyncio.get_running_loop()

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                out = reply(data)
                if out is not None:
                    self.transport.sendto(out, addr)

        transport, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
        try:
            yield transport.get_extra_info("sockname")[1]
        finally:
            transport.close()

    return _make


# --------------------------------------------------------------------------- SSH

#: What Debian 12's sshd sends; used when a real sshd cannot run here.
OPENSSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real OpenSSH ``sshd`` on 127.0.0.1 (a throw-away host key, no
    logins possible), or — only if sshd cannot run here — a TCP server
    sending a recorded OpenSSH identification."""
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    keygen = shutil.which("ssh-keygen")
    reason = ""
    if sshd and keygen and os.geteuid() == 0:
        tmp = tmp_path_factory.mktemp("sshd")
        key = tmp / "host_ed25519"
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
        )
        # sshd insists on its privilege-separation directory
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        port = free_port()
        proc = subprocess.Popen(
            [
                sshd,
                "-D",
                "-e",
                "-f",
                "/dev/null",
                "-h",
                str(key),
                "-o",
                f"ListenAddress=127.0.0.1:{port}",
                "-o",
                "PidFile=none",
                "-o",
                "UsePAM=no",
                "-o",
                "PasswordAuthentication=no",
                "-o",
                "KbdInteractiveAuthentication=no",
                "-o",
                "AuthorizedKeysFile=none",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_tcp("127.0.0.1", port)
            yield {"host": "127.0.0.1", "port": port, "real": True}
            return
        except TimeoutError:
            reason = "sshd did not start"
        finally:
            stop_process(proc)
    else:
        reason = "no sshd/ssh-keygen, or not root"
    # fallback: a peer that speaks the first line of the SSH protocol like OpenSSH
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            with conn, contextlib.suppress(OSError):
                conn.sendall(OPENSSH_BANNER)
                conn.settimeout(1)
                conn.recv(256)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        yield {
            "host": "127.0.0.1",
            "port": srv.getsockname()[1],
            "real": False,
            "why_not_real": reason,
        }
    finally:
        stop.set()
        th.join(5)
        srv.close()


# --------------------------------------------------------------------------- ICMP


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


@pytest.fixture(scope="session")
def unreachable_addresses() -> Iterator[dict[str, str]]:
    """Addresses that never answer, with nothing leaving this machine:
    blackhole routes for 198.51.100.77 and 2001:db8::77 (documentation
    ranges), removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("adding a blackhole route needs root and iproute2")
    v4, v6 = "198.51.100.77", "2001:db8::77"
    added = []
    for fam, addr in (("-4", f"{v4}/32"), ("-6", f"{v6}/128")):
        res = _ip(fam, "route", "add", "blackhole", addr)
        if res.returncode != 0 and "File exists" not in res.stderr:
            for f, a in added:
                _ip(f, "route", "del", "blackhole", a)
            pytest.skip(f"cannot add a blackhole route: {res.stderr.strip()}")
        added.append((fam, addr))
    try:
        yield {"v4": v4, "v6": v6}
    finally:
        for fam, addr in added:
            _ip(fam, "route", "del", "blackhole", addr)


@pytest.fixture(scope="session")
def silent_address() -> Iterator[str]:
    """An IPv4 address routed into a local veth pair whose other end has no
    address (and a static neighbour entry, so no ARP is needed): echo requests
    really go out onto the pair and are dropped there; no reply ever comes and
    nothing leaves this machine."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("creating a veth pair needs root and iproute2")
    dev = f"vgl{os.getpid() % 100000}"
    res = _ip("link", "add", dev, "type", "veth", "peer", "name", f"{dev}p")
    if res.returncode != 0:
        pytest.skip(f"cannot create a veth pair: {res.stderr.strip()}")
    addr = "198.51.100.200"
    try:
        for args in (
            ("link", "set", dev, "up"),
            ("link", "set", f"{dev}p", "up"),
            # replace, not add: a route to this documentation address left behind
            # elsewhere (seen on a CI machine) must not skip the tests that need it;
            # deleting the link below takes ours away.
            ("route", "replace", f"{addr}/32", "dev", dev),
            (
                "neigh",
                "replace",
                addr,
                "lladdr",
                "02:00:5e:00:53:c8",
                "dev",
                dev,
                "nud",
                "permanent",
            ),
        ):
            res = _ip(*args)
            if res.returncode != 0:
                pytest.skip(f"ip {' '.join(args)}: {res.stderr.strip()}")
        yield addr
    finally:
        _ip("link", "del", dev)  # takes the peer, route and neighbour entry with it


# --------------------------------------------------------------------------- Nagios

NAGIOS_DIR = "/usr/lib/nagios/plugins"


@pytest.fixture(scope="session")
def nagios_plugins() -> str:
    """The Monitoring Plugins directory (Debian package monitoring-plugins-basic)."""
    if not os.access(f"{NAGIOS_DIR}/check_dummy", os.X_OK):
        pytest.skip("monitoring-plugins-basic is not installed (apt-get install it)")
    return NAGIOS_DIR
