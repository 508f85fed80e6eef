"""``dns``: ask a DNS server for a record; UP when it answers as expected.

The server defaults to the target address (the usual case: monitoring a DNS
server). UDP queries fall back to TCP when the answer is truncated. Replies
from another address are ignored; a malformed reply is DOWN.

Response time: from sending the query to receiving the answer (including the
TCP retry after a truncated UDP answer).
Measured values: ``answers`` (records of the asked type in the answer) and
``rcode`` (the DNS response code: 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, …).
"""

from __future__ import annotations

import ipaddress
import time
from typing import ClassVar

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdatatype

from minion.monitors._common import plan
from minion.monitors.base import (
    Monitor,
    PollContext,
    PollOutcome,
    Target,
    elapsed_ms,
)
from services.core.params.dns import DnsParams


def _norm_token(token: str) -> str:
    token = token.strip()
    if len(token) >= 2 and token[0] == token[-1] == '"':
        token = token[1:-1]
    try:
        return str(ipaddress.ip_address(token))
    except ValueError:
        pass
    return token.rstrip(".").lower() if token not in (".",) else token


def normalize_answer(text: str) -> str:
    """Normalise an answer for comparison: case, trailing dots, IP spelling."""
    return " ".join(_norm_token(t) for t in text.split())


def answer_forms(rdata: dns.rdata.Rdata) -> set[str]:
    """The spellings an operator may use for ``rdata`` in ``expect``."""
    forms = {normalize_answer(rdata.to_text())}
    strings = getattr(rdata, "strings", None)
    if strings:  # TXT/SPF: also the joined text without quotes
        joined = b"".join(strings).decode("utf-8", "replace")
        forms.add(joined)
        forms.add(normalize_answer(joined))
    return forms


class DnsMonitor(Monitor[DnsParams]):
    """Sends one query with dnspython's asyncio API."""

    name: ClassVar[str] = "dns"
    params_model = DnsParams
    description = "DNS query: record type, expected answers, UDP or TCP"

    async def poll(self, target: Target, params: DnsParams, ctx: PollContext) -> PollOutcome:
        """Query ``params.server`` (default: the target) for ``name``/``record_type``."""
        when = plan(ctx)
        server = params.server or target.address
        rtype = dns.rdatatype.from_text(params.record_type)
        query = dns.message.make_query(params.name, rtype, want_dnssec=False)
        if not params.recursion:
            query.flags &= ~dns.flags.RD
        start = time.perf_counter()
        timeout = max(when.remaining(), 0.05)
        try:
            if params.transport == "tcp":
                response = await dns.asyncquery.tcp(
                    query, server, timeout=timeout, port=params.port
                )
            else:
                response, _ = await dns.asyncquery.udp_with_fallback(
                    query, server, timeout=timeout, port=params.port, ignore_unexpected=True
                )
        except dns.exception.Timeout:
            return PollOutcome.down(
                f"no answer from {server} ({params.transport}) in {timeout:.1f}s", elapsed_ms(start)
            )
        except dns.message.Truncated:
            return PollOutcome.down("answer truncated", elapsed_ms(start))
        except dns.exception.DNSException as exc:
            return PollOutcome.down(
                f"malformed reply from {server}: {exc.__class__.__name__}: {exc}", elapsed_ms(start)
            )
        except ConnectionRefusedError:
            return PollOutcome.down(
                f"connection refused by {server} port {params.port} ({params.transport})",
                elapsed_ms(start),
            )
        except (OSError, EOFError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return PollOutcome.down(
                f"query to {server} failed: {why or exc.__class__.__name__}", elapsed_ms(start)
            )
        rt = elapsed_ms(start)
        return self._judge(params, response, rtype, rt)

    @staticmethod
    def _judge(
        params: DnsParams, response: dns.message.Message, rtype: int, rt: float
    ) -> PollOutcome:
        rcode = response.rcode()
        rcode_text = dns.rcode.to_text(rcode)
        rdatas = [rd for rrset in response.answer if rrset.rdtype == rtype for rd in rrset]
        values = {"answers": float(len(rdatas)), "rcode": float(rcode)}
        what = f"{params.name} {params.record_type}"
        if rcode_text in params.fatal_rcodes:
            return PollOutcome.down(f"{what}: {rcode_text}", rt, **values)
        if len(rdatas) < params.min_answers:
            return PollOutcome.down(
                f"{what}: {len(rdatas)} answer(s) ({rcode_text}), expected at least "
                f"{params.min_answers}",
                rt,
                **values,
            )
        if params.max_answers is not None and len(rdatas) > params.max_answers:
            return PollOutcome.down(
                f"{what}: {len(rdatas)} answers, expected at most {params.max_answers}",
                rt,
                **values,
            )
        if params.expect:
            got: set[str] = set()
            for rd in rdatas:
                got |= answer_forms(rd)
            missing = [e for e in params.expect if normalize_answer(e) not in got and e not in got]
            if missing:
                shown = ", ".join(rd.to_text() for rd in rdatas[:5]) or "nothing"
                return PollOutcome.down(
                    f"{what}: missing expected answer(s) {', '.join(missing)}; got {shown}",
                    rt,
                    **values,
                )
        return PollOutcome.up(rt, **values)
