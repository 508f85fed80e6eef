"""SSH monitor against a real sshd (or a recorded OpenSSH banner) and bad peers."""

from __future__ import annotations

import asyncio

from minion.monitors.base import Status


async def test_real_server_identification(poll, ssh_server):
    out = await poll("ssh", ssh_server["host"], {"port": ssh_server["port"]})
    assert out.status is Status.UP, out.reason
    assert out.reason.startswith("SSH-2.0-OpenSSH_")
    assert out.values == {"ssh_protocol": 2.0}
    assert out.response_time_ms > 0


async def test_software_and_banner_regex(poll, ssh_server):
    ok = await poll(
        "ssh",
        ssh_server["host"],
        {"port": ssh_server["port"], "software": r"^OpenSSH_\d+\.\d+", "banner": "OpenSSH"},
    )
    assert ok.status is Status.UP, ok.reason
    bad = await poll(
        "ssh", ssh_server["host"], {"port": ssh_server["port"], "software": "^dropbear"}
    )
    assert bad.status is Status.DOWN
    assert bad.reason.startswith("SSH software 'OpenSSH_")
    assert "does not match /^dropbear/" in bad.reason


async def test_protocol_version_check(poll, tcp_server):
    async def old(reader, writer):
        writer.write(b"SSH-1.5-OldServer_1.0\r\n")
        await writer.drain()
        await reader.read(100)

    async with tcp_server(old) as port:
        down = await poll("ssh", "127.0.0.1", {"port": port})
        up = await poll("ssh", "127.0.0.1", {"port": port, "protocol": r"1\.\d+"})
    assert down.status is Status.DOWN
    assert down.reason.startswith("SSH protocol 1.5 does not match /2\\.0|1\\.99/")
    assert up.status is Status.UP


async def test_lines_before_identification_are_skipped(poll, tcp_server):
    async def chatty(reader, writer):
        writer.write(b"Welcome to the lab\r\nauthorized use only\r\nSSH-2.0-Lab_3.1 extra\r\n")
        await writer.drain()
        await reader.read(100)

    async with tcp_server(chatty) as port:
        out = await poll("ssh", "127.0.0.1", {"port": port, "software": "^Lab_3"})
    assert out.status is Status.UP, out.reason


async def test_not_an_ssh_server(poll, tcp_server):
    async def http(reader, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()

    async with tcp_server(http) as port:
        out = await poll("ssh", "127.0.0.1", {"port": port})
    assert out.status is Status.DOWN
    assert out.reason == "connection closed before an SSH identification"


async def test_endless_line_is_bounded(poll, tcp_server):
    async def endless(reader, writer):
        for _ in range(1000):
            writer.write(b"A" * 4096)
            await writer.drain()

    async with tcp_server(endless) as port:
        out = await poll("ssh", "127.0.0.1", {"port": port})
    assert out.status is Status.DOWN
    assert out.reason == "line longer than 255 bytes: not an SSH server"


async def test_silent_server_hits_the_deadline(poll, tcp_server):
    async def silent(reader, writer):
        await asyncio.sleep(30)

    async with tcp_server(silent) as port:
        out = await poll("ssh", "127.0.0.1", {"port": port}, timeout=0.5)
    assert out.status is Status.DOWN
    assert out.reason == "timed out after 0.5s"
