"""HTTP(S) monitor against a local aiohttp server and a throw-away CA."""

from __future__ import annotations

import re

import pytest

from minion.monitors.base import Status
from tests.monitors.conftest import BIG_BODY_BYTES, free_port


async def test_200_with_body_match(poll, http_server):
    out = await poll(
        "http", "127.0.0.1", {"port": http_server, "path": "/ok", "body": "vigil test"}
    )
    assert out.status is Status.UP, out.reason
    assert out.values["http_status"] == 200.0
    assert out.values["response_bytes"] > 0
    assert out.response_time_ms > 0


async def test_body_mismatch(poll, http_server):
    out = await poll("http", "127.0.0.1", {"port": http_server, "path": "/ok", "body": "^nope"})
    assert out.status is Status.DOWN
    assert out.reason == "HTTP 200: body does not match /^nope/"


async def test_503_is_down_with_status_in_reason(poll, http_server):
    out = await poll("http", "127.0.0.1", {"port": http_server, "path": "/fail"})
    assert out.status is Status.DOWN
    assert out.reason == "HTTP 503 Service Unavailable (expected 200-399)"
    assert out.values["http_status"] == 503.0


async def test_expected_status_list_and_ranges(poll, http_server):
    out = await poll(
        "http", "127.0.0.1", {"port": http_server, "path": "/fail", "status": "200,500-503"}
    )
    assert out.status is Status.UP
    out = await poll("http", "127.0.0.1", {"port": http_server, "path": "/ok", "status": "201-299"})
    assert out.status is Status.DOWN
    assert "expected 201-299" in out.reason


async def test_slow_response_cut_by_deadline(poll, http_server):
    out = await poll("http", "127.0.0.1", {"port": http_server, "path": "/slow?s=10"}, timeout=0.5)
    assert out.status is Status.DOWN
    assert out.reason == "timed out after 0.5s"


async def test_response_time_threshold(poll, http_server):
    out = await poll(
        "http",
        "127.0.0.1",
        {"port": http_server, "path": "/slow?s=0.3", "max_response_time_ms": 100},
    )
    assert out.status is Status.DOWN
    assert "above the 100 ms threshold" in out.reason
    out = await poll(
        "http", "127.0.0.1", {"port": http_server, "path": "/ok", "max_response_time_ms": 2000}
    )
    assert out.status is Status.UP


async def test_redirects_off_and_on(poll, http_server):
    off = await poll(
        "http", "127.0.0.1", {"port": http_server, "path": "/redirect", "status": "200"}
    )
    assert off.status is Status.DOWN
    assert off.reason.startswith("HTTP 302")
    on = await poll(
        "http",
        "127.0.0.1",
        {
            "port": http_server,
            "path": "/redirect",
            "status": "200",
            "follow_redirects": True,
            "body": "hello",
        },
    )
    assert on.status is Status.UP, on.reason
    loop = await poll(
        "http",
        "127.0.0.1",
        {"port": http_server, "path": "/loop", "follow_redirects": True, "max_redirects": 3},
    )
    assert loop.status is Status.DOWN
    assert loop.reason == "more than 3 redirects"


async def test_large_body_is_read_bounded(poll, http_server):
    out = await poll(
        "http",
        "127.0.0.1",
        {"port": http_server, "path": "/big", "max_body_bytes": 65536, "body": "y"},
    )
    assert out.status is Status.DOWN
    assert "first 65536 bytes read" in out.reason
    assert out.values["response_bytes"] == 65536.0
    out = await poll("http", "127.0.0.1", {"port": http_server, "path": "/big", "body": "^x+"})
    assert out.status is Status.UP
    assert out.values["response_bytes"] == float(1 << 20) < BIG_BODY_BYTES
    # the half-read connection is dropped, not reused: the next poll still works
    out = await poll("http", "127.0.0.1", {"port": http_server, "path": "/ok"})
    assert out.status is Status.UP


async def test_method_headers_body_and_virtual_host(poll, http_server):
    out = await poll(
        "http",
        "127.0.0.1",
        {
            "port": http_server,
            "path": "/echo",
            "method": "POST",
            "request_body": "ping=1",
            "headers": {"X-Vigil": "yes", "Content-Type": "text/plain"},
            "host": "www.vigil.test:8080",
            "body": r"(?s)method=POST.*host=www\.vigil\.test:8080.*body=ping=1.*X-Vigil=yes",
        },
    )
    assert out.status is Status.UP, out.reason


async def test_basic_auth(poll, http_server):
    ok = await poll(
        "http",
        "127.0.0.1",
        {"port": http_server, "path": "/auth", "username": "ops", "password": "s3cret-pass"},
    )
    assert ok.status is Status.UP, ok.reason
    bad = await poll(
        "http",
        "127.0.0.1",
        {"port": http_server, "path": "/auth", "username": "ops", "password": "wrong-pass"},
    )
    assert bad.status is Status.DOWN
    assert "401" in bad.reason
    assert "wrong-pass" not in bad.reason


async def test_connection_refused(poll):
    port = free_port()
    out = await poll("http", "127.0.0.1", {"port": port})
    assert out.status is Status.DOWN
    assert out.reason == f"connect failed: connection refused on port {port}"


async def test_connections_are_reused(poll, http_server, monitors):
    for _ in range(5):
        out = await poll("http", "127.0.0.1", {"port": http_server, "path": "/ok"})
        assert out.status is Status.UP
    mon = monitors.get("http")
    connector = mon._session.connector  # type: ignore[attr-defined]
    # one kept-alive connection served every poll
    assert sum(len(v) for v in connector._conns.values()) == 1


async def test_garbage_reply_is_down(poll, tcp_server):
    async def garbage(reader, writer):
        await reader.read(1024)
        writer.write(b"\x00\x01\x02 this is not HTTP at all\r\n\r\n")
        await writer.drain()

    async with tcp_server(garbage) as port:
        out = await poll("http", "127.0.0.1", {"port": port})
    assert out.status is Status.DOWN
    assert out.reason.startswith("HTTP request failed")


async def test_half_a_reply_is_down(poll, tcp_server):
    async def half(reader, writer):
        await reader.read(1024)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly a bit")
        await writer.drain()

    async with tcp_server(half) as port:
        out = await poll("http", "127.0.0.1", {"port": port, "body": "complete"})
    assert out.status is Status.DOWN
    assert "HTTP request failed" in out.reason or "does not match" in out.reason


# --------------------------------------------------------------------------- HTTPS


async def test_https_verified_with_ca_file(poll, https_server, tls_material):
    async with https_server("valid") as port:
        out = await poll(
            "http",
            "127.0.0.1",
            {"scheme": "https", "port": port, "path": "/ok", "ca_file": tls_material["ca_file"]},
        )
    assert out.status is Status.UP, out.reason
    assert 360 < out.values["days_to_expiry"] <= 365


async def test_https_untrusted_ca(poll, https_server, tls_material):
    async with https_server("untrusted") as port:
        verified = await poll(
            "http",
            "127.0.0.1",
            {"scheme": "https", "port": port, "path": "/ok", "ca_file": tls_material["ca_file"]},
        )
        unverified = await poll(
            "http",
            "127.0.0.1",
            {"scheme": "https", "port": port, "path": "/ok", "verify_tls": False},
        )
    assert verified.status is Status.DOWN
    assert verified.reason.startswith("TLS certificate not accepted")
    assert "self-signed" in verified.reason or "local issuer" in verified.reason
    assert unverified.status is Status.UP, unverified.reason


async def test_https_expiring_certificate(poll, https_server, tls_material):
    async with https_server("expiring") as port:
        warn = await poll(
            "http",
            "127.0.0.1",
            {
                "scheme": "https",
                "port": port,
                "path": "/ok",
                "ca_file": tls_material["ca_file"],
                "min_days_to_expiry": 14,
            },
        )
        fine = await poll(
            "http",
            "127.0.0.1",
            {
                "scheme": "https",
                "port": port,
                "path": "/ok",
                "ca_file": tls_material["ca_file"],
                "min_days_to_expiry": 1,
            },
        )
    assert warn.status is Status.DOWN
    assert re.fullmatch(r"certificate expires in [23]\.\d days \(threshold 14\)", warn.reason)
    assert 2 < warn.values["days_to_expiry"] <= 3
    assert fine.status is Status.UP


async def test_https_expired_certificate(poll, https_server, tls_material):
    async with https_server("expired") as port:
        out = await poll(
            "http",
            "127.0.0.1",
            {"scheme": "https", "port": port, "path": "/ok", "ca_file": tls_material["ca_file"]},
        )
    assert out.status is Status.DOWN
    assert "certificate has expired" in out.reason


async def test_https_virtual_host_checks_the_name(poll, https_server, tls_material):
    async with https_server("valid") as port:
        good = await poll(
            "http",
            "127.0.0.1",
            {
                "scheme": "https",
                "port": port,
                "path": "/echo",
                "host": "www.vigil.test",
                "ca_file": tls_material["ca_file"],
                "body": r"host=www\.vigil\.test",
            },
        )
        bad = await poll(
            "http",
            "127.0.0.1",
            {
                "scheme": "https",
                "port": port,
                "path": "/ok",
                "host": "www.example.org",
                "ca_file": tls_material["ca_file"],
            },
        )
    assert good.status is Status.UP, good.reason
    assert bad.status is Status.DOWN
    assert "www.example.org" in bad.reason or "mismatch" in bad.reason.lower()


async def test_https_ipv6(poll, https_server, tls_material):
    async with https_server("valid", host="::1") as port:
        out = await poll(
            "http",
            "::1",
            {"scheme": "https", "port": port, "path": "/ok", "ca_file": tls_material["ca_file"]},
        )
    assert out.status is Status.UP, out.reason


async def test_grace_past_the_timeout_is_what_the_docs_say(poll):
    """docs/monitors.md: an HTTP request may run 20 % (0.2-1 s) past ``timeout``;
    a response within that grace is judged, a later one is "timed out after …"."""
    import asyncio

    from aiohttp import web

    from minion.runner import attempt_cutoff
    from tests.monitors.conftest import serve_app

    assert attempt_cutoff(100.0, 5.0, 1000.0) == 101.0
    assert attempt_cutoff(100.0, 0.5, 1000.0) == pytest.approx(100.2)
    assert attempt_cutoff(100.0, 30.0, 1000.0) == 101.0
    assert attempt_cutoff(100.0, 5.0, 100.5) == 100.5  # never past the TTL

    async def late(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query["s"]))
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/late", late)
    async with serve_app(app) as port:
        # timeout 2 s → grace 0.4 s: 2.15 s is within it, 3 s is not.
        within = await poll(
            "http", "127.0.0.1", {"port": port, "path": "/late?s=2.15"}, timeout=2, ttl=30
        )
        beyond = await poll(
            "http", "127.0.0.1", {"port": port, "path": "/late?s=3"}, timeout=2, ttl=30
        )
    assert within.status is Status.UP, within.reason
    assert within.response_time_ms > 2000
    assert beyond.status is Status.DOWN
    assert beyond.reason == "timed out after 2s"
