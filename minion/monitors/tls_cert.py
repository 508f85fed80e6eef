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

from pydantic import Field, model_validator

from minion.monitors._common import (
    AbsPath,
    HostName,
    Port,
    cert_info,
    plan,
    tls_context,
    tls_peer_certificate,
)
from minion.monitors.base import (
    Monitor,
    MonitorParams,
    PollContext,
    PollOutcome,
    Target,
    elapsed_ms,
)


class TlsCertParams(MonitorParams):
    """Parameters of the TLS certificate monitor."""

    port: Port = 443
    #: Name sent as SNI and matched against the certificate; default: the target address.
    server_name: HostName | None = None
    #: DOWN when the certificate expires in fewer days than this.
    min_days_to_expiry: float = Field(default=14.0, ge=0)
    #: DOWN when the certificate does not name ``server_name`` (or the address).
    check_hostname: bool = True
    #: DOWN when the chain does not lead to a trusted CA.
    verify_chain: bool = True
    #: CA bundle (PEM) on the minion instead of the system store.
    ca_file: AbsPath | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TlsCertParams:
        if self.ca_file is not None and not self.verify_chain:
            raise ValueError("ca_file: needs verify_chain: true")
        return self


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
