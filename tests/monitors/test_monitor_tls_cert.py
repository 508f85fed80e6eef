"""TLS certificate monitor against local TLS servers with trustme certificates."""

from __future__ import annotations

import re

import pytest

from minion.monitors.base import Status
from tests.monitors.conftest import free_port, server_ssl_context


@pytest.fixture
def tls_peer(tcp_server, tls_material):
    async def idle(reader, writer):
        await reader.read(10)

    def _make(cert: str, host: str = "127.0.0.1"):
        return tcp_server(
            idle, host=host, ssl_context=server_ssl_context(tls_material["certs"][cert])
        )

    return _make


async def test_valid_certificate(poll, tls_peer, tls_material):
    async with tls_peer("valid") as port:
        out = await poll(
            "tls_cert", "127.0.0.1", {"port": port, "ca_file": tls_material["ca_file"]}
        )
    assert out.status is Status.UP, out.reason
    assert 364 < out.values["days_to_expiry"] <= 365
    assert out.reason.startswith("TLSv1.")


async def test_expiring_certificate(poll, tls_peer, tls_material):
    async with tls_peer("expiring") as port:
        out = await poll(
            "tls_cert",
            "127.0.0.1",
            {"port": port, "ca_file": tls_material["ca_file"], "min_days_to_expiry": 30},
        )
    assert out.status is Status.DOWN
    assert re.match(
        r"certificate expires in [23]\.\d days on \d{4}-\d\d-\d\d .* \(threshold 30 days\)",
        out.reason,
    ), out.reason
    assert 2 < out.values["days_to_expiry"] <= 3


async def test_expired_certificate_reports_days(poll, tls_peer, tls_material):
    async with tls_peer("expired") as port:
        chain = await poll(
            "tls_cert", "127.0.0.1", {"port": port, "ca_file": tls_material["ca_file"]}
        )
        nochain = await poll("tls_cert", "127.0.0.1", {"port": port, "verify_chain": False})
    assert chain.status is Status.DOWN
    assert chain.reason == "certificate chain not valid: certificate has expired"
    assert chain.values["days_to_expiry"] < -1
    assert nochain.status is Status.DOWN
    assert nochain.reason.startswith("certificate expired on ")


async def test_untrusted_chain(poll, tls_peer, tls_material):
    async with tls_peer("untrusted") as port:
        out = await poll(
            "tls_cert", "127.0.0.1", {"port": port, "ca_file": tls_material["ca_file"]}
        )
        ignored = await poll("tls_cert", "127.0.0.1", {"port": port, "verify_chain": False})
    assert out.status is Status.DOWN
    assert out.reason.startswith("certificate chain not valid: ")
    assert "days_to_expiry" in out.values
    assert ignored.status is Status.UP, ignored.reason


async def test_hostname_match(poll, tls_peer, tls_material):
    ca = tls_material["ca_file"]
    async with tls_peer("valid") as port:
        by_name = await poll(
            "tls_cert", "127.0.0.1", {"port": port, "ca_file": ca, "server_name": "vigil.test"}
        )
        wildcard = await poll(
            "tls_cert", "127.0.0.1", {"port": port, "ca_file": ca, "server_name": "www.vigil.test"}
        )
        too_deep = await poll(
            "tls_cert", "127.0.0.1", {"port": port, "ca_file": ca, "server_name": "a.b.vigil.test"}
        )
    assert by_name.status is Status.UP, by_name.reason
    assert wildcard.status is Status.UP, wildcard.reason
    assert too_deep.status is Status.DOWN
    assert too_deep.reason.startswith("certificate does not match a.b.vigil.test (it names: ")


async def test_certificate_without_the_address(poll, tls_peer, tls_material):
    async with tls_peer("other_name") as port:
        out = await poll(
            "tls_cert", "127.0.0.1", {"port": port, "ca_file": tls_material["ca_file"]}
        )
        unchecked = await poll(
            "tls_cert",
            "127.0.0.1",
            {"port": port, "ca_file": tls_material["ca_file"], "check_hostname": False},
        )
    assert out.status is Status.DOWN
    assert out.reason == "certificate does not match 127.0.0.1 (it names: other.example)"
    assert unchecked.status is Status.UP


async def test_ipv6(poll, tls_peer, tls_material):
    async with tls_peer("valid", host="::1") as port:
        out = await poll("tls_cert", "::1", {"port": port, "ca_file": tls_material["ca_file"]})
    assert out.status is Status.UP, out.reason


async def test_plain_tcp_server(poll, tcp_server):
    async def plain(reader, writer):
        writer.write(b"220 hello, no TLS here\r\n")
        await writer.drain()

    async with tcp_server(plain) as port:
        out = await poll("tls_cert", "127.0.0.1", {"port": port})
    assert out.status is Status.DOWN
    assert out.reason.startswith("TLS handshake failed") or "failed" in out.reason


async def test_refused(poll):
    port = free_port()
    out = await poll("tls_cert", "127.0.0.1", {"port": port})
    assert out.status is Status.DOWN
    assert out.reason == f"connection refused on port {port}"
