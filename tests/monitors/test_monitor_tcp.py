"""TCP monitor against scripted local peers (plain and TLS)."""

from __future__ import annotations

import asyncio
import socket
import struct

from minion.monitors.base import Status
from tests.monitors.conftest import free_port, server_ssl_context


async def _banner_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 vigil.test ESMTP ready\r\n")
    await writer.drain()
    line = await reader.readline()
    writer.write(b"250 hello " + line.strip() + b"\r\n")
    await writer.drain()
    await reader.read(100)


async def test_connect_up(poll, tcp_server):
    async with tcp_server(_banner_then_echo) as port:
        out = await poll("tcp", "127.0.0.1", {"port": port})
    assert out.status is Status.UP
    assert out.response_time_ms > 0
    assert out.values["connect_ms"] > 0


async def test_connect_refused(poll):
    port = free_port()
    out = await poll("tcp", "127.0.0.1", {"port": port})
    assert out.status is Status.DOWN
    assert out.reason == f"connection refused on port {port}"


async def test_ipv6(poll, tcp_server):
    async with tcp_server(_banner_then_echo, host="::1") as port:
        out = await poll("tcp", "::1", {"port": port, "banner": r"^220 "})
    assert out.status is Status.UP, out.reason


async def test_banner_match_and_mismatch(poll, tcp_server):
    async with tcp_server(_banner_then_echo) as port:
        ok = await poll("tcp", "127.0.0.1", {"port": port, "banner": r"^220 .*ESMTP"})
        bad = await poll("tcp", "127.0.0.1", {"port": port, "banner": r"^SSH-"}, timeout=1.0)
    assert ok.status is Status.UP
    assert bad.status is Status.DOWN
    assert bad.reason.startswith("banner did not match /^SSH-/: got '220 vigil.test ESMTP ready'")


async def test_send_and_expect(poll, tcp_server):
    async with tcp_server(_banner_then_echo) as port:
        ok = await poll(
            "tcp",
            "127.0.0.1",
            {
                "port": port,
                "banner": "^220",
                "send": "EHLO vigil\r\n",
                "expect": r"^250 hello EHLO",
            },
        )
        bad = await poll(
            "tcp",
            "127.0.0.1",
            {"port": port, "banner": "^220", "send": "EHLO vigil\r\n", "expect": r"^550"},
            timeout=1.0,
        )
    assert ok.status is Status.UP, ok.reason
    assert bad.status is Status.DOWN
    assert "reply did not match /^550/" in bad.reason
    assert "250 hello EHLO vigil" in bad.reason


async def test_silent_peer_is_cut_by_the_deadline(poll, tcp_server):
    async def silent(reader, writer):
        await asyncio.sleep(30)

    async with tcp_server(silent) as port:
        out = await poll("tcp", "127.0.0.1", {"port": port, "banner": "hello"}, timeout=0.5)
    assert out.status is Status.DOWN
    # the monitor answers just before the runner's deadline, saying what it saw
    assert out.reason.startswith("banner did not match /hello/: nothing received in 0.")


async def test_peer_closing_half_way(poll, tcp_server):
    async def half(reader, writer):
        writer.write(b"22")  # half a banner, then gone
        await writer.drain()

    async with tcp_server(half) as port:
        out = await poll("tcp", "127.0.0.1", {"port": port, "banner": r"^220 "})
    assert out.status is Status.DOWN
    assert "got '22'" in out.reason


async def test_connection_reset(poll, tcp_server):
    async def reset(reader, writer):
        sock = writer.get_extra_info("socket")
        # SO_LINGER 0: close() sends an RST instead of a FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    async with tcp_server(reset) as port:
        out = await poll("tcp", "127.0.0.1", {"port": port, "banner": "hello"})
    assert out.status is Status.DOWN
    assert "reset" in out.reason.lower() or "got '<nothing>'" in out.reason


async def test_flood_is_read_bounded(poll, tcp_server):
    async def flood(reader, writer):
        chunk = b"\x00\xff garbage " * 4096
        for _ in range(2000):  # ~80 MB if anyone read it all
            writer.write(chunk)
            await writer.drain()

    async with tcp_server(flood) as port:
        out = await poll(
            "tcp", "127.0.0.1", {"port": port, "banner": "never-there", "max_bytes": 8192}
        )
    assert out.status is Status.DOWN
    assert out.reason.startswith("banner did not match /never-there/")


async def test_tls(poll, tcp_server, tls_material):
    certs = tls_material["certs"]

    async def hello(reader, writer):
        writer.write(b"* OK IMAP ready\r\n")
        await writer.drain()
        await reader.read(10)

    async with tcp_server(hello, ssl_context=server_ssl_context(certs["valid"])) as port:
        plain = await poll("tcp", "127.0.0.1", {"port": port, "tls": True, "banner": r"^\* OK"})
        verified = await poll(
            "tcp",
            "127.0.0.1",
            {
                "port": port,
                "tls": True,
                "verify_tls": True,
                "ca_file": tls_material["ca_file"],
                "server_name": "vigil.test",
                "banner": r"^\* OK",
            },
        )
        wrong_name = await poll(
            "tcp",
            "127.0.0.1",
            {
                "port": port,
                "tls": True,
                "verify_tls": True,
                "ca_file": tls_material["ca_file"],
                "server_name": "elsewhere.example",
            },
        )
        system_ca = await poll("tcp", "127.0.0.1", {"port": port, "tls": True, "verify_tls": True})
    assert plain.status is Status.UP, plain.reason
    assert verified.status is Status.UP, verified.reason
    assert wrong_name.status is Status.DOWN
    assert "TLS certificate not accepted" in wrong_name.reason
    assert "elsewhere.example" in wrong_name.reason or "mismatch" in wrong_name.reason.lower()
    assert system_ca.status is Status.DOWN
    assert "unable to get local issuer certificate" in system_ca.reason


async def test_tls_against_plain_server(poll, tcp_server):
    async with tcp_server(_banner_then_echo) as port:
        out = await poll("tcp", "127.0.0.1", {"port": port, "tls": True})
    assert out.status is Status.DOWN
    assert "TLS" in out.reason or "failed" in out.reason


def test_connect_failure_reads_the_errno_not_asyncio_text():
    """asyncio says "Connect call failed ('127.0.0.1', 1)"; the reason says what happened."""
    import errno

    from minion.monitors._common import connect_failure

    refused = OSError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 51299)")
    assert connect_failure(refused, 51299) == "connection refused on port 51299"
    # Several addresses tried: asyncio joins them into one OSError without an errno.
    joined = OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('::1', 80, 0, 0), "
        "[Errno 111] Connect call failed ('127.0.0.1', 80)"
    )
    assert connect_failure(joined, 80) == "connection refused on port 80"
    unreachable = OSError(errno.EHOSTUNREACH, "Connect call failed ('10.0.0.1', 22)")
    assert connect_failure(unreachable, 22) == "host unreachable on port 22"
    assert connect_failure(OSError(errno.ECONNRESET, "x"), 22) == "connection reset on port 22"
    assert connect_failure(TimeoutError(), 22) == "connect timed out on port 22"
