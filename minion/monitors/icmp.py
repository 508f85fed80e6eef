"""``icmp``: ICMP echo (ping), IPv4 and IPv6, with loss and RTT thresholds.

Sends ``count`` echo requests ``interval`` seconds apart, each waiting for its
reply at most ``reply_timeout`` (by default: an equal share of what is left
of the attempt's time, so a silent host is reported DOWN before the runner's
deadline, with the loss measured).

Works unprivileged where the kernel allows ICMP datagram sockets
(``net.ipv4.ping_group_range`` covers the minion's group) and with raw
sockets as root or with ``CAP_NET_RAW``; which one is detected once.

Response time: the average round-trip time of the replies received.
Measured values: ``rtt_ms`` (average), ``rtt_min_ms``, ``rtt_max_ms``,
``jitter_ms`` (mean deviation), ``packet_loss`` (percent, 0-100),
``packets_sent``, ``packets_received``.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import statistics
from functools import cache
from typing import ClassVar

from icmplib import (  # type: ignore[import-untyped]
    AsyncSocket,
    ICMPError,
    ICMPLibError,
    ICMPRequest,
    ICMPv4Socket,
    ICMPv6Socket,
    TimeoutExceeded,
)
from icmplib.utils import unique_identifier  # type: ignore[import-untyped]

from minion.monitors._common import is_ipv6, plan
from minion.monitors.base import Monitor, PollContext, PollOutcome, Target
from services.core.params.icmp import IcmpParams


@cache
def unprivileged_available(v6: bool) -> bool:
    """Whether this process may open an ICMP datagram socket (no root needed)."""
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    try:
        socket.socket(family, socket.SOCK_DGRAM, proto).close()
    except OSError:
        return False
    return True


class IcmpMonitor(Monitor[IcmpParams]):
    """Pings the target address."""

    name: ClassVar[str] = "icmp"
    params_model = IcmpParams
    description = "ICMP echo: packet loss and round-trip time thresholds, IPv4 and IPv6"

    async def poll(self, target: Target, params: IcmpParams, ctx: PollContext) -> PollOutcome:
        """Send ``count`` echo requests to ``target.address``."""
        when = plan(ctx)
        v6 = is_ipv6(target.address)
        budget = when.until_report() - (params.count - 1) * params.interval
        if budget <= 0.01 * params.count:
            return PollOutcome.unknown(
                f"count {params.count} x interval {params.interval:g}s does not fit "
                f"in the {ctx.timeout:g}s timeout"
            )
        per_reply = budget / params.count
        if params.reply_timeout is not None:
            per_reply = min(per_reply, params.reply_timeout)
        privileged = not unprivileged_available(v6)
        sock_cls = ICMPv6Socket if v6 else ICMPv4Socket
        try:
            icmp_sock = sock_cls(None, privileged)
        except ICMPLibError as exc:
            return PollOutcome.unknown(
                f"cannot open an ICMP socket ({exc}): run as root, grant CAP_NET_RAW "
                "or allow the group in net.ipv4.ping_group_range"
            )
        rtts: list[float] = []
        errors: list[str] = []
        ident = unique_identifier()
        with AsyncSocket(icmp_sock) as sock:
            for seq in range(params.count):
                if seq:
                    await asyncio.sleep(params.interval)
                request = ICMPRequest(
                    destination=target.address,
                    id=ident,
                    sequence=seq,
                    payload_size=params.packet_size,
                )
                try:
                    sock.send(request)
                    reply = await sock.receive(request, per_reply)
                    reply.raise_for_status()
                except TimeoutExceeded:
                    continue
                except ICMPError as exc:
                    errors.append(str(exc))
                    continue
                except ICMPLibError as exc:
                    errors.append(_socket_reason(str(exc)))
                    continue
                rtts.append((reply.time - request.time) * 1000.0)
        return _judge(params, rtts, errors)


def _socket_reason(text: str) -> str:
    # icmplib flattens OSError to its message; keep it, and name common cases
    if text.startswith("[Errno"):
        for code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL, errno.EPERM):
            if f"[Errno {code}]" in text:
                return f"send failed: {text.split('] ', 1)[-1]}"
    return text


def _judge(params: IcmpParams, rtts: list[float], errors: list[str]) -> PollOutcome:
    sent = params.count
    received = len(rtts)
    loss = 100.0 * (sent - received) / sent
    values: dict[str, float] = {
        "packet_loss": round(loss, 3),
        "packets_sent": float(sent),
        "packets_received": float(received),
    }
    if not rtts:
        detail = f" ({errors[0]})" if errors else ""
        return PollOutcome.down(f"no reply to {sent} echo request(s){detail}", 0.0, **values)
    avg = statistics.fmean(rtts)
    peak = max(rtts)
    jitter = statistics.fmean(abs(r - avg) for r in rtts)
    values.update(
        rtt_ms=round(avg, 3),
        rtt_min_ms=round(min(rtts), 3),
        rtt_max_ms=round(peak, 3),
        jitter_ms=round(jitter, 3),
    )
    if params.max_packet_loss is not None and loss > params.max_packet_loss:
        return PollOutcome.down(
            f"packet loss {loss:.0f}% ({received}/{sent} replies), "
            f"above {params.max_packet_loss:g}%",
            avg,
            **values,
        )
    if params.max_rtt_ms is not None and avg > params.max_rtt_ms:
        return PollOutcome.down(
            f"average round trip {avg:.1f} ms, above {params.max_rtt_ms:g} ms", avg, **values
        )
    if params.max_peak_rtt_ms is not None and peak > params.max_peak_rtt_ms:
        return PollOutcome.down(
            f"slowest round trip {peak:.1f} ms, above {params.max_peak_rtt_ms:g} ms",
            avg,
            **values,
        )
    return PollOutcome.up(avg, **values)
