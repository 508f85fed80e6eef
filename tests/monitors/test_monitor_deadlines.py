"""Deadlines, TTLs and cancellation, for every monitor that waits on a peer.

The runner bounds an attempt by the service's ``timeout`` or, when sooner,
the request's TTL. At its own timeout a monitor may say what it saw ("no
reply"); at a TTL it must not blame the service: the runner abandons the poll
and the scheduler counts it UNKNOWN. Cancelled, a monitor leaves nothing
behind.
"""

from __future__ import annotations

import asyncio

import pytest

from minion.monitors.base import PollContext, Status, Target
from tests.monitors.conftest import ABANDONED


async def _silent(reader, writer):
    await asyncio.sleep(30)


async def test_tcp_ttl_is_not_blamed_on_the_service(poll, tcp_server):
    async with tcp_server(_silent) as port:
        own = await poll("tcp", "127.0.0.1", {"port": port, "banner": "^220"}, timeout=0.5)
        ttl = await poll("tcp", "127.0.0.1", {"port": port, "banner": "^220"}, timeout=30, ttl=0.5)
    assert own.status is Status.DOWN
    assert own.reason.startswith("banner did not match /^220/: nothing received")
    assert ttl.status is Status.UNKNOWN
    assert ttl.reason == ABANDONED


async def test_icmp_ttl(poll, silent_address):
    out = await poll("icmp", silent_address, {"count": 2}, timeout=30, ttl=0.5)
    assert out.reason == ABANDONED


async def test_nagios_ttl(poll, nagios_plugins, tmp_path):
    from minion.monitors.nagios import set_plugin_dirs

    script = tmp_path / "check_sleepy"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    set_plugin_dirs([str(tmp_path)])
    try:
        out = await poll("nagios", "127.0.0.1", {"plugin": "check_sleepy"}, timeout=30, ttl=0.5)
    finally:
        set_plugin_dirs(["/usr/lib/nagios/plugins", "/usr/lib/monitoring-plugins"])
    assert out.reason == ABANDONED


async def test_dns_ttl(poll, udp_peer):
    async with udp_peer(lambda data: None) as port:
        out = await poll("dns", "127.0.0.1", {"name": "x.test", "port": port}, timeout=30, ttl=0.5)
    assert out.reason == ABANDONED


async def test_snmp_ttl(poll, udp_peer):
    async with udp_peer(lambda data: None) as port:
        out = await poll("snmp", "127.0.0.1", {"port": port}, timeout=30, ttl=0.8)
    assert out.reason == ABANDONED


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("tcp", {"banner": "x"}),
        ("ssh", {}),
        ("http", {}),
        ("tls_cert", {}),
    ],
)
async def test_cancelled_poll_closes_its_connection(monitors, tcp_server, name, params):
    connected = asyncio.Event()
    closed = asyncio.Event()

    async def watch(reader, writer):
        connected.set()
        try:
            await reader.read(65536)
            while await reader.read(65536):
                pass
        finally:
            closed.set()

    async with tcp_server(watch) as port:
        mon = monitors.get(name)
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(
            mon.poll(
                Target("127.0.0.1"),
                mon.parse_params({"port": port, **params}),
                PollContext(loop.time() + 30, 30),
            )
        )
        async with asyncio.timeout(5):
            await connected.wait()
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the peer sees the connection go away: nothing is left open
        async with asyncio.timeout(5):
            await closed.wait()
