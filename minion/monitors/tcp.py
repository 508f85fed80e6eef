"""``tcp``: connect to a port; optionally TLS, match the banner, send a string
and match the reply.

Response time: from the start of the connect to the end of the last step
configured — the TCP connect alone, plus the TLS handshake with ``tls``, plus
reading a matching banner and/or reply. A measured value ``connect_ms`` is
the connect (and handshake) time alone.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from typing import ClassVar

from pydantic import Field, model_validator

from minion.monitors._common import (
    AbsPath,
    HostName,
    Regex,
    TlsMode,
    close_writer,
    plan,
    read_until_match,
    shorten,
    tls_context,
)
from minion.monitors.base import (
    Monitor,
    MonitorParams,
    PollContext,
    PollOutcome,
    Target,
    elapsed_ms,
)

MAX_BANNER_BYTES = 4096


class TcpParams(MonitorParams):
    """Parameters of the TCP monitor."""

    port: int = Field(ge=1, le=65535)
    #: Regular expression searched in what the peer sends first (e.g. ``^SSH-2\\.0``).
    banner: Regex | None = None
    #: Text sent once connected (after the banner, when ``banner`` is set).
    send: str | None = Field(default=None, min_length=1, max_length=65536)
    #: Regular expression searched in the reply to ``send``.
    expect: Regex | None = None
    #: Wrap the connection in TLS; the handshake must succeed.
    tls: bool = False
    #: With ``tls``: verify the certificate chain (and ``server_name`` when set).
    verify_tls: bool = False
    #: With ``tls``: SNI name and, with ``verify_tls``, the name the certificate must match.
    server_name: HostName | None = None
    #: With ``verify_tls``: CA bundle (PEM) on the minion instead of the system store.
    ca_file: AbsPath | None = None
    #: Most bytes read for the banner and for the reply (each).
    max_bytes: int = Field(default=MAX_BANNER_BYTES, ge=1, le=1 << 20)

    @model_validator(mode="after")
    def _consistent(self) -> TcpParams:
        if self.expect is not None and self.send is None:
            raise ValueError("expect needs send (use banner to match what the peer sends first)")
        if not self.tls and (self.verify_tls or self.server_name or self.ca_file):
            raise ValueError("verify_tls, server_name and ca_file need tls: true")
        if self.ca_file and not self.verify_tls:
            raise ValueError("ca_file needs verify_tls: true")
        return self


class TcpMonitor(Monitor[TcpParams]):
    """Connects; UP when the connection (and TLS handshake) opens and the
    banner and reply match."""

    name: ClassVar[str] = "tcp"
    params_model = TcpParams
    description = "TCP connect, optional TLS, banner regex, send string and reply regex"

    async def poll(self, target: Target, params: TcpParams, ctx: PollContext) -> PollOutcome:
        """Connect to ``target.address:port`` and run the configured exchange."""
        when = plan(ctx)
        ssl_ctx: ssl.SSLContext | None = None
        if params.tls:
            try:
                mode: TlsMode = (
                    ("full" if params.server_name else "chain") if params.verify_tls else "none"
                )
                ssl_ctx = await tls_context(mode, params.ca_file)
            except (OSError, ssl.SSLError) as exc:
                return PollOutcome.unknown(f"cannot load ca_file {params.ca_file}: {exc}")
        start = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(
                target.address,
                params.port,
                ssl=ssl_ctx,
                server_hostname=(params.server_name or "") if ssl_ctx else None,
                ssl_handshake_timeout=max(when.remaining(), 0.1) if ssl_ctx else None,
                limit=params.max_bytes + 1024,
            )
        except ConnectionRefusedError:
            return PollOutcome.down(f"connection refused on port {params.port}", elapsed_ms(start))
        except ssl.SSLCertVerificationError as exc:
            return PollOutcome.down(
                f"TLS certificate not accepted: {exc.verify_message or exc.reason}",
                elapsed_ms(start),
            )
        except ssl.SSLError as exc:
            return PollOutcome.down(f"TLS handshake failed: {exc.reason or exc}", elapsed_ms(start))
        except (TimeoutError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            return PollOutcome.down(
                f"connect to port {params.port} failed: {reason or 'timed out'}",
                elapsed_ms(start),
            )
        connect_ms = elapsed_ms(start)
        try:
            return await self._exchange(reader, writer, params, start, connect_ms, when.report_by)
        finally:
            await close_writer(writer)

    @staticmethod
    async def _exchange(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        params: TcpParams,
        start: float,
        connect_ms: float,
        deadline: float,
    ) -> PollOutcome:
        try:
            if params.banner is not None:
                pattern = re.compile(params.banner)
                seen, ok = await read_until_match(reader, pattern, params.max_bytes, deadline)
                if not ok:
                    got = f"got {shorten(seen)!r}" if seen else _nothing(start)
                    return PollOutcome.down(
                        f"banner did not match /{params.banner}/: {got}",
                        elapsed_ms(start),
                        connect_ms=connect_ms,
                    )
            if params.send is not None:
                writer.write(params.send.encode("utf-8"))
                await writer.drain()
                if params.expect is not None:
                    pattern = re.compile(params.expect)
                    seen, ok = await read_until_match(reader, pattern, params.max_bytes, deadline)
                    if not ok:
                        got = f"got {shorten(seen)!r}" if seen else _nothing(start)
                        return PollOutcome.down(
                            f"reply did not match /{params.expect}/: {got}",
                            elapsed_ms(start),
                            connect_ms=connect_ms,
                        )
        except (OSError, ssl.SSLError) as exc:
            return PollOutcome.down(
                f"connection failed after connect: {exc.__class__.__name__}: {exc}",
                elapsed_ms(start),
                connect_ms=connect_ms,
            )
        return PollOutcome.up(elapsed_ms(start), connect_ms=connect_ms)


def _nothing(start: float) -> str:
    return f"nothing received in {elapsed_ms(start) / 1000:.1f}s"
