"""ICMP monitor against loopback and addresses that never answer."""

from __future__ import annotations

import pytest

from minion.monitors.base import Status


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
async def test_loopback_answers(poll, address):
    out = await poll("icmp", address, {"count": 3, "interval": 0.05})
    assert out.status is Status.UP, out.reason
    assert out.values["packet_loss"] == 0.0
    assert out.values["packets_received"] == 3.0
    assert out.values["rtt_ms"] > 0
    assert out.values["rtt_min_ms"] <= out.values["rtt_ms"] <= out.values["rtt_max_ms"]
    assert out.response_time_ms == pytest.approx(out.values["rtt_ms"], rel=0.01)


async def test_large_packets(poll):
    out = await poll("icmp", "127.0.0.1", {"count": 2, "interval": 0.05, "packet_size": 1400})
    assert out.status is Status.UP, out.reason


async def test_unreachable_address_is_down(poll, unreachable_addresses):
    out = await poll("icmp", unreachable_addresses["v4"], {"count": 2, "interval": 0.05})
    assert out.status is Status.DOWN
    assert "no reply to 2 echo request(s)" in out.reason
    assert out.values["packet_loss"] == 100.0


async def test_unreachable_ipv6_is_down(poll, unreachable_addresses):
    out = await poll("icmp", unreachable_addresses["v6"], {"count": 1})
    assert out.status is Status.DOWN
    assert "no reply" in out.reason


async def test_silent_host_is_down_before_the_deadline(poll, silent_address):
    # the requests go out and nothing answers: the monitor itself reports
    # the loss (not the runner's "timed out")
    out = await poll("icmp", silent_address, {"count": 3, "interval": 0.05}, timeout=1.0)
    assert out.status is Status.DOWN
    assert out.reason.startswith("no reply to 3 echo request(s)")
    assert out.values["packets_sent"] == 3.0
    assert out.values["packets_received"] == 0.0


async def test_rtt_threshold(poll):
    # a loopback RTT is never below 0.000001 ms: the threshold must trip
    out = await poll("icmp", "127.0.0.1", {"count": 1, "max_rtt_ms": 0.000001})
    assert out.status is Status.DOWN
    assert "average round trip" in out.reason
    assert "above 1e-06 ms" in out.reason
    out = await poll("icmp", "127.0.0.1", {"count": 2, "interval": 0.05, "max_peak_rtt_ms": 1e-6})
    assert out.status is Status.DOWN
    assert "slowest round trip" in out.reason


async def test_loss_threshold_passes_on_loopback(poll):
    out = await poll("icmp", "127.0.0.1", {"count": 4, "interval": 0.02, "max_packet_loss": 0})
    assert out.status is Status.UP, out.reason


async def test_count_that_cannot_fit_is_unknown(poll):
    out = await poll("icmp", "127.0.0.1", {"count": 10, "interval": 1.0}, timeout=2.0)
    assert out.status is Status.UNKNOWN
    assert "does not fit" in out.reason
