"""``ssh``: read the SSH server's identification line and check it.

RFC 4253 §4.2: the server sends ``SSH-protoversion-softwareversion [comments]``,
possibly after other text lines. The monitor reads lines (each at most 255
bytes, at most 50 lines) until the ``SSH-`` line, answers with its own
identification so the server does not log a protocol error, and closes.

Response time: from the start of the connect to receiving the identification
line. Measured value: ``ssh_protocol`` (e.g. ``2.0``; ``1.99`` means both).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import ClassVar

from minion.monitors._common import close_writer, shorten
from minion.monitors.base import (
    Monitor,
    PollContext,
    PollOutcome,
    Target,
    elapsed_ms,
)
from services.core.params.ssh import SshParams

_MAX_LINE = 255
_MAX_LINES = 50
_IDENT = re.compile(r"^SSH-(?P<proto>[!-,.-~]+)-(?P<software>[!-~]+)(?: (?P<comments>.*))?$")


class SshMonitor(Monitor[SshParams]):
    """Reads and checks the SSH identification string."""

    name: ClassVar[str] = "ssh"
    params_model = SshParams
    description = "SSH identification line: protocol and software version regex"

    async def poll(self, target: Target, params: SshParams, ctx: PollContext) -> PollOutcome:
        """Connect to ``target.address:port`` and check the server's identification."""
        start = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(
                target.address, params.port, limit=_MAX_LINE + 2
            )
        except ConnectionRefusedError:
            return PollOutcome.down(f"connection refused on port {params.port}", elapsed_ms(start))
        except OSError as exc:
            return PollOutcome.down(
                f"connect to port {params.port} failed: {exc.strerror or exc}", elapsed_ms(start)
            )
        try:
            ident = await self._read_ident(reader)
            rt = elapsed_ms(start)
            if isinstance(ident, PollOutcome):
                ident.response_time_ms = rt
                return ident
            try:
                writer.write(params.client_ident.encode() + b"\r\n")
                await writer.drain()
            except OSError:
                pass  # the check is done; the server going away now does not matter
            return self._judge(params, ident, rt)
        finally:
            await close_writer(writer)

    @staticmethod
    async def _read_ident(reader: asyncio.StreamReader) -> str | PollOutcome:
        for _ in range(_MAX_LINES):
            try:
                raw = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    return PollOutcome.down(
                        f"connection closed inside the identification: {shorten(exc.partial)!r}"
                    )
                return PollOutcome.down("connection closed before an SSH identification")
            except asyncio.LimitOverrunError:
                return PollOutcome.down(f"line longer than {_MAX_LINE} bytes: not an SSH server")
            except OSError as exc:
                return PollOutcome.down(f"reading identification failed: {exc.strerror or exc}")
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if line.startswith("SSH-"):
                return line
        return PollOutcome.down(f"no SSH identification in the first {_MAX_LINES} lines")

    @staticmethod
    def _judge(params: SshParams, ident: str, rt: float) -> PollOutcome:
        m = _IDENT.match(ident)
        if m is None:
            return PollOutcome.down(f"malformed SSH identification {shorten(ident)!r}", rt)
        proto, software = m.group("proto"), m.group("software")
        values: dict[str, float] = {}
        with contextlib.suppress(ValueError):  # e.g. "2.0-beta": no number to report
            values["ssh_protocol"] = float(proto)
        if params.protocol is not None and not re.fullmatch(params.protocol, proto):
            return PollOutcome.down(
                f"SSH protocol {proto} does not match /{params.protocol}/ ({shorten(ident)})",
                rt,
                **values,
            )
        if params.software is not None and not re.search(params.software, software):
            return PollOutcome.down(
                f"SSH software {software!r} does not match /{params.software}/", rt, **values
            )
        if params.banner is not None and not re.search(params.banner, ident):
            return PollOutcome.down(
                f"SSH identification {shorten(ident)!r} does not match /{params.banner}/",
                rt,
                **values,
            )
        outcome = PollOutcome.up(rt, **values)
        outcome.reason = shorten(ident, 120)
        return outcome
