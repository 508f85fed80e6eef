"""Helpers shared by the built-in monitors at run time: TLS, certificates,
bounded socket reads (their parameter field types are in
:mod:`services.core.params.fields`). Nothing here blocks the event loop once warmed up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import ipaddress
import os
import re
import ssl
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from minion.monitors.base import PollContext
from services.core.params.fields import TlsMode


def host_literal(address: str) -> str:
    """``address`` as it goes in a URL authority: IPv6 in brackets."""
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]"
    except ValueError:
        pass
    return address


def is_ipv6(address: str) -> bool:
    """True when ``address`` is an IPv6 literal."""
    try:
        return ipaddress.ip_address(address).version == 6
    except ValueError:
        return False


_SNAKE_BAD = re.compile(r"[^0-9a-zA-Z]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def snake_case(label: str) -> str:
    """``"Free Space /var"`` → ``"free_space_var"``; ``"rtaMax"`` → ``"rta_max"``."""
    s = _CAMEL.sub("_", label.strip())
    s = _SNAKE_BAD.sub("_", s).strip("_").lower()
    return s or "value"


def shorten(data: bytes | str, limit: int = 80) -> str:
    """A printable, bounded excerpt of what a peer sent, for a reason text."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text.strip()
    text = "".join(ch if ch.isprintable() else "." for ch in text)
    if not text:
        return "<nothing>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- TLS

#: How long a cached SSL context is kept before its CA file is read again.
TLS_CONTEXT_TTL_S = 300.0

_tls_cache: dict[tuple[TlsMode, str | None], tuple[float, ssl.SSLContext]] = {}


def _make_context(mode: TlsMode, ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file if mode != "none" else None)
    if mode != "full":
        ctx.check_hostname = False
    if mode == "none":
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def tls_context(mode: TlsMode, ca_file: str | None = None) -> ssl.SSLContext:
    """A cached client :class:`ssl.SSLContext`.

    ``mode``: ``"none"`` verifies nothing, ``"full"`` the chain and the host
    name (the ``server_hostname`` of the connection), ``"chain"`` the chain
    only (for callers that match the name themselves). Loading a CA bundle
    reads files, so it happens in a worker thread and the result is kept for
    :data:`TLS_CONTEXT_TTL_S` (a replaced CA file is picked up after that).
    Raises ``OSError``/``ssl.SSLError`` when the CA file cannot be used.
    """
    key = (mode, ca_file)
    now = time.monotonic()
    hit = _tls_cache.get(key)
    if hit is not None and now - hit[0] < TLS_CONTEXT_TTL_S:
        return hit[1]
    ctx = await asyncio.to_thread(_make_context, mode, ca_file)
    _tls_cache[key] = (now, ctx)
    return ctx


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What the monitors report about a peer certificate."""

    subject: str
    issuer: str
    not_after: dt.datetime
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]

    def days_to_expiry(self, now: dt.datetime | None = None) -> float:
        """Days (fractional) until ``notAfter``; negative once expired."""
        now = now or dt.datetime.now(dt.UTC)
        return (self.not_after - now).total_seconds() / 86400.0

    def matches(self, name: str) -> bool:
        """RFC 6125 matching of ``name`` (host name or IP) against the SANs.

        Wildcards only in the left-most label and only for a whole label
        (``*.example.com``), as browsers do. The subject CN is used only
        when there is no SAN at all (legacy certificates).
        """
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            ip = None
        if ip is not None:
            return any(ipaddress.ip_address(a) == ip for a in self.ip_addresses)
        want = name.rstrip(".").lower()
        names = self.dns_names
        if not names and not self.ip_addresses:
            names = (self.subject_cn,) if self.subject_cn else ()
        for pattern in names:
            pat = pattern.rstrip(".").lower()
            if pat == want:
                return True
            if pat.startswith("*.") and "." in want:
                head, _, rest = want.partition(".")
                if head and rest == pat[2:] and rest.count(".") >= 1:
                    return True
        return False

    @property
    def subject_cn(self) -> str:
        """The subject's common name (may be empty)."""
        m = re.search(r"CN=([^,]+)", self.subject)
        return m.group(1) if m else ""


def cert_info(der: bytes) -> CertInfo:
    """Parse a DER certificate (as ``SSLObject.getpeercert(binary_form=True)`` returns)."""
    cert = x509.load_der_x509_certificate(der)
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        pass
    # rfc4514_string is stable and readable: "CN=example.com,O=Example"
    subject = cert.subject.rfc4514_string()
    issuer = cert.issuer.rfc4514_string()
    if not cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) and dns:
        subject = subject or f"(SAN {dns[0]})"
    return CertInfo(subject, issuer, cert.not_valid_after_utc, dns, ips)


# --------------------------------------------------------------------------- streams


async def read_until_match(
    reader: asyncio.StreamReader,
    pattern: re.Pattern[str] | None,
    limit: int,
    deadline: float | None = None,
) -> tuple[bytes, bool]:
    """Read until ``pattern`` matches what was read, EOF, ``limit`` bytes, or
    ``deadline`` (loop time; then it returns what it has rather than raise, so
    the caller can show what the peer did send).

    Returns what was read (at most ``limit`` bytes) and whether it matched.
    With no pattern, returns the first chunk the peer sends.
    """
    seen = b""
    try:
        async with asyncio.timeout_at(deadline):
            while len(seen) < limit:
                chunk = await reader.read(limit - len(seen))
                if not chunk:
                    break
                seen += chunk
                if pattern is None:
                    return seen, True
                if pattern.search(seen.decode("utf-8", "replace")):
                    return seen, True
    except TimeoutError:
        pass
    return seen, False


@dataclass(frozen=True, slots=True)
class Plan:
    """The time an attempt has, as the service's ``timeout`` defines it.

    ``deadline`` is when the attempt ends by its own timeout; ``report_by`` is
    a little earlier: a monitor that can say more than "timed out" (a banner
    that did not match, ICMP loss) stops then and says it.
    """

    deadline: float
    report_by: float

    def remaining(self) -> float:
        """Seconds until ``deadline`` (for a library that wants a timeout)."""
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    def until_report(self) -> float:
        """Seconds until ``report_by``."""
        return max(0.0, self.report_by - asyncio.get_running_loop().time())


def plan(ctx: PollContext) -> Plan:
    """This attempt's :class:`Plan`; call it first thing in ``poll()``.

    Usually ``ctx.deadline`` is the end of the attempt's ``timeout``. When the
    request's TTL (``expires_at``) comes sooner, ``ctx.deadline`` is the TTL:
    the runner then abandons the poll at the TTL (the scheduler counts it
    UNKNOWN), and a monitor must not preempt that with a DOWN of its own
    ("no reply in 0.3 s" would blame the service for the TTL). So the plan
    keeps the attempt's own end, later than the TTL, and the runner's
    cancellation comes first.
    """
    now = asyncio.get_running_loop().time()
    own_end = now + ctx.timeout
    deadline = own_end if ctx.deadline < own_end - 0.05 else ctx.deadline
    return Plan(deadline, deadline - min(0.2, 0.1 * ctx.timeout))


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a stream without waiting long for a peer that does not cooperate.

    A plain socket with nothing left to send closes on the loop's next turn:
    no wait (and no timer) for it. TLS (its close_notify) or unsent data get
    up to a second.
    """
    writer.close()
    transport = writer.transport
    if transport.get_extra_info("sslcontext") is None and not transport.get_write_buffer_size():
        return
    with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


def first_line(text: str, limit: int = 200) -> str:
    """The first non-empty line of ``text``, bounded."""
    for line in text.splitlines():
        if line.strip():
            return shorten(line, limit)
    return ""


async def tls_peer_certificate(
    address: str,
    port: int,
    ctx: ssl.SSLContext,
    server_name: str | None,
    handshake_timeout: float,
) -> tuple[bytes, str]:
    """Open a TLS connection, return the peer's DER certificate and the TLS version.

    The connection is closed again at once. Raises ``OSError``,
    ``ssl.SSLError`` (``ssl.SSLCertVerificationError`` when ``ctx`` verifies
    and the certificate is refused) or ``TimeoutError``.
    """
    _, writer = await asyncio.open_connection(
        address,
        port,
        ssl=ctx,
        server_hostname=server_name or "",
        ssl_handshake_timeout=max(handshake_timeout, 0.1),
    )
    try:
        obj = writer.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if obj is not None else None
        version = (obj.version() or "") if obj is not None else ""
    finally:
        await close_writer(writer)
    if not der:
        raise ssl.SSLError("the server sent no certificate")
    return der, version


#: errno → what an operator reads. asyncio's own text for these is
#: "Connect call failed ('127.0.0.1', 51299)", which says nothing of what went
#: wrong; the errno does.
_CONNECT_ERRNO: dict[int, str] = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ETIMEDOUT: "connect timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTDOWN: "host down",
    errno.ENETDOWN: "network down",
    errno.EADDRNOTAVAIL: "address not available",
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted (firewall?)",
}


def connect_failure(exc: BaseException, port: int | None) -> str:
    """The reason text for a failed TCP connect to ``port``: what happened, by errno.

    ``exc`` is what ``asyncio.open_connection`` (or aiohttp's connector, via
    its ``os_error``) raised. asyncio joins the errors of several addresses
    into one ``OSError`` without an errno; the first errno found in its text
    is used then.
    """
    what: str | None = None
    if isinstance(exc, TimeoutError):
        what = "connect timed out"
    elif isinstance(exc, OSError):
        code = exc.errno
        if code is None:
            # "Multiple exceptions: [Errno 111] Connect call failed …, [Errno 101] …"
            found = re.search(r"\[Errno (\d+)\]", str(exc))
            code = int(found.group(1)) if found else None
        if code is not None:
            what = _CONNECT_ERRNO.get(code) or (os.strerror(code).lower() or None)
        if what is None:
            what = str(exc.strerror or exc) or None
    if what is None:
        what = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
    return f"{what} on port {port}" if port is not None else what
