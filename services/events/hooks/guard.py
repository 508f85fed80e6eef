"""Hook safety: a webhook cannot be turned inward (SSRF).

A hook may POST only to a public address. Refused, unless the operator
exempts them (``events.hooks_allow_networks``, ``events.hooks_allow_hosts``):

* loopback (127/8, ::1), unspecified (0.0.0.0, ::), link-local (169.254/16,
  fe80::/10), private (10/8, 172.16/12, 192.168/16, fc00::/7, fec0::/10),
  shared / CGNAT (100.64/10), multicast, broadcast, reserved and every other
  address Python does not call global (documentation ranges, benchmarking,
  …); an IPv6 address that embeds an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``,
  IPv4-compatible, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) is judged by
  that IPv4 address too;
* cloud metadata endpoints, by address (169.254.169.254, 169.254.170.2,
  fd00:ec2::254, 100.100.100.200) and by name (``metadata``,
  ``metadata.google.internal``, ``instance-data``, …), and ``localhost``.

Where it is checked:

* **At CreateHook / UpdateHook** (:meth:`AddressGuard.check_url`): an IP
  literal in any form the C library accepts (``2130706433``, ``0x7f.1``,
  ``127.1``, ``0177.0.0.1``, ``[::ffff:127.0.0.1]``) is decoded and judged; an
  allowed address not written as a dotted quad is refused too (the HTTP client
  refuses such forms). A host name is resolved (the event loop's
  ``getaddrinfo``, within ``hook_timeout``) and refused if **any** address it
  resolves to is forbidden. A name that does not resolve (or not in time) is
  **accepted**: DNS may not be ready yet, and every delivery checks again.
* **On every connection of every delivery** (:class:`GuardedResolver`): the
  runner's HTTP client resolves names only through the guard, which refuses
  the connection when any resolved address is forbidden and otherwise hands
  the client exactly the addresses it checked (no second resolution, no DNS
  cache), so DNS rebinding gets nowhere. An IP-literal URL never reaches a
  resolver: the runner judges it before each attempt
  (:meth:`AddressGuard.literal_reason`). Redirects are not followed.

A refused delivery fails with the class ``address not allowed`` and is
retried and parked like any other failure (:mod:`.delivery`).

Stored and shown delivery errors are generic classes (:func:`failure_class`,
:func:`shown_error`), never the receiver's text: a hook must not become a
port scanner or a way to read an internal service's answers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from services.core.config import EventsSettings
from services.core.errors import InvalidArgumentError

log = logging.getLogger(__name__)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: ``resolve(host, port)`` → the IP addresses (as text) ``host`` resolves to; raises
#: :class:`OSError` (e.g. :class:`socket.gaierror`) when it does not resolve.
Resolve = Callable[[str, int], Awaitable[Sequence[str]]]

NETWORKS_KEY = "events.hooks_allow_networks"
HOSTS_KEY = "events.hooks_allow_hosts"

# -- the failure classes (what ListHooks / ListHookFailures show) ---------------------------

ADDRESS_NOT_ALLOWED = "address not allowed"
REDIRECT_NOT_FOLLOWED = "redirect not followed"
TIMEOUT = "timeout"
TLS_ERROR = "TLS error"
NAME_NOT_RESOLVED = "name not resolved"
CONNECTION_FAILED = "connection failed"
INVALID_URL = "invalid URL"
DELIVERY_FAILED = "delivery failed"
FAILURE_CLASSES = frozenset(
    {
        ADDRESS_NOT_ALLOWED,
        REDIRECT_NOT_FOLLOWED,
        TIMEOUT,
        TLS_ERROR,
        NAME_NOT_RESOLVED,
        CONNECTION_FAILED,
        INVALID_URL,
        DELIVERY_FAILED,
    }
)
_HTTP_STATUS = re.compile(r"HTTP ([1-5][0-9][0-9])\b")


def http_failure(status: int) -> str:
    """The class of a non-2xx answer: its status code only (never the reason or body)."""
    if 300 <= status < 400:
        return REDIRECT_NOT_FOLLOWED
    return f"HTTP {status}"


def shown_error(text: str | None) -> str | None:
    """A stored error as it may be shown: a failure class, as is; anything else
    (written by an older version, which kept the receiver's text) reduced to one."""
    if not text:
        return text
    if text in FAILURE_CLASSES:
        return text
    m = _HTTP_STATUS.match(text)
    if m:
        return http_failure(int(m.group(1)))
    if text.startswith("no answer within"):
        return TIMEOUT
    return DELIVERY_FAILED


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen) or len(seen) > 16:
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
        os_error = getattr(e, "os_error", None)
        if isinstance(os_error, BaseException):
            todo.append(os_error)
    return seen


def failure_class(exc: BaseException) -> str:
    """The generic class of a failed POST (see :data:`FAILURE_CLASSES`)."""
    chain = _chain(exc)
    if any(isinstance(e, AddressNotAllowed) for e in chain):
        return ADDRESS_NOT_ALLOWED
    if isinstance(exc, TimeoutError):  # ServerTimeoutError and the session's total timeout
        return TIMEOUT
    if any(isinstance(e, aiohttp.ClientSSLError | ssl.SSLError) for e in chain):
        return TLS_ERROR
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or any(
        isinstance(e, socket.gaierror) for e in chain
    ):
        return NAME_NOT_RESOLVED
    if isinstance(exc, aiohttp.InvalidURL):
        return INVALID_URL
    if isinstance(
        exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | ConnectionError | OSError
    ):
        return CONNECTION_FAILED
    return DELIVERY_FAILED


# -- judging addresses ------------------------------------------------------------------------

#: Cloud metadata endpoints (AWS IMDS and ECS, GCP, Azure, OpenStack; AWS IPv6; Alibaba).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
#: Cloud metadata (and loopback) host names, refused by name whatever they resolve to.
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "metadata.azure.com",
        "metadata.packet.net",
        "metadata.platformequinix.com",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_BROADCAST = ipaddress.ip_address("255.255.255.255")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def address_kind(addr: IpAddress) -> str | None:
    """Why ``addr`` may not be a hook's target (``"a loopback address"``…), or ``None``."""
    if addr in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = _embedded_v4(addr)
        if embedded is not None:
            kind = address_kind(embedded)
            if kind is not None:
                return kind
    if addr.is_loopback:
        return "a loopback address"
    if addr.is_unspecified or addr in _THIS_NETWORK:
        return "an unspecified address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.is_multicast:
        return "a multicast address"
    if addr == _BROADCAST:
        return "a broadcast address"
    if addr in _CGNAT:
        return "a shared (CGNAT) address"
    if any(addr.version == n.version and addr in n for n in _PRIVATE) or (
        isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local
    ):
        return "a private address"
    if addr.is_reserved:
        return "a reserved address"
    if addr.is_private or not addr.is_global:
        return "a non-public address"
    return None


def shown_address(addr: IpAddress) -> str:
    """``addr`` for a message, with the IPv4 address an IPv6 one embeds."""
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = _embedded_v4(addr)
        if embedded is not None:
            return f"{addr} (IPv4 {embedded})"
    return str(addr)


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _NAT64 or (addr in _IPV4_COMPATIBLE and int(addr) > 1):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


_NUMBER = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")


def parse_ipv4_number_form(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in any form ``inet_aton`` (and so ``getaddrinfo``) accepts:
    ``2130706433``, ``0x7f.1``, ``127.1``, ``0177.0.0.1``; ``None`` if ``host`` is
    not one. Raises :class:`ValueError` for a number form out of range."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMBER.fullmatch(p) for p in parts):
        return None
    values = []
    for p in parts:
        if p[:2].lower() == "0x":
            values.append(int(p[2:] or "0", 16))
        elif len(p) > 1 and p.startswith("0"):
            if not all(c in "01234567" for c in p):
                raise ValueError("not an octal number")
            values.append(int(p, 8))
        else:
            values.append(int(p))
    *head, last = values
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        raise ValueError("out of range")
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def _canonical_host(url: str) -> tuple[str, int]:
    """The host (lower case, no trailing dot, no brackets) and port the HTTP client
    will connect to, as aiohttp (yarl) reads the URL."""
    try:
        u = URL(url)
        # raw_host: IDNA-encoded, as the connector resolves it; an IPv6 zone is decoded
        host = u.host if u.raw_host and ":" in u.raw_host else u.raw_host
        port = u.port
    except (ValueError, TypeError):
        raise InvalidArgumentError("url", "not a valid URL") from None
    if not host or port is None:
        raise InvalidArgumentError("url", "has no host")
    return host.lower().rstrip("."), port


class AddressNotAllowed(OSError):
    """A hook's connection was refused by the guard (never shown with detail)."""


class AddressGuard:
    """Judges hook targets against the built-in rules and the operator's exemptions.

    ``resolver`` does the name lookups, at creation and for every connection of
    every delivery (replaceable: tests give one whose answers they control).
    """

    def __init__(self, settings: EventsSettings, resolver: Resolve | None = None) -> None:
        self.allow_networks: tuple[IpNetwork, ...] = tuple(settings.hooks_allow_networks)
        self.allow_hosts = frozenset(settings.hooks_allow_hosts)
        self.timeout = settings.hook_timeout
        self.resolver: Resolve = resolver or system_resolve

    # -- pieces ---------------------------------------------------------------------------

    def allowed_network(self, addr: IpAddress) -> bool:
        """Whether an operator's exemption covers ``addr``."""
        plain: IpAddress = addr
        if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
            plain = ipaddress.IPv6Address(addr.compressed.split("%", 1)[0])
        candidates: list[IpAddress] = [plain]
        if isinstance(plain, ipaddress.IPv6Address) and plain.ipv4_mapped is not None:
            candidates.append(plain.ipv4_mapped)
        return any(
            c.version == n.version and c in n for c in candidates for n in self.allow_networks
        )

    def address_reason(self, addr: IpAddress) -> str | None:
        """Why ``addr`` is refused (its kind), or ``None`` when it is allowed."""
        if self.allowed_network(addr):
            return None
        return address_kind(addr)

    def host_exempt(self, host: str) -> bool:
        """Whether ``host`` (a name) is one of ``hooks_allow_hosts``."""
        return host.lower().rstrip(".") in self.allow_hosts

    def name_reason(self, host: str) -> str | None:
        """Why a host *name* is refused by name alone, or ``None``."""
        name = host.lower().rstrip(".")
        if self.host_exempt(name):
            return None
        if name in METADATA_HOSTS:
            return "a cloud metadata host"
        if name == "localhost" or name.endswith(".localhost"):
            return "a loopback host"
        return None

    def literal_reason(self, url: str) -> str | None:
        """For a URL whose host is an IP literal, why it is refused (``None``: allowed,
        or the host is a name, judged by :class:`GuardedResolver` on connection)."""
        try:
            host, _port = _canonical_host(url)
            addr = _literal(host)
        except (InvalidArgumentError, ValueError):
            return "not a valid address"
        if addr is None:
            return None
        return self.address_reason(addr)

    def static_reason(self, url: str) -> str | None:
        """Why ``url`` is refused without resolving anything (an IP literal's kind, a
        metadata or loopback name), or ``None``."""
        why = self.literal_reason(url)
        if why is not None:
            return why
        try:
            host, _port = _canonical_host(url)
        except InvalidArgumentError:
            return "not a valid URL"
        return self.name_reason(host)

    async def resolve(self, host: str, port: int) -> list[IpAddress]:
        """The addresses ``host`` resolves to, within the timeout; raises
        :class:`OSError` (no such name), :class:`TimeoutError`."""
        async with asyncio.timeout(self.timeout):
            answers = await self.resolver(host, port)
        out: list[IpAddress] = []
        for a in answers:
            try:
                addr = ipaddress.ip_address(a)
            except ValueError:
                raise AddressNotAllowed(f"{host}: the resolver answered {a!r}") from None
            if addr not in out:
                out.append(addr)
        if not out:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: no address")
        return out

    async def checked_addresses(self, host: str, port: int) -> list[IpAddress]:
        """Resolve ``host`` for a connection; raises :class:`AddressNotAllowed` when it
        is refused by name or when **any** address it resolves to is forbidden."""
        why = self.name_reason(host)
        if why is not None:
            raise AddressNotAllowed(f"{host} is {why}")
        addrs = await self.resolve(host, port)
        if self.host_exempt(host):
            return addrs
        for addr in addrs:
            kind = self.address_reason(addr)
            if kind is not None:
                raise AddressNotAllowed(f"{host} resolves to {kind} {addr}")
        return addrs

    # -- at CreateHook / UpdateHook -------------------------------------------------------

    async def check_url(self, url: str) -> None:
        """Refuse (``INVALID_ARGUMENT`` naming ``url``) a hook URL aimed inward; see
        the module docstring. Call after :func:`.validation.validate_url`."""
        host, port = _canonical_host(url)
        try:
            addr = _literal(host)
        except ValueError:
            raise InvalidArgumentError(
                "url", "the host looks like an IP address but is not a valid one"
            ) from None
        if addr is not None:
            kind = self.address_reason(addr)
            if kind is not None:
                raise InvalidArgumentError(
                    "url", f"is {kind} {shown_address(addr)}; allow it with {NETWORKS_KEY}"
                )
            if isinstance(addr, ipaddress.IPv4Address) and host != str(addr):
                raise InvalidArgumentError(
                    "url", f"write the IPv4 address as a dotted quad ({addr}), not {host!r}"
                )
            return
        if "%" in host:
            raise InvalidArgumentError("url", "the host must not be percent-encoded")
        why = self.name_reason(host)
        if why is not None:
            raise InvalidArgumentError("url", f"{host} is {why}; allow it with {HOSTS_KEY}")
        if self.host_exempt(host):
            return
        try:
            addrs = await self.resolve(host, port)
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, AddressNotAllowed):
                raise InvalidArgumentError(
                    "url", f"{host} does not resolve to an address"
                ) from None
            # Accepted: DNS may not be ready; every delivery checks again.
            log.info("hook URL host %s does not resolve now (%s); checked at delivery", host, exc)
            return
        for a in addrs:
            kind = self.address_reason(a)
            if kind is not None:
                raise InvalidArgumentError(
                    "url",
                    f"{host} resolves to {kind} {shown_address(a)}; allow it with {NETWORKS_KEY} "
                    f"(or the name with {HOSTS_KEY})",
                )


def _literal(host: str) -> IpAddress | None:
    """``host`` as an IP address when it is one (any IPv4 number form); ``None`` for a
    name; :class:`ValueError` for something that looks numeric but is no address."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if ":" in host:
        raise ValueError("not an IPv6 address")
    addr = parse_ipv4_number_form(host)
    if addr is not None:
        return addr
    # WHATWG: a host whose last label is a number is an IPv4 address, or invalid.
    last = host.rsplit(".", 1)[-1]
    if last and (last.isdigit() or last.lower().startswith("0x")):
        raise ValueError("not an IPv4 address")
    return None


async def system_resolve(host: str, port: int) -> list[str]:
    """The event loop's ``getaddrinfo`` (TCP), as address texts."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=getattr(socket, "AI_ADDRCONFIG", 0)
    )
    out = []
    for family, _type, _proto, _canon, sockaddr in infos:
        text = str(sockaddr[0])
        if family == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3]:
            text = f"{text.split('%', 1)[0]}%{sockaddr[3]}"
        out.append(text)
    return out


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver for hook deliveries: every address handed to the connector
    has been checked by the guard (see the module docstring)."""

    def __init__(self, guard: AddressGuard) -> None:
        self.guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The checked addresses of ``host``; raises :class:`AddressNotAllowed`."""
        addrs = await self.guard.checked_addresses(host, port)
        out: list[ResolveResult] = []
        for addr in addrs:
            fam = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
            if family not in (socket.AF_UNSPEC, fam):
                continue
            out.append(
                ResolveResult(
                    hostname=host,
                    host=str(addr),
                    port=port,
                    family=fam,
                    proto=socket.IPPROTO_TCP,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not out:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: no address of that family")
        return out

    async def close(self) -> None:
        """Nothing to release."""


def describe(exc: BaseException) -> Any:
    """The detail of a failure, for debug logs only (never stored nor shown)."""
    return f"{type(exc).__name__}: {exc}"[:300]
