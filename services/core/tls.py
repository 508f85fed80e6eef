"""A process's TLS material, as gRPC and NATS want it.

Every Vigil process holds the CA certificate, its own certificate and its
key (see :mod:`services.core.pki`). :class:`TlsMaterial` loads them once and
builds the credentials each transport needs; :func:`peer_identity` reads the
identity a gRPC peer proved with its certificate.

:data:`PLAINTEXT` stands for the development mode without TLS, allowed on
loopback addresses only (see :func:`require_loopback`); code that receives it
uses insecure ports and channels and says so in its log.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from cryptography import x509

from services.core.config.settings import PkiSettings
from services.core.pki import Identity, Pki, PkiError, identity_of, read_revoked

log = logging.getLogger(__name__)


class TlsError(Exception):
    """TLS material is missing or unusable; the message names the file."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The CA, a certificate and its key, in PEM, and the identity the certificate names."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    identity: Identity
    ca_path: Path
    cert_path: Path
    key_path: Path
    #: The deny list of revoked serials this process honours (may not exist).
    revoked_path: Path | None = None

    @classmethod
    def load(
        cls, ca: str | Path, cert: str | Path, key: str | Path, revoked: str | Path | None = None
    ) -> TlsMaterial:
        """Read the three files; raises :class:`TlsError` naming what is wrong."""
        ca_path, cert_path, key_path = Path(ca), Path(cert), Path(key)
        ca_pem = _read(ca_path, "CA certificate")
        cert_pem = _read(cert_path, "certificate")
        key_pem = _read(key_path, "key")
        try:
            identity = identity_of(x509.load_pem_x509_certificate(cert_pem))
        except ValueError:
            raise TlsError(f"{cert_path}: not a PEM certificate") from None
        if identity is None:
            raise TlsError(f"{cert_path}: names no Vigil identity (issue it with `vigil ca issue`)")
        return cls(
            ca_pem,
            cert_pem,
            key_pem,
            identity,
            ca_path,
            cert_path,
            key_path,
            Path(revoked) if revoked else None,
        )

    # --- gRPC -------------------------------------------------------------------

    def server_credentials(self) -> grpc.ServerCredentials:
        """Mutual TLS: a client must present a certificate from the CA."""
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)], root_certificates=self.ca_pem, require_client_auth=True
        )

    def probe_credentials(self) -> grpc.ServerCredentials:
        """TLS without a client certificate, for the health-only probe port."""
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)])

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """A client's side of mutual TLS."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )

    # --- NATS and plain TLS clients -----------------------------------------------

    def client_context(self) -> ssl.SSLContext:
        """An ``ssl`` client context: verify the server against the CA, present our certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_path))
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def revoked(self) -> frozenset[int]:
        """Serials on the deny list right now (empty without one)."""
        if self.revoked_path is None:
            return frozenset()
        try:
            return read_revoked(self.revoked_path)
        except PkiError as exc:
            log.error("%s", exc)
            return frozenset()


class Plaintext:
    """The development mode without TLS (loopback only); see :func:`require_loopback`."""

    def __repr__(self) -> str:
        return "PLAINTEXT"


PLAINTEXT = Plaintext()

#: What a process is given: its TLS material, or the loopback-only plaintext mode.
Transport = TlsMaterial | Plaintext

PLAINTEXT_WARNING = (
    "INSECURE: plaintext_loopback_dev is on: no TLS, no authentication. "
    "For development on one machine only."
)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is a loopback name or address."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback(addresses: dict[str, str]) -> None:
    """Refuse the plaintext mode unless every address (``host:port`` or URL) is loopback.

    ``addresses`` maps a config key to its value, so the error names the key.
    """
    for key, value in addresses.items():
        for one in value.split(","):
            one = one.strip()
            host = urlsplit(one).hostname if "://" in one else one.rpartition(":")[0]
            if not host or not is_loopback_host(host):
                raise TlsError(
                    f"{key}: {one!r} is not a loopback address; plaintext_loopback_dev "
                    "allows loopback only"
                )


def peer_identity(context: Any) -> tuple[Identity, int] | None:
    """The identity a gRPC peer proved with its certificate, and the certificate's serial.

    ``None`` when the peer presented no certificate (plaintext, or the probe port).
    """
    auth = context.auth_context()
    pem = auth.get("x509_pem_cert")
    if not pem:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem[0])
    except ValueError:
        return None
    identity = identity_of(cert)
    return None if identity is None else (identity, cert.serial_number)


def transport_for(
    settings: PkiSettings, identity: Identity, addresses: dict[str, str]
) -> Transport:
    """The transport a process runs with: its TLS material from ``settings``, or plaintext.

    ``identity`` is who the process is; its certificate must name exactly that
    identity. ``addresses`` (config key → address or URL) are checked to be
    loopback when the plaintext development mode is on.
    """
    if settings.plaintext_loopback_dev:
        require_loopback(addresses)
        log.warning(PLAINTEXT_WARNING)
        return PLAINTEXT
    pki = Pki(settings.dir)
    material = TlsMaterial.load(
        settings.ca or pki.ca_cert_path,
        settings.cert or pki.cert_path(identity),
        settings.key or pki.key_path(identity),
        revoked=pki.revoked_path,
    )
    if material.identity != identity:
        raise TlsError(
            f"{material.cert_path}: the certificate is for {material.identity}, "
            f"but this process runs as {identity}"
        )
    return material
