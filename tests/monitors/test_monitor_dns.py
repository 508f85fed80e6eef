"""DNS monitor against a local dnslib server answering for vigil.test."""

from __future__ import annotations

import asyncio

import pytest

from minion.monitors.base import Status
from tests.monitors.conftest import free_port


@pytest.fixture
def dns(dns_server):
    return dns_server


async def test_a_record_any_answer(poll, dns):
    out = await poll("dns", dns["host"], {"name": "www.vigil.test", "port": dns["port"]})
    assert out.status is Status.UP, out.reason
    assert out.values == {"answers": 2.0, "rcode": 0.0}
    assert out.response_time_ms > 0


async def test_expected_answers(poll, dns):
    ok = await poll(
        "dns",
        dns["host"],
        {"name": "www.vigil.test", "port": dns["port"], "expect": ["192.0.2.11", "192.0.2.10"]},
    )
    assert ok.status is Status.UP, ok.reason
    bad = await poll(
        "dns",
        dns["host"],
        {"name": "www.vigil.test", "port": dns["port"], "expect": ["192.0.2.99"]},
    )
    assert bad.status is Status.DOWN
    assert bad.reason.startswith("www.vigil.test A: missing expected answer(s) 192.0.2.99; got ")
    assert "192.0.2.10" in bad.reason


@pytest.mark.parametrize(
    ("rtype", "name", "expect"),
    [
        ("MX", "vigil.test", ["10 mail.vigil.test", "20 backup-mail.vigil.test."]),
        ("AAAA", "www.vigil.test", ["2001:DB8:0::10"]),
        ("TXT", "vigil.test", ["v=spf1 -all"]),
        ("NS", "vigil.test", ["ns1.vigil.test"]),
        ("CNAME", "alias.vigil.test", ["www.vigil.test"]),
    ],
)
async def test_record_types(poll, dns, rtype, name, expect):
    out = await poll(
        "dns",
        dns["host"],
        {"name": name, "record_type": rtype, "port": dns["port"], "expect": expect},
    )
    assert out.status is Status.UP, out.reason


async def test_tcp_and_ipv6(poll, dns):
    out = await poll(
        "dns", dns["host6"], {"name": "www.vigil.test", "port": dns["port"], "transport": "tcp"}
    )
    assert out.status is Status.UP, out.reason


async def test_server_parameter_overrides_target(poll, dns):
    # the target is some other host; the DNS server to ask is named explicitly
    out = await poll(
        "dns",
        "192.0.2.1",
        {
            "name": "mail.vigil.test",
            "server": dns["host"],
            "port": dns["port"],
            "expect": ["192.0.2.25"],
        },
    )
    assert out.status is Status.UP, out.reason


async def test_truncated_udp_falls_back_to_tcp(poll, dns):
    out = await poll(
        "dns",
        dns["host"],
        {"name": "big.vigil.test", "record_type": "TXT", "port": dns["port"], "min_answers": 60},
    )
    assert out.status is Status.UP, out.reason
    assert out.values["answers"] == 60.0


async def test_nxdomain_and_servfail(poll, dns):
    nx = await poll("dns", dns["host"], {"name": "nope.vigil.test", "port": dns["port"]})
    assert nx.status is Status.DOWN
    assert nx.reason == "nope.vigil.test A: NXDOMAIN"
    assert nx.values["rcode"] == 3.0
    sf = await poll("dns", dns["host"], {"name": "fail.vigil.test", "port": dns["port"]})
    assert sf.status is Status.DOWN
    assert sf.reason == "fail.vigil.test A: SERVFAIL"
    # a server that answers NXDOMAIN is alive: that can be what is monitored
    alive = await poll(
        "dns",
        dns["host"],
        {"name": "nope.vigil.test", "port": dns["port"], "fatal_rcodes": [], "min_answers": 0},
    )
    assert alive.status is Status.UP


async def test_no_records_of_that_type(poll, dns):
    out = await poll(
        "dns", dns["host"], {"name": "mail.vigil.test", "record_type": "AAAA", "port": dns["port"]}
    )
    assert out.status is Status.DOWN
    assert out.reason == "mail.vigil.test AAAA: 0 answer(s) (NOERROR), expected at least 1"


async def test_answer_count_bounds(poll, dns):
    out = await poll(
        "dns", dns["host"], {"name": "www.vigil.test", "port": dns["port"], "max_answers": 1}
    )
    assert out.status is Status.DOWN
    assert out.reason == "www.vigil.test A: 2 answers, expected at most 1"


async def test_silent_server_times_out(poll, udp_peer):
    async with udp_peer(lambda data: None) as port:
        out = await poll("dns", "127.0.0.1", {"name": "www.vigil.test", "port": port}, timeout=0.5)
    assert out.status is Status.DOWN
    assert "no answer from 127.0.0.1 (udp)" in out.reason or out.reason == "timed out after 0.5s"


async def test_garbage_reply_is_down(poll, udp_peer):
    async with udp_peer(lambda data: data[:2] + b"\x81\x80garbage-not-dns") as port:
        out = await poll("dns", "127.0.0.1", {"name": "www.vigil.test", "port": port})
    assert out.status is Status.DOWN
    assert out.reason.startswith("malformed reply from 127.0.0.1")


async def test_refused_tcp(poll):
    port = free_port()
    out = await poll(
        "dns", "127.0.0.1", {"name": "www.vigil.test", "port": port, "transport": "tcp"}
    )
    assert out.status is Status.DOWN
    assert "refused" in out.reason


async def test_cancellation_leaves_nothing_behind(monitors, dns):
    mon = monitors.get("dns")
    from minion.monitors.base import PollContext, Target

    loop = asyncio.get_running_loop()
    params = mon.parse_params({"name": "www.vigil.test", "port": dns["port"]})
    task = asyncio.create_task(
        mon.poll(Target(dns["host"]), params, PollContext(loop.time() + 5, 5))
    )
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
