"""``http``: one HTTP(S) request; UP when the status is expected, the body
matches, the response came fast enough and the certificate is not about to
expire.

Response time: from sending the request (including the TCP connect and TLS
handshake when no pooled connection can be reused, and any redirects
followed) to having read the body, bounded by ``max_body_bytes``.
Connections are pooled per minion and reused (keep-alive); the pool keeps
connections with different TLS settings or virtual hosts apart.

Measured values: ``http_status``, ``response_bytes`` (body bytes read) and,
for HTTPS, ``days_to_expiry`` of the server certificate.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import time
from typing import ClassVar

import aiohttp
import yarl

from minion.monitors._common import (
    cert_info,
    connect_failure,
    host_literal,
    tls_context,
    tls_peer_certificate,
)
from minion.monitors.base import (
    Monitor,
    PollContext,
    PollOutcome,
    Target,
    elapsed_ms,
)
from minion.monitors.credentials import credential
from services.core.params.credentials import unknown_credential
from services.core.params.http import HttpParams, parse_status_ranges


def _url(target: Target, params: HttpParams) -> str:
    port = f":{params.port}" if params.port else ""
    return f"{params.scheme}://{host_literal(target.address)}{port}{params.path}"


def _sni_name(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.index("]")]
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


class HttpMonitor(Monitor[HttpParams]):
    """Sends one request through a pooled client session."""

    name: ClassVar[str] = "http"
    params_model = HttpParams
    description = "HTTP(S) request: status codes, body regex, response time, certificate expiry"

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._loop = loop
            self._session = aiohttp.ClientSession(
                # No per-host cap: aiohttp's waiters for a capped host are not
                # served in order, so busy polls could starve others past their
                # deadline. The runner caps concurrency; ``limit`` bounds sockets.
                connector=aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=15),
                timeout=aiohttp.ClientTimeout(total=None),  # the runner owns the deadline
                headers={"User-Agent": "vigil-minion"},
                auto_decompress=True,
                # each poll stands alone: no cookies carried from one to the next
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def poll(self, target: Target, params: HttpParams, ctx: PollContext) -> PollOutcome:
        """Send the request to ``target.address`` and check the response."""
        url = _url(target, params)
        headers = dict(params.headers)
        ssl_arg: ssl.SSLContext | bool = False
        server_hostname: str | None = None
        if params.host:
            headers["Host"] = params.host
        if params.scheme == "https":
            try:
                ssl_arg = await tls_context("full" if params.verify_tls else "none", params.ca_file)
            except (OSError, ssl.SSLError) as exc:
                return PollOutcome.unknown(f"cannot load ca_file {params.ca_file}: {exc}")
            if params.host:
                server_hostname = _sni_name(params.host)
        for name, value in params.secret_headers.items():
            headers[name] = value.get_secret_value()
        username, password, bearer = params.username, params.password, params.bearer_token
        if params.credential is not None:
            cred = credential(params.credential)
            if cred is None:
                return PollOutcome.unknown(unknown_credential(params.credential))
            username, password, bearer = cred.username, cred.password, cred.token
            if bearer is None and (username is None or password is None):
                return PollOutcome.unknown(
                    f"credential {params.credential} has neither username and password nor token"
                )
        if bearer is not None:
            headers["Authorization"] = "Bearer " + bearer.get_secret_value()
        elif username is not None and password is not None:
            token = f"{username}:{password.get_secret_value()}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
        start = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._request(url, params, headers, ssl_arg, server_hostname, start)
            except aiohttp.ServerDisconnectedError as exc:
                # A pooled keep-alive connection the server closed meanwhile:
                # retry once on a fresh one rather than report a false DOWN.
                if attempt == 1 and ctx.remaining() > 0:
                    continue
                return PollOutcome.down(
                    f"HTTP request failed: server disconnected: {exc}", elapsed_ms(start)
                )
            except aiohttp.ClientConnectorCertificateError as exc:
                return PollOutcome.down(
                    f"TLS certificate not accepted: {_cert_reason(exc)}", elapsed_ms(start)
                )
            except aiohttp.ClientConnectorSSLError as exc:
                return PollOutcome.down(f"TLS handshake failed: {exc}", elapsed_ms(start))
            except aiohttp.ClientConnectorError as exc:
                # asyncio's strerror is "Connect call failed ('127.0.0.1', 80)";
                # the errno says what happened ("connection refused on port 80").
                return PollOutcome.down(
                    f"connect failed: {connect_failure(exc.os_error, exc.port)}",
                    elapsed_ms(start),
                )
            except aiohttp.TooManyRedirects:
                return PollOutcome.down(
                    f"more than {params.max_redirects} redirects", elapsed_ms(start)
                )
            except (aiohttp.ClientError, OSError) as exc:
                return PollOutcome.down(
                    f"HTTP request failed: {exc.__class__.__name__}: {exc}", elapsed_ms(start)
                )

    async def _request(
        self,
        url: str,
        params: HttpParams,
        headers: dict[str, str],
        ssl_arg: ssl.SSLContext | bool,
        server_hostname: str | None,
        start: float,
    ) -> PollOutcome:
        days: float | None = None
        async with self._client().request(
            params.method,
            url,
            headers=headers,
            data=params.request_body.encode() if params.request_body is not None else None,
            allow_redirects=params.follow_redirects,
            max_redirects=params.max_redirects,
            ssl=ssl_arg,
            server_hostname=server_hostname,
        ) as resp:
            if params.scheme == "https":
                der = _peer_certificate(resp)
                if der:
                    days = cert_info(der).days_to_expiry()
            body = bytearray()
            # StreamReader.read(n) returns what is buffered; loop to the bound
            while len(body) < params.max_body_bytes:
                chunk = await resp.content.read(params.max_body_bytes - len(body))
                if not chunk:
                    break
                body += chunk
            rt = elapsed_ms(start)
            code = resp.status
            reason_phrase = resp.reason or ""
            # leaving the block without reading the rest closes the connection
            # instead of returning a half-read one to the pool
        values: dict[str, float] = {"http_status": float(code), "response_bytes": float(len(body))}
        if days is not None:
            values["days_to_expiry"] = round(days, 3)
        if not any(lo <= code <= hi for lo, hi in parse_status_ranges(params.status)):
            return PollOutcome.down(
                f"HTTP {code} {reason_phrase}".rstrip() + f" (expected {params.status})",
                rt,
                **values,
            )
        if params.body is not None and not re.search(params.body, body.decode("utf-8", "replace")):
            return PollOutcome.down(
                f"HTTP {code}: body does not match /{params.body}/"
                + (
                    f" (first {len(body)} bytes read)" if len(body) >= params.max_body_bytes else ""
                ),
                rt,
                **values,
            )
        if params.max_response_time_ms is not None and rt > params.max_response_time_ms:
            return PollOutcome.down(
                f"HTTP {code} in {rt:.0f} ms, "
                f"above the {params.max_response_time_ms:g} ms threshold",
                rt,
                **values,
            )
        min_days = params.min_days_to_expiry
        if min_days is not None and days is None:
            # the response did not tell which certificate it came with: ask the server
            days = await _days_by_handshake(url, server_hostname, ssl_arg)
            if days is not None:
                values["days_to_expiry"] = round(days, 3)
        if min_days is not None and days is not None and days < min_days:
            return PollOutcome.down(
                f"certificate expires in {days:.1f} days (threshold {min_days:g})", rt, **values
            )
        return PollOutcome.up(rt, **values)

    async def close(self) -> None:
        """Close the pooled session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _days_by_handshake(
    url: str, server_hostname: str | None, ssl_arg: ssl.SSLContext | bool
) -> float | None:
    parsed = yarl.URL(url)
    if parsed.host is None or not isinstance(ssl_arg, ssl.SSLContext):
        return None
    try:
        der, _ = await tls_peer_certificate(
            parsed.host, parsed.port or 443, await tls_context("none"), server_hostname, 5.0
        )
    except (OSError, ssl.SSLError, TimeoutError):
        return None
    return cert_info(der).days_to_expiry()


def _peer_certificate(resp: aiohttp.ClientResponse) -> bytes | None:
    """The server certificate (DER) of the connection ``resp`` came on."""
    # aiohttp hands a fully received response's connection back to the pool at
    # once, so ``resp.connection`` is often None already; the protocol object
    # it came through stays on the response.
    conn = resp.connection
    transport = conn.transport if conn is not None else None
    if transport is None:
        protocol = getattr(resp, "_protocol", None)
        transport = getattr(protocol, "transport", None)
    if transport is None:
        return None
    ssl_obj = transport.get_extra_info("ssl_object")
    if ssl_obj is None:
        return None
    der: bytes | None = ssl_obj.getpeercert(binary_form=True)
    return der


def _cert_reason(exc: aiohttp.ClientConnectorCertificateError) -> str:
    err = exc.certificate_error
    if isinstance(err, ssl.SSLCertVerificationError):
        return str(err.verify_message or err.reason)
    return str(err)
