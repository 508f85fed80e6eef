"""``tls_cert``: the server certificate on a TLS port — chain validity, host
name match and days to expiry.

Response time: TCP connect plus TLS handshake. When the chain is refused a
second, non-verifying handshake reads the certificate so that
``days_to_expiry`` is still reported; the response time is the first one's.

Measured value: ``days_to_expiry`` (fractional, negative once expired).
"""

from __future__ import annotations

import ssl
import time
from typing import ClassVar

from minion.monitors._common import (
    cert_info,
    plan,
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
from services.core.params.tls_cert import TlsCertParams


class TlsCertMonitor(Monitor[TlsCertParams]):
    """Handshakes and inspects the peer certificate."""

    name: ClassVar[str] = "tls_cert"
    params_model = TlsCertParams
    description = "TLS certificate: chain validity, host name match, days to expiry"

    async def poll(self, target: Target, params: TlsCertParams, ctx: PollContext) -> PollOutcome:
        """Handshake with ``target.address:port`` and judge the certificate."""
        when = plan(ctx)
        try:
            verifying = await tls_context(
                "chain" if params.verify_chain else "none", params.ca_file
            )
        except (OSError, ssl.SSLError) as exc:
            return PollOutcome.unknown(f"cannot load ca_file {params.ca_file}: {exc}")
        start = time.perf_counter()
        chain_error: str | None = None
        try:
            der, version = await tls_peer_certificate(
                target.address, params.port, verifying, params.server_name, when.remaining()
            )
        except ssl.SSLCertVerificationError as exc:
            chain_error = str(exc.verify_message or exc.reason)
        except ssl.SSLError as exc:
            return PollOutcome.down(f"TLS handshake failed: {exc.reason or exc}", elapsed_ms(start))
        except ConnectionRefusedError:
            return PollOutcome.down(f"connection refused on port {params.port}", elapsed_ms(start))
        except (OSError, TimeoutError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
            return PollOutcome.down(
                f"connect to port {params.port} failed: {why}", elapsed_ms(start)
            )
        rt = elapsed_ms(start)
        if chain_error is not None:
            try:
                der, version = await tls_peer_certificate(
                    target.address,
                    params.port,
                    await tls_context("none"),
                    params.server_name,
                    when.remaining(),
                )
            except (OSError, ssl.SSLError, TimeoutError):
                return PollOutcome.down(f"certificate chain not valid: {chain_error}", rt)
            days = cert_info(der).days_to_expiry()
            return PollOutcome.down(
                f"certificate chain not valid: {chain_error}", rt, days_to_expiry=round(days, 3)
            )
        info = cert_info(der)
        days = round(info.days_to_expiry(), 3)
        name = params.server_name or target.address
        if params.check_hostname and not info.matches(name):
            names = ", ".join([*info.dns_names, *info.ip_addresses]) or info.subject_cn or "none"
            return PollOutcome.down(
                f"certificate does not match {name} (it names: {names})", rt, days_to_expiry=days
            )
        expiry = info.not_after.strftime("%Y-%m-%d %H:%M UTC")
        if days < 0:
            return PollOutcome.down(f"certificate expired on {expiry}", rt, days_to_expiry=days)
        if days < params.min_days_to_expiry:
            return PollOutcome.down(
                f"certificate expires in {days:.1f} days on {expiry} "
                f"(threshold {params.min_days_to_expiry:g} days)",
                rt,
                days_to_expiry=days,
            )
        outcome = PollOutcome.up(rt, days_to_expiry=days)
        outcome.reason = f"{version}, expires {expiry}"
        return outcome
